//! Ceph RBD images as disks, through librbd's asynchronous API: the VMM is a Ceph client of its
//! own (no krbd, no nbd), holds the image's exclusive lock while it runs, and reports a fenced
//! client (blocklisted: every operation fails) to the guest as I/O errors.
//!
//! The connection and image handles come from `triad_ceph`. `unsafe` remains here for the
//! asynchronous calls: every buffer librbd reads or writes is owned by an operation kept in `in_flight`
//! until librbd's callback has reported it, and dropping the backend waits for all of them.

use std::ffi::c_void;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use triad_api::vmm::CacheMode;
use triad_ceph::ffi::{self, Completion};
use triad_ceph::{Cluster, Image};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::backend::{BlkBackend, Done, Io, Op};

/// Where an RBD disk lives and who the VMM is to the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RbdTarget {
    pub pool: String,
    pub image: String,
    /// The cluster's ceph.conf (monitors, keyring).
    pub conf: std::path::PathBuf,
    /// The cephx user without its `client.` prefix.
    pub client: String,
}

/// Connects, opens the image and, for a writable disk, takes and keeps its exclusive lock.
fn open_image(target: &RbdTarget, read_only: bool, cache: CacheMode) -> io::Result<Image> {
    // The cache modes users know from KVM platforms, in librbd's terms.
    let options: &[(&str, &str)] = match cache {
        CacheMode::None => &[("rbd_cache", "false")],
        CacheMode::Writethrough => &[("rbd_cache", "true"), ("rbd_cache_max_dirty", "0")],
        CacheMode::Writeback => &[("rbd_cache", "true")],
    };
    let cluster = Cluster::connect(&target.conf, &target.client, options)?;
    let pool = cluster.pool(&target.pool)?;
    // A read-write handle also for read-only disks (the device refuses writes): librbd's
    // read-only handles register no watch, and storaged, seeing no client, would roll the
    // image back or delete it under the VM.
    let image = pool.open(&target.image)?;
    if !read_only {
        image.lock_exclusive()?;
    }
    Ok(image)
}

/// What librbd's threads hand back to the I/O thread.
#[derive(Debug)]
struct Finished {
    /// (tag, librbd's return value) of operations librbd finished.
    done: Mutex<Vec<(u16, isize)>>,
    signal: EventFd,
}

/// One operation's callback argument: who to tell, and which operation it was.
struct CallbackArg {
    finished: Arc<Finished>,
    tag: u16,
}

extern "C" fn on_complete(completion: Completion, arg: *mut c_void) {
    // SAFETY: `arg` is the `Box<CallbackArg>` `submit` leaked for this completion, which librbd
    // calls back exactly once; the completion is released here and never used again.
    let (arg, ret) = unsafe {
        let ret = ffi::rbd_aio_get_return_value(completion);
        ffi::rbd_aio_release(completion);
        (Box::from_raw(arg.cast::<CallbackArg>()), ret)
    };
    let mut done = arg.finished.done.lock().unwrap_or_else(|e| e.into_inner());
    done.push((arg.tag, ret));
    // Only the first completion since the I/O thread last took them wakes it: the rest ride
    // along (one eventfd write and one wake-up per batch, not per operation).
    let first = done.len() == 1;
    drop(done);
    if first {
        let _ = arg.finished.signal.write(1);
    }
}

pub struct RbdBackend {
    in_flight: Vec<Option<Io>>,
    /// Closed by `Drop` once nothing is in flight.
    image: std::mem::ManuallyDrop<Image>,
    size: u64,
    finished: Arc<Finished>,
    /// Operations librbd refused to start.
    failed: Vec<Done>,
}

impl std::fmt::Debug for RbdBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RbdBackend")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl RbdBackend {
    /// Opens `target` for up to `depth` operations in flight.
    pub fn open(
        target: &RbdTarget,
        read_only: bool,
        cache: CacheMode,
        depth: u16,
    ) -> io::Result<Self> {
        let image = open_image(target, read_only, cache)?;
        let size = image.size()?;
        Ok(Self {
            in_flight: (0..depth).map(|_| None).collect(),
            image: std::mem::ManuallyDrop::new(image),
            size,
            finished: Arc::new(Finished {
                done: Mutex::new(Vec::new()),
                signal: EventFd::new(EFD_NONBLOCK)?,
            }),
            failed: Vec::new(),
        })
    }

    fn fail(&mut self, io: Io, error: io::Error) {
        self.failed.push(Done::failed(io, error));
        // Wake the I/O thread so the failure is reported now, not at some later completion.
        let _ = self.finished.signal.write(1);
    }
}

