/* Shared runtime for the popek bare-metal tests (QEMU virt machine). */
#ifndef POPEK_BAREMETAL_LIB_H
#define POPEK_BAREMETAL_LIB_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

/* ---- machine map (QEMU virt) ---- */
#define UART0_BASE      0x10000000UL
#define CLINT_BASE      0x02000000UL
#define CLINT_MSIP      (CLINT_BASE + 0x0)
#define CLINT_MTIMECMP  (CLINT_BASE + 0x4000)
#define CLINT_MTIME     (CLINT_BASE + 0xBFF8)
#define FINISHER_BASE   0x00100000UL
#define UNMAPPED_ADDR   0x08000000UL  /* nothing is mapped there on virt */

/* ---- privilege levels / CSR bits ---- */
#define PRV_U 0
#define PRV_S 1
#define PRV_M 3

#define MSTATUS_SIE   (1UL << 1)
#define MSTATUS_MIE   (1UL << 3)
#define MSTATUS_SPIE  (1UL << 5)
#define MSTATUS_MPIE  (1UL << 7)
#define MSTATUS_SPP   (1UL << 8)
#define MSTATUS_MPP   (3UL << 11)
#define MSTATUS_FS    (3UL << 13)
#define MSTATUS_MPRV  (1UL << 17)
#define MSTATUS_SUM   (1UL << 18)
#define MSTATUS_MXR   (1UL << 19)

#define IRQ_S_SOFT  1
#define IRQ_M_SOFT  3
#define IRQ_S_TIMER 5
#define IRQ_M_TIMER 7
#define IRQ_S_EXT   9
#define IRQ_M_EXT   11
#define MIP_SSIP (1UL << IRQ_S_SOFT)
#define MIP_MSIP (1UL << IRQ_M_SOFT)
#define MIP_STIP (1UL << IRQ_S_TIMER)
#define MIP_MTIP (1UL << IRQ_M_TIMER)

#define CAUSE_INTR (1UL << 63)
#define EXC_INSN_MISALIGNED 0
#define EXC_INSN_ACCESS     1
#define EXC_ILLEGAL         2
#define EXC_BREAKPOINT      3
#define EXC_LOAD_MISALIGNED 4
#define EXC_LOAD_ACCESS     5
#define EXC_STORE_MISALIGNED 6
#define EXC_STORE_ACCESS    7
#define EXC_ECALL_U         8
#define EXC_ECALL_S         9
#define EXC_ECALL_M         11
#define EXC_INSN_PAGE       12
#define EXC_LOAD_PAGE       13
#define EXC_STORE_PAGE      15

#define SYS_RETURN 0x7e7

/* ---- CSR access ---- */
#define csr_read(csr) ({ unsigned long __v; \
    __asm__ volatile("csrr %0, " #csr : "=r"(__v) :: "memory"); __v; })
#define csr_write(csr, val) ({ unsigned long __v = (unsigned long)(val); \
    __asm__ volatile("csrw " #csr ", %0" :: "rK"(__v) : "memory"); })
#define csr_set(csr, val) ({ unsigned long __v = (unsigned long)(val); \
    __asm__ volatile("csrs " #csr ", %0" :: "rK"(__v) : "memory"); })
#define csr_clear(csr, val) ({ unsigned long __v = (unsigned long)(val); \
    __asm__ volatile("csrc " #csr ", %0" :: "rK"(__v) : "memory"); })
#define csr_swap(csr, val) ({ unsigned long __v = (unsigned long)(val); \
    __asm__ volatile("csrrw %0, " #csr ", %0" : "+r"(__v) :: "memory"); __v; })

static inline void mmio_write32(unsigned long a, uint32_t v) { *(volatile uint32_t *)a = v; }
static inline uint32_t mmio_read32(unsigned long a) { return *(volatile uint32_t *)a; }
static inline void mmio_write64(unsigned long a, uint64_t v) { *(volatile uint64_t *)a = v; }
static inline uint64_t mmio_read64(unsigned long a) { return *(volatile uint64_t *)a; }

static inline uint64_t mtime_read(void) { return mmio_read64(CLINT_MTIME); }
static inline void mtimecmp_write(uint64_t v) { mmio_write64(CLINT_MTIMECMP, v); }

/* ---- trap frame (matches crt.S) ---- */
struct trap_frame {
    unsigned long regs[32]; /* x0..x31; regs[2] = interrupted sp */
    unsigned long epc, cause, tval, status;
};
#define REG_RA 1
#define REG_SP 2
#define REG_A0 10
#define REG_A1 11
#define REG_A7 17

/* What the last expected trap looked like. */
struct trap_record {
    unsigned long count, cause, epc, tval, prev_mode;
};
extern volatile struct trap_record m_trap, s_trap;

/* Set before a deliberately faulting instruction.  The handler (M or S)
 * records the trap in m_trap/s_trap and resumes at epc + skip, or at the
 * interrupted ra when skip == 0 (used for instruction fetch faults). */
extern volatile int m_expect, s_expect;
extern volatile long m_skip, s_skip;
static inline void expect_m(long skip) { m_skip = skip; m_expect = 1; }
static inline void expect_s(long skip) { s_skip = skip; s_expect = 1; }

/* Optional per-test handlers; return non-zero when the trap was handled. */
extern int (*m_hook)(struct trap_frame *f);
extern int (*s_hook)(struct trap_frame *f);

void m_trap_handler(struct trap_frame *f);
void s_trap_handler(struct trap_frame *f);
extern char m_trap_entry[], s_trap_entry[];
extern char _s_trap_stack_top[], _lower_stack_top[], __utext_start[], __utext_end[];
extern char _end[];

/* ---- mode switching ---- */
long enter_mode_full(long mode, void *fn, long arg, void *sp, void *ra);
void m_resume(long value) __attribute__((noreturn));
void s_forward_return(long value) __attribute__((noreturn));
extern char user_return_stub[];
/* Run fn(arg) in `mode` (PRV_U / PRV_S) on the lower-mode stack, without
 * paging concerns; returns fn's return value once it returns. */
long run_in_mode(long mode, long (*fn)(long), long arg);
/* Prepare S-mode trap handling: stvec = s_trap_entry, sscratch = S trap stack. */
void setup_s_traps(void);

/* ---- probes (crt.S): faulting instruction is always 4 bytes ---- */
long probe_ld(unsigned long addr);
long probe_lw(unsigned long addr);
long probe_lb(unsigned long addr);
void probe_sd(unsigned long addr, long val);
void probe_sw(unsigned long addr, long val);
long probe_jump(unsigned long addr);
extern char uprobe_ld[], uprobe_sd[], uprobe_jump[];

/* ---- output / exit ---- */
void uart_putc(char c);
void uart_puts(const char *s);
void print_hex(unsigned long v);     /* 0x + 16 hex digits */
void print_dec(long v);
void printf(const char *fmt, ...);   /* %s %c %d %u %x %X %p; l; 0-pad width; '-' for %s */
void check(const char *what, int ok); /* prints "what: ok" / "what: FAIL", counts failures */
extern int failures;
void exit(int code) __attribute__((noreturn));
/* Exit 0 when no check failed, 1 otherwise, after a summary line. */
void finish(void) __attribute__((noreturn));

void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);

#endif
