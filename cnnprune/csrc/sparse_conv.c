/* Sparse direct convolution for cnnprune's CPU inference path.
 *
 * Activations live in a padded "C, H+2, W+2, N" layout (batch innermost, one zero pixel of
 * border), so that for any output row the inputs a nonzero weight touches form one contiguous
 * run of Wout*N floats at a fixed offset: no im2col, every nonzero is one vectorised axpy.
 * Stride-2 convolutions read from 4 phase planes (even/odd rows x even/odd columns), which
 * turns them into the same stride-1 pattern. Accumulators are kept in registers in tiles of
 * up to 64 floats; OpenMP splits output channels x rows across the given thread count.
 */
#include <stdint.h>
#include <string.h>
#include <omp.h>

/* Accumulators are GCC vector values held in small fixed-size arrays whose loops are fully
 * unrolled, so they live in registers. A tile covers R output rows x NV vectors of V floats
 * of one output channel: every nonzero's index and value are loaded once and feed R*NV
 * independent multiply-adds (enough chains to hide the FMA latency even at batch 1). */
typedef float v16 __attribute__((vector_size(64), aligned(4)));
typedef float v8 __attribute__((vector_size(32), aligned(4)));
typedef float v4 __attribute__((vector_size(16), aligned(4)));
typedef float v2 __attribute__((vector_size(8), aligned(4)));
typedef float v1 __attribute__((vector_size(4), aligned(4)));
typedef int32_t i_v16 __attribute__((vector_size(64)));
typedef int32_t i_v8 __attribute__((vector_size(32)));
typedef int32_t i_v4 __attribute__((vector_size(16)));
typedef int32_t i_v2 __attribute__((vector_size(8)));
typedef int32_t i_v1 __attribute__((vector_size(4)));

