/*
 * virtio_blk.c - virtio-blk driver of the test guest (virtio spec 1.2 §5.2)
 * and the `triad.blk=rw|ro` and `triad.counter` steps (README.md).
 *
 * Every blk device (ID 2) is brought up with one request queue (queue 0)
 * and announced as `TRIAD-BLK <base> sectors=<n> ro=<0|1> id=<serial>`.
 * Requests are synchronous, one at a time: a header (device-readable), the
 * data segment(s) and a status byte (device-writable), polled to completion.
 * All request memory is one static, page-aligned block, so data buffers are
 * 4 KiB-aligned (a VMM may do O_DIRECT I/O straight from guest memory).
 */
#include "virtio.h"

/* Feature bits (§5.2.3). */
#define VIRTIO_BLK_F_SIZE_MAX (1UL << 1)
#define VIRTIO_BLK_F_SEG_MAX (1UL << 2)
#define VIRTIO_BLK_F_RO (1UL << 5)
#define VIRTIO_BLK_F_BLK_SIZE (1UL << 6)
#define VIRTIO_BLK_F_FLUSH (1UL << 9)
#define VIRTIO_BLK_F_DISCARD (1UL << 13)
#define VIRTIO_BLK_F_WRITE_ZEROES (1UL << 14)
#define BLK_FEATURES                                                           \
	(VIRTIO_BLK_F_SIZE_MAX | VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_RO |      \
	 VIRTIO_BLK_F_BLK_SIZE | VIRTIO_BLK_F_FLUSH | VIRTIO_BLK_F_DISCARD |   \
	 VIRTIO_BLK_F_WRITE_ZEROES)

/* Configuration space fields (offsets from 0x100). */
#define BLK_CFG_CAPACITY 0 /* u64, 512-byte sectors */
#define BLK_CFG_SIZE_MAX 8 /* u32 */
#define BLK_CFG_SEG_MAX 12 /* u32 */
#define BLK_CFG_BLK_SIZE 20 /* u32 */

/* Request types and status values (§5.2.6). */
#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_T_FLUSH 4
#define VIRTIO_BLK_T_GET_ID 8
#define VIRTIO_BLK_S_OK 0
#define VIRTIO_BLK_S_IOERR 1
#define VIRTIO_BLK_S_UNSUPP 2

#define SECTOR 512
#define BLK_IO_MAX 4096 /* the data buffer; the largest request */
#define BLK_ID_BYTES 20
/* Written to the status byte before every request: a device that never
 * writes it shows up as `status 255`. */
#define STATUS_UNSET 0xff

#define COUNTER_MS 100

struct blk_hdr {
	u32 type;
	u32 reserved;
	u64 sector;
};

/* All request memory (not loaded, not zeroed at boot). */
struct blk_io {
	u8 data[BLK_IO_MAX];    /* +0x0000, page-aligned */
	struct blk_hdr hdr;     /* +0x1000 */
	u8 id[BLK_ID_BYTES];    /* +0x1010 */
	u8 status;              /* +0x1024 */
};

_Static_assert(sizeof(struct blk_hdr) == 16, "virtio_blk_req header is 16 bytes");

struct blk_disk {
	struct virtio_dev *dev;
	struct virtq vq;
	u64 capacity; /* 512-byte sectors */
	u32 unit;     /* sectors per logical block (blk_size / 512), 1..8 */
	u32 seg_bytes; /* largest data segment (size_max, at most BLK_IO_MAX) */
	u32 seg_max;  /* most data segments per request (0: no limit) */
	int ro;
	int flush;    /* VIRTIO_BLK_F_FLUSH negotiated */
};
static struct blk_disk disks[VIRTIO_MAX_DEVICES] __attribute__((section(".noinit")));
/* Defined after disks[] because gcc emits it first then: the page-aligned
 * buffer starts this file's .noinit and disks[] fills the gap behind it
 * (either order works; this one saves a page). */
static struct blk_io io __attribute__((section(".noinit"), aligned(4096)));

/* ---- Output helpers ------------------------------------------------------ */

