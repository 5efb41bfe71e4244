/* delegation: medeleg routes exceptions from U/S to the S-mode handler. */
#include "lib.h"

__asm__(
    ".option push\n"
    ".option norvc\n"
    ".globl d_ecall, d_ecall_site\n"
    "d_ecall:\n"
    "  li a7, 0\n"
    "d_ecall_site:\n"
    "  ecall\n"
    "  ret\n"
    ".globl d_illegal, d_illegal_site\n"
    "d_illegal:\n"
    "d_illegal_site:\n"
    "  .word 0x0000100b\n" /* custom-0 opcode */
    "  ret\n"
    ".globl d_ebreak, d_ebreak_site\n"
    "d_ebreak:\n"
    "d_ebreak_site:\n"
    "  ebreak\n"
    "  ret\n"
    ".option pop\n");
extern void d_ecall(void), d_illegal(void), d_ebreak(void);
extern char d_ecall_site[], d_illegal_site[], d_ebreak_site[];

struct srec {
    unsigned long cause, epc, tval, spp, spie, sie;
};
static volatile struct srec slog[16];
static volatile int nslog;

static int s_log_hook(struct trap_frame *f)
{
    if (f->cause == EXC_ECALL_U && f->regs[REG_A7] == SYS_RETURN)
        return 0; /* let the runtime hand control back to M */
    unsigned long st = csr_read(sstatus);
    volatile struct srec *r = &slog[nslog++ & 15];
    r->cause = csr_read(scause);
    r->epc = csr_read(sepc);
    r->tval = csr_read(stval);
    r->spp = !!(st & MSTATUS_SPP);
    r->spie = !!(st & MSTATUS_SPIE);
    r->sie = !!(st & MSTATUS_SIE);
    f->epc += 4; /* every trapping instruction here is 4 bytes */
    return 1;
}

static long user_seq(long arg)
{
    d_ecall();
    d_illegal();
    d_ebreak();
    probe_ld(UNMAPPED_ADDR + 8);
    return arg * 2;
}

static long super_seq(long arg)
{
    d_illegal(); /* delegated: stays in S */
    d_ecall();   /* ecall from S: not delegated, goes to M */
    return arg + 100;
}

static void show(const char *what, volatile struct srec *r, unsigned long cause, void *epc)
{
    printf("%s: scause=%lu SPP=%c SPIE=%lu SIE=%lu\n", what, r->cause, r->spp ? 'S' : 'U', r->spie, r->sie);
    check("  scause matches", r->cause == cause);
    check("  sepc is the trapping instruction", r->epc == (unsigned long)epc);
}

int main(void)
{
    uart_puts("delegation test\n");
    setup_s_traps();
    s_hook = s_log_hook;

    unsigned long deleg = (1UL << EXC_ECALL_U) | (1UL << EXC_ILLEGAL) | (1UL << EXC_BREAKPOINT) |
                          (1UL << EXC_LOAD_ACCESS);
    csr_write(medeleg, deleg);
    check("medeleg holds the delegated bits", (csr_read(medeleg) & deleg) == deleg);

    /* U-mode sequence with mstatus.SIE = 1: each trap goes to S and srets back. */
    csr_set(mstatus, MSTATUS_SIE);
    unsigned long mcount = m_trap.count;
    nslog = 0;
    long r = run_in_mode(PRV_U, user_seq, 21);
    check("U sequence finished after 4 delegated traps", r == 42 && nslog == 4);
    check("M handler saw none of them", m_trap.count == mcount);
    show("U ecall", &slog[0], EXC_ECALL_U, d_ecall_site);
    check("  stval is 0", slog[0].tval == 0);
    check("  SIE cleared, old SIE kept in SPIE", slog[0].sie == 0 && slog[0].spie == 1);
    show("U illegal instruction", &slog[1], EXC_ILLEGAL, d_illegal_site);
    printf("  stval=%08lx\n", slog[1].tval);
    check("  sret restored SIE (SPIE=1 again)", slog[1].spie == 1);
    show("U ebreak", &slog[2], EXC_BREAKPOINT, d_ebreak_site);
    show("U load access fault", &slog[3], EXC_LOAD_ACCESS, (void *)probe_ld);
    check("  stval is the address", slog[3].tval == UNMAPPED_ADDR + 8);
    csr_clear(mstatus, MSTATUS_SIE);

    /* S-mode: delegated illegal stays in S; ecall from S (not delegated) goes to M. */
    nslog = 0;
    mcount = m_trap.count;
    expect_m(4);
    r = run_in_mode(PRV_S, super_seq, 1);
    check("S sequence finished", r == 101);
    check("one trap went to S", nslog == 1);
    show("S illegal instruction", &slog[0], EXC_ILLEGAL, d_illegal_site);
    printf("ecall from S: mcause=%lu, handled in M: %s\n", m_trap.cause,
           m_trap.count == mcount + 1 ? "yes" : "no");
    check("  mepc is the ecall", m_trap.epc == (unsigned long)d_ecall_site);

    /* Delegation never moves a trap taken in M-mode down to S. */
    nslog = 0;
    mcount = m_trap.count;
    expect_m(4);
    d_illegal();
    printf("illegal instruction in M with medeleg[2]=1: handled in %s\n",
           m_trap.count == mcount + 1 && nslog == 0 ? "M" : "S");
    check("  mcause is illegal instruction", m_trap.cause == EXC_ILLEGAL);
    check("  mepc is the trapping instruction", m_trap.epc == (unsigned long)d_illegal_site);
    csr_set(medeleg, 1UL << EXC_ECALL_M); /* WARL: may or may not stick */
    mcount = m_trap.count;
    expect_m(4);
    d_ecall();
    printf("ecall in M with medeleg[11] written 1: handled in %s\n",
           m_trap.count == mcount + 1 && nslog == 0 ? "M" : "S");
    check("  mcause is ecall from M", m_trap.cause == EXC_ECALL_M);

    /* Without delegation, a U ecall goes to M. */
    csr_write(medeleg, 0);
    mcount = m_trap.count;
    expect_m(4);
    r = run_in_mode(PRV_U, (long (*)(long))d_ecall, 0);
    printf("U ecall with medeleg=0: handled in %s, mcause=%lu\n",
           m_trap.count == mcount + 1 && nslog == 0 ? "M" : "S", m_trap.cause);

    finish();
}
