/*
 * layout.h - constants shared by the assembly and the C parts of the test
 * guest (only #defines, so both gcc and the assembler can include it).
 * Keep README.md's "Memory used by the guest" section in sync.
 */
#ifndef TRIAD_GUEST_LAYOUT_H
#define TRIAD_GUEST_LAYOUT_H

/* Link/load address of the image (ELF PT_LOAD and bzImage code32_start). */
#define IMAGE_BASE 0x100000

/* Offset of the 64-bit Linux boot protocol entry inside the image. */
#define LINUX64_ENTRY_OFFSET 0x200

/* Boot paths, passed to triad_main() as its first argument. */
#define BOOT_PVH 1   /* PVH 32-bit entry: info = struct hvm_start_info */
#define BOOT_LINUX 2 /* Linux boot protocol (64- or 32-bit): info = boot_params */

/* Our own GDT's selectors (head.S). */
#define CODE64_SEL 0x08
#define DATA_SEL 0x10

/* Boot stack size (head.S). Only the BSP ever runs C code. */
#define STACK_SIZE 0x4000

/* Command line buffer size; also the bzImage header's cmdline_size + 1. */
#define CMDLINE_MAX 2048

/*
 * AP bring-up: the real-mode trampoline is copied to AP_TRAMPOLINE_ADDR,
 * which must be 4 KiB aligned and below 1 MiB (SIPI vector = addr >> 12).
 * Each AP sets the byte AP_FLAGS_ADDR + <its initial APIC ID> to 1 and then
 * atomically increments the u32 at AP_COUNT_ADDR. All of it lives in the one
 * page 0x8000-0x8FFF, which the VMM must leave alone.
 */
#define AP_TRAMPOLINE_ADDR 0x8000
#define AP_SIPI_VECTOR (AP_TRAMPOLINE_ADDR >> 12)
#define AP_FLAGS_OFF 0xE00
#define AP_COUNT_OFF 0xF00
#define AP_FLAGS_ADDR (AP_TRAMPOLINE_ADDR + AP_FLAGS_OFF)
#define AP_COUNT_ADDR (AP_TRAMPOLINE_ADDR + AP_COUNT_OFF)

#endif
