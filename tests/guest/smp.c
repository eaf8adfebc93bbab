/*
 * smp.c - `triad.cpus`: count the vCPUs the VMM gave us and prove they run.
 *
 * Finds the Intel MultiProcessor table the VMM wrote, then wakes every
 * enabled application processor (AP) it lists with the classic xAPIC
 * INIT / SIPI / SIPI sequence. Each AP runs trampoline.S, which checks in
 * through a counter in low memory. Prints `TRIAD-CPUS <n>`, n = 1 (the BSP)
 * + the APs that checked in, and `TRIAD-AP-FAILED <apic ids>` if some did
 * not within the timeout.
 */
#include "guest.h"

/* Local APIC (xAPIC MMIO; the default base, identity-mapped by head.S). */
#define LAPIC_BASE 0xFEE00000UL
#define LAPIC_ID (LAPIC_BASE + 0x020)
#define LAPIC_SVR (LAPIC_BASE + 0x0F0)
#define LAPIC_ICR_LO (LAPIC_BASE + 0x300)
#define LAPIC_ICR_HI (LAPIC_BASE + 0x310)
#define SVR_ENABLE 0x100
#define ICR_BUSY (1u << 12)  /* delivery status: send pending */
#define ICR_INIT 0x00004500u /* INIT, level assert, physical destination */
#define ICR_SIPI 0x00004600u /* start-up, vector in bits 7:0 */

/* Timeouts and delays, in TSC time (see TSC_PER_MS). */
#define ICR_TIMEOUT_MS 100
#define INIT_DELAY_MS 10
#define SIPI_DELAY_US 200
#define CHECKIN_TIMEOUT_MS 3000

#define MP_FLOAT_SIG 0x5f504d5fu  /* "_MP_" */
#define MP_CONFIG_SIG 0x504d4350u /* "PCMP" */

/* MP floating pointer structure (16 bytes, 16-byte aligned). */
struct mp_floating {
	u32 signature;
	u32 config_paddr;
	u8 length; /* in 16-byte units */
	u8 spec_rev;
	u8 checksum;
	u8 features[5];
};

/* MP configuration table header; entries follow it. */
struct mp_config {
	u32 signature;
	u16 length; /* base table, header included */
	u8 spec_rev;
	u8 checksum;
	char oem_id[8];
	char product_id[12];
	u32 oem_table;
	u16 oem_table_size;
	u16 entry_count;
	u32 lapic_paddr;
	u16 ext_length;
	u8 ext_checksum;
	u8 reserved;
};

/* Processor entry (type 0). */
struct mp_processor {
	u8 type;
	u8 apic_id;
	u8 apic_version;
	u8 flags;
	u32 cpu_signature;
	u32 feature_flags;
	u32 reserved[2];
};

#define MP_ENTRY_PROCESSOR 0
#define MP_PROC_ENABLED 0x01
#define MP_PROC_BSP 0x02

extern const u8 ap_trampoline_start[], ap_trampoline_end[];

static u8 checksum(const u8 *p, usize len)
{
	u8 sum = 0;

	while (len--)
		sum += *p++;
	return sum;
}

static const struct mp_floating *scan_mp_floating(u64 start, u64 len)
{
	for (u64 a = start; a + 16 <= start + len; a += 16) {
		const struct mp_floating *f = phys(a);

		if (f->signature == MP_FLOAT_SIG && f->length != 0 &&
		    checksum(phys(a), f->length * 16u) == 0)
			return f;
	}
	return NULL;
}

static const struct mp_floating *find_mp_floating(void)
{
	const struct mp_floating *f = NULL;
	u16 ebda_seg = *(volatile u16 *)phys(0x40E);

	if (ebda_seg)
		f = scan_mp_floating((u64)ebda_seg << 4, 1024);
	if (!f)
		f = scan_mp_floating(0x9FC00, 0x400);
	if (!f)
		f = scan_mp_floating(0xF0000, 0x10000);
	return f;
}

/*
 * Collects the APIC IDs of the enabled APs (not us) into ids[].
 * Returns their number, or -1 if there is no usable MP table.
 */
