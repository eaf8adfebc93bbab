//! What every Triad daemon's HTTP server shares (feature `server`): the `{"error": ...}`
//! answer, reading a JSON body, and serving a router on a Unix socket until SIGTERM or
//! SIGINT.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};

use crate::error::ErrorBody;
use crate::http::{bind_socket, BindError};

/// An error answer: its status and the message of its `{"error": ...}` body.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody::new(self.1))).into_response()
    }
}

/// A JSON request body (whatever its Content-Type says), or a 400 naming what is wrong with
/// it.
pub fn body<T: serde::de::DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("request body: {e}")))
}

/// What is wrong with a request body: the field at fault (`nics[0].mac`, or `body` for the
/// whole) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyError {
    pub field: String,
    pub message: String,
}

/// A request body that must be a JSON object of type `T`, read naming the field at fault.
pub fn object_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, BodyError> {
    let whole = |message: String| BodyError {
        field: "body".into(),
        message,
    };
    // serde would also read a struct from an array.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(whole("want a JSON object".into()));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        // Syntax errors have no path ("?"), nor does the body as a whole (".").
        let field = if path == "." || path == "?" {
            "body".to_owned()
        } else {
            path
        };
        BodyError {
            field,
            message: e.into_inner().to_string(),
        }
    })?;
    de.end().map_err(|e| whole(e.to_string()))?;
    Ok(value)
}

/// A daemon's config file that cannot be used: one line naming the file and, when one is at
/// fault, the key (`pools[1].kind`), as systemd's journal shows it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {0}: {1}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("{}: {}", .path.display(), .message)]
    Invalid { path: PathBuf, message: String },
}

/// Reads the JSON config file at `path` into `T`. A file missing at `default` (the path the
/// packages use) stands for `{}`, every key's default; missing anywhere else, it is an error.
pub fn read_config<T: serde::de::DeserializeOwned>(
    path: &Path,
    default: &Path,
) -> Result<T, ConfigError> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && path == default => b"{}".to_vec(),
        Err(e) => return Err(ConfigError::Read(path.to_owned(), e)),
    };
    object_body(&text).map_err(|e| ConfigError::Invalid {
        path: path.to_owned(),
        message: match e.field.as_str() {
            "body" => e.message,
            key => format!("{key}: {}", e.message),
        },
    })
}

/// The answer to a path no route has.
pub async fn not_found() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "no such resource".into())
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("creating {0}")]
    Dir(PathBuf, #[source] std::io::Error),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("serving")]
    Io(#[from] std::io::Error),
}

/// Claims the socket at `path` (its directory made if need be) for tokio.
pub fn listen_unix(path: &Path) -> Result<tokio::net::UnixListener, ServeError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| ServeError::Dir(dir.to_owned(), e))?;
    }
    let listener = bind_socket(path)?;
    listener.set_nonblocking(true)?;
    Ok(tokio::net::UnixListener::from_std(listener)?)
}

/// Resolves when the process is asked to stop: SIGTERM or SIGINT.
pub async fn terminated() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!("no SIGTERM handler ({e}); stopping on SIGINT only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Tells systemd that the daemon serves (`READY=1` on `$NOTIFY_SOCKET`, as a `Type=notify`
/// unit waits for); nothing when no service manager asked for it.
pub fn notify_ready() {
    if let Some(target) = std::env::var_os("NOTIFY_SOCKET") {
        if let Err(e) = notify(&target, b"READY=1") {
            tracing::warn!("telling systemd the daemon is ready: {e}");
        }
    }
}

/// Sends `message` to the notify socket `target`: a path, or with a leading '@' a name in the
/// abstract namespace.
fn notify(target: &std::ffi::OsStr, message: &[u8]) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let addr = match target.as_bytes().strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(target)?,
    };
    UnixDatagram::unbound()?.send_to_addr(message, &addr)?;
    Ok(())
}

/// The TLS config a TCP server answers new connections with. It can be replaced while the
/// server runs (hostd's, once the node has joined and has its certificate).
#[derive(Debug, Clone)]
pub struct ServerTls(Arc<RwLock<Arc<rustls::ServerConfig>>>);

impl ServerTls {
    pub fn new(config: Arc<rustls::ServerConfig>) -> Self {
        Self(Arc::new(RwLock::new(config)))
    }

    /// From the next connection on, answer with `config`.
    pub fn set(&self, config: Arc<rustls::ServerConfig>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = config;
    }

