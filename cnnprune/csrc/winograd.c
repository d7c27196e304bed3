/* Winograd F(4x4, 3x3) convolution for the dense-ish 3x3 stride-1 layers of the CPU path.
 *
 * Why: global magnitude pruning leaves the early layers dense (the README gives how much of
 * layer1 it keeps), and there a direct sparse kernel, one
 * multiply-add per nonzero, does more work than Winograd's dense 36 products per 4x4 output
 * tile and input channel (2.25 multiply-adds per output instead of 9: the equivalent of 75 %
 * sparsity, done as dense GEMMs that run near the FMA peak). The engine times it against the
 * sparse kernel per layer and batch size and keeps the faster.
 *
 * Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (2016), points 0, ±1, ±2:
 * Y = A^T [ (G g G^T) ⊙ (B^T d B) ] A. The weights are transformed once, in Python (U, packed
 * [36][Cout/4][Cin][4]). Per layer two steps of ``run_steps``:
 *  1. input transform: every 6x6 input tile (stride 4 in the padded (C, H+2, W+2, N) buffer)
 *     to 36 values, written as V[xi][panel][Cin][panel width]: column t = tile * N + n, cut
 *     into panels of PW columns so that a GEMM reads its panel as one contiguous block;
 *  2. per (panel, block of 4 output channels): 36 GEMMs of 4 x Cin x panel in registers into
 *     a small buffer that stays in L1, then the output transform, bias, residual and ReLU,
 *     stored straight into the padded output: the 36 products never go to memory.
 * Batch innermost: with N of at least the vector width the transforms are vectorised over
 * images; smaller batches (batch 1) run them per column and the GEMM vectorises over tiles.
 */
#include <stdint.h>
#include <stdlib.h>
#include <omp.h>

#include "kernels.h"

#define PW (3 * VW)

/* Columns per tile: the batch, rounded up to whole vectors where it is larger than one and not
 * a multiple (a batch of 250 takes 256 columns per tile), so that every vector of images lies
 * in one GEMM panel; the extra columns are computed and dropped. */
static inline int wg_np(int N) { return N > VW && N % VW ? (N + VW - 1) / VW * VW : N; }

static inline int64_t wg_cols(int H, int W, int N) { return (int64_t)(H / 4) * (W / 4) * wg_np(N); }

/* Columns rounded up to whole vectors: the GEMM computes the padding columns and drops them. */
static inline int64_t wg_cols_padded(int H, int W, int N) { return (wg_cols(H, W, N) + VW - 1) / VW * VW; }

/* Floats between consecutive transform points in V: one cache line more than their data, so
 * that the 36 values one tile's transform stores (and the GEMM's 36 panels) do not all fall
 * in the same L1 set, as they would at a multiple of 4 KiB apart. */
static inline int64_t wg_xstride(int C, int H, int W, int N) { return (int64_t)C * wg_cols_padded(H, W, N) + 16; }

/* Floats of the transformed input of a C-channel H x W batch-N layer (the caller's scratch). */
int64_t winograd_scratch_floats(int C, int H, int W, int N) { return 36 * wg_xstride(C, H, W, N); }

int vector_width(void) { return VW; }

/* Index of (channel c, column t) in transform point 0 of V; panel p holds columns p*PW ..
 * p*PW+wp-1 as C rows of wp floats. */
static inline int64_t v_index(int c, int64_t t, int C, int64_t Tp) {
    const int64_t p = t / PW, wp = Tp - p * PW < PW ? Tp - p * PW : PW;
    return p * PW * C + c * wp + (t - p * PW);
}

/* B^T d B of one 6x6 tile (s: its top-left pixel, rows srow floats apart, pixels N apart);
 * the 36 results go to v, xstride floats apart. */
