/* CPU benchmark for popek vs QEMU: CRC32, heapsort, double matrix multiply.
 * Prints one checksum per part so the two runs can be compared. */
#include "lib.h"

#ifndef CRC_BUF_SIZE
#define CRC_BUF_SIZE (256 * 1024)
#endif
#ifndef CRC_PASSES
#define CRC_PASSES 850
#endif
#ifndef SORT_N
#define SORT_N 200000
#endif
#ifndef SORT_REPS
#define SORT_REPS 35
#endif
#ifndef MAT_N
#define MAT_N 120
#endif
#ifndef MAT_REPS
#define MAT_REPS 100
#endif

static uint8_t buf[CRC_BUF_SIZE];
static uint32_t arr[SORT_N];
static double ma[MAT_N][MAT_N], mb[MAT_N][MAT_N], mc[MAT_N][MAT_N];
static uint32_t crc_table[256];

static uint64_t rng_state = 0x9E3779B97F4A7C15UL;
static uint32_t rng(void)
{
    /* xorshift64* */
    uint64_t x = rng_state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng_state = x;
    return (uint32_t)((x * 0x2545F4914F6CDD1DUL) >> 32);
}

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ 0xEDB88320u : c >> 1;
        crc_table[i] = c;
    }
}

static uint32_t crc32(uint32_t crc, const uint8_t *p, size_t n)
{
    crc = ~crc;
    while (n--)
        crc = crc_table[(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

static void sift_down(uint32_t *a, size_t start, size_t end)
{
    size_t root = start;
    while (2 * root + 1 < end) {
        size_t child = 2 * root + 1;
        if (child + 1 < end && a[child] < a[child + 1])
            child++;
        if (a[root] >= a[child])
            return;
        uint32_t t = a[root];
        a[root] = a[child];
        a[child] = t;
        root = child;
    }
}

static void heapsort(uint32_t *a, size_t n)
{
    for (size_t i = n / 2; i-- > 0;)
        sift_down(a, i, n);
    for (size_t end = n; end-- > 1;) {
        uint32_t t = a[0];
        a[0] = a[end];
        a[end] = t;
        sift_down(a, 0, end);
    }
}

int main(void)
{
    uart_puts("popek cpu bench\n");

    /* 1. CRC32 */
    crc_init();
    for (size_t i = 0; i < CRC_BUF_SIZE; i++)
        buf[i] = (uint8_t)rng();
    uint32_t crc = 0;
    for (int pass = 0; pass < CRC_PASSES; pass++) {
        crc = crc32(crc, buf, CRC_BUF_SIZE);
        buf[pass] ^= (uint8_t)crc;
    }
    printf("crc32: %08x\n", crc);

    /* 2. heapsort (SORT_REPS fresh arrays, checksums chained) */
    int sorted = 1;
    uint64_t sum = 0;
    for (int rep = 0; rep < SORT_REPS; rep++) {
        for (size_t i = 0; i < SORT_N; i++)
            arr[i] = rng();
        heapsort(arr, SORT_N);
        for (size_t i = 0; i < SORT_N; i++) {
            if (i && arr[i - 1] > arr[i])
                sorted = 0;
            sum = sum * 31 + arr[i];
        }
    }
    printf("sort: %s checksum=%016lx\n", sorted ? "sorted" : "NOT SORTED", sum);

    /* 3. double matrix multiply */
    for (int i = 0; i < MAT_N; i++)
        for (int j = 0; j < MAT_N; j++) {
            ma[i][j] = (double)((int)(rng() % 2001) - 1000) / 256.0;
            mb[i][j] = (double)((int)(rng() % 2001) - 1000) / 512.0;
        }
    for (int rep = 0; rep < MAT_REPS; rep++) {
        for (int i = 0; i < MAT_N; i++)
            for (int j = 0; j < MAT_N; j++) {
                double s = 0.0;
                for (int k = 0; k < MAT_N; k++)
                    s += ma[i][k] * mb[k][j];
                mc[i][j] = s;
            }
        /* feed the result back so every repetition does distinct work */
        for (int i = 0; i < MAT_N; i++)
            ma[i][(i + rep) % MAT_N] = mc[i][i] / 1024.0;
    }
    double trace = 0.0, total = 0.0;
    for (int i = 0; i < MAT_N; i++) {
        trace += mc[i][i];
        for (int j = 0; j < MAT_N; j++)
            total += mc[i][j];
    }
    union { double d; uint64_t u; } t1 = {trace}, t2 = {total};
    printf("matmul: trace=%016lx sum=%016lx\n", t1.u, t2.u);

    uart_puts("bench done\n");
    return sorted ? 0 : 1;
}
