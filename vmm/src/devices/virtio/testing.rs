//! The driver side of a virtio-mmio device, for unit tests and benchmarks: lays out split
//! queues in real guest memory, runs the status handshake through the transport's registers,
//! and reads completions back. No KVM involved.

#![allow(clippy::cast_possible_truncation)] // splitting u64 addresses into register halves

use std::sync::Arc;

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, GuestAddress};

use super::mmio::*;
use super::{Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::memory::GuestMemoryMmap;

pub const QUEUE_AT: u64 = 0x1_0000;
pub const VRING_DESC_F_NEXT: u16 = 1;
pub const VRING_DESC_F_WRITE: u16 = 2;

pub fn mem() -> GuestMemoryMmap {
    crate::memory::create(16 << 20).unwrap()
}

pub fn transport(mem: &GuestMemoryMmap, device: Box<dyn VirtioDevice>) -> MmioTransport {
    MmioTransport::new(device, mem.clone(), Arc::new(Interrupt::new(None)))
}

pub fn rd(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(offset, &mut b);
    u32::from_le_bytes(b)
}

pub fn wr(t: &mut MmioTransport, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

/// The driver side of the handshake up to FEATURES_OK, accepting `features`.
pub fn negotiate(t: &mut MmioTransport, features: u64) {
    wr(t, REG_STATUS, u32::from(ACKNOWLEDGE));
    wr(t, REG_STATUS, u32::from(ACKNOWLEDGE | DRIVER));
    wr(t, REG_DRIVER_FEATURES_SEL, 0);
    wr(t, REG_DRIVER_FEATURES, (features & 0xffff_ffff) as u32);
    wr(t, REG_DRIVER_FEATURES_SEL, 1);
    wr(t, REG_DRIVER_FEATURES, (features >> 32) as u32);
    wr(t, REG_STATUS, u32::from(ACKNOWLEDGE | DRIVER | FEATURES_OK));
}

/// Programs queue `index` with rings at the given addresses.
pub fn program_queue(
    t: &mut MmioTransport,
    index: u32,
    size: u32,
    desc: u64,
    avail: u64,
    used: u64,
) {
    wr(t, REG_QUEUE_SEL, index);
    wr(t, REG_QUEUE_NUM, size);
    for (lo, hi, addr) in [
        (REG_QUEUE_DESC_LOW, REG_QUEUE_DESC_HIGH, desc),
        (REG_QUEUE_DRIVER_LOW, REG_QUEUE_DRIVER_HIGH, avail),
        (REG_QUEUE_DEVICE_LOW, REG_QUEUE_DEVICE_HIGH, used),
    ] {
        wr(t, lo, (addr & 0xffff_ffff) as u32);
        wr(t, hi, (addr >> 32) as u32);
    }
    wr(t, REG_QUEUE_READY, 1);
}

pub fn driver_ok(t: &mut MmioTransport) {
    wr(
        t,
        REG_STATUS,
        u32::from(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK),
    );
}

/// Programs queue 0 with the rings a mock driver laid out, and sets DRIVER_OK.
pub fn set_up_queue(t: &mut MmioTransport, q: &MockSplitQueue<'_, GuestMemoryMmap>, size: u32) {
    program_queue(
        t,
        0,
        size,
        q.desc_table_addr().0,
        q.avail_addr().0,
        q.used_addr().0,
    );
    driver_ok(t);
}

/// A split virtqueue driven for as long as one likes (the mock's helpers do not wrap): the
/// caller chooses descriptor-table slots, publishes chains and collects completions.
#[derive(Debug)]
pub struct Ring {
    mem: GuestMemoryMmap,
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    next_avail: u16,
    next_used: u16,
}

impl Ring {
    /// Rings of `size` entries laid out from `base`, each part aligned as the spec asks.
    pub fn new(mem: &GuestMemoryMmap, base: u64, size: u16) -> Self {
        let desc = base;
        let avail = desc + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size) + 4095) & !4095;
        let zeroes = vec![0u8; (used + 6 + 8 * u64::from(size) - base) as usize];
        mem.write_slice(&zeroes, GuestAddress(base)).unwrap();
        Self {
            mem: mem.clone(),
            size,
            desc,
            avail,
            used,
            next_avail: 0,
            next_used: 0,
        }
    }

    pub fn program(&self, t: &mut MmioTransport, index: u32) {
        program_queue(
            t,
            index,
            u32::from(self.size),
            self.desc,
            self.avail,
            self.used,
        );
    }

    /// Writes `descs` (address, length, flags) into the table from slot `first`, chained in
    /// order, and makes the chain available.
    pub fn push(&mut self, first: u16, descs: &[(u64, u32, u16)]) {
        for (i, &(addr, len, flags)) in (0u16..).zip(descs) {
            let slot = first + i;
            let last = usize::from(i) + 1 == descs.len();
            let flags = if last {
                flags
            } else {
                flags | VRING_DESC_F_NEXT
            };
            let next = if last { 0 } else { slot + 1 };
            let at = GuestAddress(self.desc + 16 * u64::from(slot));
            self.mem
                .write_obj(desc(addr, len, flags, next), at)
                .unwrap();
        }
        let entry = self.avail + 4 + 2 * u64::from(self.next_avail % self.size);
        self.mem.write_obj(first, GuestAddress(entry)).unwrap();
        self.next_avail = self.next_avail.wrapping_add(1);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        self.mem
            .write_obj(self.next_avail, GuestAddress(self.avail + 2))
            .unwrap();
    }

    /// Where the driver stands: the next available and used indices it will write and read.
    pub fn next_avail(&self) -> u16 {
        self.next_avail
    }

    pub fn next_used(&self) -> u16 {
        self.next_used
    }

    /// With EVENT_IDX: asks to be interrupted once the device's used index passes `idx`.
    /// Returns true when it already has, so that the caller collects again instead of waiting
    /// for an interrupt that may have come and gone.
    pub fn set_used_event(&self, idx: u16) -> bool {
        let at = GuestAddress(self.avail + 4 + 2 * u64::from(self.size));
        self.mem.write_obj(idx, at).unwrap();
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        let used: u16 = self.mem.read_obj(GuestAddress(self.used + 2)).unwrap();
        used.wrapping_sub(self.next_used) > idx.wrapping_sub(self.next_used)
    }

    /// With EVENT_IDX: whether the chains made available since index `old` need a notify,
    /// judged by the device's `avail_event` as the spec's `vring_need_event` does.
    pub fn kick_needed(&self, old: u16) -> bool {
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        let at = GuestAddress(self.used + 4 + 8 * u64::from(self.size));
        let event: u16 = self.mem.read_obj(at).unwrap();
        let new = self.next_avail;
        new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
    }

    /// The next completion not yet collected: (head, length).
    pub fn pop_used(&mut self) -> Option<(u16, u32)> {
        let idx: u16 = self.mem.read_obj(GuestAddress(self.used + 2)).unwrap();
        if idx == self.next_used {
            return None;
        }
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        let elem = self.used + 4 + 8 * u64::from(self.next_used % self.size);
        let id: u32 = self.mem.read_obj(GuestAddress(elem)).unwrap();
        let len: u32 = self.mem.read_obj(GuestAddress(elem + 4)).unwrap();
        self.next_used = self.next_used.wrapping_add(1);
        Some((id as u16, len))
    }
}

/// A device behind a transport, negotiated and running with one 16-entry queue.
pub fn running<'m>(
    mem: &'m GuestMemoryMmap,
    device: Box<dyn VirtioDevice>,
) -> (MmioTransport, MockSplitQueue<'m, GuestMemoryMmap>) {
    let mut t = transport(mem, device);
    let q = MockSplitQueue::create(mem, GuestAddress(QUEUE_AT), 16);
    negotiate(&mut t, VIRTIO_F_VERSION_1);
    set_up_queue(&mut t, &q, 16);
    assert_ne!(t.status() & DRIVER_OK, 0);
    (t, q)
}

pub fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

/// (used ring index, length of used element `slot`).
pub fn used(
    mem: &GuestMemoryMmap,
    q: &MockSplitQueue<'_, GuestMemoryMmap>,
    slot: u64,
) -> (u16, u32) {
    // Used ring: flags u16, idx u16, then {id u32, len u32} elements.
    let idx: u16 = mem.read_obj(q.used_addr().unchecked_add(2)).unwrap();
    let len: u32 = mem
        .read_obj(q.used_addr().unchecked_add(4 + slot * 8 + 4))
        .unwrap();
    (idx, len)
}
