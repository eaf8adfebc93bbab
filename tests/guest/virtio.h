/*
 * virtio.h - the test guest's virtio-mmio driver core (virtio 1.x "modern"
 * devices, MMIO transport version 2, split virtqueues; virtio spec 1.2
 * §2.7 and §4.2). Device drivers (virtio_rng.c, virtio_blk.c,
 * virtio_net.c) sit on top.
 *
 * Everything is polled: interrupts stay off, the driver spins on the used
 * ring with a TSC timeout and acknowledges InterruptStatus itself.
 * VIRTIO_RING_F_EVENT_IDX (§2.7.7, §2.7.10) is negotiated whenever the
 * device offers it (unless `triad.noeventidx`): QueueNotify is then skipped
 * when the device's avail_event says it needs none. Every
 * function that can fail returns NULL on success or a short reason string
 * ("FEATURES_OK refused", "timeout", ...) that callers print verbatim.
 */
#ifndef TRIAD_GUEST_VIRTIO_H
#define TRIAD_GUEST_VIRTIO_H

#include "guest.h"

/* MMIO register offsets (all 32-bit, aligned). */
#define VIRTIO_MMIO_MAGIC 0x000
#define VIRTIO_MMIO_VERSION 0x004
#define VIRTIO_MMIO_DEVICE_ID 0x008
#define VIRTIO_MMIO_VENDOR_ID 0x00c
#define VIRTIO_MMIO_DEVICE_FEATURES 0x010
#define VIRTIO_MMIO_DEVICE_FEATURES_SEL 0x014
#define VIRTIO_MMIO_DRIVER_FEATURES 0x020
#define VIRTIO_MMIO_DRIVER_FEATURES_SEL 0x024
#define VIRTIO_MMIO_QUEUE_SEL 0x030
#define VIRTIO_MMIO_QUEUE_NUM_MAX 0x034
#define VIRTIO_MMIO_QUEUE_NUM 0x038
#define VIRTIO_MMIO_QUEUE_READY 0x044
#define VIRTIO_MMIO_QUEUE_NOTIFY 0x050
#define VIRTIO_MMIO_INTERRUPT_STATUS 0x060
#define VIRTIO_MMIO_INTERRUPT_ACK 0x064
#define VIRTIO_MMIO_STATUS 0x070
#define VIRTIO_MMIO_QUEUE_DESC_LOW 0x080
#define VIRTIO_MMIO_QUEUE_DESC_HIGH 0x084
#define VIRTIO_MMIO_QUEUE_DRIVER_LOW 0x090
#define VIRTIO_MMIO_QUEUE_DRIVER_HIGH 0x094
#define VIRTIO_MMIO_QUEUE_DEVICE_LOW 0x0a0
#define VIRTIO_MMIO_QUEUE_DEVICE_HIGH 0x0a4
#define VIRTIO_MMIO_CONFIG_GENERATION 0x0fc
#define VIRTIO_MMIO_CONFIG 0x100

#define VIRTIO_MMIO_MAGIC_VALUE 0x74726976u /* "virt" */

/* Device status bits. */
#define VIRTIO_STATUS_ACKNOWLEDGE 1
#define VIRTIO_STATUS_DRIVER 2
#define VIRTIO_STATUS_DRIVER_OK 4
#define VIRTIO_STATUS_FEATURES_OK 8
#define VIRTIO_STATUS_NEEDS_RESET 64
#define VIRTIO_STATUS_FAILED 128

/* Feature bits. */
#define VIRTIO_RING_F_EVENT_IDX (1UL << 29)
#define VIRTIO_F_VERSION_1 (1UL << 32)

/* Device IDs. */
#define VIRTIO_ID_NET 1
#define VIRTIO_ID_BLOCK 2
#define VIRTIO_ID_RNG 4

