//! Virtio 1.x devices on the MMIO transport.
//!
//! Layers, each in its own file: `mmio` is the only code that knows register offsets and the
//! status handshake; the queues' ring layout is `virtio_queue`'s; device models (`rng`, …) see
//! activated queues and guest memory, never registers.

pub mod blk;
pub mod mmio;
pub mod net;
pub mod ratelimit;
pub mod rng;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod worker;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::memory::GuestMemoryMmap;

/// Virtio 1.x (spec §6): the only version Triad offers; legacy drivers are refused.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Notification suppression by ring indices (spec §2.7.7, §2.7.10), offered by every device.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

/// Device IDs (virtio spec §5).
pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_RNG: u32 = 4;

/// InterruptStatus bits (virtio spec §4.2.2).
pub const INT_USED_RING: u32 = 1;
pub const INT_CONFIG_CHANGE: u32 = 2;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ActivateError {
    #[error("the device expects {expected} queues, the driver set up {got}")]
    QueueCount { expected: usize, got: usize },
    #[error("queue {0} is not ready or does not fit in guest memory")]
    BadQueue(usize),
    #[error("the device could not start: {0}")]
    Device(String),
}

/// The next available chain. When there is none, driver notifications are re-armed (with
/// EVENT_IDX, `avail_event` moves to where the device stopped) and the ring is checked once
/// more, so a buffer the driver added meanwhile is not left waiting for a notify that will
/// not come.
pub fn pop_or_rearm<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemoryMmap,
) -> Option<virtio_queue::DescriptorChain<&'m GuestMemoryMmap>> {
    use virtio_queue::QueueT;
    if let Some(chain) = queue.pop_descriptor_chain(mem) {
        return Some(chain);
    }
    match queue.enable_notification(mem) {
        Ok(true) => queue.pop_descriptor_chain(mem),
        _ => None,
    }
}

/// How many completions a long pass over a queue writes before it publishes them (moves the
/// used ring's index, a cache line the driver watches), so a polling driver sees progress.
const PUBLISH_EVERY: u16 = 64;
/// How many completions a long pass publishes before it checks whether the driver asked for
/// an interrupt: often enough that a driver can refill the ring while the device works on
/// (Linux asks for its transmit interrupt three quarters of the way through what it queued),
/// rarely enough that a busy device interrupts little (an interrupt, a cross-CPU wake-up, is
/// what costs most per batch of frames).
const CHECK_EVERY: u16 = 256;

/// Completions on their way to a queue's used ring during one pass, published in batches as
/// QEMU's fill/flush and vhost's add_used_n do: each chain's element is written at once, the
/// ring's index every `PUBLISH_EVERY` chains, the driver interrupted (if it asked) every
/// `CHECK_EVERY`, and both at the end of the pass.
#[derive(Debug, Default)]
pub struct UsedBatch {
    /// Elements written past the published index.
    pending: u16,
    /// Elements published since the last look at whether the driver wants an interrupt.
    unchecked: u16,
}

impl UsedBatch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Completes chain `head` with `len` bytes written; false when the used ring is not in
    /// guest memory. A head past the ring (a driver that lied in its available ring) cannot
    /// be completed and is skipped.
    pub fn push(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        interrupt: &Interrupt,
        head: u16,
        len: u32,
    ) -> bool {
        use virtio_queue::QueueT;
        use vm_memory::{Address, Bytes};
        let size = queue.size();
        if head >= size {
            tracing::debug!("virtio: chain head {head} is past a ring of {size}");
            return true;
        }
        let slot = queue.next_used().wrapping_add(self.pending) % size;
        // struct virtq_used_elem { le32 id; le32 len; }, after the ring's flags and index.
        let elem = u64::from(head) | (u64::from(len) << 32);
        let at = vm_memory::GuestAddress(queue.used_ring())
            .checked_add(4 + 8 * u64::from(slot))
            .map(|at| mem.write_obj(elem.to_le(), at));
        if !matches!(at, Some(Ok(()))) {
            return false;
        }
        self.pending += 1;
        if self.pending == PUBLISH_EVERY {
            self.publish_index(queue, mem);
            if self.unchecked >= CHECK_EVERY {
                self.check_interrupt(queue, mem, interrupt);
            }
        }
        true
    }

    /// Makes the pending completions visible to the driver and interrupts it if it asked to
    /// hear of any it has not been told about. Every pass ends here.
    pub fn publish(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap, interrupt: &Interrupt) {
        self.publish_index(queue, mem);
        if self.unchecked > 0 {
            self.check_interrupt(queue, mem, interrupt);
        }
    }

    fn publish_index(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) {
        use virtio_queue::QueueT;
        use vm_memory::Bytes;
        if self.pending == 0 {
            return;
        }
        let new = queue.next_used().wrapping_add(self.pending);
        let index = vm_memory::GuestAddress(queue.used_ring() + 2);
        // Release: the elements are visible before the index that exposes them.
        if mem.store(new.to_le(), index, Ordering::Release).is_ok() {
            queue.set_next_used(new);
            self.unchecked = self.unchecked.saturating_add(self.pending);
        }
        self.pending = 0;
    }

    /// Interrupts the driver if it asked to hear of the last `unchecked` completions (with
    /// EVENT_IDX: its `used_event` lies among them; without it: always).
    fn check_interrupt(&mut self, queue: &Queue, mem: &GuestMemoryMmap, interrupt: &Interrupt) {
        use virtio_queue::QueueT;
        use vm_memory::Bytes;
        let new = queue.next_used();
        let old = new.wrapping_sub(self.unchecked);
        self.unchecked = 0;
        if !queue.event_idx_enabled() {
            interrupt.signal_used();
            return;
        }
        // The index store must be visible before `used_event` is read (spec §2.7.10).
        std::sync::atomic::fence(Ordering::SeqCst);
        let used_event_at = queue.avail_ring() + 4 + 2 * u64::from(queue.size());
        let used_event = mem
            .load::<u16>(vm_memory::GuestAddress(used_event_at), Ordering::Acquire)
            .map(u16::from_le);
        // vring_need_event: `used_event` lies among the entries published since `old`.
        let asked = used_event.map_or(true, |event| {
            new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
        });
        if asked {
            interrupt.signal_used();
        }
    }
}

