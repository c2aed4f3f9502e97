/* dcm.runtime.cpu._nhwc: channels-last (NHWC) kernels for the chains of depthwise and 1x1
 * convolutions the runtime keeps channels-last: the depthwise convolution, the global average pool,
 * and conv_nhwc_out, the stem convolution that enters such a chain (NCHW in, NHWC out; see there).
 *
 * Why channels-last: on NCHW planes a depthwise layer's 16 channels sit a plane apart, so a narrow or
 * strided plane had to be transposed in and out around each layer (_native.c's depthwise2d, lanes
 * path) to fill a vector. With channels innermost, one output pixel of 16 channels is kh x kw
 * multiply-adds of a weight vector by an input vector: no transposes, no gathers, and strides and
 * dilations are address arithmetic. The weight is tap-major, [kh, kw, C], so a tap's 16 channels are
 * one vector load.
 *
 * Register blocking: a run of BLOCK adjacent output pixels of one 16-channel vector keeps its BLOCK
 * accumulators in registers across all the taps, so each weight vector loaded serves BLOCK
 * multiply-adds and the BLOCK chains hide the multiply-add latency. The interior columns (every tap
 * inside the row) take that unchecked loop; the few border columns find their valid taps one by one,
 * and an output row's valid kernel rows are found once, so no zero-padded copy is made. The bias is
 * the accumulators' start, the activation is applied in registers before the one store.
 */
#include "_kernel_common.h"
#include "_window.h"

#define GRAIN_WORK 65536          /* multiply-adds a thread's range should hold at least (a hand-off is ~1-5 us) */
#define BLOCK 8                   /* output pixels whose accumulators stay in registers */
#define POOL_VECTORS 4            /* 16-channel vectors per global_average_nhwc unit */
#define POOL_RUN 16               /* pixels global_average_nhwc sums in float before the sum joins a double */
#define CHUNK_MIN_PIXELS 512      /* pixels a chunk of global_average_nhwc's plane holds at least */
#define HEAD_MIN_CHANNELS 64      /* the fewest channels for which an aligning partial vector pays */

/* The output columns [*a, *b) of an output row ow wide whose taps all fall inside the input row:
 * ox * sw >= pl and ox * sw - pl + (kw - 1) * dw <= W - 1 (none: *a == *b). */
static void interior_columns(const Window *g, Py_ssize_t ow, Py_ssize_t *a, Py_ssize_t *b)
{
    const Py_ssize_t last = g->w - 1 + g->pl - (g->kw - 1) * g->dw;
    *a = (g->pl + g->sw - 1) / g->sw;
    *b = last < 0 ? 0 : last / g->sw + 1;
    if (*a > ow) *a = ow;
    if (*b > ow) *b = ow;
    if (*b < *a) *b = *a;
}

/* One depthwise_nhwc call, as the pool's ranges of output rows see it. */
typedef struct {
    const float *x, *w, *bias;
    float *y;
    Py_ssize_t n, h, w_, c, oh, ow, kh, kw, sh, sw, dh, dw, pt, pl;
    Py_ssize_t inner0, inner1; /* the output columns [inner0, inner1) whose taps all fall inside the row */
    Py_ssize_t head;           /* channels in a first, partial vector, so that the others' loads are aligned */
    ConvAct act;
} Depthwise;

/* The taps [*a, *b) of a kernel k taps wide, dilation d, whose first tap reads position start, that fall
 * inside [0, size) (none: *a == *b): an output row's valid kernel rows. */
static inline void valid_taps(Py_ssize_t start, Py_ssize_t k, Py_ssize_t d, Py_ssize_t size, Py_ssize_t *a,
                              Py_ssize_t *b)
{
    Py_ssize_t i = 0, e = k;
    while (i < e && start + i * d < 0) i++;
    while (e > i && start + (e - 1) * d >= size) e--;
    *a = i, *b = e;
}

/* The kernel rows [*i0, *i1) of output row oy that fall inside the input (none: *i0 == *i1). */
static inline void valid_rows(const Depthwise *p, Py_ssize_t oy, Py_ssize_t *i0, Py_ssize_t *i1)
{
    valid_taps(oy * p->sh - p->pt, p->kh, p->dh, p->h, i0, i1);
}

/* Unit u = sample * OH + output row: every channel of the row's output pixels. */
static void depthwise_generic(void *ctx, Py_ssize_t lo, Py_ssize_t hi)
{
    const Depthwise *p = ctx;
    const Py_ssize_t c = p->c;
    for (Py_ssize_t u = lo; u < hi; u++) {
        const Py_ssize_t s = u / p->oh, oy = u % p->oh;
        Py_ssize_t i0, i1;
        valid_rows(p, oy, &i0, &i1);
        for (Py_ssize_t ox = 0; ox < p->ow; ox++) {
            float *restrict yp = p->y + (u * p->ow + ox) * c;
            for (Py_ssize_t k = 0; k < c; k++) yp[k] = p->bias ? p->bias[k] : 0.f;
            for (Py_ssize_t i = i0; i < i1; i++) {
                const Py_ssize_t iy = oy * p->sh - p->pt + i * p->dh;
                for (Py_ssize_t j = 0; j < p->kw; j++) {
                    const Py_ssize_t ix = ox * p->sw - p->pl + j * p->dw;
                    if (ix < 0 || ix >= p->w_) continue;
                    const float *restrict xp = p->x + ((s * p->h + iy) * p->w_ + ix) * c;
                    const float *restrict wp = p->w + (i * p->kw + j) * c;
                    for (Py_ssize_t k = 0; k < c; k++) yp[k] += wp[k] * xp[k];
                }
            }
            for (Py_ssize_t k = 0; k < c; k++) yp[k] = conv_act1(&p->act, yp[k]);
        }
    }
}

