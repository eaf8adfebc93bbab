//! hostd's TLS on its TCP port (`triad_api::tls`). Until the node joins it serves a
//! self-signed certificate made at its first start, whose fingerprint the operator gives to
//! the join (`triad-hostd token` prints it). The join then installs the node's certificate
//! from the cluster's CA (`PUT /tls`), and from then on hostd serves that and accepts only
//! clients with a client certificate of that CA: the controller.
//!
//! Files, in `state_dir/tls/` (keys mode 0600): `self.pem` and `self.key`; after the join
//! `node.pem`, `node.key` and `ca.pem`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use triad_api::hostd::TlsInstall;
use triad_api::tls::{self, Identity};

use crate::Error;

/// The node's TLS state on disk.
#[derive(Debug, Clone)]
pub struct NodeTls {
    dir: PathBuf,
}

impl NodeTls {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join("tls"),
        }
    }

    /// The self-signed certificate, made for `names` when there is none yet.
    pub fn self_signed(&self, names: &[String]) -> Result<Identity, Error> {
        if let Some(id) = self.read("self")? {
            return Ok(id);
        }
        let id = tls::self_signed("triad-hostd", names).map_err(system)?;
        self.write("self", &id)?;
        Ok(id)
    }

    /// The self-signed certificate's fingerprint, once hostd has made it.
    pub fn fingerprint(&self) -> Result<Option<String>, Error> {
        self.read("self")?
            .map(|id| id.fingerprint().map_err(system))
            .transpose()
    }

    /// The node's certificate and the CA, once the node has joined.
    pub fn joined(&self) -> Result<Option<(Identity, String)>, Error> {
        let Some(node) = self.read("node")? else {
            return Ok(None);
        };
        let ca = std::fs::read_to_string(self.dir.join("ca.pem")).map_err(|e| {
            Error::System(format!(
                "reading {}: {e}",
                self.dir.join("ca.pem").display()
            ))
        })?;
        Ok(Some((node, ca)))
    }

    /// What hostd serves: the node's certificate, verifying clients by the CA, once joined;
    /// else the self-signed one to anybody with the token.
    pub fn server_config(&self, names: &[String]) -> Result<Arc<rustls::ServerConfig>, Error> {
        match self.joined()? {
            Some((node, ca)) => tls::server(&node, Some(&ca)).map_err(system),
            None => tls::server(&self.self_signed(names)?, None).map_err(system),
        }
    }

    /// Keeps the join's certificate and CA, after checking that the CA issued the
    /// certificate to this node (`node`) and that it makes a server config; the config to
    /// serve from now on.
    pub fn install(
        &self,
        node_name: &str,
        install: &TlsInstall,
    ) -> Result<Arc<rustls::ServerConfig>, Error> {
        let node = Identity {
            cert_pem: install.cert_pem.clone(),
            key_pem: install.key_pem.clone(),
        };
        tls::verify_server(&install.ca_pem, &node, node_name).map_err(|e| {
            Error::invalid(
                "cert_pem",
                format!("not the CA's certificate for node {node_name:?}: {e}"),
            )
        })?;
        let config = tls::server(&node, Some(&install.ca_pem))
            .map_err(|e| Error::invalid("cert_pem", e.to_string()))?;
        write_file(&self.dir.join("ca.pem"), &install.ca_pem)?;
        self.write("node", &node)?;
        Ok(config)
    }

    fn read(&self, name: &str) -> Result<Option<Identity>, Error> {
        let cert = self.dir.join(format!("{name}.pem"));
        let key = self.dir.join(format!("{name}.key"));
        let read = |path: &Path| match std::fs::read_to_string(path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::System(format!("reading {}: {e}", path.display()))),
        };
        match (read(&cert)?, read(&key)?) {
            (Some(cert_pem), Some(key_pem)) => Ok(Some(Identity { cert_pem, key_pem })),
            _ => Ok(None),
        }
    }

    fn write(&self, name: &str, id: &Identity) -> Result<(), Error> {
        // The key first: a certificate on disk always has its key.
        write_file(&self.dir.join(format!("{name}.key")), &id.key_pem)?;
        write_file(&self.dir.join(format!("{name}.pem")), &id.cert_pem)
    }
}

fn write_file(path: &Path, text: &str) -> Result<(), Error> {
    triad_api::secrets::write(path, text)
        .map_err(|e| Error::System(format!("writing {}: {e}", path.display())))
}

fn system(e: tls::TlsError) -> Error {
    Error::System(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_until_the_join_installs_the_cluster_s() {
        let dir = std::env::temp_dir().join(format!("triad-hostd-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let node = NodeTls::new(&dir);
        assert_eq!(node.fingerprint().unwrap(), None);
        let mine = node.self_signed(&["n1".into()]).unwrap();
        assert_eq!(node.self_signed(&["n1".into()]).unwrap(), mine, "made once");
        assert_eq!(
            node.fingerprint().unwrap(),
            Some(mine.fingerprint().unwrap())
        );
        let key_mode = std::fs::metadata(dir.join("tls/self.key")).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&key_mode.permissions()) & 0o777,
            0o600
        );
        assert!(node.joined().unwrap().is_none());

        let ca = tls::Ca::generate().unwrap();
        let cert = ca.issue("n1", &["n1".into()], tls::Role::Server).unwrap();
        let bad = TlsInstall {
            ca_pem: "not a certificate".into(),
            cert_pem: cert.cert_pem.clone(),
            key_pem: cert.key_pem.clone(),
        };
        assert!(matches!(
            node.install("n1", &bad),
            Err(Error::Invalid { .. })
        ));
        let other = tls::Ca::generate().unwrap();
        let foreign = TlsInstall {
            ca_pem: other.cert_pem().to_owned(),
            cert_pem: cert.cert_pem.clone(),
            key_pem: cert.key_pem.clone(),
        };
        assert!(matches!(
            node.install("n1", &foreign),
            Err(Error::Invalid { .. })
        ));
        let right = TlsInstall {
            ca_pem: ca.cert_pem().to_owned(),
            cert_pem: cert.cert_pem.clone(),
            key_pem: cert.key_pem.clone(),
        };
        assert!(matches!(
            node.install("n2", &right),
            Err(Error::Invalid { .. })
        ));
        assert!(
            node.joined().unwrap().is_none(),
            "nothing kept of a bad install"
        );
        node.install(
            "n1",
            &TlsInstall {
                ca_pem: ca.cert_pem().to_owned(),
                cert_pem: cert.cert_pem.clone(),
                key_pem: cert.key_pem.clone(),
            },
        )
        .unwrap();
        let (joined, ca_pem) = node.joined().unwrap().unwrap();
        assert_eq!(joined, cert);
        assert_eq!(ca_pem, ca.cert_pem());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
