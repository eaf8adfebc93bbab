//! Where the controller is and who we are to it: `--url`/`--token`/`--ca`, then `TRIAD_URL`/
//! `TRIAD_TOKEN`, then the config file (`$TRIAD_CONFIG`, else `~/.config/triad/config.json`,
//! else the admin's config the controller wrote on its host,
//! `/var/lib/triad/controller/admin.json`): `{"url", "token" or "token_file", "ca" (PEM) or
//! "ca_file" or "fingerprint", "insecure_http"}`; then `https://127.0.0.1:7300`.
//!
//! An https URL needs what vouches for the controller: its CA or its certificate's
//! fingerprint. Plain http needs `--insecure-http` (or `"insecure_http": true`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;
use triad_api::client::Client;
use triad_api::http::{ClientError, Endpoint};
use triad_api::tls::ClientTls;

/// Where the controller writes the admin's config on its host.
const ADMIN_CONFIG: &str = "/var/lib/triad/controller/admin.json";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    url: Option<String>,
    token: Option<String>,
    token_file: Option<PathBuf>,
    /// The cluster's CA certificate, PEM.
    ca: Option<String>,
    ca_file: Option<PathBuf>,
    /// The controller's certificate's fingerprint, when no CA is given.
    fingerprint: Option<String>,
    #[serde(default)]
    insecure_http: bool,
}

fn config_paths() -> Vec<PathBuf> {
    if let Ok(path) = std::env::var("TRIAD_CONFIG") {
        return vec![PathBuf::from(path)];
    }
    let mut paths: Vec<PathBuf> = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .map(|base| base.join("triad/config.json"))
        .into_iter()
        .collect();
    paths.push(PathBuf::from(ADMIN_CONFIG));
    paths
}

/// The first config file there is (one this user may not read counts as none).
fn config_file() -> Result<ConfigFile> {
    for path in config_paths() {
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                return serde_json::from_str(&text)
                    .with_context(|| format!("reading {}", path.display()))
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
                ) => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
    Ok(ConfigFile::default())
}

/// What vouches for the controller over TLS.
enum Trust {
    Ca(String),
    Fingerprint(String),
}

/// `https://HOST:PORT` (with `trust`), `http://HOST:PORT` (with `insecure_http`) or
/// `unix:PATH`.
fn endpoint(url: &str, trust: Option<&Trust>, insecure_http: bool) -> Result<Endpoint> {
    if let Some(path) = url.strip_prefix("unix:") {
        return Ok(Endpoint::Unix(PathBuf::from(path.trim_start_matches("//"))));
    }
    let (secure, rest) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
        (Some(rest), _) => (true, rest),
        (None, Some(rest)) => (false, rest),
        _ => bail!("{url:?}: want https://HOST:PORT or unix:PATH"),
    };
    let host = rest.trim_end_matches('/');
    if host.is_empty() || host.contains('/') {
        bail!("{url:?}: want https://HOST:PORT or unix:PATH");
    }
    let with_port = if host
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        host.to_owned()
    } else {
        format!("{host}:7300")
    };
    if !secure {
        if !insecure_http {
            bail!(
                "{url:?} is plain HTTP: the controller serves TLS (https://); give \
                 --insecure-http for one run with --insecure-http"
            );
        }
        return Ok(Endpoint::Tcp(with_port));
    }
    let tls: ClientTls = match trust {
        Some(Trust::Ca(pem)) => triad_api::tls::client_by_ca(pem, None)
            .context("the CA certificate (--ca, or \"ca\"/\"ca_file\" in the config)")?,
        Some(Trust::Fingerprint(pin)) => {
            triad_api::tls::client_pinned(pin).context("the \"fingerprint\" of the config")?
        }
        None => bail!(
            "nothing vouches for the controller at {url}: give --ca FILE (its host has \
             /var/lib/triad/controller/tls/ca.pem), or \"ca\", \"ca_file\" or \"fingerprint\" \
             in the config file (the controller writes one for the admin: {ADMIN_CONFIG})"
        ),
    };
    Ok(Endpoint::Tls(with_port, tls))
}

/// What the command line said about the controller.
#[derive(Debug, Default)]
pub struct Flags {
    pub url: Option<String>,
    pub token: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub insecure_http: bool,
}

#[derive(Debug, Clone)]
pub struct Api {
    client: Client,
}