/* conv_nhwc_out: a dense convolution that writes NHWC, reading NCHW (the stem in front of a channels-
 * last region, whose NCHW output would otherwise be transposed: few input channels) or NHWC (a grouped
 * layer inside a region: ResNeXt's and RegNet's 3x3 layers of 8-64 channels a group, which took 1.5-3x
 * onnxruntime's time on NCHW through im2col and a product per group). An output pixel's channels of
 * one group are a sum over (tap, input channel of the group) of one input value, broadcast, times a
 * vector of the group's output weights; the weight is [groups, kh, kw, C_in / groups, C_out / groups
 * rounded up to 16], so that each (tap, input channel) is a row of whole vectors (zeros past the
 * group's outputs). The input's layout is its strides: per channel, column, row and sample. */
#define NHWC_RUN 8             /* the most pixels a channels-last run (_conv_out_vec.h) holds */
#define NHWC_RUN_VECTORS 3     /* the most output-channel vectors such a run holds */
#define NHWC_RUN_MIN_INPUTS 16 /* fewer input channels a group: too few multiply-adds a tap for the pointers */

/* One conv_nhwc_out call, as the pool's ranges of (sample, output row) see it. */
typedef struct {
    const float *x, *w, *bias;
    float *y;
    Window g;
    Py_ssize_t c, co;          /* input and output channels, per group */
    Py_ssize_t cp;             /* co rounded up to 16: a weight row */
    Py_ssize_t groups, co_all; /* groups; output channels in all (an output pixel's stride in y) */
    Py_ssize_t xc, xcol, xrow, xs; /* x's strides in floats: channel, column, row, sample */
    const float *zeros;            /* channels-last x: C_in / groups zeros, read for taps in the padding */
    Py_ssize_t oh, ow;
    Py_ssize_t inner0, inner1; /* the output columns [inner0, inner1) whose taps all fall inside the row */
    ConvAct act;
} ConvOut;

#ifdef HAVE_AVX2_PATH
#define AVX512 __attribute__((target("avx512f,avx512dq,avx2,fma,prfchw"))) /* use_avx512 checks both */
#define UNROLL _Pragma("GCC unroll 32") /* the register-block loops unrolled: the sums stay in registers */

#define KERNEL_MAX 7 /* the widest kernel pixels_fixed (_depthwise_vec.h) is instantiated for */

/* Prefetches the lines of bytes [a, b): for writing (prefetchw) or reading. */
static inline __attribute__((always_inline)) void prefetch_lines(const char *a, const char *b, const int write)
{
    for (a = (const char *)((uintptr_t)a & ~(uintptr_t)63); a < b; a += 64) {
        if (write) __builtin_prefetch(a, 1, 3);
        else _mm_prefetch(a, _MM_HINT_T0);
    }
}

/* Prefetches the input pixels [x0, x1) (clamped to the row) of the input rows that output row oy + 1
 * reads and row oy does not, so that they arrive while row oy is computed. A layer's input was written
 * by the layer before and is often no longer in L2; the hardware prefetcher does not follow this loop's
 * walk (kernel rows, then channel vectors, pixels a C-wide stride apart). MobileNetV2 at batch 1 (2-core
 * Zen 5, 1 MiB of L2): its 96-channel 112x112 stride-2 layer 264 -> 185 us with these and the output's. */
static inline __attribute__((always_inline)) void
prefetch_next_rows(const Depthwise *p, Py_ssize_t s, Py_ssize_t oy, Py_ssize_t x0, Py_ssize_t x1)
{
    if (oy + 1 >= p->oh) return;
    if (x0 < 0) x0 = 0;
    if (x1 > p->w_) x1 = p->w_;
    if (x1 <= x0) return;
    const Py_ssize_t last = oy * p->sh - p->pt + (p->kh - 1) * p->dh; /* row oy's last input row */
    for (Py_ssize_t i = 0; i < p->kh; i++) {
        const Py_ssize_t iy = (oy + 1) * p->sh - p->pt + i * p->dh;
        if (iy <= last || iy < 0 || iy >= p->h) continue;
        const float *row = p->x + (s * p->h + iy) * p->w_ * p->c;
        prefetch_lines((const char *)(row + x0 * p->c), (const char *)(row + x1 * p->c), 0);
    }
}

/* Prefetches, for writing, the output pixels [x0, x1) of output row oy + 1: a store to a line that is not
 * in cache waits for it to be read first, and these stores too walk channel vectors a row apart. */
static inline __attribute__((always_inline)) void
prefetch_next_out(const Depthwise *p, Py_ssize_t s, Py_ssize_t oy, Py_ssize_t x0, Py_ssize_t x1)
{
    if (oy + 1 >= p->oh) return;
    const float *row = p->y + (s * p->oh + oy + 1) * p->ow * p->c;
    prefetch_lines((const char *)(row + x0 * p->c), (const char *)(row + x1 * p->c), 1);
}

