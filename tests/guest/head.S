/*
 * head.S - entry points of the Triad test guest and the CPU state it needs
 * before C can run: its own GDT, identity page tables for the first 4 GiB,
 * a stack, and a zeroed .bss. Every boot path ends in long_mode, which calls
 * triad_main(boot_path, info_paddr).
 *
 * The image is linked at IMAGE_BASE (1 MiB) and this file's .head section
 * is placed first (linker.ld), so:
 *   image + 0x000  linux32_entry  32-bit Linux boot protocol (code32_start)
 *   image + 0x???  pvh_entry      PVH entry, named by the Xen ELF note
 *   image + 0x200  linux64_entry  64-bit Linux boot protocol, also e_entry
 *
 * The page tables are built at link time (.data below), so no boot path
 * spends guest instructions on them; the guest runs only a few million
 * instructions per second under the nested hypervisor.
 */
#include "layout.h"

#define CR0_PE (1 << 0)
#define CR0_NW (1 << 29)
#define CR0_CD (1 << 30)
#define CR0_PG (1 << 31)
#define CR4_PAE (1 << 5)
#define MSR_EFER 0xC0000080
#define EFER_LME (1 << 8)

	.section .head, "ax"

/*
 * 32-bit Linux boot protocol entry (offset 0 = code32_start): protected
 * mode, paging off, flat segments, %esi = struct boot_params.
 */
	.code32
	.globl linux32_entry
linux32_entry:
	cli
	movl $BOOT_LINUX, %edi
	jmp enter_long_mode

/*
 * PVH entry (Xen HVM direct boot ABI): 32-bit protected mode, paging off,
 * flat 4 GiB CS/DS, %ebx = struct hvm_start_info, no stack.
 */
	.globl pvh_entry
pvh_entry:
	cli
	movl $BOOT_PVH, %edi
	movl %ebx, %esi

/* %edi = boot path, %esi = info address; both survive into long mode. */
enter_long_mode:
	lgdt gdt_desc
	movl %cr4, %eax
	orl $CR4_PAE, %eax
	movl %eax, %cr4
	movl $pml4, %eax
	movl %eax, %cr3
	movl $MSR_EFER, %ecx
	rdmsr
	orl $EFER_LME, %eax
	wrmsr
	movl %cr0, %eax
	andl $~(CR0_CD | CR0_NW), %eax
	orl $(CR0_PG | CR0_PE), %eax
	movl %eax, %cr0
	/* Compatibility mode now; the far jump loads the 64-bit CS. */
	ljmp $CODE64_SEL, $long_mode

/*
 * 64-bit Linux boot protocol entry (image + 0x200): long mode, paging on
 * with the VMM's identity map (at least the first 1 GiB), %rsi = struct
 * boot_params. The VMM's map may not cover the LAPIC at 0xFEE00000, so
 * switch to our own GDT, page tables and stack right away.
 */
	.org LINUX64_ENTRY_OFFSET
	.code64
	.globl linux64_entry
linux64_entry:
	cli
	/* The image is not relocatable: refuse to run anywhere else. */
	leaq linux64_entry(%rip), %rax
	cmpq $linux64_entry, %rax
	jne bad_load
	movl $BOOT_LINUX, %edi
	movq $stack_top, %rsp
	lgdt gdt_desc
	movq $pml4, %rax
	movq %rax, %cr3
	pushq $CODE64_SEL
	pushq $long_mode
	lretq

/* Loaded at the wrong address: say so on COM1 (RIP-relative only), halt. */
bad_load:
	cld
	leaq bad_load_msg(%rip), %rsi
	movw $0x3f8, %dx
1:	lodsb
	testb %al, %al
	jz halt
	outb %al, %dx
	jmp 1b

/* Common 64-bit path, on our GDT and page tables. */
	.text
long_mode:
	movw $DATA_SEL, %ax
	movw %ax, %ds
	movw %ax, %es
	movw %ax, %ss
	movw %ax, %fs
	movw %ax, %gs
	lidt null_idt_desc	/* any exception triple-faults: a clean shutdown */
	movq $stack_top, %rsp
	movl %edi, %r12d	/* zero-extends: upper halves are undefined */
	movl %esi, %r13d
	/* Zero .bss (small: the stack and cmdline buffer are in .noinit). */
	cld
	movq $__bss_start, %rdi
	movq $__bss_end, %rcx
	subq %rdi, %rcx
	shrq $3, %rcx
	xorl %eax, %eax
	rep stosq
	movl %r12d, %edi
	movq %r13, %rsi
	xorl %ebp, %ebp
	call triad_main
halt:
	cli
	hlt
	jmp halt

	.section .rodata
bad_load_msg:
	.asciz "TRIAD-ERROR test guest not loaded at 0x100000\n"

/*
 * GDT: null, 64-bit code, flat data. Accessed bits are preset so the CPU
 * never writes to it. gdt_desc works for lgdt in both 32-bit mode (reads a
 * 4-byte base) and 64-bit mode (8-byte base).
 */
	.p2align 3
gdt:
	.quad 0
	.quad 0x00af9b000000ffff	/* CODE64_SEL: L=1, P, DPL 0, exec/read */
	.quad 0x00cf93000000ffff	/* DATA_SEL: base 0, limit 4 GiB, rw */
gdt_end:
gdt_desc:
	.word gdt_end - gdt - 1
	.quad gdt
null_idt_desc:
	.word 0
	.quad 0

/*
 * Identity map of the first 4 GiB with 2 MiB pages, built at link time:
 * PML4[0] -> PDPT, PDPT[0..3] -> four page directories. 3-4 GiB (LAPIC,
 * IOAPIC, MMIO devices) is mapped uncached (PCD | PWT).
 */
#define PTE_P 0x01
#define PTE_RW 0x02
#define PTE_PWT 0x08
#define PTE_PCD 0x10
#define PTE_PS 0x80

	.section .data.pagetables, "aw"
	.p2align 12
	.globl pml4
pml4:
	.quad pdpt + (PTE_P | PTE_RW)
	.fill 511, 8, 0
pdpt:
	.quad pd + 0x0000 + (PTE_P | PTE_RW)
	.quad pd + 0x1000 + (PTE_P | PTE_RW)
	.quad pd + 0x2000 + (PTE_P | PTE_RW)
	.quad pd + 0x3000 + (PTE_P | PTE_RW)
	.fill 508, 8, 0
pd:
	.set .Lpde, 0
	.rept 1536	/* 0-3 GiB: RAM, write-back */
	.quad (.Lpde << 21) | (PTE_P | PTE_RW | PTE_PS)
	.set .Lpde, .Lpde + 1
	.endr
	.rept 512	/* 3-4 GiB: MMIO, uncached */
	.quad (.Lpde << 21) | (PTE_P | PTE_RW | PTE_PS | PTE_PCD | PTE_PWT)
	.set .Lpde, .Lpde + 1
	.endr

/* Boot stack; .noinit is not loaded and not zeroed. */
	.section .noinit, "aw", @nobits
	.p2align 12
	.globl stack_top
stack_bottom:
	.skip STACK_SIZE
stack_top:

/* Xen PVH ELF note: XEN_ELFNOTE_PHYS32_ENTRY (18), 32-bit entry address. */
	.section .note.Xen, "a", @note
	.p2align 2
	.long 4			/* namesz: "Xen\0" */
	.long 4			/* descsz */
	.long 18		/* type: XEN_ELFNOTE_PHYS32_ENTRY */
	.asciz "Xen"
	.p2align 2
	.long pvh_entry
	.p2align 2

/* No executable stack. */
	.section .note.GNU-stack, "", @progbits
