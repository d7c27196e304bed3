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
#include <stdlib.h>
#include <string.h>
#include <immintrin.h>
#include <omp.h>

#include "kernels.h"
#include "tiles.h"

/* Output rows per tile for a row of L floats (Wout * N): as many as keep the widest tile
 * that fits within NACC accumulators. */
int row_block(int L) {
    return L >= 8 * VW ? 1 : L >= 4 * VW ? 3 : L >= 2 * VW ? 6 : 8;
}

/* Input channels per group: the input one column tile of a k x k convolution reads from a
 * group (planes x rows x floats) is kept to about half of a 32 KiB L1 data cache. Rows of at
 * most one vector (batch 1-2, late layers) get no groups: there each nonzero feeds only a few
 * multiply-adds, the nonzeros streamed from memory are the cost, and one run per output
 * channel reads them as one sequential stream (faster at batch 1 than L1-sized groups). */
int channels_per_group(int L, int Ho, int N, int stride, int k, int cin) {
    if (L <= VW) return cin;
    const int R = row_block(L) < Ho ? row_block(L) : Ho;
    const int tw = L < 8 * VW ? L : 8 * VW;
    const int64_t reach = stride == 1 ? k - 1 : (k - 1) / 2;
    const int64_t planes = stride == 1 || k == 1 ? 1 : 4;
    const int64_t bytes = planes * (R + reach) * (tw + reach * N) * (int64_t)sizeof(float);
    int64_t g = (16 * 1024) / bytes;
    if (g < 1) g = 1;
    return g > cin ? cin : (int)g;
}

/* Widest tile that fits the rest of the row (rem floats) with r rows. */
static int pick_kind(int rem, int r) {
    for (int k = 0; k < NKINDS; k++)
        if (KINDS[k].width <= rem && r <= KINDS[k].max_rows) return k;
    return NKINDS - 1;
}

/* Kernel rows ky of output row y that read inside the input (0 <= y*stride + ky - pad < hin):
 * ky in [seg_lo, seg_hi); the same for kernel columns and output columns. The others read only
 * the zero border: at layer4's 2x2 maps 5 of the 9 taps of every output pixel, at layer3's 4x4
 * maps 44 of 144. */
static int seg_lo(int y, int k, int stride, int pad) {
    const int v = pad - y * stride;
    return v < 0 ? 0 : v > k ? k : v;
}
static int seg_hi(int y, int k, int stride, int pad, int hin) {
    const int v = y * stride + k - pad - hin;
    return k - (v < 0 ? 0 : v > k ? k : v);
}

/* The selection of a tile over output rows y0..y1 (inclusive) and floats t..t+width-1 of a row
 * of pixels of N floats (see seg_sel); a pixel must be whole vectors of the tile for its
 * columns to be cut. */
static void tile_sel(seg_sel *sel, int y0, int y1, int t, int width, int N, int k, int stride, int pad, int hin,
                     int win) {
    sel->k = k;
    sel->unit = N;
    if (k > (int)sizeof(sel->cols)) {  /* no cuts: every tap over the whole tile (zeros read from the border) */
        sel->lo = 0;
        sel->hi = k;
        sel->whole = 1;
        return;
    }
    sel->lo = seg_lo(y1, k, stride, pad);
    const int hi = seg_hi(y0, k, stride, pad, hin);
    sel->hi = hi > sel->lo ? hi : sel->lo;
    int whole = sel->lo == 0 && sel->hi == k;
    const int pair = width == 2 * N && width >= 2 * VW && t % N == 0;  /* pixels of whole vectors */
    const int x = t / N;
    for (int kx = 0; kx < k; kx++) {
        int mode = 3;
        if (pair)
            mode = (kx >= seg_lo(x, k, stride, pad) && kx < seg_hi(x, k, stride, pad, win))
                 | (kx >= seg_lo(x + 1, k, stride, pad) && kx < seg_hi(x + 1, k, stride, pad, win)) << 1;
        sel->cols[kx] = (int8_t)mode;
        whole = whole && mode == 3;
    }
    sel->whole = whole;
}

/* First output channel whose nonzeros start at or after the nonzero index target: chunks of
 * output channels cut at equal shares of the nonzeros, so that work items weigh alike. */
static int chunk_start(const int32_t *chan, int Cout, int64_t target) {
    int lo = 0, hi = Cout;
    while (lo < hi) {
        const int mid = (lo + hi) / 2;
        if (chan[mid] < target) lo = mid + 1; else hi = mid;
    }
    return lo;
}

/* The first output channel of chunk ch of nchunks (equal shares of the layer's nonzeros);
 * chunk nchunks starts at Cout, so chunk ch runs from chunk_first(ch) to chunk_first(ch + 1). */
static int chunk_first(const int32_t *chan, int Cout, int ch, int nchunks) {
    return ch >= nchunks ? Cout : chunk_start(chan, Cout, (int64_t)chan[Cout] * ch / nchunks);
}

/* Output-channel chunks per row block (or span block), for nblocks blocks: about four work
 * items per thread, a multiple of the thread count where the layer allows it, at most `most`
 * chunks (so that a chunk keeps enough channels to amortise its tile's setup), at least one. */
int item_chunks(int nblocks, int most, int nthreads) {
    int nchunks = (4 * nthreads + nblocks - 1) / nblocks;
    while ((nblocks * nchunks) % nthreads) nchunks++;
    if (nchunks > most) nchunks = most;
    return nchunks < 1 ? 1 : nchunks;
}

/* The span of a padded (H+2, W+2, N) plane's interior (see sparse_span_body): it starts at
 * pixel (1, 1) and runs (H-1)(W+2)N + WN floats, rounded up to whole vectors where that stays
 * inside the plane. */
span_geom span_of(int H, int W, int N) {
    span_geom g;
    g.row = (int64_t)(W + 2) * N;
    g.plane = (int64_t)(H + 2) * g.row;
    g.start = g.row + N;
    g.len = (int64_t)(H - 1) * g.row + (int64_t)W * N;
    const int64_t whole = (g.len + VW - 1) / VW * VW;
    if (g.start + whole <= g.plane) g.len = whole;
    return g;
}

