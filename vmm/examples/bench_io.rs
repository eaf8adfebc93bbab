//! I/O benchmark driver for `scripts/bench-io`: runs Triad's virtio devices with a host-side
//! queue driver over real guest memory (no guest, no KVM), so what is measured is the device
//! path itself: transport, I/O thread, queue handling and the backend.
//!
//! `bench-io blk FILE read|write DEPTH SECONDS` prints `iops N`: 4 KiB random requests on an
//! O_DIRECT io_uring disk, DEPTH in flight. With `rbd:POOL/IMAGE CEPH_CONF` instead of FILE,
//! on an RBD image through librbd.
//! `bench-io net TAP SECONDS` prints `pps N gbps G`: 1514-byte frames the driver queues on the
//! transmit queue, which the device writes to the TAP.
//! `bench-io tap TAP SECONDS` prints the same for a plain loop writing one frame over and over
//! to the TAP: the limit the device is measured against. `bench-io tap-guest TAP SECONDS`:
//! the same loop writing the frames from the 1024 guest-memory buffers the device's ring uses,
//! with the device's own call: the limit for frames that are not in the CPU's cache.
//! `bench-io net-rx FROM TO SECONDS`, `tap-rx` and `tap-rx-guest`: frames written to TAP
//! `FROM` cross a bridge and queue up at TAP `TO`, where the device's receive queue, a plain
//! read loop into one buffer, or a read loop into 1024 guest-memory buffers with the device's
//! own call, drains them; prints the frames per second received.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::os::fd::AsRawFd;
use std::path::Path;
use triad_api::vmm::CacheMode;
use triad_vmm::devices::virtio::blk::backend::{open_image, BlkBackend};
use triad_vmm::devices::virtio::blk::rbd::{RbdBackend, RbdTarget};
use triad_vmm::devices::virtio::blk::uring::UringBackend;
use triad_vmm::devices::virtio::blk::{Block, QUEUE_SIZE};
use triad_vmm::devices::virtio::mmio::MmioTransport;
use triad_vmm::devices::virtio::net::tap::{GuestBufs, Tap};
use triad_vmm::devices::virtio::net::Net;
use triad_vmm::devices::virtio::ratelimit::RateLimiter;
use triad_vmm::devices::virtio::testing::{driver_ok, negotiate, Ring, VRING_DESC_F_WRITE};
use triad_vmm::devices::virtio::worker::Worker;
use triad_vmm::devices::virtio::{Interrupt, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

const RING_AT: u64 = 0x10_0000;
const HDR_AT: u64 = 0x20_0000;
const STATUS_AT: u64 = 0x30_0000;
const DATA_AT: u64 = 0x40_0000;
const BLOCK: u32 = 4096;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("blk") if (6..=7).contains(&args.len()) => {
            let depth: u16 = args[4].parse().expect("DEPTH");
            let seconds: u64 = args[5].parse().expect("SECONDS");
            let conf = args.get(6).map_or("/etc/ceph/ceph.conf", String::as_str);
            let iops = blk(
                &args[2],
                args[3] == "write",
                depth,
                Duration::from_secs(seconds),
                conf,
            );
            println!("iops {iops:.0}");
        }
        Some(kind @ ("net" | "tap" | "tap-guest")) if args.len() == 4 => {
            let seconds: u64 = args[3].parse().expect("SECONDS");
            let duration = Duration::from_secs(seconds);
            let pps = match kind {
                "net" => net(&args[2], duration),
                "tap" => raw_tap(&args[2], duration),
                _ => guest_tap(&args[2], duration),
            };
            let gbps = pps * f64::from(FRAME) * 8.0 / 1e9;
            println!("pps {pps:.0} gbps {gbps:.2}");
        }
        Some(kind @ ("net-rx" | "tap-rx" | "tap-rx-guest")) if args.len() == 5 => {
            let duration = Duration::from_secs(args[4].parse().expect("SECONDS"));
            let reader = match kind {
                "net-rx" => Reader::Device,
                "tap-rx" => Reader::Plain,
                _ => Reader::GuestMemory,
            };
            let pps = receive(&args[2], &args[3], reader, duration);
            let gbps = pps * f64::from(FRAME) * 8.0 / 1e9;
            println!("pps {pps:.0} gbps {gbps:.2}");
        }
        _ => {
            eprintln!(
                "usage: bench-io blk FILE|rbd:POOL/IMAGE read|write DEPTH SECONDS [CEPH_CONF] | \
                 net|tap|tap-guest TAP SECONDS | net-rx|tap-rx|tap-rx-guest FROM TO SECONDS"
            );
            std::process::exit(2);
        }
    }
}

