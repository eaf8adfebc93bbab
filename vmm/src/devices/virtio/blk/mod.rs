//! virtio-blk (virtio 1.2 spec §5.2): one request queue over a `BlkBackend`.
//!
//! Per request: measure the chain, read the header, `request::parse` it against the disk, hand
//! reads, writes and flushes to the backend with an O_DIRECT-aligned bounce buffer (many may be
//! in flight), and on completion copy read data into the guest's buffers and write the status
//! byte. Every popped request is completed exactly once, garbage included.

pub mod backend;
mod chain;
#[cfg(feature = "rbd")]
pub mod rbd;
pub mod request;
pub mod uring;

use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT};

use super::ratelimit::{RateLimiter, Throttle};
use super::{
    pop_or_rearm, read_config_bytes, ActivateError, ActiveQueue, Counters, Interrupt, UsedBatch,
    VirtioDevice, TYPE_BLOCK,
};
use crate::memory::GuestMemoryMmap;
use backend::{AlignedBuf, BlkBackend, Done, Io, Op};
use chain::Segments;
use request::{Header, Request, Segment, Shape, ID_LEN, SECTOR_SHIFT, S_IOERR, S_OK};
use vm_memory::{Bytes, GuestAddress};

pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: &[u16] = &[QUEUE_SIZE];
/// The largest segment a driver may use (advertised as `size_max`); with `seg_max` segments
/// this bounds a request's data, and so its bounce buffer.
const SIZE_MAX: u32 = 32 << 10;
const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
const MAX_REQUEST: u64 = SIZE_MAX as u64 * SEG_MAX as u64;
/// Bounce buffers kept for reuse (only small ones); more in flight allocate and free as needed.
const POOL: usize = 64;
const POOL_BUF_MAX: usize = 128 << 10;
/// Most bytes of bounce buffers in flight per disk: what a guest can make the VMM allocate.
const BOUNCE_BUDGET: usize = 64 << 20;

// Feature bits (spec §5.2.3).
const F_SIZE_MAX: u64 = 1 << 1;
const F_SEG_MAX: u64 = 1 << 2;
const F_RO: u64 = 1 << 5;
const F_BLK_SIZE: u64 = 1 << 6;
const F_FLUSH: u64 = 1 << 9;
const F_DISCARD: u64 = 1 << 13;
const F_WRITE_ZEROES: u64 = 1 << 14;

/// Request counters, for metrics.
const COUNTERS: &[&str] = &[
    "reads",
    "read_bytes",
    "writes",
    "write_bytes",
    "flushes",
    "discards",
    "errors",
    "throttled",
];
const READS: usize = 0;
const READ_BYTES: usize = 1;
const WRITES: usize = 2;
const WRITE_BYTES: usize = 3;
const FLUSHES: usize = 4;
const DISCARDS: usize = 5;
const ERRORS: usize = 6;
const THROTTLED: usize = 7;

/// Bytes of `struct virtio_blk_config` we fill (through `write_zeroes_may_unmap`).
const CONFIG_LEN: usize = 60;

#[derive(Debug)]
pub struct Block {
    id: [u8; ID_LEN],
    backend: Box<dyn BlkBackend>,
    read_only: bool,
    sectors: u64,
    config: [u8; CONFIG_LEN],
    active: Option<ActiveQueue>,
    /// Requests the backend holds, by tag; a tag is a slot here, never a guest value.
    slots: Vec<Slot>,
    /// Slots neither in flight nor orphaned, to take from the top.
    free: Vec<usize>,
    pool: Vec<AlignedBuf>,
    /// Bytes of bounce buffers the backend holds now.
    bounce_in_flight: usize,
    done: Vec<Done>,
    throttle: Throttle,
    stats: Arc<Counters>,
}

/// One request's place: its buffers (kept for completion) and, while the backend holds it,
/// what completing it needs.
#[derive(Debug, Default)]
struct Slot {
    segments: Segments,
    state: SlotState,
}

#[derive(Debug, Default, Clone, Copy)]
enum SlotState {
    #[default]
    Free,
    InFlight(InFlight),
    /// In the backend from before a driver reset: its result is dropped, and the slot is not
    /// reused until the backend gives it back.
    Orphaned,
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    head: u16,
    /// Read data goes to the first `read_len` writable bytes.
    read_len: usize,
    status: GuestAddress,
    /// Bytes the used ring reports when it succeeds.
    used: u32,
}

