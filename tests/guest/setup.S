/*
 * setup.S - the real-mode "setup" part of testguest.bzImage: two 512-byte
 * sectors whose only job is to carry a Linux boot protocol setup header
 * (Documentation/arch/x86/boot.rst), so that bzImage loaders such as
 * linux-loader's BzImage::load accept the file. scripts/build-testguest
 * appends the flat protected-mode image (objcopy -O binary of
 * testguest.elf) after it.
 *
 * There is no real-mode setup code: loaders must use the 64-bit entry
 * (load address + 0x200, xloadflags XLF_KERNEL_64) or the 32-bit entry
 * (code32_start); jumping to the 16-bit entry at 0x200 just halts.
 *
 * Values computed by the build script: SYSSIZE (protected-mode part in
 * 16-byte paragraphs) and INIT_SIZE (bytes of memory the image needs from
 * its load address, .bss and stack included).
 */
#include "layout.h"

#define SETUP_SECTS 1		/* setup = (1 + SETUP_SECTS) * 512 bytes */
#define LOADED_HIGH 0x01	/* loadflags: protected-mode part at 1 MiB */
#define XLF_KERNEL_64 0x01	/* xloadflags: 64-bit entry at +0x200 */

#ifndef SYSSIZE
#error "SYSSIZE must be defined by the build script"
#endif
#ifndef INIT_SIZE
#error "INIT_SIZE must be defined by the build script"
#endif

	.code16
	.section .text
setup_start:
	/* Boot sector: never booted from a disk; halt if it ever is. */
	cli
	hlt
	jmp setup_start

	.org 0x1f1
	.byte SETUP_SECTS	/* 0x1f1 setup_sects */
	.word 0			/* 0x1f2 root_flags */
	.long SYSSIZE		/* 0x1f4 syssize */
	.word 0			/* 0x1f8 ram_size */
	.word 0xffff		/* 0x1fa vid_mode: normal */
	.word 0			/* 0x1fc root_dev */
	.word 0xaa55		/* 0x1fe boot_flag */
	/* 0x200 jump: short jmp over the header (the 16-bit entry) */
	.byte 0xeb, realmode_entry - hdrs
hdrs:
	.ascii "HdrS"		/* 0x202 header */
	.word 0x020c		/* 0x206 version: 2.12 */
	.long 0			/* 0x208 realmode_swtch */
	.word 0x1000		/* 0x20c start_sys_seg (obsolete) */
	.word version_str - setup_start - 0x200 /* 0x20e kernel_version */
	.byte 0			/* 0x210 type_of_loader (loader writes) */
	.byte LOADED_HIGH	/* 0x211 loadflags */
	.word 0			/* 0x212 setup_move_size */
	.long IMAGE_BASE	/* 0x214 code32_start */
	.long 0			/* 0x218 ramdisk_image */
	.long 0			/* 0x21c ramdisk_size */
	.long 0			/* 0x220 bootsect_kludge */
	.word 0			/* 0x224 heap_end_ptr */
	.byte 0			/* 0x226 ext_loader_ver */
	.byte 0			/* 0x227 ext_loader_type */
	.long 0			/* 0x228 cmd_line_ptr (loader writes) */
	.long 0x7fffffff	/* 0x22c initrd_addr_max */
	.long 0x1000		/* 0x230 kernel_alignment */
	.byte 0			/* 0x234 relocatable_kernel: no */
	.byte 12		/* 0x235 min_alignment: 4 KiB */
	.word XLF_KERNEL_64	/* 0x236 xloadflags */
	.long CMDLINE_MAX - 1	/* 0x238 cmdline_size */
	.long 0			/* 0x23c hardware_subarch: PC */
	.quad 0			/* 0x240 hardware_subarch_data */
	.long 0			/* 0x248 payload_offset */
	.long 0			/* 0x24c payload_length */
	.quad 0			/* 0x250 setup_data */
	.quad IMAGE_BASE	/* 0x258 pref_address */
	.long INIT_SIZE		/* 0x260 init_size */
	.long 0			/* 0x264 handover_offset: no EFI */
	.long 0			/* 0x268 kernel_info_offset (2.15+ only) */
	/* header ends at 0x26c; scripts/build-testguest checks the offsets */

realmode_entry:
	cli
	hlt
	jmp realmode_entry

version_str:
	.asciz "Triad test guest"

	.org (SETUP_SECTS + 1) * 512	/* pad the setup to whole sectors */
