/* atomics_fp: LR/SC, AMOs, double/single FP with fflags, mstatus.FS. */
#include "lib.h"

static volatile uint64_t dword __attribute__((aligned(64)));
static volatile uint32_t word __attribute__((aligned(64)));
static volatile uint64_t other __attribute__((aligned(64)));

static inline uint64_t lr_d(volatile uint64_t *p)
{
    uint64_t v;
    __asm__ volatile("lr.d %0, (%1)" : "=r"(v) : "r"(p) : "memory");
    return v;
}
static inline long sc_d(volatile uint64_t *p, uint64_t v)
{
    long r;
    __asm__ volatile("sc.d %0, %2, (%1)" : "=&r"(r) : "r"(p), "r"(v) : "memory");
    return r;
}
static inline int32_t lr_w(volatile uint32_t *p)
{
    int32_t v;
    __asm__ volatile("lr.w %0, (%1)" : "=r"(v) : "r"(p) : "memory");
    return v;
}
static inline long sc_w(volatile uint32_t *p, uint32_t v)
{
    long r;
    __asm__ volatile("sc.w %0, %2, (%1)" : "=&r"(r) : "r"(p), "r"(v) : "memory");
    return r;
}

#define AMO_W(op, p, v) ({ long __o; __asm__ volatile(op ".w %0, %2, (%1)" : "=r"(__o) : "r"(p), "r"(v) : "memory"); __o; })
#define AMO_D(op, p, v) ({ long __o; __asm__ volatile(op ".d %0, %2, (%1)" : "=r"(__o) : "r"(p), "r"(v) : "memory"); __o; })

static void amo_w(const char *op, long old_expected_dummy, long r, uint32_t init)
{
    (void)old_expected_dummy;
    printf("%s.w: init=%08x old=%016lx mem=%08x\n", op, init, r, word);
}

#define TEST_AMO_W(op, init, val) do { word = (init); long __r = AMO_W(op, &word, (val)); amo_w(op, 0, __r, (init)); } while (0)
#define TEST_AMO_D(op, init, val) do { dword = (init); long __r = AMO_D(op, &dword, (val)); \
    printf("%s.d: init=%016lx old=%016lx mem=%016lx\n", op, (unsigned long)(init), __r, (unsigned long)dword); } while (0)

/* FP helpers: each op clears fflags, runs one instruction, returns flags. */
#define FOP_D(insn, a, b) ({ double __r; csr_write(fflags, 0); \
    __asm__ volatile(insn " %0, %1, %2" : "=f"(__r) : "f"(a), "f"(b)); __r; })
#define FOP1_D(insn, a) ({ double __r; csr_write(fflags, 0); \
    __asm__ volatile(insn " %0, %1" : "=f"(__r) : "f"(a)); __r; })

static unsigned long dbits(double d)
{
    unsigned long u;
    __asm__ volatile("fmv.x.d %0, %1" : "=r"(u) : "f"(d));
    return u;
}
static double bitsd(unsigned long u)
{
    double d;
    __asm__ volatile("fmv.d.x %0, %1" : "=f"(d) : "r"(u));
    return d;
}

static void show_d(const char *what, double r)
{
    unsigned long fl = csr_read(fflags);
    printf("%-28s = %016lx fflags=%02lx\n", what, dbits(r), fl);
}

__asm__(".option push\n"
        ".option norvc\n"
        ".globl fp_add_site, fp_add\n"
        "fp_add:\n" /* no FP arguments: nothing else touches FP state */
        "fp_add_site:\n"
        "  fadd.d ft0, ft0, ft1\n"
        "  ret\n"
        ".globl frcsr_site, fp_read_fcsr\n"
        "fp_read_fcsr:\n"
        "  li a0, -1\n"
        "frcsr_site:\n"
        "  frcsr a0\n"
        "  ret\n"
        ".option pop\n");
