//! virtio-net (virtio 1.2 spec §5.1) on a TAP device: queue 0 receives, queue 1 transmits.
//!
//! Frames cross with their virtio-net header untouched, so checksum and TSO offloads the guest
//! accepted are carried out by the host kernel. The TAP is watched edge-triggered by the
//! device's I/O thread; a frame that arrives while the guest has no buffer waits in the TAP for
//! one. Frames go both ways without a copy in the VMM: read from the TAP straight into the
//! guest's receive buffers, written to it straight from one-descriptor transmit buffers.

pub mod tap;

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use vm_memory::{Address, Bytes, GuestMemoryBackend};

use virtio_queue::{Queue, QueueOwnedT};

use super::ratelimit::{RateLimiter, Throttle};
use super::{
    pop_or_rearm, read_config_bytes, ActivateError, Counters, Interrupt, UsedBatch, VirtioDevice,
    TYPE_NET,
};
use crate::memory::GuestMemoryMmap;
use tap::{GuestBufs, Tap, VNET_HDR_LEN};

const RX: usize = 0;
const TX: usize = 1;
/// The most the driver may use, as QEMU allows: Linux takes the largest ring offered, and with
/// 1024 entries instead of 256 its transmit interrupt comes after 768 frames, not 192, so the
/// device runs dry and sleeps less often (measured here: +10% frames per second).
const QUEUE_SIZES: &[u16] = &[1024, 1024];
/// The largest frame a guest may send, with its header: a 64 KiB TSO segment plus Ethernet
/// (with a VLAN tag) and virtio headers.
const MAX_FRAME: usize = VNET_HDR_LEN + 18 + 65535;

// Feature bits (spec §5.1.3).
const F_CSUM: u64 = 1 << 0;
const F_GUEST_CSUM: u64 = 1 << 1;
const F_MAC: u64 = 1 << 5;
const F_GUEST_TSO4: u64 = 1 << 7;
const F_GUEST_TSO6: u64 = 1 << 8;
const F_HOST_TSO4: u64 = 1 << 11;
const F_HOST_TSO6: u64 = 1 << 12;
const F_STATUS: u64 = 1 << 16;

const LINK_UP: u16 = 1;

/// Frame and byte counters, for metrics (bytes exclude the virtio-net header).
const COUNTERS: &[&str] = &[
    "rx_packets",
    "rx_bytes",
    "rx_dropped",
    "tx_packets",
    "tx_bytes",
    "tx_dropped",
    "throttled",
];
const RX_PACKETS: usize = 0;
const RX_BYTES: usize = 1;
const RX_DROPPED: usize = 2;
const TX_PACKETS: usize = 3;
const TX_BYTES: usize = 4;
const TX_DROPPED: usize = 5;
const THROTTLED: usize = 6;

#[derive(Debug)]
struct Active {
    mem: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    interrupt: Arc<Interrupt>,
}

#[derive(Debug)]
pub struct Net {
    mac: [u8; 6],
    tap: Tap,
    active: Option<Active>,
    /// A received frame QoS holds back in its guest buffer: (chain head, length).
    rx_held: Option<(u16, usize)>,
    tx_frame: Vec<u8>,
    stats: Arc<Counters>,
    rx_throttle: Throttle,
    tx_throttle: Throttle,
}

/// Host events: the TAP, then the two QoS timers.
const EVENT_TAP: usize = 0;
const EVENT_RX_TIMER: usize = 1;
const EVENT_TX_TIMER: usize = 2;

impl Net {
    /// A NIC on `tap`; `limiter` caps bytes per second in each direction.
    pub fn new(tap: Tap, mac: [u8; 6], limiter: RateLimiter) -> std::io::Result<Self> {
        Ok(Self {
            mac,
            tap,
            active: None,
            rx_held: None,
            tx_frame: vec![0; MAX_FRAME],
            stats: Counters::new(COUNTERS),
            rx_throttle: Throttle::new(limiter)?,
            tx_throttle: Throttle::new(limiter)?,
        })
    }

