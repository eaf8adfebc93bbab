//! `triad-netd`: each host's own switch for its VMs. It makes the host's networks (Linux
//! bridges, with the uplink enslaved or a VXLAN device whose flood list holds the peer hosts)
//! and its VMs' TAPs from specs the controller sends, keeps those specs on disk, and on every
//! start brings the kernel back to them. Served as HTTP/JSON on a Unix socket (`server`).

pub mod connections;
pub mod dhcp;
pub mod firewall;
pub mod host;
pub mod link;
pub mod metadata;
pub mod nft;
pub mod ovs;
pub mod server;
pub mod tap;

use triad_api::tools::HostTool;

/// What netd cannot work without: it refuses to start when one is missing.
pub const REQUIRED_TOOLS: [HostTool; 1] = [nft::NFT];
/// What only some networks need: a missing one is a warning at start, and a 422 naming it for
/// the requests that need it.
pub const OPTIONAL_TOOLS: [HostTool; 1] = [ovs::OVS_VSCTL];

/// Why a request failed; each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A malformed or impossible request (400).
    #[error("{0}")]
    BadRequest(String),
    /// No such network or port (404).
    #[error("{0}")]
    NotFound(String),
    /// It clashes with what the host has (409).
    #[error("{0}")]
    Conflict(String),
    /// Well-formed, but the host lacks what it names (an uplink, a network) (422).
    #[error("{0}")]
    Unprocessable(String),
    /// The kernel or the state file failed (500).
    #[error("{0}")]
    System(String),
}