extern void fp_add(void);
extern long fp_read_fcsr(void);
extern char fp_add_site[], frcsr_site[];

int main(void)
{
    uart_puts("atomics_fp test\n");

    /* ---- LR/SC ---- */
    dword = 100;
    uint64_t v = lr_d(&dword);
    long r = sc_d(&dword, v + 1);
    printf("lr.d/sc.d: loaded=%lu sc=%s mem=%lu\n", (unsigned long)v, r == 0 ? "success" : "fail",
           (unsigned long)dword);
    r = sc_d(&dword, 555);
    printf("second sc.d without lr: %s mem=%lu\n", r == 0 ? "success" : "fail", (unsigned long)dword);

    word = 0xFFFFFFF0u;
    int32_t w = lr_w(&word);
    r = sc_w(&word, 7);
    printf("lr.w/sc.w: loaded=%d (sign-extended) sc=%s mem=%u\n", w, r == 0 ? "success" : "fail", word);

    (void)lr_d(&dword);
    r = sc_d(&other, 9);
    printf("sc.d to an address other than the lr.d one: %s other=%lu\n", r == 0 ? "success" : "fail",
           (unsigned long)other);

    /* A same-hart store to the reserved word that changes its value: QEMU (and
     * popek, which follows it) then fails the SC. */
    word = 1;
    (void)lr_w(&word);
    word = 2;
    r = sc_w(&word, 3);
    printf("sc.w after a store to the reserved word: %s mem=%u\n", r == 0 ? "success" : "fail", word);

    /* ---- AMOs ---- */
    TEST_AMO_W("amoswap", 0x11111111u, 0x22222222L);
    TEST_AMO_W("amoadd", 0x7FFFFFFFu, 1L);
    TEST_AMO_W("amoand", 0xF0F0F0F0u, 0xFF00FF00L);
    TEST_AMO_W("amoor", 0x0F0F0000u, 0x000000F0L);
    TEST_AMO_W("amoxor", 0xAAAAAAAAu, 0xFFFF0000L);
    TEST_AMO_W("amomin", 0xFFFFFFFEu, 5L);
    TEST_AMO_W("amomax", 0xFFFFFFFEu, 5L);
    TEST_AMO_W("amominu", 0xFFFFFFFEu, 5L);
    TEST_AMO_W("amomaxu", 0xFFFFFFFEu, 5L);
    TEST_AMO_D("amoswap", 0x1111111111111111UL, 0x2222222222222222L);
    TEST_AMO_D("amoadd", 0xFFFFFFFFFFFFFFFFUL, 2L);
    TEST_AMO_D("amoand", 0xF0F0F0F0F0F0F0F0UL, 0x00FF00FF00FF00FFL);
    TEST_AMO_D("amoor", 0x0000000100000000UL, 0x1L);
    TEST_AMO_D("amoxor", 0x5555555555555555UL, -1L);
    TEST_AMO_D("amomin", 0x8000000000000000UL, 1L);
    TEST_AMO_D("amomax", 0x8000000000000000UL, 1L);
    TEST_AMO_D("amominu", 0x8000000000000000UL, 1L);
    TEST_AMO_D("amomaxu", 0x8000000000000000UL, 1L);

    /* ---- FP ---- */
    volatile double one = 1.0, two = 2.0, three = 3.0, zero = 0.0;
    volatile double big = bitsd(0x7FEFFFFFFFFFFFFFUL), tiny = bitsd(0x0010000000000000UL);
    double x;
    x = FOP_D("fadd.d", one, two);
    show_d("1+2", x);
    x = FOP_D("fdiv.d", one, three);
    show_d("1/3", x);
    x = FOP_D("fmul.d", x, three);
    show_d("(1/3)*3", x);
    x = FOP1_D("fsqrt.d", two);
    show_d("sqrt(2)", x);
    x = FOP_D("fdiv.d", one, zero);
    show_d("1/0", x);
    x = FOP_D("fdiv.d", zero, zero);
    show_d("0/0", x);
    x = FOP_D("fmul.d", big, two);
    show_d("DBL_MAX*2", x);
    x = FOP_D("fmul.d", tiny, tiny);
    show_d("DBL_MIN*DBL_MIN", x);
    x = FOP_D("fsub.d", three, three);
    show_d("3-3", x);
    x = FOP_D("fmin.d", bitsd(0x7FF8000000000000UL), two);
    show_d("fmin(qNaN,2)", x);
    x = FOP_D("fmax.d", bitsd(0x7FF0000000000001UL), two);
    show_d("fmax(sNaN,2)", x);
    {
        double d;
        csr_write(fflags, 0);
        __asm__ volatile("fmadd.d %0, %1, %2, %3" : "=f"(d) : "f"(three), "f"(three), "f"(one));
        show_d("fmadd 3*3+1", d);
    }
    {
        long i;
        csr_write(fflags, 0);
        __asm__ volatile("fcvt.w.d %0, %1, rtz" : "=r"(i) : "f"(bitsd(0x4202A05F20000000UL))); /* 1e10 */
        printf("%-28s = %016lx fflags=%02lx\n", "fcvt.w.d(1e10)", i, csr_read(fflags));
        csr_write(fflags, 0);
        __asm__ volatile("fcvt.l.d %0, %1, rne" : "=r"(i) : "f"(bitsd(0xC004000000000000UL))); /* -2.5 */
        printf("%-28s = %016lx fflags=%02lx\n", "fcvt.l.d(-2.5, rne)", i, csr_read(fflags));
        __asm__ volatile("fclass.d %0, %1" : "=r"(i) : "f"(bitsd(0x8000000000000000UL)));
        printf("%-28s = %lx\n", "fclass.d(-0.0)", i);
    }
    {
        float fs;
        unsigned long raw;
        csr_write(fflags, 0);
        __asm__ volatile("fdiv.s %0, %1, %2" : "=f"(fs) : "f"((float)one), "f"((float)three));
        __asm__ volatile("fmv.x.d %0, %1" : "=r"(raw) : "f"(fs));
        printf("%-28s = %016lx fflags=%02lx (NaN-boxed)\n", "1/3 single", raw, csr_read(fflags));
    }
    csr_write(fflags, 0);
    csr_write(frm, 1); /* RTZ */
    check("frm reads back 1", csr_read(frm) == 1 && csr_read(fcsr) == (1 << 5));
    csr_write(fcsr, 0);

    /* ---- mstatus.FS ---- */
    csr_clear(mstatus, MSTATUS_FS);
    csr_set(mstatus, 1UL << 13); /* Initial */
    fp_add();
    unsigned long st = csr_read(mstatus);
    printf("FS after fadd from Initial: %lu, SD=%lu\n", (st >> 13) & 3, st >> 63);
    csr_clear(mstatus, MSTATUS_FS); /* Off */
    unsigned long n = m_trap.count;
    expect_m(4);
    fp_add();
    printf("fadd.d with FS=Off: %s mcause=%lu mtval=%08lx\n",
           m_trap.count == n + 1 && m_trap.epc == (unsigned long)fp_add_site ? "trapped" : "no trap",
           m_trap.cause, m_trap.tval);
    n = m_trap.count;
    expect_m(4);
    long fc = fp_read_fcsr();
    printf("frcsr with FS=Off: %s mcause=%lu mtval=%08lx rd=%ld\n",
           m_trap.count == n + 1 && m_trap.epc == (unsigned long)frcsr_site ? "trapped" : "no trap",
           m_trap.cause, m_trap.tval, fc);
    csr_set(mstatus, 1UL << 13);
    x = FOP_D("fadd.d", one, two);
    check("FP works again after FS=Initial", dbits(x) == 0x4008000000000000UL);
    finish();
}