static int find_aps(u8 ids[256], u8 own_id)
{
	const struct mp_floating *f = find_mp_floating();
	const struct mp_config *c;
	const u8 *p, *end;
	int n = 0;

	if (!f || !f->config_paddr) {
		serial_line("TRIAD-WARN no MP table found");
		return -1;
	}
	c = phys(f->config_paddr);
	if (c->signature != MP_CONFIG_SIG ||
	    c->length < sizeof(*c) ||
	    checksum(phys(f->config_paddr), c->length) != 0) {
		serial_puts("TRIAD-ERROR bad MP config table at ");
		serial_hex(f->config_paddr);
		serial_putc('\n');
		return -1;
	}

	p = (const u8 *)(c + 1);
	end = (const u8 *)c + c->length;
	for (u16 i = 0; i < c->entry_count && p < end; i++) {
		if (*p == MP_ENTRY_PROCESSOR) {
			const struct mp_processor *cpu = (const void *)p;

			if (cpu->flags & MP_PROC_BSP && cpu->apic_id != own_id) {
				serial_puts("TRIAD-WARN MP table BSP is APIC ID ");
				serial_u64(cpu->apic_id);
				serial_puts(", we are ");
				serial_u64(own_id);
				serial_putc('\n');
			}
			if ((cpu->flags & MP_PROC_ENABLED) &&
			    !(cpu->flags & MP_PROC_BSP) && cpu->apic_id != own_id)
				ids[n++] = cpu->apic_id;
			p += 20;
		} else if (*p <= 4) {
			p += 8; /* bus, I/O APIC, I/O interrupt, local interrupt */
		} else {
			serial_puts("TRIAD-WARN unknown MP table entry type ");
			serial_u64(*p);
			serial_putc('\n');
			break;
		}
	}
	return n;
}

static void send_ipi(u8 apic_id, u32 cmd)
{
	u64 start;

	mmio_write32(LAPIC_ICR_HI, (u32)apic_id << 24);
	mmio_write32(LAPIC_ICR_LO, cmd);
	start = rdtsc();
	while (mmio_read32(LAPIC_ICR_LO) & ICR_BUSY) {
		if (rdtsc() - start > ICR_TIMEOUT_MS * TSC_PER_MS) {
			serial_puts("TRIAD-WARN IPI to APIC ID ");
			serial_u64(apic_id);
			serial_line(" stuck pending");
			return;
		}
		cpu_relax();
	}
}

void smp_boot_aps(void)
{
	volatile u8 *flags = phys(AP_FLAGS_ADDR);
	volatile u32 *count = phys(AP_COUNT_ADDR);
	u8 own_id = (u8)(mmio_read32(LAPIC_ID) >> 24);
	u8 ids[256];
	int n = find_aps(ids, own_id);
	u64 start;

	if (n <= 0) {
		serial_line("TRIAD-CPUS 1");
		return;
	}

	/* Trampoline page: code at its start, flags and counter cleared. */
	memcpy(phys(AP_TRAMPOLINE_ADDR), ap_trampoline_start,
	       (usize)(ap_trampoline_end - ap_trampoline_start));
	for (int i = 0; i < 256; i++)
		flags[i] = 0;
	*count = 0;

	/* Software-enable our LAPIC (spurious vector 0xFF; IF stays 0). */
	mmio_write32(LAPIC_SVR, mmio_read32(LAPIC_SVR) | SVR_ENABLE | 0xFF);

	/* INIT all APs, wait once, then two rounds of SIPIs. */
	for (int i = 0; i < n; i++)
		send_ipi(ids[i], ICR_INIT);
	delay_ms(INIT_DELAY_MS);
	for (int i = 0; i < n; i++)
		send_ipi(ids[i], ICR_SIPI | AP_SIPI_VECTOR);
	delay_us(SIPI_DELAY_US);
	for (int i = 0; i < n; i++)
		if (!flags[ids[i]])
			send_ipi(ids[i], ICR_SIPI | AP_SIPI_VECTOR);

	start = rdtsc();
	while (*count < (u32)n &&
	       rdtsc() - start < CHECKIN_TIMEOUT_MS * TSC_PER_MS)
		cpu_relax();

	serial_puts("TRIAD-CPUS ");
	serial_u64(1 + *count);
	serial_putc('\n');

	if (*count < (u32)n) {
		/* Flags are indexed by CPUID's initial APIC ID, which the VMM
		 * must set per vCPU to match its LAPIC ID and the MP table. */
		serial_puts("TRIAD-AP-FAILED");
		for (int i = 0; i < n; i++) {
			if (!flags[ids[i]]) {
				serial_putc(' ');
				serial_u64(ids[i]);
			}
		}
		serial_putc('\n');
	}
}