/* _depthwise_vec.h on AVX-512: 16 channels a vector. */
#define VEC __m512
#define VNAME(f) f##_avx512
#define VTARGET AVX512
#define LANES 16
#define VMASK __mmask16
#define VPART(n) ((__mmask16)((1u << (n)) - 1)) /* the first n lanes, n < 16 */
#define VALL ((__mmask16)0xFFFF)
#define VLOAD(whole, m, a) ((whole) ? _mm512_loadu_ps(a) : _mm512_maskz_loadu_ps(m, a))
#define VSTORE(whole, m, a, v) ((whole) ? _mm512_storeu_ps(a, v) : _mm512_mask_storeu_ps(a, m, v))
#define VZERO _mm512_setzero_ps
#define VFMA _mm512_fmadd_ps
#define VACT conv_act16
#define VBCAST _mm512_set1_ps
#define VLOADM(m, a) _mm512_maskz_loadu_ps(m, a)
#define VSTOREM store16
#define OUT_VECTORS 4 /* of 32 registers: 24 accumulators, 4 weight vectors, the input */
#define OUT_ACC 24
#define OUT_RUN(V) (OUT_ACC / (V) < 12 ? OUT_ACC / (V) : 12)
#define NHWC_ACC 24
#define NHWC_RUN_OF(V) NHWC_RUN
#define NHWC_TAIL_OF(V) NHWC_RUN /* no shorter run: a 7-wide row is one run */
#include "_depthwise_vec.h"
#include "_conv_out_vec.h"
#include "_vec_undef.h"

/* The AVX2 epilogue in registers: Relu and Clip; the others (exp, erf) go over the stored values
 * (VACT_STORED: conv_act_block8), since a call while the accumulators were live made GCC keep them in
 * memory (see _packed_gemm.h). */
__attribute__((target("avx2,fma"), always_inline)) static inline __m256 clamp_act8(const ConvAct *a, __m256 v)
{
    return a->kind == CONV_ACT_CLAMP ? clamp8(v, _mm256_set1_ps(a->lo), _mm256_set1_ps(a->hi)) : v;
}

/* store16's AVX2 twin: a plain store where the mask holds all 8 lanes. */
__attribute__((target("avx2,fma"), always_inline)) static inline void store8(float *a, __m256i m, __m256 v)
{
    if (_mm256_movemask_ps(_mm256_castsi256_ps(m)) == 0xFF) _mm256_storeu_ps(a, v);
    else _mm256_maskstore_ps(a, m, v);
}

/* _depthwise_vec.h on AVX2 + FMA: 8 channels a vector. */
#define VEC __m256
#define VNAME(f) f##_avx2
#define VTARGET __attribute__((target("avx2,fma,prfchw")))
#define LANES 8
#define VMASK __m256i
#define VPART(n) part8(n)
#define VALL _mm256_set1_epi32(-1)
#define VLOAD(whole, m, a) ((whole) ? _mm256_loadu_ps(a) : _mm256_maskload_ps(a, m))
#define VSTORE(whole, m, a, v) ((whole) ? _mm256_storeu_ps(a, v) : _mm256_maskstore_ps(a, m, v))
#define VZERO _mm256_setzero_ps
#define VFMA _mm256_fmadd_ps
#define VACT clamp_act8
#define VACT_STORED conv_act_block8
#define VCOUNT(m) __builtin_popcount((unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(m)))
#define VBCAST _mm256_set1_ps
#define VLOADM(m, a) _mm256_maskload_ps(a, m)
#define VSTOREM store8
#define OUT_VECTORS 3 /* of 16 registers: 12 accumulators, 3 weight vectors, the input */
#define OUT_ACC 12
#define OUT_RUN(V) (OUT_ACC / (V))
#define NHWC_ACC 12
#define NHWC_RUN_OF(V) ((V) == 1 ? 8 : (V) == 2 ? 6 : 4)
#define NHWC_TAIL_OF(V) ((NHWC_RUN_OF(V) + 1) / 2)
#include "_depthwise_vec.h"
#include "_conv_out_vec.h"
#include "_vec_undef.h"
#endif

/* Whether the byte ranges of two buffers share any byte. */
static inline int overlap(const Py_buffer *a, const Py_buffer *b)
{
    const char *a0 = a->buf, *b0 = b->buf;
    return a->len > 0 && b->len > 0 && a0 < b0 + b->len && b0 < a0 + a->len;
}

/* The buffers x, y, weight and bias (Py_None: none) of a convolution call, objs and views in that
 * order: C-contiguous float32 of exactly counts[i] values each, y writable and not overlapping x (a
 * store would change inputs later pixels still read). -1 and an exception naming the kernel otherwise;
 * the views got so far are left for the caller's RELEASE_BUFFERS. */
static int conv_buffers(const char *kernel, PyObject *const *objs, Py_buffer *const *views, const Py_ssize_t *counts)
{
    static const char *const names[] = {"x", "y", "weight", "bias"};
    for (int i = 0; i < 4; i++)
        if ((i < 3 || objs[i] != Py_None) && get_array_of_rank(objs[i], views[i], 'f', 4, i == 1, 1, names[i]) < 0)
            return -1;
    for (int i = 0; i < 4; i++)
        if (views[i]->obj && views[i]->len / 4 != counts[i]) {
            PyErr_Format(PyExc_ValueError, "%s: x must have %zd values, y %zd, weight %zd, bias %zd", kernel,
                         counts[0], counts[1], counts[2], counts[3]);
            return -1;
        }
    if (overlap(views[0], views[1])) {
        PyErr_Format(PyExc_ValueError, "%s: y must not overlap x", kernel);
        return -1;
    }
    return 0;
}

/* run(ctx, lo, hi) over units [0, count) of `work` multiply-adds (or reads) each, without the GIL, on
 * up to `threads` threads of the native pool in ranges of at least GRAIN_WORK (a hand-off costs ~1-5 us). */
