/*
 * lib.c - the few runtime helpers the freestanding test guest needs:
 * 8250 serial output, decimal/hex printing, TSC delays, halting, and the
 * memcpy/memset that gcc may emit calls to even in freestanding code.
 */
#include "guest.h"

#define COM1 0x3f8

void serial_putc(char c)
{
	/* A plain write to THR, without polling LSR.THRE first: Triad's UART
	 * always has room, QEMU's practically always does, and a poll would
	 * double the VM exits per character, which the boot benchmarks (time
	 * to the first line) would pay for. */
	outb(COM1, (u8)c);
}

void serial_puts(const char *s)
{
	while (*s)
		serial_putc(*s++);
}

void serial_line(const char *s)
{
	serial_puts(s);
	serial_putc('\n');
}

void serial_u64(u64 v)
{
	char buf[21];
	int i = sizeof(buf) - 1;

	buf[i] = 0;
	do {
		buf[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	serial_puts(&buf[i]);
}

void serial_hex(u64 v)
{
	static const char digits[] = "0123456789abcdef";
	char buf[19];
	int i = sizeof(buf) - 1;

	buf[i] = 0;
	do {
		buf[--i] = digits[v & 0xf];
		v >>= 4;
	} while (v);
	buf[--i] = 'x';
	buf[--i] = '0';
	serial_puts(&buf[i]);
}

static void delay_tsc(u64 ticks)
{
	u64 start = rdtsc();

	while (rdtsc() - start < ticks)
		cpu_relax();
}

void delay_ms(u64 ms)
{
	delay_tsc(ms * TSC_PER_MS);
}

void delay_us(u64 us)
{
	delay_tsc(us * (TSC_PER_MS / 1000));
}

void halt_forever(void)
{
	/* IF stays 0, so only INIT/NMI/SMI could wake us; loop regardless. */
	for (;;)
		__asm__ volatile("cli; hlt");
}

/* memcpy is one `rep movsb`: at ~3 M guest instructions/s a byte loop
 * costs ~3 ms per 1400-byte frame that net.c copies. The build passes
 * -fno-tree-loop-distribute-patterns, so memset's loop is not turned back
 * into a call to itself. */
void *memcpy(void *dst, const void *src, usize n)
{
	void *d = dst;

	__asm__ volatile("rep movsb" : "+D"(d), "+S"(src), "+c"(n) : : "memory");
	return dst;
}

void *memset(void *dst, int c, usize n)
{
	u8 *d = dst;

	while (n--)
		*d++ = (u8)c;
	return dst;
}
