/* The tile functions of the sparse convolutions (sparse_conv.c) and their tables: one source
 * of macros, instantiated in two files that compile in parallel (tiles_s1.c: stride 1 and the
 * spans; tiles_s2.c: direct stride 2), since the instantiations are most of the library's
 * compile time. */
#ifndef CNNPRUNE_TILES_H
#define CNNPRUNE_TILES_H
#include <stdint.h>

#include "kernels.h"

/* Accumulators are vector values of the machine's native width (vf, kernels.h) held in small
 * fixed-size arrays whose loops are fully unrolled, so they live in registers: never more than
 * NACC of them (AVX2 has 16 vector registers; the rest hold the broadcast weight and the loaded
 * input). A tile covers R output rows x NV vectors
 * of one output channel: each nonzero's offset and value are loaded once and feed R*NV
 * independent multiply-adds. Small tiles (batch 1, late layers) would wait on the FMA latency,
 * so they keep U sets of accumulators for consecutive nonzeros: R*NV*U >= 8 chains. */

/* Which nonzeros of its runs a tile multiplies, and over which part of its width. A run is cut
 * into k*k segments by kernel column kx (major) and row ky: segment kx*k+ky. Kernel rows
 * outside [lo, hi) read only the zero border for every row of the tile and are skipped; a
 * tile exactly two pixels wide that touches the left or right border runs each kernel
 * column over the pixels it reads inside the input: cols[kx] = 3 both, 1 the first, 2 the
 * second, 0 neither. whole: nothing skipped, the run is one range. unit: floats per unit of
 * the nonzeros' offsets (the batch: every offset is a whole pixel, so that 16 bits hold the
 * offsets of every layer at batch 32 and each nonzero is 6 bytes; in a span, whose offsets are
 * input channels, the width of the block copy). */
typedef struct { int lo, hi, k, whole, unit; int8_t cols[16]; } seg_sel;

/* The multiply-adds of nonzeros J0..J1-1 into the accumulator vectors V0..V1-1 of each row
 * (expanded inside a tile function: acc, U, PIN, base, off, val, srow, unit are its locals); the
 * input of accumulator v lies IN_AT(v) floats from the nonzero's offset: v*V in a stride-1
 * tile; in a direct stride-2 tile, whose pixels are PV whole vectors (1 or 2), the v % PV-th
 * vector of input pixel 2 (v / PV): there VI = 2V floats per vector of an output pixel. */
#define IN_AT(v, VI, PV) (((v) / (PV)) * (VI) * (PV) + ((v) % (PV)) * ((VI) / 2))
#define RUN_SEG(J0, J1, V0, V1, R, VT, VI, PV)                                                 \
    do {                                                                                       \
        int j = (J0);                                                                          \
        const int jend = (J1);                                                                 \
        for (; j + U <= jend; j += U)                                                          \
            _Pragma("GCC unroll 8") for (int u = 0; u < U; u++) {                              \
                const float w = val[j + u];                                                    \
                const float *restrict s = base + (int64_t)off[j + u] * unit;                   \
                if (PIN) __asm__("" : "+r"(s));                                                \
                _Pragma("GCC unroll 16") for (int r = 0; r < R; r++)                           \
                    _Pragma("GCC unroll 16") for (int v = V0; v < V1; v++)                     \
                        acc[u][r][v] += w * *(const VT *)(s + r * srow + IN_AT(v, VI, PV));    \
            }                                                                                  \
        for (; j < jend; j++) {                                                                \
            const float w = val[j];                                                            \
            const float *restrict s = base + (int64_t)off[j] * unit;                           \
            if (PIN) __asm__("" : "+r"(s));                                                    \
            _Pragma("GCC unroll 16") for (int r = 0; r < R; r++)                               \
                _Pragma("GCC unroll 16") for (int v = V0; v < V1; v++)                         \
                    acc[0][r][v] += w * *(const VT *)(s + r * srow + IN_AT(v, VI, PV));        \
        }                                                                                      \
    } while (0)

/* One tile position for the output channels c = 0..nch-1 of a chunk (one input-channel group
 * of each): channel c's run of nonzeros has its segments at p + c*pstride (see seg_sel), its
 * output at out + c*dplane. first: 1 start from the bias; 2 from the bias plus what out holds
 * (the residual, where the output overwrites it: see step_t); 0 from what earlier groups left in
 * out; last: add the residual and apply the activation (relu: ACT_*, kernels.h) before the
 * store. The channel loop is inside the tile so that a channel's short run of nonzeros costs no
 * call. */
typedef void (*tile_fn)(const float *restrict, int64_t, const void *restrict, const float *restrict,
                        const int32_t *restrict, int, const seg_sel *restrict, int, float *restrict, int64_t,
                        int64_t, int, const float *restrict, int, const float *restrict, int);

