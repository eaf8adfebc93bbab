//! The virtio-mmio transport, version 2 (virtio 1.2 spec §4.2): registers, the device-status
//! handshake and queue setup. Nothing a guest writes here is trusted: unknown offsets and
//! misaligned or wrong-width accesses are ignored, status changes outside the handshake's
//! order are refused, and queues are checked against guest memory before a device gets them.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};

use super::{Interrupt, VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use crate::memory::GuestMemoryMmap;

/// Bytes of MMIO space per device: registers up to 0x100, then device configuration.
pub const MMIO_LEN: u64 = 0x1000;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR: u32 = 0x5452_4941; // "TRIA"

pub(crate) const REG_MAGIC: u64 = 0x000;
pub(crate) const REG_VERSION: u64 = 0x004;
pub(crate) const REG_DEVICE_ID: u64 = 0x008;
pub(crate) const REG_VENDOR_ID: u64 = 0x00c;
pub(crate) const REG_DEVICE_FEATURES: u64 = 0x010;
pub(crate) const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
pub(crate) const REG_DRIVER_FEATURES: u64 = 0x020;
pub(crate) const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
pub(crate) const REG_QUEUE_SEL: u64 = 0x030;
pub(crate) const REG_QUEUE_NUM_MAX: u64 = 0x034;
pub(crate) const REG_QUEUE_NUM: u64 = 0x038;
pub(crate) const REG_QUEUE_READY: u64 = 0x044;
/// Offset of QueueNotify, where KVM ioeventfds are attached.
pub const REG_QUEUE_NOTIFY: u64 = 0x050;
pub(crate) const REG_INTERRUPT_STATUS: u64 = 0x060;
pub(crate) const REG_INTERRUPT_ACK: u64 = 0x064;
pub(crate) const REG_STATUS: u64 = 0x070;
pub(crate) const REG_QUEUE_DESC_LOW: u64 = 0x080;
pub(crate) const REG_QUEUE_DESC_HIGH: u64 = 0x084;
pub(crate) const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
pub(crate) const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
pub(crate) const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
pub(crate) const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
pub(crate) const REG_CONFIG_GENERATION: u64 = 0x0fc;
const CONFIG_SPACE: u64 = 0x100;

/// Device status bits (virtio spec §2.1).
pub const ACKNOWLEDGE: u8 = 1;
pub const DRIVER: u8 = 2;
pub const DRIVER_OK: u8 = 4;
pub const FEATURES_OK: u8 = 8;
pub const DEVICE_NEEDS_RESET: u8 = 64;
pub const FAILED: u8 = 128;

/// One virtio device as the guest sees it at its MMIO window.
#[derive(Debug)]
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    status: u8,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    queues: Vec<Queue>,
    /// Each queue's ready flag when the device took the queues (DRIVER_OK).
    activated_ready: Vec<bool>,
    config_generation: u32,
}

