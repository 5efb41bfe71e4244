/* paging: Sv39 (and Sv48/Sv57 when satp accepts them) translation from S/U. */
#include "lib.h"

#define PTE_V (1UL << 0)
#define PTE_R (1UL << 1)
#define PTE_W (1UL << 2)
#define PTE_X (1UL << 3)
#define PTE_U (1UL << 4)
#define PTE_A (1UL << 6)
#define PTE_D (1UL << 7)
#define PTE(pa, fl) ((((unsigned long)(pa)) >> 12) << 10 | (fl) | PTE_V)
#define LEAF_RW (PTE_R | PTE_W | PTE_A | PTE_D)
#define LEAF_RWX (PTE_R | PTE_W | PTE_X | PTE_A | PTE_D)

#define SATP_SV39 (8UL << 60)
#define SATP_SV48 (9UL << 60)
#define SATP_SV57 (10UL << 60)

/* virtual layout */
#define VA_ALIAS1G 0x100000000UL /* 1 GiB page -> RAM at 0x80000000 */
#define VA_MEGA    0xC0000000UL  /* 2 MiB page -> MEGA_PA */
#define VA_4K      0xC0200000UL  /* 4 KiB pages, see l0[] */
#define VA_UPAGE   (VA_4K + 0x0000)
#define VA_RO      (VA_4K + 0x1000)
#define VA_XONLY   (VA_4K + 0x2000)
#define VA_AD      (VA_4K + 0x3000)
#define VA_INVALID (VA_4K + 0x4000)
#define VA_SWAP    (VA_4K + 0x5000)
#define VA_UTEXT   (VA_4K + 0x6000)
#define VA_SONLY   (VA_4K + 0x7000)
#define VA_BADMEGA 0xC0400000UL  /* misaligned 2 MiB leaf */
#define MEGA_PA    0x80600000UL

typedef unsigned long pte_t;
static pte_t root39[512] __attribute__((aligned(4096)));
static pte_t l1[512] __attribute__((aligned(4096)));
static pte_t l0[512] __attribute__((aligned(4096)));
static pte_t root48[512] __attribute__((aligned(4096)));
static pte_t l48b[512] __attribute__((aligned(4096)));
static pte_t root57[512] __attribute__((aligned(4096)));
static unsigned long upage[512] __attribute__((aligned(4096)));
static unsigned long ropage[512] __attribute__((aligned(4096)));
static unsigned long xpage[512] __attribute__((aligned(4096)));
static unsigned long adpage[512] __attribute__((aligned(4096)));
static unsigned long swap1[512] __attribute__((aligned(4096)));
static unsigned long swap2[512] __attribute__((aligned(4096)));
static unsigned long spage[512] __attribute__((aligned(4096)));
static volatile unsigned long marker = 0x5EC0DE5EC0DE0001UL;

static inline void sfence_all(void) { __asm__ volatile("sfence.vma" ::: "memory"); }
static inline void sfence_va(unsigned long va) { __asm__ volatile("sfence.vma %0, zero" ::"r"(va) : "memory"); }

#define UTEXT_VA(sym) (VA_UTEXT + ((unsigned long)(sym) - (unsigned long)__utext_start))

/* S-mode fault probe: returns 1 and the recorded trap if the access faulted. */
static int s_faults(int kind, unsigned long va, unsigned long *cause, unsigned long *tval)
{
    unsigned long n = s_trap.count;
    expect_s(kind == 2 ? 0 : 4);
    if (kind == 0)
        probe_ld(va);
    else if (kind == 1)
        probe_sd(va, 0x77);
    else
        probe_jump(va);
    s_expect = 0;
    *cause = s_trap.cause;
    *tval = s_trap.tval;
    return s_trap.count == n + 1;
}

static void fault_line(const char *what, int kind, unsigned long va, unsigned long want_cause)
{
    unsigned long cause = 0, tval = 0;
    int f = s_faults(kind, va, &cause, &tval);
    if (!f) {
        printf("%s: no fault\n", what);
        failures++;
        return;
    }
    printf("%s: scause=%lu stval=%s\n", what, cause, tval == va ? "va" : "WRONG");
    if (cause != want_cause || tval != va)
        failures++;
}