/// A tiny xorshift: the benchmark needs spread-out sectors, not good randomness.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn blk(path: &str, write: bool, depth: u16, duration: Duration, ceph_conf: &str) -> f64 {
    let mem = triad_vmm::memory::create(256 << 20).unwrap();
    let backend: Box<dyn BlkBackend> = match triad_vmm::spec::rbd_image(Path::new(path)) {
        Some(image) => {
            let (pool, image) = image.expect("rbd:POOL/IMAGE");
            let target = RbdTarget {
                pool,
                image,
                conf: ceph_conf.into(),
                client: "admin".into(),
            };
            let rbd = RbdBackend::open(&target, false, CacheMode::None, QUEUE_SIZE);
            Box::new(rbd.expect("opening the RBD image"))
        }
        None => {
            let file =
                open_image(Path::new(path), false, CacheMode::None).expect("opening the image");
            Box::new(UringBackend::new(file, QUEUE_SIZE).expect("io_uring"))
        }
    };
    let blocks = backend.size() / u64::from(BLOCK);
    let device = Block::new("bench", backend, false, RateLimiter::default()).unwrap();
    let irq = EventFd::new(0).unwrap();
    let interrupt = Arc::new(Interrupt::new(Some(irq.try_clone().unwrap())));
    let mut transport = MmioTransport::new(Box::new(device), mem.clone(), interrupt);
    let mut ring = Ring::new(&mem, RING_AT, QUEUE_SIZE);
    negotiate(&mut transport, VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX);
    ring.program(&mut transport, 0);
    driver_ok(&mut transport);
    let transport = Arc::new(Mutex::new(transport));
    let notify = EventFd::new(0).unwrap();
    let _worker = Worker::spawn(
        "bench-blk".into(),
        transport.clone(),
        vec![notify.try_clone().unwrap()],
    )
    .unwrap();

    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let submit = |ring: &mut Ring, slot: u16| {
        let block = next(&mut seed) % blocks;
        let hdr = HDR_AT + 16 * u64::from(slot);
        let kind: u32 = if write { 1 } else { 0 };
        let mut raw = [0u8; 16];
        raw[..4].copy_from_slice(&kind.to_le_bytes());
        raw[8..].copy_from_slice(&(block * u64::from(BLOCK / 512)).to_le_bytes());
        mem.write_slice(&raw, GuestAddress(hdr)).unwrap();
        let data = DATA_AT + u64::from(BLOCK) * u64::from(slot);
        let data_flags = if write { 0 } else { VRING_DESC_F_WRITE };
        ring.push(
            3 * slot,
            &[
                (hdr, 16, 0),
                (data, BLOCK, data_flags),
                (STATUS_AT + u64::from(slot), 1, VRING_DESC_F_WRITE),
            ],
        );
    };
    // Each request takes three descriptors: slot n's chain starts at descriptor 3n.
    rate(cycle(
        &mut ring,
        &irq,
        &notify,
        (duration, IDLE),
        depth,
        3,
        Interrupts::Next,
        submit,
    ))
}

/// Ethernet frame size (a full 1500-byte MTU payload), without the virtio-net header.
const FRAME: u32 = 1514;
const VNET_HDR: u32 = 12;

/// A broadcast frame nobody answers, so the host kernel drops it after reading it.
fn frame() -> Vec<u8> {
    let mut f = vec![0u8; (VNET_HDR + FRAME) as usize];
    let eth = &mut f[VNET_HDR as usize..];
    eth[..6].copy_from_slice(&[0xff; 6]);
    eth[6..12].copy_from_slice(&[0x52, 0x54, 0, 0xbe, 0x4c, 1]);
    eth[12..14].copy_from_slice(&[0x88, 0xb5]); // local experimental EtherType
    f
}

