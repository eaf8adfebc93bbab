//! The HTTP API, `/v1`: axum handlers over the store. Handlers check the request, write the
//! desired state and answer; the reconcilers (`crate::reconcile`) do the work on the nodes.
//!
//! Every request but `GET /v1/openapi.json` and `GET /v1/health` carries a bearer token:
//! read-only tokens may only read, and every call that changes something is written to the
//! audit log. Errors are `{"error", "field"?}` with 400 (malformed: the field is named), 401,
//! 403, 404, 409 (conflicts with what exists), 422 (well-formed but impossible) or 503.

mod cluster;
mod eips;
mod images;
mod networks;
mod nodes;
mod openapi;
mod vms;
mod volumes;

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use triad_api::v1::Role;
use triad_api::ErrorBody;

use crate::model::{DbError, TokenRecord};
use crate::Ctl;

/// What a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{field}: {message}")]
    BadRequest { field: String, message: String },
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{message}")]
    Conflict {
        field: Option<String>,
        message: String,
    },
    #[error("{field}: {message}")]
    Unprocessable { field: String, message: String },
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    pub fn bad(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::BadRequest {
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

    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        tracing::error!("the store: {e}");
        Self::Unavailable(format!("the controller's store: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = ErrorBody::new(self.to_string());
        match &self {
            Self::BadRequest { field, .. } | Self::Unprocessable { field, .. } => {
                body.field = Some(field.clone());
            }
            Self::Conflict { field, .. } => body.field = field.clone(),
            _ => {}
        }
        (self.status(), Json(body)).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// A JSON body, or a 400 naming the field at fault (`nics[0].network`).
pub fn body<T: DeserializeOwned>(bytes: &Bytes) -> ApiResult<T> {
    triad_api::server::object_body(bytes).map_err(|e| ApiError::bad(e.field, e.message))
}

/// Query parameters, refusing any not in `known`.
pub fn query(raw: Option<&str>, known: &[&str]) -> ApiResult<HashMap<String, String>> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|e| ApiError::bad("query", e.to_string()))?;
    if let Some((k, _)) = pairs.iter().find(|(k, _)| !known.contains(&k.as_str())) {
        return Err(ApiError::bad(k.as_str(), "unknown query parameter"));
    }
    Ok(pairs.into_iter().collect())
}

/// A number parameter within `max`, or a 400 naming it.
pub fn number(params: &HashMap<String, String>, name: &str, max: u64) -> ApiResult<Option<u64>> {
    params
        .get(name)
        .map(|v| match v.parse::<u64>() {
            Ok(n) if n <= max => Ok(n),
            _ => Err(ApiError::bad(
                name,
                format!("{v:?} is not a whole number from 0 to {max}"),
            )),
        })
        .transpose()
}

/// The caller, as the auth layer found it.
#[derive(Debug, Clone)]
pub struct Caller(pub TokenRecord);

pub fn router(ctl: Arc<Ctl>) -> Router {
    let v1 = Router::new()
        .merge(nodes::routes())
        .merge(cluster::routes())
        .merge(networks::routes())
        .merge(images::routes())
        .merge(volumes::routes())
        .merge(vms::routes())
        .merge(eips::routes())
        .layer(axum::middleware::from_fn_with_state(
            ctl.clone(),
            authenticate,
        ));
    Router::new()
        .route("/v1/openapi.json", get(openapi::document))
        .route("/v1/health", get(health))
        .merge(v1)
        .fallback(|| async { ApiError::NotFound("no such resource".into()) })
        .method_not_allowed_fallback(|| async {
            (
                StatusCode::METHOD_NOT_ALLOWED,
                Json(ErrorBody::new("this resource does not take that method")),
            )
        })
        .with_state(ctl)
}

/// `GET /v1/health`: the controller answers, and whether it runs the reconcilers.
#[utoipa::path(get, path = "/v1/health", tag = "cluster", security(()),
    responses((status = 200, body = Health)))]
async fn health(State(ctl): State<Arc<Ctl>>) -> Json<Health> {
    Json(Health {
        leader: ctl.is_leader(),
        store: ctl.store_kind.to_owned(),
    })
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    pub leader: bool,
    /// `redb` or `etcd`.
    pub store: String,
}

/// Checks the bearer token and the role, and audits every call that would change something,
/// refused ones included.
async fn authenticate(State(ctl): State<Arc<Ctl>>, mut request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let changes = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
    let secret = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|s| s.trim().to_owned());
    let caller = match &secret {
        None => Err(ApiError::Unauthorized(
            "Authorization: Bearer TOKEN is required (the admin token is printed at the controller's first start)".into(),
        )),
        Some(secret) => match crate::auth::lookup(&ctl.db, secret).await {
            Ok(Some(caller)) => Ok(caller),
            Ok(None) => Err(ApiError::Unauthorized("the token is not known".into())),
            Err(e) => Err(ApiError::from(e)),
        },
    };
    let (who, response) = match caller {
        Err(e) => ("(no valid token)".to_owned(), e.into_response()),
        Ok(caller) if changes && caller.role == Role::ReadOnly => (
            caller.name.clone(),
            ApiError::Forbidden(format!("token {:?} is read-only", caller.name)).into_response(),
        ),
        Ok(caller) => {
            request.extensions_mut().insert(Caller(caller.clone()));
            (caller.name, next.run(request).await)
        }
    };
    if changes {
        let status = response.status().as_u16();
        if let Err(e) = crate::events::audit(&ctl.db, &who, method.as_str(), &path, status).await {
            tracing::error!("writing the audit log: {e}");
        }
    }
    response
}

pub use cluster::{current_settings, default_offerings};
pub use networks::members as group_members;
pub use nodes::{data_address, view as node_view};
pub use openapi::ApiDoc;
