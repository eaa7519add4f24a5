/*
 * crt0.S — the ELF entry point of a freestanding ftvm guest.
 *
 * On entry (ftvm.h): RDI = address of struct ftvm_boot, RSP = top of guest
 * memory, 16-byte aligned, RFLAGS.IF = 0. The VMM loads PT_LOAD segments
 * with p_memsz > p_filesz zero-filled, but .bss is cleared here as well so
 * that a guest never depends on how its loader treats memory it did not
 * write (a restored snapshot, a reused VM).
 */
	.section .text.start, "ax"
	.globl _start
	.type _start, @function
_start:
	mov	%rdi, %rbx		/* keep the boot pointer; rep stosb uses rdi */
	lea	__bss_start(%rip), %rdi
	lea	__bss_end(%rip), %rcx
	sub	%rdi, %rcx
	xor	%eax, %eax
	cld
	rep stosb
	mov	%rbx, %rdi
	and	$-16, %rsp		/* the ABI wants 16-byte alignment before call */
	xor	%ebp, %ebp		/* end of the frame-pointer chain */
	call	rt_start
	ud2				/* rt_start does not return */
	.size _start, . - _start

	.section .note.GNU-stack, "", @progbits
