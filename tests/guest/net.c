/*
 * net.c - a minimal polled IPv4 stack on top of virtio_net.c: Ethernet II,
 * ARP (answers for our address, a tiny cache, resolution with a timeout),
 * IPv4 without fragments or options, ICMP echo, UDP echo on port 7, and a
 * DHCP client (RFC 2131: DISCOVER, OFFER, REQUEST, ACK). The `triad.net=dhcp`
 * / `triad.ip=` step of README.md: get an address, then answer ARP, ping and
 * UDP port 7 forever, printing nothing per packet.
 *
 * Headers are packed structs whose multi-byte fields are big-endian on the
 * wire; addresses are kept in host order (10.0.0.1 = 0x0a000001) inside.
 * Frames are built in one of two transmit buffers: tx_ip for IP packets and
 * tx_arp for ARP, so resolving a next hop never clobbers a packet that is
 * half built.
 */
#include "net.h"

#define ETH_P_IP 0x0800
#define ETH_P_ARP 0x0806
#define IP_HLEN 20
#define IP_PROTO_ICMP 1
#define IP_PROTO_UDP 17
#define IP_BROADCAST 0xffffffffu
#define UDP_HLEN 8
#define ICMP_HLEN 8
#define ICMP_ECHO_REPLY 0
#define ICMP_ECHO_REQUEST 8
#define ARP_REQUEST 1
#define ARP_REPLY 2
#define UDP_PORT_ECHO 7
#define DHCP_SERVER_PORT 67
#define DHCP_CLIENT_PORT 68
/* Largest IP payload we build: the frame minus Ethernet and IP headers. */
#define IP_PAYLOAD_MAX (ETH_FRAME_MAX - ETH_HLEN - IP_HLEN)

#define ARP_ENTRIES 4
#define ARP_TRIES 3
#define ARP_WAIT_MS 300   /* per request */
#define DHCP_TOTAL_MS 10000
#define DHCP_WAIT_MS 1000 /* for an OFFER, then for an ACK */

/* DHCP (RFC 2131 §2, RFC 2132). */
#define DHCP_MAGIC 0x63825363u
#define DHCP_BOOTREQUEST 1
#define DHCP_BOOTREPLY 2
#define DHCP_FLAG_BROADCAST 0x8000
#define DHCP_OPT_PAD 0
#define DHCP_OPT_MASK 1
#define DHCP_OPT_ROUTER 3
#define DHCP_OPT_DNS 6
#define DHCP_OPT_REQ_IP 50
#define DHCP_OPT_MSG_TYPE 53
#define DHCP_OPT_SERVER_ID 54
#define DHCP_OPT_PARAMS 55
#define DHCP_OPT_END 255
#define DHCP_DISCOVER 1
#define DHCP_OFFER 2
#define DHCP_REQUEST 3
#define DHCP_ACK 5
#define DHCP_NAK 6

struct eth_hdr {
	u8 dst[ETH_ALEN];
	u8 src[ETH_ALEN];
	u16 type;
} __attribute__((packed));

struct arp_pkt {
	u16 htype; /* 1: Ethernet */
	u16 ptype; /* ETH_P_IP */
	u8 hlen, plen;
	u16 op;
	u8 sha[ETH_ALEN];
	u32 spa;
	u8 tha[ETH_ALEN];
	u32 tpa;
} __attribute__((packed));

struct ip_hdr {
	u8 ver_ihl; /* 0x45: version 4, 5 words, no options */
	u8 tos;
	u16 len;
	u16 id;
	u16 frag; /* flags and fragment offset */
	u8 ttl;
	u8 proto;
	u16 csum;
	u32 src;
	u32 dst;
} __attribute__((packed));

struct udp_hdr {
	u16 sport, dport, len, csum;
} __attribute__((packed));

struct icmp_hdr {
	u8 type, code;
	u16 csum;
	u16 id, seq;
} __attribute__((packed));

/* The fixed part; what we send is padded to the BOOTP minimum of 300. */
struct dhcp_msg {
	u8 op, htype, hlen, hops;
	u32 xid;
	u16 secs, flags;
	u32 ciaddr, yiaddr, siaddr, giaddr;
	u8 chaddr[16];
	u8 sname[64];
	u8 file[128];
	u32 magic;
	u8 options[];
} __attribute__((packed));
#define DHCP_FIXED_LEN 240
#define DHCP_SEND_LEN 300

