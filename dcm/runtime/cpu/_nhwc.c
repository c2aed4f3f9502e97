/* dcm.runtime.cpu._nhwc: channels-last (NHWC) kernels for the chains of depthwise and 1x1
 * convolutions the runtime keeps channels-last: the depthwise convolution and the global average pool.
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

#define BIG ((Py_ssize_t)1 << 20) /* bound on every size, stride, dilation and pad (as depthwise2d's) */
#define GRAIN_WORK 65536          /* multiply-adds a thread's range should hold at least (a hand-off is ~1-5 us) */
#define BLOCK 8                   /* output pixels whose accumulators stay in registers */
#define POOL_VECTORS 4            /* 16-channel vectors per global_average_nhwc unit */
#define HEAD_MIN_CHANNELS 64      /* the fewest channels for which an aligning partial vector pays */

/* One depthwise_nhwc call, as the pool's ranges of output rows see it. */
typedef struct {
    const float *x, *w, *bias;
    float *y;
    Py_ssize_t n, h, w_, c, oh, ow, kh, kw, sh, sw, dh, dw, pt, pl;
    Py_ssize_t inner0, inner1; /* the output columns [inner0, inner1) whose taps all fall inside the row */
    Py_ssize_t head;           /* channels in a first, partial vector, so that the others' loads are aligned */
    ConvAct act;
} Depthwise;

