//! HTTP/1.1 on a Unix socket, one request per connection (`Connection: close`).
//!
//! Requests are size-capped and read with a timeout, so a stuck or hostile client cannot hold
//! the VMM; every failure becomes a JSON `{"error": ...}` with a 4xx or 5xx status.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Sender};
use std::time::{Duration, Instant};

use triad_api::http::{bind_socket, BindError};
use triad_api::vmm::{DevicePatch, DriveConfig, NetConfig, VmActionRequest, VmConfig};
use triad_api::ErrorBody;

use super::{ApiCall, ApiError, ApiOk, ApiRequest, DeviceKind};
use crate::Event;

const MAX_HEAD: usize = 16 << 10;
const MAX_BODY: usize = 1 << 20;
/// The whole request must arrive within this, however slowly a client trickles it in: the
/// server answers one connection at a time, and hostd must never find the VMM unreachable.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

/// The bound socket; its file is removed when this is dropped.
#[derive(Debug)]
pub struct ApiSocket {
    path: PathBuf,
    listener: Option<UnixListener>,
}

impl ApiSocket {
    /// Binds `path`, replacing a stale socket file left by a VMM that died, but never one
    /// that a live process still answers on.
    pub fn bind(path: &Path) -> Result<Self, BindError> {
        let listener = bind_socket(path)?;
        Ok(Self {
            path: path.to_owned(),
            listener: Some(listener),
        })
    }

    /// Serves requests on a thread of its own until the process exits.
    pub fn serve(&mut self, events: Sender<Event>) -> std::io::Result<()> {
        let Some(listener) = self.listener.take() else {
            return Ok(());
        };
        std::thread::Builder::new()
            .name("api".into())
            .stack_size(256 << 10)
            .spawn(move || {
                for stream in listener.incoming() {
                    match stream {
                        Ok(stream) => handle(stream, &events),
                        Err(e) => tracing::warn!("accepting an API connection: {e}"),
                    }
                }
            })
            .map(drop)
    }
}

impl Drop for ApiSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn handle(mut stream: UnixStream, events: &Sender<Event>) {
    let _ = stream.set_write_timeout(Some(REQUEST_DEADLINE));
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let mut dispatched = false;
    let (status, body) = match read_request(&mut stream, deadline) {
        Ok((method, path, body)) => match route(&method, &path, &body) {
            Ok(request) => {
                dispatched = true;
                dispatch(request, events)
            }
            Err(e) => e,
        },
        Err(e) => e,
    };
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        _ => "Internal Server Error",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    // The client may have gone; nothing to do about it.
    let _ = stream.write_all(response.as_bytes());
    if dispatched {
        let _ = events.send(Event::ReplyWritten);
    }
}

type HttpError = (u16, String);

fn error(status: u16, message: impl Into<String>) -> HttpError {
    let body = serde_json::to_string(&ErrorBody::new(message)).unwrap_or_default();
    (status, body)
}

/// Reads up to `chunk.len()` bytes, giving up at `deadline`.
fn read_some(
    stream: &mut UnixStream,
    chunk: &mut [u8],
    deadline: Instant,
) -> Result<usize, HttpError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(error(408, "the request did not arrive in time"));
    }
    let _ = stream.set_read_timeout(Some(left));
    stream.read(chunk).map_err(|e| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            error(408, "the request did not arrive in time")
        }
        _ => error(400, format!("reading the request: {e}")),
    })
}

fn read_request(
    stream: &mut UnixStream,
    deadline: Instant,
) -> Result<(String, String, Vec<u8>), HttpError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                let method = req.method.unwrap_or_default().to_owned();
                let path = req.path.unwrap_or_default().to_owned();
                let len = content_length(req.headers)?;
                if len > MAX_BODY {
                    return Err(error(413, format!("request body over {MAX_BODY} bytes")));
                }
                let mut body = buf[head_len..].to_vec();
                while body.len() < len {
                    let n = read_some(stream, &mut chunk, deadline)?;
                    if n == 0 {
                        return Err(error(400, "request body shorter than Content-Length"));
                    }
                    body.extend_from_slice(&chunk[..n]);
                }
                body.truncate(len);
                return Ok((method, path, body));
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {
                let n = read_some(stream, &mut chunk, deadline)?;
                if n == 0 {
                    return Err(error(
                        400,
                        "connection closed before the request was complete",
                    ));
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            Ok(httparse::Status::Partial) => {
                return Err(error(413, format!("request head over {MAX_HEAD} bytes")))
            }
            Err(e) => return Err(error(400, format!("malformed HTTP request: {e}"))),
        }
    }
}