static void run_units(dcm_range_fn run, void *ctx, Py_ssize_t count, Py_ssize_t work, int threads)
{
    const Py_ssize_t grain = work >= GRAIN_WORK ? 1 : GRAIN_WORK / (work ? work : 1);
    Py_BEGIN_ALLOW_THREADS
    parallel_for(run, ctx, count, grain, threads);
    Py_END_ALLOW_THREADS
}

PyDoc_STRVAR(depthwise_nhwc_doc,
"depthwise_nhwc(x, y, weight, shape, kernel, strides, dilations, pads, bias=None, act=None, threads=1)\n\n"
"Depthwise convolution (one channel per group, channel multiplier 1) of x float32 [N, H, W, C]\n"
"(shape = (N, H, W, C)) into y float32 [N, OH, OW, C], OH and OW as ONNX Conv (floor); y must not\n"
"overlap x. weight float32 [kh, kw, C] (tap-major); kernel, strides, dilations = (h, w); pads = (top,\n"
"left, bottom, right). bias float32 [C] is added, then the activation act = (name, a, b): ('relu', _,\n"
"_), ('clip', lo, hi) (NaN kept), ('sigmoid', _, _), ('silu', alpha, _): x sigmoid(alpha x),\n"
"('hardswish', _, _). Output rows on up to `threads` threads of the native pool.");

static PyObject *depthwise_nhwc(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"x", "y", "weight", "shape", "kernel", "strides", "dilations", "pads", "bias", "act",
                             "threads", NULL};
    PyObject *xo, *yo, *wo, *bo = Py_None, *acto = Py_None;
    int threads = 1;
    Window g;
    Depthwise p = {0};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO(nnnn)(nn)(nn)(nn)(nnnn)|OOi", kwlist, &xo, &yo, &wo, &g.n, &g.h,
                                     &g.w, &p.c, &g.kh, &g.kw, &g.sh, &g.sw, &g.dh, &g.dw, &g.pt, &g.pl, &g.pb, &g.pr,
                                     &bo, &acto, &threads))
        return NULL;
    if (parse_conv_act(acto, &p.act, "depthwise_nhwc") < 0 ||
        window_output("depthwise_nhwc", &g, p.c, p.c, &p.oh, &p.ow) < 0)
        return NULL;
    p.n = g.n, p.h = g.h, p.w_ = g.w, p.kh = g.kh, p.kw = g.kw, p.sh = g.sh, p.sw = g.sw, p.dh = g.dh, p.dw = g.dw;
    p.pt = g.pt, p.pl = g.pl;
    const Py_ssize_t x_count = SIZE_PRODUCT(p.n, p.h, p.w_, p.c), y_count = SIZE_PRODUCT(p.n, p.oh, p.ow, p.c),
                     w_count = SIZE_PRODUCT(p.kh, p.kw, p.c), per_row = SIZE_PRODUCT(p.ow, p.c, p.kh, p.kw);
    if (x_count < 0 || y_count < 0 || w_count < 0 || per_row < 0) {
        PyErr_SetString(PyExc_ValueError, "depthwise_nhwc: the input, output or weight size overflows");
        return NULL;
    }
    Py_buffer xb = {0}, yb = {0}, wb = {0}, bb = {0};
    PyObject *result = NULL;
    if (conv_buffers("depthwise_nhwc", (PyObject *[]){xo, yo, wo, bo}, (Py_buffer *[]){&xb, &yb, &wb, &bb},
                     (Py_ssize_t[]){x_count, y_count, w_count, p.c}) < 0)
        goto done;
    p.x = xb.buf, p.y = yb.buf, p.w = wb.buf, p.bias = bb.obj ? bb.buf : NULL;
    interior_columns(&g, p.ow, &p.inner0, &p.inner1);
    /* Where every pixel's channels start equally placed in a 64-byte line (C a multiple of 16) but x is
     * not 64-byte aligned (numpy's arrays are 16 bytes into a line), a first partial vector of the
     * channels before the next line boundary makes the other loads of x aligned: a load across two
     * lines costs two (1.4-1.7x the time, 192-576 channels). Narrower layers lose more to the extra
     * vector than they gain. */
    const uintptr_t misaligned = (uintptr_t)xb.buf % 64;
    p.head = p.c % 16 == 0 && p.c >= HEAD_MIN_CHANNELS && misaligned % 4 == 0 ? (64 - misaligned) % 64 / 4 : 0;
    dcm_range_fn run = depthwise_generic;
#ifdef HAVE_AVX2_PATH
    if (use_avx512()) run = depthwise_avx512;
    else if (use_avx2()) run = depthwise_avx2, p.head %= 8; /* a 32-byte vector: aligned from the line's half on */
#endif
    run_units(run, &p, p.n * p.oh, per_row, threads);
    result = Py_NewRef(Py_None);
done:
    RELEASE_BUFFERS(&xb, &yb, &wb, &bb);
    return result;
}

/* One global_average_nhwc call: units (sample, block of POOL_VECTORS x 16 channels, chunk of pixels).
 * With one chunk a unit writes its means to y; with more (a plane of few channels on several threads:
 * EfficientNet's first squeeze-and-excitation, 32 channels at 112x112, was one unit) each writes its
 * sums to partial, which the call adds up in chunk order afterwards. */
typedef struct {
    const float *x;
    float *y;
    double *partial; /* [units][16 POOL_VECTORS] where chunks > 1 */
    Py_ssize_t pixels, c, blocks, chunks, chunk; /* chunk: pixels per chunk, a multiple of POOL_RUN */
    int reciprocal; /* the AVX-512 path's mean: sum times 1 / pixels (the generic path divides) */
} Average;