/*
 * Queue size cap and the static ring pool: VIRTQ_POOL queues in total, each
 * in its own VIRTQ_SLOT-byte slot of page-aligned .noinit memory (zeroed by
 * virtq_setup, not at boot): descriptor table at +0x000 (16 * 16 bytes),
 * available ring at +0x100 (6 + 2 * 16), used ring at +0x200 (6 + 8 * 16).
 * The 6 is flags, idx and the ring's trailing event field (used_event
 * after avail->ring[size], avail_event after used->ring[size]), which the
 * two sides use only with VIRTIO_RING_F_EVENT_IDX but which is always
 * reserved.
 */
#define VIRTQ_MAX_SIZE 16
#define VIRTQ_POOL 16
#define VIRTQ_SLOT 0x400
#define VIRTQ_AVAIL_OFF 0x100
#define VIRTQ_USED_OFF 0x200

/* Used-ring poll timeout (TSC time). */
#define VIRTQ_TIMEOUT_MS 2000

/* Up to this many virtio_mmio.device= tokens are remembered. */
#define VIRTIO_MAX_DEVICES 16

struct virtq_desc {
	u64 addr;
	u32 len;
	u16 flags;
	u16 next;
};
#define VIRTQ_DESC_F_NEXT 1
#define VIRTQ_DESC_F_WRITE 2

/*
 * The rings at their largest (size == VIRTQ_MAX_SIZE). The trailing event
 * fields sit right after ring[size], so for a smaller queue they come
 * earlier: use virtq_used_event() / virtq_avail_event(), never the
 * *_event_room members, which only reserve the space.
 */
struct virtq_avail {
	u16 flags;
	u16 idx;
	u16 ring[VIRTQ_MAX_SIZE];
	u16 used_event_room;
};

struct virtq_used_elem {
	u32 id;
	u32 len;
};

struct virtq_used {
	u16 flags;
	u16 idx;
	struct virtq_used_elem ring[VIRTQ_MAX_SIZE];
	u16 avail_event_room;
};

/* One virtio_mmio.device=<size>@<base>:<irq>[:<id>] token. */
struct virtio_dev {
	u64 base;
	u64 size;
	u32 irq;
	u32 device_id; /* 0: no usable device here (none, bad magic, legacy) */
	u32 vendor_id;
	u64 features; /* negotiated (virtio_init) */
};

struct virtq {
	struct virtio_dev *dev;
	u16 index;     /* queue number on the device */
	u16 size;      /* entries: min(QueueNumMax, VIRTQ_MAX_SIZE) */
	u16 free_head; /* first free descriptor (chained through .next) */
	u16 num_free;
	u16 avail_idx; /* driver's copy of avail->idx */
	u16 last_used; /* next used->ring entry to consume */
	u32 in_flight; /* bit per head descriptor handed to the device */
	u16 kicked_idx; /* avail_idx at the previous virtq_notify */
	u16 event_idx;  /* VIRTIO_RING_F_EVENT_IDX negotiated */
	volatile struct virtq_desc *desc;
	volatile struct virtq_avail *avail;
	volatile struct virtq_used *used;
};

/* One buffer of a descriptor chain. */
struct virtq_buf {
	u64 addr; /* guest-physical (= our pointer, identity map) */
	u32 len;
	int writable; /* device writes it (VIRTQ_DESC_F_WRITE) */
};

/* Compiler barrier: enough between stores (and between loads) to the rings
 * on x86, which keeps both in program order (TSO). */
static inline void virtio_barrier(void)
{
	__asm__ volatile("" ::: "memory");
}

/* Full barrier: also orders an earlier store before a later load, which
 * TSO does not (store buffer). A locked no-op on the stack top, as Linux's
 * smp_mb() on x86-64 (no mfence: nothing SSE-flavoured in this guest). */
static inline void virtio_mb(void)
{
	__asm__ volatile("lock; orl $0, (%%rsp)" ::: "memory", "cc");
}

/* used_event: the u16 after avail->ring[size] (driver-written). */
static inline volatile u16 *virtq_used_event(const struct virtq *vq)
{
	return (volatile u16 *)((volatile u8 *)vq->avail + 4 + 2 * (u32)vq->size);
}

