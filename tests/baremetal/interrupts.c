/* interrupts: CLINT timer/software interrupts, S-level interrupts, priorities, WFI. */
#include "lib.h"

struct irec {
    unsigned long cause, mode; /* mode = privilege the trap came from */
    char level;                /* 'M' or 'S' handler */
};
static volatile struct irec ilog[32];
static volatile int nilog;

static void log_irq(char level, unsigned long cause, unsigned long mode)
{
    volatile struct irec *r = &ilog[nilog++ & 31];
    r->cause = cause;
    r->mode = mode;
    r->level = level;
}

static int m_irq_hook(struct trap_frame *f)
{
    if (!(f->cause & CAUSE_INTR))
        return 0;
    unsigned long code = f->cause & ~CAUSE_INTR;
    log_irq('M', code, (f->status & MSTATUS_MPP) >> 11);
    switch (code) {
    case IRQ_M_TIMER:
        mtimecmp_write(~0UL);
        break;
    case IRQ_M_SOFT:
        mmio_write32(CLINT_MSIP, 0);
        break;
    case IRQ_S_SOFT:
        csr_clear(mip, MIP_SSIP);
        break;
    case IRQ_S_TIMER:
        csr_clear(mip, MIP_STIP);
        break;
    default:
        printf("unexpected interrupt %lu\n", code);
        exit(98);
    }
    return 1;
}

static int s_irq_hook(struct trap_frame *f)
{
    if (!(f->cause & CAUSE_INTR))
        return 0;
    unsigned long code = f->cause & ~CAUSE_INTR;
    log_irq('S', code, (f->status & MSTATUS_SPP) ? PRV_S : PRV_U);
    if (code == IRQ_S_SOFT)
        csr_clear(sip, MIP_SSIP);
    else if (code == IRQ_S_TIMER)
        csr_clear(sie, MIP_STIP); /* only M can clear STIP: mask it */
    return 1;
}

static void spin_until_count(int n)
{
    for (long i = 0; i < 50000000 && nilog < n; i++)
        __asm__ volatile("nop");
}

static const char *mode_name(unsigned long m)
{
    return m == PRV_M ? "M" : m == PRV_S ? "S" : "U";
}

static void print_log(const char *what)
{
    printf("%s:", what);
    for (int i = 0; i < nilog; i++)
        printf(" %c%lu(from %s)", ilog[i].level, ilog[i].cause, mode_name(ilog[i].mode));
    printf("\n");
}

/* S-mode body: enable SIE and wait for the pending delegated interrupt. */
static long s_wait_with_sie(long n)
{
    csr_set(sstatus, MSTATUS_SIE);
    spin_until_count(n);
    csr_clear(sstatus, MSTATUS_SIE);
    return nilog;
}

/* Lower-mode body with SIE (and MIE) clear: wait for n logged interrupts. */
static long wait_plain(long n)
{
    spin_until_count(n);
    return nilog;
}