/* Unit u's sample, first channel, channel count (up to 16 POOL_VECTORS) and pixels [*q0, *q1). */
static void average_unit_place(const Average *p, Py_ssize_t u, Py_ssize_t *s, Py_ssize_t *k0, Py_ssize_t *count,
                               Py_ssize_t *q0, Py_ssize_t *q1)
{
    const Py_ssize_t part = u % p->chunks, width = 16 * POOL_VECTORS;
    *s = u / p->chunks / p->blocks, *k0 = u / p->chunks % p->blocks * width;
    *count = p->c - *k0 < width ? p->c - *k0 : width;
    *q0 = part * p->chunk, *q1 = part == p->chunks - 1 ? p->pixels : *q0 + p->chunk;
}

/* Sums in double: a 56 x 56 plane's 3136 float32 additions would lose ~1e-5 of the mean (the AVX-512
 * path sums runs of POOL_RUN pixels in float first). */
static void average_generic(void *ctx, Py_ssize_t lo, Py_ssize_t hi)
{
    const Average *p = ctx;
    const Py_ssize_t width = 16 * POOL_VECTORS;
    double sum[16 * POOL_VECTORS];
    for (Py_ssize_t u = lo; u < hi; u++) {
        Py_ssize_t s, k0, count, q0, q1;
        average_unit_place(p, u, &s, &k0, &count, &q0, &q1);
        const float *x = p->x + s * p->pixels * p->c + k0;
        for (Py_ssize_t k = 0; k < count; k++) sum[k] = 0.0;
        for (Py_ssize_t q = q0; q < q1; q++)
            for (Py_ssize_t k = 0; k < count; k++) sum[k] += x[q * p->c + k];
        if (p->chunks > 1)
            for (Py_ssize_t k = 0; k < count; k++) p->partial[u * width + k] = sum[k];
        else
            for (Py_ssize_t k = 0; k < count; k++) p->y[s * p->c + k0 + k] = (float)(sum[k] / (double)p->pixels);
    }
}

#ifdef HAVE_AVX2_PATH
/* V vectors (a constant where inlined) of one unit: runs of POOL_RUN pixels summed in float vectors
 * (one add per vector and pixel), each run's sums then added in double. */
AVX512 static inline __attribute__((always_inline)) void average_unit(const Average *p, Py_ssize_t u, Py_ssize_t s,
                                                                      Py_ssize_t k0, Py_ssize_t count, Py_ssize_t first,
                                                                      Py_ssize_t end, const int V)
{
    const __m512d scale = _mm512_set1_pd(1.0 / (double)p->pixels);
    __mmask16 m[POOL_VECTORS];
    __m512d lo_sum[POOL_VECTORS], hi_sum[POOL_VECTORS];
    UNROLL for (int v = 0; v < V; v++) {
        const Py_ssize_t left = count - 16 * v;
        m[v] = left >= 16 ? 0xFFFF : (__mmask16)((1u << left) - 1);
        lo_sum[v] = hi_sum[v] = _mm512_setzero_pd();
    }
    const float *x = p->x + s * p->pixels * p->c + k0;
    for (Py_ssize_t q0 = first; q0 < end; q0 += POOL_RUN) {
        const Py_ssize_t q1 = end - q0 < POOL_RUN ? end : q0 + POOL_RUN;
        __m512 run[POOL_VECTORS];
        UNROLL for (int v = 0; v < V; v++) run[v] = _mm512_setzero_ps();
        for (Py_ssize_t q = q0; q < q1; q++)
            UNROLL for (int v = 0; v < V; v++)
                run[v] = _mm512_add_ps(run[v], load16(m[v], x + q * p->c + 16 * v));
        UNROLL for (int v = 0; v < V; v++) {
            lo_sum[v] = _mm512_add_pd(lo_sum[v], _mm512_cvtps_pd(_mm512_castps512_ps256(run[v])));
            hi_sum[v] = _mm512_add_pd(hi_sum[v], _mm512_cvtps_pd(_mm512_extractf32x8_ps(run[v], 1)));
        }
    }
    if (p->chunks > 1) { /* the sums, for the call to add up (all 16 lanes: the masked ones hold 0) */
        UNROLL for (int v = 0; v < V; v++) {
            _mm512_storeu_pd(p->partial + u * 16 * POOL_VECTORS + 16 * v, lo_sum[v]);
            _mm512_storeu_pd(p->partial + u * 16 * POOL_VECTORS + 16 * v + 8, hi_sum[v]);
        }
        return;
    }
    float *y = p->y + s * p->c + k0;
    UNROLL for (int v = 0; v < V; v++) {
        const __m256 a = _mm512_cvtpd_ps(_mm512_mul_pd(lo_sum[v], scale));
        const __m256 b = _mm512_cvtpd_ps(_mm512_mul_pd(hi_sum[v], scale));
        _mm512_mask_storeu_ps(y + 16 * v, m[v], _mm512_insertf32x8(_mm512_castps256_ps512(a), b, 1));
    }
}

/* average_unit on AVX2: V (a constant where inlined) vectors of 8 channels in float through each run of
 * POOL_RUN pixels, each run's sums then added into double sums held in L1 (16 more registers would not
 * fit). The unit's channels are read pixel by pixel in address order; the generic loop, vectorized by the
 * compiler on 2 doubles, took 17 ms over 8 x 12544 pixels of 96 channels where numpy's float32 mean took
 * 5. Means divided, as the generic path's. */
