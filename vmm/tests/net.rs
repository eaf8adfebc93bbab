//! virtio-net under real KVM on real TAP devices: the test guest's network stack answers ping
//! and UDP echo from a Linux bridge, with a static address or one leased by a real DHCP server.
//! Everything happens inside a network namespace the test creates and deletes.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

const TIMEOUT: Duration = Duration::from_secs(30);

/// A namespace with a bridge at 10.99.0.1/24 and a TAP on it; deleted on drop.
struct Lan {
    ns: String,
    tap: String,
}

impl Lan {
    fn new(test: &str) -> Option<Self> {
        let ns = format!("triad-{test}-{}", std::process::id());
        let lan = Lan {
            ns,
            tap: "tap-vm0".into(),
        };
        // A namespace left by a crashed earlier run goes first.
        let _ = Command::new("ip")
            .args(["netns", "del", &lan.ns])
            .stderr(Stdio::null())
            .status();
        let steps: &[&[&str]] = &[
            &["link", "set", "lo", "up"],
            &["link", "add", "br0", "type", "bridge"],
            &["addr", "add", "10.99.0.1/24", "dev", "br0"],
            &["link", "set", "br0", "up"],
            &["tuntap", "add", &lan.tap, "mode", "tap"],
            &["link", "set", &lan.tap, "master", "br0", "up"],
        ];
        let created = Command::new("ip").args(["netns", "add", &lan.ns]).status();
        if !created.is_ok_and(|s| s.success()) {
            skip(
                test,
                "cannot create a network namespace (needs root and iproute2)",
            );
            return None;
        }
        for step in steps {
            let ok = lan.exec("ip", step).status().is_ok_and(|s| s.success());
            assert!(ok, "ip {step:?} failed in {}", lan.ns);
        }
        Some(lan)
    }