#define DEFINE_WG_IN(VT)                                                                       \
static void wg_in_##VT(const float *restrict s, int64_t srow, int N, float *restrict v, int64_t xstride) { \
    VT d[6][6], t[6][6];                                                                       \
    _Pragma("GCC unroll 6") for (int r = 0; r < 6; r++)                                        \
        _Pragma("GCC unroll 6") for (int c = 0; c < 6; c++) d[r][c] = *(const VT *)(s + r * srow + (int64_t)c * N); \
    _Pragma("GCC unroll 6") for (int c = 0; c < 6; c++) {                                      \
        t[0][c] = 4.f * d[0][c] - 5.f * d[2][c] + d[4][c];                                     \
        t[1][c] = d[3][c] + d[4][c] - 4.f * (d[1][c] + d[2][c]);                               \
        t[2][c] = d[4][c] - d[3][c] + 4.f * (d[1][c] - d[2][c]);                               \
        t[3][c] = d[4][c] - d[2][c] + 2.f * (d[3][c] - d[1][c]);                               \
        t[4][c] = d[4][c] - d[2][c] + 2.f * (d[1][c] - d[3][c]);                               \
        t[5][c] = 4.f * d[1][c] - 5.f * d[3][c] + d[5][c];                                     \
    }                                                                                          \
    _Pragma("GCC unroll 6") for (int r = 0; r < 6; r++) {                                      \
        const VT *x = t[r];                                                                    \
        float *restrict o = v + (int64_t)r * 6 * xstride;                                      \
        *(VT *)(o) = 4.f * x[0] - 5.f * x[2] + x[4];                                           \
        *(VT *)(o + xstride) = x[3] + x[4] - 4.f * (x[1] + x[2]);                              \
        *(VT *)(o + 2 * xstride) = x[4] - x[3] + 4.f * (x[1] - x[2]);                          \
        *(VT *)(o + 3 * xstride) = x[4] - x[2] + 2.f * (x[3] - x[1]);                          \
        *(VT *)(o + 4 * xstride) = x[4] - x[2] + 2.f * (x[1] - x[3]);                          \
        *(VT *)(o + 5 * xstride) = 4.f * x[1] - 5.f * x[3] + x[5];                             \
    }                                                                                          \
}
DEFINE_WG_IN(vf)
DEFINE_WG_IN(v1)

/* Batch 1: where tile `tile` of a plane with tw tiles a row starts, rows `row` floats apart. */
static inline int64_t tile_origin(int64_t tile, int tw, int64_t row) { return 4 * (tile / tw) * row + 4 * (tile % tw); }

/* Batch 1: a column is a tile, and a vector of columns is VW tiles, which lie 4 pixels apart
 * in a row and rows apart beyond it: their 6x6 inputs are gathered into a small buffer laid out
 * as a batch of VW, so that the vector transform runs over tiles (per tile, the scalar transform
 * cost ~3x the gathers). Tiles t0 .. t0+nt-1 of a plane with tw tiles a row (s: its interior's
 * top-left pixel minus one row and column, as for wg_in); lanes past nt are zero. */
static void wg_in_tiles(const float *s, int64_t srow, int tw, int64_t t0, int nt, float *v, int64_t xstride) {
    float g[6][6][VW] __attribute__((aligned(64)));
    for (int l = 0; l < VW; l++) {
        const float *p = l < nt ? s + tile_origin(t0 + l, tw, srow) : 0;
        for (int r = 0; r < 6; r++)
            for (int c = 0; c < 6; c++) g[r][c][l] = p ? p[r * srow + c] : 0.f;
    }
    wg_in_vf(&g[0][0][0], 6 * VW, VW, v, xstride);
}

/* src: padded (C, H+2, W+2, N), H and W multiples of 4; dst: V (winograd_scratch_floats). */
void winograd_input_body(const float *src, int C, int H, int W, int N, float *dst) {
    const int th = H / 4, tw = W / 4;
    const int64_t srow = (int64_t)(W + 2) * N, splane = (int64_t)(H + 2) * srow;
    const int64_t Tp = wg_cols_padded(H, W, N), xstride = wg_xstride(C, H, W, N);
    if (N == 1) {  /* VW tiles at a time (wg_in_tiles) */
        const int groups = (th * tw + VW - 1) / VW;
        #pragma omp for schedule(static)
        for (int i = 0; i < C * groups; i++) {
            const int c = i / groups, t0 = (i % groups) * VW;
            wg_in_tiles(src + c * splane, srow, tw, t0, th * tw - t0 < VW ? th * tw - t0 : VW, dst + v_index(c, t0, C, Tp),
                        xstride);
        }
        return;
    }
    #pragma omp for schedule(static)
    for (int i = 0; i < C * th * tw; i++) {
        const int c = i / (th * tw), tile = i % (th * tw), ty = tile / tw, tx = tile % tw;
        const float *s = src + c * splane + (int64_t)(4 * ty) * srow + (int64_t)(4 * tx) * N;
        const int64_t t = (int64_t)tile * wg_np(N);
        int n = 0;
        if (wg_np(N) % VW == 0)
            for (; n + VW <= N; n += VW) wg_in_vf(s + n, srow, N, dst + v_index(c, t + n, C, Tp), xstride);
        for (; n < N; n++) wg_in_v1(s + n, srow, N, dst + v_index(c, t + n, C, Tp), xstride);
    }
}

