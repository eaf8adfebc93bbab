/*
 * main.c - what the test guest does once it is in 64-bit C (the contract in
 * README.md): announce itself on COM1, report how it was booted, the RAM
 * it was given and its command line, then act on the `triad.*` tokens.
 */
#include "guest.h"
#include "virtio.h"
#include "net.h"

/* struct hvm_start_info (Xen public/arch-x86/hvm/start_info.h). */
#define HVM_START_MAGIC 0x336ec578u
struct hvm_start_info {
	u32 magic;
	u32 version;
	u32 flags;
	u32 nr_modules;
	u64 modlist_paddr;
	u64 cmdline_paddr;
	u64 rsdp_paddr;
	u64 memmap_paddr;   /* version >= 1 */
	u32 memmap_entries; /* version >= 1 */
	u32 reserved;
};

struct hvm_memmap_entry {
	u64 addr;
	u64 size;
	u32 type;
	u32 reserved;
};

/* The parts of struct boot_params (the Linux "zero page") we read. */
#define BP_E820_ENTRIES 0x1e8 /* u8 */
#define BP_CMD_LINE_PTR 0x228 /* u32, in the setup header */
#define BP_E820_TABLE 0x2d0   /* struct boot_e820_entry[128] */
#define BP_E820_MAX 128

struct boot_e820_entry {
	u64 addr;
	u64 size;
	u32 type;
} __attribute__((packed));

#define MEM_TYPE_RAM 1

/* Port Triad's VMM exits on (status = the byte written). */
#define DEBUG_EXIT_PORT 0xf4
/* i8042 command port; command 0xFE pulses the CPU reset line. */
#define I8042_CMD_PORT 0x64
#define I8042_RESET 0xFE

#define TICK_MS 100

/* Not zeroed at boot (.noinit); always NUL-terminated before use. */
static char cmdline[CMDLINE_MAX] __attribute__((section(".noinit")));

struct boot_info {
	const char *path; /* "pvh" or "linux" */
	u64 cmdline_paddr;
	u64 mem_kib;
};

static void read_pvh(u64 paddr, struct boot_info *bi)
{
	const struct hvm_start_info *si = phys(paddr);
	const struct hvm_memmap_entry *map;

	bi->path = "pvh";
	if (si->magic != HVM_START_MAGIC) {
		serial_puts("TRIAD-ERROR bad hvm_start_info magic at ");
		serial_hex(paddr);
		serial_putc('\n');
		return;
	}
	bi->cmdline_paddr = si->cmdline_paddr;
	if (si->version < 1) {
		serial_line("TRIAD-WARN hvm_start_info version 0 has no memmap");
		return;
	}
	map = phys(si->memmap_paddr);
	for (u32 i = 0; si->memmap_paddr && i < si->memmap_entries; i++)
		if (map[i].type == MEM_TYPE_RAM)
			bi->mem_kib += map[i].size >> 10;
}

static void read_linux(u64 paddr, struct boot_info *bi)
{
	const u8 *zp = phys(paddr);
	const struct boot_e820_entry *e820 = (const void *)(zp + BP_E820_TABLE);
	u32 n = zp[BP_E820_ENTRIES];

	bi->path = "linux";
	bi->cmdline_paddr = *(const u32 *)(zp + BP_CMD_LINE_PTR);
	if (n > BP_E820_MAX)
		n = BP_E820_MAX;
	for (u32 i = 0; i < n; i++)
		if (e820[i].type == MEM_TYPE_RAM)
			bi->mem_kib += e820[i].size >> 10;
}

static void copy_cmdline(u64 paddr)
{
	const char *src = phys(paddr);
	usize i = 0;

	if (paddr)
		for (; i < CMDLINE_MAX - 1 && src[i]; i++)
			cmdline[i] = src[i];
	cmdline[i] = 0;
}

/* Token [tok, tok+len) equals word. */
static int token_is(const char *tok, usize len, const char *word)
{
	usize i = 0;

	for (; i < len && word[i]; i++)
		if (tok[i] != word[i])
			return 0;
	return i == len && !word[i];
}

/* Token starts with prefix; returns the rest's length or -1. */
static long token_value(const char *tok, usize len, const char *prefix)
{
	usize i = 0;

	for (; prefix[i]; i++)
		if (i >= len || tok[i] != prefix[i])
			return -1;
	return (long)(len - i);
}

/* Decimal 0..255, or -1. */
static int parse_u8(const char *s, usize len)
{
	int v = 0;

	if (len == 0 || len > 3)
		return -1;
	for (usize i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (s[i] - '0');
	}
	return v <= 255 ? v : -1;
}

static void tick_forever(void)
{
	u64 last = rdtsc();

	for (u64 k = 0;; k++) {
		serial_puts("TRIAD-TICK ");
		serial_u64(k);
		serial_putc('\n');
		/* Measured from the last tick, so a pause produces no burst of
		 * catch-up ticks afterwards. */
		while (rdtsc() - last < TICK_MS * TSC_PER_MS)
			cpu_relax();
		last = rdtsc();
	}
}

