//! Network namespaces standing in for hosts and VMs.

use std::process::{Command, Stdio};

use serde_json::Value;

use crate::run;

/// A network namespace, deleted (with every interface in it) on drop.
#[derive(Debug)]
pub struct Ns {
    pub name: String,
}

impl Ns {
    /// `tn-NAME-PID`, made afresh: one left by a crashed earlier run goes first.
    pub fn new(name: &str) -> Self {
        let name = format!("tn-{name}-{}", std::process::id());
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

    /// `ip -d -j link show`, as JSON.
    pub fn links(&self) -> Vec<Value> {
        serde_json::from_str(&self.ip(&["-d", "-j", "link", "show"])).unwrap()
    }

    pub fn link(&self, name: &str) -> Option<Value> {
        self.links().into_iter().find(|l| l["ifname"] == name)
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

    /// Enters the namespace on the calling thread only.
    pub fn enter(&self) {
        enter_netns(&self.name);
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Whether ping from namespace `ns` gets an answer from `ip` (`count` tries, a second each);
/// panics when ping itself cannot run, so that a missing tool never reads as an unreachable
/// address.
pub fn ping(ns: &Ns, ip: &str, count: u32) -> bool {
    let out = ns
        .exec("ping", &["-c", &count.to_string(), "-W", "1", ip])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("packets transmitted"),
        "ping did not run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.status.success()
}

/// Enters network namespace `name` (under /run/netns) on the calling thread only.
pub fn enter_netns(name: &str) {
    let f = std::fs::File::open(format!("/run/netns/{name}"))
        .unwrap_or_else(|e| panic!("opening namespace {name}: {e}"));
    // SAFETY: setns on a namespace file this thread opened; it changes only this thread.
    let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {name}: {}", std::io::Error::last_os_error());
}