impl Api {
    pub fn new(flags: Flags) -> Result<Self> {
        let file = config_file()?;
        let url = flags
            .url
            .or_else(|| std::env::var("TRIAD_URL").ok())
            .or(file.url)
            .unwrap_or_else(|| "https://127.0.0.1:7300".into());
        let token = match flags
            .token
            .or_else(|| std::env::var("TRIAD_TOKEN").ok())
            .or(file.token)
        {
            Some(t) => Some(t),
            None => match file.token_file {
                Some(path) => Some(
                    std::fs::read_to_string(&path)
                        .with_context(|| format!("reading the token file {}", path.display()))?
                        .trim()
                        .to_owned(),
                ),
                None => None,
            },
        };
        let read_ca = |path: &PathBuf| {
            std::fs::read_to_string(path)
                .with_context(|| format!("reading the CA certificate {}", path.display()))
        };
        let trust = match (flags.ca_file, file.ca, file.ca_file, file.fingerprint) {
            (Some(path), ..) => Some(Trust::Ca(read_ca(&path)?)),
            (None, Some(pem), ..) => Some(Trust::Ca(pem)),
            (None, None, Some(path), _) => Some(Trust::Ca(read_ca(&path)?)),
            (None, None, None, Some(pin)) => Some(Trust::Fingerprint(pin)),
            (None, None, None, None) => None,
        };
        let endpoint = endpoint(
            &url,
            trust.as_ref(),
            flags.insecure_http || file.insecure_http,
        )?;
        let mut client = Client::new(endpoint).with_timeout(Duration::from_secs(60));
        if let Some(token) = token {
            client = client.with_token(token);
        }
        Ok(Self { client })
    }

    pub fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T> {
        self.client
            .call(method, path, body)
            .map_err(|e| explain(e, self.client.endpoint()))
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call("GET", path, None)
    }

    pub fn post(&self, path: &str, body: &Value) -> Result<Value> {
        self.call("POST", path, Some(body))
    }
}

/// The controller's refusal or silence, for a person.
fn explain(e: ClientError, endpoint: &Endpoint) -> anyhow::Error {
    match e {
        ClientError::Status {
            status: 401,
            message,
        } => {
            anyhow::anyhow!("{message} (give --token, TRIAD_TOKEN or a config file)")
        }
        ClientError::Status { status, message } => {
            anyhow::anyhow!("the controller answered {status}: {message}")
        }
        ClientError::Connect { .. } => anyhow::anyhow!(
            "the controller does not answer at {endpoint}: {} (give --url or TRIAD_URL)",
            triad_api::error::chain(&e)
        ),
        other => anyhow::anyhow!(
            "talking to the controller at {endpoint}: {}",
            triad_api::error::chain(&other)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let insecure = |url| endpoint(url, None, true);
        assert_eq!(
            insecure("http://10.0.0.1:7300").unwrap(),
            Endpoint::Tcp("10.0.0.1:7300".into())
        );
        assert_eq!(
            insecure("http://ctl/").unwrap(),
            Endpoint::Tcp("ctl:7300".into())
        );
        assert_eq!(
            endpoint("unix:/run/triad/controller.sock", None, false).unwrap(),
            Endpoint::Unix("/run/triad/controller.sock".into())
        );
        assert_eq!(
            endpoint("unix:///run/c.sock", None, false).unwrap(),
            Endpoint::Unix("/run/c.sock".into())
        );
        for bad in [
            "ftp://x",
            "http://",
            "http://a/b",
            "x",
            "https://",
            "https://a/b",
        ] {
            assert!(insecure(bad).is_err(), "{bad}");
        }
        let plain = endpoint("http://10.0.0.1:7300", None, false).unwrap_err();
        assert!(plain.to_string().contains("--insecure-http"), "{plain}");
        let untrusted = endpoint("https://10.0.0.1", None, false).unwrap_err();
        assert!(untrusted.to_string().contains("--ca FILE"), "{untrusted}");
        let pin = Trust::Fingerprint("ab".repeat(32));
        assert!(matches!(
            endpoint("https://ctl", Some(&pin), false).unwrap(),
            Endpoint::Tls(addr, _) if addr == "ctl:7300"
        ));
        let bad_ca = Trust::Ca("not PEM".into());
        assert!(endpoint("https://ctl:7300", Some(&bad_ca), false).is_err());
    }
}