/* One convolution. src: input planes whose output row y starts at src + y*src_row (phase
 * planes make stride 2 look like stride 1; direct: a stride-2 convolution at N == VW or 2 VW reads
 * the padded input itself: src_row is then two input rows, and output float t reads from
 * float 2t, see DEFINE_TILE_S2); off[j]*N: offset of nonzero j from there. The
 * nonzeros of input-channel group g, output channel co form run r = g*Cout+co, cut by kernel
 * column and row: those of (kx, ky) are ptr[(r*k+kx)*k+ky] .. ptr[(r*k+kx)*k+ky+1]; chan[co]:
 * how many nonzeros the channels before co hold. Groups are sized so that the input a column
 * tile reads from one group stays in L1 while every output channel of the chunk uses it, and
 * the runs of one group are stored channel after channel, so that a tile streams the
 * nonzeros of its chunk in one sequential pass per group (channel-major runs made jumps of a
 * channel's nonzeros, which the hardware prefetcher did not follow, and the nonzeros come
 * from memory in every pass: they outgrow the caches with the activations). A tile skips the
 * taps that read only the zero border of the hin x win input (tile_sel). Work items are
 * (row block, output-channel chunk) pairs: row blocks of equal height, chunks of equal
 * nonzero counts, about four items per thread and a multiple of the thread count where the
 * layer allows it, handed out dynamically. */
static void sparse_conv_body(const float *src, int64_t src_row, int Ho, int Wo, int N, int Cout, int ngroups,
                             int k, int stride, int pad, int hin, int win, const int32_t *ptr,
                             const int32_t *chan, const void *off, int off16, const float *val,
                             const float *bias, float *dst, const float *res, int relu, int direct, int nthreads) {
    const int64_t drow = (int64_t)(Wo + 2) * N;
    const int64_t dplane = (int64_t)(Ho + 2) * drow;
    const int L = Wo * N;
    const int nyb = (Ho + row_block(L) - 1) / row_block(L);
    const int nchunks = item_chunks(nyb, Cout / 8, nthreads);
    const int per_run = k * k;
    const int onto = res && res == dst;  /* the output overwrites its residual (kernels.h) */
    if (onto) res = 0;
    #pragma omp for schedule(dynamic, 1) collapse(2)
    for (int yb = 0; yb < nyb; yb++) {
        for (int ch = 0; ch < nchunks; ch++) {
            const int y = yb * Ho / nyb, r = (yb + 1) * Ho / nyb - y;
            const int c0 = chunk_first(chan, Cout, ch, nchunks), c1 = chunk_first(chan, Cout, ch + 1, nchunks);
            const float *base = src + y * src_row;
            for (int t = 0; t < L;) {
                const tile_kind *kind = &(!direct ? KINDS : N == VW ? KINDS_S2 : KINDS_S2P)[pick_kind(L - t, r)];
                const tile_fn fn = kind->fn[off16 != 0][r];
                const int64_t o = c0 * dplane + (y + 1) * drow + N + t;
                seg_sel sel;
                tile_sel(&sel, y, y + r - 1, t, kind->width, N, k, stride, pad, hin, win);
                for (int g = 0; g < ngroups; g++)
                    fn(base + (direct ? 2 * t : t), src_row, off, val, ptr + ((int64_t)g * Cout + c0) * per_run, per_run, &sel,
                       c1 - c0, dst + o, drow, dplane, g == 0 ? 1 + onto : 0, bias + c0, g == ngroups - 1,
                       res ? res + o : 0, relu);
                t += kind->width;
            }
        }
    }
}

/* Floats [lo, hi) of p set to zero, lo < hi: a border run is 2N floats, at batch 1 two, where
 * a call to memset cost more than the stores (GCC would turn the loop into that call). */
__attribute__((optimize("no-tree-loop-distribute-patterns")))
static inline void zero_run(float *p, int64_t lo, int64_t hi) {
    if (hi - lo > 64) memset(p + lo, 0, (size_t)(hi - lo) * sizeof(float));
    else for (int64_t i = lo; i < hi; i++) p[i] = 0.0f;
}

/* Zero what a span wrote outside the interior of nplanes padded planes from p (plane floats
 * apart; row: floats per padded row): the border pixels (columns 0 and W+1) of the rows it
 * crossed, and anything from row H+1 on, within floats [a, b) of each plane. Column W+1 of a row
 * and column 0 of the next are one run of 2N floats. At batch 1 this ran a memset per border
 * pixel, 12 % of MobileNetV2's time; then a call per plane, each finding the runs again from a
 * division (a fifth of its samples) and calling zero_run per run of two floats: the runs are now
 * found once for all the planes, the short ones written inline. */
__attribute__((optimize("no-tree-loop-distribute-patterns")))
void zero_outside(float *p, int nplanes, int64_t plane, int64_t a, int64_t b, int64_t row, int N, int W, int H) {
    const int64_t bottom = (int64_t)(H + 1) * row;
    if (b > bottom) {
        for (int c = 0; c < nplanes; c++) zero_run(p + c * plane, a > bottom ? a : bottom, b);
        b = bottom;
    }
    for (int64_t r = (a / row - 1) * row + (int64_t)(W + 1) * N; r < b; r += row) {
        const int64_t lo = r > a ? r : a, hi = r + 2 * N < b ? r + 2 * N : b;
        if (hi <= lo)
            continue;
        if (hi - lo > 16) {
            for (int c = 0; c < nplanes; c++) zero_run(p + c * plane, lo, hi);
            continue;
        }
        for (int c = 0; c < nplanes; c++)
            for (int64_t i = lo; i < hi; i++) p[c * plane + i] = 0.0f;
    }
}