_Static_assert(sizeof(struct eth_hdr) == ETH_HLEN, "eth_hdr");
_Static_assert(sizeof(struct arp_pkt) == 28, "arp_pkt");
_Static_assert(sizeof(struct ip_hdr) == IP_HLEN, "ip_hdr");
_Static_assert(sizeof(struct dhcp_msg) == DHCP_FIXED_LEN, "dhcp_msg");

/* What net_poll lets through besides ARP. */
#define POLL_ARP 0   /* only ARP (while resolving a next hop) */
#define POLL_DHCP 1  /* ARP and DHCP replies (while getting a lease) */
#define POLL_SERVE 2 /* ARP, ICMP echo, UDP echo */

struct arp_entry {
	u32 ip;
	u8 mac[ETH_ALEN];
};

struct dhcp_lease {
	u32 ip, mask, router, server;
};

/* All state: not in .bss (keep it empty), set up by net_run. */
static struct {
	u8 mac[ETH_ALEN];
	u32 ip, mask, gw; /* ip 0 until configured; gw 0: none */
	u16 ip_id;
	struct arp_entry arp[ARP_ENTRIES];
	u32 arp_next;
	/* DHCP exchange in progress. */
	u32 xid;
	u8 dhcp_want; /* DHCP_OFFER or DHCP_ACK */
	u8 dhcp_got;  /* 0, or the matching reply's type */
	struct dhcp_lease offer, ack;
} st __attribute__((section(".noinit")));
static struct net_buf tx_ip __attribute__((section(".noinit"), aligned(64)));
static struct net_buf tx_arp __attribute__((section(".noinit"), aligned(64)));

/* triad.ip=: parsed while the command line is read. */
static struct {
	u32 ip, prefix, gw;
} static_cfg __attribute__((section(".data"))) = { 0, 0, 0 };

/* triad.ping=: the address to ping once the network is up, and how it goes. */
#define PING_ID 0x7472 /* "tr" */
#define PING_EVERY_MS 500
#define PING_REPLIES 3 /* replies reported, then it stops */
static struct {
	u32 ip, seq, replies;
	u64 last;
} ping __attribute__((section(".data"))) = { 0, 0, 0, 0 };

static const u8 broadcast_mac[ETH_ALEN] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };

/* ---- Helpers ------------------------------------------------------------- */

static inline u16 be16(u16 v) { return __builtin_bswap16(v); }
static inline u32 be32(u32 v) { return __builtin_bswap32(v); }

static int mac_eq(const u8 *a, const u8 *b)
{
	for (int i = 0; i < ETH_ALEN; i++)
		if (a[i] != b[i])
			return 0;
	return 1;
}

/* Unaligned little-endian loads that may alias any buffer. */
typedef u32 u32_una __attribute__((may_alias, aligned(1)));
typedef u16 u16_una __attribute__((may_alias, aligned(1)));

/*
 * Internet checksum (RFC 1071): returns sum plus the data's 16-bit
 * big-endian words. The sum is byte-order independent (RFC 1071 §2), so the
 * loop adds little-endian 32-bit words (4 bytes per iteration counts at
 * ~3 M instructions/s), folds them to 16 bits and swaps the bytes once.
 */
static u32 csum_add(u32 sum, const void *data, u32 len)
{
	const u8 *p = data;
	u64 acc = 0;

	for (; len >= 4; p += 4, len -= 4)
		acc += *(const u32_una *)p;
	if (len >= 2) {
		acc += *(const u16_una *)p;
		p += 2;
		len -= 2;
	}
	if (len)
		acc += *p; /* the odd last byte is the high half of a BE word */
	while (acc >> 16)
		acc = (acc & 0xffff) + (acc >> 16);
	return sum + be16((u16)acc);
}

static u16 csum_fold(u32 sum)
{
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (u16)~sum;
}

/* The UDP pseudo-header's share of the checksum. */
static u32 csum_pseudo(u32 src, u32 dst, u8 proto, u32 len)
{
	return (src >> 16) + (src & 0xffff) + (dst >> 16) + (dst & 0xffff) + proto + len;
}

static void put_ip(u32 ip)
{
	for (int shift = 24; shift >= 0; shift -= 8) {
		serial_u64(ip >> shift & 0xff);
		if (shift)
			serial_putc('.');
	}
}