/* The kernel rows [*i0, *i1) of output row oy that fall inside the input (none: *i0 == *i1). */
static inline void valid_rows(const Depthwise *p, Py_ssize_t oy, Py_ssize_t *i0, Py_ssize_t *i1)
{
    const Py_ssize_t top = oy * p->sh - p->pt;
    Py_ssize_t a = 0, b = p->kh;
    while (a < b && top + a * p->dh < 0) a++;
    while (b > a && top + (b - 1) * p->dh >= p->h) b--;
    *i0 = a, *i1 = b;
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

#ifdef HAVE_AVX2_PATH
#define AVX512 __attribute__((target("avx512f,avx512dq,avx2,fma"))) /* use_avx512 checks both */
#define UNROLL _Pragma("GCC unroll 32") /* the register-block loops unrolled: the sums stay in registers */

/* Loads channels [k, k + 16) at a: whole (a constant where inlined) or the mask m's lanes. */
#define LOAD16(whole, m, a) ((whole) ? _mm512_loadu_ps(a) : _mm512_maskz_loadu_ps(m, a))
#define KERNEL_MAX 5 /* the widest kernel pixels_fixed_avx512 is instantiated for */

/* The activation of count x V accumulators (constants where inlined; acc[q * V + v]: pixel q,
 * vector v), stored at output pixels [ox, ox + count) of row oy, channels [k, k + 16 V). */
AVX512 static inline __attribute__((always_inline)) void
store_avx512(const Depthwise *p, Py_ssize_t s, Py_ssize_t oy, Py_ssize_t ox, Py_ssize_t k, __mmask16 m,
             const __m512 *acc, const int count, const int V, const int whole)
{
    float *yp = p->y + ((s * p->oh + oy) * p->ow + ox) * p->c + k;
    UNROLL for (int q = 0; q < count; q++)
        UNROLL for (int v = 0; v < V; v++) {
            const __m512 r = conv_act16(&p->act, acc[q * V + v]);
            if (whole) _mm512_storeu_ps(yp + q * p->c + 16 * v, r);
            else _mm512_mask_storeu_ps(yp + q * p->c + 16 * v, m, r);
        }
}

/* Output pixels [ox, ox + count) of row oy, sample s, channels [k, k + 16 V) (V vectors, whole, or
 * one with the mask m), kernel rows [i0, i1): count x V <= BLOCK accumulators in registers, each tap's
 * weight vector loaded once for the count pixels. Single pixels take V = 4 where they can: 4
 * independent chains of multiply-adds, not one waiting on each. checked: the columns may have taps
 * outside the row (border columns), skipped one by one. count, V, checked and whole are constants
 * where inlined. */
AVX512 static inline __attribute__((always_inline)) void
pixels_avx512(const Depthwise *p, Py_ssize_t s, Py_ssize_t oy, Py_ssize_t ox, Py_ssize_t k, __mmask16 m,
              Py_ssize_t i0, Py_ssize_t i1, const int count, const int V, const int checked, const int whole)
{
    const Py_ssize_t c = p->c, step = p->sw * c;
    __m512 acc[BLOCK];
    UNROLL for (int v = 0; v < V; v++) {
        const __m512 b = p->bias ? LOAD16(whole, m, p->bias + k + 16 * v) : _mm512_setzero_ps();
        UNROLL for (int q = 0; q < count; q++) acc[q * V + v] = b;
    }
    for (Py_ssize_t i = i0; i < i1; i++) {
        const Py_ssize_t iy = oy * p->sh - p->pt + i * p->dh;
        const float *xr = p->x + (s * p->h + iy) * p->w_ * c + k, *wr = p->w + i * p->kw * c + k;
        for (Py_ssize_t j = 0; j < p->kw; j++) {
            const Py_ssize_t ix = ox * p->sw - p->pl + j * p->dw;
            if (checked && (ix < 0 || ix >= p->w_)) continue;
            const float *xp = xr + ix * c;
            UNROLL for (int v = 0; v < V; v++) {
                const __m512 wv = LOAD16(whole, m, wr + j * c + 16 * v);
                UNROLL for (int q = 0; q < count; q++)
                    acc[q * V + v] = _mm512_fmadd_ps(wv, LOAD16(whole, m, xp + q * step + 16 * v), acc[q * V + v]);
            }
        }
    }
    store_avx512(p, s, oy, ox, k, m, acc, count, V, whole);
}

/* pixels_avx512 for a kernel KW wide, horizontal stride SW and dilation 1 (all constants where
 * inlined): each input pixel of a kernel row is loaded once for all the taps that read it (3x3/1: 10
 * input loads for 24 multiply-adds, not 24), since the loads, not the multiply-adds, bound this loop.
 * checked: some of the run's input pixels may lie in the padding, and are skipped with all their
 * taps, so that border columns take the same register blocks. */
AVX512 static inline __attribute__((always_inline)) void
pixels_fixed_avx512(const Depthwise *p, Py_ssize_t s, Py_ssize_t oy, Py_ssize_t ox, Py_ssize_t k, __mmask16 m,
                    Py_ssize_t i0, Py_ssize_t i1, const int count, const int checked, const int whole, const int KW,
                    const int SW)
{
    const Py_ssize_t c = p->c;
    const __m512 b = p->bias ? LOAD16(whole, m, p->bias + k) : _mm512_setzero_ps();
    __m512 acc[BLOCK], wv[KERNEL_MAX];
    UNROLL for (int q = 0; q < count; q++) acc[q] = b;
    for (Py_ssize_t i = i0; i < i1; i++) {
        const Py_ssize_t iy = oy * p->sh - p->pt + i * p->dh;
        const Py_ssize_t ix0 = ox * SW - p->pl;
        const float *xr = p->x + (s * p->h + iy) * p->w_ * c + k, *wr = p->w + i * KW * c + k;
        UNROLL for (int j = 0; j < KW; j++) wv[j] = LOAD16(whole, m, wr + j * c);
        UNROLL for (int t = 0; t < (count - 1) * SW + KW; t++) { /* input pixel t of the run */
            if (checked && (ix0 + t < 0 || ix0 + t >= p->w_)) continue;
            __m512 xv = LOAD16(whole, m, xr + (ix0 + t) * c);
            __asm__("" : "+v"(xv)); /* one load in a register: GCC would fold it into each multiply-add */
            UNROLL for (int j = 0; j < KW; j++) /* output q = (t - j) / SW reads it through tap j */
                if (t >= j && (t - j) % SW == 0 && (t - j) / SW < count)
                    acc[(t - j) / SW] = _mm512_fmadd_ps(wv[j], xv, acc[(t - j) / SW]);
        }
    }
    store_avx512(p, s, oy, ox, k, m, acc, count, 1, whole);
}

/* Output pixels [ox, ox + count) of row oy, every channel vector in turn (the first and last ones
 * may be partial), so that the loads walk along the pixels' channels. count, checked, KW, SW:
 * constants where inlined; checked only with KW. */
AVX512 static inline __attribute__((always_inline)) void
run_avx512(const Depthwise *p, Py_ssize_t s, Py_ssize_t oy, Py_ssize_t ox, Py_ssize_t i0, Py_ssize_t i1,
           const int count, const int checked, const int KW, const int SW)
{
#define PIXELS(k, m, whole) (KW ? pixels_fixed_avx512(p, s, oy, ox, k, m, i0, i1, count, checked, whole, KW, SW) \
                             : pixels_avx512(p, s, oy, ox, k, m, i0, i1, count, 1, 0, whole))
    Py_ssize_t k = p->head;
    if (k) PIXELS(0, (__mmask16)((1u << k) - 1), 0);
    for (; k + 16 <= p->c; k += 16) PIXELS(k, 0xFFFF, 1);
    if (k < p->c) PIXELS(k, (__mmask16)((1u << (p->c - k)) - 1), 0);
#undef PIXELS
}

