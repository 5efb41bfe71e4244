/*
 * Start-up code and trap entry points for the popek bare-metal tests.
 *
 * Trap frame layout (struct trap_frame in lib.h), 288 bytes:
 *   0..255  x0..x31 (x2 slot = stack pointer at the time of the trap)
 *   256 epc, 264 cause, 272 tval, 280 status
 */
#define FRAME_SIZE 288
#define SYS_RETURN 0x7e7

        .section .text.init, "ax"
        .globl _start
_start:
        csrr    t0, mhartid
        bnez    t0, park
        la      sp, _stack_top
        la      t0, _m_trap_stack_top
        csrw    mscratch, t0
        la      t0, m_trap_entry
        csrw    mtvec, t0
        /* Let S and U mode reach the whole address space (one NAPOT PMP entry). */
        li      t0, -1
        csrw    pmpaddr0, t0
        li      t0, 0x1f
        csrw    pmpcfg0, t0
        /* Clear .bss. */
        la      t0, __bss_start
        la      t1, __bss_end
1:      bgeu    t0, t1, 2f
        sd      zero, 0(t0)
        addi    t0, t0, 8
        j       1b
2:      /* FPU on (mstatus.FS = Initial), fcsr cleared. */
        li      t0, (1 << 13)
        csrs    mstatus, t0
        csrw    fcsr, zero
        call    main
        call    exit
park:   wfi
        j       park

        .text
/* ---------------------------------------------------------------- M trap */
        .align  4
        .globl  m_trap_entry
m_trap_entry:
        csrrw   sp, mscratch, sp
        addi    sp, sp, -FRAME_SIZE
        sd      x1, 8(sp)
        sd      x3, 24(sp)
        sd      x4, 32(sp)
        sd      x5, 40(sp)
        sd      x6, 48(sp)
        sd      x7, 56(sp)
        sd      x8, 64(sp)
        sd      x9, 72(sp)
        sd      x10, 80(sp)
        sd      x11, 88(sp)
        sd      x12, 96(sp)
        sd      x13, 104(sp)
        sd      x14, 112(sp)
        sd      x15, 120(sp)
        sd      x16, 128(sp)
        sd      x17, 136(sp)
        sd      x18, 144(sp)
        sd      x19, 152(sp)
        sd      x20, 160(sp)
        sd      x21, 168(sp)
        sd      x22, 176(sp)
        sd      x23, 184(sp)
        sd      x24, 192(sp)
        sd      x25, 200(sp)
        sd      x26, 208(sp)
        sd      x27, 216(sp)
        sd      x28, 224(sp)
        sd      x29, 232(sp)
        sd      x30, 240(sp)
        sd      x31, 248(sp)
        csrr    t0, mscratch
        sd      t0, 16(sp)
        csrr    t0, mepc
        sd      t0, 256(sp)
        csrr    t0, mcause
        sd      t0, 264(sp)
        csrr    t0, mtval
        sd      t0, 272(sp)
        csrr    t0, mstatus
        sd      t0, 280(sp)
        mv      a0, sp
        call    m_trap_handler
        ld      t0, 256(sp)
        csrw    mepc, t0
        ld      t0, 280(sp)
        csrw    mstatus, t0
        addi    t0, sp, FRAME_SIZE
        csrw    mscratch, t0
        ld      x1, 8(sp)
        ld      x3, 24(sp)
        ld      x4, 32(sp)
        ld      x5, 40(sp)
        ld      x6, 48(sp)
        ld      x7, 56(sp)
        ld      x8, 64(sp)
        ld      x9, 72(sp)
        ld      x10, 80(sp)
        ld      x11, 88(sp)
        ld      x12, 96(sp)
        ld      x13, 104(sp)
        ld      x14, 112(sp)
        ld      x15, 120(sp)
        ld      x16, 128(sp)
        ld      x17, 136(sp)
        ld      x18, 144(sp)
        ld      x19, 152(sp)
        ld      x20, 160(sp)
        ld      x21, 168(sp)
        ld      x22, 176(sp)
        ld      x23, 184(sp)
        ld      x24, 192(sp)
        ld      x25, 200(sp)
        ld      x26, 208(sp)
        ld      x27, 216(sp)
        ld      x28, 224(sp)
        ld      x29, 232(sp)
        ld      x30, 240(sp)
        ld      x31, 248(sp)
        ld      sp, 16(sp)
        mret

/* ---------------------------------------------------------------- S trap */
        .align  4
        .globl  s_trap_entry
