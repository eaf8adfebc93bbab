//! The error body every Triad HTTP API returns with a 4xx or 5xx status.

use serde::{Deserialize, Serialize};

/// `{"error": "..."}`: one line naming the problem; for a request hostd refuses, also the
/// field at fault, and for an ensure that failed, the step that did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    pub error: String,
    /// The request's field at fault, as a path: `nics[0].network`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The step of a VM ensure that failed (and was rolled back): `volumes`, `ports`, `vmm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
}

impl ErrorBody {
    pub fn new(error: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            field: None,
            step: None,
        }
    }
}

/// An error with its sources, on one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
