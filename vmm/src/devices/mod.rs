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
    devices: Vec<MmioDevice>,
}

#[derive(Debug)]
struct MmioDevice {
    base: u64,
    transport: Arc<Mutex<virtio::mmio::MmioTransport>>,
    /// InterruptStatus and InterruptACK are served from here without the transport's lock, so
    /// a vCPU in the guest's interrupt handler never waits for the device's I/O thread.
    interrupt: Arc<virtio::Interrupt>,
}

impl MmioBus {
    pub fn insert(&mut self, base: u64, transport: Arc<Mutex<virtio::mmio::MmioTransport>>) {
        let interrupt = lock(&transport).interrupt();
        self.devices.push(MmioDevice {
            base,
            transport,
            interrupt,
        });
    }

    fn find(&self, addr: u64) -> Option<(u64, &MmioDevice)> {
        self.devices.iter().find_map(|d| {
            let offset = addr.checked_sub(d.base)?;
            (offset < virtio::mmio::MMIO_LEN).then_some((offset, d))
        })
    }

    pub fn read(&self, addr: u64, data: &mut [u8]) {
        match self.find(addr) {
            Some((virtio::mmio::REG_INTERRUPT_STATUS, d)) if data.len() == 4 => {
                data.copy_from_slice(&d.interrupt.status().to_le_bytes());
            }
            Some((offset, d)) => lock(&d.transport).read(offset, data),
            None => data.fill(0xff),
        }
    }

    pub fn write(&self, addr: u64, data: &[u8]) {
        match (self.find(addr), <[u8; 4]>::try_from(data)) {
            (Some((virtio::mmio::REG_INTERRUPT_ACK, d)), Ok(bytes)) => {
                d.interrupt.ack(u32::from_le_bytes(bytes));
            }
            (Some((offset, d)), _) => lock(&d.transport).write(offset, data),
            (None, _) => {}
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
    fn interrupt_registers_do_not_wait_for_the_device() {
        let mem = virtio::testing::mem();
        let device = Box::new(virtio::rng::Rng::new().unwrap());
        let transport = Arc::new(Mutex::new(virtio::testing::transport(&mem, device)));
        let mut bus = MmioBus::default();
        bus.insert(0xd000_0000, transport.clone());
        lock(&transport).interrupt().signal_used();
        // The I/O thread holds the device: the status still reads, the ACK still lands.
        let held = lock(&transport);
        let mut status = [0u8; 4];
        bus.read(0xd000_0060, &mut status);
        assert_eq!(u32::from_le_bytes(status), virtio::INT_USED_RING);
        bus.write(0xd000_0064, &virtio::INT_USED_RING.to_le_bytes());
        drop(held);
        bus.read(0xd000_0060, &mut status);
        assert_eq!(status, [0; 4]);
        // Other registers go to the transport; unmapped addresses read as all-ones.
        bus.read(0xd000_0000, &mut status);
        assert_eq!(&status, b"virt");
        bus.read(0xd000_1000, &mut status);
        assert_eq!(status, [0xff; 4]);
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
