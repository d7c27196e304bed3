/* Dense 1x1 convolution over the span of each plane, for the layers that global magnitude
 * pruning leaves dense: on ResNet-50 at 90 %, the 1x1 convolutions of layers 1-3 keep 30-72 %
 * of their weights, where the sparse kernel's one loaded input vector per multiply-add costs
 * more than the multiply-adds it skips. Same span as sparse_span_body (the interior of a padded
 * (C, H+2, W+2, N) plane is one contiguous run of floats, border pixels between rows
 * included, zeroed again afterwards), but a tile is 4 output channels x GEMM_NV vectors: each
 * input vector loaded feeds 4 multiply-adds, each weight broadcast feeds GEMM_NV. With AVX-512,
 * 6 vectors (24 accumulators, 6 inputs and a broadcast: 31 of its 32 registers); with AVX2, 3
 * (12 + 3 + 1 of 16: the 6-vector tile spilled its accumulators to the stack and ran at half
 * the speed). Weights packed [Cout/4][Cin][4] (native_plan.gemm_weights), so the 4
 * weights of one input channel are adjacent. */
#include <stdint.h>
#include <omp.h>

#include "kernels.h"

#ifndef GEMM_NV
#if VW > 8
#define GEMM_NV 6
#else
#define GEMM_NV 3
#endif
#endif
#define PANEL (GEMM_NV * VW)
/* Keeps a loaded input vector in a register: without it GCC folded each load into the
 * multiply-adds' memory operands, 12 loads per input channel instead of 3 with AVX2, and the
 * tile ran about a quarter slower. */
#define IN_REGISTER(x) __asm__("" : "+x"(x))

/* acc (bias) + res, then the activation (relu: ACT_*, kernels.h), stored at out. */
static inline vf epilogue(vf a, const float *res, int relu) {
    if (res) a += *(const vf *)res;
    return relu ? ACTIVATE(vf, a, relu) : a;
}

#define DEFINE_GEMM_TILE(NV)                                                                    \
static void gemm_tile_##NV(const float *restrict src, int64_t plane, const float *restrict w, int cin,  \
                           float *out, int64_t dplane, const float *restrict bias,              \
                           const float *res, int relu) {                                        \
    vf acc[4][NV];                                                                              \
    _Pragma("GCC unroll 4") for (int o = 0; o < 4; o++)                                         \
        _Pragma("GCC unroll 8") for (int v = 0; v < NV; v++) acc[o][v] = (vf){0} + bias[o];     \
    for (int ci = 0; ci < cin; ci++, src += plane, w += 4) {                                     \
        vf x[NV];                                                                               \
        _Pragma("GCC unroll 8") for (int v = 0; v < NV; v++) { x[v] = *(const vf *)(src + v * VW); IN_REGISTER(x[v]); } \
        _Pragma("GCC unroll 4") for (int o = 0; o < 4; o++) {                                   \
            const float b = w[o];                                                               \
            _Pragma("GCC unroll 8") for (int v = 0; v < NV; v++) acc[o][v] += b * x[v];         \
        }                                                                                       \
    }                                                                                           \
    _Pragma("GCC unroll 4") for (int o = 0; o < 4; o++)                                         \
        _Pragma("GCC unroll 8") for (int v = 0; v < NV; v++)                                    \
            *(vf *)(out + o * dplane + v * VW) =                                                \
                epilogue(acc[o][v], res ? res + o * dplane + v * VW : 0, relu);                 \
}
DEFINE_GEMM_TILE(1)
DEFINE_GEMM_TILE(2)
DEFINE_GEMM_TILE(3)
DEFINE_GEMM_TILE(4)
DEFINE_GEMM_TILE(5)
DEFINE_GEMM_TILE(6)
typedef void (*gemm_fn)(const float *restrict, int64_t, const float *restrict, int, float *, int64_t,
                        const float *restrict, const float *, int);
static const gemm_fn GEMM_TILES[7] = {0, gemm_tile_1, gemm_tile_2, gemm_tile_3, gemm_tile_4, gemm_tile_5,
                                                gemm_tile_6};

