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

/* Accumulators are GCC vector values (never arrays), so they stay in registers:
 * tile_V_K covers K vectors of V floats and walks the row's nonzeros once. */
typedef float v16 __attribute__((vector_size(64), aligned(4)));
typedef float v8 __attribute__((vector_size(32), aligned(4)));
typedef float v4 __attribute__((vector_size(16), aligned(4)));
typedef float v2 __attribute__((vector_size(8), aligned(4)));
typedef int32_t i_v16 __attribute__((vector_size(64)));
typedef int32_t i_v8 __attribute__((vector_size(32)));
typedef int32_t i_v4 __attribute__((vector_size(16)));
typedef int32_t i_v2 __attribute__((vector_size(8)));

#define EPILOGUE(VT, V, a, k)                                                   \
    do {                                                                        \
        if (res) a += *(const VT *)(res + (k) * (V));                           \
        if (relu) { VT z = {0}; a = (VT)((i_##VT)a & (a > z)); }                \
        *(VT *)(out + (k) * (V)) = a;                                           \
    } while (0)

#define DEFINE_TILE4(VT, V)                                                                   \
static inline void tile4_##VT(const float *restrict base, const int32_t *restrict off,       \
                              const float *restrict val, int j0, int j1, float b,             \
                              float *restrict out, const float *restrict res, int relu) {     \
    VT a0 = (VT){0} + b, a1 = a0, a2 = a0, a3 = a0;                                           \
    for (int j = j0; j < j1; j++) {                                                           \
        const float w = val[j];                                                               \
        const float *restrict s = base + off[j];                                              \
        a0 += w * *(const VT *)(s);                                                           \
        a1 += w * *(const VT *)(s + (V));                                                     \
        a2 += w * *(const VT *)(s + 2 * (V));                                                 \
        a3 += w * *(const VT *)(s + 3 * (V));                                                 \
    }                                                                                         \
    EPILOGUE(VT, V, a0, 0); EPILOGUE(VT, V, a1, 1); EPILOGUE(VT, V, a2, 2); EPILOGUE(VT, V, a3, 3); \
}                                                                                             \
static inline void tile1_##VT(const float *restrict base, const int32_t *restrict off,       \
                              const float *restrict val, int j0, int j1, float b,             \
                              float *restrict out, const float *restrict res, int relu) {     \
    VT a0 = (VT){0} + b, a1 = (VT){0};                                                        \
    int j = j0;                                                                               \
    for (; j + 1 < j1; j += 2) {                                                              \
        a0 += val[j] * *(const VT *)(base + off[j]);                                          \
        a1 += val[j + 1] * *(const VT *)(base + off[j + 1]);                                  \
    }                                                                                         \
    if (j < j1) a0 += val[j] * *(const VT *)(base + off[j]);                                  \
    a0 += a1;                                                                                 \
    EPILOGUE(VT, V, a0, 0);                                                                   \
}

DEFINE_TILE4(v16, 16)
DEFINE_TILE4(v8, 8)
DEFINE_TILE4(v4, 4)
DEFINE_TILE4(v2, 2)

static inline void tile_scalar(const float *restrict base, const int32_t *restrict off,
                               const float *restrict val, int j0, int j1, float b,
                               float *restrict out, const float *restrict res, int relu) {
    float a = b;
    for (int j = j0; j < j1; j++) a += val[j] * base[off[j]];
    if (res) a += res[0];
    if (relu) a = a > 0.f ? a : 0.f;
    out[0] = a;
}

static inline void run_row(const float *base, const int32_t *off, const float *val, int j0, int j1,
                           float b, float *out, const float *res, int relu, int L) {
#define STEP(fn, W) { fn(base + t, off, val, j0, j1, b, out + t, res ? res + t : 0, relu); t += (W); }
    int t = 0;
    while (t + 64 <= L) STEP(tile4_v16, 64)
    if (t + 32 <= L) STEP(tile4_v8, 32)
    if (t + 16 <= L) STEP(tile1_v16, 16)
    if (t + 8 <= L) STEP(tile1_v8, 8)
    if (t + 4 <= L) STEP(tile1_v4, 4)
    if (t + 2 <= L) STEP(tile1_v2, 2)
    if (t < L) STEP(tile_scalar, 1)
#undef STEP
}

/* src: input planes, row stride src_row floats (Ws*N); output row y of channel co reads
 * src + y*src_row*stride_rows... (phase planes make the stride 1 here).
 * dst/res: padded (Cout, Ho+2, Wo+2, N); only interiors are written/read. */
void sparse_conv(const float *src, int64_t src_row, int Ho, int Wo, int N, int Cout,
                 const int32_t *crow, const int32_t *off, const float *val, const float *bias,
                 float *dst, const float *res, int relu, int nthreads) {
    const int64_t drow = (int64_t)(Wo + 2) * N;
    const int64_t dplane = (int64_t)(Ho + 2) * drow;
    const int L = Wo * N;
    /* rows outermost: one input row slab is reused by every output channel while in cache */
    #pragma omp parallel for num_threads(nthreads) schedule(static) collapse(2)
    for (int y = 0; y < Ho; y++) {
        for (int co = 0; co < Cout; co++) {
            const int64_t o = co * dplane + (y + 1) * drow + N;
            run_row(src + y * src_row, off, val, crow[co], crow[co + 1], bias[co], dst + o,
                    res ? res + o : 0, relu, L);
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
