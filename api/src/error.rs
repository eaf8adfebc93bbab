//! The error body every Triad HTTP API returns with a 4xx or 5xx status.

use serde::{Deserialize, Serialize};

/// `{"error": "..."}`: one line naming the problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    pub error: String,
}

impl ErrorBody {
    pub fn new(error: impl Into<String>) -> Self {
        Self {
            error: error.into(),
        }
    }
}