/* run_avx512 of a run that may reach into the padding (checked) or not. */
AVX512 static inline __attribute__((always_inline)) void
fixed_run_avx512(const Depthwise *p, Py_ssize_t s, Py_ssize_t oy, Py_ssize_t ox, Py_ssize_t i0, Py_ssize_t i1,
                 const int count, const int KW, const int SW)
{
    if (ox < p->inner0 || ox + count > p->inner1) run_avx512(p, s, oy, ox, i0, i1, count, 1, KW, SW);
    else run_avx512(p, s, oy, ox, i0, i1, count, 0, KW, SW);
}

/* One output pixel, all its channels: 4 vectors at a time, then 1 (the last one masked). */
AVX512 static inline __attribute__((always_inline)) void
single_avx512(const Depthwise *p, Py_ssize_t s, Py_ssize_t oy, Py_ssize_t ox, Py_ssize_t i0, Py_ssize_t i1,
              const int checked)
{
    Py_ssize_t k = p->head;
    if (k) pixels_avx512(p, s, oy, ox, 0, (__mmask16)((1u << k) - 1), i0, i1, 1, 1, checked, 0);
    for (; k + 64 <= p->c; k += 64) pixels_avx512(p, s, oy, ox, k, 0xFFFF, i0, i1, 1, 4, checked, 1);
    for (; k + 16 <= p->c; k += 16) pixels_avx512(p, s, oy, ox, k, 0xFFFF, i0, i1, 1, 1, checked, 1);
    if (k < p->c) pixels_avx512(p, s, oy, ox, k, (__mmask16)((1u << (p->c - k)) - 1), i0, i1, 1, 1, checked, 0);
}

/* One output row in runs of BLOCK and 4 pixels, then single pixels. KW (and SW) fixed: the runs
 * cover the border columns too; otherwise the border columns are single pixels tap by tap. */
AVX512 static inline __attribute__((always_inline)) void
row_avx512(const Depthwise *p, Py_ssize_t s, Py_ssize_t oy, const int KW, const int SW)
{
    Py_ssize_t i0, i1, ox;
    valid_rows(p, oy, &i0, &i1);
    if (KW) {
        for (ox = 0; ox + BLOCK <= p->ow; ox += BLOCK) fixed_run_avx512(p, s, oy, ox, i0, i1, BLOCK, KW, SW);
        if (p->ow - ox >= 4) {
            fixed_run_avx512(p, s, oy, ox, i0, i1, 4, KW, SW);
            ox += 4;
        }
        for (; ox < p->ow; ox++) single_avx512(p, s, oy, ox, i0, i1, ox < p->inner0 || ox >= p->inner1);
        return;
    }
    for (ox = p->inner0; ox + BLOCK <= p->inner1; ox += BLOCK) run_avx512(p, s, oy, ox, i0, i1, BLOCK, 0, 0, 0);
    if (p->inner1 - ox >= 4) {
        run_avx512(p, s, oy, ox, i0, i1, 4, 0, 0, 0);
        ox += 4;
    }
    for (; ox < p->inner1; ox++) single_avx512(p, s, oy, ox, i0, i1, 0);
    for (ox = 0; ox < p->inner0; ox++) single_avx512(p, s, oy, ox, i0, i1, 1);
    for (ox = p->inner1; ox < p->ow; ox++) single_avx512(p, s, oy, ox, i0, i1, 1);
}

