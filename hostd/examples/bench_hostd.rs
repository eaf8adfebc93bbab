//! Benchmark driver for `scripts/bench-hostd`: on one node of the cluster harness (a network
//! namespace running triad-netd, triad-storaged and triad-hostd) with a private Ceph cluster
//! inside that namespace, boots `N` test guests through `PUT /vms/{uuid}` and `N` the direct
//! way, the steps hostd takes done by hand (storaged clones the root volume from the image,
//! netd makes the port, triad-vmm boots the config), alternating which goes first. Each VM is
//! timed from the first request to `TRIAD-GUEST-READY` (the guest runs) and to
//! `TRIAD-NET-READY` (its NIC leased its address from netd's DHCP and resolved its gateway),
//! then torn down before the next: the test guest busy-polls its NIC once up, and dozens of
//! them would starve a small machine's cores and skew the later figures. The first VM of each
//! side is a warm-up, not counted.
//!
//! `bench-hostd [N]` (default 20) prints p50/p99 of each figure, each side, and the ratios.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;
use triad_api::client::{HostdClient, NetdClient, StoragedClient, VmmClient};
use triad_api::hostd::VmSpec;
use triad_api::net::PortSpec;
use triad_api::storage::{ImageRequest, ImageSource, ImageState, VolumeRequest, VolumeSource};
use triad_api::vmm::{
    BootConfig, MachineConfig, NetConfig, SerialConfig, SerialMode, VmAction, VmConfig,
};
use triad_tests::{binary, guest_elf, Cluster, Ns};

const POOL: &str = "ceph";
const IMAGE: &str = "bench-img";
const CMDLINE: &str = "triad.blk=ro triad.net=dhcp";
const ROOT_BYTES: u64 = 4 << 20;
const TIMEOUT: Duration = Duration::from_secs(60);
/// How often the serial logs are read for the guest's lines: well under the figures, and
/// the same for both sides.
const POLL: Duration = Duration::from_millis(2);

/// When the VMM opened the serial log, the guest said it runs and its network was up, from
/// the first request.
#[derive(Debug, Clone, Copy)]
struct Boot {
    vmm: Duration,
    ready: Duration,
    net: Duration,
}

fn main() -> Result<()> {
    let runs: usize = match std::env::args().nth(1) {
        Some(n) => n.parse().context("N must be a count of VMs")?,
        None => 20,
    };
    if runs == 0 || runs > 100 {
        bail!("N must be 1 to 100, not {runs}");
    }
    if !Path::new("/dev/kvm").exists() {
        bail!("/dev/kvm does not exist");
    }
    let mut cluster = Cluster::new("bench-hd", 1);
    // This thread, and so the VMMs it starts and the Ceph daemons, live in the node's
    // namespace: the direct path's TAPs are there, and Ceph listens on its loopback.
    triad_tests::enter_netns(&cluster.nodes[0].ns.name);
    let ceph = triad_ceph::dev::shared();
    let node = &mut cluster.nodes[0];
    let mut storaged_config = node.storaged.config();
    storaged_config["pools"]
        .as_array_mut()
        .context("storaged's config has pools")?
        .push(
            json!({"name": POOL, "kind": "ceph", "rbd_pool": "rbd", "ceph": {"conf": ceph.conf}}),
        );
    node.storaged.reconfigure(storaged_config);
    let node = &cluster.nodes[0];

    let hostd = HostdClient::new(&node.hostd.socket).with_timeout(TIMEOUT);
    let storaged = StoragedClient::new(&node.storaged.socket).with_timeout(TIMEOUT);
    let netd = NetdClient::new(&node.netd.socket).with_timeout(TIMEOUT);
    let lan = cluster.vxlan_spec("lan", 6161, "10.61.0.0/24", "10.61.0.1");
    let network = netd.put_network("lan", &serde_json::from_value(lan[0].clone())?)?;
    // The network's router, a namespace on its bridge: the guest resolves its gateway once
    // DHCP'd, and an absent one would add its ARP give-up time (~1 s) to every figure.
    let router = Ns::new("bench-hd-gw");
    node.ns
        .wire("gw0", None, &router, "eth0", Some("10.61.0.1/24"));
    node.ns
        .ip(&["link", "set", "gw0", "master", &network.bridge]);
    import_image(&storaged, &cluster.dir().join("image.raw"))?;

    let direct_dir = node.dir.join("direct");
    let (mut via_hostd, mut direct) = (Vec::new(), Vec::new());
    // VM 0 of each side warms up what a node's first VM meets (storaged's image record,
    // hostd's view of the pools) and is not counted.
    for i in 0..=runs {
        let mut one = |hostd_side: bool| -> Result<()> {
            let boot = if hostd_side {
                boot_by_hostd(&hostd, &node.dir, i)?
            } else {
                boot_directly(&storaged, &netd, &direct_dir, i)?
            };
            if i > 0 {
                if hostd_side {
                    &mut via_hostd
                } else {
                    &mut direct
                }
                .push(boot);
            }
            Ok(())
        };
        one(i % 2 == 0)?;
        one(i % 2 == 1)?;
    }

    println!(
        "{:<34} {:>10} {:>10} {:>10} {:>10} {:>8} {:>8}",
        "ensure to", "hostd p50", "hostd p99", "direct p50", "direct p99", "p50", "p99"
    );
    row(
        "VMM started (serial log made) ms",
        &via_hostd,
        &direct,
        |b| b.vmm,
    );
    row("TRIAD-GUEST-READY ms", &via_hostd, &direct, |b| b.ready);
    row("TRIAD-NET-READY (DHCP'd) ms", &via_hostd, &direct, |b| {
        b.net
    });
    drop(router);
    drop(cluster);
    Ok(())
}

