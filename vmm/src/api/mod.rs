//! The control API: requests the VMM's event loop understands, and the HTTP server that
//! turns socket traffic into them.
//!
//! The event loop never sees HTTP; the server never touches the VM. They meet through
//! `ApiRequest` on the loop's channel, each with its own reply channel.

pub mod server;

use std::sync::mpsc::Sender;

use triad_api::vmm::{DevicePatch, DriveConfig, NetConfig, VmAction, VmConfig, VmInfo, VmMetrics};

#[derive(Debug)]
pub enum ApiRequest {
    GetVm,
    GetMetrics,
    PutConfig(Box<VmConfig>),
    Action(VmAction),
    /// Add or replace a drive before the VM starts.
    PutDrive(Box<DriveConfig>),
    /// Add or replace a NIC before the VM starts.
    PutNet(Box<NetConfig>),
    /// Change a device's limits, running or not.
    Patch {
        kind: DeviceKind,
        id: String,
        patch: DevicePatch,
    },
}

/// Which collection a device id belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Drive,
    Net,
}

#[derive(Debug)]
pub enum ApiOk {
    Info(Box<VmInfo>),
    Metrics(VmMetrics),
}

/// Why a request failed, in terms the server maps to a status code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The request itself is wrong (400).
    #[error("{0}")]
    Invalid(String),
    /// The named thing does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// The request does not fit the VM's current state (409).
    #[error("{0}")]
    WrongState(String),
    /// The VMM tried and failed (500).
    #[error("{0}")]
    Failed(String),
}

pub type ApiReply = Result<ApiOk, ApiError>;

/// One request travelling from the server to the event loop.
#[derive(Debug)]
pub struct ApiCall {
    pub request: ApiRequest,
    pub reply: Sender<ApiReply>,
}