#define DEFINE_TILE(R, NV, VT, V)                                                              \
static void tile_##R##_##NV##_##VT(const float *restrict base, int64_t srow,                  \
        const int32_t *restrict off, const float *restrict val, int j0, int j1, float b,       \
        float *restrict out, int64_t drow, const float *restrict res, int relu) {              \
    VT acc[R][NV];                                                                             \
    _Pragma("GCC unroll 16") for (int r = 0; r < R; r++)                                       \
        _Pragma("GCC unroll 16") for (int v = 0; v < NV; v++) acc[r][v] = (VT){0} + b;         \
    for (int j = j0; j < j1; j++) {                                                            \
        const float w = val[j];                                                                \
        const float *restrict s = base + off[j];                                               \
        _Pragma("GCC unroll 16") for (int r = 0; r < R; r++)                                   \
            _Pragma("GCC unroll 16") for (int v = 0; v < NV; v++)                              \
                acc[r][v] += w * *(const VT *)(s + r * srow + v * (V));                        \
    }                                                                                          \
    _Pragma("GCC unroll 16") for (int r = 0; r < R; r++)                                       \
        _Pragma("GCC unroll 16") for (int v = 0; v < NV; v++) {                                \
            VT a = acc[r][v];                                                                  \
            if (res) a += *(const VT *)(res + r * drow + v * (V));                             \
            if (relu) { VT z = {0}; a = (VT)((i_##VT)a & (a > z)); }                           \
            *(VT *)(out + r * drow + v * (V)) = a;                                             \
        }                                                                                      \
}

#define DEFINE_ROWS(R)                 \
    DEFINE_TILE(R, 4, v16, 16)         \
    DEFINE_TILE(R, 2, v16, 16)         \
    DEFINE_TILE(R, 1, v16, 16)         \
    DEFINE_TILE(R, 1, v8, 8)           \
    DEFINE_TILE(R, 1, v4, 4)           \
    DEFINE_TILE(R, 1, v2, 2)           \
    DEFINE_TILE(R, 1, v1, 1)

DEFINE_ROWS(8)
DEFINE_ROWS(4)
DEFINE_ROWS(2)
DEFINE_ROWS(1)

#define RUN_ROWS(R)                                                                             \
static void run_rows_##R(const float *base, int64_t srow, const int32_t *off, const float *val, \
                         int j0, int j1, float b, float *out, int64_t drow, const float *res,   \
                         int relu, int L) {                                                     \
    int t = 0;                                                                                  \
    _Pragma("GCC unroll 1")                                                                     \
    for (; t + 64 <= L; t += 64)                                                                \
        tile_##R##_4_v16(base + t, srow, off, val, j0, j1, b, out + t, drow, res ? res + t : 0, relu); \
    if (t + 32 <= L) { tile_##R##_2_v16(base + t, srow, off, val, j0, j1, b, out + t, drow, res ? res + t : 0, relu); t += 32; } \
    if (t + 16 <= L) { tile_##R##_1_v16(base + t, srow, off, val, j0, j1, b, out + t, drow, res ? res + t : 0, relu); t += 16; } \
    if (t + 8 <= L) { tile_##R##_1_v8(base + t, srow, off, val, j0, j1, b, out + t, drow, res ? res + t : 0, relu); t += 8; } \
    if (t + 4 <= L) { tile_##R##_1_v4(base + t, srow, off, val, j0, j1, b, out + t, drow, res ? res + t : 0, relu); t += 4; } \
    if (t + 2 <= L) { tile_##R##_1_v2(base + t, srow, off, val, j0, j1, b, out + t, drow, res ? res + t : 0, relu); t += 2; } \
    if (t < L) tile_##R##_1_v1(base + t, srow, off, val, j0, j1, b, out + t, drow, res ? res + t : 0, relu); \
}

RUN_ROWS(8)
RUN_ROWS(4)
RUN_ROWS(2)
RUN_ROWS(1)

/* One convolution. src: input planes whose output row y starts at src + y*src_row (phase
 * planes make stride 2 look like stride 1); off[j]: offset of nonzero j from there; crow:
 * nonzeros of each output channel. dst/res: padded (Cout, Ho+2, Wo+2, N), interiors only.
 * Rows are blocked by R = 4 when the row is short (batch 1) and by 1 when one row already
 * fills the register tile (large batch). */
void sparse_conv(const float *src, int64_t src_row, int Ho, int Wo, int N, int Cout,
                 const int32_t *crow, const int32_t *off, const float *val, const float *bias,
                 float *dst, const float *res, int relu, int nthreads) {
    const int64_t drow = (int64_t)(Wo + 2) * N;
    const int64_t dplane = (int64_t)(Ho + 2) * drow;
    const int L = Wo * N;
    const int R = L >= 64 ? (Ho % 2 == 0 ? 2 : 1)
                : L <= 16 && Ho % 8 == 0 ? 8 : (Ho % 4 == 0 ? 4 : (Ho % 2 == 0 ? 2 : 1));
    const int nblocks = Ho / R;
    /* row blocks outermost: one input slab is reused by every output channel while in cache */
    #pragma omp parallel for num_threads(nthreads) schedule(static) collapse(2)
    for (int yb = 0; yb < nblocks; yb++) {
        for (int co = 0; co < Cout; co++) {
            const int y = yb * R;
            const int64_t o = co * dplane + (y + 1) * drow + N;
            const float *base = src + y * src_row;
            const float *r = res ? res + o : 0;
            if (R == 8) run_rows_8(base, src_row, off, val, crow[co], crow[co + 1], bias[co], dst + o, drow, r, relu, L);
            else if (R == 4) run_rows_4(base, src_row, off, val, crow[co], crow[co + 1], bias[co], dst + o, drow, r, relu, L);
            else if (R == 2) run_rows_2(base, src_row, off, val, crow[co], crow[co + 1], bias[co], dst + o, drow, r, relu, L);
            else run_rows_1(base, src_row, off, val, crow[co], crow[co + 1], bias[co], dst + o, drow, r, relu, L);
        }
    }
}

/* 3x3 stride-2 max pool, padding 1, on post-ReLU input (values >= 0, so the zero border
 * acts as -inf padding). src: padded (C, H+2, W+2, N); dst: padded (C, H/2+2, W/2+2, N). */
void maxpool3s2(const float *src, int C, int H, int W, int N, float *dst, int nthreads) {
    const int Ho = H / 2, Wo = W / 2;
    const int64_t srow = (int64_t)(W + 2) * N, splane = (int64_t)(H + 2) * srow;
    const int64_t drow = (int64_t)(Wo + 2) * N, dplane = (int64_t)(Ho + 2) * drow;
    #pragma omp parallel for num_threads(nthreads) schedule(static) collapse(2)
    for (int c = 0; c < C; c++) {
        for (int y = 0; y < Ho; y++) {
            for (int x = 0; x < Wo; x++) {
                float *d = dst + c * dplane + (y + 1) * drow + (int64_t)(x + 1) * N;
                const float *s = src + c * splane + (int64_t)(2 * y) * srow + (int64_t)(2 * x) * N;
                for (int n = 0; n < N; n++) d[n] = s[n];
                for (int ky = 0; ky < 3; ky++)
                    for (int kx = 0; kx < 3; kx++) {
                        const float *p = s + ky * srow + (int64_t)kx * N;
                        for (int n = 0; n < N; n++) d[n] = p[n] > d[n] ? p[n] : d[n];
                    }
            }
        }
    }
}

/* Split a padded (C, Hp, Wp, N) tensor into 4 phase planes (a, b, C, Hp/2, Wp/2, N):
 * plane (a, b) holds rows a, a+2, ... and columns b, b+2, ... (Hp, Wp even). */
void phase_split(const float *src, int C, int Hp, int Wp, int N, float *dst, int nthreads) {
    const int Hh = Hp / 2, Wh = Wp / 2;
    const int64_t plane = (int64_t)Hh * Wh * N;
    #pragma omp parallel for num_threads(nthreads) schedule(static) collapse(2)
    for (int c = 0; c < C; c++) {
        for (int r = 0; r < Hp; r++) {
            const int a = r & 1;
            for (int col = 0; col < Wp; col++) {
                const int b = col & 1;
                float *d = dst + ((int64_t)(a * 2 + b) * C + c) * plane + (int64_t)(r / 2) * Wh * N + (int64_t)(col / 2) * N;
                const float *s = src + ((int64_t)c * Hp + r) * Wp * N + (int64_t)col * N;
                memcpy(d, s, sizeof(float) * N);
            }
        }
    }
}

/* Global average pool of the interior of a padded (C, H+2, W+2, N) tensor -> (N, C). */
void avgpool(const float *src, int C, int H, int W, int N, float *dst) {
    const int64_t srow = (int64_t)(W + 2) * N, splane = (int64_t)(H + 2) * srow;
    const float inv = 1.0f / (float)(H * W);
    for (int c = 0; c < C; c++)
        for (int n = 0; n < N; n++) {
            float s = 0.f;
            for (int y = 0; y < H; y++)
                for (int x = 0; x < W; x++) s += src[c * splane + (y + 1) * srow + (int64_t)(x + 1) * N + n];
            dst[(int64_t)n * C + c] = s * inv;
        }
}

/* NCHW input -> padded (C, H+2, W+2, N); the border of dst must already be zero. */
void pack_input(const float *src, int N, int C, int H, int W, float *dst) {
    const int64_t drow = (int64_t)(W + 2) * N, dplane = (int64_t)(H + 2) * drow;
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++)
            for (int y = 0; y < H; y++)
                for (int x = 0; x < W; x++)
                    dst[c * dplane + (y + 1) * drow + (int64_t)(x + 1) * N + n] =
                        src[(((int64_t)n * C + c) * H + y) * W + x];
}