/// A 1 MiB raw image in the Ceph pool, as an operator imports one.
fn import_image(storaged: &StoragedClient, file: &Path) -> Result<()> {
    let mut bytes = vec![0u8; 1 << 20];
    bytes[..16].copy_from_slice(b"TRIAD-TEST-IMAGE");
    std::fs::write(file, bytes)?;
    storaged.import_image(
        POOL,
        &ImageRequest {
            id: IMAGE.into(),
            name: IMAGE.into(),
            source: ImageSource::File {
                path: file.to_owned(),
            },
            sha256: None,
        },
    )?;
    let start = Instant::now();
    loop {
        let image = storaged.image(POOL, IMAGE)?.context("the image is gone")?;
        match image.state {
            ImageState::Ready => return Ok(()),
            ImageState::Failed => bail!("the image failed to import: {:?}", image.error),
            _ if start.elapsed() > TIMEOUT => bail!("the image did not import in {TIMEOUT:?}"),
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// VM `i`'s NIC: odd addresses and MACs for hostd's VMs, even ones for the direct ones.
fn nic(i: usize, hostd_side: bool) -> (String, String) {
    let host = 10 + 2 * i + usize::from(hostd_side);
    (
        format!("52:54:00:61:00:{host:02x}"),
        format!("10.61.0.{host}"),
    )
}

fn boot_by_hostd(hostd: &HostdClient, node_dir: &Path, i: usize) -> Result<Boot> {
    let uuid = format!("b3a7c0de-0000-4000-8000-{i:012x}");
    let (mac, ip) = nic(i, true);
    let spec: VmSpec = serde_json::from_value(json!({
        "name": format!("bench-{i}"),
        "generation": 1,
        "vcpus": 1,
        "memory_mib": 64,
        "boot": {"kernel": guest_elf(), "cmdline": CMDLINE},
        "disks": [{
            "id": "root", "pool": POOL, "volume": format!("hostd-{i}"),
            "source": {"kind": "image", "id": IMAGE}, "size_bytes": ROOT_BYTES,
        }],
        "nics": [{"id": "eth0", "network": "lan", "mac": mac, "ip": ip}],
    }))?;
    // Where docs/hostd.md says the VM's serial log is, watched from before the request.
    let serial = node_dir.join("hostd/vms").join(&uuid).join("serial.log");
    let start = Instant::now();
    let watch = watch_serial(serial.clone(), start);
    let vm = hostd.ensure(&uuid, &spec)?;
    if vm.serial_log != serial {
        bail!("hostd logs the serial at {}", vm.serial_log.display());
    }
    let boot = watch.join().expect("the serial watch")?;
    hostd.remove(&uuid)?;
    Ok(boot)
}

fn boot_directly(
    storaged: &StoragedClient,
    netd: &NetdClient,
    dir: &Path,
    i: usize,
) -> Result<Boot> {
    let id = format!("direct-{i}");
    let dir = dir.join(&id);
    std::fs::create_dir_all(&dir)?;
    let serial = dir.join("serial.log");
    let (mac, ip) = nic(i, false);
    let start = Instant::now();
    let watch = watch_serial(serial.clone(), start);
    let volume = storaged.create_volume(
        POOL,
        &VolumeRequest {
            id: id.clone(),
            name: id.clone(),
            size_bytes: ROOT_BYTES,
            source: VolumeSource::Image { id: IMAGE.into() },
            qos: None,
        },
    )?;
    let port_spec: PortSpec = serde_json::from_value(json!({
        "network": "lan", "mac": mac, "ip": ip, "hostname": id,
        "metadata": {"instance_id": id},
    }))?;
    let port = netd.put_port(&id, &port_spec)?;
    let config = VmConfig {
        boot: BootConfig {
            kernel: guest_elf(),
            initrd: None,
            cmdline: CMDLINE.into(),
        },
        machine: MachineConfig {
            vcpus: 1,
            memory_mib: 64,
        },
        serial: SerialConfig {
            mode: SerialMode::File,
            path: Some(serial),
            max_bytes: None,
        },
        drives: vec![volume.drive("root")],
        nets: vec![NetConfig {
            id: "eth0".into(),
            tap: port.tap,
            mac: Some(mac),
            qos: None,
        }],
        rng: true,
    };
    let config_path = dir.join("vm.json");
    std::fs::write(&config_path, serde_json::to_vec_pretty(&config)?)?;
    let socket = dir.join("vmm.sock");
    let log = std::fs::File::create(dir.join("vmm.log"))?;
    let mut vmm = Command::new(binary("triad-vmm"))
        .arg("--config")
        .arg(&config_path)
        .arg("--api-sock")
        .arg(&socket)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let boot = watch.join().expect("the serial watch");
    shut_down(&mut vmm, &socket)?;
    netd.delete_port(&id)?;
    storaged.delete_volume(POOL, &id)?;
    boot
}

/// Powers the VMM off as hostd's remove does (a killed one would leave its RBD watch behind
/// for half a minute, and the volume could not be deleted).
fn shut_down(vmm: &mut Child, socket: &Path) -> Result<()> {
    let asked = VmmClient::new(socket)
        .with_timeout(Duration::from_secs(5))
        .action(VmAction::Shutdown);
    let start = Instant::now();
    while vmm.try_wait()?.is_none() {
        if asked.is_err() || start.elapsed() > Duration::from_secs(10) {
            vmm.kill()?;
            vmm.wait()?;
            bail!("the direct VMM did not power off: {asked:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Reads `path` every `POLL` until the guest's ready lines are in it.
fn watch_serial(path: PathBuf, start: Instant) -> JoinHandle<Result<Boot>> {
    std::thread::spawn(move || {
        let (mut vmm, mut ready) = (None, None);
        loop {
            if vmm.is_none() && path.exists() {
                vmm = Some(start.elapsed());
            }
            let log = std::fs::read_to_string(&path).unwrap_or_default();
            if ready.is_none() && log.contains("TRIAD-GUEST-READY\n") {
                ready = Some(start.elapsed());
            }
            if let (Some(vmm), Some(ready)) = (vmm, ready) {
                if log.contains("TRIAD-NET-READY\n") {
                    return Ok(Boot {
                        vmm,
                        ready,
                        net: start.elapsed(),
                    });
                }
            }
            if start.elapsed() > TIMEOUT {
                bail!(
                    "no TRIAD-NET-READY in {} after {TIMEOUT:?}:\n{log}",
                    path.display()
                );
            }
            std::thread::sleep(POLL);
        }
    })
}

fn row(what: &str, hostd: &[Boot], direct: &[Boot], figure: fn(&Boot) -> Duration) {
    let ms = |boots: &[Boot]| {
        let mut v: Vec<f64> = boots
            .iter()
            .map(|b| figure(b).as_secs_f64() * 1000.0)
            .collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let (h, d) = (ms(hostd), ms(direct));
    let (h50, h99, d50, d99) = (
        percentile(&h, 50),
        percentile(&h, 99),
        percentile(&d, 50),
        percentile(&d, 99),
    );
    println!(
        "{what:<34} {h50:>10.1} {h99:>10.1} {d50:>10.1} {d99:>10.1} {:>8.2} {:>8.2}",
        h50 / d50,
        h99 / d99
    );
}

/// The nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: usize) -> f64 {
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted[rank - 1]
}