/* `disk <i> <op> sector <s>: ` (the sector only when op has one). */
static void put_where(u32 disk, const char *op, int has_sector, u64 sector)
{
	serial_puts("disk ");
	serial_u64(disk);
	serial_putc(' ');
	serial_puts(op);
	if (has_sector) {
		serial_puts(" sector ");
		serial_u64(sector);
	}
	serial_puts(": ");
}

/* ---- Requests ------------------------------------------------------------ */

/*
 * One request, polled to completion: header, `len` bytes of io.data (none
 * when len is 0) split into segments the device accepts, status byte.
 * Returns NULL with the status byte in *status, or a reason.
 */
static const char *blk_request(struct blk_disk *d, u32 type, u64 sector, u32 len,
			       u8 *status)
{
	struct virtq_buf bufs[VIRTQ_MAX_SIZE];
	u32 writable_bytes = 1, head, used_len;
	u16 n = 0;
	int data_in = type == VIRTIO_BLK_T_IN || type == VIRTIO_BLK_T_GET_ID;
	int posted;
	const char *err;

	io.hdr.type = type;
	io.hdr.reserved = 0;
	io.hdr.sector = sector;
	io.status = STATUS_UNSET;
	bufs[n].addr = (u64)&io.hdr; /* identity map: virtual = physical */
	bufs[n].len = sizeof(io.hdr);
	bufs[n++].writable = 0;
	if (type == VIRTIO_BLK_T_GET_ID) {
		bufs[n].addr = (u64)io.id;
		bufs[n].len = BLK_ID_BYTES;
		bufs[n++].writable = 1;
		writable_bytes += BLK_ID_BYTES;
	} else {
		for (u32 off = 0; off < len; off += d->seg_bytes) {
			if (n + 1u >= d->vq.size ||
			    (d->seg_max && n > d->seg_max))
				return "request needs more segments than the device takes";
			bufs[n].addr = (u64)&io.data[off];
			bufs[n].len = len - off < d->seg_bytes ? len - off : d->seg_bytes;
			bufs[n++].writable = data_in;
		}
		if (data_in)
			writable_bytes += len;
	}
	bufs[n].addr = (u64)&io.status;
	bufs[n].len = 1;
	bufs[n++].writable = 1;

	posted = virtq_add(&d->vq, bufs, n);
	if (posted < 0)
		return "no free descriptors";
	virtq_notify(&d->vq);
	err = virtq_wait(&d->vq, &head, &used_len);
	if (err)
		return err;
	if (head != (u32)posted)
		return "used id is not the posted request";
	if (used_len > writable_bytes)
		return "used length exceeds the writable buffers";
	*status = io.status;
	return NULL;
}

/* A request that must end with status OK. Prints nothing; on failure
 * *reason is a virtio-core reason, or NULL with the bad status in *status. */
static int blk_ok(struct blk_disk *d, u32 type, u64 sector, u32 len,
		  const char **reason, u8 *status)
{
	*reason = blk_request(d, type, sector, len, status);
	return !*reason && *status == VIRTIO_BLK_S_OK;
}

/* Prints `<reason>` or `status <n>` and the newline. */
static void put_failure(const char *reason, u8 status)
{
	if (reason) {
		serial_line(reason);
	} else {
		serial_puts("status ");
		serial_u64(status);
		serial_putc('\n');
	}
}

/* TRIAD-BLK-FAIL disk <i> <op> [sector <s>]: <reason or status n> */
static void blk_fail_req(u32 disk, const char *op, int has_sector, u64 sector,
			 const char *reason, u8 status)
{
	serial_puts("TRIAD-BLK-FAIL ");
	put_where(disk, op, has_sector, sector);
	put_failure(reason, status);
}

/* ---- Setup ----------------------------------------------------------------- */

