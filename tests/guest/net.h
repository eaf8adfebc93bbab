/*
 * net.h - the test guest's virtio-net driver (virtio_net.c) and its small
 * polled IPv4 stack (net.c: ARP, ICMP echo, UDP echo on port 7, DHCP
 * client), the `triad.net=dhcp` / `triad.ip=` step of README.md.
 */
#ifndef TRIAD_GUEST_NET_H
#define TRIAD_GUEST_NET_H

#include "virtio.h"

/* struct virtio_net_hdr with VIRTIO_F_VERSION_1 (spec 1.2 §5.1.6): 12
 * bytes in front of every frame, all zero on transmit, ignored on receive
 * (no offloads are negotiated). */
#define VNET_HDR_LEN 12
#define ETH_ALEN 6
#define ETH_HLEN 14
#define ETH_ZLEN 60       /* shorter frames are padded with zeros */
#define ETH_FRAME_MAX 1514 /* without MRG_RXBUF a frame fills one buffer */

/* One rx or tx buffer: header + frame (1526 bytes needed, 2 KiB slots). */
#define NET_BUF_SIZE 2048
struct net_buf {
	u8 hdr[VNET_HDR_LEN];
	u8 frame[NET_BUF_SIZE - VNET_HDR_LEN];
};

/* Link state from the config space (VIRTIO_NET_F_STATUS). */
#define VNET_LINK_UNKNOWN (-1)
#define VNET_LINK_DOWN 0
#define VNET_LINK_UP 1

/* virtio_net.c. Brings dev up (queues 0 = receiveq, 1 = transmitq), posts
 * the receive buffers, returns the MAC and link state. NULL or a reason. */
const char *vnet_setup(struct virtio_dev *dev, u8 mac[ETH_ALEN], int *link);
/* Non-blocking: *buf = a received frame of *len bytes at (*buf)->frame, to
 * be handed back with vnet_recv_done, or NULL if none. NULL or a reason. */
const char *vnet_recv(struct net_buf **buf, u32 *len);
void vnet_recv_done(struct net_buf *buf);
/* Sends buf->frame[0, len) (len <= ETH_FRAME_MAX) and waits until the
 * device has used it. NULL or a reason. */
const char *vnet_send(struct net_buf *buf, u32 len);

/* net.c. The `triad.ip=` value (A.B.C.D/NN[,gw=E.F.G.H]): 0 if malformed. */
int net_parse_static(const char *s, usize len);
/* The `triad.ping=` value (A.B.C.D): 0 if malformed. Once the network is up
 * the guest pings it every 500 ms and prints TRIAD-PING-REPLY A.B.C.D seq=N
 * for the first 3 replies. */
int net_parse_ping(const char *s, usize len);
/* The net step: only returns after a TRIAD-NET-ERROR line. */
#define NET_MODE_NONE 0
#define NET_MODE_DHCP 1   /* triad.net=dhcp */
#define NET_MODE_STATIC 2 /* triad.ip=... (wins over triad.net=dhcp) */
void net_run(int mode);

#endif
