/* The product by a packed weight that _gemm.c (gemm_packed: a layer's constant weight, packed once at
 * load) and _pointwise.c (attention: a head's keys and values, packed per head) run, on AVX-512 or on
 * AVX2 + FMA (one layout, two tile shapes). */
#ifndef DCM_PACKED_GEMM_H
#define DCM_PACKED_GEMM_H
#include "_kernel_common.h"

/* x [m, k] @ W [k, n] (+ bias, ReLU) where W is a layer's constant weight, packed once at load into
 * panels of PANEL columns, each panel's k rows of PANEL floats one after another: the layout the
 * micro-kernel reads, so no call packs it again (OpenBLAS packs both operands on every call; the
 * zoo's transformer and ConvNeXt layers took 0.83-0.93 of numpy's time with each weight used once in
 * turn, as in a run, and 0.82-0.95 of onnxruntime's MLAS: benchmarks/gemm.py).
 * A tile is ROWS rows of x by one panel: 24 AVX-512 accumulators, each step of k one load of the
 * panel row (2 vectors) and ROWS broadcasts of x. The panels are taken in blocks of at most
 * BLOCK_FLOATS packed floats (all of a transformer layer's weight), row block by row block within a
 * block and panel by panel within a row block, so a block of x stays in L1 while the block of panels
 * stays in L2 (GPT-2's 50257-word output layer, 51 MB packed, streamed from memory once per row
 * block without it: 3.5x numpy's time). The bias starts the accumulators; a residual (same layout as
 * the output) and the activation (ConvAct: Relu, Clip, Sigmoid, SiLU, HardSwish) come before the one
 * store: no second pass over the output. */
#define PANEL 32
#define ROWS 12
/* AVX2 has 16 vector registers of 8 floats: a tile is ROWS_AVX2 rows by half a panel (16 columns), 12
 * accumulators, the half panel's row (2 vectors) and one broadcast of x (BLIS's and MLAS's FMA3 shape). */
#define ROWS_AVX2 6
#define BLOCK_FLOATS (1 << 18) /* 1 MB: half the L2 of the AVX-512 server cores */
#define BLOCK_FLOATS_AVX2 (1 << 16) /* 256 KB: half the L2 of a Zen 2-3 core */
/* Where one panel is more than a block (k > 2048), the AVX2 tiles take k in chunks of KC_AVX2 rows, each
 * chunk of a panel for all the row blocks in turn: a panel of k = 4608 (ResNet's 512-channel 3x3 layers
 * as pixel_gemm's product) is 576 KB, more than a Zen 3's L2, and was read from L3 again by every row
 * block. The partial sums go to the output and come back (float, exact): the sums are the same bits. */
#define KC_AVX2 256
/* Rows of the panel prefetched ahead of the one multiplied (4 KiB): a layer's weight comes from L3 on
 * each run of a model larger than L2, and the hardware prefetcher alone left a tile waiting on it.
 * One layer alone, its weight among 16 MB of others, 1 thread: 49x400 @ 400x400 184 -> 143 us (in L2:
 * 101), 49x2048 @ 2048x512 1106 -> 888 (in L2: 685); 8 rows ahead: 158 and 983. */
#define AHEAD 32

typedef struct {
    const float *x, *packed, *bias, *residual;
    float *out;
    Py_ssize_t m, k, n, ldx, ldo, panels;
    Py_ssize_t row_blocks, block; /* blocks of ROWS (ROWS_AVX2) rows; panels per block of panels */
    Py_ssize_t kc;                /* the AVX2 tiles' chunk of k (k itself: one chunk) */
    ConvAct act;
    int avx512; /* the AVX-512 tiles (else the AVX2 ones), from use_avx512() when packed_plan ran */
} Packed;

#ifdef HAVE_AVX2_PATH
#define PACKED_AVX512 __attribute__((target("avx512f,avx2,fma")))