/* m[r][0 .. NV*VW) = sum over c of u[c][r] * v[c][...]: 4 output channels x NV vectors of
 * columns in 4*NV accumulators; per input channel NV loads and 4 broadcasts feed 4*NV FMAs. */
#define DEFINE_WG_GEMM(NV)                                                                     \
static void wg_gemm_##NV(const float *restrict u, const float *restrict v, int cin, float *restrict m, int ms) { \
    vf acc[4][NV];                                                                             \
    _Pragma("GCC unroll 4") for (int r = 0; r < 4; r++)                                        \
        _Pragma("GCC unroll 3") for (int j = 0; j < NV; j++) acc[r][j] = (vf){0};              \
    for (int c = 0; c < cin; c++) {                                                            \
        vf x[NV];                                                                              \
        _Pragma("GCC unroll 3") for (int j = 0; j < NV; j++) {                                 \
            x[j] = *(const vf *)(v + (c * NV + j) * VW);                                       \
            __asm__("" : "+x"(x[j])); /* one load per vector, not one per FMA (GCC folds) */   \
        }                                                                                      \
        _Pragma("GCC unroll 4") for (int r = 0; r < 4; r++) {                                  \
            const float w = u[c * 4 + r];                                                      \
            _Pragma("GCC unroll 3") for (int j = 0; j < NV; j++) acc[r][j] += w * x[j];        \
        }                                                                                      \
    }                                                                                          \
    _Pragma("GCC unroll 4") for (int r = 0; r < 4; r++)                                        \
        _Pragma("GCC unroll 3") for (int j = 0; j < NV; j++) *(vf *)(m + r * ms + j * VW) = acc[r][j]; \
}
DEFINE_WG_GEMM(1)
DEFINE_WG_GEMM(2)
DEFINE_WG_GEMM(3)

/* A^T M A of one column (or VT-wide run of columns) of one output channel: m holds its 36
 * products xstride floats apart; + bias, + residual, ReLU, stored as the 4x4 output tile at
 * d (rows drow floats apart, pixels N apart). */
#define DEFINE_WG_OUT(VT)                                                                      \
static void wg_out_##VT(const float *restrict m, int64_t xstride, float b, float *d, int64_t drow, \
                        int N, const float *res, int relu) {                                   \
    VT x[6][6], t[4][6];                                                                       \
    _Pragma("GCC unroll 36") for (int i = 0; i < 36; i++) x[i / 6][i % 6] = *(const VT *)(m + i * xstride); \
    _Pragma("GCC unroll 6") for (int c = 0; c < 6; c++) {                                      \
        const VT a = x[1][c] + x[2][c], s = x[1][c] - x[2][c];                                 \
        const VT e = x[3][c] + x[4][c], f = x[3][c] - x[4][c];                                 \
        t[0][c] = x[0][c] + a + e;                                                             \
        t[1][c] = s + 2.f * f;                                                                 \
        t[2][c] = a + 4.f * e;                                                                 \
        t[3][c] = s + 8.f * f + x[5][c];                                                       \
    }                                                                                          \
    _Pragma("GCC unroll 4") for (int r = 0; r < 4; r++) {                                      \
        const VT *y = t[r];                                                                    \
        const VT a = y[1] + y[2], s = y[1] - y[2], e = y[3] + y[4], f = y[3] - y[4];           \
        VT o[4] = {y[0] + a + e + b, s + 2.f * f + b, a + 4.f * e + b, s + 8.f * f + y[5] + b}; \
        _Pragma("GCC unroll 4") for (int k = 0; k < 4; k++) {                                  \
            const int64_t at = r * drow + (int64_t)k * N;                                      \
            if (res) o[k] += *(const VT *)(res + at);                                          \
            if (relu) o[k] = ACTIVATE(VT, o[k], relu);                                             \
            *(VT *)(d + at) = o[k];                                                            \
        }                                                                                      \
    }                                                                                          \
}
DEFINE_WG_OUT(vf)
DEFINE_WG_OUT(v1)

/* Batch 1: the output transform of VW columns (tiles t0 .. t0+nt-1 of one output channel) as
 * vectors over tiles, through buffers laid out as a batch of VW: the residual gathered first
 * (the output may be written over it), the 4x4 tiles scattered after. d, res: the interior's
 * top-left pixel. */