/* Floats [0, n) of each of C planes (plane floats apart, from src) into dst in panels of panel
 * floats: panel p holds floats p*panel .. of channel 0, then of channel 1, ... (the last panel
 * may be partial). The span kernels' per-thread copy of a work item's block: the sparse span's
 * is one panel, the GEMM's one per tile. Copied with vector loads and stores, the channel two
 * planes on prefetched: a plane apart, no hardware stream covers the next channel's lines, and
 * a memcpy call per 256-byte piece (a span block at batch 1) took 8 % of ResNet-50's samples
 * (the README has the figures). */
__attribute__((optimize("no-tree-loop-distribute-patterns")))
void copy_panels(const float *src, int C, int64_t plane, int64_t n, int64_t panel, float *dst) {
    for (int c = 0; c < C; c++) {
        const float *s = src + c * plane;
        if (c + 2 < C)
            for (int64_t q = 0; q < n; q += 64 / sizeof(float)) __builtin_prefetch(s + 2 * plane + q, 0, 3);
        for (int64_t t = 0; t < n; t += panel) {
            const int64_t len = n - t < panel ? n - t : panel, whole = len / VW * VW;
            float *d = dst + t * C + c * panel;
            int64_t i = 0;
            for (; i < whole; i += VW) *(vf *)(d + i) = *(const vf *)(s + t + i);
            for (; i < len; i++) d[i] = s[t + i];
        }
    }
}

/* The span tile for rem floats left of a block: up to SR pieces of TW floats, one tile of a
 * block's last whole vectors (SPAN_TAILS), or a narrower tile of one row for its last floats
 * short of a vector; *step: the floats it covers. */
static tile_fn span_tile(int64_t rem, int SR, int TW, int off16, int64_t *step) {
    if (rem >= TW) {
        const int r = rem / TW < SR ? (int)(rem / TW) : SR;
        *step = (int64_t)r * TW;
        return SPAN_TILES[off16 != 0][r];
    }
    if (rem >= VW) {
        *step = rem / VW * VW;
        return SPAN_TAILS[off16 != 0][rem / VW];
    }
    const tile_kind *kind = &KINDS[pick_kind((int)rem, 1)];
    *step = kind->width;
    return kind->fn[off16 != 0][1];
}

/* n floats of finished sums p into d: plus the residual r (where given; it may be d), activated. Not turned
 * into a memcpy call where there is neither (a call per channel for a block of 512 bytes). */
__attribute__((optimize("no-tree-loop-distribute-patterns")))
static void span_finish(const float *restrict p, const float *r, int relu, int64_t n, float *d) {
    int64_t i = 0;
    for (; i + VW <= n; i += VW) {
        vf a = *(const vf *)(p + i);
        if (r) a += *(const vf *)(r + i);
        if (relu) a = ACTIVATE(vf, a, relu);
        *(vf *)(d + i) = a;
    }
    for (; i < n; i++) {
        v1 a = {p[i]};
        if (r) a[0] += r[i];
        if (relu) a = ACTIVATE(v1, a, relu);
        d[i] = a[0];
    }
}

/* A 1x1 stride-1 convolution without padding as one sparse x dense product over the whole
 * interior of each plane: in the padded (C, H+2, W+2, N) layout the pixels (1, 1) .. (H, W) are
 * one contiguous span of (H-1)(W+2)N + WN floats, border pixels between the rows included, so a
 * tile is full-width vectors however narrow the map (a 7x7 map at batch 1 is 4 vectors of 16
 * instead of rows of 7 floats); the border pixels it computes (zeros times weights, plus bias)
 * are zeroed again after each work item (zero_outside). The span is rounded up to whole vectors
 * where that stays inside the plane (the rest lands in the bottom border row, zeroed too). A
 * tile is up to SPAN_ROWS pieces of 8 vectors (24 accumulators with AVX-512), taken as rows of
 * the tile functions. Runs as for sparse_conv_body with k = 1; each nonzero's offset is its
 * input channel (native_plan.span_operands). Work items: blocks of the span x chunks of output
 * channels of equal nonzero shares. A block of every input channel is first copied into a
 * per-thread buffer, channel after channel (once per thread for all the chunks it takes of
 * the block): read in place, the channels' pieces lie a plane apart, at a 14x14 map and batch
 * 16 exactly 16 KB, so the pieces a tile reads fell into the same few L1 sets and evicted each
 * other. Copied, ResNet-50 at 224, 90 %, ran 19 % faster at batch 1 and 23 % at batch 16,
 * MobileNetV2 9-10 % (the same programs, interleaved; copying at every map size measured as fast
 * as copying only where the planes lie a multiple of 1 KB apart). With the SPAN_SUMS flag in
 * rows, the groups' partial sums of SPAN_SUM_BYTES of output channels at a time go to a
 * per-thread scratch, one contiguous block a channel, and only the finished sums, with the
 * residual and the activation, to the output planes (span_finish): in the planes each group's
 * pass reloaded and stored a channel's sums a plane from the last channel's, on the same few L1
 * sets as the next channel's, which evicted the L1-sized input group the pass reads. */