/* rows (<= ROWS) rows of x by the panel's first `cols` columns; wide: two vectors (cols > 16). */
PACKED_AVX512 static inline __attribute__((always_inline)) void tile_avx512(const Packed *p, Py_ssize_t r0, Py_ssize_t q,
                                                                     int rows, int wide, int ahead)
{
    const Py_ssize_t c0 = q * PANEL, cols = p->n - c0 < PANEL ? p->n - c0 : PANEL;
    const float *x = p->x + r0 * p->ldx, *w = p->packed + q * PANEL * p->k;
    const __mmask16 m0 = part16(cols), m1 = cols <= 16 ? 0 : part16(cols - 16);
    const __m512 b0 = p->bias ? _mm512_maskz_loadu_ps(m0, p->bias + c0) : _mm512_setzero_ps();
    const __m512 b1 = p->bias && wide ? _mm512_maskz_loadu_ps(m1, p->bias + c0 + 16) : _mm512_setzero_ps();
    __m512 acc0[ROWS], acc1[ROWS];
    for (int r = 0; r < ROWS; r++) acc0[r] = b0, acc1[r] = b1;
    /* x's rows through three pointers stepped along k (rows 0, 4, 8) and byte offsets 0, L, 2L, 3L: each row
       one addressing mode, no per-row address arithmetic in the loop (N = 16: 44 -> 59 GMAC/s; 48: 64 -> 77) */
    const Py_ssize_t L = p->ldx * 4, offset[4] = {0, L, 2 * L, 3 * L};
    /* ahead (the block's last panel, a row block after this one): the next row block's x, swept over the
       k steps; a producer's output comes from L2 or L3, and the hardware prefetcher alone left a tile
       waiting on it (3136 x 96 @ 96 x 24 after a pass that evicted x: 145 -> 132 us; in cache 127 -> 124).
       Otherwise the first line of this tile's x, again: one prefetch that hits L1. */
    const char *next = (const char *)(ahead ? x + rows * p->ldx : x);
    const Py_ssize_t step = ahead && p->k ? rows * p->ldx * 4 / p->k : 0;
    const char *row[3] = {(const char *)x, (const char *)x + 4 * L, (const char *)x + 8 * L};
    for (Py_ssize_t i = 0; i < p->k; i++, row[0] += 4, row[1] += 4, row[2] += 4) {
        _mm_prefetch((const char *)(w + (i + AHEAD) * PANEL), _MM_HINT_T0); /* (past the end: never faults) */
        if (wide) _mm_prefetch((const char *)(w + (i + AHEAD) * PANEL + 16), _MM_HINT_T0);
        _mm_prefetch(next + i * step, _MM_HINT_T0);
        const __m512 w0 = _mm512_loadu_ps(w + i * PANEL), w1 = wide ? _mm512_loadu_ps(w + i * PANEL + 16) : w0;
#pragma GCC unroll 12
        for (int r = 0; r < ROWS; r++) {
            if (r >= rows) break;
            const __m512 v = _mm512_set1_ps(*(const float *)(row[r / 4] + offset[r % 4]));
            acc0[r] = _mm512_fmadd_ps(v, w0, acc0[r]);
            if (wide) acc1[r] = _mm512_fmadd_ps(v, w1, acc1[r]);
        }
    }
    for (int r = 0; r < rows; r++) {
        float *o = p->out + (r0 + r) * p->ldo + c0;
        _mm_prefetch((const char *)(o + rows * p->ldo), _MM_HINT_T0); /* the next row block's lines of this panel */
        if (wide) _mm_prefetch((const char *)(o + rows * p->ldo + 16), _MM_HINT_T0);
        if (p->residual) {
            const float *res = p->residual + (r0 + r) * p->n + c0;
            acc0[r] = _mm512_add_ps(acc0[r], load16(m0, res));
            if (wide) acc1[r] = _mm512_add_ps(acc1[r], load16(m1, res + 16));
        }
        store16(o, m0, conv_act16(&p->act, acc0[r]));
        if (wide) store16(o + 16, m1, conv_act16(&p->act, acc1[r]));
    }
}