/// How `start` left a request.
enum Started {
    InFlight,
    Finished(u32),
    /// QoS holds it back: it goes back on the ring untouched.
    Throttled,
}

impl Block {
    pub fn new(
        id: &str,
        backend: Box<dyn BlkBackend>,
        read_only: bool,
        limiter: RateLimiter,
    ) -> std::io::Result<Self> {
        let sectors = backend.size() >> SECTOR_SHIFT;
        let block_size = backend.block_size();
        let mut serial = [0u8; ID_LEN];
        for (dst, src) in serial.iter_mut().zip(id.bytes()) {
            *dst = src;
        }
        Ok(Self {
            id: serial,
            backend,
            read_only,
            sectors,
            config: config_space(sectors, block_size),
            active: None,
            slots: (0..QUEUE_SIZE).map(|_| Slot::default()).collect(),
            free: (0..usize::from(QUEUE_SIZE)).rev().collect(),
            pool: Vec::new(),
            bounce_in_flight: 0,
            done: Vec::new(),
            throttle: Throttle::new(limiter)?,
            stats: Counters::new(COUNTERS),
        })
    }

    fn process(&mut self) {
        let Some(mut active) = self.active.take() else {
            return;
        };
        // The driver hears of completions before new requests are parsed, so it refills the
        // ring while this thread submits.
        let mut used = UsedBatch::new();
        self.reap(&mut active, &mut used);
        used.publish(&mut active.queue, &active.mem, &active.interrupt);
        // With every slot busy, or the bounce budget spent, the next completion brings us back.
        while self.bounce_in_flight < BOUNCE_BUDGET {
            let Some(&slot) = self.free.last() else {
                break;
            };
            let Some(chain) = pop_or_rearm(&mut active.queue, &active.mem) else {
                break;
            };
            let head = chain.head_index();
            match self.start(&active.mem, chain, slot) {
                Started::InFlight => {
                    self.free.pop();
                }
                Started::Finished(len) => {
                    if !used.push(&mut active.queue, &active.mem, &active.interrupt, head, len) {
                        tracing::debug!("virtio-blk: used ring unwritable");
                        break;
                    }
                }
                Started::Throttled => {
                    // Back on the ring; the throttle's timer brings us back when it fits.
                    active.queue.go_to_previous_position();
                    break;
                }
            }
        }
        self.backend.kick();
        if self.backend.completion_fd().is_none() {
            self.reap(&mut active, &mut used);
        }
        used.publish(&mut active.queue, &active.mem, &active.interrupt);
        self.active = Some(active);
    }

    /// Finishes what the backend completed.
    fn reap(&mut self, active: &mut ActiveQueue, used: &mut UsedBatch) {
        self.backend.complete(&mut self.done);
        for done in std::mem::take(&mut self.done) {
            let Some(slot) = self.slots.get_mut(usize::from(done.tag)) else {
                continue;
            };
            let mut buf = done.buf;
            let len = buf.as_mut_slice().len();
            self.bounce_in_flight = self.bounce_in_flight.saturating_sub(len);
            if !matches!(slot.state, SlotState::Free) {
                self.free.push(usize::from(done.tag));
            }
            // An orphan (its driver reset meanwhile) only gives its slot and buffer back.
            if let SlotState::InFlight(request) = std::mem::take(&mut slot.state) {
                if let Err(e) = &done.result {
                    tracing::debug!("virtio-blk: I/O failed: {e}");
                }
                let read = buf.as_mut_slice().get(..request.read_len);
                let ok = done.result.is_ok()
                    && read.is_some_and(|data| slot.segments.write(&active.mem, 0, data).is_ok());
                if !ok {
                    self.stats.add(ERRORS, 1);
                }
                let (status, written) = if ok {
                    (S_OK, request.used)
                } else {
                    (S_IOERR, 1)
                };
                let written = if active.mem.write_obj(status, request.status).is_ok() {
                    written
                } else {
                    0
                };
                // A used ring outside guest memory: the driver never hears, as with any ring.
                let _ = used.push(
                    &mut active.queue,
                    &active.mem,
                    &active.interrupt,
                    request.head,
                    written,
                );
            }
            if len <= POOL_BUF_MAX && self.pool.len() < POOL {
                self.pool.push(buf);
            }
        }
    }