static void put_mac(const u8 *mac)
{
	static const char digits[] = "0123456789abcdef";

	for (int i = 0; i < ETH_ALEN; i++) {
		if (i)
			serial_putc(':');
		serial_putc(digits[mac[i] >> 4]);
		serial_putc(digits[mac[i] & 0xf]);
	}
}

/* TRIAD-NET-ERROR <what> <reason>; callers then return -1. */
static int net_error(const char *what, const char *reason)
{
	serial_puts("TRIAD-NET-ERROR ");
	serial_puts(what);
	if (reason) {
		serial_putc(' ');
		serial_puts(reason);
	}
	serial_putc('\n');
	return -1;
}

static int send_frame(struct net_buf *buf, u32 len)
{
	const char *err = vnet_send(buf, len);

	return err ? net_error("tx", err) : 0;
}

static void eth_fill(struct net_buf *buf, const u8 *dst, u16 type)
{
	struct eth_hdr *eth = (struct eth_hdr *)buf->frame;

	memcpy(eth->dst, dst, ETH_ALEN);
	memcpy(eth->src, st.mac, ETH_ALEN);
	eth->type = be16(type);
}

static int net_poll(int mode);

/* ---- ARP ----------------------------------------------------------------- */

static int arp_lookup(u32 ip, u8 *mac)
{
	for (int i = 0; i < ARP_ENTRIES; i++)
		if (st.arp[i].ip == ip && ip) {
			memcpy(mac, st.arp[i].mac, ETH_ALEN);
			return 1;
		}
	return 0;
}

static void arp_learn(u32 ip, const u8 *mac)
{
	struct arp_entry *e = NULL;

	for (int i = 0; i < ARP_ENTRIES && !e; i++)
		if (st.arp[i].ip == ip)
			e = &st.arp[i];
	if (!e)
		e = &st.arp[st.arp_next++ % ARP_ENTRIES];
	e->ip = ip;
	memcpy(e->mac, mac, ETH_ALEN);
}

static int arp_send(u16 op, const u8 *dst_mac, const u8 *tha, u32 tpa)
{
	struct arp_pkt *a = (struct arp_pkt *)(tx_arp.frame + ETH_HLEN);

	eth_fill(&tx_arp, dst_mac, ETH_P_ARP);
	a->htype = be16(1);
	a->ptype = be16(ETH_P_IP);
	a->hlen = ETH_ALEN;
	a->plen = 4;
	a->op = be16(op);
	memcpy(a->sha, st.mac, ETH_ALEN);
	a->spa = be32(st.ip);
	memcpy(a->tha, tha, ETH_ALEN);
	a->tpa = be32(tpa);
	return send_frame(&tx_arp, ETH_HLEN + sizeof(*a));
}

/* Requests for our address are answered; the sender of any request or
 * reply aimed at us goes into the cache (RFC 826, minus the "update
 * entries for others" part). Nothing happens before we have an address. */
static int arp_input(const u8 *p, u32 len)
{
	const struct arp_pkt *a = (const void *)p;
	u32 spa, tpa;

	if (len < sizeof(*a) || !st.ip || a->htype != be16(1) ||
	    a->ptype != be16(ETH_P_IP) || a->hlen != ETH_ALEN || a->plen != 4)
		return 0;
	spa = be32(a->spa);
	tpa = be32(a->tpa);
	if (tpa != st.ip)
		return 0;
	if (spa)
		arp_learn(spa, a->sha);
	if (a->op == be16(ARP_REQUEST))
		return arp_send(ARP_REPLY, a->sha, a->sha, spa);
	return 0;
}

/* The MAC for next hop ip: from the cache, or up to ARP_TRIES broadcast
 * requests ARP_WAIT_MS apart. 1 found, 0 no answer, -1 fatal. */
static int arp_resolve(u32 ip, u8 *mac)
{
	static const u8 zero_mac[ETH_ALEN] = { 0 };

	if (ip == IP_BROADCAST) {
		memcpy(mac, broadcast_mac, ETH_ALEN);
		return 1;
	}
	for (int try = 0; try < ARP_TRIES; try++) {
		u64 start;

		if (arp_lookup(ip, mac))
			return 1;
		if (arp_send(ARP_REQUEST, broadcast_mac, zero_mac, ip) < 0)
			return -1;
		start = rdtsc();
		while (rdtsc() - start < ARP_WAIT_MS * TSC_PER_MS) {
			if (net_poll(POLL_ARP) < 0)
				return -1;
			if (arp_lookup(ip, mac))
				return 1;
		}
	}
	return 0;
}

