/* The sparse span tile's inner loop alone: the rate the profile's floor costs sparse steps at
 * (cnnprune/profile.py, --floor). */
#include <stdint.h>
#include <stdlib.h>
#include <omp.h>

#include "kernels.h"

/* The accumulators of a one-piece span tile: 8 vectors of one output channel. */
#define PIECE 8

/* Each thread's own operands, as a span tile reads them: a group of `channels` input channels
 * of PIECE vectors, `outputs` output channels of `per_output` nonzeros each (16-bit channel
 * offsets, ascending within a channel, as the plan sorts them) and their partial sums. */
typedef struct { float *in, *val, *out; uint16_t *off; } loop_operands;

static int make_operands(loop_operands *o, int channels, int per_output, int outputs, unsigned seed) {
    const int64_t nnz = (int64_t)per_output * outputs, piece = PIECE * VW;
    o->in = aligned_alloc(64, (size_t)channels * piece * sizeof(float));
    o->out = aligned_alloc(64, (size_t)outputs * piece * sizeof(float));
    o->val = malloc((size_t)nnz * sizeof(float));
    o->off = malloc((size_t)nnz * sizeof(uint16_t));
    if (!o->in || !o->out || !o->val || !o->off) return 0;
    for (int64_t i = 0; i < channels * piece; i++) o->in[i] = (float)(i % 7) * 0.125f;
    for (int64_t i = 0; i < outputs * piece; i++) o->out[i] = 0.0f;
    for (int c = 0; c < outputs; c++) {  /* per_output distinct channels drawn in order: ascending */
        int left = per_output;
        for (int ch = 0; ch < channels && left > 0; ch++) {
            seed = seed * 1103515245u + 12345u;
            if ((int64_t)((seed >> 8) % (unsigned)(channels - ch)) < left) {
                const int64_t j = (int64_t)c * per_output + (per_output - left--);
                o->off[j] = (uint16_t)ch;
                o->val[j] = 0.001f * (float)(j % 13);
            }
        }
    }
    return 1;
}

static void free_operands(loop_operands *o) {
    free(o->in);
    free(o->out);
    free(o->val);
    free(o->off);
}

/* reps passes over every output channel: its partial sums loaded, one broadcast and PIECE
 * multiply-adds per nonzero, stored; nothing else (no block copy, borders, bias or activation). */
static void run_loop(const loop_operands *o, int per_output, int outputs, int reps) {
    for (int r = 0; r < reps; r++)
        for (int c = 0; c < outputs; c++) {
            float *sum = o->out + (int64_t)c * PIECE * VW;
            vf a[PIECE];
            for (int q = 0; q < PIECE; q++) a[q] = *(const vf *)(sum + q * VW);
            const uint16_t *off = o->off + (int64_t)c * per_output;
            const float *val = o->val + (int64_t)c * per_output;
            for (int j = 0; j < per_output; j++) {
                const float *x = o->in + (int64_t)off[j] * PIECE * VW;
                const vf w = (vf){0} + val[j];
                #pragma GCC unroll 8
                for (int q = 0; q < PIECE; q++) a[q] += w * *(const vf *)(x + q * VW);
            }
            for (int q = 0; q < PIECE; q++) *(vf *)(sum + q * VW) = a[q];
        }
}

/* Nanoseconds per nonzero of that loop, every one of nthreads threads running it at once on its
 * own operands (as in a step: both cores busy): the slowest thread's time over its
 * reps * outputs * per_output nonzeros. -1 where an argument is out of range (channels up to the
 * 16-bit offsets' 65,536, per_output at most channels, at most 2^26 nonzeros, a group of at most
 * 64 MB) or memory is short. */
double inner_loop_ns(int channels, int per_output, int outputs, int reps, int nthreads) {
    if (channels < 1 || channels > 65536 || per_output < 1 || per_output > channels || outputs < 1 ||
        outputs > 65536 || (int64_t)per_output * outputs > ((int64_t)1 << 26) || reps < 1 || nthreads < 1 || nthreads > 1024 ||
        (int64_t)channels * PIECE * VW * (int64_t)sizeof(float) > ((int64_t)64 << 20))
        return -1.0;
    double slowest = 0.0;
    int failed = 0;
    float sums = 0.0f;
    static volatile float sink;
    #pragma omp parallel num_threads(nthreads) reduction(max : slowest) reduction(| : failed) reduction(+ : sums)
    {
        loop_operands o;
        const int made = make_operands(&o, channels, per_output, outputs, 12345u + (unsigned)omp_get_thread_num());
        run_loop(&o, per_output, outputs, made ? 1 : 0);  /* warm-up: the operands into the caches */
        #pragma omp barrier
        const double t0 = omp_get_wtime();
        if (made) run_loop(&o, per_output, outputs, reps);
        slowest = omp_get_wtime() - t0;
        failed = !made;
        if (made) sums += o.out[0];
        free_operands(&o);
    }
    sink = sums;  /* the sums are read: the loop is not dead code */
    return failed ? -1.0 : slowest * 1e9 / ((double)reps * outputs * per_output);
}

/* The accumulator chains of fma_load_ns: more than the FMA latency (4 cycles on Zen 3 and on
 * recent Intel cores) times the two FMA units, so that no chain waits, and few enough that AVX2's
 * 16 registers hold them with the broadcast and no spill (12 spilled one to the stack). */
#define LOADED_CHAINS 10
/* Floats of each thread's buffer: 4 KB, L1-resident; each pass reads a window of LOADED_CHAINS
 * vectors (320 bytes with AVX2) 256 bytes after the last one's start, eight windows in turn. */
#define LOADED_FLOATS 1024

/* Nanoseconds per vector multiply-add whose second operand is loaded from L1, as a sparse
 * kernel's every multiply-add is (each nonzero's input vectors come from memory): LOADED_CHAINS
 * independent chains, nothing else in the loop, every one of nthreads threads at once, the
 * slowest counted. What the floor's inner loop (inner_loop_ns) would reach with no offsets,
 * weights or accumulator loads and stores. -1 where reps is outside 1..2^26 or nthreads outside
 * 1..1024. */
double fma_load_ns(int reps, int nthreads) {
    if (reps < 1 || reps > (1 << 26) || nthreads < 1 || nthreads > 1024) return -1.0;
    double slowest = 0.0;
    float sums = 0.0f;
    static volatile float sink;
    #pragma omp parallel num_threads(nthreads) reduction(max : slowest) reduction(+ : sums)
    {
        float buf[LOADED_FLOATS] __attribute__((aligned(64)));
        for (int i = 0; i < LOADED_FLOATS; i++) buf[i] = (float)(i % 5) * 0.25f;
        vf a[LOADED_CHAINS];
        for (int q = 0; q < LOADED_CHAINS; q++) a[q] = (vf){0};
        const vf w = (vf){0} + 0.5f;
        #pragma omp barrier
        const double t0 = omp_get_wtime();
        for (int r = 0; r < reps; r++) {
            /* windows 64 floats apart, so that consecutive passes read other lines */
            const float *p = buf + (r & 7) * 64;
            __asm__ volatile("" : "+r"(p));  /* a fresh address: the loads stay in the loop */
            #pragma GCC unroll 16
            for (int q = 0; q < LOADED_CHAINS; q++) a[q] += w * *(const vf *)(p + q * VW);
        }
        slowest = omp_get_wtime() - t0;
        for (int q = 0; q < LOADED_CHAINS; q++) sums += a[q][0];
    }
    sink = sums;  /* the sums are read: the loop is not dead code */
    return slowest * 1e9 / ((double)reps * LOADED_CHAINS);
}
