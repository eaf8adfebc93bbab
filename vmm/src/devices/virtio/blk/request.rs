//! virtio-blk requests (virtio 1.2 spec §5.2.6): parsing only, no I/O.
//!
//! A request is a header the device reads, data, and one status byte the device writes last.
//! Every rule the spec puts on a driver becomes an error here, and each error knows the status
//! the guest gets for it.

pub const SECTOR_SHIFT: u32 = 9;
pub const SECTOR_SIZE: u64 = 1 << SECTOR_SHIFT;

pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;
pub const T_DISCARD: u32 = 11;
pub const T_WRITE_ZEROES: u32 = 13;

pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;

/// Bytes of the serial number GET_ID returns.
pub const ID_LEN: usize = 20;

/// `struct virtio_blk_req` up to the data: 16 little-endian bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: u32,
    pub sector: u64,
}

impl Header {
    pub const LEN: usize = 16;

    pub fn from_le_bytes(b: [u8; Self::LEN]) -> Self {
        let [k0, k1, k2, k3, _, _, _, _, s @ ..] = b;
        Self {
            kind: u32::from_le_bytes([k0, k1, k2, k3]),
            sector: u64::from_le_bytes(s),
        }
    }
}

/// One range of a DISCARD or WRITE_ZEROES request: 16 little-endian bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub sector: u64,
    pub num_sectors: u32,
    pub flags: u32,
}

impl Segment {
    pub const LEN: usize = 16;

    pub fn from_le_bytes(b: [u8; Self::LEN]) -> Self {
        let [s0, s1, s2, s3, s4, s5, s6, s7, n0, n1, n2, n3, f0, f1, f2, f3] = b;
        Self {
            sector: u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]),
            num_sectors: u32::from_le_bytes([n0, n1, n2, n3]),
            flags: u32::from_le_bytes([f0, f1, f2, f3]),
        }
    }
}

/// WRITE_ZEROES flag: the device may deallocate the range instead of writing zeroes.
pub const SEGMENT_UNMAP: u32 = 1;

/// A request that is safe to run against a disk of the given size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Read { offset: u64, len: u64 },
    Write { offset: u64, len: u64 },
    Flush,
    GetId,
    Discard { offset: u64, len: u64 },
    WriteZeroes { offset: u64, len: u64, unmap: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("request type {0} is not supported")]
    Unsupported(u32),
    #[error("data length {0} is not a whole number of sectors")]
    PartialSector(u64),
    #[error("sectors {first}..{end} lie past the disk's {capacity} sectors")]
    OutOfRange { first: u64, end: u64, capacity: u64 },
    #[error("the disk is read-only")]
    ReadOnly,
    #[error("a {0} request needs exactly one segment")]
    SegmentCount(&'static str),
    #[error("segment flags {0:#x} are not allowed")]
    SegmentFlags(u32),
}

impl ParseError {
    /// The status byte the guest sees for this error.
    pub fn status(&self) -> u8 {
        match self {
            ParseError::Unsupported(_) => S_UNSUPP,
            _ => S_IOERR,
        }
    }
}

/// What a request's buffers look like, measured before parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Device-readable bytes after the header.
    pub readable: u64,
    /// Device-writable bytes before the status byte.
    pub writable: u64,
}