static void sparse_span_body(const float *src, int C, int H, int W, int N, int Cout, int ngroups, const int32_t *ptr,
                             const int32_t *chan, const void *off, int off16, const float *val, const float *bias,
                             float *dst, const float *res, int relu, int rows, int nthreads) {
    const int sums = (rows & SPAN_SUMS) != 0;
    rows &= ~SPAN_SUMS;
    const int SR = rows >= 1 && rows <= SPAN_ROWS ? rows : SPAN_ROWS;
    const span_geom sg = span_of(H, W, N);
    const int64_t row = sg.row, plane = sg.plane, start = sg.start, L = sg.len;
    const int TW = 8 * VW;
    const int64_t block = (int64_t)SR * TW;
    /* output channels whose partial sums one pass over the groups keeps in the scratch */
    const int CB = !sums ? Cout : SPAN_SUM_BYTES / (block * 4) > 0 ? (int)(SPAN_SUM_BYTES / (block * 4)) : 1;
    const int nblocks = (int)((L + block - 1) / block);
    const int nchunks = item_chunks(nblocks, Cout / 8, nthreads);
    const int onto = res && res == dst;  /* the output overwrites its residual (kernels.h) */
    int held = -1;  /* the block this thread's buffer holds, packed in this call */
    #pragma omp for schedule(dynamic, 1) collapse(2)
    for (int b = 0; b < nblocks; b++) {
        for (int ch = 0; ch < nchunks; ch++) {
            const int c0 = chunk_first(chan, Cout, ch, nchunks), c1 = chunk_first(chan, Cout, ch + 1, nchunks);
            const int64_t t0 = b * block, end = t0 + block < L ? t0 + block : L;
            /* each channel's copy takes the whole cache lines of this block only: padded to the full
             * block, a short last block (a 7x7 map at batch 1: 4 vectors of 8) left every other
             * line of the copy unused, and the channels of a group fell on half of L1's sets */
            const int64_t line = 64 / sizeof(float), width = (end - t0 + line - 1) / line * line;
            const seg_sel sel = {0, 1, 1, 1, (int)width, {3}};  /* offsets: input channels, width floats apart */
            float *in = thread_buffer(SCRATCH_SPAN, (int64_t)C * block);
            float *part = sums ? thread_buffer(SCRATCH_SPAN_SUMS, (int64_t)CB * block) : 0;
            if (b != held) copy_panels(src + start + t0, C, plane, end - t0, width, in);
            held = b;
            for (int cs = c0; cs < c1; cs += CB) {
                const int ce = cs + CB < c1 ? cs + CB : c1;
                const int64_t os = cs * plane + start;
                for (int64_t t = t0, step; t < end; t += step) {
                    const tile_fn fn = span_tile(end - t, SR, TW, off16, &step);
                    for (int g = 0; g < ngroups; g++) {  /* with scratch sums, span_finish does the epilogue */
                        const int last = !sums && g == ngroups - 1;
                        fn(in + (t - t0), TW, off, val, ptr + (int64_t)g * Cout + cs, 1, &sel, ce - cs,
                           sums ? part + (t - t0) : dst + os + t, TW, sums ? block : plane, g == 0 ? 1 + (onto && !sums) : 0,
                           bias + cs, last, last && res && !onto ? res + os + t : 0, relu);
                    }
                }
                for (int c = cs; sums && c < ce; c++) {
                    const int64_t at = c * plane + start + t0;
                    if (c + 1 < ce)  /* the next channel's lines lie a plane away, beyond any hardware stream */
                        for (int64_t q = 0; q < end - t0; q += 64 / sizeof(float)) {
                            __builtin_prefetch(dst + at + plane + q, 1, 3);
                            if (res) __builtin_prefetch(res + at + plane + q, 0, 3);
                        }
                    span_finish(part + (c - cs) * block, res ? res + at : 0, relu, end - t0, dst + at);
                }
            }
            zero_outside(dst + c0 * plane, c1 - c0, plane, start + t0, start + end, row, N, W, H);
        }
    }
}

/* A 3x3 stride-1 convolution with padding 1 (the input's one-pixel border) as one sparse x dense
 * product over each output plane's interior span, as sparse_span_body runs a 1x1: input and
 * output planes have the same geometry, so the window of span float t starts at input float t
 * of the plane, and nonzero (ci, ky, kx) reads a whole tile of consecutive floats at its offset
 * ci*plane + ky*row + kx*N from there (sparse_operands' offsets, every tap taken: the ones on
 * the zero border add zero). Where a row of the map is not whole vectors (14x14 or 7x7 maps at
 * batch 1) the row tiles split each row into vectors of 8, 4 and 2 floats and stream every
 * nonzero once per piece; here a tile is
 * whole vectors across the rows, border pixels included and zeroed afterwards (zero_outside).
 * The span is rounded up to whole vectors (span_of) only with the SPAN_ROUND flag in pieces:
 * its last vector then reads up to VW - 1 floats past the last input plane, which the caller
 * vouches are memory (kernels.conv_step checks; the engine's arena leaves them); without it the
 * tail runs in tiles of 8, 4, 2 and 1 floats, each streaming the nonzeros once more.
 * Read in place, without sparse_span_body's block copy (its planes a multiple of 4 KB apart,
 * that copy's reason, are 1x1 layers' wide inputs at batch 16; this runs where maps are small).
 * Stride 2 reads the 4 phase planes laid out in the output's padded geometry (phase_split_body
 * with Hd = H+2, Wd = W+2): output pixel (y, x) reads phase pixel (y + ky/2, x + kx/2) of
 * plane (ky%2, kx%2) (ky, kx counted on the padded input), again one run of consecutive floats
 * per nonzero at a fixed offset from the output float; H, W: the output's map.
 * Work items: blocks of pieces x 8 vectors of the span x chunks of output channels. */
static void sparse_conv_span_body(const float *src, int H, int W, int N, int Cout, int ngroups, int k,
                                  const int32_t *ptr, const int32_t *chan, const void *off, int off16,
                                  const float *val, const float *bias, float *dst, const float *res, int relu,
                                  int pieces, int nthreads) {
    const span_geom sg = span_of(H, W, N);
    const int64_t row = sg.row, plane = sg.plane, start = sg.start;
    const int64_t L = pieces & SPAN_ROUND ? sg.len : (int64_t)(H - 1) * row + (int64_t)W * N;
    pieces &= ~SPAN_ROUND;
    const int SR = pieces >= 1 && pieces <= SPAN_ROWS ? pieces : SPAN_ROWS;
    const int TW = 8 * VW;
    const int64_t block = (int64_t)SR * TW;
    const int nblocks = (int)((L + block - 1) / block);
    const int nchunks = item_chunks(nblocks, Cout / 8, nthreads);
    const int per_run = k * k;
    const int onto = res && res == dst;  /* the output overwrites its residual (kernels.h) */
    const seg_sel sel = {0, k, k, 1, N, {3}};
    #pragma omp for schedule(dynamic, 1) collapse(2)
    for (int b = 0; b < nblocks; b++) {
        for (int ch = 0; ch < nchunks; ch++) {
            const int c0 = chunk_first(chan, Cout, ch, nchunks), c1 = chunk_first(chan, Cout, ch + 1, nchunks);
            const int64_t t0 = b * block, end = t0 + block < L ? t0 + block : L;
            const int64_t os = c0 * plane + start;
            for (int64_t t = t0, step; t < end; t += step) {
                const tile_fn fn = span_tile(end - t, SR, TW, off16, &step);
                for (int g = 0; g < ngroups; g++) {
                    const int last = g == ngroups - 1;
                    fn(src + t, TW, off, val, ptr + ((int64_t)g * Cout + c0) * per_run, per_run, &sel, c1 - c0,
                       dst + os + t, TW, plane, g == 0 ? 1 + onto : 0, bias + c0, last,
                       last && res && !onto ? res + os + t : 0, relu);
                }
            }
            zero_outside(dst + c0 * plane, c1 - c0, plane, start + t0, start + end, row, N, W, H);
        }
    }
}