/* avail_event: the u16 after used->ring[size] (device-written). */
static inline volatile u16 *virtq_avail_event(const struct virtq *vq)
{
	return (volatile u16 *)((volatile u8 *)vq->used + 4 + 8 * (u32)vq->size);
}

/* §2.7.10: with EVENT_IDX, the other side wants an event if the index it
 * named (event_idx) is among the entries new_idx - old_idx just added. */
static inline int vring_need_event(u16 event_idx, u16 new_idx, u16 old_idx)
{
	return (u16)(new_idx - event_idx - 1) < (u16)(new_idx - old_idx);
}

/* Discovery: remembers every virtio_mmio.device= token of the command line
 * and probes it (magic, version, device ID), printing TRIAD-VIRTIO lines. */
void virtio_parse_token(const char *tok, usize len);
void virtio_discover(void);
/* The n-th discovered device with this ID (0-based), or NULL. */
struct virtio_dev *virtio_find(u32 device_id, u32 n);

/* `triad.noeventidx`: never negotiate VIRTIO_RING_F_EVENT_IDX (call before
 * any virtio_init). */
void virtio_disable_event_idx(void);
/* Handshake up to FEATURES_OK: reset, ACKNOWLEDGE, DRIVER, features
 * (VERSION_1, which must be offered, plus EVENT_IDX and the wanted bits
 * where offered), FEATURES_OK checked. */
const char *virtio_init(struct virtio_dev *dev, u64 want_features);
/* Set up queue `index` (after virtio_init, before virtio_driver_ok). */
const char *virtq_setup(struct virtio_dev *dev, struct virtq *vq, u16 index);
/* Sets DRIVER_OK; fails if the device then reports NEEDS_RESET/FAILED. */
const char *virtio_driver_ok(struct virtio_dev *dev);
/* Marks the device FAILED (after an error during setup). */
void virtio_fail(struct virtio_dev *dev);
/* Resets the device (status 0). */
void virtio_reset(struct virtio_dev *dev);

/* Device-specific configuration space (offset from 0x100), with the access
 * widths the spec requires for each field size. */
u8 virtio_config_read8(struct virtio_dev *dev, u32 off);
u16 virtio_config_read16(struct virtio_dev *dev, u32 off);
u32 virtio_config_read32(struct virtio_dev *dev, u32 off);
u64 virtio_config_read64(struct virtio_dev *dev, u32 off);
void virtio_config_read_bytes(struct virtio_dev *dev, u32 off, u8 *buf, u32 n);

/* Adds a chain of n buffers and publishes it in the available ring (does
 * not notify). Returns the head descriptor index, or -1 if not enough
 * descriptors are free (or n is 0). */
int virtq_add(struct virtq *vq, const struct virtq_buf *bufs, u16 n);
/* QueueNotify for the chains added since the previous call. Without
 * EVENT_IDX always; with it only if vring_need_event(avail_event, avail
 * index now, avail index at the previous call). */
void virtq_notify(struct virtq *vq);
/* Non-blocking: if the device has used a chain, frees its descriptors,
 * stores its head and written length, acknowledges InterruptStatus and
 * returns 1; 0 if nothing is used yet; -1 if the used entry names no chain
 * in flight. */
int virtq_poll(struct virtq *vq, u32 *head, u32 *len);
/* Polls for up to VIRTQ_TIMEOUT_MS; NULL or "timeout" / "bad used id". */
const char *virtq_wait(struct virtq *vq, u32 *head, u32 *len);

/* virtio_rng.c: the triad.rng step. */
void virtio_rng_run(void);

/* virtio_blk.c: the triad.blk=<mode> / triad.counter step (counter never
 * returns unless it fails). */
#define BLK_MODE_NONE 0
#define BLK_MODE_RO 1 /* triad.blk=ro */
#define BLK_MODE_RW 2 /* triad.blk=rw */
#define BLK_MODE_FLOOD 3 /* triad.blk=flood */
void virtio_blk_run(int mode, int counter);

#endif
