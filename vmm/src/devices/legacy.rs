//! The i8042 reset line and the debug-exit port: how a guest ends or restarts its VM.

use std::sync::atomic::{AtomicBool, Ordering};

/// Writing byte N here powers the VM off and `triad-vmm` exits with status N. Same port as
/// QEMU's conventional `isa-debug-exit,iobase=0xf4` (where QEMU exits with `N << 1 | 1`), so
/// one guest can end itself under both.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
pub const I8042_BASE: u16 = 0x60;
pub const I8042_COMMAND: u16 = 0x64;

/// Latched when the guest sends the i8042 "pulse reset line" command.
#[derive(Debug, Default)]
pub struct ResetLine(AtomicBool);

impl ResetLine {
    /// Whether a reset was requested since the last call.
    pub fn take(&self) -> bool {
        self.0.swap(false, Ordering::AcqRel)
    }
}

impl vm_superio::Trigger for ResetLine {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.store(true, Ordering::Release);
        Ok(())
    }
}
