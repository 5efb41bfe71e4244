/* Shared runtime for the popek bare-metal tests. */
#include "lib.h"

volatile struct trap_record m_trap, s_trap;
volatile int m_expect, s_expect;
volatile long m_skip, s_skip;
int (*m_hook)(struct trap_frame *f);
int (*s_hook)(struct trap_frame *f);
int failures;

/* ------------------------------------------------------------ UART */
#define UART_THR 0
#define UART_LSR 5
#define LSR_THRE 0x20

void uart_putc(char c)
{
    volatile uint8_t *u = (volatile uint8_t *)UART0_BASE;
    while (!(u[UART_LSR] & LSR_THRE))
        ;
    u[UART_THR] = (uint8_t)c;
}

void uart_puts(const char *s)
{
    while (*s)
        uart_putc(*s++);
}

static void put_num(unsigned long v, unsigned base, int width, char pad, int upper)
{
    char buf[24];
    int n = 0;
    const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
    do {
        buf[n++] = digits[v % base];
        v /= base;
    } while (v);
    while (n < width) {
        uart_putc(pad);
        width--;
    }
    while (n)
        uart_putc(buf[--n]);
}

void print_hex(unsigned long v)
{
    uart_puts("0x");
    put_num(v, 16, 16, '0', 0);
}

void print_dec(long v)
{
    if (v < 0) {
        uart_putc('-');
        put_num(-(unsigned long)v, 10, 0, ' ', 0);
    } else {
        put_num((unsigned long)v, 10, 0, ' ', 0);
    }
}

void printf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            uart_putc(*fmt);
            continue;
        }
        fmt++;
        char pad = ' ';
        int width = 0, lng = 0, left = 0;
        if (*fmt == '-') {
            left = 1;
            fmt++;
        }
        if (*fmt == '0') {
            pad = '0';
            fmt++;
        }
        while (*fmt >= '0' && *fmt <= '9')
            width = width * 10 + (*fmt++ - '0');
        while (*fmt == 'l') {
            lng = 1;
            fmt++;
        }
        switch (*fmt) {
        case 'd': {
            long v = lng ? va_arg(ap, long) : va_arg(ap, int);
            if (v < 0) {
                uart_putc('-');
                put_num(-(unsigned long)v, 10, width ? width - 1 : 0, pad, 0);
            } else {
                put_num(v, 10, width, pad, 0);
            }
            break;
        }
        case 'u':
            put_num(lng ? va_arg(ap, unsigned long) : va_arg(ap, unsigned int), 10, width, pad, 0);
            break;
        case 'x':
            put_num(lng ? va_arg(ap, unsigned long) : va_arg(ap, unsigned int), 16, width, pad, 0);
            break;
        case 'X':
            put_num(lng ? va_arg(ap, unsigned long) : va_arg(ap, unsigned int), 16, width, pad, 1);
            break;
        case 'p':
            print_hex((unsigned long)va_arg(ap, void *));
            break;
        case 's': {
            const char *s = va_arg(ap, const char *);
            int len = 0;
            if (!s)
                s = "(null)";
            while (s[len])
                len++;
            if (!left)
                for (; len < width; width--)
                    uart_putc(' ');
            uart_puts(s);
            if (left)
                for (; len < width; width--)
                    uart_putc(' ');
            break;
        }
        case 'c':
            uart_putc((char)va_arg(ap, int));
            break;
        case '%':
            uart_putc('%');
            break;
        case 0:
            fmt--;
            break;
        default:
            uart_putc('%');
            uart_putc(*fmt);
        }
    }
    va_end(ap);
}

void check(const char *what, int ok)
{
    printf("%s: %s\n", what, ok ? "ok" : "FAIL");
    if (!ok)
        failures++;
}

/* ------------------------------------------------------------ exit */
void exit(int code)
{
    volatile uint32_t *fin = (volatile uint32_t *)FINISHER_BASE;
    if (code == 0)
        *fin = 0x5555;
    else
        *fin = ((uint32_t)code << 16) | 0x3333;
    for (;;)
        __asm__ volatile("wfi");
}

void finish(void)
{
    if (failures) {
        printf("FAILED: %d check(s)\n", failures);
        exit(1);
    }
    uart_puts("all checks passed\n");
    exit(0);
}

/* ------------------------------------------------------------ memory */
void *memset(void *d, int c, size_t n)
{
    volatile unsigned char *p = d;
    while (n--)
        *p++ = (unsigned char)c;
    return d;
}

void *memcpy(void *d, const void *s, size_t n)
{
    volatile unsigned char *p = d;
    const unsigned char *q = s;
    while (n--)
        *p++ = *q++;
    return d;
}

/* ------------------------------------------------------------ traps */
static void unexpected(const char *who, struct trap_frame *f)
{
    printf("UNEXPECTED %s TRAP cause=%lx epc=%lx tval=%lx\n", who, f->cause, f->epc, f->tval);
    exit(99);
}

static void resume_after(struct trap_frame *f, long skip)
{
    if (skip == 0)
        f->epc = f->regs[REG_RA];
    else
        f->epc += skip;
}

void m_trap_handler(struct trap_frame *f)
{
    if (m_hook && m_hook(f))
        return;
    if ((f->cause == EXC_ECALL_U || f->cause == EXC_ECALL_S || f->cause == EXC_ECALL_M) &&
        f->regs[REG_A7] == SYS_RETURN)
        m_resume((long)f->regs[REG_A0]);
    if (m_expect && !(f->cause & CAUSE_INTR)) {
        m_expect = 0;
        m_trap.count++;
        m_trap.cause = f->cause;
        m_trap.epc = f->epc;
        m_trap.tval = f->tval;
        m_trap.prev_mode = (f->status & MSTATUS_MPP) >> 11;
        resume_after(f, m_skip);
        return;
    }
    unexpected("M", f);
}

void s_trap_handler(struct trap_frame *f)
{
    if (s_hook && s_hook(f))
        return;
    if (f->cause == EXC_ECALL_U && f->regs[REG_A7] == SYS_RETURN)
        s_forward_return((long)f->regs[REG_A0]);
    if (s_expect && !(f->cause & CAUSE_INTR)) {
        s_expect = 0;
        s_trap.count++;
        s_trap.cause = f->cause;
        s_trap.epc = f->epc;
        s_trap.tval = f->tval;
        s_trap.prev_mode = (f->status & MSTATUS_SPP) ? PRV_S : PRV_U;
        resume_after(f, s_skip);
        return;
    }
    unexpected("S", f);
}

/* ------------------------------------------------------------ modes */
long run_in_mode(long mode, long (*fn)(long), long arg)
{
    return enter_mode_full(mode, (void *)fn, arg, _lower_stack_top, user_return_stub);
}

void setup_s_traps(void)
{
    csr_write(stvec, (unsigned long)s_trap_entry);
    csr_write(sscratch, (unsigned long)_s_trap_stack_top);
}