impl BlkBackend for RbdBackend {
    fn size(&self) -> u64 {
        self.size
    }

    fn submit(&mut self, mut io: Io) {
        let slot = usize::from(io.tag);
        if self.in_flight.get(slot).is_none_or(Option::is_some) {
            let e = io::Error::new(io::ErrorKind::InvalidInput, "tag out of range or in use");
            return self.fail(io, e);
        }
        let arg = Box::into_raw(Box::new(CallbackArg {
            finished: self.finished.clone(),
            tag: io.tag,
        }));
        let image = self.image.raw();
        let (offset, buf) = (io.offset, io.buf.as_mut_slice());
        let (ptr, len) = (buf.as_mut_ptr(), buf.len());
        let mut completion: Completion = std::ptr::null_mut();
        // SAFETY: `completion` gets `arg`, which `on_complete` takes back. The buffer belongs
        // to `io`, which moves into `in_flight` below and stays there until `complete` has
        // seen librbd's callback for it (its heap block does not move with `io`); when librbd
        // refuses the operation, no callback comes and `arg` is reclaimed here.
        let rc = unsafe {
            let rc = ffi::rbd_aio_create_completion(arg.cast(), on_complete, &mut completion);
            if rc < 0 {
                rc
            } else {
                let rc = match io.op {
                    Op::Read => ffi::rbd_aio_read(image, offset, len, ptr.cast(), completion),
                    Op::Write => ffi::rbd_aio_write(image, offset, len, ptr.cast(), completion),
                    Op::Flush => ffi::rbd_aio_flush(image, completion),
                    Op::Discard { len } => ffi::rbd_aio_discard(image, offset, len, completion),
                    Op::WriteZeroes { len, .. } => match usize::try_from(len) {
                        Ok(len) => ffi::rbd_aio_write_zeroes(image, offset, len, completion, 0, 0),
                        Err(_) => -libc::EINVAL,
                    },
                };
                if rc < 0 {
                    ffi::rbd_aio_release(completion);
                }
                rc
            }
        };
        if rc < 0 {
            let e = io::Error::from(triad_ceph::Error::new("starting an RBD operation", -rc));
            // SAFETY: librbd refused the operation, so no callback owns `arg`.
            drop(unsafe { Box::from_raw(arg) });
            return self.fail(io, e);
        }
        self.in_flight[slot] = Some(io);
    }

    fn complete(&mut self, out: &mut Vec<Done>) {
        out.append(&mut self.failed);
        let done =
            std::mem::take(&mut *self.finished.done.lock().unwrap_or_else(|e| e.into_inner()));
        for (tag, ret) in done {
            let Some(mut io) = self
                .in_flight
                .get_mut(usize::from(tag))
                .and_then(Option::take)
            else {
                continue;
            };
            // Reads report the bytes read; everything else 0 when done (librbd does no short
            // writes).
            let expected = match io.op {
                Op::Read => io.buf.as_mut_slice().len(),
                Op::Write | Op::Flush | Op::Discard { .. } | Op::WriteZeroes { .. } => 0,
            };
            let result = match usize::try_from(ret) {
                Ok(n) if n == expected || io.op != Op::Read => Ok(()),
                Ok(n) => Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{n} of {expected} bytes transferred"),
                )),
                // A blocklisted (fenced) client gets ESHUTDOWN for everything: the guest sees
                // I/O errors, as it would from a disk that went away.
                Err(_) => Err(io::Error::from_raw_os_error(
                    i32::try_from(-ret).unwrap_or(libc::EIO),
                )),
            };
            out.push(Done {
                tag,
                result,
                buf: io.buf,
            });
        }
    }

    fn completion_fd(&self) -> Option<RawFd> {
        Some(self.finished.signal.as_raw_fd())
    }
}

/// How long dropping a disk waits for librbd to finish what is in flight (a cluster that does
/// not answer makes operations wait forever).
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl Drop for RbdBackend {
    fn drop(&mut self) {
        // librbd may still write into buffers we own: wait until it has reported all of them.
        let start = std::time::Instant::now();
        let mut sink = Vec::new();
        while self.in_flight.iter().any(Option::is_some) {
            if start.elapsed() > DRAIN_TIMEOUT {
                // Leak the buffers and the image rather than free what librbd still uses.
                tracing::warn!("RBD operations still in flight after {DRAIN_TIMEOUT:?}");
                std::mem::forget(std::mem::take(&mut self.in_flight));
                return;
            }
            self.complete(&mut sink);
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        // SAFETY: dropped once, here, and never used again.
        unsafe { std::mem::ManuallyDrop::drop(&mut self.image) };
    }
}
