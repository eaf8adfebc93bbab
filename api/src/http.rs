//! A small blocking HTTP/1.1 client over a Unix socket (the typed clients in `client` are
//! built on it), and how a daemon claims its socket.
//!
//! Triad's node-local APIs (the VMM's, netd's and storaged's) speak HTTP/JSON on Unix sockets;
//! one request per connection keeps both ends simple and stateless.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to {path}")]
    Connect {
        path: PathBuf,
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

/// Sends `method path` with an optional JSON body to the server listening on `socket`.
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<Response, ClientError> {
    let mut stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: socket.to_owned(),
        source,
    })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let body = body.unwrap_or("");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    let mut raw = Vec::new();
    stream.take(MAX_RESPONSE).read_to_end(&mut raw)?;
    parse_response(&raw)
}

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
    let body = String::from_utf8(raw[split + 4..].to_vec())
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
    fn rejects_truncated_head() {
        assert!(matches!(
            parse_response(b"HTTP/1.1 200 OK\r\n"),
            Err(ClientError::Malformed(_))
        ));
    }
}
