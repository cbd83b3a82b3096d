//! A `surge` process for the tests that run the binary against NATS or
//! with its embedded broker, and the async admin HTTP exchange they make.
//! Include beside `common/http.rs` and `common/nats_server.rs`.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::nats_server::{NatsServer, free_port, temp_dir};

pub const SURGE: &str = env!("CARGO_BIN_EXE_surge");

/// A `surge` process serving against NATS.
pub struct Surge {
    pub child: Child,
    pub ws: SocketAddr,
    pub admin: SocketAddr,
    pub dir: PathBuf,
}

pub fn surge_command(nats: &NatsServer, env: &[(&str, &str)], dir: &std::path::Path) -> Command {
    let mut command = embedded_command(env, dir);
    command.env("SURGE_NATS_URL", nats.url());
    command
}

/// `surge` with the embedded broker (no SURGE_NATS_URL).
pub fn embedded_command(env: &[(&str, &str)], dir: &std::path::Path) -> Command {
    let mut command = Command::new(SURGE);
    command
        .args(["--max-connections", "1000", "--shards", "2"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .current_dir(dir);
    command
}

impl Surge {
    pub fn start(nats: &NatsServer, env: &[(&str, &str)]) -> Surge {
        Surge::spawn(|dir| surge_command(nats, env, dir))
    }

    pub fn start_embedded() -> Surge {
        Surge::spawn(|dir| embedded_command(&[], dir))
    }

    pub fn spawn(command: impl FnOnce(&std::path::Path) -> Command) -> Surge {
        let ws: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let dir = temp_dir("surge");
        let child = command(&dir)
            .args(["--listen", &ws.to_string()])
            .args(["--admin-listen", &admin.to_string()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr")).expect("stderr file"))
            .spawn()
            .expect("surge starts");
        let mut surge = Surge {
            child,
            ws,
            admin,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(admin).is_err() {
            if let Ok(Some(status)) = surge.child.try_wait() {
                panic!("surge exited with {status}:\n{}", surge.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "surge's admin listener never came up:\n{}",
                surge.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        surge
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    pub async fn health(&self) -> (u16, Value) {
        let (status, body) = http(self.admin, "GET", "/health", "").await;
        (status, serde_json::from_str(&body).expect("health JSON"))
    }

    pub async fn metrics(&self) -> String {
        http(self.admin, "GET", "/metrics", "").await.1
    }
}

impl Drop for Surge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A minimal HTTP/1.1 exchange: (status, body).
pub async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect admin");
        let request = crate::http::request(addr, method, path, body);
        s.write_all(request.as_bytes()).await.expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    };
    let out = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("admin answers within 10 s");
    crate::http::parse(&out)
}
