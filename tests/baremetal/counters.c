/* counters: Zicntr reads, minstret, counter-enable gating, ID CSRs. */
#include "lib.h"

__asm__(".option push\n"
        ".option norvc\n"
        ".globl read_cycle, read_time, read_instret, rd_cycle_site, rd_time_site, rd_instret_site\n"
        "read_cycle:\n"
        "  li a0, -1\n"
        "rd_cycle_site:\n"
        "  rdcycle a0\n"
        "  ret\n"
        "read_time:\n"
        "  li a0, -1\n"
        "rd_time_site:\n"
        "  rdtime a0\n"
        "  ret\n"
        "read_instret:\n"
        "  li a0, -1\n"
        "rd_instret_site:\n"
        "  rdinstret a0\n"
        "  ret\n"
        ".option pop\n");
extern long read_cycle(long), read_time(long), read_instret(long);
extern char rd_cycle_site[], rd_time_site[], rd_instret_site[];

static void busy(int n)
{
    for (volatile int i = 0; i < n; i++)
        ;
}

/* Tries the three reads in `mode`; prints which trapped. */
static void try_reads(const char *label, long mode)
{
    static long (*const fns[3])(long) = {read_cycle, read_time, read_instret};
    static const char *const names[3] = {"cycle", "time", "instret"};
    char *sites[3] = {rd_cycle_site, rd_time_site, rd_instret_site};
    printf("%s:", label);
    for (int i = 0; i < 3; i++) {
        unsigned long n = m_trap.count;
        expect_m(4);
        run_in_mode(mode, fns[i], 0);
        m_expect = 0;
        if (m_trap.count == n + 1) {
            int ok = m_trap.cause == EXC_ILLEGAL && m_trap.epc == (unsigned long)sites[i];
            printf(" %s=trap(%s,mtval=%08lx)", names[i], ok ? "illegal" : "WRONG", m_trap.tval);
            if (!ok)
                failures++;
        } else {
            printf(" %s=ok", names[i]);
        }
    }
    printf("\n");
}

int main(void)
{
    uart_puts("counters test\n");

    unsigned long c0 = read_cycle(0), t0 = read_time(0), i0 = read_instret(0);
    unsigned long mi0 = csr_read(minstret), mc0 = csr_read(mcycle);
    uint64_t mt0 = mtime_read();
    busy(20000);
    unsigned long c1 = read_cycle(0), i1 = read_instret(0);
    unsigned long mi1 = csr_read(minstret), mc1 = csr_read(mcycle);
    uint64_t mt1 = mtime_read();
    unsigned long t1 = read_time(0);

    printf("rdcycle increasing: %s\n", c1 > c0 ? "yes" : "no");
    printf("rdinstret increasing: %s\n", i1 > i0 ? "yes" : "no");
    printf("minstret advanced: %s\n", mi1 > mi0 ? "yes" : "no");
    printf("mcycle advanced: %s\n", mc1 > mc0 ? "yes" : "no");
    printf("mtime advanced: %s\n", mt1 > mt0 ? "yes" : "no");
    printf("rdtime advanced: %s\n", t1 > t0 ? "yes" : "no");
    printf("rdtime brackets mtime: %s\n", t0 <= mt0 && mt1 <= t1 ? "yes" : "no");
    if (!(c1 > c0 && i1 > i0 && mi1 > mi0 && mc1 > mc0 && mt1 > mt0 && t1 > t0 && t0 <= mt0 && mt1 <= t1))
        failures++;

    /* minstret is writable from M-mode */
    csr_write(minstret, 1000);
    unsigned long mi2 = csr_read(minstret);
    check("minstret written to 1000 then read back >= 1000", mi2 >= 1000 && mi2 < (1UL << 40));

    /* counter-enable gating */
    csr_write(mcounteren, 0);
    csr_write(scounteren, 0);
    try_reads("S-mode, mcounteren=0", PRV_S);
    try_reads("U-mode, mcounteren=0", PRV_U);
    csr_write(mcounteren, 7);
    try_reads("S-mode, mcounteren=7", PRV_S);
    try_reads("U-mode, mcounteren=7 scounteren=0", PRV_U);
    csr_write(scounteren, 2); /* time only */
    try_reads("U-mode, mcounteren=7 scounteren=2", PRV_U);
    csr_write(scounteren, 7);
    try_reads("U-mode, mcounteren=7 scounteren=7", PRV_U);
    csr_write(mcounteren, 5); /* cycle + instret, not time */
    try_reads("U-mode, mcounteren=5 scounteren=7", PRV_U);
    try_reads("M-mode, mcounteren=0", PRV_M);
    csr_write(mcounteren, 0);
    csr_write(scounteren, 0);

    /* identification */
    unsigned long misa = csr_read(misa);
    printf("misa.MXL=%lu\n", misa >> 62);
    printf("misa has:");
    const char *letters = "IMAFDCSU";
    for (const char *p = letters; *p; p++)
        if (misa & (1UL << (*p - 'A')))
            printf(" %c", *p);
    printf("\n");
    printf("mhartid=%lu\n", csr_read(mhartid));
    (void)csr_read(mvendorid);
    (void)csr_read(marchid);
    (void)csr_read(mimpid);
    printf("mvendorid/marchid/mimpid readable: yes\n");
    finish();
}
