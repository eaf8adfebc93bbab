//! TLS on every TCP link (rustls with ring; no OpenSSL): certificates, the cluster's CA, and
//! the client and server configs of the controller, hostd and the CLI.
//!
//! - The controller is the cluster's certificate authority. It issues its own server
//!   certificate, a client certificate it presents to every hostd, and each node's certificate
//!   when the node joins.
//! - A hostd that has not joined serves a self-signed certificate; an operator reads its
//!   fingerprint on the node (`triad-hostd token`) and gives it to the join, which pins it.
//! - Clients verify servers by the CA (or by a pinned fingerprint); hostd verifies the
//!   controller's client certificate by the CA. Node certificates are for servers only and
//!   the controller's for clients only, so one node's certificate cannot call another node.

use std::net::IpAddr;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("making a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{what}: {why}")]
    Pem { what: &'static str, why: String },
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("the CA certificate: {0}")]
    Roots(String),
    #[error(
        "a certificate fingerprint is `sha256:` and 64 hex digits (colons allowed), not {0:?}"
    )]
    Fingerprint(String),
    #[error("reading random bytes: {0}")]
    Random(#[source] std::io::Error),
}

/// How long what the CA issues is valid, in days.
pub const ISSUED_DAYS: i64 = 365;
const CA_DAYS: i64 = 3650;
const CA_NAME: &str = "Triad cluster CA";

/// A certificate (PEM) and its private key (PEM, PKCS#8).
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("cert", &self.fingerprint().unwrap_or_default())
            .field("key", &"…")
            .finish()
    }
}

impl Identity {
    /// The SHA-256 fingerprint of its certificate, `sha256:HEX`.
    pub fn fingerprint(&self) -> Result<String, TlsError> {
        fingerprint_pem(&self.cert_pem)
    }

    fn chain(&self) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        certs(&self.cert_pem, "the certificate")
    }

    fn key(&self) -> Result<PrivateKeyDer<'static>, TlsError> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|e| TlsError::Pem {
            what: "the private key",
            why: e.to_string(),
        })
    }
}

/// What an issued certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A server (hostd, the controller's API): TLS server authentication only.
    Server,
    /// A client (the controller calling hostd): TLS client authentication only.
    Client,
}

/// The cluster's certificate authority: its certificate and key.
pub struct Ca {
    cert_pem: String,
    key: KeyPair,
    /// The CA as rcgen signs with it: the same name and key as `cert_pem`'s.
    issuer: rcgen::Certificate,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("cert", &fingerprint_pem(&self.cert_pem).unwrap_or_default())
            .finish()
    }
}

impl Ca {
    /// A new CA, valid for ten years.
    pub fn generate() -> Result<Self, TlsError> {
        let key = KeyPair::generate()?;
        let mut params = ca_params();
        params.serial_number = Some(random_serial()?);
        let (not_before, not_after) = validity(CA_DAYS);
        params.not_before = not_before;
        params.not_after = not_after;
        let cert_pem = params.self_signed(&key)?.pem();
        Self::load(&cert_pem, &key.serialize_pem())
    }