/* Units u = sample * OH + output row. MobileNet's and EfficientNet's kernels (3x3 and 5x5, stride 1
 * or 2, dilation 1) with their width and stride as constants, any other with p's. */
AVX512 static void depthwise_avx512(void *ctx, Py_ssize_t lo, Py_ssize_t hi)
{
    const Depthwise *p = ctx;
    const int fixed = p->dw == 1 ? (int)(p->kw * 4 + p->sw) : 0; /* 4 kw + sw */
    for (Py_ssize_t u = lo; u < hi; u++) {
        const Py_ssize_t s = u / p->oh, oy = u % p->oh;
        switch (fixed) {
        case 3 * 4 + 1: row_avx512(p, s, oy, 3, 1); break;
        case 3 * 4 + 2: row_avx512(p, s, oy, 3, 2); break;
        case 5 * 4 + 1: row_avx512(p, s, oy, 5, 1); break;
        case 5 * 4 + 2: row_avx512(p, s, oy, 5, 2); break;
        default: row_avx512(p, s, oy, 0, 0);
        }
    }
}
#endif

/* Whether the byte ranges of two buffers share any byte. */
static inline int overlap(const Py_buffer *a, const Py_buffer *b)
{
    const char *a0 = a->buf, *b0 = b->buf;
    return a->len > 0 && b->len > 0 && a0 < b0 + b->len && b0 < a0 + a->len;
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
    Py_ssize_t pb, pr;
    int threads = 1;
    Depthwise p = {0};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO(nnnn)(nn)(nn)(nn)(nnnn)|OOi", kwlist, &xo, &yo, &wo, &p.n, &p.h,
                                     &p.w_, &p.c, &p.kh, &p.kw, &p.sh, &p.sw, &p.dh, &p.dw, &p.pt, &p.pl, &pb, &pr,
                                     &bo, &acto, &threads))
        return NULL;
    if (parse_conv_act(acto, &p.act, "depthwise_nhwc") < 0) return NULL;
    const Py_ssize_t sizes[] = {p.h, p.w_, p.c, p.kh, p.kw, p.sh, p.sw, p.dh, p.dw};
    int ok = p.n >= 0 && p.n <= BIG * BIG && p.pt >= 0 && p.pl >= 0 && pb >= 0 && pr >= 0 && p.pt + pb <= BIG &&
             p.pl + pr <= BIG;
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) ok = ok && sizes[i] >= 1 && sizes[i] <= BIG;
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "depthwise_nhwc: a size, stride, dilation or pad is out of bounds");
        return NULL;
    }
    const Py_ssize_t span_h = (p.kh - 1) * p.dh + 1, span_w = (p.kw - 1) * p.dw + 1;
    if (p.h + p.pt + pb < span_h || p.w_ + p.pl + pr < span_w) {
        PyErr_SetString(PyExc_ValueError, "depthwise_nhwc: the input (padded) is smaller than the kernel window");
        return NULL;
    }
    p.oh = (p.h + p.pt + pb - span_h) / p.sh + 1;
    p.ow = (p.w_ + p.pl + pr - span_w) / p.sw + 1;
    const Py_ssize_t x_count = SIZE_PRODUCT(p.n, p.h, p.w_, p.c), y_count = SIZE_PRODUCT(p.n, p.oh, p.ow, p.c),
                     w_count = SIZE_PRODUCT(p.kh, p.kw, p.c), per_row = SIZE_PRODUCT(p.ow, p.c, p.kh, p.kw);
    if (x_count < 0 || y_count < 0 || w_count < 0 || per_row < 0) {
        PyErr_SetString(PyExc_ValueError, "depthwise_nhwc: the input, output or weight size overflows");
        return NULL;
    }
    Py_buffer xb = {0}, yb = {0}, wb = {0}, bb = {0};
    PyObject *result = NULL;
    if (get_array_of_rank(xo, &xb, 'f', 4, 0, 1, "x") < 0 || get_array_of_rank(yo, &yb, 'f', 4, 1, 1, "y") < 0 ||
        get_array_of_rank(wo, &wb, 'f', 4, 0, 1, "weight") < 0 ||
        (bo != Py_None && get_array_of_rank(bo, &bb, 'f', 4, 0, 1, "bias") < 0))
        goto done;
    if (xb.len / 4 != x_count || yb.len / 4 != y_count || wb.len / 4 != w_count || (bb.obj && bb.len / 4 != p.c)) {
        PyErr_Format(PyExc_ValueError, "depthwise_nhwc: x must have %zd values, y %zd, weight %zd, bias %zd", x_count,
                     y_count, w_count, p.c);
        goto done;
    }
    if (overlap(&xb, &yb)) { /* a store would change inputs later pixels still read */
        PyErr_SetString(PyExc_ValueError, "depthwise_nhwc: y must not overlap x");
        goto done;
    }
    p.x = xb.buf, p.y = yb.buf, p.w = wb.buf, p.bias = bb.obj ? bb.buf : NULL;
    /* interior columns: ox * sw >= pl and ox * sw - pl + (kw - 1) * dw <= W - 1 */
    const Py_ssize_t last = p.w_ - 1 + p.pl - (p.kw - 1) * p.dw;
    p.inner0 = (p.pl + p.sw - 1) / p.sw;
    p.inner1 = last < 0 ? 0 : last / p.sw + 1;
    if (p.inner0 > p.ow) p.inner0 = p.ow;
    if (p.inner1 > p.ow) p.inner1 = p.ow;
    if (p.inner1 < p.inner0) p.inner1 = p.inner0;
    /* Where every pixel's channels start equally placed in a 64-byte line (C a multiple of 16) but x is
     * not 64-byte aligned (numpy's arrays are 16 bytes into a line), a first partial vector of the
     * channels before the next line boundary makes the other loads of x aligned: a load across two
     * lines costs two (1.4-1.7x the time, 192-576 channels). Narrower layers lose more to the extra
     * vector than they gain. */
    const uintptr_t misaligned = (uintptr_t)xb.buf % 64;
    p.head = p.c % 16 == 0 && p.c >= HEAD_MIN_CHANNELS && misaligned % 4 == 0 ? (64 - misaligned) % 64 / 4 : 0;
    const Py_ssize_t grain = per_row >= GRAIN_WORK ? 1 : GRAIN_WORK / (per_row ? per_row : 1);
    dcm_range_fn run = depthwise_generic;