/* ---- IPv4, ICMP, UDP ----------------------------------------------------- */

static u8 *tx_l4(void)
{
	return tx_ip.frame + ETH_HLEN + IP_HLEN;
}

/* Sends the l4len payload already in tx_l4() to dst. A next hop that does
 * not answer ARP just drops the packet (0); -1 is fatal. */
static int ip_send(u32 dst, u8 proto, u32 l4len)
{
	struct ip_hdr *ip = (struct ip_hdr *)(tx_ip.frame + ETH_HLEN);
	u32 hop = dst;
	u8 mac[ETH_ALEN];
	int r;

	if (dst != IP_BROADCAST && st.gw && (dst & st.mask) != (st.ip & st.mask))
		hop = st.gw;
	r = arp_resolve(hop, mac);
	if (r <= 0)
		return r;
	ip->ver_ihl = 0x45;
	ip->tos = 0;
	ip->len = be16((u16)(IP_HLEN + l4len));
	ip->id = be16(st.ip_id++);
	ip->frag = 0;
	ip->ttl = 64;
	ip->proto = proto;
	ip->csum = 0;
	ip->src = be32(st.ip);
	ip->dst = be32(dst);
	ip->csum = be16(csum_fold(csum_add(0, ip, IP_HLEN)));
	eth_fill(&tx_ip, mac, ETH_P_IP);
	return send_frame(&tx_ip, ETH_HLEN + IP_HLEN + l4len);
}

/* The UDP header for the len payload bytes already behind it in tx_l4(),
 * with the checksum (from st.ip, which is 0.0.0.0 during DHCP). */
static int udp_send(u32 dst, u16 sport, u16 dport, u32 len)
{
	struct udp_hdr *u = (struct udp_hdr *)tx_l4();
	u32 ulen = UDP_HLEN + len;
	u16 sum;

	u->sport = be16(sport);
	u->dport = be16(dport);
	u->len = be16((u16)ulen);
	u->csum = 0;
	sum = csum_fold(csum_add(csum_pseudo(st.ip, dst, IP_PROTO_UDP, ulen), u, ulen));
	u->csum = be16(sum ? sum : 0xffff);
	return ip_send(dst, IP_PROTO_UDP, ulen);
}

static int icmp_input(u32 src, const u8 *p, u32 len)
{
	struct icmp_hdr *reply = (struct icmp_hdr *)tx_l4();
	const struct icmp_hdr *ic = (const void *)p;

	if (len < ICMP_HLEN || len > IP_PAYLOAD_MAX || ic->code != 0 ||
	    csum_fold(csum_add(0, p, len)) != 0)
		return 0;
	if (ic->type == ICMP_ECHO_REPLY && ping.ip && src == ping.ip &&
	    ic->id == be16(PING_ID) && ping.replies < PING_REPLIES) {
		ping.replies++;
		serial_puts("TRIAD-PING-REPLY ");
		put_ip(src);
		serial_puts(" seq=");
		serial_u64(be16(ic->seq));
		serial_putc('\n');
		return 0;
	}
	if (ic->type != ICMP_ECHO_REQUEST)
		return 0;
	/* Same id, sequence number and data; type 0 and a new checksum. */
	memcpy(reply, p, len);
	reply->type = ICMP_ECHO_REPLY;
	reply->csum = 0;
	reply->csum = be16(csum_fold(csum_add(0, reply, len)));
	return ip_send(src, IP_PROTO_ICMP, len);
}

static int dhcp_input(u32 src, const u8 *p, u32 len);

static int udp_input(u32 src, u32 dst, const u8 *p, u32 len, int mode)
{
	const struct udp_hdr *u = (const void *)p;
	u32 ulen;

	if (len < UDP_HLEN)
		return 0;
	ulen = be16(u->len);
	if (ulen < UDP_HLEN || ulen > len)
		return 0;
	/* Checksum 0: the sender did not compute one. */
	if (u->csum && csum_fold(csum_add(csum_pseudo(src, dst, IP_PROTO_UDP, ulen), p, ulen)))
		return 0;
	if (mode == POLL_DHCP && u->sport == be16(DHCP_SERVER_PORT) &&
	    u->dport == be16(DHCP_CLIENT_PORT))
		return dhcp_input(src, p + UDP_HLEN, ulen - UDP_HLEN);
	if (mode == POLL_SERVE && dst == st.ip && u->dport == be16(UDP_PORT_ECHO)) {
		memcpy(tx_l4() + UDP_HLEN, p + UDP_HLEN, ulen - UDP_HLEN);
		return udp_send(src, UDP_PORT_ECHO, be16(u->sport), ulen - UDP_HLEN);
	}
	return 0;
}

