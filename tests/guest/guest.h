/*
 * guest.h - shared declarations of the Triad test guest.
 *
 * The test guest is a tiny freestanding x86_64 program that the integration
 * tests boot to exercise the VMM under real KVM (see README.md for the
 * contract it implements). This header holds the fixed-size types, the
 * inline port-I/O/MMIO/TSC helpers and the prototypes shared by the C files.
 * No libc: everything the guest needs is here or in lib.c.
 */
#ifndef TRIAD_GUEST_H
#define TRIAD_GUEST_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;
typedef unsigned long usize;

#define NULL ((void *)0)

#include "layout.h"

/* Assumed TSC rate. DESIGN.md §5: rdtsc tracks wall-clock at ~2.6 GHz. */
#define TSC_PER_MS 2600000UL

static inline void outb(u16 port, u8 val)
{
	__asm__ volatile("outb %0, %1" : : "a"(val), "Nd"(port));
}

static inline u8 inb(u16 port)
{
	u8 v;
	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

static inline u64 rdtsc(void)
{
	u32 lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((u64)hi << 32) | lo;
}

static inline void cpu_relax(void)
{
	__asm__ volatile("pause" ::: "memory");
}

/*
 * Physical memory is identity-mapped (first 4 GiB), so a physical address is
 * directly usable as a pointer. The empty asm hides the constant from gcc,
 * which otherwise warns about (or miscompiles) accesses to small constant
 * addresses such as the BIOS data area at 0x40E.
 */
static inline void *phys(u64 addr)
{
	__asm__("" : "+r"(addr));
	return (void *)addr;
}

static inline u32 mmio_read32(u64 addr)
{
	return *(volatile u32 *)phys(addr);
}

static inline void mmio_write32(u64 addr, u32 val)
{
	*(volatile u32 *)phys(addr) = val;
}

/* lib.c */
void serial_putc(char c);
void serial_puts(const char *s);  /* no newline added */
void serial_u64(u64 v);           /* decimal */
void serial_hex(u64 v);           /* 0x-prefixed hexadecimal */
void serial_line(const char *s);  /* s + "\n" */
void delay_ms(u64 ms);
void delay_us(u64 us);
void halt_forever(void) __attribute__((noreturn));
void *memcpy(void *dst, const void *src, usize n);
void *memset(void *dst, int c, usize n);

/* smp.c */
void smp_boot_aps(void);

#endif