#define DEFINE_TILE_OT(R, NV, VT, V, OT, SUF, SROW, DROW, VI, PV, PF)                          \
static void tile_##VT##_##NV##_##R##SUF(const float *restrict base, int64_t srow_in,          \
        const void *restrict offp, const float *restrict val, const int32_t *restrict p,       \
        int pstride, const seg_sel *restrict sel, int nch, float *restrict out, int64_t drow_in,\
        int64_t dplane, int first, const float *restrict bias, int last,                       \
        const float *restrict res, int relu) {                                                 \
    const int64_t srow = SROW, drow = DROW;                                                    \
    (void)srow_in; (void)drow_in;                                                              \
    enum { U = R * NV >= 8 ? 1 : R * NV >= 4 ? 2 : R * NV >= 2 ? 4 : 8, PIN = PF };             \
    const OT *restrict off = (const OT *)offp;                                                 \
    const int k = sel->k, lo = sel->lo, hi = sel->hi;                                          \
    const int64_t unit = sel->unit;                                                            \
    for (int c = 0; c < nch; c++, p += pstride, out += dplane, res = res ? res + dplane : 0) { \
    const float b = bias[c];                                                                   \
    if (PF && c + 1 < nch)                                                                     \
        _Pragma("GCC unroll 16") for (int r = 0; r < R; r++)                                   \
            _Pragma("GCC unroll 16") for (int q = 0; q < NV * (V); q += 64 / sizeof(float)) {  \
                if (last && res) __builtin_prefetch(res + dplane + r * drow + q, 0, 3);        \
                __builtin_prefetch(out + dplane + r * drow + q, 1, 3);                         \
            }                                                                                  \
    VT acc[U][R][NV];                                                                          \
    _Pragma("GCC unroll 16") for (int r = 0; r < R; r++)                                       \
        _Pragma("GCC unroll 16") for (int v = 0; v < NV; v++) {                                \
            acc[0][r][v] = first == 1 ? (VT){0} + b                                            \
                         : *(const VT *)(out + r * drow + v * (V)) + (first ? b : 0.0f);       \
            _Pragma("GCC unroll 8") for (int u = 1; u < U; u++) acc[u][r][v] = (VT){0};        \
        }                                                                                      \
    if (sel->whole)                                                                            \
        RUN_SEG(p[0], p[k * k], 0, NV, R, VT, VI, PV);                                         \
    else                                                                                       \
        for (int kx = 0; kx < k; kx++) {                                                       \
            const int a = p[kx * k + lo], z = p[kx * k + hi];                                  \
            switch (sel->cols[kx]) {                                                           \
            case 3: RUN_SEG(a, z, 0, NV, R, VT, VI, PV); break;                                \
            case 1: RUN_SEG(a, z, 0, NV / 2, R, VT, VI, PV); break;                            \
            case 2: RUN_SEG(a, z, NV / 2, NV, R, VT, VI, PV); break;                           \
            default: break;                                                                    \
            }                                                                                  \
        }                                                                                      \
    _Pragma("GCC unroll 16") for (int r = 0; r < R; r++)                                       \
        _Pragma("GCC unroll 16") for (int v = 0; v < NV; v++) {                                \
            VT a = acc[0][r][v];                                                               \
            _Pragma("GCC unroll 8") for (int u = 1; u < U; u++) a += acc[u][r][v];             \
            if (last && res) a += *(const VT *)(res + r * drow + v * (V));                     \
            if (last && relu) a = ACTIVATE(VT, a, relu);                                       \
            *(VT *)(out + r * drow + v * (V)) = a;                                             \
        }                                                                                      \
    }                                                                                          \
}

#define DEFINE_TILE(R, NV, VT, V) DEFINE_TILE_OT(R, NV, VT, V, int32_t, , srow_in, drow_in, V, 1, 0) \
    DEFINE_TILE_OT(R, NV, VT, V, uint16_t, _16, srow_in, drow_in, V, 1, 0)
/* Stride-2 tiles reading the input directly, for a batch of one or two whole vectors (N == PV
 * VW): output pixel x is vectors PV x .. PV x + PV-1, and it reads input pixel 2x + kx, so the
 * convolution needs no phase planes (at batch 16 MobileNetV2's four stride-2 depthwise inputs
 * are 130 MB that a split would read and write again; with AVX2, batch 16 is two vectors). */
#define DEFINE_TILE_S2(R, NV) DEFINE_TILE_OT(R, NV, vf, VW, int32_t, _s2, srow_in, drow_in, 2 * VW, 1, 0) \
    DEFINE_TILE_OT(R, NV, vf, VW, uint16_t, _16_s2, srow_in, drow_in, 2 * VW, 1, 0)
#define DEFINE_TILE_S2P(R, NV) DEFINE_TILE_OT(R, NV, vf, VW, int32_t, _s2p, srow_in, drow_in, 2 * VW, 2, 0) \
    DEFINE_TILE_OT(R, NV, vf, VW, uint16_t, _16_s2p, srow_in, drow_in, 2 * VW, 2, 0)
