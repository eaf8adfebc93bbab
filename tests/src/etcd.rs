//! A private single-member etcd (Debian's `etcd-server`) for one test: its own data directory
//! and loopback ports, killed and removed on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Etcd {
    child: Child,
    dir: PathBuf,
    /// `http://IP:PORT`, for clients.
    pub endpoint: String,
    ns: Option<String>,
}

/// A TCP port on loopback that nothing listens on just now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on loopback")
}

impl Etcd {
    /// Starts etcd on loopback with its data in `dir/etcd` and waits until it answers.
    pub fn start(dir: &Path) -> Self {
        Self::start_in(dir, None, "127.0.0.1", free_port(), free_port())
    }

    /// Starts etcd in network namespace `ns` (when given), listening on `ip`.
    pub fn start_in(dir: &Path, ns: Option<&str>, ip: &str, client: u16, peer: u16) -> Self {
        let data = dir.join("etcd");
        let _ = std::fs::remove_dir_all(&data);
        std::fs::create_dir_all(&data).expect("etcd's data directory");
        let client_url = format!("http://{ip}:{client}");
        let peer_url = format!("http://{ip}:{peer}");
        let log = std::fs::File::create(dir.join("etcd.log")).expect("etcd's log");
        let mut command = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "etcd"]);
                c
            }
            None => Command::new("etcd"),
        };
        let child = command
            .arg("--name=triad-test")
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=triad-test={peer_url}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("etcd's log"))
            .stderr(log)
            .spawn()
            .expect("starting etcd (Debian package etcd-server; scripts/test installs it)");
        let etcd = Self {
            child,
            dir: dir.to_owned(),
            endpoint: client_url,
            ns: ns.map(str::to_owned),
        };
        etcd.wait_healthy();
        etcd
    }

    fn wait_healthy(&self) {
        let start = Instant::now();
        loop {
            let mut command = match &self.ns {
                Some(ns) => {
                    let mut c = Command::new("ip");
                    c.args(["netns", "exec", ns, "etcdctl"]);
                    c
                }
                None => Command::new("etcdctl"),
            };
            let health = command
                .env("ETCDCTL_API", "3")
                .arg(format!("--endpoints={}", self.endpoint))
                .arg("--dial-timeout=1s")
                .args(["endpoint", "health"])
                .output();
            if matches!(&health, Ok(out) if out.status.success()) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "etcd did not become healthy in 30 s:\n{}",
                std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(self.dir.join("etcd"));
    }
}
