//! Where the controller is and who we are to it: `--url`/`--token`, then `TRIAD_URL`/
//! `TRIAD_TOKEN`, then the config file (`$TRIAD_CONFIG`, else `~/.config/triad/config.json`:
//! `{"url": ..., "token": ...}` or `"token_file"`), then `http://127.0.0.1:7300`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;
use triad_api::client::Client;
use triad_api::http::{ClientError, Endpoint};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    url: Option<String>,
    token: Option<String>,
    token_file: Option<PathBuf>,
}

fn config_path() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("TRIAD_CONFIG") {
        return Some(PathBuf::from(path));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("triad/config.json"))
}

fn config_file() -> Result<ConfigFile> {
    let Some(path) = config_path() else {
        return Ok(ConfigFile::default());
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ConfigFile::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// `http://HOST:PORT` or `unix:PATH`.
pub fn endpoint(url: &str) -> Result<Endpoint> {
    if let Some(path) = url.strip_prefix("unix:") {
        return Ok(Endpoint::Unix(PathBuf::from(path.trim_start_matches("//"))));
    }
    if let Some(rest) = url.strip_prefix("http://") {
        let host = rest.trim_end_matches('/');
        if host.is_empty() || host.contains('/') {
            bail!("{url:?}: want http://HOST:PORT or unix:PATH");
        }
        let with_port = if host
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            host.to_owned()
        } else {
            format!("{host}:7300")
        };
        return Ok(Endpoint::Tcp(with_port));
    }
    if url.starts_with("https://") {
        bail!("{url:?}: the controller speaks plain HTTP (put a TLS proxy in front of it)");
    }
    bail!("{url:?}: want http://HOST:PORT or unix:PATH")
}

/// The controller's API, as this user reaches it.
#[derive(Debug, Clone)]
pub struct Api {
    client: Client,
}

impl Api {
    pub fn new(url: Option<String>, token: Option<String>) -> Result<Self> {
        let file = config_file()?;
        let url = url
            .or_else(|| std::env::var("TRIAD_URL").ok())
            .or(file.url)
            .unwrap_or_else(|| "http://127.0.0.1:7300".into());
        let token = match token
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
        let mut client = Client::new(endpoint(&url)?).with_timeout(Duration::from_secs(60));
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
        assert_eq!(
            endpoint("http://10.0.0.1:7300").unwrap(),
            Endpoint::Tcp("10.0.0.1:7300".into())
        );
        assert_eq!(
            endpoint("http://ctl/").unwrap(),
            Endpoint::Tcp("ctl:7300".into())
        );
        assert_eq!(
            endpoint("unix:/run/triad/controller.sock").unwrap(),
            Endpoint::Unix("/run/triad/controller.sock".into())
        );
        assert_eq!(
            endpoint("unix:///run/c.sock").unwrap(),
            Endpoint::Unix("/run/c.sock".into())
        );
        for bad in ["ftp://x", "https://x", "http://", "http://a/b", "x"] {
            assert!(endpoint(bad).is_err(), "{bad}");
        }
    }
}
