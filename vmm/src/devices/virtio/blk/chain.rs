//! A request's buffers as two flat lists of guest ranges (device-readable, then
//! device-writable), gathered in one pass over the descriptor chain. The lists are reused
//! from request to request, so the hot path does not allocate once warm.

use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress};

use crate::memory::GuestMemoryMmap;

#[derive(Debug, Default)]
pub struct Segments {
    readable: Vec<(GuestAddress, usize)>,
    writable: Vec<(GuestAddress, usize)>,
}

/// A chain the device cannot use at all (it is completed with nothing written).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

impl Segments {
    /// Replaces the lists with `chain`'s buffers. A readable descriptor after a writable one
    /// breaks virtio's ordering rule (spec §2.7.4.2), and more than `max` descriptors
    /// (indirect tables included) is more than the device offered: both make it malformed.
    pub fn load<M>(&mut self, chain: DescriptorChain<M>, max: usize) -> Result<(), Malformed>
    where
        M: std::ops::Deref,
        M::Target: vm_memory::GuestMemory,
    {
        self.readable.clear();
        self.writable.clear();
        for d in chain {
            if self.readable.len() + self.writable.len() == max {
                return Err(Malformed);
            }
            let range = (d.addr(), d.len() as usize);
            if d.is_write_only() {
                self.writable.push(range);
            } else if self.writable.is_empty() {
                self.readable.push(range);
            } else {
                return Err(Malformed);
            }
        }
        Ok(())
    }

    pub fn readable_len(&self) -> usize {
        self.readable.iter().map(|r| r.1).sum()
    }

    pub fn writable_len(&self) -> usize {
        self.writable.iter().map(|r| r.1).sum()
    }

    /// The last writable byte, where a virtio-blk status goes.
    pub fn last_writable_byte(&self) -> Option<GuestAddress> {
        let &(addr, len) = self.writable.iter().rev().find(|r| r.1 > 0)?;
        addr.checked_add(len as u64 - 1)
    }

    /// Copies readable bytes from offset `skip` into `dst`.
    pub fn read(
        &self,
        mem: &GuestMemoryMmap,
        skip: usize,
        dst: &mut [u8],
    ) -> Result<(), Malformed> {
        copy(&self.readable, skip, dst.len(), |range_addr, at, n| {
            mem.read_slice(&mut dst[at..at + n], range_addr)
                .map_err(|_| Malformed)
        })
    }

    /// Copies `src` into the writable bytes from offset `skip`.
    pub fn write(&self, mem: &GuestMemoryMmap, skip: usize, src: &[u8]) -> Result<(), Malformed> {
        copy(&self.writable, skip, src.len(), |range_addr, at, n| {
            mem.write_slice(&src[at..at + n], range_addr)
                .map_err(|_| Malformed)
        })
    }
}

/// Walks `ranges` from byte `skip` for `len` bytes, calling `each(address, offset, count)`.
fn copy(
    ranges: &[(GuestAddress, usize)],
    mut skip: usize,
    len: usize,
    mut each: impl FnMut(GuestAddress, usize, usize) -> Result<(), Malformed>,
) -> Result<(), Malformed> {
    let mut done = 0;
    for &(addr, range_len) in ranges {
        if done == len {
            break;
        }
        if skip >= range_len {
            skip -= range_len;
            continue;
        }
        let n = (range_len - skip).min(len - done);
        let start = addr.checked_add(skip as u64).ok_or(Malformed)?;
        each(start, done, n)?;
        done += n;
        skip = 0;
    }
    if done == len {
        Ok(())
    } else {
        Err(Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_span_ranges_and_respect_offsets() {
        let ranges = [
            (GuestAddress(100), 4),
            (GuestAddress(200), 8),
            (GuestAddress(300), 2),
        ];
        let mut calls = Vec::new();
        copy(&ranges, 2, 10, |a, at, n| {
            calls.push((a.0, at, n));
            Ok(())
        })
        .unwrap();
        assert_eq!(calls, vec![(102, 0, 2), (200, 2, 8)]);
        // More than the ranges hold.
        assert_eq!(copy(&ranges, 0, 15, |_, _, _| Ok(())), Err(Malformed));
        assert_eq!(copy(&ranges, 14, 0, |_, _, _| Ok(())), Ok(()));
    }

    #[test]
    fn reads_and_writes_guest_memory_across_descriptors() {
        let mem = crate::memory::create(1 << 20).unwrap();
        let segs = Segments {
            readable: vec![(GuestAddress(0x1000), 3), (GuestAddress(0x2000), 5)],
            writable: vec![(GuestAddress(0x3000), 4), (GuestAddress(0x4000), 1)],
        };
        mem.write_slice(b"abc", GuestAddress(0x1000)).unwrap();
        mem.write_slice(b"defgh", GuestAddress(0x2000)).unwrap();
        let mut out = [0u8; 6];
        segs.read(&mem, 1, &mut out).unwrap();
        assert_eq!(&out, b"bcdefg");
        segs.write(&mem, 2, b"XYZ").unwrap();
        let mut w = [0u8; 4];
        mem.read_slice(&mut w, GuestAddress(0x3000)).unwrap();
        assert_eq!(&w, b"\0\0XY");
        assert_eq!(segs.last_writable_byte(), Some(GuestAddress(0x4000)));
        assert_eq!((segs.readable_len(), segs.writable_len()), (8, 5));
        // Ranges outside guest memory fail instead of touching anything.
        let outside = Segments {
            readable: vec![(GuestAddress(2 << 20), 4)],
            writable: vec![],
        };
        assert_eq!(outside.read(&mem, 0, &mut [0u8; 4]), Err(Malformed));
    }
}