/* One output row of a stride-2 step over a padded map: Wo pixels of N floats into d, from the
 * input row at s (srow floats per padded row, the rows below it at s + k*srow). */
typedef void (*row2_fn)(const float *restrict s, int64_t srow, int Wo, int N, float *restrict d);

/* Every output row (c, y) of padded (C, H/2+2, W/2+2, N) dst, interior only (its border stays
 * zero), from padded (C, H+2, W+2, N) src at padded row 2y + first and float col (H, W even).
 * Rows are handed out as one flat loop calling a function with restrict pointers: the same
 * loops written inline under a collapsed OpenMP loop ran several times slower (GCC 12). */
static void stride2_rows(const float *src, int C, int H, int W, int N, float *dst, int first, int64_t col, row2_fn row) {
    const int Ho = H / 2, Wo = W / 2;
    const int64_t srow = (int64_t)(W + 2) * N, splane = (int64_t)(H + 2) * srow;
    const int64_t drow = (int64_t)(Wo + 2) * N, dplane = (int64_t)(Ho + 2) * drow;
    #pragma omp for schedule(static)
    for (int i = 0; i < C * Ho; i++) {
        const int c = i / Ho, y = i % Ho;
        row(src + c * splane + (int64_t)(2 * y + first) * srow + col, srow, Wo, N, dst + c * dplane + (y + 1) * drow + N);
    }
}

/* Every second pixel of an interior row. */
static void subsample_row(const float *restrict s, int64_t srow, int Wo, int N, float *restrict d) {
    (void)srow;
    if (N == 1)
        for (int x = 0; x < Wo; x++) d[x] = s[2 * x];
    else
        for (int x = 0; x < Wo; x++) memcpy(d + (int64_t)x * N, s + (int64_t)2 * x * N, (size_t)N * sizeof(float));
}

/* Every second pixel of every second row: padded (C, H+2, W+2, N) src -> padded (C, H/2+2,
 * W/2+2, N) dst. What a 1x1 stride-2 convolution reads, so that it runs as a span
 * (sparse_span_body) over a quarter of the pixels. */
static void subsample_body(const float *src, int C, int H, int W, int N, float *dst) {
    stride2_rows(src, C, H, W, N, dst, 1, N, subsample_row);
}

/* 3x3 stride-2 max pool, padding 1, on post-ReLU input (values >= 0, so the zero border
 * acts as -inf padding): one output row from the three input rows at s (padded row length
 * srow floats). Batch innermost, so consecutive n vectorise; batch 1 has its own loop (a
 * vectorised loop of one iteration per pixel costs several times the work). */
static void maxpool_row(const float *restrict s, int64_t srow, int Wo, int N, float *restrict d) {
    if (N == 1) {
        for (int x = 0; x < Wo; x++) {
            float m = s[2 * x];
            _Pragma("GCC unroll 3") for (int ky = 0; ky < 3; ky++)
                _Pragma("GCC unroll 3") for (int kx = 0; kx < 3; kx++) {
                    const float v = s[ky * srow + 2 * x + kx];
                    m = v > m ? v : m;
                }
            d[x] = m;
        }
        return;
    }
    for (int x = 0; x < Wo; x++, s += 2 * (int64_t)N, d += N)
        for (int n = 0; n < N; n++) {
            float m = s[n];
            _Pragma("GCC unroll 3") for (int ky = 0; ky < 3; ky++)
                _Pragma("GCC unroll 3") for (int kx = 0; kx < 3; kx++) {
                    const float v = s[ky * srow + (int64_t)kx * N + n];
                    m = v > m ? v : m;
                }
            d[n] = m;
        }
}

/* src: padded (C, H+2, W+2, N); dst: padded (C, H/2+2, W/2+2, N); output row y pools padded
 * input rows 2y .. 2y+2 from the border column on. */
static void maxpool3s2_body(const float *src, int C, int H, int W, int N, float *dst) {
    stride2_rows(src, C, H, W, N, dst, 0, 0, maxpool_row);
}

/* Per-thread scratch buffers (kernels.h: SCRATCH_*), at least floats long, 64-byte aligned,
 * kept for the thread's lifetime and grown when a larger one is asked for. */
static __thread float *scratch_buf[SCRATCH_SLOTS];
static __thread int64_t scratch_cap[SCRATCH_SLOTS];
float *thread_buffer(int slot, int64_t floats) {
    if (floats > scratch_cap[slot]) {
        free(scratch_buf[slot]);
        scratch_buf[slot] = aligned_alloc(64, (size_t)((floats * sizeof(float) + 63) / 64 * 64));
        scratch_cap[slot] = floats;
    }
    return scratch_buf[slot];
}

/* A sparse convolution with ReLU followed by the 3x3 stride-2 max pool, in one step: the
 * stem, whose output (64 planes of 32x32, 9.5 MB at batch 32; a 224-pixel ResNet's 7x7
 * stride-2 stem, 64 planes of 112x112, 53 MB at batch 16) is written once and read once by the
 * pool otherwise. Stride 2 reads phase planes, or with direct the padded input itself (as
 * sparse_conv_body). Work items are chunks of output channels (equal nonzero shares); an
 * item walks down the pooled rows keeping a window of 3 convolution rows per channel (row
 * 2y-1 carried over from the previous pooled row, rows 2y and 2y+1 computed as one 2-row
 * tile), pools it and writes the pooled row into the padded (Cout, Ho/2+2, Wo/2+2, N) dst. */
