/*
 * virtio_rng.c - `triad.rng`: drive the first virtio-rng device (ID 4, one
 * request queue, no configuration space, no device features) once: post a
 * single 32-byte device-writable buffer and print what the device wrote as
 * `TRIAD-RNG <len> <hex>`; `TRIAD-RNG none` without a device,
 * `TRIAD-RNG error <reason>` if anything fails.
 */
#include "virtio.h"

#define RNG_BYTES 32

/* The device writes it; zeroed before use, not at boot. */
static u8 rng_buf[RNG_BYTES] __attribute__((section(".noinit"), aligned(64)));

static void rng_error(const char *reason)
{
	serial_puts("TRIAD-RNG error ");
	serial_line(reason);
}

void virtio_rng_run(void)
{
	static const char digits[] = "0123456789abcdef";
	struct virtio_dev *dev = virtio_find(VIRTIO_ID_RNG, 0);
	struct virtq vq;
	struct virtq_buf buf;
	const char *err;
	u32 head, len;
	int posted;

	if (!dev) {
		serial_line("TRIAD-RNG none");
		return;
	}
	err = virtio_init(dev, 0); /* sets FAILED itself where it applies */
	if (!err) {
		err = virtq_setup(dev, &vq, 0);
		if (!err)
			err = virtio_driver_ok(dev);
		if (err)
			virtio_fail(dev);
	}
	if (err) {
		rng_error(err);
		return;
	}

	for (u32 i = 0; i < RNG_BYTES; i++)
		rng_buf[i] = 0;
	buf.addr = (u64)rng_buf; /* identity map: virtual = physical */
	buf.len = RNG_BYTES;
	buf.writable = 1;
	posted = virtq_add(&vq, &buf, 1);
	if (posted < 0) {
		rng_error("no free descriptor");
		return;
	}
	virtq_notify(&vq);
	err = virtq_wait(&vq, &head, &len);
	if (err) {
		rng_error(err);
		return;
	}
	if (head != (u32)posted) {
		rng_error("used id is not the posted buffer");
		return;
	}
	if (len > RNG_BYTES) {
		rng_error("used length exceeds the buffer");
		return;
	}

	serial_puts("TRIAD-RNG ");
	serial_u64(len);
	serial_putc(' ');
	for (u32 i = 0; i < len; i++) {
		serial_putc(digits[rng_buf[i] >> 4]);
		serial_putc(digits[rng_buf[i] & 0xf]);
	}
	serial_putc('\n');
}