fn raw_tap(name: &str, duration: Duration) -> f64 {
    let tap = Tap::open(name).expect("opening the TAP");
    let f = frame();
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < duration {
        for _ in 0..64 {
            if tap.send(&f).is_ok() {
                sent += 1;
            }
        }
    }
    sent as f64 / start.elapsed().as_secs_f64()
}

/// The device's transmit buffers: `NET_QUEUE` slots of `NET_BUF` bytes from `DATA_AT`, each
/// holding `frame()`.
fn transmit_buffers() -> triad_vmm::memory::GuestMemoryMmap {
    let mem = triad_vmm::memory::create(256 << 20).unwrap();
    let f = frame();
    for slot in 0..NET_QUEUE {
        let at = GuestAddress(DATA_AT + u64::from(NET_BUF) * u64::from(slot));
        mem.write_slice(&f, at).unwrap();
    }
    mem
}

fn guest_tap(name: &str, duration: Duration) -> f64 {
    let tap = Tap::open(name).expect("opening the TAP");
    let mem = transmit_buffers();
    let len = (VNET_HDR + FRAME) as usize;
    let slices: Vec<_> = (0..NET_QUEUE)
        .map(|slot| {
            let at = GuestAddress(DATA_AT + u64::from(NET_BUF) * u64::from(slot));
            mem.get_slice(at, len).unwrap()
        })
        .collect();
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < duration {
        for slice in &slices {
            if tap.send_guest(slice).is_ok() {
                sent += 1;
            }
        }
    }
    sent as f64 / start.elapsed().as_secs_f64()
}

/// A virtio-net device on TAP `name` driven by this process: its rings, the eventfds that
/// notify each queue, and the interrupt eventfd.
struct NetHarness {
    rx: Ring,
    tx: Ring,
    irq: EventFd,
    notify: [EventFd; 2],
    _worker: Worker,
}

const NET_QUEUE: u16 = 1024;
const NET_BUF: u32 = 2048;

fn net_harness(tap: Tap, mac_last: u8, mem: triad_vmm::memory::GuestMemoryMmap) -> NetHarness {
    let name = tap.name().to_owned();
    let mac = [0x52, 0x54, 0, 0xbe, 0x4c, mac_last];
    let device = Net::new(tap, mac, RateLimiter::default()).unwrap();
    let irq = EventFd::new(0).unwrap();
    let interrupt = Arc::new(Interrupt::new(Some(irq.try_clone().unwrap())));
    let mut transport = MmioTransport::new(Box::new(device), mem.clone(), interrupt);
    let rx = Ring::new(&mem, RING_AT, NET_QUEUE);
    let tx = Ring::new(&mem, 0x18_0000, NET_QUEUE);
    negotiate(&mut transport, VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX);
    rx.program(&mut transport, 0);
    tx.program(&mut transport, 1);
    driver_ok(&mut transport);
    let notify = [EventFd::new(0).unwrap(), EventFd::new(0).unwrap()];
    let queues = notify.iter().map(|e| e.try_clone().unwrap()).collect();
    let transport = Arc::new(Mutex::new(transport));
    let _worker = Worker::spawn(format!("bench-{name}"), transport, queues).unwrap();
    NetHarness {
        rx,
        tx,
        irq,
        notify,
        _worker,
    }
}

/// When the driver asks to be interrupted, as Linux's virtio drivers do: block wants to hear of
/// the next completion; transmit only once three quarters of what it queued are sent, so that
/// it refills the ring while the device works through the rest; receive is NAPI: it takes at
/// most a budget of frames per poll, refills buffers once more than half a budget is free, and
/// while a poll finds a full budget it polls again without interrupts, otherwise it asks for
/// the next one.
#[derive(Clone, Copy)]
enum Interrupts {
    Next,
    Delayed,
    Napi,
}

/// Linux's NAPI weight: frames per poll before it polls again.
const NAPI_BUDGET: u64 = 64;