static void sparse_conv_pool_body(const float *src, int64_t src_row, int Ho, int Wo, int N, int Cout, int ngroups,
                                  int k, int stride, int pad, int hin, int win, const int32_t *ptr,
                                  const int32_t *chan, const void *off, int off16, const float *val,
                                  const float *bias, float *dst, int direct, int nthreads) {
    const int64_t lrow = (int64_t)(Wo + 2) * N, lplane = 3 * lrow;
    const tile_kind *kinds = !direct ? KINDS : N == VW ? KINDS_S2 : KINDS_S2P;
    const int Hp = Ho / 2, Wp = Wo / 2;
    const int64_t drow = (int64_t)(Wp + 2) * N, dplane = (int64_t)(Hp + 2) * drow;
    const int L = Wo * N;
    int nchunks = 4 * nthreads;
    if (nchunks > Cout) nchunks = Cout;
    const int per_run = k * k;
    /* 3 padded rows per channel; each work item zeroes the part it uses (a smaller batch's
     * borders lie where a larger one's interior was) */
    float *loc = thread_buffer(SCRATCH_POOL, (int64_t)Cout * lplane);
    #pragma omp for schedule(dynamic, 1)
    for (int ch = 0; ch < nchunks; ch++) {
        const int c0 = chunk_first(chan, Cout, ch, nchunks), c1 = chunk_first(chan, Cout, ch + 1, nchunks);
        memset(loc, 0, (size_t)((c1 - c0) * lplane) * sizeof(float));  /* row -1 and the borders: zero */
        for (int y = 0; y < Hp && c0 < c1; y++) {
            const float *base = src + (int64_t)(2 * y) * src_row;
            for (int t = 0; t < L;) {
                const tile_kind *kind = &kinds[pick_kind(L - t, 2)];
                const tile_fn fn = kind->fn[off16 != 0][2];
                seg_sel sel;
                tile_sel(&sel, 2 * y, 2 * y + 1, t, kind->width, N, k, stride, pad, hin, win);
                for (int g = 0; g < ngroups; g++)
                    fn(base + (direct ? 2 * t : t), src_row, off, val, ptr + ((int64_t)g * Cout + c0) * per_run, per_run, &sel,
                       c1 - c0, loc + lrow + N + t, lrow, lplane, g == 0, bias + c0, g == ngroups - 1, 0, 1);
                t += kind->width;
            }
            for (int c = c0; c < c1; c++) {
                float *w = loc + (c - c0) * lplane;
                maxpool_row(w, lrow, Wp, N, dst + c * dplane + (y + 1) * drow + N);
                memcpy(w, w + 2 * lrow, (size_t)lrow * sizeof(float));
            }
        }
    }
}

/* One padded row of Wp pixels (N floats each) split into its even and odd pixels. */
static void split_row(const float *restrict s, int Wh, int N, float *restrict even, float *restrict odd) {
    if (N == 1) {
        for (int col = 0; col < Wh; col++) {
            even[col] = s[2 * col];
            odd[col] = s[2 * col + 1];
        }
        return;
    }
    for (int col = 0; col < Wh; col++, s += 2 * (int64_t)N, even += N, odd += N)
        for (int n = 0; n < N; n++) {
            even[n] = s[n];
            odd[n] = s[N + n];
        }
}

/* Split a padded (C, Hp, Wp, N) tensor into 4 phase planes (a, b, C, Hd, Wd, N): plane (a, b)
 * holds rows a, a+2, ... and columns b, b+2, ... (Hp, Wp even) in its first Hp/2 rows of Wp/2
 * pixels; Hd >= Hp/2, Wd >= Wp/2 (a span convolution's planes are a row and a column wider, the
 * output's padded geometry: sparse_conv_span_body; the rest is never written). */
static void phase_split_body(const float *src, int C, int Hp, int Wp, int N, float *dst, int Hd, int Wd) {
    const int Wh = Wp / 2;
    const int64_t plane = (int64_t)Hd * Wd * N;
    #pragma omp for schedule(static)
    for (int i = 0; i < C * Hp; i++) {
        const int c = i / Hp, r = i % Hp, a = r & 1;
        float *even = dst + ((int64_t)(a * 2) * C + c) * plane + (int64_t)(r / 2) * Wd * N;
        split_row(src + (int64_t)i * Wp * N, Wh, N, even, even + (int64_t)C * plane);
    }
}

/* Global average pool of the interior of a padded (C, H+2, W+2, N) tensor -> (N, C). */
static void avgpool_body(const float *src, int C, int H, int W, int N, float *dst) {
    /* Sums kept in independent lanes: one scalar sum per (channel, image) was a chain of
     * dependent adds, 4 cycles each (EfficientNet's squeeze-excitation pools 56x56 and 112x112
     * maps). At batch 1 a row's W floats go into one vector of partial sums; else each image's
     * sum is its own lane of acc, the inner loop over images vectorised. */
    const int64_t srow = (int64_t)(W + 2) * N, splane = (int64_t)(H + 2) * srow;
    const float inv = 1.0f / (float)(H * W);
    #pragma omp for schedule(static)
    for (int c = 0; c < C; c++) {
        const float *plane = src + c * splane + srow + N;  /* pixel (1, 1) */
        if (N == 1) {
            vf acc = {0};
            float tail = 0.f;
            for (int y = 0; y < H; y++) {
                const float *r = plane + y * srow;
                int x = 0;
                for (; x + VW <= W; x += VW) acc += *(const vf *)(r + x);
                for (; x < W; x++) tail += r[x];
            }
            for (int i = 0; i < VW; i++) tail += acc[i];
            dst[c] = tail * inv;
            continue;
        }
        for (int n0 = 0; n0 < N; n0 += LANES) {  /* images in blocks of LANES: acc stays small, on the stack */
            const int nb = N - n0 < LANES ? N - n0 : LANES;
            float acc[LANES] = {0};
            for (int y = 0; y < H; y++)
                for (int x = 0; x < W; x++) {
                    const float *restrict p = plane + y * srow + (int64_t)x * N + n0;
                    for (int n = 0; n < nb; n++) acc[n] += p[n];
                }
            for (int n = 0; n < nb; n++) dst[(int64_t)(n0 + n) * C + c] = acc[n] * inv;
        }
    }
}