/* One instance per row count, so that each keeps its accumulators in registers. */
#define TILE(R)                                                                                               \
    PACKED_AVX512 static void tile##R(const Packed *p, Py_ssize_t r0, Py_ssize_t q, int wide, int ahead)             \
    {                                                                                                        \
        if (wide) tile_avx512(p, r0, q, R, 1, ahead);                                                        \
        else tile_avx512(p, r0, q, R, 0, ahead);                                                             \
    }
TILE(1) TILE(2) TILE(3) TILE(4) TILE(5) TILE(6) TILE(7) TILE(8) TILE(9) TILE(10) TILE(11) TILE(12)
static void (*const tiles[ROWS + 1])(const Packed *, Py_ssize_t, Py_ssize_t, int, int) = {
    NULL, tile1, tile2, tile3, tile4, tile5, tile6, tile7, tile8, tile9, tile10, tile11, tile12};

#define PACKED_AVX2 __attribute__((target("avx2,fma")))

/* tile_avx512's AVX2 form: rows (<= ROWS_AVX2) rows of x by the 16 columns of panel q from column h (0 or
 * 16) on, over k's chunk [k0, k0 + kc); wide: two vectors (more than 8 of those columns). A chunk after the
 * first starts from the sums the one before stored; only the last one adds the residual and activates. */