/* Tiles whose rows follow each other in memory (a span's pieces of NV vectors): the row
 * strides are constants, so every load of the inner loop is one base register plus an
 * immediate offset (with strides passed in, GCC kept a register or a stack slot per row and
 * vector: ~40 scalar instructions and stack loads beside the 24 multiply-adds of a nonzero).
 * The nonzero's input address is pinned in a register (PIN, RUN_SEG): left to itself GCC folded
 * the offset times the block width into every multiply-add as base + index*4 + immediate, an
 * indexed operand that Intel cores split into two micro-ops again before issue (pinned, span
 * steps ran faster: the README has the figures).
 * They prefetch the next channel's output lines (for writing) and residual while multiplying
 * this one's nonzeros (PF): each channel's piece lies a plane away from the last, so no hardware
 * stream covers it, and at batch 16 an expansion layer's 8-40 nonzeros a channel took less time
 * than the memory latency of the residual load and the store's line fill that followed them. */
#define DEFINE_SPAN_TILE(R, NV, VT, V) DEFINE_TILE_OT(R, NV, VT, V, int32_t, _c, NV * (V), NV * (V), V, 1, 1) \
    DEFINE_TILE_OT(R, NV, VT, V, uint16_t, _16_c, NV * (V), NV * (V), V, 1, 1)

#define ROWS_1_TO_3(NV, VT, V) DEFINE_TILE(1, NV, VT, V) DEFINE_TILE(2, NV, VT, V) DEFINE_TILE(3, NV, VT, V)
#define ROWS_4_TO_6(NV, VT, V) DEFINE_TILE(4, NV, VT, V) DEFINE_TILE(5, NV, VT, V) DEFINE_TILE(6, NV, VT, V)
#define ROWS_7_TO_8(NV, VT, V) DEFINE_TILE(7, NV, VT, V) DEFINE_TILE(8, NV, VT, V)
#define ROWS_1_TO_8(NV, VT, V) ROWS_1_TO_3(NV, VT, V) ROWS_4_TO_6(NV, VT, V) ROWS_7_TO_8(NV, VT, V)

#define LIST_1_TO_8(NV, VT, S) {0, tile_##VT##_##NV##_1##S, tile_##VT##_##NV##_2##S, tile_##VT##_##NV##_3##S, \
    tile_##VT##_##NV##_4##S, tile_##VT##_##NV##_5##S, tile_##VT##_##NV##_6##S, tile_##VT##_##NV##_7##S, tile_##VT##_##NV##_8##S}
#define LIST_1_TO_6(NV, VT, S) {0, tile_##VT##_##NV##_1##S, tile_##VT##_##NV##_2##S, tile_##VT##_##NV##_3##S, \
    tile_##VT##_##NV##_4##S, tile_##VT##_##NV##_5##S, tile_##VT##_##NV##_6##S}
#define LIST_1_TO_3(NV, VT, S) {0, tile_##VT##_##NV##_1##S, tile_##VT##_##NV##_2##S, tile_##VT##_##NV##_3##S}

/* Tile kinds, widest first: {floats per row, most rows, functions by offset width (32-bit,
 * 16-bit) and row count}. KINDS: stride 1, every width (NKINDS); KINDS_S2: direct stride 2,
 * rows of whole vectors (the first four widths); KINDS_S2P: pixels of two vectors (the first
 * three: a row of whole pixels never leaves a one-vector rest). */
typedef struct { int width, max_rows; tile_fn fn[2][9]; } tile_kind;
#if VW > 8
#define NKINDS 8
#else
#define NKINDS 7
#endif
extern const tile_kind KINDS[NKINDS], KINDS_S2[4], KINDS_S2P[3];
/* The widest tile with 1 to 3 rows, for the span of a 1x1 convolution (sparse_span_body): 8, 16
 * or 24 accumulators; with AVX2's 16 registers only the first fits. */
extern const tile_fn SPAN_TILES[2][4];
/* A span's last 1 to 7 whole vectors (less than a piece) as one tile of that many vectors, so
 * that the nonzeros are streamed once for them: a 14x14 map at batch 1 is a piece of 8 vectors
 * and one tail of 6, which as tiles of 4 and 2 vectors loaded every nonzero's offset and value
 * once more per tile (slower: the README's span tiling section has the figures). */
extern const tile_fn SPAN_TAILS[2][8];
#define SPAN_ROWS (NACC / 8)
/* A span step's rows flag (step_t.k): the groups' partial sums of a block go to a per-thread
 * scratch, SPAN_SUM_BYTES of output channels at a time, and only the finished sums to the
 * output planes (see sparse_span_body). */
#define SPAN_SUMS 8
/* A CONV_SPAN step's pieces flag: its span rounded up to whole vectors (sparse_conv_span_body). */
#define SPAN_ROUND 16
#ifndef SPAN_SUM_BYTES
#define SPAN_SUM_BYTES (128 * 1024)
#endif
#endif
