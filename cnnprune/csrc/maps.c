/* Operations on whole padded maps that are not convolutions.
 *
 * Per-channel scaling: the gate of a squeeze-and-excitation block (MobileNetV3,
 * EfficientNet, RegNetY), y[n, c] = x[n, c] * s[n, c], where s is the output of the gate's last
 * convolution (its sigmoid or hardsigmoid fused), read from that native convolution's padded
 * (C, 1, 1) map, or from an (N, C) array PyTorch filled where the gate is not native. Run
 * natively, the map itself never leaves the padded layout: in PyTorch the multiply needed it
 * converted to NCHW and its product converted back. */
#include <stdint.h>
#include <string.h>
#include <omp.h>

#include "kernels.h"

/* src, dst: padded (C, H+2, W+2, N); image n's factor of channel c is scale[n * per_image +
 * c * per_channel]: an (N, C) array PyTorch filled (per_image C, per_channel 1), or the interior
 * pixel of a padded (C, 1, 1) map a native convolution wrote (1 and 9N, from that pixel). Only the
 * interior is written (dst's border stays zero). Work items are rows of the C planes. */
void scale_body(const float *src, int C, int H, int W, int N, const float *scale, int64_t per_image,
                int64_t per_channel, float *dst) {
    const int64_t row = (int64_t)(W + 2) * N, plane = (int64_t)(H + 2) * row;
    #pragma omp for schedule(static)
    for (int64_t i = 0; i < (int64_t)C * H; i++) {
        const int c = (int)(i / H), y = (int)(i % H) + 1;
        const int64_t at = c * plane + y * row + N;
        const float *restrict s = src + at;
        float *restrict d = dst + at;
        if (N == 1) {
            const float k = scale[c * per_channel];
            for (int x = 0; x < W; x++) d[x] = s[x] * k;
            continue;
        }
        for (int n0 = 0; n0 < N; n0 += LANES) {  /* images in blocks of LANES: k stays small, on the stack */
            const int nb = N - n0 < LANES ? N - n0 : LANES;
            float k[LANES];
            for (int n = 0; n < nb; n++) k[n] = scale[(n0 + n) * per_image + c * per_channel];
            for (int x = 0; x < W; x++)
                for (int n = 0; n < nb; n++) d[(int64_t)x * N + n0 + n] = s[(int64_t)x * N + n0 + n] * k[n];
        }
    }
}

/* The same map with another zero border: src (C, H+2sb, W+2sb, N) -> dst (C, H+2db, W+2db, N),
 * dst's border already zero. A convolution padded by p reads a border of p pixels (EfficientNet's
 * and MobileNetV3's 5x5 depthwise layers: 2), where every other op writes a border of 1. */
void repad_body(const float *src, int C, int H, int W, int N, int sb, int db, float *dst) {
    const int64_t srow = (int64_t)(W + 2 * sb) * N, splane = (int64_t)(H + 2 * sb) * srow;
    const int64_t drow = (int64_t)(W + 2 * db) * N, dplane = (int64_t)(H + 2 * db) * drow;
    #pragma omp for schedule(static)
    for (int64_t i = 0; i < (int64_t)C * H; i++) {
        const int64_t c = i / H, y = i % H;
        memcpy(dst + c * dplane + (y + db) * drow + (int64_t)db * N, src + c * splane + (y + sb) * srow + (int64_t)sb * N,
               (size_t)W * N * sizeof(float));
    }
}