static const char *blk_setup(struct blk_disk *d, struct virtio_dev *dev)
{
	const char *err;
	u64 f;

	d->dev = dev;
	err = virtio_init(dev, BLK_FEATURES); /* sets FAILED itself */
	if (err)
		return err;
	err = virtq_setup(dev, &d->vq, 0);
	if (!err)
		err = virtio_driver_ok(dev);
	if (err) {
		virtio_fail(dev);
		return err;
	}

	f = dev->features;
	d->capacity = virtio_config_read64(dev, BLK_CFG_CAPACITY);
	d->ro = !!(f & VIRTIO_BLK_F_RO);
	d->flush = !!(f & VIRTIO_BLK_F_FLUSH);
	d->unit = 1;
	if (f & VIRTIO_BLK_F_BLK_SIZE) {
		u32 bs = virtio_config_read32(dev, BLK_CFG_BLK_SIZE);

		/* The logical block size: requests must be aligned to it. */
		if (bs > BLK_IO_MAX)
			return "blk_size above 4096 not supported";
		if (bs >= SECTOR && !(bs & (bs - 1)))
			d->unit = bs / SECTOR;
	}
	d->seg_bytes = BLK_IO_MAX;
	if (f & VIRTIO_BLK_F_SIZE_MAX) {
		u32 sm = virtio_config_read32(dev, BLK_CFG_SIZE_MAX);

		if (sm && sm < d->seg_bytes)
			d->seg_bytes = sm;
	}
	d->seg_max = 0;
	if (f & VIRTIO_BLK_F_SEG_MAX)
		d->seg_max = virtio_config_read32(dev, BLK_CFG_SEG_MAX);
	return NULL;
}

/* GET_ID, then `TRIAD-BLK <base> sectors=<n> ro=<0|1> id=<serial>`. */
static const char *blk_announce(struct blk_disk *d)
{
	const char *err;
	u8 status;

	for (u32 i = 0; i < BLK_ID_BYTES; i++)
		io.id[i] = 0;
	err = blk_request(d, VIRTIO_BLK_T_GET_ID, 0, 0, &status);
	if (err)
		return err;
	serial_puts("TRIAD-BLK ");
	serial_hex(d->dev->base);
	serial_puts(" sectors=");
	serial_u64(d->capacity);
	serial_puts(" ro=");
	serial_putc(d->ro ? '1' : '0');
	serial_puts(" id=");
	/* UNSUPP / IOERR (or anything but OK): no serial. */
	for (u32 i = 0; status == VIRTIO_BLK_S_OK && i < BLK_ID_BYTES && io.id[i]; i++)
		if (io.id[i] >= 0x20 && io.id[i] < 0x7f)
			serial_putc((char)io.id[i]);
	serial_putc('\n');
	return NULL;
}

/* ---- triad.blk ------------------------------------------------------------- */

/* Byte j of sector s on disk k: (31k + s + j) & 0xff. */
static void pattern_fill(u32 disk, u64 sector, u32 len, int invert)
{
	for (u32 off = 0; off < len; off += SECTOR) {
		u8 b = (u8)(disk * 31 + sector + off / SECTOR);
		u8 x = invert ? 0xff : 0;

		for (u32 j = 0; j < SECTOR; j++)
			io.data[off + j] = (u8)((b + j) ^ x);
	}
}

/* Index of the first byte that is not the pattern, or -1. */
static long pattern_check(u32 disk, u64 sector, u32 len)
{
	for (u32 off = 0; off < len; off += SECTOR) {
		u8 b = (u8)(disk * 31 + sector + off / SECTOR);

		for (u32 j = 0; j < SECTOR; j++)
			if (io.data[off + j] != (u8)(b + j))
				return (long)(off + j);
	}
	return -1;
}

/* Reads logical block 0 into io.data and prints its first 16 bytes as
 * `TRIAD-BLK-SECTOR0 <disk> <32 hex digits>`. */
static int blk_read_sector0(u32 disk, struct blk_disk *d)
{
	static const char digits[] = "0123456789abcdef";
	const char *reason;
	u8 status;

	for (u32 i = 0; i < d->unit * SECTOR; i++)
		io.data[i] = 0;
	if (!blk_ok(d, VIRTIO_BLK_T_IN, 0, d->unit * SECTOR, &reason, &status)) {
		blk_fail_req(disk, "read", 1, 0, reason, status);
		return 0;
	}
	serial_puts("TRIAD-BLK-SECTOR0 ");
	serial_u64(disk);
	serial_putc(' ');
	for (u32 i = 0; i < 16; i++) {
		serial_putc(digits[io.data[i] >> 4]);
		serial_putc(digits[io.data[i] & 0xf]);
	}
	serial_putc('\n');
	return 1;
}