/* The classifier: dst (N, Cout) = act(src (N, C) x w^T (w: Cout x C, row-major) + bias). In C rather
 * than numpy so that every thread of a forward pass is one of the nthreads given (numpy's BLAS
 * starts its own threads, which keep spinning after a product). */
static void linear_body(const float *src, int N, int C, int Cout, const float *w, const float *bias, float *dst,
                        int relu) {
    /* Output by output: each weight row read from memory once and used for every image from L1
     * (a 2048 x 1000 classifier is 8 MB); products summed in vectors (a scalar sum is a chain of
     * dependent adds that the compiler may not reorder), the lanes added at the end. */
    #pragma omp for schedule(static)
    for (int k = 0; k < Cout; k++) {
        const float *wk = w + (int64_t)k * C;
        for (int n = 0; n < N; n++) {
            const float *x = src + (int64_t)n * C;
            vf acc[4] = {{0}, {0}, {0}, {0}};
            int c = 0;
            for (; c + 4 * VW <= C; c += 4 * VW)
                for (int u = 0; u < 4; u++) acc[u] += *(const vf *)(x + c + u * VW) * *(const vf *)(wk + c + u * VW);
            for (; c + VW <= C; c += VW) acc[0] += *(const vf *)(x + c) * *(const vf *)(wk + c);
            const vf v = (acc[0] + acc[1]) + (acc[2] + acc[3]);
            float s = 0.f;
            for (int i = 0; i < VW; i++) s += v[i];
            for (; c < C; c++) s += x[c] * wk[c];
            s += bias[k];
            dst[(int64_t)n * Cout + k] = relu ? ACTIVATE(v1, (v1){s}, relu)[0] : s;
        }
    }
}

/* A linear layer whose weight is mostly zeros, in CSR (ptr: Cout + 1 row starts into idx, the
 * nonzeros' input indices, and val): each thread first copies the (N, C) input transposed into
 * (C, N), so that one nonzero is one multiply-add over up to VW images, then runs its share of
 * the output rows. The dense loop reads every weight (a 2048 x 1000 classifier is 8 MB, most of
 * it zeros after global pruning). Four sums for consecutive nonzeros: one would wait on each
 * multiply-add's latency. The copy is padded by a vector of zeros, so a row's last load of
 * fewer than VW images stays inside it. */
/* Sum of val[j] * x[idx[j]] for j in [j0, j1): VW products a step, the x values gathered
 * (AVX-512 or AVX2; a scalar loop elsewhere), in two sums for the multiply-add's latency. */
static float linear_row_gathered(const float *x, const int32_t *idx, const float *val, int j0, int j1) {
    int j = j0;
    float t = 0.f;
#if defined(__AVX512F__)
    __m512 a = _mm512_setzero_ps(), b = _mm512_setzero_ps();
    for (; j + 32 <= j1; j += 32) {
        a = _mm512_fmadd_ps(_mm512_loadu_ps(val + j), _mm512_i32gather_ps(_mm512_loadu_si512(idx + j), x, 4), a);
        b = _mm512_fmadd_ps(_mm512_loadu_ps(val + j + 16), _mm512_i32gather_ps(_mm512_loadu_si512(idx + j + 16), x, 4), b);
    }
    t = _mm512_reduce_add_ps(_mm512_add_ps(a, b));
#elif defined(__AVX2__)
    __m256 a = _mm256_setzero_ps(), b = _mm256_setzero_ps();
    for (; j + 16 <= j1; j += 16) {
        a = _mm256_fmadd_ps(_mm256_loadu_ps(val + j), _mm256_i32gather_ps(x, _mm256_loadu_si256((const __m256i *)(idx + j)), 4), a);
        b = _mm256_fmadd_ps(_mm256_loadu_ps(val + j + 8), _mm256_i32gather_ps(x, _mm256_loadu_si256((const __m256i *)(idx + j + 8)), 4), b);
    }
    const __m256 c = _mm256_add_ps(a, b);
    for (int i = 0; i < 8; i++) t += c[i];
#endif
    for (; j < j1; j++) t += val[j] * x[idx[j]];
    return t;
}

static void sparse_linear_body(const float *src, int N, int C, int Cout, const int32_t *ptr, const int32_t *idx,
                               const float *val, const float *bias, float *dst, int relu) {
    float *xt = thread_buffer(SCRATCH_LINEAR, (int64_t)C * N + VW);
    for (int n = 0; n < N && N > 1; n++)
        for (int c = 0; c < C; c++) xt[(int64_t)c * N + n] = src[(int64_t)n * C + c];
    for (int i = 0; i < VW; i++) xt[(int64_t)C * N + i] = 0.0f;
    #pragma omp for schedule(static)
    for (int k = 0; k < Cout; k++) {
        if (N == 1) {  /* one float a nonzero: VW of them gathered at once */
            float t = linear_row_gathered(src, idx, val, ptr[k], ptr[k + 1]);
            const v1 y = {t + bias[k]};
            dst[k] = relu ? ACTIVATE(v1, y, relu)[0] : y[0];
            continue;
        }
        for (int n0 = 0; n0 < N; n0 += VW) {
            const float *x = xt + n0;
            vf a[4] = {{0}, {0}, {0}, {0}};
            int j = ptr[k];
            for (; j + 4 <= ptr[k + 1]; j += 4)
                for (int u = 0; u < 4; u++) a[u] += val[j + u] * *(const vf *)(x + (int64_t)idx[j + u] * N);
            for (; j < ptr[k + 1]; j++) a[0] += val[j] * *(const vf *)(x + (int64_t)idx[j] * N);
            const vf sum = (a[0] + a[1]) + (a[2] + a[3]);
            for (int i = 0; i < VW && n0 + i < N; i++) {
                const v1 y = {sum[i] + bias[k]};
                dst[(int64_t)(n0 + i) * Cout + k] = relu ? ACTIVATE(v1, y, relu)[0] : y[0];
            }
        }
    }
}