int main(void)
{
    uart_puts("interrupts test\n");
    m_hook = m_irq_hook;
    s_hook = s_irq_hook;
    setup_s_traps();
    mtimecmp_write(~0UL);
    csr_write(mie, 0);
    csr_clear(mstatus, MSTATUS_MIE | MSTATUS_SIE);

    /* 1. machine timer */
    nilog = 0;
    csr_write(mie, MIP_MTIP);
    uint64_t target = mtime_read() + 10000; /* 1 ms */
    mtimecmp_write(target);
    csr_set(mstatus, MSTATUS_MIE);
    spin_until_count(1);
    uint64_t after = mtime_read();
    csr_clear(mstatus, MSTATUS_MIE);
    print_log("machine timer");
    check("  mcause 7 taken once", nilog == 1 && ilog[0].cause == IRQ_M_TIMER);
    check("  not before mtimecmp", after >= target);
    check("  MTIP clear after mtimecmp moved", !(csr_read(mip) & MIP_MTIP));

    /* MTIP follows mtime >= mtimecmp even while masked */
    mtimecmp_write(0);
    check("MTIP pending while MIE=0 and mtimecmp=0", (csr_read(mip) & MIP_MTIP) != 0);
    check("  no interrupt taken while MIE=0", nilog == 1);
    mtimecmp_write(~0UL);
    check("  MTIP clears when mtimecmp is raised", !(csr_read(mip) & MIP_MTIP));

    /* 2. machine software interrupt, gated by MIE and mie.MSIE */
    nilog = 0;
    csr_write(mie, 0);
    mmio_write32(CLINT_MSIP, 1);
    csr_set(mstatus, MSTATUS_MIE);
    spin_until_count(1);
    csr_clear(mstatus, MSTATUS_MIE);
    check("msip=1 with mie.MSIE=0: not taken, mip.MSIP=1", nilog == 0 && (csr_read(mip) & MIP_MSIP));
    csr_write(mie, MIP_MSIP);
    spin_until_count(1);
    check("mie.MSIE=1 but mstatus.MIE=0: not taken", nilog == 0);
    csr_set(mstatus, MSTATUS_MIE);
    spin_until_count(1);
    csr_clear(mstatus, MSTATUS_MIE);
    print_log("machine software");
    check("  taken once MIE=1, cleared by msip=0", nilog == 1 && ilog[0].cause == IRQ_M_SOFT &&
                                                         !(csr_read(mip) & MIP_MSIP));

    /* 3. priorities.  Only orders on which the privileged spec and QEMU 7.2
     * agree are checked: MSI before MTI; delegated SSI before STI; and an
     * M-level interrupt before a delegated S-level one.  (QEMU 7.2 without
     * AIA picks the lowest-numbered pending bit, so mixing non-delegated
     * S-level with M-level interrupts would not follow the spec order.) */
    nilog = 0;
    csr_write(mideleg, 0);
    csr_write(mie, MIP_MSIP | MIP_MTIP);
    mtimecmp_write(0);
    mmio_write32(CLINT_MSIP, 1);
    csr_set(mstatus, MSTATUS_MIE);
    spin_until_count(2);
    csr_clear(mstatus, MSTATUS_MIE);
    print_log("MSI and MTI pending at once");
    check("  MSI first, then MTI", nilog == 2 && ilog[0].cause == IRQ_M_SOFT && ilog[1].cause == IRQ_M_TIMER);

    csr_set(mip, MIP_SSIP | MIP_STIP);
    check("mip.SSIP and mip.STIP writable from M-mode",
          (csr_read(mip) & (MIP_SSIP | MIP_STIP)) == (MIP_SSIP | MIP_STIP));
    csr_clear(mip, MIP_SSIP | MIP_STIP);

    /* 4. delegated S interrupts are never taken in M-mode */
    nilog = 0;
    csr_write(mideleg, MIP_SSIP | MIP_STIP);
    check("mideleg holds SSIP and STIP", (csr_read(mideleg) & (MIP_SSIP | MIP_STIP)) == (MIP_SSIP | MIP_STIP));
    csr_write(mie, MIP_SSIP | MIP_STIP);
    csr_set(mip, MIP_SSIP);
    csr_set(mstatus, MSTATUS_MIE | MSTATUS_SIE);
    spin_until_count(1);
    csr_clear(mstatus, MSTATUS_MIE | MSTATUS_SIE);
    check("delegated SSI pending in M-mode (MIE=SIE=1): not taken", nilog == 0);

    /* ... but taken in S-mode once SIE=1 */
    long r = run_in_mode(PRV_S, s_wait_with_sie, 1);
    print_log("delegated SSI in S-mode");
    check("  taken by the S handler, scause 1", r == 1 && ilog[0].level == 'S' && ilog[0].cause == IRQ_S_SOFT);
    check("  SSIP cleared by S via sip", !(csr_read(mip) & MIP_SSIP));

    /* in S-mode with SIE=0 a pending delegated interrupt waits */
    nilog = 0;
    csr_set(mip, MIP_SSIP);
    r = run_in_mode(PRV_S, wait_plain, 1);
    check("delegated SSI in S-mode with SIE=0: not taken", r == 0);
    csr_clear(mip, MIP_SSIP);

    /* in U-mode S interrupts are taken regardless of SIE */
    nilog = 0;
    csr_set(mip, MIP_STIP);
    csr_set(mie, MIP_STIP);
    r = run_in_mode(PRV_U, wait_plain, 1);
    print_log("delegated STI in U-mode with SIE=0");
    check("  taken by the S handler, scause 5", r == 1 && ilog[0].level == 'S' && ilog[0].cause == IRQ_S_TIMER &&
                                                   ilog[0].mode == PRV_U);
    csr_clear(mip, MIP_STIP);

    /* SSI before STI when both are delegated and pending in S-mode */
    nilog = 0;
    csr_write(mie, MIP_SSIP | MIP_STIP);
    csr_set(mip, MIP_SSIP | MIP_STIP);
    r = run_in_mode(PRV_S, s_wait_with_sie, 2);
    print_log("delegated SSI and STI pending in S-mode");
    check("  SSI first, then STI", r == 2 && ilog[0].cause == IRQ_S_SOFT && ilog[1].cause == IRQ_S_TIMER);
    csr_clear(mip, MIP_STIP);

    /* an M-level interrupt goes before a delegated S-level one */
    nilog = 0;
    csr_write(mie, MIP_SSIP | MIP_MSIP);
    csr_set(mip, MIP_SSIP);
    mmio_write32(CLINT_MSIP, 1);
    r = run_in_mode(PRV_S, s_wait_with_sie, 2);
    print_log("MSI and delegated SSI pending in S-mode");
    check("  MSI (to M) first, then SSI (to S)", r == 2 && ilog[0].level == 'M' && ilog[0].cause == IRQ_M_SOFT &&
                                                    ilog[1].level == 'S' && ilog[1].cause == IRQ_S_SOFT);

    /* M interrupts are taken in S and U regardless of MIE */
    nilog = 0;
    csr_write(mideleg, 0);
    csr_write(mie, MIP_MTIP | MIP_MSIP);
    mtimecmp_write(0);
    r = run_in_mode(PRV_S, wait_plain, 1);
    mmio_write32(CLINT_MSIP, 1);
    r += run_in_mode(PRV_U, wait_plain, 2);
    print_log("M interrupts in S and U with MIE=0");
    check("  both taken in M", r == 3 && ilog[0].level == 'M' && ilog[0].mode == PRV_S &&
                                    ilog[1].level == 'M' && ilog[1].mode == PRV_U);

    /* 5. WFI wakes on a pending enabled interrupt even with MIE=0 */
    nilog = 0;
    csr_write(mie, MIP_MTIP);
    mtimecmp_write(mtime_read() + 5000);
    int wakes = 0;
    while (!(csr_read(mip) & MIP_MTIP) && wakes < 1000000) {
        __asm__ volatile("wfi");
        wakes++;
    }
    check("wfi with MIE=0: MTIP pending afterwards, no trap", (csr_read(mip) & MIP_MTIP) && nilog == 0);

    /* once MIE is set the pending timer interrupt is taken */
    csr_set(mstatus, MSTATUS_MIE);
    spin_until_count(1);
    csr_clear(mstatus, MSTATUS_MIE);
    print_log("after wfi, MIE set");
    check("  MTI taken", nilog == 1 && ilog[0].cause == IRQ_M_TIMER);

    csr_write(mie, 0);
    finish();
}