/// Checks `header` against the disk (`capacity` sectors, `read_only`) and the buffers.
/// `segment` is the first discard/write-zeroes segment, when the readable part holds one.
pub fn parse(
    header: Header,
    shape: Shape,
    segment: Option<Segment>,
    capacity: u64,
    read_only: bool,
) -> Result<Request, ParseError> {
    let range = |sector: u64, len: u64| -> Result<u64, ParseError> {
        if !len.is_multiple_of(SECTOR_SIZE) {
            return Err(ParseError::PartialSector(len));
        }
        let end = sector.saturating_add(len >> SECTOR_SHIFT);
        if end > capacity {
            return Err(ParseError::OutOfRange {
                first: sector,
                end,
                capacity,
            });
        }
        // Cannot overflow: sector < end <= capacity, and capacity came from a file size.
        Ok(sector << SECTOR_SHIFT)
    };
    let one_segment = |name: &'static str| -> Result<Segment, ParseError> {
        let seg = segment.filter(|_| shape.readable == Segment::LEN as u64);
        seg.ok_or(ParseError::SegmentCount(name))
    };
    match header.kind {
        T_IN => Ok(Request::Read {
            offset: range(header.sector, shape.writable)?,
            len: shape.writable,
        }),
        T_OUT if read_only => Err(ParseError::ReadOnly),
        T_OUT => Ok(Request::Write {
            offset: range(header.sector, shape.readable)?,
            len: shape.readable,
        }),
        T_FLUSH => Ok(Request::Flush),
        T_GET_ID => Ok(Request::GetId),
        T_DISCARD | T_WRITE_ZEROES if read_only => Err(ParseError::ReadOnly),
        T_DISCARD => {
            let seg = one_segment("discard")?;
            if seg.flags != 0 {
                return Err(ParseError::SegmentFlags(seg.flags));
            }
            let len = u64::from(seg.num_sectors) << SECTOR_SHIFT;
            Ok(Request::Discard {
                offset: range(seg.sector, len)?,
                len,
            })
        }
        T_WRITE_ZEROES => {
            let seg = one_segment("write-zeroes")?;
            if seg.flags & !SEGMENT_UNMAP != 0 {
                return Err(ParseError::SegmentFlags(seg.flags));
            }
            let len = u64::from(seg.num_sectors) << SECTOR_SHIFT;
            Ok(Request::WriteZeroes {
                offset: range(seg.sector, len)?,
                len,
                unmap: seg.flags & SEGMENT_UNMAP != 0,
            })
        }
        other => Err(ParseError::Unsupported(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: u64 = 2048; // 1 MiB

    fn hdr(kind: u32, sector: u64) -> Header {
        Header { kind, sector }
    }

    fn shape(readable: u64, writable: u64) -> Shape {
        Shape { readable, writable }
    }

    fn seg(sector: u64, num_sectors: u32, flags: u32) -> Option<Segment> {
        Some(Segment {
            sector,
            num_sectors,
            flags,
        })
    }

    #[test]
    fn reads_and_writes_within_the_disk() {
        assert_eq!(
            parse(hdr(T_IN, 8), shape(0, 4096), None, CAP, false),
            Ok(Request::Read {
                offset: 4096,
                len: 4096
            })
        );
        assert_eq!(
            parse(hdr(T_OUT, CAP - 1), shape(512, 0), None, CAP, false),
            Ok(Request::Write {
                offset: (CAP - 1) * 512,
                len: 512
            })
        );
        // A zero-length read at the very end is legal.
        assert!(parse(hdr(T_IN, CAP), shape(0, 0), None, CAP, false).is_ok());
    }

    #[test]
    fn out_of_range_and_partial_sectors_are_io_errors() {
        let e = parse(hdr(T_IN, CAP - 1), shape(0, 1024), None, CAP, false).unwrap_err();
        assert_eq!(
            e,
            ParseError::OutOfRange {
                first: CAP - 1,
                end: CAP + 1,
                capacity: CAP
            }
        );
        assert_eq!(e.status(), S_IOERR);
        let e = parse(hdr(T_OUT, 0), shape(100, 0), None, CAP, false).unwrap_err();
        assert_eq!(e, ParseError::PartialSector(100));
        // A sector number so large that adding the length overflows.
        let e = parse(hdr(T_IN, u64::MAX), shape(0, 512), None, CAP, false).unwrap_err();
        assert!(matches!(e, ParseError::OutOfRange { .. }));
    }

    #[test]
    fn read_only_disks_refuse_every_kind_of_write() {
        for kind in [T_OUT, T_DISCARD, T_WRITE_ZEROES] {
            let e = parse(hdr(kind, 0), shape(512, 0), seg(0, 1, 0), CAP, true).unwrap_err();
            assert_eq!((e, e.status()), (ParseError::ReadOnly, S_IOERR));
        }
        assert!(parse(hdr(T_IN, 0), shape(0, 512), None, CAP, true).is_ok());
        assert!(parse(hdr(T_FLUSH, 0), shape(0, 0), None, CAP, true).is_ok());
    }

    #[test]
    fn discard_and_write_zeroes_take_one_checked_segment() {
        assert_eq!(
            parse(hdr(T_DISCARD, 0), shape(16, 0), seg(8, 8, 0), CAP, false),
            Ok(Request::Discard {
                offset: 4096,
                len: 4096
            })
        );
        assert_eq!(
            parse(
                hdr(T_WRITE_ZEROES, 0),
                shape(16, 0),
                seg(0, 1, SEGMENT_UNMAP),
                CAP,
                false
            ),
            Ok(Request::WriteZeroes {
                offset: 0,
                len: 512,
                unmap: true
            })
        );
        assert_eq!(
            parse(hdr(T_DISCARD, 0), shape(32, 0), seg(0, 1, 0), CAP, false),
            Err(ParseError::SegmentCount("discard"))
        );
        assert_eq!(
            parse(
                hdr(T_DISCARD, 0),
                shape(16, 0),
                seg(0, 1, SEGMENT_UNMAP),
                CAP,
                false
            ),
            Err(ParseError::SegmentFlags(1))
        );
        assert!(matches!(
            parse(
                hdr(T_WRITE_ZEROES, 0),
                shape(16, 0),
                seg(CAP, 1, 0),
                CAP,
                false
            ),
            Err(ParseError::OutOfRange { .. })
        ));
    }

    #[test]
    fn wire_layout_is_little_endian() {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&T_OUT.to_le_bytes());
        b[4] = 0xff; // reserved
        b[8..16].copy_from_slice(&0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(
            Header::from_le_bytes(b),
            Header {
                kind: T_OUT,
                sector: 0x0102_0304_0506_0708
            }
        );
        let mut b = [0u8; 16];
        b[0] = 9;
        b[8] = 3;
        b[12] = 1;
        assert_eq!(
            Segment::from_le_bytes(b),
            Segment {
                sector: 9,
                num_sectors: 3,
                flags: 1
            }
        );
    }

    #[test]
    fn unknown_types_are_unsupported() {
        let e = parse(hdr(99, 0), shape(0, 0), None, CAP, false).unwrap_err();
        assert_eq!((e, e.status()), (ParseError::Unsupported(99), S_UNSUPP));
    }
}
