/*
 * virtio.c - virtio-mmio driver core of the test guest: discovery from the
 * kernel command line (Linux's `virtio_mmio.device=<size>@<base>:<irq>[:<id>]`
 * syntax, which Triad and QEMU microvm both use), the virtio 1.x status and
 * feature handshake, and polled split virtqueues whose rings live in a
 * small static pool. See virtio.h for the interface.
 */
#include "virtio.h"

#define RESET_TIMEOUT_MS 100

/*
 * Nothing here is in .bss, which head.S clears before TRIAD-GUEST-READY
 * (keep it empty): the counters are initialised .data, the device table
 * and the ring memory are .noinit (not loaded, not zeroed). A device entry
 * is written in full when it is counted; virtq_setup zeroes each ring slot
 * it hands out. The pool is page-aligned, so every slot is 1 KiB-aligned.
 */
static u32 num_devices __attribute__((section(".data"))) = 0;
static u32 virtq_pool_used __attribute__((section(".data"))) = 0;
/* `triad.noeventidx`: VIRTIO_RING_F_EVENT_IDX is never negotiated. */
static u32 no_event_idx __attribute__((section(".data"))) = 0;
static struct virtio_dev devices[VIRTIO_MAX_DEVICES] __attribute__((section(".noinit")));
static u8 virtq_pool[VIRTQ_POOL][VIRTQ_SLOT]
	__attribute__((section(".noinit"), aligned(4096)));

_Static_assert(VIRTQ_MAX_SIZE <= 32, "in_flight is a 32-bit mask");
_Static_assert(VIRTQ_MAX_SIZE * sizeof(struct virtq_desc) <= VIRTQ_AVAIL_OFF,
	       "descriptor table overlaps the available ring");
/* Ring sizes with the event fields (§2.7.6, §2.7.8): 6 + 2 * size and
 * 6 + 8 * size bytes. */
_Static_assert(VIRTQ_AVAIL_OFF + 6 + 2 * VIRTQ_MAX_SIZE <= VIRTQ_USED_OFF &&
		       VIRTQ_AVAIL_OFF + sizeof(struct virtq_avail) <= VIRTQ_USED_OFF,
	       "available ring overlaps the used ring");
_Static_assert(VIRTQ_USED_OFF + 6 + 8 * VIRTQ_MAX_SIZE <= VIRTQ_SLOT &&
		       VIRTQ_USED_OFF + sizeof(struct virtq_used) <= VIRTQ_SLOT,
	       "used ring overflows its slot");
_Static_assert(VIRTQ_AVAIL_OFF % 2 == 0 && VIRTQ_USED_OFF % 4 == 0,
	       "ring alignment (§2.7: avail 2, used 4)");

static u32 rd(const struct virtio_dev *dev, u32 off)
{
	u32 v;

	virtio_barrier();
	v = mmio_read32(dev->base + off);
	virtio_barrier();
	return v;
}

static void wr(const struct virtio_dev *dev, u32 off, u32 val)
{
	virtio_barrier();
	mmio_write32(dev->base + off, val);
	virtio_barrier();
}

/* ---- Command line tokens ---------------------------------------------- */

/* Unsigned number at s[*i..len): 0x-prefixed hex or decimal. */
static int parse_num(const char *s, usize len, usize *i, u64 *out)
{
	u64 v = 0;
	usize start;
	int hex = 0;

	if (*i + 2 < len && s[*i] == '0' && (s[*i + 1] == 'x' || s[*i + 1] == 'X')) {
		hex = 1;
		*i += 2;
	}
	start = *i;
	for (; *i < len; (*i)++) {
		char c = s[*i];
		u32 d;

		if (c >= '0' && c <= '9')
			d = (u32)(c - '0');
		else if (hex && c >= 'a' && c <= 'f')
			d = (u32)(c - 'a' + 10);
		else if (hex && c >= 'A' && c <= 'F')
			d = (u32)(c - 'A' + 10);
		else
			break;
		if (v > (~0UL >> 4))
			return -1; /* overflow */
		v = v * (hex ? 16 : 10) + d;
	}
	*out = v;
	return *i > start ? 0 : -1;
}