    /// The CA of `cert_pem` with its key.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let key = KeyPair::from_pem(key_pem)?;
        certs(cert_pem, "the CA certificate")?;
        // rcgen signs with an issuer's name and key alone: a certificate made again from the
        // same name and key issues what the stored certificate verifies.
        let issuer = ca_params().self_signed(&key)?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            key,
            issuer,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A certificate for `common_name` with a new key, valid for `names` (DNS names or IP
    /// addresses) for `ISSUED_DAYS`, for `role` only.
    pub fn issue(
        &self,
        common_name: &str,
        names: &[String],
        role: Role,
    ) -> Result<Identity, TlsError> {
        let (not_before, not_after) = validity(ISSUED_DAYS);
        self.issue_between(common_name, names, role, not_before, not_after)
    }

    /// `issue`, valid from `not_before` to `not_after`.
    pub fn issue_between(
        &self,
        common_name: &str,
        names: &[String],
        role: Role,
        not_before: time::OffsetDateTime,
        not_after: time::OffsetDateTime,
    ) -> Result<Identity, TlsError> {
        let key = KeyPair::generate()?;
        let mut params = leaf_params(common_name, names, role)?;
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params.signed_by(&key, &self.issuer, &self.key)?;
        Ok(Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A self-signed server certificate for `names` (hostd's before it joins), valid for ten
/// years: it is trusted by its pinned fingerprint alone.
pub fn self_signed(common_name: &str, names: &[String]) -> Result<Identity, TlsError> {
    let key = KeyPair::generate()?;
    let mut params = leaf_params(common_name, names, Role::Server)?;
    let (not_before, not_after) = validity(CA_DAYS);
    params.not_before = not_before;
    params.not_after = not_after;
    Ok(Identity {
        cert_pem: params.self_signed(&key)?.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, CA_NAME);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn leaf_params(
    common_name: &str,
    names: &[String],
    role: Role,
) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    params.distinguished_name = name;
    params.subject_alt_names = names
        .iter()
        .map(|n| match n.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => Ok(SanType::DnsName(n.clone().try_into()?)),
        })
        .collect::<Result<_, rcgen::Error>>()?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![match role {
        Role::Server => ExtendedKeyUsagePurpose::ServerAuth,
        Role::Client => ExtendedKeyUsagePurpose::ClientAuth,
    }];
    params.serial_number = Some(random_serial()?);
    Ok(params)
}

/// From an hour ago (clocks of a cluster differ a little) to `days` from now.
fn validity(days: i64) -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = time::OffsetDateTime::now_utc();
    (
        now - time::Duration::hours(1),
        now + time::Duration::days(days),
    )
}

fn random_serial() -> Result<SerialNumber, TlsError> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(TlsError::Random)?;
    // Positive: the top bit clear.
    bytes[0] &= 0x7f;
    Ok(SerialNumber::from_slice(&bytes))
}

fn certs(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            why: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what,
            why: "no certificate in it".into(),
        });
    }
    Ok(certs)
}

/// `sha256:HEX` of a DER certificate.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// The fingerprint of the first certificate in `pem`.
pub fn fingerprint_pem(pem: &str) -> Result<String, TlsError> {
    Ok(fingerprint(&certs(pem, "the certificate")?[0]))
}

/// A fingerprint as `sha256:HEX` (lower case), from that form with or without the prefix,
/// colons or upper case.
pub fn parse_fingerprint(text: &str) -> Result<String, TlsError> {
    let hex: String = text
        .trim()
        .strip_prefix("sha256:")
        .unwrap_or(text.trim())
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(TlsError::Fingerprint(text.to_owned()));
    }
    Ok(format!("sha256:{hex}"))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca_pem: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs(ca_pem, "the CA certificate")? {
        roots
            .add(cert)
            .map_err(|e| TlsError::Roots(e.to_string()))?;
    }
    Ok(roots)
}

/// A client that trusts servers the CA of `ca_pem` vouches for (by name), presenting
/// `identity` when given.
pub fn client_by_ca(ca_pem: &str, identity: Option<&Identity>) -> Result<ClientTls, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca_pem)?);
    let config = match identity {
        Some(id) => builder.with_client_auth_cert(id.chain()?, id.key()?)?,
        None => builder.with_no_client_auth(),
    };
    Ok(ClientTls(Arc::new(config)))
}

/// A client that trusts exactly the server whose certificate has `fingerprint`, whatever its
/// name or issuer (as ssh trusts a known host key).
pub fn client_pinned(fingerprint: &str) -> Result<ClientTls, TlsError> {
    let provider = provider();
    let verifier = Pinned {
        fingerprint: parse_fingerprint(fingerprint)?,
        algorithms: provider.signature_verification_algorithms,
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(ClientTls(Arc::new(config)))
}

/// A server presenting `identity`; with `client_ca`, every client must present a certificate
/// for client authentication that this CA issued.
pub fn server(identity: &Identity, client_ca: Option<&str>) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        Some(ca) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(ca)?),
                provider,
            )
            .build()
            .map_err(|e| TlsError::Roots(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(
        builder.with_single_cert(identity.chain()?, identity.key()?)?,
    ))
}

/// Whether `identity`'s certificate is one the CA of `ca_pem` issued to a server named
/// `name`, valid now.
pub fn verify_server(ca_pem: &str, identity: &Identity, name: &str) -> Result<(), TlsError> {
    use rustls::client::WebPkiServerVerifier;
    let verifier =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots(ca_pem)?), provider())
            .build()
            .map_err(|e| TlsError::Roots(e.to_string()))?;
    let chain = identity.chain()?;
    let name = ServerName::try_from(name.to_owned())
        .map_err(|e| TlsError::Roots(format!("{name:?}: {e}")))?;
    verifier.verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now())?;
    Ok(())
}