static void no_fault_line(const char *what, int ok)
{
    check(what, ok);
}

static long s_sv39_tests(long arg)
{
    unsigned long off = (unsigned long)&marker - 0x80000000UL;
    uart_puts("-- Sv39 from S-mode\n");
    check("identity-mapped code, data and UART work", marker == 0x5EC0DE5EC0DE0001UL);
    check("1 GiB page alias reads marker", *(volatile unsigned long *)(VA_ALIAS1G + off) == marker);
    *(volatile unsigned long *)(VA_ALIAS1G + off) = 0x5EC0DE5EC0DE0002UL;
    check("store through 1 GiB alias visible at identity address", marker == 0x5EC0DE5EC0DE0002UL);
    check("2 MiB page reads data placed by M at the physical address",
          *(volatile unsigned long *)(VA_MEGA + 0x12340) == 0xAB12340UL &&
              *(volatile unsigned long *)(VA_MEGA + 0x1FFFF8) == 0xABFFFF8UL);
    check("4 KiB read-only page readable", *(volatile unsigned long *)(VA_RO + 8) == 0x1234);
    fault_line("store to read-only page", 1, VA_RO + 16, EXC_STORE_PAGE);
    fault_line("load from invalid PTE", 0, VA_INVALID + 0x10, EXC_LOAD_PAGE);
    fault_line("store to invalid PTE", 1, VA_INVALID + 0x18, EXC_STORE_PAGE);
    fault_line("jump to invalid PTE", 2, VA_INVALID + 0x20, EXC_INSN_PAGE);
    fault_line("load from misaligned 2 MiB superpage", 0, VA_BADMEGA + 0x40, EXC_LOAD_PAGE);
    fault_line("load from non-canonical address", 0, 0x0000004000000000UL, EXC_LOAD_PAGE);

    /* U pages from S: SUM */
    csr_clear(sstatus, MSTATUS_SUM);
    fault_line("S load from U page, SUM=0", 0, VA_UPAGE, EXC_LOAD_PAGE);
    csr_set(sstatus, MSTATUS_SUM);
    no_fault_line("S load from U page, SUM=1", probe_ld(VA_UPAGE) == 0x0BADC0DE && s_expect == 0);
    fault_line("S jump into U page, SUM=1", 2, UTEXT_VA(uprobe_ld), EXC_INSN_PAGE);
    csr_clear(sstatus, MSTATUS_SUM);

    /* execute-only page: MXR */
    csr_clear(sstatus, MSTATUS_MXR);
    fault_line("load from execute-only page, MXR=0", 0, VA_XONLY, EXC_LOAD_PAGE);
    csr_set(sstatus, MSTATUS_MXR);
    no_fault_line("load from execute-only page, MXR=1", probe_ld(VA_XONLY) == 0x00100073UL);
    csr_clear(sstatus, MSTATUS_MXR);

    /* hardware A/D update */
    volatile pte_t *ad = &l0[3];
    check("A and D clear before access", (*ad & (PTE_A | PTE_D)) == 0);
    (void)*(volatile unsigned long *)(VA_AD);
    pte_t p = *ad;
    printf("after load: A=%lu D=%lu\n", (p >> 6) & 1, (p >> 7) & 1);
    *(volatile unsigned long *)(VA_AD + 8) = 5;
    p = *ad;
    printf("after store: A=%lu D=%lu\n", (p >> 6) & 1, (p >> 7) & 1);
    check("store landed in the physical page", ((volatile unsigned long *)adpage)[1] == 5);

    /* sfence.vma after changing a PTE */
    check("swap page reads the first frame", *(volatile unsigned long *)VA_SWAP == 0x1111);
    *(volatile pte_t *)&l0[5] = PTE(swap2, LEAF_RW);
    sfence_va(VA_SWAP);
    check("after PTE change + sfence.vma reads the second frame", *(volatile unsigned long *)VA_SWAP == 0x2222);
    return 0;
}