/// A running single-queue device's queue, with the memory it lives in and the interrupt that
/// announces its completions.
#[derive(Debug)]
pub struct ActiveQueue {
    pub mem: GuestMemoryMmap,
    pub queue: Queue,
    pub interrupt: Arc<Interrupt>,
}

impl ActiveQueue {
    /// Takes the one queue a single-queue device has, or says why the driver's setup does not
    /// fit.
    pub fn new(
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<Self, ActivateError> {
        let got = queues.len();
        let [queue] = <[Queue; 1]>::try_from(queues)
            .map_err(|_| ActivateError::QueueCount { expected: 1, got })?;
        Ok(Self {
            mem,
            queue,
            interrupt,
        })
    }
}

/// Serves a read of a device's configuration space from its bytes; past the end reads zero.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let src = usize::try_from(offset)
        .ok()
        .and_then(|start| config.get(start..));
    if let Some(src) = src {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

/// Named counters a device bumps from its I/O thread and the API reads without taking the
/// device's lock.
#[derive(Debug)]
pub struct Counters {
    names: &'static [&'static str],
    values: Vec<std::sync::atomic::AtomicU64>,
}

impl Counters {
    pub fn new(names: &'static [&'static str]) -> Arc<Self> {
        Arc::new(Self {
            names,
            values: names
                .iter()
                .map(|_| std::sync::atomic::AtomicU64::new(0))
                .collect(),
        })
    }

    /// Adds `n` to counter `index` (an index into the names given to `new`).
    pub fn add(&self, index: usize, n: u64) {
        if let Some(v) = self.values.get(index) {
            v.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self) -> std::collections::BTreeMap<String, u64> {
        self.names
            .iter()
            .zip(&self.values)
            .map(|(name, v)| ((*name).to_owned(), v.load(Ordering::Relaxed)))
            .collect()
    }
}

/// A device model behind the transport.
pub trait VirtioDevice: Send + std::fmt::Debug {
    fn device_type(&self) -> u32;
    /// Feature bits the device offers; the transport adds `VIRTIO_F_VERSION_1`.
    fn features(&self) -> u64;
    /// One entry per queue: the largest size the driver may choose.
    fn queue_max_sizes(&self) -> &[u16];
    /// Reads the device-specific configuration space; bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let _ = offset;
        data.fill(0);
    }
    /// Writes to the configuration space; ignored unless the device has writable fields.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let _ = (offset, data);
    }
    /// The driver set DRIVER_OK: the device takes its queues and starts serving them.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        acked_features: u64,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError>;
    /// The driver notified queue `index`.
    fn queue_notify(&mut self, index: u16);
    /// Host file descriptors the device's I/O thread also waits on, edge-triggered (a TAP).
    fn host_events(&self) -> Vec<std::os::fd::RawFd> {
        Vec::new()
    }
    /// `host_events()[index]` became readable.
    fn host_event(&mut self, index: usize) {
        let _ = index;
    }
    /// The driver reset the device: drop queues and in-flight state.
    fn reset(&mut self);
    /// The device's counters, for metrics.
    fn counters(&self) -> Arc<Counters>;
    /// Replaces the device's I/O limits; false when the device has none to change.
    fn set_rate_limiter(&mut self, limiter: ratelimit::RateLimiter) -> bool {
        let _ = limiter;
        false
    }
}

