//! `triad-hostd`: the node agent. The controller's only contact on a node: it makes, runs,
//! supervises and removes the node's VMs over the VMM, storaged and netd, with idempotent
//! ensures keyed by UUID and a small state file it reconciles to on start.

pub mod agent;
pub mod diag;
pub mod error;
pub mod events;
pub mod init;
pub mod peers;
pub mod process;
pub mod server;
pub mod state;
pub mod tls;
pub mod token;
pub mod validate;

pub use agent::Agent;
pub use error::Error;

use triad_api::tools::HostTool;

/// What hostd runs only on some hosts: `systemd-run` when it is a systemd service (it refuses
/// to start without it there, since its VMMs would die with it).
pub const OPTIONAL_TOOLS: [HostTool; 1] = [process::SYSTEMD_RUN];