    /// Moves frames from the TAP into the guest's receive buffers while both last.
    fn receive(&mut self) {
        let Some(active) = &mut self.active else {
            return;
        };
        let mut used = UsedBatch::new();
        // Counted here and added once per pass: the counters are shared with the API thread.
        let (mut frames, mut bytes) = (0, 0);
        let mut bufs = GuestBufs::new();
        loop {
            let (head, landed) = match self.rx_held.take() {
                Some((head, len)) => (head, Landed::Frame(len)),
                None => {
                    let Some(chain) = pop_or_rearm(&mut active.rx, &active.mem) else {
                        break; // frames wait in the TAP for the guest to post buffers
                    };
                    let head = chain.head_index();
                    match receive_into(&self.tap, &active.mem, chain, &mut bufs) {
                        Ok(landed) => (head, landed),
                        Err(e) => {
                            // The buffer stays the guest's for the next frame.
                            active.rx.go_to_previous_position();
                            if e.kind() != std::io::ErrorKind::WouldBlock {
                                // The TAP is gone or broken: nothing more will arrive on it.
                                tracing::warn!("virtio-net: reading {}: {e}", self.tap.name());
                            }
                            break;
                        }
                    }
                }
            };
            let len = match landed {
                Landed::Frame(len) => {
                    let payload = (len - VNET_HDR_LEN) as u64;
                    if !self.rx_throttle.admit(payload) {
                        // The frame waits in its buffer for the throttle's timer.
                        self.stats.add(THROTTLED, 1);
                        self.rx_held = Some((head, len));
                        break;
                    }
                    frames += 1;
                    bytes += payload;
                    u32::try_from(len).unwrap_or(0)
                }
                Landed::Dropped => {
                    self.stats.add(RX_DROPPED, 1);
                    0
                }
            };
            if !used.push(&mut active.rx, &active.mem, &active.interrupt, head, len) {
                break;
            }
        }
        used.publish(&mut active.rx, &active.mem, &active.interrupt);
        self.stats.add(RX_PACKETS, frames);
        self.stats.add(RX_BYTES, bytes);
    }

    /// Sends every frame the guest queued.
    fn transmit(&mut self) {
        // Taken out while frames go, so `send_chain` can borrow the rest of `self`.
        let Some(mut active) = self.active.take() else {
            return;
        };
        let mut used = UsedBatch::new();
        let (mut frames, mut bytes) = (0, 0);
        while let Some(chain) = pop_or_rearm(&mut active.tx, &active.mem) {
            let head = chain.head_index();
            let sent = self.send_chain(&active.mem, chain);
            let Some(sent) = sent else {
                // Over the limit: back on the ring until the throttle's timer fires.
                active.tx.go_to_previous_position();
                break;
            };
            match sent {
                Ok(n) => {
                    frames += 1;
                    bytes += (n - VNET_HDR_LEN) as u64;
                }
                Err(e) => {
                    tracing::debug!("virtio-net: frame not sent on {}: {e}", self.tap.name());
                    self.stats.add(TX_DROPPED, 1);
                }
            }
            if !used.push(&mut active.tx, &active.mem, &active.interrupt, head, 0) {
                break;
            }
        }
        used.publish(&mut active.tx, &active.mem, &active.interrupt);
        self.stats.add(TX_PACKETS, frames);
        self.stats.add(TX_BYTES, bytes);
        self.active = Some(active);
    }
}