PACKED_AVX2 static inline __attribute__((always_inline)) void tile_avx2(const Packed *p, Py_ssize_t r0, Py_ssize_t q,
                                                                       Py_ssize_t k0, int h, int rows, int wide,
                                                                       int ahead)
{
    const Py_ssize_t c0 = q * PANEL + h, cols = p->n - c0 < 16 ? p->n - c0 : 16;
    const Py_ssize_t depth = p->k - k0 < p->kc ? p->k - k0 : p->kc;
    const int first = k0 == 0, last = k0 + depth == p->k;
    const float *x = p->x + r0 * p->ldx + k0, *w = p->packed + q * PANEL * p->k + k0 * PANEL + h;
    const __m256i m0 = part8(cols), m1 = part8(cols - 8);
    __m256 acc0[ROWS_AVX2], acc1[ROWS_AVX2];
    if (first) {
        const __m256 b0 = p->bias ? _mm256_maskload_ps(p->bias + c0, m0) : _mm256_setzero_ps();
        const __m256 b1 = p->bias && wide ? _mm256_maskload_ps(p->bias + c0 + 8, m1) : _mm256_setzero_ps();
#pragma GCC unroll 6
        for (int r = 0; r < ROWS_AVX2; r++) acc0[r] = b0, acc1[r] = b1;
    } else {
#pragma GCC unroll 6
        for (int r = 0; r < ROWS_AVX2; r++) {
            if (r >= rows) break;
            const float *o = p->out + (r0 + r) * p->ldo + c0;
            acc0[r] = cols >= 8 ? _mm256_loadu_ps(o) : _mm256_maskload_ps(o, m0);
            acc1[r] = !wide ? acc0[r] : cols >= 16 ? _mm256_loadu_ps(o + 8) : _mm256_maskload_ps(o + 8, m1);
        }
    }
    const char *next = (const char *)(ahead ? x + rows * p->ldx : x); /* as in tile_avx512 */
    const Py_ssize_t step = ahead && depth ? rows * p->ldx * 4 / depth : 0;
    /* x's rows through two pointers stepped along k (rows 0 and 3) and byte offsets 0, L, 2L, as in
       tile_avx512: no per-row address arithmetic in the loop */
    const Py_ssize_t L = p->ldx * 4, offset[3] = {0, L, 2 * L};
    const char *row[2] = {(const char *)x, (const char *)x + 3 * L};
    for (Py_ssize_t i = 0; i < depth; i++, row[0] += 4, row[1] += 4) {
        /* no prefetch of the panel ahead, unlike tile_avx512: on a Zen 3 it took a load slot of each step
           for a line the hardware prefetcher brought anyway (128 x 256 @ 256 x 1024 on one thread: 1375 ->
           943 us, 12544 x 96 @ 96 x 24: 1764 -> 842) */
        if (ahead) _mm_prefetch(next + i * step, _MM_HINT_T0);
        const __m256 w0 = _mm256_loadu_ps(w + i * PANEL), w1 = wide ? _mm256_loadu_ps(w + i * PANEL + 8) : w0;
#pragma GCC unroll 6
        for (int r = 0; r < ROWS_AVX2; r++) {
            if (r >= rows) break;
            const __m256 v = _mm256_broadcast_ss((const float *)(row[r / 3] + offset[r % 3]));
            acc0[r] = _mm256_fmadd_ps(v, w0, acc0[r]);
            if (wide) acc1[r] = _mm256_fmadd_ps(v, w1, acc1[r]);
        }
    }
    /* Relu and Clip in registers; the other activations (conv_act8: exp, erf) on the stored sums, from L1:
       a call to conv_act8 (not inlined) while the accumulators were live made GCC keep them in memory
       through the whole k loop (2.2x the time), and so did this loop where not unrolled. Masked stores
       only at a partial vector: AMD's vmaskmovps store is microcoded. */
    const int clamp = last && p->act.kind == CONV_ACT_CLAMP;
    const __m256 lo = _mm256_set1_ps(p->act.lo), hi = _mm256_set1_ps(p->act.hi);
#pragma GCC unroll 6
    for (int r = 0; r < ROWS_AVX2; r++) {
        if (r >= rows) break;
        float *o = p->out + (r0 + r) * p->ldo + c0;
        if (last && p->residual) {
            const float *res = p->residual + (r0 + r) * p->n + c0;
            acc0[r] = _mm256_add_ps(acc0[r], cols >= 8 ? _mm256_loadu_ps(res) : _mm256_maskload_ps(res, m0));
            if (wide) acc1[r] = _mm256_add_ps(acc1[r], cols >= 16 ? _mm256_loadu_ps(res + 8) : _mm256_maskload_ps(res + 8, m1));
        }
        if (clamp) acc0[r] = clamp8(acc0[r], lo, hi), acc1[r] = clamp8(acc1[r], lo, hi);
        if (cols >= 8) _mm256_storeu_ps(o, acc0[r]);
        else _mm256_maskstore_ps(o, m0, acc0[r]);
        if (wide && cols >= 16) _mm256_storeu_ps(o + 8, acc1[r]);
        else if (wide) _mm256_maskstore_ps(o + 8, m1, acc1[r]);
    }
    if (last && p->act.kind > CONV_ACT_CLAMP) conv_act_block8(&p->act, p->out + r0 * p->ldo + c0, p->ldo, rows, cols);
}

/* Both halves of panel q (the second where it has columns) for one row count, k's chunk from k0. */
#define TILE_AVX2(R)                                                                                          \
    PACKED_AVX2 static void tile_avx2_##R(const Packed *p, Py_ssize_t r0, Py_ssize_t q, Py_ssize_t k0, int ahead) \
    {                                                                                                        \
        const Py_ssize_t left = p->n - q * PANEL;                                                            \
        if (left > 8) tile_avx2(p, r0, q, k0, 0, R, 1, ahead && left <= 16);                                 \
        else tile_avx2(p, r0, q, k0, 0, R, 0, ahead);                                                        \
        if (left > 24) tile_avx2(p, r0, q, k0, 16, R, 1, ahead);                                             \
        else if (left > 16) tile_avx2(p, r0, q, k0, 16, R, 0, ahead);                                        \
    }
TILE_AVX2(1) TILE_AVX2(2) TILE_AVX2(3) TILE_AVX2(4) TILE_AVX2(5) TILE_AVX2(6)
static void (*const tiles_avx2[ROWS_AVX2 + 1])(const Packed *, Py_ssize_t, Py_ssize_t, Py_ssize_t, int) = {
    NULL, tile_avx2_1, tile_avx2_2, tile_avx2_3, tile_avx2_4, tile_avx2_5, tile_avx2_6};

