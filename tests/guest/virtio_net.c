/*
 * virtio_net.c - virtio-net driver of the test guest (virtio spec 1.2 §5.1).
 *
 * The first net device (ID 1) only, with receiveq 0 and transmitq 1: no
 * control queue, no multiqueue, no checksum/segmentation offloads and no
 * MRG_RXBUF, so every frame travels whole in one buffer behind a 12-byte
 * virtio_net_hdr. RX_BUFS receive buffers stay posted (each is re-posted
 * as soon as the stack is done with it); one frame is sent at a time and
 * waited for. Everything is polled, like the rest of the virtio code.
 */
#include "net.h"

/* Feature bits (§5.1.3): only these two, plus VERSION_1. */
#define VIRTIO_NET_F_MAC (1UL << 5)
#define VIRTIO_NET_F_STATUS (1UL << 16)

/* Configuration space (offsets from 0x100). */
#define NET_CFG_MAC 0    /* u8[6] */
#define NET_CFG_STATUS 6 /* u16 */
#define VIRTIO_NET_S_LINK_UP 1

#define RXQ 0
#define TXQ 1
#define RX_BUFS 8

/* Used when the device does not offer VIRTIO_NET_F_MAC. */
static const u8 default_mac[ETH_ALEN] = { 0x52, 0x54, 0x00, 0x12, 0x34, 0x56 };

/* Not loaded, not zeroed at boot: vnet_setup initialises what it uses. */
static struct net_buf rx_bufs[RX_BUFS] __attribute__((section(".noinit"), aligned(4096)));
static struct virtq rxq __attribute__((section(".noinit")));
static struct virtq txq __attribute__((section(".noinit")));
/* The buffer each posted receive descriptor (chain head) points to. */
static struct net_buf *rx_posted[VIRTQ_MAX_SIZE] __attribute__((section(".noinit")));

_Static_assert(sizeof(struct net_buf) >= VNET_HDR_LEN + ETH_FRAME_MAX,
	       "a receive buffer must hold a whole frame");

static void rx_post(struct net_buf *buf)
{
	struct virtq_buf vb = { (u64)buf, sizeof(*buf), 1 }; /* identity map */
	int head = virtq_add(&rxq, &vb, 1);

	/* Cannot fail: at most RX_BUFS <= rxq.size buffers are ever posted. */
	if (head >= 0)
		rx_posted[head] = buf;
}

const char *vnet_setup(struct virtio_dev *dev, u8 mac[ETH_ALEN], int *link)
{
	const char *err;
	u32 n;

	err = virtio_init(dev, VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS);
	if (err)
		return err; /* virtio_init sets FAILED itself */
	err = virtq_setup(dev, &rxq, RXQ);
	if (!err)
		err = virtq_setup(dev, &txq, TXQ);
	if (!err)
		err = virtio_driver_ok(dev);
	if (err) {
		virtio_fail(dev);
		return err;
	}

	if (dev->features & VIRTIO_NET_F_MAC)
		virtio_config_read_bytes(dev, NET_CFG_MAC, mac, ETH_ALEN);
	else
		memcpy(mac, default_mac, ETH_ALEN);
	*link = VNET_LINK_UNKNOWN;
	if (dev->features & VIRTIO_NET_F_STATUS)
		*link = virtio_config_read16(dev, NET_CFG_STATUS) & VIRTIO_NET_S_LINK_UP ?
				VNET_LINK_UP : VNET_LINK_DOWN;

	/* Receive buffers go in after DRIVER_OK, with one notification. */
	n = rxq.size < RX_BUFS ? rxq.size : RX_BUFS;
	for (u32 i = 0; i < n; i++)
		rx_post(&rx_bufs[i]);
	virtq_notify(&rxq);
	return NULL;
}

const char *vnet_recv(struct net_buf **buf, u32 *len)
{
	u32 head, used;
	int r = virtq_poll(&rxq, &head, &used);

	*buf = NULL;
	if (r == 0)
		return NULL;
	if (r < 0)
		return "bad used id";
	if (used > sizeof(struct net_buf))
		return "used length exceeds the buffer";
	*buf = rx_posted[head];
	*len = used > VNET_HDR_LEN ? used - VNET_HDR_LEN : 0;
	return NULL;
}

void vnet_recv_done(struct net_buf *buf)
{
	rx_post(buf);
	virtq_notify(&rxq);
}

const char *vnet_send(struct net_buf *buf, u32 len)
{
	struct virtq_buf vb;
	const char *err;
	u32 head, used;
	int posted;

	if (len < ETH_ZLEN) {
		memset(buf->frame + len, 0, ETH_ZLEN - len);
		len = ETH_ZLEN;
	}
	memset(buf->hdr, 0, VNET_HDR_LEN);
	vb.addr = (u64)buf;
	vb.len = VNET_HDR_LEN + len;
	vb.writable = 0;
	posted = virtq_add(&txq, &vb, 1);
	if (posted < 0)
		return "no free descriptors";
	virtq_notify(&txq);
	err = virtq_wait(&txq, &head, &used);
	if (err)
		return err;
	if (head != (u32)posted)
		return "used id is not the posted frame";
	return NULL;
}