    /// Parses one request and starts it; simple ones finish at once.
    fn start(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
        slot: usize,
    ) -> Started {
        let head = chain.head_index();
        let segs = &mut self.slots[slot].segments;
        // Header, at most SEG_MAX data segments, status.
        if segs.load(chain, SEG_MAX as usize + 2).is_err() {
            return Started::Finished(0);
        }
        let Some(status) = segs.last_writable_byte() else {
            return Started::Finished(0);
        };
        let finish = |code: u8, written: usize| {
            if code != S_OK {
                self.stats.add(ERRORS, 1);
            }
            match mem.write_obj(code, status) {
                Ok(()) => Started::Finished(u32::try_from(written + 1).unwrap_or(u32::MAX)),
                Err(_) => Started::Finished(0),
            }
        };
        let request = match parse(mem, segs, self.sectors, self.read_only) {
            Ok(r) => r,
            Err(code) => return finish(code, 0),
        };
        // QoS charges what a request moves, once it is known to be valid.
        let bytes = match request {
            Request::Read { len, .. } | Request::Write { len, .. } => len,
            _ => 0,
        };
        if !self.throttle.admit(bytes) {
            self.stats.add(THROTTLED, 1);
            return Started::Throttled;
        }
        count(&self.stats, request);
        // Everything but GET_ID goes to the backend; only reads and writes carry a buffer.
        let (op, offset, len) = match request {
            Request::Read { offset, len } => (Op::Read, offset, len),
            Request::Write { offset, len } => (Op::Write, offset, len),
            Request::Flush => (Op::Flush, 0, 0),
            Request::Discard { offset, len } => (Op::Discard { len }, offset, 0),
            Request::WriteZeroes { offset, len, unmap } => {
                (Op::WriteZeroes { len, unmap }, offset, 0)
            }
            Request::GetId => {
                let n = ID_LEN.min(segs.writable_len().saturating_sub(1));
                return match segs.write(mem, 0, &self.id[..n]) {
                    Ok(()) => finish(S_OK, n),
                    Err(_) => finish(S_IOERR, 0),
                };
            }
        };
        let Some(len) = usize::try_from(len)
            .ok()
            .filter(|&l| l as u64 <= MAX_REQUEST)
        else {
            return finish(S_IOERR, 0);
        };
        // Small requests reuse pooled buffers; large ones get their own.
        let mut buf = if len <= POOL_BUF_MAX {
            self.pool.pop().unwrap_or_default()
        } else {
            AlignedBuf::default()
        };
        buf.set_len(len);
        if op == Op::Write && segs.read(mem, Header::LEN, buf.as_mut_slice()).is_err() {
            self.pool.push(buf);
            return finish(S_IOERR, 0);
        }
        let read_len = if op == Op::Read { len } else { 0 };
        self.slots[slot].state = SlotState::InFlight(InFlight {
            head,
            read_len,
            status,
            used: u32::try_from(read_len + 1).unwrap_or(u32::MAX),
        });
        self.bounce_in_flight += len;
        let tag = u16::try_from(slot).unwrap_or(u16::MAX);
        self.backend.submit(Io {
            tag,
            op,
            offset,
            buf,
        });
        Started::InFlight
    }
}

/// Reads the header (and a discard segment) and checks the request against the disk.
fn parse(
    mem: &GuestMemoryMmap,
    segs: &Segments,
    sectors: u64,
    read_only: bool,
) -> Result<Request, u8> {
    let mut raw = [0u8; Header::LEN];
    segs.read(mem, 0, &mut raw).map_err(|_| S_IOERR)?;
    let header = Header::from_le_bytes(raw);
    let shape = Shape {
        readable: segs.readable_len().saturating_sub(Header::LEN) as u64,
        writable: segs.writable_len().saturating_sub(1) as u64,
    };
    let segment = if shape.readable == Segment::LEN as u64 {
        let mut raw = [0u8; Segment::LEN];
        segs.read(mem, Header::LEN, &mut raw).map_err(|_| S_IOERR)?;
        Some(Segment::from_le_bytes(raw))
    } else {
        None
    };
    request::parse(header, shape, segment, sectors, read_only).map_err(|e| {
        tracing::debug!("virtio-blk: {e}");
        e.status()
    })
}

