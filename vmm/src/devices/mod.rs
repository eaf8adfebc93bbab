//! The devices a guest reaches by port I/O (COM1, the i8042 reset line, the debug-exit port)
//! and by MMIO (virtio devices). Everything else reads as all-ones (absent) and ignores
//! writes, which is what a guest probing for hardware expects.

pub mod legacy;
pub mod serial;
pub mod virtio;

use std::sync::{Arc, Mutex};

use vm_superio::I8042Device;

use legacy::{ResetLine, DEBUG_EXIT_PORT, I8042_BASE, I8042_COMMAND};
use serial::{GuestSerial, COM1_BASE, COM1_LEN};

/// What the vCPU does after a port access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoOutcome {
    Continue,
    /// The guest asked to power off with this exit status.
    GuestExit(u8),
    /// The guest pulsed the reset line.
    Reset,
}

/// The port-I/O devices of one boot, shared by its vCPU threads.
#[derive(Debug)]
pub struct PortBus {
    serial: Mutex<GuestSerial>,
    i8042: Mutex<I8042Device<ResetLine>>,
}

impl PortBus {
    pub fn new(serial: GuestSerial) -> Self {
        Self {
            serial: Mutex::new(serial),
            i8042: Mutex::new(I8042Device::new(ResetLine::default())),
        }
    }

    pub fn read(&self, port: u16, data: &mut [u8]) {
        match port {
            p if (COM1_BASE..COM1_BASE + COM1_LEN).contains(&p) && data.len() == 1 => {
                data[0] = lock(&self.serial).read(offset(p, COM1_BASE));
            }
            I8042_BASE | I8042_COMMAND if data.len() == 1 => {
                data[0] = lock(&self.i8042).read(offset(port, I8042_BASE));
            }
            _ => data.fill(0xff),
        }
    }

    pub fn write(&self, port: u16, data: &[u8]) -> IoOutcome {
        let Some(&value) = data.first() else {
            return IoOutcome::Continue;
        };
        match port {
            p if (COM1_BASE..COM1_BASE + COM1_LEN).contains(&p) => {
                // An output error (a full disk, a closed pipe) must not stop the guest.
                if let Err(e) = lock(&self.serial).write(offset(p, COM1_BASE), value) {
                    tracing::debug!("serial write failed: {e:?}");
                }
                IoOutcome::Continue
            }
            I8042_BASE | I8042_COMMAND => {
                let mut i8042 = lock(&self.i8042);
                // The reset line's trigger cannot fail.
                let _ = i8042.write(offset(port, I8042_BASE), value);
                if i8042.reset_evt().take() {
                    IoOutcome::Reset
                } else {
                    IoOutcome::Continue
                }
            }
            DEBUG_EXIT_PORT => IoOutcome::GuestExit(value),
            _ => IoOutcome::Continue,
        }
    }
}

/// The MMIO windows of the virtio devices, each `virtio::mmio::MMIO_LEN` bytes.
#[derive(Debug, Default)]
pub struct MmioBus {
    devices: Vec<(u64, Arc<Mutex<virtio::mmio::MmioTransport>>)>,
}

impl MmioBus {
    pub fn insert(&mut self, base: u64, transport: Arc<Mutex<virtio::mmio::MmioTransport>>) {
        self.devices.push((base, transport));
    }

    fn find(&self, addr: u64) -> Option<(u64, &Mutex<virtio::mmio::MmioTransport>)> {
        self.devices.iter().find_map(|(base, t)| {
            let offset = addr.checked_sub(*base)?;
            (offset < virtio::mmio::MMIO_LEN).then_some((offset, t.as_ref()))
        })
    }

    pub fn read(&self, addr: u64, data: &mut [u8]) {
        match self.find(addr) {
            Some((offset, t)) => lock(t).read(offset, data),
            None => data.fill(0xff),
        }
    }

    pub fn write(&self, addr: u64, data: &[u8]) {
        if let Some((offset, t)) = self.find(addr) {
            lock(t).write(offset, data);
        }
    }
}

fn offset(port: u16, base: u16) -> u8 {
    u8::try_from(port - base).unwrap_or(u8::MAX)
}

/// A poisoned device lock only means another vCPU thread panicked mid-access; the device
/// state is still usable, and the VM is being torn down anyway.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serial::SerialOutput;

    fn bus() -> (PortBus, SerialOutput) {
        let out = SerialOutput::memory();
        (PortBus::new(GuestSerial::new(out.clone(), None)), out)
    }

    #[test]
    fn serial_bytes_reach_the_output() {
        let (bus, out) = bus();
        for b in b"hi\n" {
            assert_eq!(bus.write(0x3f8, &[*b]), IoOutcome::Continue);
        }
        assert_eq!(out.captured(), b"hi\n");
        // The line status register says the transmitter is empty.
        let mut lsr = [0];
        bus.read(0x3fd, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0);
    }

    #[test]
    fn debug_exit_and_reset() {
        let (bus, _) = bus();
        assert_eq!(bus.write(DEBUG_EXIT_PORT, &[7]), IoOutcome::GuestExit(7));
        assert_eq!(bus.write(I8042_COMMAND, &[0x10]), IoOutcome::Continue);
        assert_eq!(bus.write(I8042_COMMAND, &[0xfe]), IoOutcome::Reset);
        // The reset is reported once.
        assert_eq!(bus.write(I8042_COMMAND, &[0x10]), IoOutcome::Continue);
    }

    #[test]
    fn absent_ports_read_all_ones_and_ignore_writes() {
        let (bus, _) = bus();
        let mut data = [0u8; 4];
        bus.read(0xcfc, &mut data);
        assert_eq!(data, [0xff; 4]);
        assert_eq!(bus.write(0x80, &[0x12]), IoOutcome::Continue);
        assert_eq!(bus.write(0x3f8, &[]), IoOutcome::Continue);
    }
}
