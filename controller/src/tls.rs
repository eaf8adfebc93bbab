//! The controller as the cluster's certificate authority (`triad_api::tls`): its CA kept in
//! `tls_dir` (`ca.pem`, and `ca.key` mode 0600), its API's server certificate and the client
//! certificate it shows every hostd, both issued again at each start (so a new address of
//! the host is in the next one), and each node's certificate issued at its join.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use triad_api::tls::{self, Ca, ClientTls, Identity, Role};

/// What TLS the controller speaks.
#[derive(Debug)]
pub struct ClusterTls {
    pub ca: Ca,
    /// How the controller calls a joined node's hostd: the CA verifies hostd, and hostd the
    /// controller's client certificate.
    pub hostd: ClientTls,
    /// What the API serves.
    pub server: Arc<rustls::ServerConfig>,
}

impl ClusterTls {
    /// The CA in `dir` (made on the first start), and the certificates for this start: the
    /// API's for `names` and every address and name of this host.
    pub fn open(dir: &Path, names: &[String]) -> anyhow::Result<Self> {
        let ca = load_or_make_ca(dir)?;
        let mut all: Vec<String> = names.to_vec();
        all.extend(host_names());
        all.sort();
        all.dedup();
        let server = ca.issue("triad-controller", &all, Role::Server)?;
        let client = ca.issue("triad-controller", &[], Role::Client)?;
        Ok(Self {
            hostd: tls::client_by_ca(ca.cert_pem(), Some(&client))?,
            server: tls::server(&server, None)?,
            ca,
        })
    }

    /// A node's certificate: its name and the host of the address it joined from.
    pub fn issue_node(&self, name: &str, address: &str) -> Result<Identity, tls::TlsError> {
        let mut names = vec![name.to_owned()];
        if let Some((host, _)) = address.rsplit_once(':') {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host != name {
                names.push(host.to_owned());
            }
        }
        self.ca.issue(name, &names, Role::Server)
    }
}

fn load_or_make_ca(dir: &Path) -> anyhow::Result<Ca> {
    let cert = dir.join("ca.pem");
    let key = dir.join("ca.key");
    if cert.exists() {
        crate::check_secret(&key)?;
        let cert_pem = std::fs::read_to_string(&cert)
            .with_context(|| format!("reading {}", cert.display()))?;
        let key_pem =
            std::fs::read_to_string(&key).with_context(|| format!("reading {}", key.display()))?;
        return Ca::load(&cert_pem, &key_pem)
            .with_context(|| format!("the cluster's CA in {}", dir.display()));
    }
    let ca = Ca::generate()?;
    triad_api::secrets::write(&key, ca.key_pem())
        .with_context(|| format!("writing {}", key.display()))?;
    triad_api::secrets::write(&cert, ca.cert_pem())
        .with_context(|| format!("writing {}", cert.display()))?;
    tracing::info!(
        "made the cluster's certificate authority in {} ({})",
        dir.display(),
        tls::fingerprint_pem(ca.cert_pem())?
    );
    Ok(ca)
}

/// This host's addresses and names, which clients may reach the API by.
fn host_names() -> Vec<String> {
    let mut names = vec!["localhost".to_owned()];
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        names.push(host.trim().to_owned());
    }
    names.extend(host_addresses().iter().map(IpAddr::to_string));
    names
}

/// The first address of this host that other hosts can reach: IPv4 first.
pub fn first_address() -> Option<IpAddr> {
    let addresses: Vec<IpAddr> = host_addresses()
        .into_iter()
        .filter(|ip| !ip.is_loopback())
        .collect();
    addresses
        .iter()
        .find(|ip| ip.is_ipv4())
        .or(addresses.first())
        .copied()
}

/// This host's addresses, less link-local IPv6 ones (they need a zone, which no client's URL
/// carries).
fn host_addresses() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter_map(|a| {
            let address = a.address?;
            address
                .as_sockaddr_in()
                .map(|v4| IpAddr::V4(v4.ip()))
                .or_else(|| address.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
        })
        .filter(|ip| !matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80))
        .collect()
}