static void wg_out_tiles(const float *m, int64_t xstride, float b, float *d, int64_t drow, int tw, int64_t t0, int nt,
                         const float *res, int relu) {
    float o[4][4][VW] __attribute__((aligned(64))), r_[4][4][VW] __attribute__((aligned(64)));
    if (res)
        for (int l = 0; l < VW; l++)
            for (int r = 0; r < 4; r++)
                for (int k = 0; k < 4; k++) r_[r][k][l] = l < nt ? res[tile_origin(t0 + l, tw, drow) + r * drow + k] : 0.f;
    wg_out_vf(m, xstride, b, &o[0][0][0], 4 * VW, VW, res ? &r_[0][0][0] : 0, relu);
    for (int l = 0; l < nt; l++) {
        float *at = d + tile_origin(t0 + l, tw, drow);
        for (int r = 0; r < 4; r++)
            for (int k = 0; k < 4; k++) at[r * drow + k] = o[r][k][l];
    }
}

/* v: V of the input (winograd_input_body); u: packed weights; dst/res: padded (Cout, H+2,
 * W+2, N), interiors only. Work items (panel, GB blocks of 4 output channels), panels
 * outermost so that a thread's consecutive items share their V panel; inside an item each
 * transform point's V panel (Cin x PW floats) is read from L1 by all GB blocks. */
#define GB 4
/* Floats between the transform points' products in an item's buffer: one cache line more than
 * their 4*GB*PW, which with AVX-512 (3 KiB) would put the 36 loads of one output transform in
 * only 4 sets of an 8-way L1 (with AVX2, 1.5 KiB, in 8 sets). */
#define MS (4 * GB * PW + 16)

/* The 36 products of an item (36 x MS floats, 55 KiB with AVX2) and a fused item's transformed
 * input panel (36 x (Cin x PW + 16) floats) are too large for an OpenMP worker's stack: they live
 * in per-thread buffers (thread_buffer, kernels.h). */

/* One item: the GEMMs of panel columns t0 .. t0+wp-1 (transform point xi's panel at vp +
 * xi*xs, Cin rows of wp floats) with output-channel blocks cb0 .. cb0+nb-1, each point's
 * panel read from L1 by all nb blocks, then the output transform into dst. m: the item's
 * product buffer. */
static void wg_item(const float *vp, int64_t xs, int Cin, int H, int W, int N, int Cout, int64_t t0, int wp, int cb0,
                    int nb, const float *u, const float *bias, float *dst, const float *res, int relu, float *m) {
    const int tw = W / 4, ncb = Cout / 4, np_ = wg_np(N), ms = MS;
    const int64_t T = wg_cols(H, W, N), drow = (int64_t)(W + 2) * N, dplane = (int64_t)(H + 2) * drow;
    for (int xi = 0; xi < 36; xi++) {
        const float *vv = vp + xi * xs;
        for (int b = 0; b < nb; b++) {
            const float *uu = u + ((int64_t)xi * ncb + cb0 + b) * Cin * 4;
            float *mm = m + xi * ms + b * 4 * PW;
            if (wp == 3 * VW) wg_gemm_3(uu, vv, Cin, mm, PW);
            else if (wp == 2 * VW) wg_gemm_2(uu, vv, Cin, mm, PW);
            else wg_gemm_1(uu, vv, Cin, mm, PW);
        }
    }
    const int64_t tend = T < t0 + wp ? T : t0 + wp;
    for (int r = 0; r < 4 * nb; r++) {
        const int co = cb0 * 4 + r;
        if (N == 1) {  /* VW tiles at a time (wg_out_tiles); t0 and the item's width are whole vectors */
            const int64_t at = co * dplane + drow + 1;
            for (int64_t t = t0; t < tend; t += VW)
                wg_out_tiles(m + r * PW + (t - t0), ms, bias[co], dst + at, drow, tw, t, tend - t < VW ? (int)(tend - t) : VW,
                             res ? res + at : 0, relu);
            continue;
        }
        for (int64_t t = t0; t < tend;) {
            const int64_t tile = t / np_, n = t % np_;
            if (n >= N) {
                t = (tile + 1) * np_;
                continue;
            }
            const int64_t at = co * dplane + (4 * (tile / tw) + 1) * drow + (4 * (tile % tw) + 1) * N + n;
            if (np_ % VW == 0 && n + VW <= N) {
                wg_out_vf(m + r * PW + (t - t0), ms, bias[co], dst + at, drow, N, res ? res + at : 0, relu);
                t += VW;
            } else {
                wg_out_v1(m + r * PW + (t - t0), ms, bias[co], dst + at, drow, N, res ? res + at : 0, relu);
                t++;
            }
        }
    }
}

/* v: V of the input (winograd_input_body); u: packed weights; dst/res: padded (Cout, H+2,
 * W+2, N), interiors only. Work items (panel, GB blocks of 4 output channels), panels
 * outermost so that a thread's consecutive items share their V panel. */