/* Run a U-mode probe (code on the U-mapped utext page). */
static long run_user(void *probe, unsigned long a0)
{
    return enter_mode_full(PRV_U, (void *)UTEXT_VA(probe), a0, 0, (void *)UTEXT_VA(user_return_stub));
}

static long s_wide_tests(long mode)
{
    unsigned long off = (unsigned long)&marker - 0x80000000UL;
    printf("-- Sv%ld from S-mode\n", mode == 9 ? 48L : 57L);
    check("identity-mapped code and data work", marker == 0x5EC0DE5EC0DE0002UL);
    check("1 GiB page above 512 GiB reads marker",
          *(volatile unsigned long *)(0x8000000000UL + 0x80000000UL + off) == marker);
    check("512 GiB page reads marker", *(volatile unsigned long *)(0x10000000000UL + 0x80000000UL + off) == marker);
    if (mode == 10) {
        check("256 TiB page reads marker",
              *(volatile unsigned long *)(0x1000000000000UL + 0x80000000UL + off) == marker);
    } else {
        fault_line("load above the Sv48 range (bit 48)", 0, 0x1000000000000UL + 0x80000000UL + off, EXC_LOAD_PAGE);
    }
    return 0;
}

__asm__(".option push\n"
        ".option norvc\n"
        ".globl mprv_ld\n"
        "mprv_ld:\n" /* long mprv_ld(addr, mpp): one load with MPRV=1, MPP=mpp */
        "  li t0, 0x1800\n"
        "  csrc mstatus, t0\n"
        "  slli a1, a1, 11\n"
        "  li t0, 0x20000\n"
        "  or a1, a1, t0\n"
        "  csrs mstatus, a1\n"
        "  ld a0, 0(a0)\n"
        "  csrc mstatus, t0\n"
        "  ret\n"
        ".option pop\n");
extern long mprv_ld(unsigned long addr, long mpp);

