/* traps: synchronous exceptions taken to M-mode from M, S and U. */
#include "lib.h"

/* Trap sites with known addresses.  norvc keeps them 4 bytes unless stated. */
__asm__(
    ".option push\n"
    ".option norvc\n"
    ".globl do_ecall, ecall_site\n"
    "do_ecall:\n"
    "  li a7, 0\n"
    "ecall_site:\n"
    "  ecall\n"
    "  ret\n"
    ".globl do_ebreak, ebreak_site\n"
    "do_ebreak:\n"
    "ebreak_site:\n"
    "  ebreak\n"
    "  ret\n"
    ".globl do_custom, custom_site\n"
    "do_custom:\n"
    "custom_site:\n"
    "  .word 0x1234500b\n" /* custom-0 opcode: illegal here */
    "  ret\n"
    ".globl do_csr_mhartid_write, csrw_site\n"
    "do_csr_mhartid_write:\n"
    "csrw_site:\n"
    "  csrw mhartid, a0\n"
    "  ret\n"
    ".globl do_read_mstatus, read_mstatus_site\n"
    "do_read_mstatus:\n"
    "  li a0, 0\n"
    "read_mstatus_site:\n"
    "  csrr a0, mstatus\n"
    "  ret\n"
    ".globl do_mret, mret_site\n"
    "do_mret:\n"
    "mret_site:\n"
    "  mret\n"
    "  ret\n"
    ".option pop\n"
    ".option push\n"
    ".option rvc\n"
    ".globl do_cebreak, cebreak_site\n"
    "do_cebreak:\n"
    "cebreak_site:\n"
    "  c.ebreak\n"
    "  ret\n"
    ".globl do_cunimp, cunimp_site\n"
    "do_cunimp:\n"
    "cunimp_site:\n"
    "  .half 0x0000\n"      /* all-zero 16-bit pattern: defined illegal */
    "  ret\n"
    ".globl do_caddi4spn0, caddi4spn0_site\n"
    "do_caddi4spn0:\n"
    "caddi4spn0_site:\n"
    "  .half 0x0004\n"      /* c.addi4spn with nzuimm = 0: reserved */
    "  ret\n"
    /* Jump target tests: entry returns 1, entry+2 returns a0 unchanged. */
    ".balign 4\n"
    ".globl jt_target\n"
    "jt_target:\n"
    "  c.li a0, 1\n"
    "  c.jr ra\n"
    ".globl call_via_jalr\n"
    "call_via_jalr:\n"  /* long call_via_jalr(long a0_value, unsigned long target) */
    "  addi sp, sp, -16\n"
    "  sd ra, 0(sp)\n"
    "  jalr ra, 0(a1)\n"
    "  ld ra, 0(sp)\n"
    "  addi sp, sp, 16\n"
    "  ret\n"
    ".option pop\n");

extern void do_caddi4spn0(void);
extern char caddi4spn0_site[];
extern void do_ecall(void), do_ebreak(void), do_custom(void), do_cebreak(void), do_cunimp(void);
extern void do_csr_mhartid_write(long), do_mret(void);
extern long do_read_mstatus(void);
extern char ecall_site[], ebreak_site[], custom_site[], cebreak_site[], cunimp_site[];
extern char csrw_site[], read_mstatus_site[], mret_site[], jt_target[];
extern long call_via_jalr(long a0, unsigned long target);

static const char *mode_name(unsigned long m)
{
    return m == PRV_M ? "M" : m == PRV_S ? "S" : m == PRV_U ? "U" : "?";
}

static void report(const char *what, unsigned long count_before, unsigned long cause, void *epc)
{
    printf("%s: mcause=%lu from %s-mode\n", what, m_trap.cause, mode_name(m_trap.prev_mode));
    check("  trap taken", m_trap.count == count_before + 1);
    check("  mcause matches", m_trap.cause == cause);
    if (epc)
        check("  mepc is the trapping instruction", m_trap.epc == (unsigned long)epc);
}

static long lower_ecall(long arg)
{
    do_ecall();
    return arg + 1;
}

static long lower_read_mstatus(long arg)
{
    return do_read_mstatus();
}

static long lower_mret(long arg)
{
    do_mret();
    return 5;
}