static void put_token(const char *s, usize len)
{
	for (usize i = 0; i < len; i++)
		serial_putc(s[i]);
}

/* The value of one virtio_mmio.device= token: <size>@<base>:<irq>[:<id>],
 * size with an optional K/M/G suffix (like Linux's memparse). */
void virtio_parse_token(const char *s, usize len)
{
	struct virtio_dev *dev;
	u64 size, base, irq, id;
	usize i = 0;

	if (parse_num(s, len, &i, &size) < 0)
		goto bad;
	if (i < len) {
		switch (s[i]) {
		case 'G': case 'g': size <<= 10; /* fall through */
		case 'M': case 'm': size <<= 10; /* fall through */
		case 'K': case 'k': size <<= 10; i++; break;
		}
	}
	if (i >= len || s[i++] != '@' || parse_num(s, len, &i, &base) < 0)
		goto bad;
	if (i >= len || s[i++] != ':' || parse_num(s, len, &i, &irq) < 0)
		goto bad;
	if (i < len && (s[i++] != ':' || parse_num(s, len, &i, &id) < 0))
		goto bad;
	if (i != len || size == 0 || irq > 0xffffffffUL)
		goto bad;
	if (num_devices >= VIRTIO_MAX_DEVICES) {
		serial_puts("TRIAD-WARN too many virtio_mmio.device tokens, ignoring ");
		put_token(s, len);
		serial_putc('\n');
		return;
	}
	dev = &devices[num_devices++];
	dev->base = base;
	dev->size = size;
	dev->irq = (u32)irq;
	dev->device_id = 0;
	dev->vendor_id = 0;
	dev->features = 0;
	return;
bad:
	serial_puts("TRIAD-WARN bad virtio_mmio.device token: ");
	put_token(s, len);
	serial_putc('\n');
}

static void warn_dev(const struct virtio_dev *dev, const char *what)
{
	serial_puts("TRIAD-WARN virtio-mmio ");
	serial_hex(dev->base);
	serial_putc(' ');
	serial_puts(what);
}

/* Probes every remembered device: magic, version, device ID. Prints
 * `TRIAD-VIRTIO <base> <id>` per device, TRIAD-WARN for the rest. */
void virtio_discover(void)
{
	for (u32 n = 0; n < num_devices; n++) {
		struct virtio_dev *dev = &devices[n];
		u32 magic, version, id;

		/* head.S maps only the first 4 GiB (3-4 GiB uncached). */
		if (dev->base & 3 || dev->size < VIRTIO_MMIO_CONFIG ||
		    dev->base >= 0x100000000UL ||
		    dev->size > 0x100000000UL - dev->base) {
			warn_dev(dev, "window not usable (unaligned, too small or above 4 GiB)\n");
			continue;
		}
		magic = rd(dev, VIRTIO_MMIO_MAGIC);
		if (magic != VIRTIO_MMIO_MAGIC_VALUE) {
			warn_dev(dev, "bad magic ");
			serial_hex(magic);
			serial_putc('\n');
			continue;
		}
		version = rd(dev, VIRTIO_MMIO_VERSION);
		if (version == 1) {
			warn_dev(dev, "is legacy (version 1), not supported\n");
			continue;
		}
		if (version != 2) {
			warn_dev(dev, "has unknown version ");
			serial_u64(version);
			serial_putc('\n');
			continue;
		}
		id = rd(dev, VIRTIO_MMIO_DEVICE_ID);
		if (id == 0) {
			warn_dev(dev, "has no device (ID 0)\n");
			continue;
		}
		dev->device_id = id;
		dev->vendor_id = rd(dev, VIRTIO_MMIO_VENDOR_ID);
		serial_puts("TRIAD-VIRTIO ");
		serial_hex(dev->base);
		serial_putc(' ');
		serial_u64(id);
		serial_putc('\n');
	}
}

struct virtio_dev *virtio_find(u32 device_id, u32 n)
{
	for (u32 i = 0; i < num_devices; i++)
		if (devices[i].device_id == device_id && n-- == 0)
			return &devices[i];
	return NULL;
}

