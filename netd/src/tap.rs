//! VM ports' TAP devices. rtnetlink cannot create TAPs on every kernel, so netd makes them with
//! the TUN ioctls and marks them persistent: the TAP outlives netd and is there for the VMM,
//! which attaches to it by name with the virtio-net header on.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;

use crate::link::MAX_NAME;

/// Creates persistent TAP `name` (multi-queue off, virtio-net header on, no packet info);
/// `AlreadyExists`-like errors come back as the kernel gives them (EBUSY when a non-TAP has
/// the name).
pub fn create_persistent(name: &str) -> io::Result<()> {
    if name.is_empty() || name.len() > MAX_NAME || name.bytes().any(|b| b == 0 || b == b'/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not an interface name"),
        ));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    // SAFETY: `ifreq` is plain old data; all-zero is a valid (empty) value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    let flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
    req.ifr_ifru.ifru_flags = libc::c_short::try_from(flags).unwrap_or(0);
    // SAFETY: TUNSETIFF reads and writes one `ifreq`, which lives on this stack frame.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: TUNSETPERSIST takes its argument by value.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