int main(void)
{
    unsigned long n;
    uart_puts("traps test\n");

    /* ecall from each mode */
    n = m_trap.count;
    expect_m(4);
    do_ecall();
    report("ecall in M", n, EXC_ECALL_M, ecall_site);

    n = m_trap.count;
    expect_m(4);
    long r = run_in_mode(PRV_S, lower_ecall, 41);
    report("ecall in S", n, EXC_ECALL_S, ecall_site);
    check("  S code resumed after ecall", r == 42);

    n = m_trap.count;
    expect_m(4);
    r = run_in_mode(PRV_U, lower_ecall, 9);
    report("ecall in U", n, EXC_ECALL_U, ecall_site);
    check("  U code resumed after ecall", r == 10);

    /* illegal instructions: mtval holds the instruction bits */
    n = m_trap.count;
    expect_m(4);
    do_custom();
    report("custom-0 opcode", n, EXC_ILLEGAL, custom_site);
    printf("  mtval=%08lx\n", m_trap.tval);

    n = m_trap.count;
    expect_m(2);
    do_cunimp();
    report("16-bit zero instruction", n, EXC_ILLEGAL, cunimp_site);
    printf("  mtval=%lx\n", m_trap.tval);

    n = m_trap.count;
    expect_m(2);
    do_caddi4spn0();
    report("c.addi4spn with zero immediate", n, EXC_ILLEGAL, caddi4spn0_site);
    printf("  mtval=%lx\n", m_trap.tval);

    n = m_trap.count;
    expect_m(4);
    do_csr_mhartid_write(0);
    report("write to read-only mhartid", n, EXC_ILLEGAL, csrw_site);
    printf("  mtval=%08lx\n", m_trap.tval);

    n = m_trap.count;
    expect_m(4);
    r = run_in_mode(PRV_S, lower_read_mstatus, 0);
    report("csrr mstatus in S", n, EXC_ILLEGAL, read_mstatus_site);
    printf("  mtval=%08lx\n", m_trap.tval);
    check("  destination register unchanged", r == 0);

    n = m_trap.count;
    expect_m(4);
    r = run_in_mode(PRV_U, lower_mret, 0);
    report("mret in U", n, EXC_ILLEGAL, mret_site);
    printf("  mtval=%08lx\n", m_trap.tval);
    check("  U code resumed", r == 5);

    /* breakpoints */
    n = m_trap.count;
    expect_m(4);
    do_ebreak();
    report("ebreak", n, EXC_BREAKPOINT, ebreak_site);

    n = m_trap.count;
    expect_m(2);
    do_cebreak();
    report("c.ebreak", n, EXC_BREAKPOINT, cebreak_site);

    /* access faults on an address with nothing behind it */
    n = m_trap.count;
    expect_m(4);
    probe_ld(UNMAPPED_ADDR);
    report("load from unmapped address", n, EXC_LOAD_ACCESS, (void *)probe_ld);
    check("  mtval is the address", m_trap.tval == UNMAPPED_ADDR);

    n = m_trap.count;
    expect_m(4);
    probe_sw(UNMAPPED_ADDR + 0x40, 1);
    report("store to unmapped address", n, EXC_STORE_ACCESS, (void *)probe_sw);
    check("  mtval is the address", m_trap.tval == UNMAPPED_ADDR + 0x40);

    n = m_trap.count;
    expect_m(0);
    probe_jump(UNMAPPED_ADDR + 0x100);
    report("jump to unmapped address", n, EXC_INSN_ACCESS, (void *)(UNMAPPED_ADDR + 0x100));
    check("  mtval is the address", m_trap.tval == UNMAPPED_ADDR + 0x100);

    /* jump targets: with C, 2-byte aligned targets are fine; jalr clears bit 0 */
    unsigned long t = (unsigned long)jt_target;
    check("jalr to target returns 1", call_via_jalr(7, t) == 1);
    check("jalr to target+2 (2-byte aligned) runs second half", call_via_jalr(7, t + 2) == 7);
    check("jalr to target|1 clears bit 0", call_via_jalr(7, t + 1) == 1);
    check("no trap taken by the jump tests", m_trap.count == n + 1);

    finish();
}