__attribute__((target("avx2,fma"), always_inline)) static inline void
average_unit_avx2(const Average *p, Py_ssize_t u, Py_ssize_t s, Py_ssize_t k0, Py_ssize_t count, Py_ssize_t first,
                  Py_ssize_t end, const int V)
{
    double sum[16 * POOL_VECTORS] = {0};
    __m256i m[2 * POOL_VECTORS];
    UNROLL for (int v = 0; v < V; v++) m[v] = part8(count - 8 * v);
    const float *x = p->x + s * p->pixels * p->c + k0;
    for (Py_ssize_t q0 = first; q0 < end; q0 += POOL_RUN) {
        const Py_ssize_t q1 = end - q0 < POOL_RUN ? end : q0 + POOL_RUN;
        __m256 run[2 * POOL_VECTORS];
        UNROLL for (int v = 0; v < V; v++) run[v] = _mm256_setzero_ps();
        for (Py_ssize_t q = q0; q < q1; q++)
            UNROLL for (int v = 0; v < V; v++) {
                const float *a = x + q * p->c + 8 * v;
                run[v] = _mm256_add_ps(run[v], count - 8 * v >= 8 ? _mm256_loadu_ps(a) : _mm256_maskload_ps(a, m[v]));
            }
        UNROLL for (int v = 0; v < V; v++) {
            double *d = sum + 8 * v;
            _mm256_storeu_pd(d, _mm256_add_pd(_mm256_loadu_pd(d), _mm256_cvtps_pd(_mm256_castps256_ps128(run[v]))));
            _mm256_storeu_pd(d + 4, _mm256_add_pd(_mm256_loadu_pd(d + 4), _mm256_cvtps_pd(_mm256_extractf128_ps(run[v], 1))));
        }
    }
    if (p->chunks > 1) {
        for (Py_ssize_t k = 0; k < count; k++) p->partial[u * 16 * POOL_VECTORS + k] = sum[k];
        return;
    }
    for (Py_ssize_t k = 0; k < count; k++) p->y[s * p->c + k0 + k] = (float)(sum[k] / (double)p->pixels);
}

__attribute__((target("avx2,fma"))) static void average_avx2(void *ctx, Py_ssize_t lo, Py_ssize_t hi)
{
    const Average *p = ctx;
    for (Py_ssize_t u = lo; u < hi; u++) {
        Py_ssize_t s, k0, count, q0, q1;
        average_unit_place(p, u, &s, &k0, &count, &q0, &q1);
        switch ((count + 7) / 8) {
        case 1: average_unit_avx2(p, u, s, k0, count, q0, q1, 1); break;
        case 2: average_unit_avx2(p, u, s, k0, count, q0, q1, 2); break;
        case 3: average_unit_avx2(p, u, s, k0, count, q0, q1, 3); break;
        case 4: average_unit_avx2(p, u, s, k0, count, q0, q1, 4); break;
        case 5: average_unit_avx2(p, u, s, k0, count, q0, q1, 5); break;
        case 6: average_unit_avx2(p, u, s, k0, count, q0, q1, 6); break;
        case 7: average_unit_avx2(p, u, s, k0, count, q0, q1, 7); break;
        default: average_unit_avx2(p, u, s, k0, count, q0, q1, 8); break;
        }
    }
}

AVX512 static void average_avx512(void *ctx, Py_ssize_t lo, Py_ssize_t hi)
{
    const Average *p = ctx;
    for (Py_ssize_t u = lo; u < hi; u++) {
        Py_ssize_t s, k0, count, q0, q1;
        average_unit_place(p, u, &s, &k0, &count, &q0, &q1);
        switch ((count + 15) / 16) { /* only the unit's vectors, none masked off whole (32 channels: 2, not 4) */
        case 1: average_unit(p, u, s, k0, count, q0, q1, 1); break;
        case 2: average_unit(p, u, s, k0, count, q0, q1, 2); break;
        case 3: average_unit(p, u, s, k0, count, q0, q1, 3); break;
        default: average_unit(p, u, s, k0, count, q0, q1, 4); break;
        }
    }
}
#endif

PyDoc_STRVAR(global_average_nhwc_doc,
"global_average_nhwc(x, y, shape, threads=1)\n\n"
"GlobalAveragePool of channels-last x float32 [N, P, C] (shape = (N, P, C), P >= 1 pixels) into y\n"
"float32 [N, C]: y[n, c] = the mean over p of x[n, p, c] (runs of 16 pixels summed in float, the\n"
"runs' sums in double). y must not overlap x.\n"
"On up to `threads` threads of the native pool.");

