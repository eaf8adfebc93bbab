//! What every Triad daemon's HTTP server shares (feature `server`): the `{"error": ...}`
//! answer, reading a JSON body, and serving a router on a Unix socket until SIGTERM or
//! SIGINT.

use std::path::{Path, PathBuf};

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

/// Serves `router` on the Unix socket at `path` until SIGTERM or SIGINT, then removes the
/// socket file.
pub async fn serve_unix(path: &Path, router: Router) -> Result<(), ServeError> {
    let listener = listen_unix(path)?;
    tracing::info!("serving on {}", path.display());
    axum::serve(listener, router)
        .with_graceful_shutdown(terminated())
        .await?;
    let _ = std::fs::remove_file(path);
    Ok(())
}
