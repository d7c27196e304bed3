/* What the kernel sources share: the vector types of the machine's width and the step list
 * that one parallel region executes (``run_steps`` in sparse_conv.c). */
#ifndef CNNPRUNE_KERNELS_H
#define CNNPRUNE_KERNELS_H
#include <stdint.h>

/* Vector values of the machine's native width (vf: VW = 8 floats with AVX2, 16 with AVX-512;
 * NACC: how many accumulators fit in its registers beside the operands), and narrower ones for
 * row tails. GCC vector extensions: one source for both widths. */
#if defined(__AVX512F__)
#define VW 16
#define NACC 24
typedef float vf __attribute__((vector_size(64), aligned(4)));
typedef int32_t i_vf __attribute__((vector_size(64)));
#else
#define VW 8
#define NACC 12
typedef float vf __attribute__((vector_size(32), aligned(4)));
typedef int32_t i_vf __attribute__((vector_size(32)));
#endif
typedef float v8 __attribute__((vector_size(32), aligned(4)));
typedef float v4 __attribute__((vector_size(16), aligned(4)));
typedef float v2 __attribute__((vector_size(8), aligned(4)));
typedef float v1 __attribute__((vector_size(4), aligned(4)));
typedef int32_t i_v8 __attribute__((vector_size(32)));
typedef int32_t i_v4 __attribute__((vector_size(16)));
typedef int32_t i_v2 __attribute__((vector_size(8)));
typedef int32_t i_v1 __attribute__((vector_size(4)));

/* The activations fused into a convolution's store (step_t.relu; activations.ACTS): max(a, 0),
 * min(max(a, 0), 6), hardswish a * min(max(a + 3, 0), 6) / 6 (MobileNetV3), SiLU
 * a / (1 + exp(-a)) (EfficientNet), and the gates of squeeze-and-excitation blocks: sigmoid
 * 1 / (1 + exp(-a)) and hardsigmoid min(max(a + 3, 0), 6) / 6; on a vector type VT of any width
 * (its integer twin i_VT masks the lanes; GCC's C has no vector ?:). */
enum { ACT_RELU = 1, ACT_RELU6 = 2, ACT_HARDSWISH = 3, ACT_SILU = 4, ACT_SIGMOID = 5, ACT_HARDSIGMOID = 6 };
#define VSELECT(VT, m, a, b) ((VT)(((i_##VT)(a) & (m)) | ((i_##VT)(b) & ~(m))))
#define RELU6_OF(VT, x) ({                                                                     \
        const VT z_ = {0}, six_ = z_ + 6.0f;                                                    \
        VT r_ = (VT)((i_##VT)(x) & ((x) > z_));                                                 \
        VSELECT(VT, r_ > six_, six_, r_); })
/* exp(x) for x in [-87, 88] (clamped there: beyond, SiLU is 0 or a within float rounding):
 * x = n ln2 + r with n = round(x / ln2) (the 1.5 * 2^23 trick: adding it leaves n in the low
 * mantissa bits), ln2 in two parts so r is exact, exp(r) on [-ln2/2, ln2/2] by Cephes' degree-7
 * polynomial (relative error about 1e-7), times 2^n made in the exponent bits. */