s_trap_entry:
        csrrw   sp, sscratch, sp
        addi    sp, sp, -FRAME_SIZE
        sd      x1, 8(sp)
        sd      x3, 24(sp)
        sd      x4, 32(sp)
        sd      x5, 40(sp)
        sd      x6, 48(sp)
        sd      x7, 56(sp)
        sd      x8, 64(sp)
        sd      x9, 72(sp)
        sd      x10, 80(sp)
        sd      x11, 88(sp)
        sd      x12, 96(sp)
        sd      x13, 104(sp)
        sd      x14, 112(sp)
        sd      x15, 120(sp)
        sd      x16, 128(sp)
        sd      x17, 136(sp)
        sd      x18, 144(sp)
        sd      x19, 152(sp)
        sd      x20, 160(sp)
        sd      x21, 168(sp)
        sd      x22, 176(sp)
        sd      x23, 184(sp)
        sd      x24, 192(sp)
        sd      x25, 200(sp)
        sd      x26, 208(sp)
        sd      x27, 216(sp)
        sd      x28, 224(sp)
        sd      x29, 232(sp)
        sd      x30, 240(sp)
        sd      x31, 248(sp)
        csrr    t0, sscratch
        sd      t0, 16(sp)
        csrr    t0, sepc
        sd      t0, 256(sp)
        csrr    t0, scause
        sd      t0, 264(sp)
        csrr    t0, stval
        sd      t0, 272(sp)
        csrr    t0, sstatus
        sd      t0, 280(sp)
        mv      a0, sp
        call    s_trap_handler
        ld      t0, 256(sp)
        csrw    sepc, t0
        ld      t0, 280(sp)
        csrw    sstatus, t0
        addi    t0, sp, FRAME_SIZE
        csrw    sscratch, t0
        ld      x1, 8(sp)
        ld      x3, 24(sp)
        ld      x4, 32(sp)
        ld      x5, 40(sp)
        ld      x6, 48(sp)
        ld      x7, 56(sp)
        ld      x8, 64(sp)
        ld      x9, 72(sp)
        ld      x10, 80(sp)
        ld      x11, 88(sp)
        ld      x12, 96(sp)
        ld      x13, 104(sp)
        ld      x14, 112(sp)
        ld      x15, 120(sp)
        ld      x16, 128(sp)
        ld      x17, 136(sp)
        ld      x18, 144(sp)
        ld      x19, 152(sp)
        ld      x20, 160(sp)
        ld      x21, 168(sp)
        ld      x22, 176(sp)
        ld      x23, 184(sp)
        ld      x24, 192(sp)
        ld      x25, 200(sp)
        ld      x26, 208(sp)
        ld      x27, 216(sp)
        ld      x28, 224(sp)
        ld      x29, 232(sp)
        ld      x30, 240(sp)
        ld      x31, 248(sp)
        ld      sp, 16(sp)
        sret

/* ------------------------------------------------------- mode switching */
/* long enter_mode_full(long mode, void *fn, long arg, void *sp, void *ra)
 * Saves the M-mode callee-saved context, then mrets into `fn` in `mode`
 * (0 = U, 1 = S, 3 = M) with a0 = arg, sp and ra as given.  The lower
 * mode gets back by `ecall` with a7 = SYS_RETURN (user_return_stub), which
 * the M trap handler turns into m_resume(a0). */
        .globl  enter_mode_full
enter_mode_full:
        la      t0, m_ctx
        sd      ra, 0(t0)
        sd      sp, 8(t0)
        sd      s0, 16(t0)
        sd      s1, 24(t0)
        sd      s2, 32(t0)
        sd      s3, 40(t0)
        sd      s4, 48(t0)
        sd      s5, 56(t0)
        sd      s6, 64(t0)
        sd      s7, 72(t0)
        sd      s8, 80(t0)
        sd      s9, 88(t0)
        sd      s10, 96(t0)
        sd      s11, 104(t0)
        sd      gp, 112(t0)
        sd      tp, 120(t0)
        li      t1, (3 << 11)
        csrc    mstatus, t1
        andi    a0, a0, 3
        slli    a0, a0, 11
        csrs    mstatus, a0
        csrw    mepc, a1
        mv      a0, a2
        mv      sp, a3
        mv      ra, a4
        mret

/* void m_resume(long value): back into the enter_mode_full caller. */
        .globl  m_resume
m_resume:
        la      t0, _m_trap_stack_top
        csrw    mscratch, t0
        la      t0, m_ctx
        ld      ra, 0(t0)
        ld      sp, 8(t0)
        ld      s0, 16(t0)
        ld      s1, 24(t0)
        ld      s2, 32(t0)
        ld      s3, 40(t0)
        ld      s4, 48(t0)
        ld      s5, 56(t0)
        ld      s6, 64(t0)
        ld      s7, 72(t0)
        ld      s8, 80(t0)
        ld      s9, 88(t0)
        ld      s10, 96(t0)
        ld      s11, 104(t0)
        ld      gp, 112(t0)
        ld      tp, 120(t0)
        ret

/* void s_forward_return(long value): S-mode asks M to finish enter_mode. */
        .globl  s_forward_return
s_forward_return:
        la      t0, _s_trap_stack_top   /* this S trap never returns: reset its stack */
        csrw    sscratch, t0
        li      a7, SYS_RETURN
        ecall
1:      j       1b

/* ------------------------------------------------------------ probes
 * Each probe's faulting instruction is 4 bytes long (no RVC) so that a
 * handler can skip it with epc += 4.  probe_jump jumps to a0; a fetch fault
 * there is resumed by the handler at ra. */
        .option push
        .option norvc
        .globl  probe_ld, probe_lw, probe_lb, probe_sd, probe_sw, probe_jump
probe_ld:
        ld      a0, 0(a0)
        ret
probe_lw:
        lw      a0, 0(a0)
        ret
probe_lb:
        lb      a0, 0(a0)
        ret
probe_sd:
        sd      a1, 0(a0)
        ret
probe_sw:
        sw      a1, 0(a0)
        ret
probe_jump:
        jr      a0

/* Copies for user mode under paging, on their own pages (.utext). */
        .section .utext, "ax"
        .globl  user_return_stub, uprobe_ld, uprobe_sd, uprobe_jump, uprobe_ecall
user_return_stub:
        li      a7, SYS_RETURN
        ecall
1:      j       1b
uprobe_ld:
        ld      a0, 0(a0)
        ret
uprobe_sd:                      /* stores its own argument (the address) */
        sd      a0, 0(a0)
        ret
uprobe_jump:
        jr      a0
        .option pop

        .bss
        .align  3
        .globl  m_ctx
m_ctx:  .space  128
