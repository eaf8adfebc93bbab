//! `triad-hostd init`: a node's three config files (hostd's, netd's and storaged's) from the
//! few facts an operator knows: the node's name, its management and storage networks (an
//! interface or an address of this host) and its pools. Everything else keeps its default.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Serialize;
use triad_api::hostd::HostdConfig;
use triad_api::net::NetdConfig;
use triad_api::storage::{PoolConfig, PoolKind, StoragedConfig};

/// The TCP port hostd serves the controller on.
pub const HOSTD_PORT: u16 = 7301;
/// The UDP port of the peer heartbeats, on each probe network.
pub const HEARTBEAT_PORT: u16 = 7302;

/// What the operator said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitRequest {
    pub node: Option<String>,
    /// An interface name or an address of this host.
    pub management: String,
    /// The storage network, when it is not the management one.
    pub storage: Option<String>,
    /// `NAME=local:DIR`, `NAME=smp:DIR` or `NAME=ceph:RBD_POOL`.
    pub pools: Vec<String>,
}

/// The three files `init` writes.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfigs {
    pub hostd: HostdConfig,
    pub netd: NetdConfig,
    pub storaged: StoragedConfig,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InitError {
    #[error("--{flag} {value}: {why}")]
    Flag {
        flag: &'static str,
        value: String,
        why: String,
    },
    #[error("{0} exists: give --force to replace it")]
    Exists(PathBuf),
    #[error("writing {0}: {1}")]
    Write(PathBuf, String),
}

/// This host's interfaces and their addresses: (interface, address).
pub fn host_addresses() -> Vec<(String, IpAddr)> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter_map(|a| {
            let ip = a.address.as_ref().and_then(|s| {
                s.as_sockaddr_in()
                    .map(|v4| IpAddr::V4(v4.ip()))
                    .or_else(|| s.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
            })?;
            Some((a.interface_name, ip))
        })
        .collect()
}

/// The configs for `request` on a host with `addresses` (from `host_addresses`).
pub fn configs(
    request: &InitRequest,
    addresses: &[(String, IpAddr)],
) -> Result<NodeConfigs, InitError> {
    let management = address_of("management", &request.management, addresses)?;
    let mut probes = vec![SocketAddr::new(management, HEARTBEAT_PORT)];
    if let Some(storage) = &request.storage {
        let storage = address_of("storage", storage, addresses)?;
        if storage != management {
            probes.push(SocketAddr::new(storage, HEARTBEAT_PORT));
        }
    }
    if let Some(node) = &request.node {
        if !valid_node_name(node) {
            return Err(flag_error(
                "name",
                node,
                "a node's name is 1-63 of a-z, 0-9 and '-', starting with a letter",
            ));
        }
    }
    let mut hostd: HostdConfig = empty_config();
    hostd.node.clone_from(&request.node);
    hostd.listen = Some(SocketAddr::new(management, HOSTD_PORT));
    hostd.probes = probes;
    let mut netd: NetdConfig = empty_config();
    netd.node.clone_from(&request.node);
    let mut storaged: StoragedConfig = empty_config();
    storaged.node.clone_from(&request.node);
    for spec in &request.pools {
        let pool = pool(spec)?;
        storaged.pools.retain(|p| p.name != pool.name);
        storaged.pools.push(pool);
    }
    Ok(NodeConfigs {
        hostd,
        netd,
        storaged,
    })
}

/// Writes the configs: hostd's at `hostd_path`, netd's and storaged's beside it. Nothing is
/// written when one exists and `force` is not given.
pub fn write(hostd_path: &Path, configs: &NodeConfigs, force: bool) -> Result<(), InitError> {
    let dir = hostd_path.parent().unwrap_or(Path::new("."));
    let files = [
        (hostd_path.to_owned(), to_json(&configs.hostd)),
        (dir.join("netd.json"), to_json(&configs.netd)),
        (dir.join("storaged.json"), to_json(&configs.storaged)),
    ];
    if !force {
        if let Some((path, _)) = files.iter().find(|(path, _)| path.exists()) {
            return Err(InitError::Exists(path.clone()));
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| InitError::Write(dir.to_owned(), e.to_string()))?;
    for (path, text) in files {
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| InitError::Write(path.clone(), e.to_string()))?;
    }
    Ok(())
}

fn to_json<T: Serialize>(config: &T) -> String {
    let mut text = serde_json::to_string_pretty(config).expect("configs serialize");
    text.push('\n');
    text
}

/// A config with every default, as a daemon reads `{}`.
fn empty_config<T: serde::de::DeserializeOwned>() -> T {
    serde_json::from_str("{}").expect("every config key has a default")
}

fn flag_error(flag: &'static str, value: &str, why: &str) -> InitError {
    InitError::Flag {
        flag,
        value: value.to_owned(),
        why: why.to_owned(),
    }
}

/// `value` as an address of this host: itself, or an interface's first IPv4 address (else
/// its first address).
fn address_of(
    flag: &'static str,
    value: &str,
    addresses: &[(String, IpAddr)],
) -> Result<IpAddr, InitError> {
    if let Ok(ip) = value.parse::<IpAddr>() {
        return if addresses.iter().any(|(_, a)| *a == ip) {
            Ok(ip)
        } else {
            Err(flag_error(
                flag,
                value,
                "no interface of this host has this address",
            ))
        };
    }
    // A link-local IPv6 address is no use without its interface, which a socket address
    // cannot say.
    let on_interface: Vec<IpAddr> = addresses
        .iter()
        .filter(|(name, a)| name == value && !is_link_local_v6(a))
        .map(|(_, a)| *a)
        .collect();
    if on_interface.is_empty() {
        let known = addresses.iter().any(|(name, _)| name == value);
        let why = if known {
            "the interface has no address but a link-local one"
        } else {
            "no such interface with an address on this host (give an interface or an address)"
        };
        return Err(flag_error(flag, value, why));
    }
    Ok(on_interface
        .iter()
        .find(|a| a.is_ipv4())
        .copied()
        .unwrap_or(on_interface[0]))
}