impl Net {
    /// Writes one transmit chain to the TAP: straight from guest memory when the frame is one
    /// descriptor (the usual case), gathered into a buffer otherwise. `None` when QoS holds it
    /// back; `Err` when it is dropped (a device-writable descriptor, a frame over MAX_FRAME,
    /// memory outside the guest, or the TAP refusing it).
    fn send_chain(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
    ) -> Option<std::io::Result<usize>> {
        let bad =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
        let mut descs = chain.clone();
        let first = descs.next();
        let single = descs.next().is_none();
        if let (Some(d), true) = (first, single) {
            let len = d.len() as usize;
            if d.is_write_only() || !(VNET_HDR_LEN..=MAX_FRAME).contains(&len) {
                return self
                    .tx_throttle
                    .admit(0)
                    .then(|| Err(bad("malformed frame")));
            }
            if !self.tx_throttle.admit((len - VNET_HDR_LEN) as u64) {
                return None;
            }
            let sent = mem
                .get_slice(d.addr(), len)
                .map_err(|_| bad("frame outside guest memory"))
                .and_then(|slice| self.tap.send_guest(&slice));
            return Some(sent.map(|_| len));
        }
        // Gather in one pass; any bad descriptor makes the frame a drop.
        let mut n = 0usize;
        let mut valid = true;
        for d in chain {
            let len = d.len() as usize;
            let dst = self.tx_frame.get_mut(n..n + len);
            valid &=
                !d.is_write_only() && dst.is_some_and(|dst| mem.read_slice(dst, d.addr()).is_ok());
            if !valid {
                break;
            }
            n += len;
        }
        if !valid || n <= VNET_HDR_LEN {
            return self
                .tx_throttle
                .admit(0)
                .then(|| Err(bad("malformed frame")));
        }
        if !self.tx_throttle.admit((n - VNET_HDR_LEN) as u64) {
            return None;
        }
        Some(self.tap.send(&self.tx_frame[..n]).map(|_| n))
    }
}

/// What one receive buffer got.
enum Landed {
    /// A frame of this length, header included.
    Frame(usize),
    /// A frame was lost: too long for the buffer (the rest of it is lost), or taken for a
    /// buffer the device cannot write (read-only, outside guest memory, too short for a
    /// header, in too many pieces), which goes back to the guest empty.
    Dropped,
}

/// Reads one frame from `tap` straight into the guest buffer `chain`, gathered in `bufs`;
/// `WouldBlock` when no frame is waiting.
fn receive_into<'m>(
    tap: &Tap,
    mem: &'m GuestMemoryMmap,
    chain: virtio_queue::DescriptorChain<&'m GuestMemoryMmap>,
    bufs: &mut GuestBufs<'m>,
) -> std::io::Result<Landed> {
    bufs.clear();
    // Where the header's `num_buffers` (bytes 10 and 11) lands.
    let mut num_buffers = [None; 2];
    let mut usable = true;
    for d in chain {
        let start = bufs.capacity();
        let slice = match mem.get_slice(d.addr(), d.len() as usize) {
            Ok(slice) if d.is_write_only() && bufs.push(&slice) => slice,
            _ => {
                usable = false;
                break;
            }
        };
        for (at, byte) in num_buffers.iter_mut().zip(10..) {
            if (start..start + slice.len()).contains(&byte) {
                *at = Some(d.addr().unchecked_add((byte - start) as u64));
            }
        }
    }
    let header = match num_buffers {
        [Some(lo), Some(hi)] if usable => Some((lo, hi)),
        _ => None,
    };
    let Some((lo, hi)) = header else {
        // The buffer is only given back with a frame, lost in its place (read cut short: the
        // TAP refuses a read too short for the header): a driver that posts it again at once
        // then spins no faster than frames arrive.
        tap.recv(&mut [0; 64])?;
        return Ok(Landed::Dropped);
    };
    let len = tap.recv_guest(bufs)?;
    if !(VNET_HDR_LEN..=bufs.capacity()).contains(&len) {
        return Ok(Landed::Dropped);
    }
    // Without VIRTIO_NET_F_MRG_RXBUF every frame is one buffer (spec §5.1.6.4); depending on
    // the kernel, the TAP zeroes the field or leaves what the guest had there.
    let written = if hi == lo.unchecked_add(1) {
        mem.write_obj(1u16.to_le(), lo)
    } else {
        mem.write_obj(1u8, lo).and_then(|()| mem.write_obj(0u8, hi))
    };
    Ok(if written.is_ok() {
        Landed::Frame(len)
    } else {
        Landed::Dropped
    })
}

