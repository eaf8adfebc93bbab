//! `triad-vmm`: one process per VM on KVM.
//!
//! The front door is [`Vmm`]: give it a config (from a file or `PUT /vm/config`), start it,
//! feed it [`Event`]s, and it returns the process exit status when the VM is over. The binary
//! in `main.rs` only parses arguments and wires the socket and signals to it.

pub mod api;
pub mod arch;
pub mod devices;
pub mod loader;
pub mod memory;
pub mod spec;
pub mod vcpu;
pub mod vm;
mod vmm;

pub use vmm::{error_chain, Vmm, EXIT_VMM_ERROR};

/// Everything the event loop reacts to.
#[derive(Debug)]
pub enum Event {
    Api(api::ApiCall),
    /// The API server finished writing a reply.
    ReplyWritten,
    Vcpu {
        boot_id: u32,
        event: vcpu::VcpuEvent,
    },
    Signal(i32),
}
