//! The `surge` binary as the tests run it: a real process on free
//! loopback ports, ready once its admin listener answers.

// Each test file uses its own part of this.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SURGE: &str = env!("CARGO_BIN_EXE_surge");

pub use crate::ports::free_port;

pub struct Server {
    pub child: Child,
    pub ws: SocketAddr,
    pub admin: SocketAddr,
}

impl Server {
    pub fn start(extra: &[&str]) -> Server {
        Server::start_with_env(extra, &[])
    }

    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Server {
        let ws: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let child = Command::new(SURGE)
            .args([
                "--listen",
                &ws.to_string(),
                "--admin-listen",
                &admin.to_string(),
            ])
            .args(if extra.contains(&"--max-connections") {
                &[][..]
            } else {
                &["--max-connections", "1000"][..]
            })
            .args(if extra.contains(&"--shards") {
                &[][..]
            } else {
                &["--shards", "2"][..]
            })
            .args(extra)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().copied())
            .current_dir(std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("surge starts");
        Server::ready(child, ws, admin)
    }

    /// The server `child` once its admin listener at `admin` answers; panics
    /// if it exits first or takes over 10 s.
    pub fn ready(child: Child, ws: SocketAddr, admin: SocketAddr) -> Server {
        let mut server = Server { child, ws, admin };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(admin).is_err() {
            if let Some(status) = server.child.try_wait().expect("wait") {
                panic!("surge exited with {status} instead of serving {admin}");
            }
            assert!(Instant::now() < deadline, "admin listener never came up");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the pid of a child this test spawned.
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0);
    }

    pub fn wait(mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "surge did not exit in time");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
