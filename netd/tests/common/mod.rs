//! Test hosts for netd: network namespaces standing in for hosts, a `triad-netd` process in
//! one, and what the kernel says about them (read with iproute2, not through netd).

#![allow(dead_code)] // each test binary uses its own subset

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use triad_api::http::{request, Response};

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Records a skipped test where `scripts/test` reports it, and on stderr.
pub fn skip(test: &str, reason: &str) {
    eprintln!("SKIPPED {test}: {reason}");
    let log = workspace_root().join("target/test-skips.log");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        let _ = writeln!(f, "{test}: {reason}");
    }
}

/// Runs a command and panics with its output when it fails.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace standing in for a host; deleted (with every interface in it) on drop.
pub struct Ns {
    pub name: String,
}

impl Ns {
    pub fn new(name: &str) -> Self {
        let name = format!("tn-{name}-{}", std::process::id());
        // One left by a crashed earlier run goes first.
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        run("ip", &["netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip ARGS` in the namespace.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// `program ARGS` in the namespace.
    pub fn exec(&self, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]).args(args);
        c
    }

    /// `ip -d -j link show [NAME]`, as JSON.
    pub fn links(&self) -> Vec<Value> {
        serde_json::from_str(&self.ip(&["-d", "-j", "link", "show"])).unwrap()
    }

    pub fn link(&self, name: &str) -> Option<Value> {
        self.links().into_iter().find(|l| l["ifname"] == name)
    }

    /// The VTEPs in the flood list of VXLAN device `dev`.
    pub fn flood_list(&self, dev: &str) -> Vec<String> {
        let out = run(
            "bridge",
            &["-n", &self.name, "-j", "fdb", "show", "dev", dev],
        );
        let entries: Vec<Value> = serde_json::from_str(&out).unwrap();
        let mut dsts: Vec<String> = entries
            .iter()
            .filter(|e| e["mac"] == "00:00:00:00:00:00")
            .filter_map(|e| e["dst"].as_str().map(str::to_owned))
            .collect();
        dsts.sort();
        dsts
    }

    /// Joins this namespace to `other` with a veth pair, `mine` here and `theirs` there, each
    /// up with its address (CIDR notation) when one is given.
    pub fn wire(
        &self,
        mine: &str,
        addr: Option<&str>,
        other: &Ns,
        theirs: &str,
        their_addr: Option<&str>,
    ) {
        self.ip(&[
            "link",
            "add",
            mine,
            "type",
            "veth",
            "peer",
            "name",
            theirs,
            "netns",
            &other.name,
        ]);
        for (ns, dev, a) in [(self, mine, addr), (other, theirs, their_addr)] {
            if let Some(a) = a {
                ns.ip(&["addr", "add", a, "dev", dev]);
            }
            ns.ip(&["link", "set", dev, "up"]);
        }
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A directory under target/ for one test, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(test: &str) -> Self {
        let dir = workspace_root()
            .join("target/tmp")
            .join(format!("netd-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `triad-netd` running in a namespace, its socket and state under `dir`; killed on drop.
pub struct Netd {
    child: Child,
    pub socket: PathBuf,
    config: PathBuf,
    ns: String,
}

impl Netd {
    pub fn start(ns: &Ns, dir: &Path) -> Self {
        let socket = dir.join("netd.sock");
        let config = dir.join("netd.json");
        let json = serde_json::json!({
            "socket": socket,
            "state_dir": dir.join("state"),
            "node": ns.name,
        });
        std::fs::write(&config, json.to_string()).unwrap();
        Self::spawn(&ns.name, socket, config)
    }

    fn spawn(ns: &str, socket: PathBuf, config: PathBuf) -> Self {
        let _ = std::fs::remove_file(&socket);
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                env!("CARGO_BIN_EXE_triad-netd"),
                "--config",
            ])
            .arg(&config)
            .spawn()
            .unwrap();
        // Killed on drop, also when it does not come up.
        let mut netd = Self {
            child,
            socket,
            config,
            ns: ns.to_owned(),
        };
        let start = Instant::now();
        while std::os::unix::net::UnixStream::connect(&netd.socket).is_err() {
            if let Some(status) = netd.child.try_wait().unwrap() {
                panic!("netd exited before it served: {status}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "netd did not come up"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        netd
    }

    /// Kills netd outright (no clean-up on its side) and starts it again on the same state.
    pub fn crash_and_restart(self) -> Self {
        self.crash_and_restart_with(|| {})
    }

    /// As `crash_and_restart`, running `while_down` between the kill and the start.
    pub fn crash_and_restart_with(self, while_down: impl FnOnce()) -> Self {
        let (ns, socket, config) = (self.ns.clone(), self.socket.clone(), self.config.clone());
        drop(self);
        while_down();
        Self::spawn(&ns, socket, config)
    }

    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> Response {
        let body = body.map(|b| b.to_string());
        request(
            &self.socket,
            method,
            path,
            body.as_deref(),
            Duration::from_secs(30),
        )
        .unwrap()
    }

    /// A call that must succeed; its JSON answer (null for 204).
    pub fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let r = self.call(method, path, body);
        assert!(
            (200..300).contains(&r.status),
            "{method} {path}: {} {}",
            r.status,
            r.body
        );
        if r.body.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&r.body).unwrap()
        }
    }

    /// A call that must fail with `status`; its error message.
    pub fn error(&self, method: &str, path: &str, body: Option<Value>, status: u16) -> String {
        let r = self.call(method, path, body);
        assert_eq!(r.status, status, "{method} {path}: {}", r.body);
        let body: Value = serde_json::from_str(&r.body).unwrap();
        body["error"].as_str().unwrap().to_owned()
    }
}

impl Drop for Netd {
    fn drop(&mut self) {
        // `ip netns exec` execs netd, so this is netd itself.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