impl MmioTransport {
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
    ) -> Self {
        let queues = fresh_queues(device.as_ref());
        Self {
            device,
            mem,
            interrupt,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            queues,
            activated_ready: Vec::new(),
            config_generation: 0,
        }
    }

    pub fn status(&self) -> u8 {
        self.status
    }

    pub fn interrupt(&self) -> Arc<Interrupt> {
        self.interrupt.clone()
    }

    fn offered_features(&self) -> u64 {
        self.device.features() | VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        let index = usize::try_from(self.queue_sel).ok()?;
        self.queues.get_mut(index)
    }

    /// Queue registers may change only between FEATURES_OK and DRIVER_OK (spec §3.1.1).
    fn queue_setup_allowed(&self) -> bool {
        self.status & (FEATURES_OK | DRIVER_OK | FAILED) == FEATURES_OK
    }

    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.device.read_config(offset - CONFIG_SPACE, data);
            return;
        }
        let value = match offset {
            _ if data.len() != 4 || !offset.is_multiple_of(4) => {
                data.fill(0);
                return;
            }
            REG_MAGIC => MAGIC,
            REG_VERSION => VERSION,
            REG_DEVICE_ID => self.device.device_type(),
            REG_VENDOR_ID => VENDOR,
            REG_DEVICE_FEATURES => match self.device_features_sel {
                0 => low(self.offered_features()),
                1 => high(self.offered_features()),
                _ => 0,
            },
            // Answered from the device and the activation record too, as the queues themselves
            // belong to the device once it runs.
            REG_QUEUE_NUM_MAX => {
                let sel = usize::try_from(self.queue_sel).unwrap_or(usize::MAX);
                self.device
                    .queue_max_sizes()
                    .get(sel)
                    .map_or(0, |&m| u32::from(m))
            }
            REG_QUEUE_READY => {
                let sel = usize::try_from(self.queue_sel).unwrap_or(usize::MAX);
                match self.selected_queue() {
                    Some(q) => u32::from(q.ready()),
                    None => u32::from(self.activated_ready.get(sel).copied().unwrap_or(false)),
                }
            }
            REG_INTERRUPT_STATUS => self.interrupt.status(),
            REG_STATUS => u32::from(self.status),
            REG_CONFIG_GENERATION => self.config_generation,
            _ => 0,
        };
        data.copy_from_slice(&value.to_le_bytes());
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            // Devices with writable configuration validate what they get; others ignore it.
            self.device.write_config(offset - CONFIG_SPACE, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return;
        };
        if !offset.is_multiple_of(4) {
            return;
        }
        let value = u32::from_le_bytes(bytes);
        let setup = self.queue_setup_allowed();
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            REG_DRIVER_FEATURES if self.status & (DRIVER | FEATURES_OK) == DRIVER => {
                match self.driver_features_sel {
                    0 => {
                        self.driver_features =
                            (self.driver_features & !0xffff_ffff) | u64::from(value)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
                    }
                    _ => {}
                }
            }
            REG_QUEUE_SEL => self.queue_sel = value,
            REG_QUEUE_NUM if setup => {
                if let Some(q) = self.selected_queue() {
                    q.set_size(u16::try_from(value).unwrap_or(0));
                }
            }
            REG_QUEUE_READY if setup => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(value == 1);
                }
            }
            REG_QUEUE_DESC_LOW if setup => {
                self.set_queue_addr(|q, v| q.set_desc_table_address(Some(v), None), value)
            }
            REG_QUEUE_DESC_HIGH if setup => {
                self.set_queue_addr(|q, v| q.set_desc_table_address(None, Some(v)), value)
            }
            REG_QUEUE_DRIVER_LOW if setup => {
                self.set_queue_addr(|q, v| q.set_avail_ring_address(Some(v), None), value)
            }
            REG_QUEUE_DRIVER_HIGH if setup => {
                self.set_queue_addr(|q, v| q.set_avail_ring_address(None, Some(v)), value)
            }
            REG_QUEUE_DEVICE_LOW if setup => {
                self.set_queue_addr(|q, v| q.set_used_ring_address(Some(v), None), value)
            }
            REG_QUEUE_DEVICE_HIGH if setup => {
                self.set_queue_addr(|q, v| q.set_used_ring_address(None, Some(v)), value)
            }
            REG_QUEUE_NOTIFY => self.notify_queue(u16::try_from(value).unwrap_or(u16::MAX)),
            REG_INTERRUPT_ACK => self.interrupt.ack(value),
            REG_STATUS => self.write_status(u8::try_from(value).unwrap_or(FAILED)),
            _ => {}
        }
    }

    /// The driver notified queue `index`, through the register or its ioeventfd. Ignored until
    /// the device runs.
    pub fn notify_queue(&mut self, index: u16) {
        if self.status & (DRIVER_OK | DEVICE_NEEDS_RESET | FAILED) == DRIVER_OK {
            self.device.queue_notify(index);
        }
    }

    pub fn host_events(&self) -> Vec<std::os::fd::RawFd> {
        self.device.host_events()
    }

    /// A host event of the device fired; only a running device cares.
    pub fn host_event(&mut self, index: usize) {
        if self.status & (DRIVER_OK | DEVICE_NEEDS_RESET | FAILED) == DRIVER_OK {
            self.device.host_event(index);
        }
    }

    pub fn set_rate_limiter(&mut self, limiter: super::ratelimit::RateLimiter) -> bool {
        let changed = self.device.set_rate_limiter(limiter);
        // Requests held back by the old limits are looked at again under the new ones.
        self.host_event(usize::MAX);
        changed
    }

    pub fn counters(&self) -> Arc<super::Counters> {
        self.device.counters()
    }

    pub fn queue_count(&self) -> usize {
        self.device.queue_max_sizes().len()
    }

    fn set_queue_addr(&mut self, set: impl FnOnce(&mut Queue, u32), value: u32) {
        if let Some(q) = self.selected_queue() {
            set(q, value);
        }
    }

    /// The status handshake (spec §3.1.1): each step adds one bit, in order; 0 resets; FAILED
    /// may be set at any time. Anything else is ignored.
    fn write_status(&mut self, new: u8) {
        let old = self.status;
        if new == 0 {
            self.reset();
            return;
        }
        if new & FAILED != 0 {
            self.status |= FAILED;
            return;
        }
        match (old, new) {
            (0, ACKNOWLEDGE) | (ACKNOWLEDGE, 0x03) => self.status = new,
            (0x03, 0x0b) => {
                // FEATURES_OK only for features we offered, and only for a modern driver.
                let acked = self.driver_features;
                if acked & !self.offered_features() == 0 && acked & VIRTIO_F_VERSION_1 != 0 {
                    self.status = new;
                }
            }
            (0x0b, 0x0f) => self.activate(),
            _ => tracing::debug!("virtio-mmio: ignored status change {old:#x} -> {new:#x}"),
        }
    }

    fn activate(&mut self) {
        let mut queues = std::mem::take(&mut self.queues);
        self.activated_ready = queues.iter().map(|q| q.ready()).collect();
        let event_idx = self.driver_features & VIRTIO_RING_F_EVENT_IDX != 0;
        for q in &mut queues {
            q.set_event_idx(event_idx);
        }
        let bad = queues.iter().position(|q| !q.is_valid(&self.mem));
        let result = match bad {
            Some(i) => Err(super::ActivateError::BadQueue(i)),
            None => self.device.activate(
                self.mem.clone(),
                queues,
                self.driver_features,
                self.interrupt.clone(),
            ),
        };
        match result {
            Ok(()) => self.status |= DRIVER_OK,
            Err(e) => {
                tracing::warn!(
                    "virtio-mmio: device type {} not activated: {e}",
                    self.device.device_type()
                );
                self.status |= DEVICE_NEEDS_RESET;
                self.interrupt.signal_config();
            }
        }
    }

    fn reset(&mut self) {
        self.device.reset();
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.queues = fresh_queues(self.device.as_ref());
        self.activated_ready.clear();
        self.interrupt.ack(u32::MAX);
        self.config_generation = self.config_generation.wrapping_add(1);
    }
}