#ifdef HAVE_AVX2_PATH
    if (use_avx512()) run = depthwise_avx512;
#endif
    Py_BEGIN_ALLOW_THREADS
    parallel_for(run, &p, p.n * p.oh, grain, threads);
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    RELEASE_BUFFERS(&xb, &yb, &wb, &bb);
    return result;
}

/* One global_average_nhwc call: units (sample, block of POOL_VECTORS x 16 channels). */
typedef struct {
    const float *x;
    float *y;
    Py_ssize_t pixels, c, blocks;
} Average;

/* Sums in double: a 56 x 56 plane's 3136 float32 additions would lose ~1e-5 of the mean. */
static void average_generic(void *ctx, Py_ssize_t lo, Py_ssize_t hi)
{
    const Average *p = ctx;
    const Py_ssize_t width = 16 * POOL_VECTORS;
    double sum[16 * POOL_VECTORS];
    for (Py_ssize_t u = lo; u < hi; u++) {
        const Py_ssize_t s = u / p->blocks, k0 = u % p->blocks * width;
        const Py_ssize_t count = p->c - k0 < width ? p->c - k0 : width;
        const float *x = p->x + s * p->pixels * p->c + k0;
        for (Py_ssize_t k = 0; k < count; k++) sum[k] = 0.0;
        for (Py_ssize_t q = 0; q < p->pixels; q++)
            for (Py_ssize_t k = 0; k < count; k++) sum[k] += x[q * p->c + k];
        for (Py_ssize_t k = 0; k < count; k++) p->y[s * p->c + k0 + k] = (float)(sum[k] / (double)p->pixels);
    }
}