    fn current(&self) -> Arc<rustls::ServerConfig> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// At most this many TLS handshakes at once; connections beyond are closed at once.
const MAX_HANDSHAKES: usize = 256;
/// A client that has not finished its handshake by then is cut off.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `router` on `listener`: over TLS with `tls`, plain HTTP without. A failed handshake
/// (a certificate the server does not trust, a client that speaks plain HTTP) is logged and
/// the connection closed.
pub async fn serve_tcp(
    listener: tokio::net::TcpListener,
    tls: Option<ServerTls>,
    router: Router,
) -> std::io::Result<()> {
    match tls {
        None => axum::serve(listener, router).await,
        Some(tls) => {
            let local = listener.local_addr()?;
            let (accepted, handshaken) = tokio::sync::mpsc::channel(64);
            tokio::spawn(handshakes(listener, tls, accepted));
            axum::serve(TlsListener { handshaken, local }, router).await
        }
    }
}

type TlsStream = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

/// Accepts TCP connections and hands each, once its TLS handshake is done, to `accepted`.
async fn handshakes(
    listener: tokio::net::TcpListener,
    tls: ServerTls,
    accepted: tokio::sync::mpsc::Sender<(TlsStream, SocketAddr)>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    while !accepted.is_closed() {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!("accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(
                "closing the connection from {peer}: {MAX_HANDSHAKES} TLS handshakes are under way"
            );
            continue;
        };
        let _ = stream.set_nodelay(true);
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
        let accepted = accepted.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => {
                    let _ = accepted.send((stream, peer)).await;
                }
                Ok(Err(e)) => tracing::warn!("TLS from {peer} refused: {e}"),
                Err(_) => tracing::warn!(
                    "TLS from {peer} refused: no handshake within {HANDSHAKE_TIMEOUT:?}"
                ),
            }
        });
    }
}

/// Connections whose TLS handshake is done, for `axum::serve`.
struct TlsListener {
    handshaken: tokio::sync::mpsc::Receiver<(TlsStream, SocketAddr)>,
    local: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.handshaken.recv().await {
            Some(conn) => conn,
            // The accepting task ended (it never does while the listener is served).
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Serves `router` on the Unix socket at `path` until SIGTERM or SIGINT, then removes the
/// socket file. Systemd hears that the daemon is ready once the socket is bound.
pub async fn serve_unix(path: &Path, router: Router) -> Result<(), ServeError> {
    let listener = listen_unix(path)?;
    tracing::info!("serving on {}", path.display());
    notify_ready();
    axum::serve(listener, router)
        .with_graceful_shutdown(terminated())
        .await?;
    let _ = std::fs::remove_file(path);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixDatagram;

    use super::*;

    #[test]
    fn notifies_a_path_and_an_abstract_socket() {
        let path = std::env::temp_dir().join(format!("triad-notify-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let by_path = UnixDatagram::bind(&path).unwrap();
        notify(path.as_os_str(), b"READY=1").unwrap();
        let mut buf = [0u8; 16];
        let n = by_path.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        std::fs::remove_file(&path).unwrap();

        use std::os::linux::net::SocketAddrExt;
        let name = format!("triad-notify-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let abstract_socket = UnixDatagram::bind_addr(&addr).unwrap();
        notify(std::ffi::OsStr::new(&format!("@{name}")), b"READY=1").unwrap();
        let n = abstract_socket.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        assert!(notify(std::ffi::OsStr::new("/nonexistent/triad-notify"), b"x").is_err());
    }

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Config {
        #[serde(default)]
        port: u16,
        #[serde(default)]
        pools: Vec<Pool>,
    }

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Pool {
        name: String,
    }

    #[test]
    fn config_errors_name_the_file_and_the_key() {
        let dir = std::env::temp_dir().join(format!("triad-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("d.json");
        let other = dir.join("packaged.json");
        let error = |text: &str| {
            std::fs::write(&path, text).unwrap();
            read_config::<Config>(&path, &other)
                .unwrap_err()
                .to_string()
        };
        let at = path.display();
        assert!(error(r#"{"port": "x"}"#).starts_with(&format!("{at}: port: invalid type")));
        assert!(error(r#"{"pools": [{"name": "a"}, {"nme": "b"}]}"#)
            .starts_with(&format!("{at}: pools[1].nme: unknown field `nme`")));
        assert!(error(r#"{"colour": 1}"#).starts_with(&format!("{at}: colour: unknown field")));
        assert!(error("[]").starts_with(&format!("{at}: want a JSON object")));
        assert!(!error(r#"{"port": 70000}"#).contains('\n'));

        std::fs::remove_file(&path).unwrap();
        let missing = read_config::<Config>(&path, &other)
            .unwrap_err()
            .to_string();
        assert!(missing.starts_with(&format!("reading {at}: ")), "{missing}");
        assert_eq!(
            read_config::<Config>(&path, &path).unwrap(),
            Config {
                port: 0,
                pools: vec![]
            }
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