fn fresh_queues(device: &dyn VirtioDevice) -> Vec<Queue> {
    device
        .queue_max_sizes()
        .iter()
        // A max size that is not a power of two is a bug in our device table, not guest input.
        .filter_map(|&max| Queue::new(max).ok())
        .collect()
}

fn low(v: u64) -> u32 {
    u32::try_from(v & 0xffff_ffff).unwrap_or(0)
}

fn high(v: u64) -> u32 {
    u32::try_from(v >> 32).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::rng::Rng;
    use crate::devices::virtio::testing::{self, *};
    use crate::devices::virtio::{INT_USED_RING, TYPE_RNG};
    use vm_memory::{Bytes, GuestAddress};

    const BUF_AT: u64 = 0x4_0000;

    fn transport(mem: &GuestMemoryMmap) -> MmioTransport {
        testing::transport(mem, Box::new(Rng::new().unwrap()))
    }

    #[test]
    fn identifies_itself() {
        let mem = mem();
        let mut t = transport(&mem);
        assert_eq!(rd(&mut t, REG_MAGIC), MAGIC);
        assert_eq!(rd(&mut t, REG_VERSION), 2);
        assert_eq!(rd(&mut t, REG_DEVICE_ID), TYPE_RNG);
        wr(&mut t, REG_DEVICE_FEATURES_SEL, 1);
        assert_eq!(rd(&mut t, REG_DEVICE_FEATURES), 1, "VERSION_1 is bit 32");
        assert_eq!(rd(&mut t, REG_QUEUE_NUM_MAX), 256);
        wr(&mut t, REG_QUEUE_SEL, 1);
        assert_eq!(rd(&mut t, REG_QUEUE_NUM_MAX), 0, "no second queue");
        // Misaligned and narrow register accesses read as zero.
        let mut two = [0xffu8; 2];
        t.read(REG_MAGIC, &mut two);
        assert_eq!(two, [0, 0]);
    }

    #[test]
    fn event_idx_suppresses_interrupts_and_rearms_notifications() {
        use crate::devices::virtio::VIRTIO_RING_F_EVENT_IDX;
        const RING: u64 = 0x2_0000;
        const SIZE: u64 = 16;
        let avail_used_event = RING + 16 * SIZE + 4 + 2 * SIZE; // avail->ring[SIZE]
        let used = (RING + 16 * SIZE + 6 + 2 * SIZE + 4095) & !4095;
        let used_avail_event = used + 4 + 8 * SIZE; // used->ring[SIZE]
        let mem = mem();
        let mut t = transport(&mem);
        let mut ring = Ring::new(&mem, RING, 16);
        negotiate(&mut t, VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX);
        assert_ne!(t.status() & FEATURES_OK, 0, "EVENT_IDX is offered");
        ring.program(&mut t, 0);
        driver_ok(&mut t);

        // The driver wants an interrupt only after the 6th completion.
        mem.write_obj(5u16, GuestAddress(avail_used_event)).unwrap();
        ring.push(0, &[(BUF_AT, 16, VRING_DESC_F_WRITE)]);
        wr(&mut t, REG_QUEUE_NOTIFY, 0);
        assert_eq!(ring.pop_used(), Some((0, 16)));
        assert_eq!(rd(&mut t, REG_INTERRUPT_STATUS), 0, "interrupt suppressed");
        // The ring ran empty: the device asks to be notified of the next buffer.
        let avail_event: u16 = mem.read_obj(GuestAddress(used_avail_event)).unwrap();
        assert_eq!(avail_event, 1);

        // Now the driver wants to hear about the next completion.
        mem.write_obj(1u16, GuestAddress(avail_used_event)).unwrap();
        ring.push(1, &[(BUF_AT, 16, VRING_DESC_F_WRITE)]);
        wr(&mut t, REG_QUEUE_NOTIFY, 0);
        assert_eq!(ring.pop_used(), Some((1, 16)));
        assert_ne!(rd(&mut t, REG_INTERRUPT_STATUS) & INT_USED_RING, 0);
    }

    #[test]
    fn queue_registers_still_read_right_once_the_device_runs() {
        let mem = mem();
        let (mut t, _q) = running(&mem, Box::new(Rng::new().unwrap()));
        wr(&mut t, REG_QUEUE_SEL, 0);
        assert_eq!(
            (rd(&mut t, REG_QUEUE_NUM_MAX), rd(&mut t, REG_QUEUE_READY)),
            (256, 1)
        );
        wr(&mut t, REG_QUEUE_SEL, 1);
        assert_eq!(
            (rd(&mut t, REG_QUEUE_NUM_MAX), rd(&mut t, REG_QUEUE_READY)),
            (0, 0)
        );
    }

    #[test]
    fn status_handshake_is_ordered_and_refuses_legacy_drivers() {
        let mem = mem();
        let mut t = transport(&mem);
        // Skipping a step is ignored.
        wr(
            &mut t,
            REG_STATUS,
            u32::from(ACKNOWLEDGE | DRIVER | FEATURES_OK),
        );
        assert_eq!(t.status(), 0);
        // A driver that does not accept VERSION_1 never gets FEATURES_OK.
        negotiate(&mut t, 0);
        assert_eq!(t.status(), ACKNOWLEDGE | DRIVER);
        // Nor one that accepts features we did not offer.
        wr(&mut t, REG_STATUS, 0);
        negotiate(&mut t, VIRTIO_F_VERSION_1 | 1);
        assert_eq!(t.status(), ACKNOWLEDGE | DRIVER);
        wr(&mut t, REG_STATUS, 0);
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        assert_eq!(t.status(), ACKNOWLEDGE | DRIVER | FEATURES_OK);
        // FAILED sticks until reset.
        wr(&mut t, REG_STATUS, u32::from(FAILED));
        assert_ne!(t.status() & FAILED, 0);
        wr(&mut t, REG_STATUS, 0);
        assert_eq!(t.status(), 0);
    }

    #[test]
    fn queue_registers_only_change_during_setup() {
        let mem = mem();
        let mut t = transport(&mem);
        wr(&mut t, REG_QUEUE_READY, 1);
        assert_eq!(rd(&mut t, REG_QUEUE_READY), 0, "before FEATURES_OK");
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        wr(&mut t, REG_QUEUE_READY, 1);
        assert_eq!(rd(&mut t, REG_QUEUE_READY), 1);
    }

    #[test]
    fn rng_fills_writable_buffers_and_interrupts() {
        let mem = mem();
        let (mut t, q) = running(&mem, Box::new(Rng::new().unwrap()));

        let chain = desc(BUF_AT, 64, VRING_DESC_F_WRITE, 0);
        q.add_desc_chains(&[chain], 0).unwrap();
        wr(&mut t, REG_QUEUE_NOTIFY, 0);

        assert_eq!(used(&mem, &q, 0), (1, 64));
        let mut buf = [0u8; 64];
        mem.read_slice(&mut buf, GuestAddress(BUF_AT)).unwrap();
        assert_ne!(buf, [0u8; 64], "64 random bytes are not all zero");
        assert_ne!(rd(&mut t, REG_INTERRUPT_STATUS) & INT_USED_RING, 0);
        wr(&mut t, REG_INTERRUPT_ACK, INT_USED_RING);
        assert_eq!(rd(&mut t, REG_INTERRUPT_STATUS), 0);
    }

    #[test]
    fn garbage_descriptors_are_completed_empty_and_never_written() {
        let mem = mem();
        let (mut t, q) = running(&mem, Box::new(Rng::new().unwrap()));
        // Past the end of guest memory, a read-only buffer, and a huge length.
        let chains = [
            desc(16 << 20, 64, VRING_DESC_F_WRITE, 0),
            desc(BUF_AT, 64, 0, 0),
            desc(BUF_AT, u32::MAX, VRING_DESC_F_WRITE, 0),
        ];
        q.add_desc_chains(&chains, 0).unwrap();
        wr(&mut t, REG_QUEUE_NOTIFY, 0);
        for slot in 0..3 {
            assert_eq!(used(&mem, &q, slot), (3, 0), "chain {slot}");
        }
        let mut buf = [0u8; 64];
        mem.read_slice(&mut buf, GuestAddress(BUF_AT)).unwrap();
        assert_eq!(buf, [0u8; 64]);
    }

    #[test]
    fn a_looping_chain_ends_after_queue_size_descriptors() {
        let mem = mem();
        let (mut t, q) = running(&mem, Box::new(Rng::new().unwrap()));
        let chains = [
            desc(BUF_AT, 64, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 1),
            desc(BUF_AT + 64, 64, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 0),
        ];
        q.add_desc_chains(&chains, 0).unwrap();
        wr(&mut t, REG_QUEUE_NOTIFY, 0);
        let (idx, len) = used(&mem, &q, 0);
        assert_eq!(idx, 1, "the looping chain is completed");
        assert!(len <= 16 * 64, "{len} bytes from a 16-entry queue");
    }

    #[test]
    fn rings_outside_memory_make_the_device_need_reset() {
        let mem = mem();
        let mut t = transport(&mem);
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        wr(&mut t, REG_QUEUE_NUM, 16);
        wr(&mut t, REG_QUEUE_DESC_LOW, 0);
        wr(&mut t, REG_QUEUE_DESC_HIGH, 1); // 4 GiB: no RAM there
        wr(&mut t, REG_QUEUE_READY, 1);
        wr(
            &mut t,
            REG_STATUS,
            u32::from(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK),
        );
        assert_eq!(
            t.status() & (DRIVER_OK | DEVICE_NEEDS_RESET),
            DEVICE_NEEDS_RESET
        );
        assert_ne!(
            rd(&mut t, REG_INTERRUPT_STATUS) & crate::devices::virtio::INT_CONFIG_CHANGE,
            0
        );
        // A reset brings it back to a clean state, ready for a new handshake.
        wr(&mut t, REG_STATUS, 0);
        assert_eq!((t.status(), rd(&mut t, REG_INTERRUPT_STATUS)), (0, 0));
        assert_eq!(rd(&mut t, REG_CONFIG_GENERATION), 1);
    }
}