fn is_link_local_v6(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
}

fn valid_node_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

/// `NAME=KIND:WHERE`.
fn pool(spec: &str) -> Result<PoolConfig, InitError> {
    let bad = |why: &str| flag_error("pool", spec, why);
    let (name, rest) = spec
        .split_once('=')
        .ok_or_else(|| bad("want NAME=local:DIR, NAME=smp:DIR or NAME=ceph:RBD_POOL"))?;
    if !valid_node_name(name) {
        return Err(bad(
            "a pool's name is 1-63 of a-z, 0-9 and '-', starting with a letter",
        ));
    }
    let (kind, place) = rest
        .split_once(':')
        .ok_or_else(|| bad("want NAME=local:DIR, NAME=smp:DIR or NAME=ceph:RBD_POOL"))?;
    let (kind, path, rbd_pool) = match kind {
        "local" | "smp" => {
            if !place.starts_with('/') {
                return Err(bad("the directory must be an absolute path"));
            }
            let kind = if kind == "local" {
                PoolKind::Local
            } else {
                PoolKind::Smp
            };
            (kind, Some(PathBuf::from(place)), None)
        }
        "ceph" if !place.is_empty() => (PoolKind::Ceph, None, Some(place.to_owned())),
        "ceph" => return Err(bad("name the RADOS pool: NAME=ceph:RBD_POOL")),
        _ => return Err(bad("the kind is local, smp or ceph")),
    };
    Ok(PoolConfig {
        name: name.to_owned(),
        kind,
        path,
        rbd_pool,
        ceph: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> Vec<(String, IpAddr)> {
        vec![
            ("lo".into(), "127.0.0.1".parse().unwrap()),
            ("eno1".into(), "fe80::1".parse().unwrap()),
            ("eno1".into(), "10.0.0.11".parse().unwrap()),
            ("eno2".into(), "10.1.0.11".parse().unwrap()),
            ("eno3".into(), "fe80::3".parse().unwrap()),
        ]
    }

    fn request(management: &str, storage: Option<&str>, pools: &[&str]) -> InitRequest {
        InitRequest {
            node: Some("n1".into()),
            management: management.into(),
            storage: storage.map(str::to_owned),
            pools: pools.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn three_networks_by_interface_or_address() {
        let c = configs(
            &request("eno1", Some("10.1.0.11"), &["shared=smp:/mnt/triad"]),
            &host(),
        )
        .unwrap();
        assert_eq!(c.hostd.listen, Some("10.0.0.11:7301".parse().unwrap()));
        assert_eq!(
            c.hostd.probes,
            vec![
                "10.0.0.11:7302".parse().unwrap(),
                "10.1.0.11:7302".parse().unwrap()
            ]
        );
        assert_eq!(c.hostd.node.as_deref(), Some("n1"));
        assert_eq!(c.netd.node.as_deref(), Some("n1"));
        let pools: Vec<_> = c.storaged.pools.iter().map(|p| (&p.name, p.kind)).collect();
        assert_eq!(
            pools,
            [
                (&"local".to_owned(), PoolKind::Local),
                (&"shared".to_owned(), PoolKind::Smp)
            ]
        );
        // Untouched keys keep their defaults.
        assert_eq!(c.hostd.state_dir, PathBuf::from("/var/lib/triad/hostd"));
    }

    #[test]
    fn one_network() {
        let c = configs(&request("10.0.0.11", Some("eno1"), &[]), &host()).unwrap();
        assert_eq!(c.hostd.probes, vec!["10.0.0.11:7302".parse().unwrap()]);
        assert_eq!(c.storaged.pools.len(), 1);
    }

    #[test]
    fn mistakes_name_the_flag() {
        let err = |r: InitRequest| configs(&r, &host()).unwrap_err().to_string();
        assert!(err(request("eth9", None, &[])).starts_with("--management eth9: no such interface"));
        assert!(err(request("10.9.9.9", None, &[])).contains("no interface of this host has"));
        assert_eq!(
            err(request("eno1", Some("eno3"), &[])),
            "--storage eno3: the interface has no address but a link-local one"
        );
        for bad in ["x", "a=b", "a=local:rel", "a=ceph:", "A=smp:/x", "a=nfs:/x"] {
            assert!(
                err(request("eno1", None, &[bad])).starts_with(&format!("--pool {bad}: ")),
                "{bad}"
            );
        }
        let mut r = request("eno1", None, &[]);
        r.node = Some("Bad_Name".into());
        assert!(err(r).starts_with("--name Bad_Name"));
    }

    #[test]
    fn written_beside_hostd_s_and_never_over_one_unless_forced() {
        let dir = std::env::temp_dir().join(format!("triad-init-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let hostd = dir.join("hostd.json");
        let c = configs(&request("eno1", None, &["rbd=ceph:rbd"]), &host()).unwrap();
        write(&hostd, &c, false).unwrap();
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
        let back: HostdConfig = serde_json::from_str(&read("hostd.json")).unwrap();
        assert_eq!(back, c.hostd);
        let back: StoragedConfig = serde_json::from_str(&read("storaged.json")).unwrap();
        assert_eq!(back, c.storaged);
        let back: NetdConfig = serde_json::from_str(&read("netd.json")).unwrap();
        assert_eq!(back, c.netd);
        assert_eq!(
            write(&hostd, &c, false),
            Err(InitError::Exists(hostd.clone()))
        );
        write(&hostd, &c, true).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