/* packed_range where k is chunked (block 1: unit t is row block t % row_blocks of panel t / row_blocks):
 * the range's row blocks of a panel chunk by chunk, each chunk for all of them in turn, so that it is
 * read from memory once and from L2 by the others. No prefetch of the next row block's x. */
static void packed_range_chunked(const Packed *p, Py_ssize_t lo, Py_ssize_t hi)
{
    for (Py_ssize_t t = lo; t < hi;) {
        const Py_ssize_t q = t / p->row_blocks, b0 = t % p->row_blocks;
        const Py_ssize_t b1 = p->row_blocks - b0 < hi - t ? p->row_blocks : b0 + (hi - t);
        for (Py_ssize_t k0 = 0; k0 < p->k; k0 += p->kc)
            for (Py_ssize_t b = b0; b < b1; b++) {
                const Py_ssize_t r0 = p->m * b / p->row_blocks, r1 = p->m * (b + 1) / p->row_blocks;
                tiles_avx2[r1 - r0](p, r0, q, k0, 0);
            }
        t += b1 - b0;
    }
}

/* parallel_for's range function over the tiles: block of panels, then row block, then panel. */
static void packed_range(void *ctx, Py_ssize_t lo, Py_ssize_t hi)
{
    const Packed *p = ctx;
    if (!p->avx512 && p->kc < p->k) {
        packed_range_chunked(p, lo, hi);
        return;
    }
    const Py_ssize_t per_block = p->row_blocks * p->block;
    for (Py_ssize_t t = lo; t < hi;) {
        /* where t falls, found by division once per block of panels; then tile after tile by counting,
           one division per row block (a tile of K = 32 is ~400 cycles: five divisions a tile cost 28%) */
        const Py_ssize_t first = t / per_block * p->block, tile = t % per_block;
        const Py_ssize_t width = p->panels - first < p->block ? p->panels - first : p->block;
        const Py_ssize_t stop = t - tile + p->row_blocks * width < hi ? t - tile + p->row_blocks * width : hi;
        /* the rows shared evenly between the row blocks: 49 rows are 10 + 10 + 10 + 10 + 9, not 4 x 12 + 1,
           whose one-row tile reads the panel for a twelfth of the work (the weight's loads set its time) */
        Py_ssize_t b = tile / width, q = first + tile % width;
        Py_ssize_t r0 = p->m * b / p->row_blocks, r1 = p->m * (b + 1) / p->row_blocks;
        for (; t < stop; t++) {
            const int ahead = q == first + width - 1 && b + 1 < p->row_blocks;
            if (p->avx512) tiles[r1 - r0](p, r0, q, p->n - q * PANEL > 16, ahead);
            else tiles_avx2[r1 - r0](p, r0, q, 0, ahead);
            if (++q == first + width) q = first, b++, r0 = r1, r1 = p->m * (b + 1) / p->row_blocks;
        }
    }
}
#endif

/* The floats of w [k, n] packed: whole panels of PANEL columns (the last one padded with zeros). */
static Py_ssize_t packed_size(Py_ssize_t k, Py_ssize_t n)
{
    return SIZE_PRODUCT((n + PANEL - 1) / PANEL, PANEL, k);
}

#ifdef HAVE_AVX2_PATH
/* pack_panels for a w whose columns are contiguous (row == 4 bytes: attention's keys, each key's features
 * adjacent): 16 columns x 16 rows at a time through registers, one 16 x 16 transpose. */