    /// `program args` run inside the namespace.
    fn exec(&self, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, program]).args(args);
        c
    }

    fn vmm(&self, config: &std::path::Path) -> VmmProcess {
        let child = self
            .exec(VMM, &["--config", config.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning triad-vmm in the namespace");
        VmmProcess { child }
    }

    fn ping(&self, ip: &str) -> String {
        let out = self
            .exec("ping", &["-c", "3", "-W", "2", ip])
            .output()
            .expect("running ping");
        assert!(
            out.status.success(),
            "ping {ip}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Sends `payload` to ip:7 over UDP and returns what came back.
    fn udp_echo(&self, ip: &str, payload: &str) -> String {
        let script = format!(
            "import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(3);\
             s.sendto(b'{payload}',('{ip}',7));print(s.recvfrom(2048)[0].decode())"
        );
        let out = self
            .exec("python3", &["-c", &script])
            .output()
            .expect("running python3");
        assert!(
            out.status.success(),
            "udp echo: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

fn config(dir: &TempDir, cmdline: &str, tap: &str) -> std::path::PathBuf {
    let nic = serde_json::json!([{"id": "eth0", "tap": tap, "mac": "52:54:00:aa:bb:01"}]);
    guest_config(dir, cmdline, serde_json::json!({ "nets": nic }))
}

#[test]
fn guest_on_a_bridge_answers_ping_and_udp() {
    let test = "guest_on_a_bridge_answers_ping_and_udp";
    if !kvm_available(test) {
        return;
    }
    let Some(lan) = Lan::new("net-static") else {
        return;
    };
    let dir = TempDir::new("net-static");
    let vm = config(&dir, "triad.ip=10.99.0.2/24,gw=10.99.0.1", &lan.tap);
    let _vmm = lan.vmm(&vm);
    let out = wait_for_serial(&dir.join("serial.log"), "TRIAD-NET-READY", 1, TIMEOUT);
    assert!(
        out.contains("TRIAD-NET 0xd0000000 mac=52:54:00:aa:bb:01 link=up\n"),
        "{out}"
    );
    // The guest resolved the bridge's MAC over the TAP: frames went both ways.
    assert!(out.contains("TRIAD-NET-ARP 10.99.0.1 "), "{out}");
    let ping = lan.ping("10.99.0.2");
    assert!(ping.contains("3 received"), "{ping}");
    assert_eq!(lan.udp_echo("10.99.0.2", "hello-triad"), "hello-triad");
}

#[test]
fn guest_leases_an_address_from_dnsmasq() {
    let test = "guest_leases_an_address_from_dnsmasq";
    if !kvm_available(test) {
        return;
    }
    let Some(lan) = Lan::new("net-dhcp") else {
        return;
    };
    let dir = TempDir::new("net-dhcp");
    let leases = dir.join("leases");
    let dnsmasq: Child = lan
        .exec(
            "dnsmasq",
            &[
                "--no-daemon",
                "--port=0",
                "--no-ping",
                "--interface=br0",
                "--bind-interfaces",
                "--dhcp-range=10.99.0.50,10.99.0.99,255.255.255.0",
                "--dhcp-option=3,10.99.0.1",
                &format!("--dhcp-leasefile={}", leases.display()),
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting dnsmasq (Debian package dnsmasq-base)");
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _dnsmasq = Kill(dnsmasq);
    let vm = config(&dir, "triad.net=dhcp", &lan.tap);
    let _vmm = lan.vmm(&vm);
    let out = wait_for_serial(&dir.join("serial.log"), "TRIAD-NET-READY", 1, TIMEOUT);
    let ip = out
        .lines()
        .find_map(|l| l.strip_prefix("TRIAD-NET-IP "))
        .and_then(|a| a.strip_suffix("/24"))
        .unwrap_or_else(|| panic!("no lease:\n{out}"))
        .to_owned();
    assert!(out.contains("TRIAD-NET-GW 10.99.0.1\n"), "{out}");
    let last: u8 = ip.rsplit('.').next().unwrap().parse().unwrap();
    assert!(
        ip.starts_with("10.99.0.") && (50..=99).contains(&last),
        "{ip}"
    );
    assert!(std::fs::read_to_string(&leases).unwrap().contains(&ip));
    assert!(lan.ping(&ip).contains("3 received"));
}

#[test]
fn nic_bandwidth_is_capped() {
    let test = "nic_bandwidth_is_capped";
    if !kvm_available(test) {
        return;
    }
    let Some(lan) = Lan::new("net-qos") else {
        return;
    };
    let dir = TempDir::new("net-qos");
    let serial = dir.join("serial.log");
    // 100 kB/s each way, well under what the guest echoes unlimited (~250 frames/s here);
    // a 1000-byte UDP payload is a 1042-byte Ethernet frame.
    let limit = 100_000.0;
    let nic =
        serde_json::json!([{"id": "eth0", "tap": lan.tap, "qos": {"bytes_per_sec": 100_000}}]);
    let vm = guest_config(
        &dir,
        "triad.ip=10.99.0.2/24",
        serde_json::json!({ "nets": nic }),
    );
    let _vmm = lan.vmm(&vm);
    wait_for_serial(&serial, "TRIAD-NET-READY", 1, TIMEOUT);
    // Keep 16 datagrams in flight to the echo port; count echoes over 3 s after a 0.5 s
    // settle (the burst allowance drains).
    let script = "import socket,time\n\
        s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(0.3)\n\
        p=b'x'*1000;a=('10.99.0.2',7)\n\
        [s.sendto(p,a) for _ in range(16)]\n\
        t0=time.time();n=0;m0=None\n\
        while time.time()-t0<3.5:\n\
        \x20 try:\n\
        \x20   s.recv(2048);s.sendto(p,a)\n\
        \x20   if time.time()-t0>0.5:\n\
        \x20     m0=m0 or time.time();n+=1\n\
        \x20 except socket.timeout:\n\
        \x20   [s.sendto(p,a) for _ in range(16)]\n\
        print(n/(time.time()-m0))\n";
    let out = lan
        .exec("python3", &["-c", script])
        .output()
        .expect("running python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let echoes: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let expected = limit / 1042.0;
    eprintln!("{echoes:.1} echoes/s against {expected:.1}/s allowed");
    assert!(
        (echoes - expected).abs() / expected <= 0.10,
        "{echoes:.1}/s vs {expected:.1}/s"
    );
}