fn count(stats: &Counters, request: Request) {
    let (counter, bytes) = match request {
        Request::Read { len, .. } => (Some(READS), Some((READ_BYTES, len))),
        Request::Write { len, .. } => (Some(WRITES), Some((WRITE_BYTES, len))),
        Request::Flush => (Some(FLUSHES), None),
        Request::Discard { .. } | Request::WriteZeroes { .. } => (Some(DISCARDS), None),
        Request::GetId => (None, None),
    };
    if let Some(c) = counter {
        stats.add(c, 1);
    }
    if let Some((c, n)) = bytes {
        stats.add(c, n);
    }
}

/// `struct virtio_blk_config` (spec §5.2.4), little-endian.
fn config_space(sectors: u64, block_size: u32) -> [u8; CONFIG_LEN] {
    let mut c = [0u8; CONFIG_LEN];
    let mut put = |at: usize, bytes: &[u8]| c[at..at + bytes.len()].copy_from_slice(bytes);
    put(0, &sectors.to_le_bytes()); // capacity
    put(8, &SIZE_MAX.to_le_bytes()); // size_max
    put(12, &SEG_MAX.to_le_bytes()); // seg_max
    put(20, &block_size.to_le_bytes()); // blk_size
    put(36, &(u32::MAX >> SECTOR_SHIFT).to_le_bytes()); // max_discard_sectors
    put(40, &1u32.to_le_bytes()); // max_discard_seg
    put(44, &8u32.to_le_bytes()); // discard_sector_alignment: 4 KiB
    put(48, &(u32::MAX >> SECTOR_SHIFT).to_le_bytes()); // max_write_zeroes_sectors
    put(52, &1u32.to_le_bytes()); // max_write_zeroes_seg
    put(56, &[1]); // write_zeroes_may_unmap
    c
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn features(&self) -> u64 {
        let base = F_SIZE_MAX | F_SEG_MAX | F_BLK_SIZE | F_FLUSH;
        if self.read_only {
            base | F_RO
        } else {
            base | F_DISCARD | F_WRITE_ZEROES
        }
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        _acked_features: u64,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        self.active = Some(ActiveQueue::new(mem, queues, interrupt)?);
        // Requests posted before DRIVER_OK.
        self.process();
        Ok(())
    }

    fn queue_notify(&mut self, index: u16) {
        if index == 0 {
            self.process();
        }
    }

    fn reset(&mut self) {
        // Operations still in the backend finish there; their results are dropped.
        self.active = None;
        for slot in &mut self.slots {
            if let SlotState::InFlight(_) = slot.state {
                slot.state = SlotState::Orphaned;
            }
        }
    }

    fn host_events(&self) -> Vec<std::os::fd::RawFd> {
        std::iter::once(self.throttle.fd())
            .chain(self.backend.completion_fd())
            .collect()
    }

    fn host_event(&mut self, _index: usize) {
        // The QoS timer or a completion: either way, look at the queue and the backend again.
        self.process();
    }

    fn counters(&self) -> Arc<Counters> {
        self.stats.clone()
    }

    fn set_rate_limiter(&mut self, limiter: RateLimiter) -> bool {
        self.throttle.set(limiter);
        true
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // test offsets are small; the VMM is 64-bit only
mod tests {
    use super::*;
    use crate::devices::virtio::mmio::{
        REG_DEVICE_FEATURES, REG_DEVICE_FEATURES_SEL, REG_QUEUE_NOTIFY,
    };
    use crate::devices::virtio::testing::*;
    use request::{S_UNSUPP, T_FLUSH, T_GET_ID, T_IN, T_OUT};
    use std::sync::atomic::{AtomicU32, Ordering};
    use vm_memory::{Address, Bytes, GuestAddress};

    const HDR: u64 = 0x4_0000;
    const DATA: u64 = 0x5_0000;
    const STATUS: u64 = 0x6_0000;
    const W: u16 = VRING_DESC_F_WRITE;

    /// A disk in a vector, counting flushes.
    #[derive(Debug)]
    struct MemBackend {
        bytes: Vec<u8>,
        flushes: Arc<AtomicU32>,
        done: Vec<Done>,
    }

    impl BlkBackend for MemBackend {
        fn size(&self) -> u64 {
            self.bytes.len() as u64
        }
        fn submit(&mut self, mut io: Io) {
            let o = io.offset as usize;
            let buf = io.buf.as_mut_slice();
            match io.op {
                Op::Read => buf.copy_from_slice(&self.bytes[o..o + buf.len()]),
                Op::Write => self.bytes[o..o + buf.len()].copy_from_slice(buf),
                Op::Flush => {
                    self.flushes.fetch_add(1, Ordering::Relaxed);
                }
                Op::Discard { len } | Op::WriteZeroes { len, .. } => {
                    self.bytes[o..o + len as usize].fill(0);
                }
            }
            self.done.push(Done {
                tag: io.tag,
                result: Ok(()),
                buf: io.buf,
            });
        }
        fn complete(&mut self, out: &mut Vec<Done>) {
            out.append(&mut self.done);
        }
    }

    fn disk(read_only: bool) -> (Box<Block>, Arc<AtomicU32>) {
        let flushes = Arc::new(AtomicU32::new(0));
        let backend = MemBackend {
            bytes: vec![0; 1 << 20],
            flushes: flushes.clone(),
            done: Vec::new(),
        };
        (
            Box::new(
                Block::new(
                    "disk-0",
                    Box::new(backend),
                    read_only,
                    RateLimiter::default(),
                )
                .unwrap(),
            ),
            flushes,
        )
    }

    fn header(mem: &GuestMemoryMmap, kind: u32, sector: u64) {
        let mut raw = [0u8; 16];
        raw[..4].copy_from_slice(&kind.to_le_bytes());
        raw[8..].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&raw, GuestAddress(HDR)).unwrap();
    }

    fn status(mem: &GuestMemoryMmap) -> u8 {
        mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    #[test]
    fn a_write_is_read_back() {
        let mem = mem();
        let (dev, _) = disk(false);
        let (mut t, q) = running(&mem, dev);
        header(&mem, T_OUT, 8);
        mem.write_slice(&[0x5a; 4096], GuestAddress(DATA)).unwrap();
        mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let chain = [
            desc(HDR, 16, VRING_DESC_F_NEXT, 1),
            desc(DATA, 4096, VRING_DESC_F_NEXT, 2),
            desc(STATUS, 1, W, 0),
        ];
        q.add_desc_chains(&chain, 0).unwrap();
        wr(&mut t, REG_QUEUE_NOTIFY, 0);
        assert_eq!((used(&mem, &q, 0), status(&mem)), ((1, 1), S_OK));

        header(&mem, T_IN, 8);
        mem.write_slice(&[0; 4096], GuestAddress(DATA)).unwrap();
        let chain = [
            desc(HDR, 16, VRING_DESC_F_NEXT, 4),
            desc(DATA, 4096, W | VRING_DESC_F_NEXT, 5),
            desc(STATUS, 1, W, 0),
        ];
        q.add_desc_chains(&chain, 3).unwrap();
        wr(&mut t, REG_QUEUE_NOTIFY, 0);
        assert_eq!((used(&mem, &q, 1), status(&mem)), ((2, 4097), S_OK));
        let mut back = [0u8; 4096];
        mem.read_slice(&mut back, GuestAddress(DATA)).unwrap();
        assert!(back.iter().all(|&b| b == 0x5a));
    }

    #[test]
    fn flush_get_id_and_unsupported() {
        let mem = mem();
        let (dev, flushes) = disk(false);
        let (mut t, q) = running(&mem, dev);
        header(&mem, T_FLUSH, 0);
        q.add_desc_chains(
            &[desc(HDR, 16, VRING_DESC_F_NEXT, 1), desc(STATUS, 1, W, 0)],
            0,
        )
        .unwrap();
        wr(&mut t, REG_QUEUE_NOTIFY, 0);
        assert_eq!((status(&mem), flushes.load(Ordering::Relaxed)), (S_OK, 1));

        header(&mem, T_GET_ID, 0);
        let chain = [
            desc(HDR, 16, VRING_DESC_F_NEXT, 3),
            desc(DATA, 20, W | VRING_DESC_F_NEXT, 4),
            desc(STATUS, 1, W, 0),
        ];
        q.add_desc_chains(&chain, 2).unwrap();
        wr(&mut t, REG_QUEUE_NOTIFY, 0);
        let mut id = [0u8; 20];
        mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id[..7], b"disk-0\0");
        assert_eq!(used(&mem, &q, 1), (2, 21));

        header(&mem, 77, 0);
        q.add_desc_chains(
            &[desc(HDR, 16, VRING_DESC_F_NEXT, 6), desc(STATUS, 1, W, 0)],
            5,
        )
        .unwrap();
        wr(&mut t, REG_QUEUE_NOTIFY, 0);
        assert_eq!(status(&mem), S_UNSUPP);
    }

    #[test]
    fn read_only_disks_say_so_and_refuse_writes() {
        let mem = mem();
        let (dev, _) = disk(true);
        let (mut t, q) = running(&mem, dev);
        wr(&mut t, REG_DEVICE_FEATURES_SEL, 0);
        assert_ne!(u64::from(rd(&mut t, REG_DEVICE_FEATURES)) & F_RO, 0);
        header(&mem, T_OUT, 0);
        let chain = [
            desc(HDR, 16, VRING_DESC_F_NEXT, 1),
            desc(DATA, 512, VRING_DESC_F_NEXT, 2),
            desc(STATUS, 1, W, 0),
        ];
        q.add_desc_chains(&chain, 0).unwrap();
        wr(&mut t, REG_QUEUE_NOTIFY, 0);
        assert_eq!(status(&mem), S_IOERR);
    }

    #[test]
    fn bad_requests_complete_with_an_error_or_nothing() {
        let mem = mem();
        let (dev, _) = disk(false);
        let (mut t, q) = running(&mem, dev);
        // Past the end of the 2048-sector disk: IOERR, nothing read.
        header(&mem, T_IN, 2047);
        let chain = [
            desc(HDR, 16, VRING_DESC_F_NEXT, 1),
            desc(DATA, 1024, W | VRING_DESC_F_NEXT, 2),
            desc(STATUS, 1, W, 0),
        ];
        q.add_desc_chains(&chain, 0).unwrap();
        // No writable byte at all: no status can be written; completed with length 0.
        q.add_desc_chains(&[desc(HDR, 16, 0, 0)], 3).unwrap();
        // A header shorter than 16 bytes: IOERR.
        q.add_desc_chains(
            &[desc(HDR, 8, VRING_DESC_F_NEXT, 5), desc(STATUS, 1, W, 0)],
            4,
        )
        .unwrap();
        wr(&mut t, REG_QUEUE_NOTIFY, 0);
        assert_eq!(used(&mem, &q, 0), (3, 1));
        assert_eq!(used(&mem, &q, 1), (3, 0));
        assert_eq!((used(&mem, &q, 2), status(&mem)), ((3, 1), S_IOERR));
    }

    #[test]
    fn config_space_reports_capacity() {
        let mem = mem();
        let (dev, _) = disk(false);
        let (mut t, _q) = running(&mem, dev);
        let lo = rd(&mut t, 0x100);
        let hi = rd(&mut t, 0x104);
        assert_eq!((u64::from(hi) << 32) | u64::from(lo), 2048);
        assert_eq!(rd(&mut t, 0x100 + 20), 512, "blk_size");
        assert_eq!(rd(&mut t, 0x100 + 0x200), 0, "past the end reads zero");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Whatever a driver puts in the descriptor table (addresses anywhere, any length, any
        /// flags, chains that loop or point past the table), the device neither panics nor
        /// leaves a popped request uncompleted.
        #[test]
        fn garbage_chains_are_all_completed(
            table in proptest::collection::vec(
                (0u64..(20 << 20), 0u32..200_000, 0u16..8, 0u16..20),
                1..16,
            ),
            headers in proptest::collection::vec((0u32..16, 0u64..4096), 1..4),
        ) {
            let mem = mem();
            let (dev, _) = disk(false);
            let (mut t, q) = running(&mem, dev);
            for (i, (kind, sector)) in headers.iter().enumerate() {
                let mut raw = [0u8; 16];
                raw[..4].copy_from_slice(&kind.to_le_bytes());
                raw[8..].copy_from_slice(&sector.to_le_bytes());
                mem.write_slice(&raw, GuestAddress(HDR + 16 * i as u64)).unwrap();
            }
            let descs: Vec<_> = table
                .iter()
                .map(|&(addr, len, flags, next)| desc(addr, len, flags, next))
                .collect();
            q.add_desc_chains(&descs, 0).unwrap();
            let avail: u16 = mem.read_obj(q.avail_addr().unchecked_add(2)).unwrap();
            wr(&mut t, REG_QUEUE_NOTIFY, 0);
            let (used_idx, _) = used(&mem, &q, 0);
            proptest::prop_assert_eq!(used_idx, avail);
        }
    }
}