static int ip_input(const u8 *p, u32 len, int mode)
{
	const struct ip_hdr *ip = (const void *)p;
	u32 tot, src, dst;

	/* No options, no fragments (MF set or a non-zero offset). */
	if (len < IP_HLEN || ip->ver_ihl != 0x45 || (be16(ip->frag) & 0x3fff))
		return 0;
	tot = be16(ip->len);
	if (tot < IP_HLEN || tot > len || csum_fold(csum_add(0, ip, IP_HLEN)) != 0)
		return 0;
	src = be32(ip->src);
	dst = be32(ip->dst);
	if (ip->proto == IP_PROTO_UDP)
		return udp_input(src, dst, p + IP_HLEN, tot - IP_HLEN, mode);
	if (ip->proto == IP_PROTO_ICMP && mode == POLL_SERVE && dst == st.ip)
		return icmp_input(src, p + IP_HLEN, tot - IP_HLEN);
	return 0;
}

/* Sends the next echo request to ping.ip when one is due. 0, or -1 fatal. */
static int ping_tick(void)
{
	struct icmp_hdr *req = (struct icmp_hdr *)tx_l4();

	if (!ping.ip || ping.replies >= PING_REPLIES ||
	    (ping.seq && rdtsc() - ping.last < PING_EVERY_MS * TSC_PER_MS))
		return 0;
	ping.last = rdtsc();
	memset(req, 0, ICMP_HLEN + 8);
	req->type = ICMP_ECHO_REQUEST;
	req->id = be16(PING_ID);
	req->seq = be16((u16)++ping.seq);
	memcpy((u8 *)req + ICMP_HLEN, "triadpng", 8);
	req->csum = be16(csum_fold(csum_add(0, req, ICMP_HLEN + 8)));
	return ip_send(ping.ip, IP_PROTO_ICMP, ICMP_HLEN + 8) < 0 ? -1 : 0;
}

/* Handles at most one received frame. 0 (also: nothing there), -1 fatal. */
static int net_poll(int mode)
{
	struct net_buf *buf;
	const struct eth_hdr *eth;
	const char *err;
	u32 len;
	int r = 0;

	err = vnet_recv(&buf, &len);
	if (err)
		return net_error("rx", err);
	if (!buf)
		return 0;
	eth = (const struct eth_hdr *)buf->frame;
	if (len >= ETH_HLEN &&
	    (mac_eq(eth->dst, st.mac) || mac_eq(eth->dst, broadcast_mac))) {
		if (eth->type == be16(ETH_P_ARP))
			r = arp_input(buf->frame + ETH_HLEN, len - ETH_HLEN);
		else if (eth->type == be16(ETH_P_IP) && mode != POLL_ARP)
			r = ip_input(buf->frame + ETH_HLEN, len - ETH_HLEN, mode);
	}
	vnet_recv_done(buf);
	return r;
}

/* ---- DHCP ---------------------------------------------------------------- */

static int dhcp_send(u8 type)
{
	struct dhcp_msg *m = (struct dhcp_msg *)(tx_l4() + UDP_HLEN);
	u8 *o = m->options;

	memset(m, 0, DHCP_SEND_LEN);
	m->op = DHCP_BOOTREQUEST;
	m->htype = 1;
	m->hlen = ETH_ALEN;
	m->xid = be32(st.xid);
	/* Replies as broadcasts: a server unicasting to the offered address
	 * must first get it into its ARP cache, which can take seconds. */
	m->flags = be16(DHCP_FLAG_BROADCAST);
	memcpy(m->chaddr, st.mac, ETH_ALEN);
	m->magic = be32(DHCP_MAGIC);
	*o++ = DHCP_OPT_MSG_TYPE;
	*o++ = 1;
	*o++ = type;
	if (type == DHCP_REQUEST) {
		u32 req = be32(st.offer.ip), server = be32(st.offer.server);

		*o++ = DHCP_OPT_REQ_IP;
		*o++ = 4;
		memcpy(o, &req, 4);
		o += 4;
		*o++ = DHCP_OPT_SERVER_ID;
		*o++ = 4;
		memcpy(o, &server, 4);
		o += 4;
	}
	*o++ = DHCP_OPT_PARAMS;
	*o++ = 3;
	*o++ = DHCP_OPT_MASK;
	*o++ = DHCP_OPT_ROUTER;
	*o++ = DHCP_OPT_DNS;
	*o = DHCP_OPT_END;
	return udp_send(IP_BROADCAST, DHCP_CLIENT_PORT, DHCP_SERVER_PORT, DHCP_SEND_LEN);
}