/* The last n < VW floats of a span, one at a time. */
static void gemm_tail(const float *src, int64_t plane, const float *w, int cin, float *out, int64_t dplane,
                      const float *bias, const float *res, int relu, int n) {
    for (int o = 0; o < 4; o++)
        for (int i = 0; i < n; i++) {
            float a = bias[o];
            for (int ci = 0; ci < cin; ci++) a += w[ci * 4 + o] * src[ci * plane + i];
            if (res) a += res[o * dplane + i];
            out[o * dplane + i] = relu ? ACTIVATE(v1, (v1){a}, relu)[0] : a;
        }
}

/* Work items: blocks of the span x chunks of output channels (multiples of 4, item_chunks). A
 * block is 1 to 4 tiles wide, as many as keep its input (Cin x width) within GEMM_L2 bytes (half
 * of a Zen 3 core's L2: 512 KB measured slower), and is first copied into a per-thread buffer,
 * panel by panel: the GEMM_NV vectors of a tile for every input channel, one after another, so
 * that a tile reads one sequential stream (read from the planes in place, 1024 channels 16 KB
 * apart, a 14x14 map at batch 16, fell into a few L2 sets and missed the cache at every tile; the
 * panels were 5-30 % faster than rows a block wide). A thread packs a block once for all the
 * chunks it takes of it in one call (at batch 1 a 14x14 map is one block, and 8 chunks each
 * copied all of it). One group of 4 channels' weights (4 x Cin floats) stays in L1 across the
 * block's tiles. */
#define GEMM_L2 (256 * 1024)
void gemm_span_body(const float *src, int H, int W, int N, int Cin, int Cout, const float *w, const float *bias,
                    float *dst, const float *res, int relu, int nthreads) {
    const span_geom sg = span_of(H, W, N);
    const int64_t row = sg.row, plane = sg.plane, start = sg.start, L = sg.len;
    int64_t tiles = GEMM_L2 / ((int64_t)Cin * PANEL * (int64_t)sizeof(float));
    tiles = tiles < 1 ? 1 : tiles > 4 ? 4 : tiles;
    const int64_t block = tiles * PANEL;
    const int nblocks = (int)((L + block - 1) / block), quads = Cout / 4;
    const int nchunks = item_chunks(nblocks, quads, nthreads);
    int held = -1;  /* the block this thread's buffer holds, packed in this call */
    #pragma omp for schedule(dynamic, 1) collapse(2)
    for (int b = 0; b < nblocks; b++) {
        for (int ch = 0; ch < nchunks; ch++) {
            const int q0 = quads * ch / nchunks, q1 = quads * (ch + 1) / nchunks;
            const int64_t t0 = b * block, end = t0 + block < L ? t0 + block : L;
            float *packed = thread_buffer(SCRATCH_GEMM, (int64_t)Cin * block);
            if (b != held) copy_panels(src + start + t0, Cin, plane, end - t0, PANEL, packed);
            held = b;
            for (int q = q0; q < q1; q++) {
                const float *wq = w + (int64_t)q * Cin * 4;
                const int64_t o = (int64_t)q * 4 * plane + start;
                for (int64_t t = t0; t < end;) {
                    const int64_t vecs = (end - t) / VW, within = (t - t0) % PANEL;
                    const float *in = packed + (t - t0 - within) * Cin + within;
                    const float *r = res ? res + o + t : 0;
                    if (vecs == 0) {
                        gemm_tail(in, PANEL, wq, Cin, dst + o + t, plane, bias + 4 * q, r, relu, (int)(end - t));
                        break;
                    }
                    const int nv = vecs < GEMM_NV ? (int)vecs : GEMM_NV;
                    GEMM_TILES[nv](in, PANEL, wq, Cin, dst + o + t, plane, bias + 4 * q, r, relu);
                    t += (int64_t)nv * VW;
                }
            }
            zero_outside(dst + 4 * q0 * plane, 4 * (q1 - q0), plane, start + t0, start + end, row, N, W, H);
        }
    }
}