#ifdef HAVE_AVX2_PATH
AVX512 static void average_avx512(void *ctx, Py_ssize_t lo, Py_ssize_t hi)
{
    const Average *p = ctx;
    const Py_ssize_t width = 16 * POOL_VECTORS;
    const __m512d scale = _mm512_set1_pd(1.0 / (double)p->pixels);
    for (Py_ssize_t u = lo; u < hi; u++) {
        const Py_ssize_t s = u / p->blocks, k0 = u % p->blocks * width;
        const Py_ssize_t count = p->c - k0 < width ? p->c - k0 : width;
        __mmask16 m[POOL_VECTORS];
        __m512d lo_sum[POOL_VECTORS], hi_sum[POOL_VECTORS];
        UNROLL for (int v = 0; v < POOL_VECTORS; v++) {
            const Py_ssize_t left = count - 16 * v;
            m[v] = left >= 16 ? 0xFFFF : left <= 0 ? 0 : (__mmask16)((1u << left) - 1);
            lo_sum[v] = hi_sum[v] = _mm512_setzero_pd();
        }
        const float *x = p->x + s * p->pixels * p->c + k0;
        for (Py_ssize_t q = 0; q < p->pixels; q++, x += p->c)
            UNROLL for (int v = 0; v < POOL_VECTORS; v++) {
                const __m512 xv = _mm512_maskz_loadu_ps(m[v], x + 16 * v);
                lo_sum[v] = _mm512_add_pd(lo_sum[v], _mm512_cvtps_pd(_mm512_castps512_ps256(xv)));
                hi_sum[v] = _mm512_add_pd(hi_sum[v], _mm512_cvtps_pd(_mm512_extractf32x8_ps(xv, 1)));
            }
        float *y = p->y + s * p->c + k0;
        UNROLL for (int v = 0; v < POOL_VECTORS; v++) {
            const __m256 a = _mm512_cvtpd_ps(_mm512_mul_pd(lo_sum[v], scale));
            const __m256 b = _mm512_cvtpd_ps(_mm512_mul_pd(hi_sum[v], scale));
            _mm512_mask_storeu_ps(y + 16 * v, m[v], _mm512_insertf32x8(_mm512_castps256_ps512(a), b, 1));
        }
    }
}
#endif

PyDoc_STRVAR(global_average_nhwc_doc,
"global_average_nhwc(x, y, shape, threads=1)\n\n"
"GlobalAveragePool of channels-last x float32 [N, P, C] (shape = (N, P, C), P >= 1 pixels) into y\n"
"float32 [N, C]: y[n, c] = the mean over p of x[n, p, c], summed in double. y must not overlap x.\n"
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
    const Py_ssize_t per_unit = p.pixels * 16 * POOL_VECTORS;
    const Py_ssize_t grain = per_unit >= GRAIN_WORK ? 1 : GRAIN_WORK / per_unit;
    dcm_range_fn run = average_generic;
#ifdef HAVE_AVX2_PATH
    if (use_avx512()) run = average_avx512;
#endif
    Py_BEGIN_ALLOW_THREADS
    parallel_for(run, &p, n * p.blocks, grain, threads);
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    RELEASE_BUFFERS(&xb, &yb);
    return result;
}

static PyMethodDef module_methods[] = {
    {"set_simd", set_simd, METH_O, set_simd_doc},
    {"depthwise_nhwc", (PyCFunction)(void (*)(void))depthwise_nhwc, METH_VARARGS | METH_KEYWORDS, depthwise_nhwc_doc},
    {"global_average_nhwc", (PyCFunction)(void (*)(void))global_average_nhwc, METH_VARARGS | METH_KEYWORDS,
     global_average_nhwc_doc},
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