fn content_length(headers: &[httparse::Header<'_>]) -> Result<usize, HttpError> {
    match headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
    {
        None => Ok(0),
        Some(h) => std::str::from_utf8(h.value)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| error(400, "Content-Length is not a number")),
    }
}

/// Maps method and path to a request; pure, so it is tested without sockets.
fn route(method: &str, path: &str, body: &[u8]) -> Result<ApiRequest, HttpError> {
    let path = path.split('?').next().unwrap_or(path);
    let device = |prefix: &str| {
        path.strip_prefix(prefix)
            .filter(|id| !id.is_empty() && !id.contains('/'))
    };
    let (allowed, kind): (&[&str], _) = match path {
        "/vm" | "/vm/metrics" => (&["GET"], None),
        "/vm/config" | "/vm/actions" => (&["PUT"], None),
        _ => match (device("/drives/"), device("/nets/")) {
            (Some(id), _) => (&["PUT", "PATCH"], Some((DeviceKind::Drive, id))),
            (_, Some(id)) => (&["PUT", "PATCH"], Some((DeviceKind::Net, id))),
            _ => return Err(error(404, format!("no such endpoint: {method} {path}"))),
        },
    };
    if !allowed.contains(&method) {
        let allowed = allowed.join(" or ");
        return Err(error(405, format!("{path} takes {allowed}, not {method}")));
    }
    match (path, kind, method) {
        ("/vm", ..) => Ok(ApiRequest::GetVm),
        ("/vm/metrics", ..) => Ok(ApiRequest::GetMetrics),
        ("/vm/config", ..) => {
            parse_body::<VmConfig>(body).map(|c| ApiRequest::PutConfig(Box::new(c)))
        }
        ("/vm/actions", ..) => {
            parse_body::<VmActionRequest>(body).map(|a| ApiRequest::Action(a.action))
        }
        (_, Some((kind, id)), "PATCH") => {
            // `qos` must be there: `null` removes limits, a missing field is a mistake.
            let value: serde_json::Value = parse_body(body)?;
            if value.get("qos").is_none() {
                return Err(error(
                    400,
                    "PATCH needs a \"qos\" field (null removes the limits)",
                ));
            }
            let patch: DevicePatch = serde_json::from_value(value)
                .map_err(|e| error(400, format!("invalid JSON body: {e}")))?;
            Ok(ApiRequest::Patch {
                kind,
                id: id.to_owned(),
                patch,
            })
        }
        (_, Some((DeviceKind::Drive, id)), _) => {
            let drive: DriveConfig = parse_body(body)?;
            same_id(id, &drive.id)?;
            Ok(ApiRequest::PutDrive(Box::new(drive)))
        }
        (_, Some((DeviceKind::Net, id)), _) => {
            let net: NetConfig = parse_body(body)?;
            same_id(id, &net.id)?;
            Ok(ApiRequest::PutNet(Box::new(net)))
        }
        _ => Err(error(404, format!("no such endpoint: {method} {path}"))),
    }
}