/// How long `cycle` waits for a completion before it decides the device has nothing left:
/// long for disks and transmit, which always have work queued; short for draining a receive
/// backlog, so that a frame the host sends long after it (IPv6 neighbour discovery on a TAP
/// that just came up) does not count as part of the drain.
const IDLE: Duration = Duration::from_secs(10);
const DRAINED: Duration = Duration::from_millis(10);

/// Runs `ring` with `slots` chains in flight, `descs` descriptors each, for `duration` or until
/// nothing completes for `idle`: every completed chain is counted and its slot posted again
/// with `post`. The driver side behaves like Linux's: EVENT_IDX negotiated, a notify only when
/// the device's `avail_event` asks for one, interrupts requested as `interrupts` says. Returns
/// the chains completed and the time from the first notify to the last completion.
#[allow(clippy::too_many_arguments)] // one benchmark loop, three queues
fn cycle(
    ring: &mut Ring,
    irq: &EventFd,
    notify: &EventFd,
    (duration, idle): (Duration, Duration),
    slots: u16,
    descs: u16,
    interrupts: Interrupts,
    mut post: impl FnMut(&mut Ring, u16),
) -> (u64, Duration) {
    let ask = |ring: &Ring| {
        let ahead = match interrupts {
            Interrupts::Next | Interrupts::Napi => 0,
            Interrupts::Delayed => ring.next_avail().wrapping_sub(ring.next_used()) * 3 / 4,
        };
        ring.set_used_event(ring.next_used().wrapping_add(ahead))
    };
    let waiter = Epoll::new().unwrap();
    waiter
        .ctl(
            ControlOperation::Add,
            irq.as_raw_fd(),
            EpollEvent::new(EventSet::IN, 0),
        )
        .unwrap();
    let mut ready = [EpollEvent::default()];
    for slot in 0..slots {
        post(ring, slot);
    }
    ask(ring);
    let start = Instant::now();
    notify.write(1).unwrap();
    let mut done = 0u64;
    let mut last = start;
    let mut refill = Vec::new();
    while start.elapsed() < duration {
        let idle_ms = i32::try_from(idle.as_millis()).unwrap();
        if waiter.wait(idle_ms, &mut ready).unwrap_or(0) == 0 {
            break;
        }
        let _ = irq.read();
        loop {
            let old = ring.next_avail();
            let mut polled = 0;
            let napi = matches!(interrupts, Interrupts::Napi);
            while let Some((head, _)) = (!napi || polled < NAPI_BUDGET)
                .then(|| ring.pop_used())
                .flatten()
            {
                polled += 1;
                if napi {
                    refill.push(head / descs);
                } else {
                    post(ring, head / descs);
                }
            }
            // NAPI refills once more than half a budget of buffers is free (try_fill_recv).
            if refill.len() > usize::try_from(NAPI_BUDGET / 2).unwrap_or(usize::MAX) {
                for slot in refill.drain(..) {
                    post(ring, slot);
                }
            }
            if polled > 0 {
                done += polled;
                last = Instant::now();
            }
            if ring.kick_needed(old) {
                notify.write(1).unwrap();
            }
            let busy = napi && polled >= NAPI_BUDGET;
            if !busy && !ask(ring) {
                break;
            }
        }
    }
    (done, last - start)
}

/// Chains per second.
fn rate((done, time): (u64, Duration)) -> f64 {
    done as f64 / time.as_secs_f64()
}

fn net(name: &str, duration: Duration) -> f64 {
    let tap = Tap::open(name).expect("opening the TAP");
    let mut h = net_harness(tap, 1, transmit_buffers());
    let len = VNET_HDR + FRAME;
    rate(cycle(
        &mut h.tx,
        &h.irq,
        &h.notify[1],
        (duration, IDLE),
        NET_QUEUE,
        1,
        Interrupts::Delayed,
        |tx, slot| {
            tx.push(
                slot,
                &[(DATA_AT + u64::from(NET_BUF) * u64::from(slot), len, 0)],
            );
        },
    ))
}