/* A reply to our xid and MAC: remembered in st.offer or st.ack when it is
 * the type we wait for (an ACK or NAK must come from the offering server). */
static int dhcp_input(u32 src, const u8 *p, u32 len)
{
	const struct dhcp_msg *m = (const void *)p;
	struct dhcp_lease l = { 0, 0, 0, 0 };
	u8 type = 0;

	if (len < DHCP_FIXED_LEN || m->op != DHCP_BOOTREPLY || be32(m->xid) != st.xid ||
	    !mac_eq(m->chaddr, st.mac) || m->magic != be32(DHCP_MAGIC))
		return 0;
	for (u32 i = DHCP_FIXED_LEN; i < len && p[i] != DHCP_OPT_END;) {
		u8 opt = p[i], olen;
		u32 v = 0;

		if (opt == DHCP_OPT_PAD) {
			i++;
			continue;
		}
		if (i + 2 > len || i + 2 + p[i + 1] > len)
			break;
		olen = p[i + 1];
		for (u32 k = 0; k < 4 && k < olen; k++)
			v = v << 8 | p[i + 2 + k];
		if (opt == DHCP_OPT_MSG_TYPE && olen >= 1)
			type = p[i + 2];
		else if (opt == DHCP_OPT_SERVER_ID && olen >= 4)
			l.server = v;
		else if (opt == DHCP_OPT_MASK && olen >= 4)
			l.mask = v;
		else if (opt == DHCP_OPT_ROUTER && olen >= 4)
			l.router = v; /* the first router */
		i += 2u + olen;
	}
	l.ip = be32(m->yiaddr);
	if (!l.server)
		l.server = src;
	if (st.dhcp_want == DHCP_OFFER && type == DHCP_OFFER && l.ip) {
		st.offer = l;
		st.dhcp_got = type;
	} else if (st.dhcp_want == DHCP_ACK && (type == DHCP_ACK || type == DHCP_NAK) &&
		   l.server == st.offer.server) {
		st.ack = l;
		st.dhcp_got = type;
	}
	return 0;
}

/* Sends a DHCP message and polls for up to DHCP_WAIT_MS for the reply
 * `want`. 1 got it (or a NAK: see st.dhcp_got), 0 no answer, -1 fatal. */
static int dhcp_exchange(u8 type, u8 want)
{
	u64 start = rdtsc();

	st.dhcp_want = want;
	st.dhcp_got = 0;
	if (dhcp_send(type) < 0)
		return -1;
	while (rdtsc() - start < DHCP_WAIT_MS * TSC_PER_MS) {
		if (net_poll(POLL_DHCP) < 0)
			return -1;
		if (st.dhcp_got)
			return 1;
	}
	return 0;
}

/* Classful default when the server sends no subnet mask. */
static u32 default_mask(u32 ip)
{
	if (ip >> 31 == 0)
		return 0xff000000u;
	if (ip >> 30 == 2)
		return 0xffff0000u;
	return 0xffffff00u;
}

/* DISCOVER (every DHCP_WAIT_MS while nothing is offered), REQUEST, ACK;
 * gives up after DHCP_TOTAL_MS. Fills st.ip/mask/gw; 0 or -1. */
static int dhcp_run(void)
{
	const char *reason = "no offer";
	u64 start = rdtsc();

	st.xid = (u32)rdtsc() ^ (u32)st.mac[4] << 8 ^ st.mac[5];
	while (rdtsc() - start < DHCP_TOTAL_MS * TSC_PER_MS) {
		int r = dhcp_exchange(DHCP_DISCOVER, DHCP_OFFER);

		if (r < 0)
			return -1;
		if (r == 0)
			continue;
		r = dhcp_exchange(DHCP_REQUEST, DHCP_ACK);
		if (r < 0)
			return -1;
		if (r > 0 && st.dhcp_got == DHCP_ACK) {
			st.ip = st.ack.ip;
			st.mask = st.ack.mask ? st.ack.mask :
				  st.offer.mask ? st.offer.mask : default_mask(st.ip);
			st.gw = st.ack.router ? st.ack.router : st.offer.router;
			return 0;
		}
		reason = r ? "nak" : "no ack";
	}
	return net_error("dhcp", reason);
}