void winograd_conv_body(const float *v, int Cin, int H, int W, int N, int Cout, const float *u, const float *bias,
                        float *dst, const float *res, int relu) {
    const int64_t Tp = wg_cols_padded(H, W, N), xstride = wg_xstride(Cin, H, W, N);
    const int np = (int)((Tp + PW - 1) / PW), ncb = Cout / 4, ngb = (ncb + GB - 1) / GB;
    float *m = thread_buffer(SCRATCH_WG_PRODUCTS, 36 * MS);
    #pragma omp for schedule(static) collapse(2)
    for (int p = 0; p < np; p++) {
        for (int gb = 0; gb < ngb; gb++) {
            const int64_t t0 = (int64_t)p * PW;
            const int wp = (int)(Tp - t0 < PW ? Tp - t0 : PW), cb0 = gb * GB;
            wg_item(v + t0 * Cin, xstride, Cin, H, W, N, Cout, t0, wp, cb0, ncb - cb0 < GB ? ncb - cb0 : GB, u, bias,
                    dst, res, relu, m);
        }
    }
}

/* Number of GEMM panels of a layer: what the fused variant divides among threads. */
int winograd_panels(int H, int W, int N) { return (int)((wg_cols_padded(H, W, N) + PW - 1) / PW); }

/* The fused variant, for layers with several panels per thread (batch 32: 22 panels in
 * layer1, 6 in layer2): one work item per panel transforms that panel's input into a
 * per-thread buffer and runs every output-channel block over it, so the transformed input
 * never leaves the core's caches (the two-step variant writes and rereads 4.7 MB of it per
 * layer at batch 32). Each thread takes an equal share of the columns (whole vectors), cut
 * into panels of PW and one narrower: dealt out as whole panels, layer2's 5 1/3 panels at
 * batch 32 left one of two threads idle for 22 % of the step. Columns past the batch or the
 * layer are zeroed, so that the products dropped with them stay finite. */
void winograd_fused_body(const float *src, int Cin, int H, int W, int N, int Cout, const float *u,
                         const float *bias, float *dst, const float *res, int relu) {
    const int tw = W / 4, np_ = wg_np(N), ncb = Cout / 4;
    const int64_t T = wg_cols(H, W, N), Tp = wg_cols_padded(H, W, N);
    const int64_t srow = (int64_t)(W + 2) * N, splane = (int64_t)(H + 2) * srow;
    const int nt = omp_get_num_threads();
    const int64_t vectors = Tp / VW, share = (vectors + nt - 1) / nt * VW;  /* columns per thread */
    const int per = (int)((share + PW - 1) / PW);                           /* panels per thread */
    const int64_t xs = (int64_t)Cin * PW + 16;
    float *m = thread_buffer(SCRATCH_WG_PRODUCTS, 36 * MS), *vp = thread_buffer(SCRATCH_WG_PANEL, 36 * xs);
    #pragma omp for schedule(static)
    for (int item = 0; item < nt * per; item++) {
        const int64_t start = (item / per) * share, end = start + share < Tp ? start + share : Tp;
        const int64_t t0 = start + (int64_t)(item % per) * PW;
        if (t0 >= end) continue;
        const int wp = (int)(end - t0 < PW ? end - t0 : PW);
        for (int c = 0; c < Cin; c++) {
            if (N == 1) {  /* VW tiles at a time; columns past the layer zero */
                for (int64_t t = t0; t < t0 + wp; t += VW)
                    wg_in_tiles(src + c * splane, srow, tw, t, t >= T ? 0 : T - t < VW ? (int)(T - t) : VW,
                                vp + c * wp + (t - t0), xs);
                continue;
            }
            for (int64_t t = t0; t < t0 + wp;) {
                const int64_t tile = t / np_, n = t % np_;
                float *o = vp + c * wp + (t - t0);
                if (t >= T || n >= N) {
                    for (int xi = 0; xi < 36; xi++) o[xi * xs] = 0.f;
                    t++;
                    continue;
                }
                const float *s = src + c * splane + (int64_t)(4 * (tile / tw)) * srow + (int64_t)(4 * (tile % tw)) * N + n;
                if (np_ % VW == 0 && n + VW <= N) {
                    wg_in_vf(s, srow, N, o, xs);
                    t += VW;
                } else {
                    wg_in_v1(s, srow, N, o, xs);
                    t++;
                }
            }
        }
        for (int cb0 = 0; cb0 < ncb; cb0 += GB)
            wg_item(vp, xs, Cin, H, W, N, Cout, t0, wp, cb0, ncb - cb0 < GB ? ncb - cb0 : GB, u, bias, dst, res, relu, m);
    }
}
