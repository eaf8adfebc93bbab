//! A small blocking HTTP/1.1 client over a Unix socket or TCP (the typed clients in `client`
//! are built on it), and how a daemon claims its socket.
//!
//! Triad's node-local APIs (the VMM's, netd's and storaged's) speak HTTP/JSON on Unix sockets;
//! hostd and the controller also on TCP. One request per connection keeps both ends simple
//! and stateless.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::tls::ClientTls;

/// Where a server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    /// `host:port`, plain HTTP.
    Tcp(String),
    /// `host:port`, HTTPS with this client's TLS config.
    Tls(String, ClientTls),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "{}", path.display()),
            Self::Tcp(addr) => write!(f, "http://{addr}"),
            Self::Tls(addr, _) => write!(f, "https://{addr}"),
        }
    }
}

impl From<PathBuf> for Endpoint {
    fn from(path: PathBuf) -> Self {
        Self::Unix(path)
    }
}

impl From<&PathBuf> for Endpoint {
    fn from(path: &PathBuf) -> Self {
        Self::Unix(path.clone())
    }
}

impl From<&Path> for Endpoint {
    fn from(path: &Path) -> Self {
        Self::Unix(path.to_owned())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to {endpoint}")]
    Connect {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("decoding the response body")]
    Decode(#[source] serde_json::Error),
    #[error("encoding the request body")]
    Encode(#[source] serde_json::Error),
    #[error("the server answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("talking to the server")]
    Io(#[from] std::io::Error),
    #[error("malformed response: {0}")]
    Malformed(&'static str),
}

impl ClientError {
    /// The server's status, when it answered with an error.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the server said the resource does not exist.
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("another process is already serving {0}")]
    InUse(PathBuf),
    #[error("binding {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Binds a daemon's socket at `path`, replacing a stale socket file left by a run that died,
/// but never one a live process still answers on.
pub fn bind_socket(path: &Path) -> Result<UnixListener, BindError> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(BindError::NotASocket(path.to_owned()));
        }
        match UnixStream::connect(path) {
            Ok(_) => return Err(BindError::InUse(path.to_owned())),
            // Nobody listens: a stale socket. If removing it fails, bind reports the problem.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                let _ = std::fs::remove_file(path);
            }
            // Not allowed to look, say: it may be live, so it stays.
            Err(source) => {
                return Err(BindError::Bind {
                    path: path.to_owned(),
                    source,
                })
            }
        }
    }
    UnixListener::bind(path).map_err(|source| BindError::Bind {
        path: path.to_owned(),
        source,
    })
}

/// The most a response may be; a server that sends more is cut off there.
const MAX_RESPONSE: u64 = 4 << 20;

/// A raw HTTP response: status and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// Sends `method path` with an optional JSON body to the server at `to`.
pub fn request(
    to: impl Into<Endpoint>,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<Response, ClientError> {
    send(&to.into(), method, path, body, None, timeout)
}

/// `request`, with a bearer token when one is given.
pub fn send(
    to: &Endpoint,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
    timeout: Duration,
) -> Result<Response, ClientError> {
    let connect_error = |source| ClientError::Connect {
        endpoint: to.to_string(),
        source,
    };
    let mut stream: Box<dyn ReadWrite> = match to {
        Endpoint::Unix(path) => {
            let stream = UnixStream::connect(path).map_err(connect_error)?;
            stream.set_read_timeout(Some(timeout))?;
            stream.set_write_timeout(Some(timeout))?;
            Box::new(stream)
        }
        Endpoint::Tcp(addr) => Box::new(connect_tcp(addr, timeout).map_err(connect_error)?),
        Endpoint::Tls(addr, tls) => {
            let tcp = connect_tcp(addr, timeout).map_err(connect_error)?;
            let name = crate::tls::server_name(addr).map_err(|e| {
                connect_error(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
            })?;
            let conn = rustls::ClientConnection::new(tls.0.clone(), name)
                .map_err(|e| connect_error(std::io::Error::other(e)))?;
            let mut stream = rustls::StreamOwned::new(conn, tcp);
            // The handshake now, so that a refused certificate is a connection error.
            while stream.conn.is_handshaking() {
                stream
                    .conn
                    .complete_io(&mut stream.sock)
                    .map_err(connect_error)?;
            }
            Box::new(stream)
        }
    };
    let body = body.unwrap_or("");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut request = head.into_bytes();
    request.extend_from_slice(body.as_bytes());
    stream.write_all(&request)?;
    let mut raw = Vec::new();
    match stream.take(MAX_RESPONSE).read_to_end(&mut raw) {
        Ok(_) => {}
        // After its whole answer, a TLS server that closes without close_notify, or a server
        // that answered before reading the body and closed with it unread (a reset). A cut
        // answer still fails below, short of its Content-Length.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
            ) && !raw.is_empty() => {}
        Err(e) => return Err(e.into()),
    }
    parse_response(&raw)
}

fn connect_tcp(addr: &str, timeout: Duration) -> std::io::Result<TcpStream> {
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    for a in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(stream) => {
                stream.set_read_timeout(Some(timeout))?;
                stream.set_write_timeout(Some(timeout))?;
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn parse_response(raw: &[u8]) -> Result<Response, ClientError> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or(ClientError::Malformed("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| ClientError::Malformed("head"))?;
    let status = head
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or(ClientError::Malformed("status line"))?;
    let body = &raw[split + 4..];
    let length = head.lines().skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())?
    });
    if length.is_some_and(|n| body.len() < n) {
        return Err(ClientError::Malformed(
            "the body ends before its Content-Length",
        ));
    }
    let body = String::from_utf8(body.to_vec())
        .map_err(|_| ClientError::Malformed("body is not UTF-8"))?;
    Ok(Response { status, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_body() {
        let raw = b"HTTP/1.1 409 Conflict\r\nContent-Length: 13\r\n\r\n{\"error\":\"x\"}";
        let resp = parse_response(raw).unwrap();
        assert_eq!(resp.status, 409);
        assert_eq!(resp.body, "{\"error\":\"x\"}");
    }

    #[test]
    fn rejects_a_body_cut_short() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-length: 13\r\n\r\n{\"error\"";
        assert!(matches!(
            parse_response(raw),
            Err(ClientError::Malformed(_))
        ));
    }

    #[test]
    fn rejects_truncated_head() {
        assert!(matches!(
            parse_response(b"HTTP/1.1 200 OK\r\n"),
            Err(ClientError::Malformed(_))
        ));
    }
}