/// The TUN offloads matching the features the guest accepted.
fn tap_offloads(acked: u64) -> libc::c_uint {
    let mut flags = 0;
    if acked & F_GUEST_CSUM != 0 {
        flags |= libc::TUN_F_CSUM;
        if acked & F_GUEST_TSO4 != 0 {
            flags |= libc::TUN_F_TSO4;
        }
        if acked & F_GUEST_TSO6 != 0 {
            flags |= libc::TUN_F_TSO6;
        }
    }
    flags
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn features(&self) -> u64 {
        F_CSUM
            | F_GUEST_CSUM
            | F_MAC
            | F_GUEST_TSO4
            | F_GUEST_TSO6
            | F_HOST_TSO4
            | F_HOST_TSO6
            | F_STATUS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; 8];
        config[..6].copy_from_slice(&self.mac);
        config[6..8].copy_from_slice(&LINK_UP.to_le_bytes());
        read_config_bytes(&config, offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        acked_features: u64,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        let got = queues.len();
        let Ok([rx, tx]) = <[Queue; 2]>::try_from(queues) else {
            return Err(ActivateError::QueueCount { expected: 2, got });
        };
        self.tap
            .set_offloads(tap_offloads(acked_features))
            .map_err(|e| {
                ActivateError::Device(format!("setting offloads on {}: {e}", self.tap.name()))
            })?;
        self.active = Some(Active {
            mem,
            rx,
            tx,
            interrupt,
        });
        // Frames that arrived before the driver was ready.
        self.receive();
        Ok(())
    }

    fn queue_notify(&mut self, index: u16) {
        match usize::from(index) {
            RX => self.receive(),
            TX => self.transmit(),
            _ => {}
        }
    }

    fn host_events(&self) -> Vec<RawFd> {
        vec![
            self.tap.as_raw_fd(),
            self.rx_throttle.fd(),
            self.tx_throttle.fd(),
        ]
    }

    fn host_event(&mut self, index: usize) {
        match index {
            EVENT_TAP => self.receive(),
            EVENT_RX_TIMER => self.receive(),
            EVENT_TX_TIMER => self.transmit(),
            _ => {
                self.receive();
                self.transmit();
            }
        }
    }

    fn counters(&self) -> Arc<Counters> {
        self.stats.clone()
    }

    fn set_rate_limiter(&mut self, limiter: RateLimiter) -> bool {
        self.rx_throttle.set(limiter);
        self.tx_throttle.set(limiter);
        true
    }

    fn reset(&mut self) {
        self.active = None;
        self.rx_held = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offloads_follow_the_guest() {
        assert_eq!(tap_offloads(0), 0);
        assert_eq!(
            tap_offloads(F_GUEST_TSO4),
            0,
            "TSO without checksum offload is not allowed"
        );
        assert_eq!(tap_offloads(F_GUEST_CSUM), libc::TUN_F_CSUM);
        assert_eq!(
            tap_offloads(F_GUEST_CSUM | F_GUEST_TSO4 | F_GUEST_TSO6),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6
        );
    }

    /// Puts `frame` on `ifname`'s wire as the host would send it, so that the TAP's reader
    /// (the device) receives it: through a packet socket.
    fn inject(ifname: &str, frame: &[u8]) {
        let name = std::ffi::CString::new(ifname).unwrap();
        // SAFETY: plain FFI calls on a socket this function owns, with a `sockaddr_ll` on its
        // stack and a frame borrowed for the call.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(fd >= 0, "{}", std::io::Error::last_os_error());
            let mut to: libc::sockaddr_ll = std::mem::zeroed();
            to.sll_family = u16::try_from(libc::AF_PACKET).unwrap();
            to.sll_ifindex = i32::try_from(libc::if_nametoindex(name.as_ptr())).unwrap();
            to.sll_halen = 6;
            let sent = libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                std::ptr::addr_of!(to).cast(),
                u32::try_from(std::mem::size_of::<libc::sockaddr_ll>()).unwrap(),
            );
            libc::close(fd);
            assert_eq!(usize::try_from(sent).ok(), Some(frame.len()));
        }
    }

    #[test]
    fn received_frames_land_whole_in_guest_buffers_or_not_at_all() {
        use crate::devices::virtio::mmio::REG_QUEUE_NOTIFY;
        use crate::devices::virtio::testing::*;
        use crate::devices::virtio::VIRTIO_F_VERSION_1;
        use vm_memory::GuestAddress;
        // In a network namespace of its own, so the TAP and its traffic are private.
        std::thread::spawn(|| {
            if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
                eprintln!("SKIP: no private network namespace ({e}); needs CAP_SYS_ADMIN");
                return;
            }
            // No IPv6 neighbour discovery frames among ours.
            std::fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1").unwrap();
            let tap = Tap::open("trx0").unwrap();
            tap.set_up().unwrap();
            let device = Net::new(tap, [0x52, 0x54, 0, 1, 2, 3], RateLimiter::default());
            let device = device.unwrap();
            let stats = device.counters();
            let mem = mem();
            let mut t = transport(&mem, Box::new(device));
            let mut rx = Ring::new(&mem, QUEUE_AT, 16);
            let tx = Ring::new(&mem, QUEUE_AT + 0x4000, 16);
            negotiate(&mut t, VIRTIO_F_VERSION_1);
            rx.program(&mut t, 0);
            tx.program(&mut t, 1);
            driver_ok(&mut t);

            let buf = |n: u64| 0x10_0000 + n * 0x1000;
            let w = VRING_DESC_F_WRITE;
            // 0: the header split across descriptors; 1: too short for a frame; 2: not
            // writable; 3: one plain buffer.
            rx.push(
                0,
                &[(buf(0), 4, w), (buf(0) + 4, 8, w), (buf(0) + 12, 2000, w)],
            );
            rx.push(3, &[(buf(1), 60, w)]);
            rx.push(4, &[(buf(2), 2048, 0)]);
            rx.push(5, &[(buf(3), 2048, w)]);
            let frame = |marker: u8| {
                let mut f = vec![marker; 100];
                f[..6].copy_from_slice(&[0xff; 6]);
                f[12..14].copy_from_slice(&[0x88, 0xb5]);
                f
            };
            for marker in [1, 2, 3] {
                inject("trx0", &frame(marker));
            }
            // Stale bytes where num_buffers goes: the device must write them.
            mem.write_slice(&[0xee; 2], GuestAddress(buf(0) + 10))
                .unwrap();
            wr(&mut t, REG_QUEUE_NOTIFY, 0);

            let used: Vec<_> = std::iter::from_fn(|| rx.pop_used()).collect();
            // Frame 2 did not fit; frame 3 was lost in the read-only buffer's place; the last
            // buffer waits for a frame.
            assert_eq!(used, [(0, 112), (3, 0), (4, 0)]);
            let landed = |at: u64| {
                let mut got = vec![0u8; 112];
                mem.read_slice(&mut got, GuestAddress(at)).unwrap();
                got
            };
            let first = landed(buf(0));
            assert_eq!(&first[10..12], &[1, 0], "num_buffers, across descriptors");
            assert_eq!(first[12..], frame(1)[..]);
            inject("trx0", &frame(4));
            wr(&mut t, REG_QUEUE_NOTIFY, 0);
            assert_eq!(rx.pop_used(), Some((5, 112)));
            assert_eq!(landed(buf(3))[12..], frame(4)[..]);
            let counters = stats.snapshot();
            assert_eq!((counters["rx_packets"], counters["rx_dropped"]), (2, 2));
        })
        .join()
        .unwrap();
    }
}