/// Frames queued for the receiver per round; the TAP's `txqueuelen` must hold them.
const BACKLOG: u64 = 100_000;

/// Who drains the receiving TAP.
#[derive(Clone, Copy)]
enum Reader {
    /// The device's receive queue, its buffers posted by the driver.
    Device,
    /// A read loop into one buffer.
    Plain,
    /// A read loop into the 1024 guest-memory buffers the device's ring uses, with the
    /// device's own call.
    GuestMemory,
}

/// Receive throughput with no sender competing for the CPU: each round queues `BACKLOG`
/// frames at TAP `to` (written to TAP `from`, carried by the bridge), then times how fast
/// `reader` drains them. Rounds repeat until `duration` has been spent draining. Returns
/// frames per second.
fn receive(from: &str, to: &str, reader: Reader, duration: Duration) -> f64 {
    let sender = Tap::open(from).expect("opening the sending TAP");
    let f = frame();
    let mem = triad_vmm::memory::create(256 << 20).unwrap();
    let (mut frames, mut time) = (0, Duration::ZERO);
    while time < duration {
        // Attached, so the bridge queues frames for it.
        let tap = Tap::open(to).expect("opening the receiving TAP");
        pin(SENDER_CPU);
        for _ in 0..BACKLOG {
            let _ = sender.send(&f);
        }
        let (n, t) = match reader {
            Reader::Device => device_drain(tap, mem.clone()),
            Reader::Plain => on_reader_cpu(|| plain_drain(&tap)),
            Reader::GuestMemory => on_reader_cpu(|| guest_drain(&tap, &mem)),
        };
        frames += n;
        time += t;
    }
    frames as f64 / time.as_secs_f64()
}

/// Where the receive benchmark's frames are queued (and its queue driver runs), and where
/// whatever drains them runs: always apart, so that every reader frees frames another CPU
/// allocated, as a VMM's thread does with frames a NIC or bridge delivered elsewhere.
const SENDER_CPU: usize = 0;
const READER_CPU: usize = 1;

/// Holds the calling thread to `cpu`, when the machine has it.
fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET stays within it for cpu < CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set);
    }
}

/// Runs `drain` on a thread of its own held to the reader's CPU.
fn on_reader_cpu<T: Send>(drain: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            pin(READER_CPU);
            drain()
        })
        .join()
        .unwrap()
    })
}

fn plain_drain(tap: &Tap) -> (u64, Duration) {
    let mut buf = vec![0u8; 65536];
    let start = Instant::now();
    let mut got = 0u64;
    while tap.recv(&mut buf).is_ok() {
        got += 1;
    }
    (got, start.elapsed())
}

fn guest_drain(tap: &Tap, mem: &triad_vmm::memory::GuestMemoryMmap) -> (u64, Duration) {
    let slices: Vec<_> = (0..NET_QUEUE)
        .map(|slot| {
            let at = GuestAddress(DATA_AT + u64::from(NET_BUF) * u64::from(slot));
            mem.get_slice(at, NET_BUF as usize).unwrap()
        })
        .collect();
    let start = Instant::now();
    let mut got = 0u64;
    for slice in slices.iter().cycle() {
        let mut bufs = GuestBufs::new();
        bufs.push(slice);
        if tap.recv_guest(&mut bufs).is_err() {
            break;
        }
        got += 1;
    }
    (got, start.elapsed())
}

fn device_drain(tap: Tap, mem: triad_vmm::memory::GuestMemoryMmap) -> (u64, Duration) {
    // The device's I/O thread inherits the reader's CPU; the driver stays with the sender.
    pin(READER_CPU);
    let mut h = net_harness(tap, 2, mem);
    pin(SENDER_CPU);
    cycle(
        &mut h.rx,
        &h.irq,
        &h.notify[0],
        (Duration::MAX, DRAINED),
        NET_QUEUE,
        1,
        Interrupts::Napi,
        |rx, slot| {
            let at = DATA_AT + u64::from(NET_BUF) * u64::from(slot);
            rx.push(slot, &[(at, NET_BUF, VRING_DESC_F_WRITE)]);
        },
    )
}