fn same_id(in_path: &str, in_body: &str) -> Result<(), HttpError> {
    if in_path == in_body {
        Ok(())
    } else {
        Err(error(
            400,
            format!("the path names {in_path:?} but the body's id is {in_body:?}"),
        ))
    }
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, HttpError> {
    if body.is_empty() {
        return Err(error(400, "this request needs a JSON body"));
    }
    serde_json::from_slice(body).map_err(|e| error(400, format!("invalid JSON body: {e}")))
}

fn dispatch(request: ApiRequest, events: &Sender<Event>) -> (u16, String) {
    let (reply_tx, reply_rx) = mpsc::channel();
    let call = ApiCall {
        request,
        reply: reply_tx,
    };
    if events.send(Event::Api(call)).is_err() {
        return error(500, "the VMM is shutting down");
    }
    let reply = match reply_rx.recv() {
        Ok(reply) => reply,
        Err(_) => return error(500, "the VMM is shutting down"),
    };
    let json = match reply {
        Ok(ApiOk::Info(info)) => serde_json::to_string(&info),
        Ok(ApiOk::Metrics(m)) => serde_json::to_string(&m),
        Err(e) => {
            let status = match e {
                ApiError::Invalid(_) => 400,
                ApiError::NotFound(_) => 404,
                ApiError::WrongState(_) => 409,
                ApiError::Failed(_) => 500,
            };
            return error(status, e.to_string());
        }
    };
    match json {
        Ok(body) => (200, body),
        Err(e) => error(500, format!("encoding the response: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use triad_api::vmm::VmAction;

    fn status(r: Result<ApiRequest, HttpError>) -> u16 {
        r.map(|_| 200).unwrap_or_else(|e| e.0)
    }

    #[test]
    fn routes_known_endpoints() {
        assert!(matches!(route("GET", "/vm", b""), Ok(ApiRequest::GetVm)));
        assert!(matches!(
            route("GET", "/vm/metrics", b""),
            Ok(ApiRequest::GetMetrics)
        ));
        assert!(matches!(
            route("PUT", "/vm/actions", br#"{"action":"pause"}"#),
            Ok(ApiRequest::Action(VmAction::Pause))
        ));
    }

    #[test]
    fn routes_device_endpoints() {
        let r = route("PATCH", "/drives/root", br#"{"qos":{"iops":100}}"#).unwrap();
        assert!(
            matches!(r, ApiRequest::Patch { kind: DeviceKind::Drive, ref id, .. } if id == "root")
        );
        let r = route("PUT", "/nets/eth0", br#"{"id":"eth0","tap":"t0"}"#).unwrap();
        assert!(matches!(r, ApiRequest::PutNet(_)));
        let e = route("PUT", "/drives/a", br#"{"id":"b","path":"/x"}"#)
            .err()
            .unwrap();
        assert_eq!(e.0, 400);
        assert_eq!(status(route("GET", "/drives/a", b"")), 405);
        assert_eq!(status(route("PATCH", "/drives/", b"{}")), 404);
        assert_eq!(status(route("PATCH", "/drives/a/b", b"{}")), 404);
        assert_eq!(
            status(route("PATCH", "/drives/a", b"{}")),
            400,
            "qos must be given"
        );
        assert!(matches!(
            route("PATCH", "/drives/a", br#"{"qos":null}"#),
            Ok(ApiRequest::Patch { .. })
        ));
    }

    #[test]
    fn rejects_unknown_paths_methods_and_bodies() {
        assert_eq!(status(route("GET", "/nope", b"")), 404);
        assert_eq!(status(route("DELETE", "/vm", b"")), 405);
        assert_eq!(status(route("PUT", "/vm/actions", b"")), 400);
        assert_eq!(
            status(route("PUT", "/vm/actions", br#"{"action":"explode"}"#)),
            400
        );
        let err = route(
            "PUT",
            "/vm/config",
            br#"{"boot":{"kernel":"k"},"machine":{"vcpus":1,"memory_mib":8},"color":"red"}"#,
        )
        .err()
        .unwrap();
        assert_eq!(err.0, 400);
        assert!(err.1.contains("unknown field `color`"), "{}", err.1);
    }

    #[test]
    fn error_bodies_are_json() {
        let (_, body) = error(409, "the VM is \"paused\"");
        let parsed: ErrorBody = serde_json::from_str(&body).unwrap();
        assert_eq!(parsed.error, "the VM is \"paused\"");
    }
}