void triad_main(u32 boot_path, u64 info_paddr)
{
	struct boot_info bi = { "?", 0, 0 };
	int want_cpus = 0, want_tick = 0, want_reset = 0, want_rng = 0;
	int blk_mode = BLK_MODE_NONE, want_counter = 0;
	int want_dhcp = 0, have_static_ip = 0;
	int exit_code = -1;

	serial_puts("TRIAD-GUEST-READY\n");

	if (boot_path == BOOT_PVH)
		read_pvh(info_paddr, &bi);
	else
		read_linux(info_paddr, &bi);
	copy_cmdline(bi.cmdline_paddr);

	serial_puts("TRIAD-BOOT ");
	serial_line(bi.path);
	serial_puts("TRIAD-MEM ");
	serial_u64(bi.mem_kib);
	serial_putc('\n');
	serial_puts("TRIAD-CMDLINE ");
	serial_line(cmdline);

	for (const char *p = cmdline; *p;) {
		const char *tok;
		usize len = 0;
		long vlen;

		while (*p == ' ')
			p++;
		tok = p;
		while (tok[len] && tok[len] != ' ')
			len++;
		p = tok + len;
		if (len == 0)
			break;

		if (token_is(tok, len, "triad.cpus")) {
			want_cpus = 1;
		} else if (token_is(tok, len, "triad.tick")) {
			want_tick = 1;
		} else if (token_is(tok, len, "triad.reset")) {
			want_reset = 1;
		} else if (token_is(tok, len, "triad.rng")) {
			want_rng = 1;
		} else if (token_is(tok, len, "triad.noeventidx")) {
			virtio_disable_event_idx(); /* prints nothing */
		} else if (token_is(tok, len, "triad.counter")) {
			want_counter = 1;
		} else if (token_is(tok, len, "triad.blk=rw")) {
			blk_mode = BLK_MODE_RW;
		} else if (token_is(tok, len, "triad.blk=ro")) {
			blk_mode = BLK_MODE_RO;
		} else if (token_is(tok, len, "triad.blk=flood")) {
			blk_mode = BLK_MODE_FLOOD;
		} else if (token_value(tok, len, "triad.blk=") >= 0) {
			serial_line("TRIAD-ERROR triad.blk wants rw, ro or flood");
		} else if (token_is(tok, len, "triad.net=dhcp")) {
			want_dhcp = 1;
		} else if (token_value(tok, len, "triad.net=") >= 0) {
			serial_line("TRIAD-ERROR triad.net wants dhcp");
		} else if ((vlen = token_value(tok, len, "triad.ip=")) >= 0) {
			if (net_parse_static(tok + len - vlen, (usize)vlen))
				have_static_ip = 1;
			else
				serial_line("TRIAD-ERROR triad.ip wants A.B.C.D/NN[,gw=E.F.G.H]");
		} else if ((vlen = token_value(tok, len, "triad.ping=")) >= 0) {
			if (!net_parse_ping(tok + len - vlen, (usize)vlen))
				serial_line("TRIAD-ERROR triad.ping wants A.B.C.D");
		} else if ((vlen = token_value(tok, len, "virtio_mmio.device=")) >= 0) {
			virtio_parse_token(tok + len - vlen, (usize)vlen);
		} else if ((vlen = token_value(tok, len, "triad.exit=")) >= 0) {
			exit_code = parse_u8(tok + len - vlen, (usize)vlen);
			if (exit_code < 0)
				serial_line("TRIAD-ERROR triad.exit wants 0-255");
		}
		/* Anything else (console=..., etc.) is ignored. */
	}

	/* TRIAD-VIRTIO lines for the virtio_mmio.device= tokens (if any). */
	virtio_discover();

	if (want_cpus)
		smp_boot_aps();

	if (want_rng)
		virtio_rng_run();

	/* triad.counter does not come back (unless it fails). */
	if (blk_mode != BLK_MODE_NONE || want_counter)
		virtio_blk_run(blk_mode, want_counter);

	/* Serves forever once it has an address (returns only on an error). */
	if (have_static_ip)
		net_run(NET_MODE_STATIC);
	else if (want_dhcp)
		net_run(NET_MODE_DHCP);

	if (want_tick)
		tick_forever();

	if (exit_code >= 0) {
		serial_puts("TRIAD-EXIT ");
		serial_u64((u64)exit_code);
		serial_putc('\n');
		outb(DEBUG_EXIT_PORT, (u8)exit_code);
		/* Still here: no debug-exit device (e.g. plain QEMU). */
	}

	if (want_reset) {
		serial_line("TRIAD-RESET");
		outb(I8042_CMD_PORT, I8042_RESET);
	}

	serial_line("TRIAD-HALT");
	halt_forever();
}