int main(void)
{
    uart_puts("paging test\n");
    setup_s_traps();
    csr_write(medeleg, (1UL << EXC_INSN_PAGE) | (1UL << EXC_LOAD_PAGE) | (1UL << EXC_STORE_PAGE));

    if ((unsigned long)_end > MEGA_PA) {
        uart_puts("image too large\n");
        exit(2);
    }
    /* data behind the mappings */
    *(volatile unsigned long *)(MEGA_PA + 0x12340) = 0xAB12340UL;
    *(volatile unsigned long *)(MEGA_PA + 0x1FFFF8) = 0xABFFFF8UL;
    upage[0] = 0x0BADC0DE;
    ropage[1] = 0x1234;
    xpage[0] = 0x00100073UL; /* an ebreak, read as data */
    swap1[0] = 0x1111;
    swap2[0] = 0x2222;
    spage[0] = 0x5A5A;

    root39[0] = PTE(0x0, LEAF_RW);                /* devices, 1 GiB */
    root39[2] = PTE(0x80000000UL, LEAF_RWX);      /* RAM identity, 1 GiB */
    root39[3] = PTE(l1, 0);
    root39[4] = PTE(0x80000000UL, LEAF_RW);       /* RAM alias at 4 GiB */
    l1[0] = PTE(MEGA_PA, LEAF_RW);
    l1[1] = PTE(l0, 0);
    l1[2] = PTE(MEGA_PA + 0x1000, LEAF_RW);       /* misaligned superpage */
    l0[0] = PTE(upage, LEAF_RW | PTE_U);
    l0[1] = PTE(ropage, PTE_R | PTE_A);
    l0[2] = PTE(xpage, PTE_X | PTE_A);
    l0[3] = PTE(adpage, PTE_R | PTE_W);           /* A=D=0: hardware sets them */
    l0[4] = 0;
    l0[5] = PTE(swap1, LEAF_RW);
    l0[6] = PTE(__utext_start, PTE_R | PTE_X | PTE_A | PTE_U);
    l0[7] = PTE(spage, LEAF_RW);

    csr_write(satp, SATP_SV39 | ((unsigned long)root39 >> 12));
    sfence_all();
    check("satp accepts Sv39", (csr_read(satp) >> 60) == 8);
    run_in_mode(PRV_S, s_sv39_tests, 0);

    uart_puts("-- Sv39 from U-mode\n");
    check("U load from U page", run_user(uprobe_ld, VA_UPAGE) == 0x0BADC0DE);
    run_user(uprobe_sd, VA_UPAGE + 8);
    check("U store to U page", ((volatile unsigned long *)upage)[1] == VA_UPAGE + 8);
    unsigned long n = s_trap.count;
    expect_s(4);
    run_user(uprobe_ld, VA_SONLY);
    printf("U load from S page: scause=%lu stval=%s from %s\n", s_trap.cause,
           s_trap.tval == VA_SONLY ? "va" : "WRONG", s_trap.prev_mode == PRV_U ? "U" : "S");
    check("  fault taken in S", s_trap.count == n + 1 && s_trap.cause == EXC_LOAD_PAGE);
    n = s_trap.count;
    expect_s(0);
    run_user(uprobe_jump, VA_UPAGE);
    printf("U jump to non-executable U page: scause=%lu stval=%s\n", s_trap.cause,
           s_trap.tval == VA_UPAGE ? "va" : "WRONG");
    check("  fault taken in S", s_trap.count == n + 1 && s_trap.cause == EXC_INSN_PAGE);

    uart_puts("-- MPRV from M-mode\n");
    check("MPRV=1 MPP=S load through 2 MiB page", mprv_ld(VA_MEGA + 0x12340, PRV_S) == 0xAB12340UL);
    n = m_trap.count;
    expect_m(4);
    mprv_ld(VA_UPAGE, PRV_S);
    printf("MPRV=1 MPP=S load from U page, SUM=0: mcause=%lu mtval=%s (trap in M)\n", m_trap.cause,
           m_trap.tval == VA_UPAGE ? "va" : "WRONG");
    check("  fault taken in M", m_trap.count == n + 1 && m_trap.cause == EXC_LOAD_PAGE);
    csr_set(mstatus, MSTATUS_SUM);
    check("MPRV=1 MPP=S load from U page, SUM=1", mprv_ld(VA_UPAGE, PRV_S) == 0x0BADC0DE);
    csr_clear(mstatus, MSTATUS_SUM);
    check("MPRV=1 MPP=M load is not translated", mprv_ld((unsigned long)&spage[0], PRV_M) == 0x5A5A);
    check("M-mode accesses untranslated with satp set", spage[0] == 0x5A5A);

    /* Sv48 / Sv57: only if satp keeps the mode (an unsupported mode is not written). */
    root48[0] = PTE(root39, 0);
    root48[1] = PTE(l48b, 0);
    root48[2] = PTE(0x0, LEAF_RWX);               /* 512 GiB page at VA 1 TiB */
    l48b[2] = PTE(0x80000000UL, LEAF_RW);         /* VA 512 GiB + 2 GiB */
    root57[0] = PTE(root48, 0);
    root57[1] = PTE(0x0, LEAF_RWX);               /* 256 TiB page at VA 256 TiB */

    csr_write(satp, SATP_SV48 | ((unsigned long)root48 >> 12));
    sfence_all();
    int sv48 = (csr_read(satp) >> 60) == 9;
    printf("satp mode after writing Sv48: %s\n", sv48 ? "Sv48" : "unchanged");
    if (sv48)
        run_in_mode(PRV_S, s_wide_tests, 9);

    csr_write(satp, SATP_SV57 | ((unsigned long)root57 >> 12));
    sfence_all();
    unsigned long mode = csr_read(satp) >> 60;
    printf("satp mode after writing Sv57: %s\n", mode == 10 ? "Sv57" : "unchanged");
    if (mode == 10)
        run_in_mode(PRV_S, s_wide_tests, 10);

    csr_write(satp, 0);
    sfence_all();
    check("satp back to Bare", csr_read(satp) == 0);
    finish();
}