/* A read-only disk: block 0 reads, and writing it back fails with IOERR
 * (the same bytes, so a VMM that wrongly accepts it changes nothing). */
static int blk_check_ro(u32 disk, struct blk_disk *d)
{
	const char *reason;
	u8 status;

	if (!blk_read_sector0(disk, d))
		return 0;
	reason = blk_request(d, VIRTIO_BLK_T_OUT, 0, d->unit * SECTOR, &status);
	if (reason) {
		blk_fail_req(disk, "write", 1, 0, reason, 0);
		return 0;
	}
	if (status != VIRTIO_BLK_S_IOERR) {
		serial_puts("TRIAD-BLK-FAIL ");
		put_where(disk, "write", 1, 0);
		serial_puts("read-only disk answered status ");
		serial_u64(status);
		serial_line(", not 1 (IOERR)");
		return 0;
	}
	return 1;
}

/* A writable disk: 4 KiB at sector `unit` (1 with 512-byte blocks) and the
 * last whole 4 KiB, FLUSH (when negotiated), both read back and compared. */
static int blk_check_rw(u32 disk, struct blk_disk *d)
{
	u64 at[2];
	const char *reason;
	u8 status;

	at[0] = d->unit;
	at[1] = d->capacity >= BLK_IO_MAX / SECTOR ?
			(d->capacity - BLK_IO_MAX / SECTOR) / d->unit * d->unit : 0;
	if (at[1] < at[0] + BLK_IO_MAX / SECTOR) {
		serial_puts("TRIAD-BLK-FAIL disk ");
		serial_u64(disk);
		serial_puts(": ");
		serial_u64(d->capacity);
		serial_line(" sectors is too small for the test");
		return 0;
	}
	for (int k = 0; k < 2; k++) {
		pattern_fill(disk, at[k], BLK_IO_MAX, 0);
		if (!blk_ok(d, VIRTIO_BLK_T_OUT, at[k], BLK_IO_MAX, &reason, &status)) {
			blk_fail_req(disk, "write", 1, at[k], reason, status);
			return 0;
		}
	}
	if (d->flush && !blk_ok(d, VIRTIO_BLK_T_FLUSH, 0, 0, &reason, &status)) {
		blk_fail_req(disk, "flush", 0, 0, reason, status);
		return 0;
	}
	for (int k = 0; k < 2; k++) {
		long bad;

		pattern_fill(disk, at[k], BLK_IO_MAX, 1); /* the device must overwrite it */
		if (!blk_ok(d, VIRTIO_BLK_T_IN, at[k], BLK_IO_MAX, &reason, &status)) {
			blk_fail_req(disk, "read", 1, at[k], reason, status);
			return 0;
		}
		bad = pattern_check(disk, at[k], BLK_IO_MAX);
		if (bad >= 0) {
			serial_puts("TRIAD-BLK-FAIL ");
			put_where(disk, "read", 1, at[k] + (u64)bad / SECTOR);
			serial_puts("mismatch at byte ");
			serial_u64((u64)bad % SECTOR);
			serial_puts(" (got ");
			serial_hex(io.data[bad]);
			serial_line(")");
			return 0;
		}
	}
	return 1;
}

/* ---- triad.counter --------------------------------------------------------- */

static void counter_error(const char *op, int has_sector, const char *reason, u8 status)
{
	serial_puts("TRIAD-COUNTER error ");
	serial_puts(op);
	if (has_sector)
		serial_puts(" sector 0");
	serial_puts(": ");
	put_failure(reason, status);
}