static PyObject *global_average_nhwc(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"x", "y", "shape", "threads", NULL};
    PyObject *xo, *yo;
    Py_ssize_t n;
    int threads = 1;
    Average p = {0};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO(nnn)|i", kwlist, &xo, &yo, &n, &p.pixels, &p.c, &threads))
        return NULL;
    if (n < 0 || p.pixels < 1 || p.c < 1 || n > BIG * BIG || p.pixels > BIG * BIG || p.c > BIG * BIG) {
        PyErr_SetString(PyExc_ValueError, "global_average_nhwc: a size is out of bounds");
        return NULL;
    }
    const Py_ssize_t x_count = SIZE_PRODUCT(n, p.pixels, p.c), y_count = SIZE_PRODUCT(n, p.c);
    if (x_count < 0 || y_count < 0) {
        PyErr_SetString(PyExc_ValueError, "global_average_nhwc: the input or output size overflows");
        return NULL;
    }
    Py_buffer xb = {0}, yb = {0};
    PyObject *result = NULL;
    if (get_array_of_rank(xo, &xb, 'f', 4, 0, 1, "x") < 0 || get_array_of_rank(yo, &yb, 'f', 4, 1, 1, "y") < 0)
        goto done;
    if (xb.len / 4 != x_count || yb.len / 4 != y_count) {
        PyErr_Format(PyExc_ValueError, "global_average_nhwc: x must have %zd values, y %zd", x_count, y_count);
        goto done;
    }
    if (overlap(&xb, &yb)) {
        PyErr_SetString(PyExc_ValueError, "global_average_nhwc: y must not overlap x");
        goto done;
    }
    p.x = xb.buf, p.y = yb.buf;
    p.blocks = (p.c + 16 * POOL_VECTORS - 1) / (16 * POOL_VECTORS);
    /* Fewer units than two per thread: each (sample, block) in chunks of at least CHUNK_MIN_PIXELS */
    p.chunks = 1, p.chunk = p.pixels;
    if (threads > 1 && n * p.blocks < 2 * (Py_ssize_t)threads && p.pixels >= 2 * CHUNK_MIN_PIXELS) {
        const Py_ssize_t wanted = (2 * (Py_ssize_t)threads + n * p.blocks - 1) / (n * p.blocks);
        const Py_ssize_t most = p.pixels / CHUNK_MIN_PIXELS;
        p.chunks = wanted < most ? wanted : most;
        p.chunk = (p.pixels / p.chunks + POOL_RUN - 1) / POOL_RUN * POOL_RUN;
        p.chunks = (p.pixels + p.chunk - 1) / p.chunk;
    }
    const Py_ssize_t units = n * p.blocks * p.chunks;
    if (p.chunks > 1 && !(p.partial = PyMem_RawCalloc((size_t)units * 16 * POOL_VECTORS, sizeof(double)))) {
        PyErr_NoMemory();
        goto done;
    }
    dcm_range_fn run = average_generic;
#ifdef HAVE_AVX2_PATH
    if (use_avx512()) run = average_avx512, p.reciprocal = 1;
    else if (use_avx2()) run = average_avx2;
#endif
    run_units(run, &p, units, p.chunk * 16 * POOL_VECTORS, threads); /* values read a unit */
    if (p.chunks > 1) { /* each (sample, block): its chunks' sums in order */
        for (Py_ssize_t b = 0; b < n * p.blocks; b++) {
            const Py_ssize_t s = b / p.blocks, k0 = b % p.blocks * 16 * POOL_VECTORS;
            const Py_ssize_t count = p.c - k0 < 16 * POOL_VECTORS ? p.c - k0 : 16 * POOL_VECTORS;
            for (Py_ssize_t k = 0; k < count; k++) {
                double total = 0.0;
                for (Py_ssize_t part = 0; part < p.chunks; part++)
                    total += p.partial[(b * p.chunks + part) * 16 * POOL_VECTORS + k];
                p.y[s * p.c + k0 + k] = (float)(p.reciprocal ? total * (1.0 / (double)p.pixels) : total / (double)p.pixels);
            }
        }
        PyMem_RawFree(p.partial);
    }
    result = Py_NewRef(Py_None);
done:
    RELEASE_BUFFERS(&xb, &yb);
    return result;
}

/* Unit u = sample * OH + output row: every channel of the row's output pixels. */
static void conv_out_generic(void *ctx, Py_ssize_t lo, Py_ssize_t hi)
{
    const ConvOut *p = ctx;
    const Window *g = &p->g;
    for (Py_ssize_t u = lo; u < hi; u++) {
        const Py_ssize_t s = u / p->oh, oy = u % p->oh;
        Py_ssize_t i0, i1;
        valid_taps(oy * g->sh - g->pt, g->kh, g->dh, g->h, &i0, &i1);
        for (Py_ssize_t ox = 0; ox < p->ow; ox++)
            for (Py_ssize_t gi = 0; gi < p->groups; gi++) {
                float *restrict yp = p->y + (u * p->ow + ox) * p->co_all + gi * p->co;
                const float *bias = p->bias ? p->bias + gi * p->co : NULL;
                for (Py_ssize_t k = 0; k < p->co; k++) yp[k] = bias ? bias[k] : 0.f;
                for (Py_ssize_t i = i0; i < i1; i++) {
                    const Py_ssize_t iy = oy * g->sh - g->pt + i * g->dh;
                    for (Py_ssize_t j = 0; j < g->kw; j++) {
                        const Py_ssize_t ix = ox * g->sw - g->pl + j * g->dw;
                        if (ix < 0 || ix >= g->w) continue;
                        const float *xp = p->x + s * p->xs + iy * p->xrow + ix * p->xcol + gi * p->c * p->xc;
                        const float *restrict wp = p->w + ((gi * g->kh + i) * g->kw + j) * p->c * p->cp;
                        for (Py_ssize_t c = 0; c < p->c; c++, wp += p->cp) {
                            const float xv = xp[c * p->xc];
                            for (Py_ssize_t k = 0; k < p->co; k++) yp[k] += wp[k] * xv;
                        }
                    }
                }
                for (Py_ssize_t k = 0; k < p->co; k++) yp[k] = conv_act1(&p->act, yp[k]);
            }
    }
}

