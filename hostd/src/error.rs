//! What an agent call can fail with, and the HTTP answer for each.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use triad_api::http::ClientError;
use triad_api::ErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed: 400.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// Well formed, but this node cannot do it (no such image or network, too big): 422.
    #[error("{field}: {message}")]
    Unprocessable { field: String, message: String },
    /// It contradicts what the node holds (a lower generation, a MAC in use): 409.
    #[error("{message}")]
    Conflict {
        field: Option<String>,
        message: String,
    },
    #[error("this node has no VM {0}")]
    NotFound(String),
    /// A step of an ensure failed; what the ensure had made is undone.
    #[error("{step}: {message}")]
    Step {
        step: &'static str,
        status: StatusCode,
        message: String,
    },
    /// No token, or not the node's, on TCP: 401.
    #[error("{0}")]
    Unauthorized(String),
    /// A daemon behind hostd does not answer: 503.
    #[error("{0}")]
    Unavailable(String),
    /// hostd itself failed (its state file, say): 500.
    #[error("{0}")]
    System(String),
}

impl Error {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn unprocessable(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Unprocessable {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn conflict(field: Option<&str>, message: impl Into<String>) -> Self {
        Self::Conflict {
            field: field.map(str::to_owned),
            message: message.into(),
        }
    }

    /// Step `step` failed talking to a daemon: the daemon's refusal is the request's fault
    /// (422), a daemon that does not answer is 503, anything else 502.
    pub fn step(step: &'static str, what: &str, e: &ClientError) -> Self {
        let status = match e {
            ClientError::Status { status, .. } if (400..500).contains(status) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ClientError::Status { .. } => StatusCode::BAD_GATEWAY,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        Self::Step {
            step,
            status,
            message: format!("{what}: {}", chain(e)),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Invalid { .. } => StatusCode::BAD_REQUEST,
            Self::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Step { status, .. } => *status,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::System(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn body(&self) -> ErrorBody {
        let mut body = ErrorBody::new(self.to_string());
        match self {
            Self::Invalid { field, .. } | Self::Unprocessable { field, .. } => {
                body.field = Some(field.clone());
            }
            Self::Conflict { field, .. } => body.field = field.clone(),
            Self::Step { step, .. } => body.step = Some((*step).to_owned()),
            Self::NotFound(_) | Self::Unauthorized(_) | Self::Unavailable(_) | Self::System(_) => {}
        }
        body
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        if self.status().is_server_error() {
            tracing::error!("{self}");
        }
        (self.status(), Json(self.body())).into_response()
    }
}

pub use triad_api::error::chain;
