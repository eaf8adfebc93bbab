//! TAP devices: the host end of a virtio-net NIC. Opened with the virtio-net header on, so
//! checksum and segmentation offloads pass between guest and host kernel untouched.
//!
//! This module is one of the few places with `unsafe`: the TUN ioctls take raw `ifreq`s.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// `struct virtio_net_hdr_v1` (virtio 1.x always includes `num_buffers`).
pub const VNET_HDR_LEN: usize = 12;

/// The longest TAP interface name (IFNAMSIZ less the NUL).
pub const MAX_NAME_LEN: usize = 15;

#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

/// An `ifreq` with a name and the flags member of its union.
fn ifreq(name: &str, flags: libc::c_short) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() > MAX_NAME_LEN || name.bytes().any(|b| b == 0 || b == b'/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "bad interface name",
        ));
    }
    // SAFETY: `ifreq` is plain old data; all-zero is a valid (empty) value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = flags;
    Ok(req)
}

impl Tap {
    /// Attaches to TAP `name`, creating it when it does not exist (then it lives as long as
    /// this process holds it). Non-blocking.
    pub fn open(name: &str) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/net/tun")?;
        let flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
        let mut req = ifreq(name, libc::c_short::try_from(flags).unwrap_or(0))?;
        // SAFETY: TUNSETIFF reads and writes one `ifreq`, which lives on this stack frame.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let hdr_len = libc::c_int::try_from(VNET_HDR_LEN).unwrap_or(0);
        // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer, which lives on this frame.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            file,
            name: name.to_owned(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Which offloads the host may hand us in received frames (`TUN_F_*`), matching what the
    /// guest driver accepted.
    pub fn set_offloads(&self, flags: libc::c_uint) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Brings the interface up, as a TAP the VMM created itself would otherwise stay down.
    pub fn set_up(&self) -> io::Result<()> {
        // SAFETY: a plain socket(2) call; the result is checked before use.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut req = ifreq(&self.name, 0)?;
        // SAFETY: SIOCGIFFLAGS fills the flags of the `ifreq` on this frame.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: SIOCGIFFLAGS just initialised the flags member of the union.
        let flags = unsafe { req.ifr_ifru.ifru_flags };
        req.ifr_ifru.ifru_flags = flags | libc::c_short::try_from(libc::IFF_UP).unwrap_or(1);
        // SAFETY: SIOCSIFFLAGS reads the `ifreq` on this frame.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// One frame (virtio-net header first) into `buf`; `WouldBlock` when none is waiting.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// One frame, virtio-net header first, scattered straight into the guest buffers in
    /// `bufs`. Returns its length, which exceeds `bufs.capacity()` when the frame did not fit
    /// (its bytes past the buffers are lost); `WouldBlock` when no frame is waiting.
    pub fn recv_guest(&self, bufs: &mut GuestBufs<'_>) -> io::Result<usize> {
        // One byte past the guest's buffers tells a frame that filled them from one cut short.
        let mut overflow = 0u8;
        let n = bufs.len;
        bufs.iov[n] = libc::iovec {
            iov_base: std::ptr::addr_of_mut!(overflow).cast(),
            iov_len: 1,
        };
        let count = libc::c_long::try_from(n + 1).unwrap_or(0);
        // SAFETY: the first `n` iovecs each cover one `VolatileSlice` of guest memory, which
        // stays mapped for the lifetime `GuestBufs` borrows it for, and is only ever accessed
        // volatilely, so the kernel writing into it breaks no Rust aliasing rule; the last
        // covers `overflow` on this frame. readv writes within those lengths only. Called
        // through syscall(2): glibc's readv is a cancellation point, whose bookkeeping costs
        // ~5% per frame here, and the VMM never cancels threads.
        let got = unsafe {
            libc::syscall(
                libc::SYS_readv,
                libc::c_long::from(self.file.as_raw_fd()),
                bufs.iov.as_ptr(),
                count,
            )
        };
        usize::try_from(got).map_err(|_| io::Error::last_os_error())
    }

    /// One frame, virtio-net header first.
    pub fn send(&self, frame: &[u8]) -> io::Result<usize> {
        (&self.file).write(frame)
    }

    /// One frame straight from guest memory, virtio-net header first.
    pub fn send_guest(&self, frame: &vm_memory::VolatileSlice<'_, ()>) -> io::Result<usize> {
        // SAFETY: the pointer and length describe one `VolatileSlice` of guest memory, mapped
        // for as long as the slice borrows it; write(2) only reads them. Through syscall(2)
        // for the reason `recv_guest` gives.
        let sent = unsafe {
            libc::syscall(
                libc::SYS_write,
                libc::c_long::from(self.file.as_raw_fd()),
                frame.ptr_guard().as_ptr(),
                frame.len(),
            )
        };
        usize::try_from(sent).map_err(|_| io::Error::last_os_error())
    }
}

/// The most guest buffers one received frame is scattered over: Linux posts MAX_SKB_FRAGS + 2
/// per receive buffer without mergeable buffers (19 by default, 47 at most).
pub const MAX_RX_SEGMENTS: usize = 64;

/// The guest buffers one received frame goes into, in order.
#[derive(Debug)]
pub struct GuestBufs<'m> {
    /// One spare entry for the overflow byte `recv_guest` adds.
    iov: [libc::iovec; MAX_RX_SEGMENTS + 1],
    len: usize,
    capacity: usize,
    _mem: std::marker::PhantomData<&'m ()>,
}

impl<'m> GuestBufs<'m> {
    pub fn new() -> Self {
        Self {
            iov: [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; MAX_RX_SEGMENTS + 1],
            len: 0,
            capacity: 0,
            _mem: std::marker::PhantomData,
        }
    }

    /// Adds a buffer; false when `MAX_RX_SEGMENTS` are there already.
    pub fn push(&mut self, buf: &vm_memory::VolatileSlice<'m, ()>) -> bool {
        if self.len == MAX_RX_SEGMENTS {
            return false;
        }
        self.iov[self.len] = libc::iovec {
            iov_base: buf.ptr_guard_mut().as_ptr().cast(),
            iov_len: buf.len(),
        };
        self.len += 1;
        self.capacity += buf.len();
        true
    }

    /// Bytes the buffers hold together.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets the buffers, to gather the next frame's.
    pub fn clear(&mut self) {
        self.len = 0;
        self.capacity = 0;
    }
}

impl Default for GuestBufs<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_checked_before_any_ioctl() {
        for bad in ["", "a-very-long-tap-name", "a/b", "x\0y"] {
            assert_eq!(
                ifreq(bad, 0).unwrap_err().kind(),
                io::ErrorKind::InvalidInput,
                "{bad:?}"
            );
        }
        let req = ifreq("tap0", 7).unwrap();
        assert_eq!(
            req.ifr_name[..5],
            [b't' as i8, b'a' as i8, b'p' as i8, b'0' as i8, 0]
        );
    }
}
