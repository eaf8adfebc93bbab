/*
 * trampoline.S - the real-mode code an application processor (AP) runs
 * when it receives a startup IPI. smp.c copies it to AP_TRAMPOLINE_ADDR
 * (0x8000) and sends SIPI vector 0x08, so the AP starts here in real mode
 * with CS = 0x0800 (base 0x8000), IP = 0.
 *
 * The AP records that it is alive and parks: it sets its flag byte at
 * AP_FLAGS_ADDR + <initial APIC ID from CPUID.1:EBX[31:24]>, atomically
 * increments the u32 counter at AP_COUNT_ADDR, then halts with IF = 0 for
 * good. It never touches the stack or anything outside its own page.
 */
#include "layout.h"

	.section .rodata.ap_trampoline, "a"
	.code16
	.globl ap_trampoline_start, ap_trampoline_end
ap_trampoline_start:
	cli
	movw %cs, %ax
	movw %ax, %ds		/* DS base = trampoline page */
	movl $1, %eax
	cpuid
	shrl $24, %ebx		/* %bx = initial APIC ID (0-255) */
	movb $1, AP_FLAGS_OFF(%bx)
	lock incl AP_COUNT_OFF
1:	cli
	hlt
	jmp 1b
ap_trampoline_end:

	.section .note.GNU-stack, "", @progbits