PACKED_AVX512 static void pack_columns_avx512(const char *w, Py_ssize_t k, Py_ssize_t n, Py_ssize_t col,
                                              float *packed)
{
    for (Py_ssize_t c0 = 0; c0 < n; c0 += PANEL, packed += PANEL * k)
        for (Py_ssize_t i0 = 0; i0 < k; i0 += 16) {
            const int rows = k - i0 < 16 ? (int)(k - i0) : 16;
            const __mmask16 m = part16(rows);
            for (int h = 0; h < PANEL; h += 16) {
                __m512 b[16];
                for (int t = 0; t < 16; t++) /* column c0 + h + t's rows i0 .. i0 + rows, zeros past n */
                    b[t] = c0 + h + t < n ? _mm512_maskz_loadu_ps(m, w + (c0 + h + t) * col + i0 * 4)
                                          : _mm512_setzero_ps();
                transpose16(b); /* b[f]: row i0 + f over the 16 columns */
                for (int f = 0; f < rows; f++) _mm512_storeu_ps(packed + (i0 + f) * PANEL + h, b[f]);
            }
        }
}
#endif

/* w [k, n] (float32 at byte strides row and col) into packed: whole panels of PANEL columns, each panel's
 * k rows of PANEL floats one after another, zeros past n. packed holds packed_size(k, n) floats. Rows of
 * contiguous columns go a panel's width at a time, contiguous columns (on AVX-512) 16 x 16 at a time:
 * attention packs a head's keys and values on every call, and value by value the packing took a fifth
 * of ViT-Tiny's attention. */
static void pack_panels(const char *w, Py_ssize_t k, Py_ssize_t n, Py_ssize_t row, Py_ssize_t col, float *packed)
{
    if (col == sizeof(float)) {
        for (Py_ssize_t c0 = 0; c0 < n; c0 += PANEL) {
            const Py_ssize_t cols = n - c0 < PANEL ? n - c0 : PANEL;
            for (Py_ssize_t i = 0; i < k; i++, packed += PANEL) {
                memcpy(packed, w + i * row + c0 * col, (size_t)cols * sizeof(float));
                memset(packed + cols, 0, (size_t)(PANEL - cols) * sizeof(float));
            }
        }
        return;
    }
#ifdef HAVE_AVX2_PATH
    if (row == sizeof(float) && use_avx512()) {
        pack_columns_avx512(w, k, n, col, packed);
        return;
    }
#endif
    for (Py_ssize_t c0 = 0; c0 < n; c0 += PANEL)
        for (Py_ssize_t i = 0; i < k; i++)
            for (Py_ssize_t j = 0; j < PANEL; j++)
                *packed++ = c0 + j < n ? *(const float *)(w + i * row + (c0 + j) * col) : 0.f;
}

/* p's panels, row blocks and panels per block, from its m, k and n: the units packed_range takes are
 * [0, p->row_blocks * p->panels). */
static void packed_plan(Packed *p)
{
    const int rows = (p->avx512 = use_avx512()) ? ROWS : ROWS_AVX2;
    p->panels = (p->n + PANEL - 1) / PANEL, p->row_blocks = (p->m + rows - 1) / rows;
    p->block = (p->avx512 ? BLOCK_FLOATS : BLOCK_FLOATS_AVX2) / (PANEL * (p->k > 0 ? p->k : 1));
    if (p->block < 1) p->block = 1;
    p->kc = !p->avx512 && PANEL * p->k > BLOCK_FLOATS_AVX2 ? KC_AVX2 : p->k;
}

/* out [m, n] (row stride ldo) = x [m, k] (row stride ldx) @ w, w packed (pack_panels), on this thread
 * (AVX-512 or AVX2: callers check use_avx2; a build without the SIMD paths never calls it). */
static void packed_product(const float *x, Py_ssize_t ldx, const float *packed, float *out, Py_ssize_t ldo,
                           Py_ssize_t m, Py_ssize_t k, Py_ssize_t n)
{
#ifdef HAVE_AVX2_PATH
    Packed p = {.x = x, .packed = packed, .out = out, .m = m, .k = k, .n = n, .ldx = ldx, .ldo = ldo,
                .act = {CONV_ACT_NONE, 0.f, 0.f, 0.f}};
    packed_plan(&p);
    packed_range(&p, 0, p.row_blocks * p.panels);
#else
    (void)x, (void)ldx, (void)packed, (void)out, (void)ldo, (void)m, (void)k, (void)n;
#endif
}
#endif