/// A device's interrupt: the InterruptStatus register plus the line into KVM (an irqfd).
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    irqfd: Option<EventFd>,
}

impl Interrupt {
    pub fn new(irqfd: Option<EventFd>) -> Self {
        Self {
            status: AtomicU32::new(0),
            irqfd,
        }
    }

    /// Tells the driver that used buffers are waiting.
    pub fn signal_used(&self) {
        self.signal(INT_USED_RING);
    }

    /// Tells the driver that the configuration (or the device status) changed.
    pub fn signal_config(&self) {
        self.signal(INT_CONFIG_CHANGE);
    }

    fn signal(&self, bits: u32) {
        self.status.fetch_or(bits, Ordering::AcqRel);
        if let Some(fd) = &self.irqfd {
            // A full eventfd counter still means "interrupt pending"; nothing is lost.
            let _ = fd.write(1);
        }
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::Acquire)
    }

    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::QueueT;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    const SIZE: u16 = 256;
    const AVAIL: u64 = 0x1_1000;
    const USED: u64 = 0x1_2000;
    /// `used_event`, after the available ring's entries.
    const USED_EVENT: GuestAddress = GuestAddress(AVAIL + 4 + 2 * SIZE as u64);

    fn queue_and_irq(event_idx: bool) -> (Queue, Interrupt, EventFd) {
        let mut queue = Queue::new(SIZE).unwrap();
        queue
            .try_set_desc_table_address(GuestAddress(0x1_0000))
            .unwrap();
        queue
            .try_set_avail_ring_address(GuestAddress(AVAIL))
            .unwrap();
        queue.try_set_used_ring_address(GuestAddress(USED)).unwrap();
        queue.set_ready(true);
        queue.set_event_idx(event_idx);
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let interrupt = Interrupt::new(Some(irq.try_clone().unwrap()));
        (queue, interrupt, irq)
    }

    #[test]
    fn a_long_pass_publishes_in_batches_and_interrupts_once_the_driver_asked() {
        let mem = testing::mem();
        let (mut queue, interrupt, irq) = queue_and_irq(true);
        let mut used = UsedBatch::new();
        let index = |mem: &GuestMemoryMmap| mem.read_obj::<u16>(GuestAddress(USED + 2)).unwrap();
        // Interrupt once the 100th chain is used.
        mem.write_obj(99u16, USED_EVENT).unwrap();
        for head in 0..100 {
            assert!(used.push(&mut queue, &mem, &interrupt, head, 0));
        }
        assert_eq!(index(&mem), 64, "the driver sees a batch at a time");
        assert!(irq.read().is_err(), "not looked at yet");
        for head in 100..256 {
            assert!(used.push(&mut queue, &mem, &interrupt, head, 0));
        }
        assert_eq!(irq.read().unwrap(), 1, "looked at after 256, mid-pass");
        used.publish(&mut queue, &mem, &interrupt);
        assert!(irq.read().is_err(), "nothing new to tell");
        // A short pass the driver wants to hear about is told at its end.
        mem.write_obj(256u16, USED_EVENT).unwrap();
        assert!(used.push(&mut queue, &mem, &interrupt, 7, 5));
        assert_eq!(index(&mem), 256);
        used.publish(&mut queue, &mem, &interrupt);
        assert_eq!(irq.read().unwrap(), 1);
        let elem: [u32; 2] = mem.read_obj(GuestAddress(USED + 4)).unwrap();
        assert_eq!((index(&mem), elem), (257, [7, 5]), "wrapped to slot 0");
        assert_eq!(queue.next_used(), 257);
        // One the driver does not want to hear about is not.
        assert!(used.push(&mut queue, &mem, &interrupt, 8, 0));
        used.publish(&mut queue, &mem, &interrupt);
        assert!(irq.read().is_err());
    }

    #[test]
    fn without_event_idx_a_pass_interrupts_at_its_end_and_every_256_chains() {
        let mem = testing::mem();
        let (mut queue, interrupt, irq) = queue_and_irq(false);
        let mut used = UsedBatch::new();
        for head in 0..70 {
            assert!(used.push(&mut queue, &mem, &interrupt, head, 0));
        }
        assert!(irq.read().is_err());
        used.publish(&mut queue, &mem, &interrupt);
        assert_eq!(irq.read().unwrap(), 1);
        for head in 0..256 {
            assert!(used.push(&mut queue, &mem, &interrupt, head, 0));
        }
        assert_eq!(irq.read().unwrap(), 1);
        used.publish(&mut queue, &mem, &interrupt);
        assert!(
            irq.read().is_err(),
            "nothing completed since, nothing to tell"
        );
        assert!(used.push(&mut queue, &mem, &interrupt, SIZE, 0));
        used.publish(&mut queue, &mem, &interrupt);
        assert_eq!(queue.next_used(), 326, "a head past the ring is skipped");
    }
}