/* ---- Static configuration ------------------------------------------------ */

/* Decimal at s[*i..len) up to max; -1 if none or too big. */
static long parse_dec(const char *s, usize len, usize *i, u32 max)
{
	usize start = *i;
	u32 v = 0;

	while (*i < len && s[*i] >= '0' && s[*i] <= '9' && *i - start < 3)
		v = v * 10 + (u32)(s[(*i)++] - '0');
	return *i > start && v <= max ? (long)v : -1;
}

static int parse_ipv4(const char *s, usize len, usize *i, u32 *ip)
{
	*ip = 0;
	for (int k = 0; k < 4; k++) {
		long b;

		if (k && (*i >= len || s[(*i)++] != '.'))
			return 0;
		b = parse_dec(s, len, i, 255);
		if (b < 0)
			return 0;
		*ip = *ip << 8 | (u32)b;
	}
	return 1;
}

int net_parse_ping(const char *s, usize len)
{
	usize i = 0;
	u32 ip;

	if (!parse_ipv4(s, len, &i, &ip) || !ip || i != len)
		return 0;
	ping.ip = ip;
	return 1;
}

int net_parse_static(const char *s, usize len)
{
	static const char gw_key[] = ",gw=";
	usize i = 0;
	u32 ip, gw = 0;
	long prefix;

	if (!parse_ipv4(s, len, &i, &ip) || !ip || i >= len || s[i++] != '/')
		return 0;
	prefix = parse_dec(s, len, &i, 32);
	if (prefix < 1)
		return 0;
	if (i < len) {
		for (usize k = 0; gw_key[k]; k++)
			if (i >= len || s[i++] != gw_key[k])
				return 0;
		if (!parse_ipv4(s, len, &i, &gw) || !gw)
			return 0;
	}
	if (i != len)
		return 0;
	static_cfg.ip = ip;
	static_cfg.prefix = (u32)prefix;
	static_cfg.gw = gw;
	return 1;
}

/* ---- The step ------------------------------------------------------------ */

void net_run(int mode)
{
	struct virtio_dev *dev = virtio_find(VIRTIO_ID_NET, 0);
	const char *err;
	u32 prefix;
	int link;

	if (!dev) {
		net_error("no device", NULL);
		return;
	}
	memset(&st, 0, sizeof(st));
	err = vnet_setup(dev, st.mac, &link);
	if (err) {
		net_error("setup", err);
		return;
	}
	serial_puts("TRIAD-NET ");
	serial_hex(dev->base);
	serial_puts(" mac=");
	put_mac(st.mac);
	serial_puts(" link=");
	serial_line(link == VNET_LINK_UP ? "up" : link == VNET_LINK_DOWN ? "down" : "unknown");

	if (mode == NET_MODE_STATIC) {
		st.ip = static_cfg.ip;
		st.mask = ~0u << (32 - static_cfg.prefix);
		st.gw = static_cfg.gw;
	} else if (dhcp_run() < 0) {
		return;
	}
	for (prefix = 0; prefix < 32 && st.mask >> (31 - prefix) & 1; prefix++)
		;
	serial_puts("TRIAD-NET-IP ");
	put_ip(st.ip);
	serial_putc('/');
	serial_u64(prefix);
	serial_putc('\n');
	if (st.gw) {
		u8 mac[ETH_ALEN];
		int r;

		serial_puts("TRIAD-NET-GW ");
		put_ip(st.gw);
		serial_putc('\n');
		/* Resolve the gateway up front (and say whether it answered). */
		r = arp_resolve(st.gw, mac);
		if (r < 0)
			return;
		if (r) {
			serial_puts("TRIAD-NET-ARP ");
			put_ip(st.gw);
			serial_putc(' ');
			put_mac(mac);
			serial_putc('\n');
		} else {
			serial_puts("TRIAD-WARN net: gateway ");
			put_ip(st.gw);
			serial_line(" does not answer ARP");
		}
	}

	serial_line("TRIAD-NET-READY");
	for (;;)
		if (net_poll(POLL_SERVE) < 0 || ping_tick() < 0)
			return;
}
