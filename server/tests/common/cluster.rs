//! Several real processes on loopback for the multi-node tests: a 3-node
//! NATS JetStream cluster and HAProxy, both started from the configuration
//! files in `deploy/cluster/` (filled in through their environment, as a
//! deployment does), and `surge` gateways that can be killed, stopped and
//! started again on the same ports.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::nats_server::{free_port, temp_dir};

const SURGE: &str = env!("CARGO_BIN_EXE_surge");

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/cluster")
        .join(file)
}

/// Waits until `addr` accepts TCP, or panics with `log` after `within`.
fn wait_accepting(addr: SocketAddr, within: Duration, child: &mut Child, log: &Path) {
    let deadline = Instant::now() + within;
    while TcpStream::connect(addr).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{addr}: process exited with {status}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{addr} did not accept within {within:?}:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on the pid of a child this fixture spawned.
    unsafe { libc::kill(child.id() as i32, sig) };
}

/// One node of the cluster.
pub struct NatsNode {
    pub name: String,
    pub port: u16,
    cluster_port: u16,
    child: Option<Child>,
}

/// A NATS cluster of three JetStream nodes on loopback.
pub struct NatsCluster {
    pub nodes: Vec<NatsNode>,
    dir: PathBuf,
}

impl NatsCluster {
    pub fn start() -> NatsCluster {
        let dir = temp_dir("nats-cluster");
        let nodes = (1..=3)
            .map(|i| NatsNode {
                name: format!("nats-{i}"),
                port: free_port(),
                cluster_port: free_port(),
                child: None,
            })
            .collect();
        let mut cluster = NatsCluster { nodes, dir };
        for i in 0..3 {
            cluster.spawn(i);
        }
        cluster
    }

    fn log(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{}.log", self.nodes[i].name))
    }

    fn spawn(&mut self, i: usize) {
        let routes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.cluster_port))
            .collect();
        let node = &self.nodes[i];
        let log_path = self.log(i);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("log file");
        let mut child = Command::new(super::nats_server::binary())
            .arg("-c")
            .arg(deploy("nats.conf"))
            .env("NATS_NAME", &node.name)
            .env("NATS_LISTEN", format!("127.0.0.1:{}", node.port))
            .env("NATS_STORE", self.dir.join(&node.name))
            .env(
                "NATS_CLUSTER_LISTEN",
                format!("127.0.0.1:{}", node.cluster_port),
            )
            .env("NATS_ROUTE_1", &routes[0])
            .env("NATS_ROUTE_2", &routes[1])
            .env("NATS_ROUTE_3", &routes[2])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nats-server starts");
        let addr = SocketAddr::from(([127, 0, 0, 1], node.port));
        wait_accepting(addr, Duration::from_secs(10), &mut child, &log_path);
        self.nodes[i].child = Some(child);
    }

    /// Every node's client URL, comma-separated (SURGE_NATS_URL).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn index_of(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a killed node again with its store.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
    }

    pub fn logs(&self) -> String {
        (0..self.nodes.len())
            .map(|i| std::fs::read_to_string(self.log(i)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// HAProxy in front of three gateways, from `deploy/cluster/haproxy.cfg`.
pub struct Haproxy {
    pub addr: SocketAddr,
    child: Child,
    dir: PathBuf,
}

impl Haproxy {
    pub fn start(gateways: [SocketAddr; 3]) -> Haproxy {
        let binary = ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
            .into_iter()
            .find(|p| Path::new(p).is_file())
            .unwrap_or_else(|| {
                panic!(
                    "haproxy not found. These tests need a real HAProxy: install Debian's \
                     package (`apt-get install -y haproxy`; scripts/test does it)."
                )
            });
        let dir = temp_dir("haproxy");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = dir.join("haproxy.log");
        let mut child = Command::new(binary)
            .arg("-db")
            .arg("-f")
            .arg(deploy("haproxy.cfg"))
            .env("SURGE_LB_BIND", addr.to_string())
            .env("SURGE_GW_1", gateways[0].to_string())
            .env("SURGE_GW_2", gateways[1].to_string())
            .env("SURGE_GW_3", gateways[2].to_string())
            .stdout(std::fs::File::create(&log).expect("log"))
            .stderr(std::fs::File::create(dir.join("haproxy.err")).expect("log"))
            .spawn()
            .expect("haproxy starts");
        wait_accepting(addr, Duration::from_secs(10), &mut child, &log);
        Haproxy { addr, child, dir }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("haproxy.log")).unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `surge` gateway process that keeps its ports across restarts.
pub struct Gateway {
    pub ws: SocketAddr,
    pub admin: SocketAddr,
    env: Vec<(String, String)>,
    child: Option<Child>,
    dir: PathBuf,
    starts: u32,
}

impl Gateway {
    pub fn start(env: &[(&str, &str)]) -> Gateway {
        let mut gateway = Gateway {
            ws: SocketAddr::from(([127, 0, 0, 1], free_port())),
            admin: SocketAddr::from(([127, 0, 0, 1], free_port())),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            child: None,
            dir: temp_dir("gateway"),
            starts: 0,
        };
        gateway.spawn();
        gateway
    }

    fn log(&self) -> PathBuf {
        self.dir.join(format!("stderr.{}", self.starts))
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let log = self.log();
        let mut child = Command::new(SURGE)
            .args(["--listen", &self.ws.to_string()])
            .args(["--admin-listen", &self.admin.to_string()])
            .args(["--shards", "2"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("SURGE_PUBLIC_HEALTHZ", "true")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("stderr file"))
            .spawn()
            .expect("surge starts");
        wait_accepting(self.ws, Duration::from_secs(15), &mut child, &log);
        self.child = Some(child);
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and returns at once; `wait_exit` collects the status.
    pub fn terminate(&self) {
        signal(self.child.as_ref().expect("running"), libc::SIGTERM);
    }

    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "surge did not exit within {within:?}:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the stopped or killed gateway again on the same ports.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
