//! The driver side of a virtio-mmio device, for unit tests: lays out a split queue in real
//! guest memory, runs the status handshake through the transport's registers, and reads
//! completions back. No KVM involved.

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

/// Programs queue 0 with the rings a mock driver laid out, and sets DRIVER_OK.
pub fn set_up_queue(t: &mut MmioTransport, q: &MockSplitQueue<'_, GuestMemoryMmap>, size: u32) {
    wr(t, REG_QUEUE_SEL, 0);
    wr(t, REG_QUEUE_NUM, size);
    for (lo, hi, addr) in [
        (
            REG_QUEUE_DESC_LOW,
            REG_QUEUE_DESC_HIGH,
            q.desc_table_addr().0,
        ),
        (
            REG_QUEUE_DRIVER_LOW,
            REG_QUEUE_DRIVER_HIGH,
            q.avail_addr().0,
        ),
        (REG_QUEUE_DEVICE_LOW, REG_QUEUE_DEVICE_HIGH, q.used_addr().0),
    ] {
        wr(t, lo, (addr & 0xffff_ffff) as u32);
        wr(t, hi, (addr >> 32) as u32);
    }
    wr(t, REG_QUEUE_READY, 1);
    wr(
        t,
        REG_STATUS,
        u32::from(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK),
    );
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