/* Returns only on an error. */
static void counter_run(struct blk_disk *d)
{
	u32 len = d->unit * SECTOR;
	const char *reason;
	u64 value, last;
	u8 status;

	if (!blk_ok(d, VIRTIO_BLK_T_IN, 0, len, &reason, &status)) {
		counter_error("read", 1, reason, status);
		return;
	}
	value = 0;
	for (int i = 7; i >= 0; i--)
		value = value << 8 | io.data[i];
	last = rdtsc();
	for (;;) {
		value++;
		/* Little-endian at byte 0; the rest of the block stays as read. */
		for (int i = 0; i < 8; i++)
			io.data[i] = (u8)(value >> (8 * i));
		if (!blk_ok(d, VIRTIO_BLK_T_OUT, 0, len, &reason, &status)) {
			counter_error("write", 1, reason, status);
			return;
		}
		if (d->flush && !blk_ok(d, VIRTIO_BLK_T_FLUSH, 0, 0, &reason, &status)) {
			counter_error("flush", 0, reason, status);
			return;
		}
		serial_puts("TRIAD-COUNTER ");
		serial_u64(value);
		serial_putc('\n');
		while (rdtsc() - last < COUNTER_MS * TSC_PER_MS)
			cpu_relax();
		last = rdtsc();
	}
}

/* ---- triad.blk=flood --------------------------------------------------------- */

/* Requests between progress lines: the host times the lines to measure IOPS (QoS tests). */
#define FLOOD_REPORT 50

/* 4 KiB reads walking disk 0 as fast as the device completes them, forever; a
 * `TRIAD-BLK-IOS <total>` line every FLOOD_REPORT requests. Returns only on an error. */
static void flood_run(struct blk_disk *d)
{
	u32 len = BLK_IO_MAX;
	u64 span = d->capacity > len / SECTOR ? d->capacity - len / SECTOR : 0;
	u64 total = 0, sector = 0;
	const char *reason;
	u8 status;

	if (span == 0) {
		serial_line("TRIAD-BLK-FAIL disk 0: too small to flood");
		return;
	}
	for (;;) {
		if (!blk_ok(d, VIRTIO_BLK_T_IN, sector, len, &reason, &status)) {
			serial_puts("TRIAD-BLK-FAIL ");
			put_where(0, "read", 1, sector);
			put_failure(reason, status);
			return;
		}
		sector = (sector + len / SECTOR) % span;
		if (++total % FLOOD_REPORT == 0) {
			serial_puts("TRIAD-BLK-IOS ");
			serial_u64(total);
			serial_putc('\n');
		}
	}
}

/* ---- The step -------------------------------------------------------------- */

void virtio_blk_run(int mode, int counter)
{
	struct virtio_dev *dev;
	u32 n, ready = 0;
	int failed = 0;

	/* Bring up and announce every disk; stop at the first that fails. */
	for (n = 0; (dev = virtio_find(VIRTIO_ID_BLOCK, n)) != NULL; n++) {
		const char *err = blk_setup(&disks[n], dev);
		const char *op = "setup";

		if (!err) {
			op = "get-id";
			err = blk_announce(&disks[n]);
		}
		if (err) {
			serial_puts("TRIAD-BLK-FAIL ");
			put_where(n, op, 0, 0);
			serial_line(err);
			failed = 1;
			break;
		}
		ready++;
	}

	if (mode == BLK_MODE_FLOOD) {
		if (ready == 0)
			serial_line("TRIAD-BLK-FAIL no disk to flood");
		else
			flood_run(&disks[0]);
		return;
	}

	if (mode != BLK_MODE_NONE && !failed) {
		u32 i;

		for (i = 0; i < ready; i++) {
			struct blk_disk *d = &disks[i];
			int ok;

			if (mode == BLK_MODE_RO)
				ok = blk_read_sector0(i, d);
			else if (d->ro)
				ok = blk_check_ro(i, d);
			else
				ok = blk_check_rw(i, d);
			if (!ok)
				break;
		}
		if (i == ready) {
			serial_puts("TRIAD-BLK-OK ");
			serial_u64(ready);
			serial_putc('\n');
		}
	}

	if (counter) {
		if (!virtio_find(VIRTIO_ID_BLOCK, 0))
			serial_line("TRIAD-COUNTER none");
		else if (ready == 0)
			serial_line("TRIAD-COUNTER error disk 0 setup failed");
		else
			counter_run(&disks[0]);
	}
}