/* NCHW input -> padded (C, H+2b, W+2b, N) with a border of b pixels (b >= 1: a first
 * convolution with wider padding, ResNet's 7x7 stem, reads it directly); the border of dst must
 * already be zero. */
static void pack_input_body(const float *src, int N, int C, int H, int W, int b, float *dst) {
    /* Work by destination row, each written once in order: split by image instead, the threads
     * wrote the same cache lines (a pixel's N floats), and at batch 16 the 224x224 pack cost
     * more than a convolution. The N source rows are read in blocks of 16 pixels, the block's
     * N x 16 floats transposed through L1. */
    const int64_t drow = (int64_t)(W + 2 * b) * N, dplane = (int64_t)(H + 2 * b) * drow;
    const int64_t image = (int64_t)C * H * W;
    #pragma omp for schedule(static)
    for (int i = 0; i < C * H; i++) {
        const int c = i / H, y = i % H;
        const float *s = src + ((int64_t)c * H + y) * W;
        float *d = dst + c * dplane + (y + b) * drow + (int64_t)b * N;
        for (int x0 = 0; x0 < W; x0 += 16) {
            const int x1 = x0 + 16 < W ? x0 + 16 : W;
            for (int n = 0; n < N; n++)
                for (int x = x0; x < x1; x++) d[(int64_t)x * N + n] = s[n * image + x];
        }
    }
}


void run_steps(const step_t *steps, int nsteps, int nthreads) {
    #pragma omp parallel num_threads(nthreads)
    for (int i = 0; i < nsteps; i++) {
        const step_t *s = &steps[i];
        switch (s->kind) {
        case STEP_PACK: pack_input_body(s->src, s->N, s->C, s->H, s->W, s->pad > 1 ? s->pad : 1, s->dst); break;
        case STEP_CONV:
        case STEP_CONV_S2:  /* the Python side makes it only for N == VW or 2 VW (kernels.conv_step) */
            sparse_conv_body(s->src, s->src_row, s->Ho, s->Wo, s->N, s->Cout, s->ngroups, s->k, s->stride, s->pad, s->H, s->W,
                             s->ptr, s->chan, s->off, s->off16, s->val, s->bias, s->dst, s->res, s->relu,
                             s->kind == STEP_CONV_S2 && (s->N == VW || s->N == 2 * VW), nthreads);
            break;
        case STEP_MAXPOOL: maxpool3s2_body(s->src, s->C, s->H, s->W, s->N, s->dst); break;
        case STEP_CONV_POOL:
        case STEP_CONV_POOL_S2:  /* as STEP_CONV_S2 */
            sparse_conv_pool_body(s->src, s->src_row, s->Ho, s->Wo, s->N, s->Cout, s->ngroups, s->k, s->stride, s->pad,
                                  s->H, s->W, s->ptr, s->chan, s->off, s->off16, s->val, s->bias, s->dst,
                                  s->kind == STEP_CONV_POOL_S2 && (s->N == VW || s->N == 2 * VW), nthreads);
            break;
        case STEP_SPAN:
            sparse_span_body(s->src, s->C, s->H, s->W, s->N, s->Cout, s->ngroups, s->ptr, s->chan, s->off, s->off16, s->val,
                             s->bias, s->dst, s->res, s->relu, s->k, nthreads);
            break;
        case STEP_CONV_SPAN:
            sparse_conv_span_body(s->src, s->Ho, s->Wo, s->N, s->Cout, s->ngroups, s->k, s->ptr, s->chan, s->off, s->off16,
                                  s->val, s->bias, s->dst, s->res, s->relu, s->pieces, nthreads);
            break;
        case STEP_GEMM:
            gemm_span_body(s->src, s->H, s->W, s->N, s->C, s->Cout, s->val, s->bias, s->dst, s->res, s->relu, nthreads);
            break;
        case STEP_SUBSAMPLE: subsample_body(s->src, s->C, s->H, s->W, s->N, s->dst); break;
        case STEP_SPLIT: phase_split_body(s->src, s->C, s->H, s->W, s->N, s->dst, s->Ho, s->Wo); break;
        case STEP_AVGPOOL: avgpool_body(s->src, s->C, s->H, s->W, s->N, s->dst); break;
        case STEP_SCALE: scale_body(s->src, s->C, s->H, s->W, s->N, s->val, s->stride, s->src_row, s->dst); break;
        case STEP_REPAD: repad_body(s->src, s->C, s->H, s->W, s->N, s->k, s->pad, s->dst); break;
        case STEP_LINEAR:  /* with ptr: the weight in CSR (kernels.linear_step) */
            if (s->ptr)
                sparse_linear_body(s->src, s->N, s->C, s->Cout, s->ptr, (const int32_t *)s->off, s->val, s->bias, s->dst,
                                   s->relu);
            else
                linear_body(s->src, s->N, s->C, s->Cout, s->val, s->bias, s->dst, s->relu);
            break;
        case STEP_WG_INPUT: winograd_input_body(s->src, s->C, s->H, s->W, s->N, s->dst); break;
        case STEP_WG_CONV:
            winograd_conv_body(s->src, s->C, s->H, s->W, s->N, s->Cout, s->val, s->bias, s->dst, s->res, s->relu);
            break;
        case STEP_WG_FUSED:
            winograd_fused_body(s->src, s->C, s->H, s->W, s->N, s->Cout, s->val, s->bias, s->dst, s->res, s->relu);
            break;
        }
    }
}