#define EXP_OF(VT, x) ({                                                                       \
        const VT z_ = {0}, hi_ = z_ + 88.0f, lo_ = z_ - 87.0f, magic_ = z_ + 12582912.0f;       \
        VT x_ = (x);                                                                           \
        x_ = VSELECT(VT, x_ > hi_, hi_, x_);                                                    \
        x_ = VSELECT(VT, x_ < lo_, lo_, x_);                                                    \
        const VT t_ = x_ * 1.44269504088896341f + magic_, n_ = t_ - magic_;                     \
        const VT r_ = x_ - n_ * 0.693359375f + n_ * 2.12194440e-4f;                             \
        VT p_ = r_ * 1.9875691500e-4f + 1.3981999507e-3f;                                       \
        p_ = p_ * r_ + 8.3334519073e-3f;                                                        \
        p_ = p_ * r_ + 4.1665795894e-2f;                                                        \
        p_ = p_ * r_ + 1.6666665459e-1f;                                                        \
        p_ = p_ * r_ + 5.0000001201e-1f;                                                        \
        p_ = p_ * r_ * r_ + r_ + 1.0f;                                                          \
        p_ * (VT)((((i_##VT)t_ - (i_##VT)magic_) + 127) << 23); })
/* The activations that need exp, out of line: inlined, their code in every tile's epilogue made
 * the kernel library half as large again. */
#define DEFINE_EXP_ACTIVATION(VT)                                                              \
    static __attribute__((noinline, unused)) VT exp_activation_##VT(VT a, int act) {           \
        const VT e = EXP_OF(VT, -a) + 1.0f;                                                     \
        return act == ACT_SILU ? a / e : 1.0f / e;                                              \
    }
DEFINE_EXP_ACTIVATION(vf)
DEFINE_EXP_ACTIVATION(v4)
DEFINE_EXP_ACTIVATION(v2)
DEFINE_EXP_ACTIVATION(v1)
#if VW > 8
DEFINE_EXP_ACTIVATION(v8)
#endif
#define ACTIVATE(VT, x, act) ({                                                                \
        const VT a_ = (x), z0_ = {0};                                                           \
        (act) == ACT_RELU ? (VT)((i_##VT)a_ & (a_ > z0_))                                       \
        : (act) == ACT_RELU6 ? RELU6_OF(VT, a_)                                                 \
        : (act) == ACT_HARDSWISH ? a_ * RELU6_OF(VT, a_ + 3.0f) * (1.0f / 6.0f)                 \
        : (act) == ACT_HARDSIGMOID ? RELU6_OF(VT, a_ + 3.0f) * (1.0f / 6.0f)                    \
        : exp_activation_##VT(a_, act); })

/* A forward pass as a list of steps run inside one parallel region: the threads meet at the
 * barrier that closes each step's loop instead of being started and stopped per operation,
 * and Python calls once per run of consecutive native steps. Field use per kind: see each
 * body's arguments; C, H, W, N describe the input, Ho, Wo, Cout the output; k, stride, pad
 * the geometry of a sparse convolution (which of its taps read only the zero border, see
 * sparse_conv.c); pieces: a CONV_SPAN step's tile width in pieces of 8 vectors. */
enum { STEP_PACK = 0, STEP_CONV = 1, STEP_MAXPOOL = 2, STEP_SPLIT = 3, STEP_AVGPOOL = 4, STEP_WG_INPUT = 5, STEP_WG_CONV = 6, STEP_WG_FUSED = 7,
       STEP_CONV_POOL = 8, STEP_LINEAR = 9, STEP_SPAN = 10,
       STEP_SUBSAMPLE = 11, STEP_GEMM = 12, STEP_CONV_S2 = 13, STEP_SCALE = 14, STEP_REPAD = 15, STEP_CONV_SPAN = 16,
       STEP_CONV_POOL_S2 = 17 };
/* res (a step's residual) may be dst itself (ConvPlan.onto): the engine writes a residual
 * convolution's output over its residual where that is the residual's last reader, one stream
 * the size of the output less through memory. Every convolution reads a position's residual
 * before it stores that position's output; the sparse ones, which store partial sums between
 * input-channel groups, start the first group from what dst holds (tiles.h, first == 2). */
typedef struct {
    int32_t kind, C, H, W, N, Ho, Wo, Cout, ngroups, relu, off16, k, stride, pad, pieces;
    int64_t src_row;
    const float *src, *res;
    float *dst;
    const int32_t *ptr, *chan;
    const void *off;
    const float *val, *bias;
} step_t;

/* Winograd F(4x4, 3x3) of winograd.c: the input transform and the GEMM + output transform
 * (two steps), or both in one (fused). */
void winograd_input_body(const float *src, int C, int H, int W, int N, float *dst);
void winograd_conv_body(const float *v, int Cin, int H, int W, int N, int Cout, const float *u, const float *bias,
                        float *dst, const float *res, int relu);
void winograd_fused_body(const float *src, int Cin, int H, int W, int N, int Cout, const float *u,
                         const float *bias, float *dst, const float *res, int relu);

/* gemm1x1.c: a dense 1x1 convolution over each plane's span (weights [Cout/4][Cin][4]);
 * sparse_conv.c: zero what a span wrote outside a padded plane's interior, and copy a block of
 * a span's planes into panels (the span kernels' per-thread input copy). */
void gemm_span_body(const float *src, int H, int W, int N, int Cin, int Cout, const float *w, const float *bias,
                    float *dst, const float *res, int relu, int nthreads);
void zero_outside(float *p, int nplanes, int64_t plane, int64_t a, int64_t b, int64_t row, int N, int W, int H);
/* sparse_conv.c: where a padded plane's interior span lies (floats: a padded row, the plane,
 * the span's start and length), and how many output-channel chunks a layer's work items take. */
typedef struct { int64_t row, plane, start, len; } span_geom;
span_geom span_of(int H, int W, int N);
int item_chunks(int nblocks, int most, int nthreads);
void copy_panels(const float *src, int C, int64_t plane, int64_t n, int64_t panel, float *dst);
/* Images per block where a loop keeps one value per image (the pools' and the scale's lanes). */
#define LANES 64
/* maps.c: each channel of a padded map times a per-(image, channel) factor (val[n * stride +
 * c * src_row]); a padded map copied into one with another border (k: its border, pad: the new one). */
void scale_body(const float *src, int C, int H, int W, int N, const float *scale, int64_t per_image,
                int64_t per_channel, float *dst);
void repad_body(const float *src, int C, int H, int W, int N, int sb, int db, float *dst);
/* Per-thread scratch buffers (sparse_conv.c), by use: the fused stem's pooling window, the GEMM's
 * packed input block, Winograd's products of an item and a fused item's transformed input panel,
 * the sparse span's input block and its partial sums, a sparse linear layer's transposed input. */
enum { SCRATCH_POOL = 0, SCRATCH_GEMM = 1, SCRATCH_WG_PRODUCTS = 2, SCRATCH_WG_PANEL = 3, SCRATCH_SPAN = 4,
       SCRATCH_SPAN_SUMS = 5, SCRATCH_LINEAR = 6, SCRATCH_SLOTS = 7 };
float *thread_buffer(int slot, int64_t floats);
#endif