/// A client's TLS config (compared by identity: two are equal when they are the same one).
#[derive(Clone)]
pub struct ClientTls(pub Arc<ClientConfig>);

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientTls")
    }
}

impl PartialEq for ClientTls {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for ClientTls {}

/// The server name a client checks the certificate of `host:port` for.
pub fn server_name(addr: &str) -> Result<ServerName<'static>, TlsError> {
    let host = match addr.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host,
        _ => addr,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned())
        .map_err(|e| TlsError::Roots(format!("{host:?} is not a host name or address: {e}")))
}

#[derive(Debug)]
struct Pinned {
    fingerprint: String,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = fingerprint(end_entity);
        if presented == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the server's certificate is {presented}, not the pinned {}",
                self.fingerprint
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_in_every_spelling() {
        let hex = "ab".repeat(32);
        let want = format!("sha256:{hex}");
        assert_eq!(parse_fingerprint(&hex).unwrap(), want);
        assert_eq!(
            parse_fingerprint(&want.to_uppercase().replace("SHA256:", "sha256:")).unwrap(),
            want
        );
        let colons = hex
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(
            parse_fingerprint(&format!("sha256:{colons}")).unwrap(),
            want
        );
        for bad in [
            "",
            "sha256:",
            "sha256:abc",
            &"zz".repeat(32),
            &"ab".repeat(33),
        ] {
            assert!(parse_fingerprint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_ca_loaded_again_issues_what_its_certificate_verifies() {
        let ca = Ca::generate().unwrap();
        let again = Ca::load(ca.cert_pem(), &ca.key_pem()).unwrap();
        let node = again
            .issue("n1", &["n1".into(), "10.0.0.1".into()], Role::Server)
            .unwrap();
        let chain = node.chain().unwrap();
        let anchor = roots(ca.cert_pem()).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(anchor),
            provider(),
        )
        .build()
        .unwrap();
        let now = UnixTime::now();
        for name in ["n1", "10.0.0.1"] {
            verifier
                .verify_server_cert(
                    &chain[0],
                    &[],
                    &ServerName::try_from(name).unwrap(),
                    &[],
                    now,
                )
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert!(verifier
            .verify_server_cert(
                &chain[0],
                &[],
                &ServerName::try_from("n2").unwrap(),
                &[],
                now
            )
            .is_err());
        // A foreign CA's node is not this cluster's.
        let foreign = Ca::generate()
            .unwrap()
            .issue("n1", &["n1".into()], Role::Server)
            .unwrap();
        assert!(verifier
            .verify_server_cert(
                &foreign.chain().unwrap()[0],
                &[],
                &ServerName::try_from("n1").unwrap(),
                &[],
                now
            )
            .is_err());
        // Expired: refused.
        let past = time::OffsetDateTime::now_utc() - time::Duration::days(10);
        let expired = ca
            .issue_between(
                "n1",
                &["n1".into()],
                Role::Server,
                past,
                past + time::Duration::days(1),
            )
            .unwrap();
        let err = verifier
            .verify_server_cert(
                &expired.chain().unwrap()[0],
                &[],
                &ServerName::try_from("n1").unwrap(),
                &[],
                now,
            )
            .unwrap_err();
        assert!(err.to_string().contains("expired"), "{err}");
    }

    #[test]
    fn a_pinned_client_trusts_that_certificate_alone() {
        let node = self_signed("n1", &["n1".into()]).unwrap();
        let other = self_signed("n1", &["n1".into()]).unwrap();
        let pinned = Pinned {
            fingerprint: node.fingerprint().unwrap(),
            algorithms: provider().signature_verification_algorithms,
        };
        let name = ServerName::try_from("anything").unwrap();
        let now = UnixTime::now();
        assert!(pinned
            .verify_server_cert(&node.chain().unwrap()[0], &[], &name, &[], now)
            .is_ok());
        let err = pinned
            .verify_server_cert(&other.chain().unwrap()[0], &[], &name, &[], now)
            .unwrap_err();
        assert!(err.to_string().contains("not the pinned"), "{err}");
    }

    #[test]
    fn server_names_from_addresses() {
        assert_eq!(
            server_name("10.0.0.1:7301").unwrap(),
            ServerName::try_from("10.0.0.1").unwrap()
        );
        assert_eq!(
            server_name("ctl.example:7300").unwrap(),
            ServerName::try_from("ctl.example").unwrap()
        );
        assert_eq!(
            server_name("[::1]:7300").unwrap(),
            ServerName::try_from("::1").unwrap()
        );
    }
}