/* ---- Device handshake -------------------------------------------------- */

void virtio_disable_event_idx(void)
{
	no_event_idx = 1;
}

void virtio_reset(struct virtio_dev *dev)
{
	wr(dev, VIRTIO_MMIO_STATUS, 0);
}

void virtio_fail(struct virtio_dev *dev)
{
	wr(dev, VIRTIO_MMIO_STATUS, rd(dev, VIRTIO_MMIO_STATUS) | VIRTIO_STATUS_FAILED);
}

const char *virtio_init(struct virtio_dev *dev, u64 want_features)
{
	u32 status, version;
	u64 offered, accepted;
	u64 start;

	if (rd(dev, VIRTIO_MMIO_MAGIC) != VIRTIO_MMIO_MAGIC_VALUE)
		return "bad magic";
	version = rd(dev, VIRTIO_MMIO_VERSION);
	if (version == 1)
		return "legacy device (version 1)";
	if (version != 2)
		return "bad version";
	if (rd(dev, VIRTIO_MMIO_DEVICE_ID) == 0)
		return "no device";

	/* Reset; it is complete when Status reads back 0. */
	virtio_reset(dev);
	start = rdtsc();
	while (rd(dev, VIRTIO_MMIO_STATUS) != 0) {
		if (rdtsc() - start > RESET_TIMEOUT_MS * TSC_PER_MS)
			return "reset timeout";
		cpu_relax();
	}

	status = VIRTIO_STATUS_ACKNOWLEDGE;
	wr(dev, VIRTIO_MMIO_STATUS, status);
	status |= VIRTIO_STATUS_DRIVER;
	wr(dev, VIRTIO_MMIO_STATUS, status);

	wr(dev, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
	offered = (u64)rd(dev, VIRTIO_MMIO_DEVICE_FEATURES) << 32;
	wr(dev, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
	offered |= rd(dev, VIRTIO_MMIO_DEVICE_FEATURES);
	if (!(offered & VIRTIO_F_VERSION_1)) {
		virtio_fail(dev);
		return "VERSION_1 not offered";
	}
	/* EVENT_IDX is the core's business, for every device type. */
	if (!no_event_idx)
		want_features |= VIRTIO_RING_F_EVENT_IDX;
	accepted = (want_features & offered) | VIRTIO_F_VERSION_1;
	wr(dev, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
	wr(dev, VIRTIO_MMIO_DRIVER_FEATURES, (u32)accepted);
	wr(dev, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
	wr(dev, VIRTIO_MMIO_DRIVER_FEATURES, (u32)(accepted >> 32));

	status |= VIRTIO_STATUS_FEATURES_OK;
	wr(dev, VIRTIO_MMIO_STATUS, status);
	if (!(rd(dev, VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_FEATURES_OK)) {
		virtio_fail(dev);
		return "FEATURES_OK refused";
	}
	dev->features = accepted;
	return NULL;
}

const char *virtio_driver_ok(struct virtio_dev *dev)
{
	u32 status = rd(dev, VIRTIO_MMIO_STATUS);

	wr(dev, VIRTIO_MMIO_STATUS, status | VIRTIO_STATUS_DRIVER_OK);
	status = rd(dev, VIRTIO_MMIO_STATUS);
	if (status & (VIRTIO_STATUS_NEEDS_RESET | VIRTIO_STATUS_FAILED))
		return "device failed at DRIVER_OK";
	if (!(status & VIRTIO_STATUS_DRIVER_OK))
		return "DRIVER_OK refused";
	return NULL;
}

/* ---- Configuration space ------------------------------------------------ */

u8 virtio_config_read8(struct virtio_dev *dev, u32 off)
{
	virtio_barrier();
	return *(volatile u8 *)phys(dev->base + VIRTIO_MMIO_CONFIG + off);
}

u16 virtio_config_read16(struct virtio_dev *dev, u32 off)
{
	virtio_barrier();
	return *(volatile u16 *)phys(dev->base + VIRTIO_MMIO_CONFIG + off);
}

u32 virtio_config_read32(struct virtio_dev *dev, u32 off)
{
	return rd(dev, VIRTIO_MMIO_CONFIG + off);
}

/* Two 32-bit reads, retried while ConfigGeneration changes under them. */
u64 virtio_config_read64(struct virtio_dev *dev, u32 off)
{
	u32 gen, lo, hi;
	int tries = 0;

	do {
		gen = rd(dev, VIRTIO_MMIO_CONFIG_GENERATION);
		lo = rd(dev, VIRTIO_MMIO_CONFIG + off);
		hi = rd(dev, VIRTIO_MMIO_CONFIG + off + 4);
	} while (rd(dev, VIRTIO_MMIO_CONFIG_GENERATION) != gen && ++tries < 10);
	return (u64)hi << 32 | lo;
}

/* A byte array (e.g. virtio-net's MAC), read with 8-bit accesses and
 * retried while ConfigGeneration changes under them. */
void virtio_config_read_bytes(struct virtio_dev *dev, u32 off, u8 *buf, u32 n)
{
	u32 gen;
	int tries = 0;

	do {
		gen = rd(dev, VIRTIO_MMIO_CONFIG_GENERATION);
		for (u32 i = 0; i < n; i++)
			buf[i] = virtio_config_read8(dev, off + i);
	} while (rd(dev, VIRTIO_MMIO_CONFIG_GENERATION) != gen && ++tries < 10);
}

/* ---- Split virtqueues --------------------------------------------------- */

const char *virtq_setup(struct virtio_dev *dev, struct virtq *vq, u16 index)
{
	u64 *slot, desc, avail, used;
	u32 max, size;

	if (virtq_pool_used >= VIRTQ_POOL)
		return "out of virtqueue memory";
	wr(dev, VIRTIO_MMIO_QUEUE_SEL, index);
	if (rd(dev, VIRTIO_MMIO_QUEUE_READY) != 0)
		return "queue already ready";
	max = rd(dev, VIRTIO_MMIO_QUEUE_NUM_MAX);
	if (max == 0)
		return "queue not available";
	/* The largest power of two <= min(QueueNumMax, VIRTQ_MAX_SIZE). */
	for (size = VIRTQ_MAX_SIZE; size > max; size >>= 1)
		;

	slot = (u64 *)virtq_pool[virtq_pool_used++];
	for (u32 i = 0; i < VIRTQ_SLOT / 8; i++)
		slot[i] = 0;
	desc = (u64)slot;
	avail = desc + VIRTQ_AVAIL_OFF;
	used = desc + VIRTQ_USED_OFF;

	vq->dev = dev;
	vq->index = index;
	vq->size = (u16)size;
	vq->desc = (volatile struct virtq_desc *)desc;
	vq->avail = (volatile struct virtq_avail *)avail;
	vq->used = (volatile struct virtq_used *)used;
	vq->free_head = 0;
	vq->num_free = (u16)size;
	vq->avail_idx = 0;
	vq->last_used = 0;
	vq->in_flight = 0;
	vq->kicked_idx = 0;
	vq->event_idx = !!(dev->features & VIRTIO_RING_F_EVENT_IDX);
	/* used_event = 0 (the slot is zeroed): the first used entry is the
	 * one we wait for. */
	for (u32 i = 0; i < size; i++)
		vq->desc[i].next = (u16)(i + 1);

	wr(dev, VIRTIO_MMIO_QUEUE_NUM, size);
	wr(dev, VIRTIO_MMIO_QUEUE_DESC_LOW, (u32)desc);
	wr(dev, VIRTIO_MMIO_QUEUE_DESC_HIGH, (u32)(desc >> 32));
	wr(dev, VIRTIO_MMIO_QUEUE_DRIVER_LOW, (u32)avail);
	wr(dev, VIRTIO_MMIO_QUEUE_DRIVER_HIGH, (u32)(avail >> 32));
	wr(dev, VIRTIO_MMIO_QUEUE_DEVICE_LOW, (u32)used);
	wr(dev, VIRTIO_MMIO_QUEUE_DEVICE_HIGH, (u32)(used >> 32));
	wr(dev, VIRTIO_MMIO_QUEUE_READY, 1);
	if (rd(dev, VIRTIO_MMIO_QUEUE_READY) != 1)
		return "QueueReady did not stick";
	return NULL;
}

int virtq_add(struct virtq *vq, const struct virtq_buf *bufs, u16 n)
{
	u16 head = vq->free_head, i = head, last = head;

	if (n == 0 || n > vq->num_free)
		return -1;
	for (u16 k = 0; k < n; k++) {
		volatile struct virtq_desc *d = &vq->desc[i];

		d->addr = bufs[k].addr;
		d->len = bufs[k].len;
		/* .next already links to the next free descriptor. */
		d->flags = (u16)((bufs[k].writable ? VIRTQ_DESC_F_WRITE : 0) |
				 (k + 1 < n ? VIRTQ_DESC_F_NEXT : 0));
		last = i;
		i = d->next;
	}
	vq->free_head = vq->desc[last].next;
	vq->num_free = (u16)(vq->num_free - n);
	vq->in_flight |= 1u << head;

	vq->avail->ring[vq->avail_idx & (vq->size - 1)] = head;
	/* EVENT_IDX: the next used index we poll for (interrupts stay off,
	 * but the device should see a sensible value). */
	if (vq->event_idx)
		*virtq_used_event(vq) = vq->last_used;
	virtio_barrier(); /* descriptors, ring entry, used_event before the index */
	vq->avail_idx++;
	vq->avail->idx = vq->avail_idx;
	virtio_barrier();
	return head;
}

void virtq_notify(struct virtq *vq)
{
	u16 old_idx = vq->kicked_idx, new_idx = vq->avail_idx;

	vq->kicked_idx = new_idx;
	if (vq->event_idx) {
		/* avail->idx (stored in virtq_add) must be visible before
		 * avail_event is read (§2.7.10): a store-load order, which
		 * TSO alone does not give. */
		virtio_mb();
		if (!vring_need_event(*virtq_avail_event(vq), new_idx, old_idx))
			return;
	}
	wr(vq->dev, VIRTIO_MMIO_QUEUE_NOTIFY, vq->index);
}

int virtq_poll(struct virtq *vq, u32 *head, u32 *len)
{
	volatile struct virtq_used_elem *e;
	u32 id, n = 1, isr;
	u16 i;

	virtio_barrier();
	if (vq->used->idx == vq->last_used)
		return 0;
	virtio_barrier(); /* the index before the entry and the buffers */
	e = &vq->used->ring[vq->last_used & (vq->size - 1)];
	id = e->id;
	*len = e->len;
	*head = id;
	vq->last_used++;
	if (vq->event_idx)
		*virtq_used_event(vq) = vq->last_used; /* the next one we poll for */
	if (id >= vq->size || !(vq->in_flight & (1u << id)))
		return -1;
	vq->in_flight &= ~(1u << id);

	/* Return the chain to the free list. */
	for (i = (u16)id; vq->desc[i].flags & VIRTQ_DESC_F_NEXT && n < vq->size; n++)
		i = vq->desc[i].next;
	vq->desc[i].next = vq->free_head;
	vq->free_head = (u16)id;
	vq->num_free = (u16)(vq->num_free + n);

	/* Polled driver: acknowledge whatever the device raised. */
	isr = rd(vq->dev, VIRTIO_MMIO_INTERRUPT_STATUS);
	if (isr)
		wr(vq->dev, VIRTIO_MMIO_INTERRUPT_ACK, isr);
	return 1;
}

const char *virtq_wait(struct virtq *vq, u32 *head, u32 *len)
{
	u64 start = rdtsc();

	for (;;) {
		int r = virtq_poll(vq, head, len);

		if (r > 0)
			return NULL;
		if (r < 0)
			return "bad used id";
		if (rdtsc() - start > VIRTQ_TIMEOUT_MS * TSC_PER_MS)
			break;
		cpu_relax();
	}
	if (rd(vq->dev, VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_NEEDS_RESET)
		return "device needs reset";
	return "timeout";
}