PyDoc_STRVAR(conv_nhwc_out_doc,
"conv_nhwc_out(x, y, weight, shape, kernel, strides, dilations, pads, bias=None, act=None, threads=1,\n"
"              groups=1, channels_last=False)\n\n"
"Dense convolution of x float32 [N, C_in, H, W] (NCHW; with channels_last [N, H, W, C_in]; shape =\n"
"(N, C_in, H, W, C_out)) into y float32 [N, OH, OW, C_out] (NHWC), OH and OW as ONNX Conv (floor);\n"
"y must not overlap x. groups divides C_in and C_out. weight float32 [groups, kh, kw, C_in / groups,\n"
"C_out / groups rounded up to 16] (zeros past a group's outputs); kernel, strides, dilations = (h, w);\n"
"pads = (top, left, bottom, right). bias float32 [C_out] is added, then act as depthwise_nhwc's. Made\n"
"for few input channels a group (stems: 1, 3, 4; grouped layers: 8-64); correct for any. Output rows\n"
"on up to `threads` threads of the native pool.");

static PyObject *conv_nhwc_out(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"x", "y", "weight", "shape", "kernel", "strides", "dilations", "pads", "bias", "act",
                             "threads", "groups", "channels_last", NULL};
    PyObject *xo, *yo, *wo, *bo = Py_None, *acto = Py_None;
    int threads = 1, channels_last = 0;
    Py_ssize_t c_in, c_out;
    ConvOut p = {.groups = 1};
    Window *g = &p.g;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO(nnnnn)(nn)(nn)(nn)(nnnn)|OOinp", kwlist, &xo, &yo, &wo, &g->n,
                                     &c_in, &g->h, &g->w, &c_out, &g->kh, &g->kw, &g->sh, &g->sw, &g->dh, &g->dw,
                                     &g->pt, &g->pl, &g->pb, &g->pr, &bo, &acto, &threads, &p.groups, &channels_last))
        return NULL;
    if (parse_conv_act(acto, &p.act, "conv_nhwc_out") < 0 ||
        window_output("conv_nhwc_out", g, c_in, c_out, &p.oh, &p.ow) < 0)
        return NULL;
    if (p.groups < 1 || c_in % p.groups || c_out % p.groups) {
        PyErr_Format(PyExc_ValueError, "conv_nhwc_out: groups=%zd must divide C_in=%zd and C_out=%zd", p.groups, c_in,
                     c_out);
        return NULL;
    }
    p.c = c_in / p.groups, p.co = c_out / p.groups, p.co_all = c_out, p.cp = (p.co + 15) / 16 * 16;
    if (channels_last) p.xc = 1, p.xcol = c_in, p.xrow = g->w * c_in, p.xs = g->h * g->w * c_in;
    else p.xc = g->h * g->w, p.xcol = 1, p.xrow = g->w, p.xs = c_in * g->h * g->w;
    const Py_ssize_t x_count = SIZE_PRODUCT(g->n, c_in, g->h, g->w), y_count = SIZE_PRODUCT(g->n, p.oh, p.ow, c_out),
                     w_count = SIZE_PRODUCT(p.groups, g->kh, g->kw, p.c, p.cp),
                     per_row = SIZE_PRODUCT(p.ow, p.groups, p.cp, g->kh, g->kw, p.c);
    if (x_count < 0 || y_count < 0 || w_count < 0 || per_row < 0) {
        PyErr_SetString(PyExc_ValueError, "conv_nhwc_out: the input, output or weight size overflows");
        return NULL;
    }
    Py_buffer xb = {0}, yb = {0}, wb = {0}, bb = {0};
    PyObject *result = NULL;
    float *zeros = NULL; /* channels-last: what the SIMD paths' runs read for taps in the padding */
    if (conv_buffers("conv_nhwc_out", (PyObject *[]){xo, yo, wo, bo}, (Py_buffer *[]){&xb, &yb, &wb, &bb},
                     (Py_ssize_t[]){x_count, y_count, w_count, c_out}) < 0)
        goto done;
    p.x = xb.buf, p.y = yb.buf, p.w = wb.buf, p.bias = bb.obj ? bb.buf : NULL;
    interior_columns(g, p.ow, &p.inner0, &p.inner1);
    dcm_range_fn run = conv_out_generic;
#ifdef HAVE_AVX2_PATH
    if (use_avx2()) {
        run = use_avx512() ? conv_out_avx512 : conv_out_avx2;
        if (channels_last && !(zeros = PyMem_RawCalloc((size_t)p.c, sizeof(float)))) {
            PyErr_NoMemory();
            goto done;
        }
        p.zeros = zeros;
    }
#endif
    run_units(run, &p, g->n * p.oh, per_row, threads);
    result = Py_NewRef(Py_None);
done:
    PyMem_RawFree(zeros);
    RELEASE_BUFFERS(&xb, &yb, &wb, &bb);
    return result;
}

static PyMethodDef module_methods[] = {
    {"set_simd", set_simd, METH_O, set_simd_doc},
    {"set_avx512", set_avx512, METH_O, set_avx512_doc},
    {"depthwise_nhwc", (PyCFunction)(void (*)(void))depthwise_nhwc, METH_VARARGS | METH_KEYWORDS, depthwise_nhwc_doc},
    {"global_average_nhwc", (PyCFunction)(void (*)(void))global_average_nhwc, METH_VARARGS | METH_KEYWORDS,
     global_average_nhwc_doc},
    {"conv_nhwc_out", (PyCFunction)(void (*)(void))conv_nhwc_out, METH_VARARGS | METH_KEYWORDS, conv_nhwc_out_doc},
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_nhwc", "dcm's compiled channels-last kernels (see _nhwc.c).", -1, module_methods,
};

PyMODINIT_FUNC PyInit__nhwc(void)
{
    import_pool();
    return PyModule_Create(&module);
}
