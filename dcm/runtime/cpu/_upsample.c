/* dcm.runtime.cpu._upsample: the compiled parts of the decoder layers that grow an image.
 *
 * resize2d (Resize, Upsample; resize.py): separable interpolation of the last two axes,
 * y[p, i, j] = sum_s col_w[j, s] * (sum_t row_w[i, t] * x[p, row_idx[i, t], col_idx[j, s]]),
 * every plane p of x [planes, h, w] to y [planes, out_h, out_w], from the source taps and weights of
 * each output row and column, which resize.py computes once per shape for any coordinate mode,
 * nearest (one tap of weight 1), linear (2), cubic (4) or antialiased (more).
 *
 * Why C: numpy resizes an axis as a gather per tap, a multiply and an add, each a pass over the
 * whole output, and a gather along the last axis is an index per value. Here an output row is one
 * weighted sum of whole input rows (contiguous, 8 floats per AVX2 register) into a row buffer, then
 * a gather from that buffer (which stays in L1) per output value: each output is written once. An
 * output row with the same row taps as the one before (nearest upsampling: every other row at 2x) is
 * a copy of it, and where every row is one tap of weight 1 (nearest) the columns are gathered from
 * the input row itself, or where they double each value (nearest 2x) unpacked from it, not gathered
 * (Resize of [3, 32, 16, 16], one thread: 80 -> 45 us a call); planes are split over the native pool.
 * Nearest 2x, one thread, both builds in
 * turns: [256, 10, 10] 90 -> 46 us, [64, 56, 56] 293 -> 189 (2 threads: 126); linear 8x on [21, 40,
 * 40] 1130 -> 1133 (2 threads: 630); linear 2x on [64, 28, 28] 149 -> 153-157 us on one thread.
 *
 * col2im2d (ConvTranspose; conv_transpose.py): the output of a 2-D transposed convolution from the
 * product W^T @ X, cols [c_out, kh, kw, n, h, w]: every tap's value added at its strided output
 * position, the crop of pads or output_shape, the bias and the layout [n, c_out, out_h, out_w] in one
 * pass over the output, where numpy made one pass per tap plus the bias and the layout copies. Where
 * stride = kernel (U-Net's 2x2/2 layers) every output takes one tap: each output row is written once,
 * two column taps interleaved in registers. Output planes are split over the native thread pool.
 *
 * Every index is checked against the axis it reads before any value is read; sizes come from the
 * arrays' own shapes, their products made with size_product; strides, dilations and crops are
 * bounded to 2^31 - 1, so that no position product can overflow.
 */
#include "_kernel_common.h"
#include <string.h>

#define RELEASE_GIL_MIN 32768 /* output values below which the GIL round trip costs more than it frees */
#define RANGE_VALUES (1 << 17)  /* output values a thread's range writes at least: ~25 us, as _layout.c's */

typedef struct {
    const int32_t *idx; /* [out, taps] */
    const float *w;     /* [out, taps] */
    Py_ssize_t out, taps;
} Taps;

/* row[k] = sum_t w[t] * x[idx[t], k] for k in [begin, n): the taps' weighted sum of rows of length n. */
static void rows_generic(const float *x, Py_ssize_t n, const int32_t *idx, const float *w, Py_ssize_t taps,
                         float *row, Py_ssize_t begin)
{
    const float *src = x + (Py_ssize_t)idx[0] * n;
    for (Py_ssize_t k = begin; k < n; k++) row[k] = w[0] * src[k];
    for (Py_ssize_t t = 1; t < taps; t++) {
        src = x + (Py_ssize_t)idx[t] * n;
        for (Py_ssize_t k = begin; k < n; k++) row[k] += w[t] * src[k];
    }
}

/* y[j] = sum_s w[j, s] * row[idx[j, s]] for j in [begin, out) */
static void columns_generic(const float *row, const Taps *c, float *y, Py_ssize_t begin)
{
    for (Py_ssize_t j = begin; j < c->out; j++) {
        const int32_t *idx = c->idx + j * c->taps;
        const float *w = c->w + j * c->taps;
        float acc = w[0] * row[idx[0]];
        for (Py_ssize_t s = 1; s < c->taps; s++) acc += w[s] * row[idx[s]];
        y[j] = acc;
    }
}

#ifdef HAVE_AVX2_PATH
__attribute__((target("avx2,fma")))
static void rows_avx2(const float *x, Py_ssize_t n, const int32_t *idx, const float *w, Py_ssize_t taps, float *row)
{
    Py_ssize_t k = 0;
    for (; k + 8 <= n; k += 8) {
        __m256 acc = _mm256_mul_ps(_mm256_set1_ps(w[0]), _mm256_loadu_ps(x + (Py_ssize_t)idx[0] * n + k));
        for (Py_ssize_t t = 1; t < taps; t++)
            acc = _mm256_fmadd_ps(_mm256_set1_ps(w[t]), _mm256_loadu_ps(x + (Py_ssize_t)idx[t] * n + k), acc);
        _mm256_storeu_ps(row + k, acc);
    }
    rows_generic(x, n, idx, w, taps, row, k);
}

/* Eight outputs at a time from a tap-major copy of the columns' taps (see resize2d). */
__attribute__((target("avx2,fma")))
static void columns_avx2(const float *row, const Taps *c, const int32_t *idx_t, const float *w_t, float *y)
{
    Py_ssize_t j = 0;
    for (; j + 8 <= c->out; j += 8) {
        __m256 acc = _mm256_mul_ps(_mm256_loadu_ps(w_t + j),
                                   _mm256_i32gather_ps(row, _mm256_loadu_si256((const __m256i *)(idx_t + j)), 4));
        for (Py_ssize_t s = 1; s < c->taps; s++) {
            const Py_ssize_t at = s * c->out + j;
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(w_t + at),
                                  _mm256_i32gather_ps(row, _mm256_loadu_si256((const __m256i *)(idx_t + at)), 4), acc);
        }
        _mm256_storeu_ps(y + j, acc);
    }
    columns_generic(row, c, y, j);
}
#endif

/* y [2 n] = each of row [n] twice: the columns of a nearest 2x upsampling (every column one tap of weight
 * 1, output j reading input j / 2), by unpacks, where the general path gathered each output. */
static void columns_doubled_generic(const float *row, Py_ssize_t n, float *y, Py_ssize_t begin)
{
    for (Py_ssize_t k = begin; k < n; k++) y[2 * k] = y[2 * k + 1] = row[k];
}

#ifdef HAVE_AVX2_PATH
__attribute__((target("avx2,fma")))
static void columns_doubled_avx2(const float *row, Py_ssize_t n, float *y)
{
    Py_ssize_t k = 0;
    for (; k + 8 <= n; k += 8) {
        const __m256 a = _mm256_loadu_ps(row + k);
        const __m256 lo = _mm256_unpacklo_ps(a, a), hi = _mm256_unpackhi_ps(a, a); /* a0 a0 a1 a1 | a4 a4 a5 a5 */
        _mm256_storeu_ps(y + 2 * k, _mm256_permute2f128_ps(lo, hi, 0x20));
        _mm256_storeu_ps(y + 2 * k + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
    }
    columns_doubled_generic(row, n, y, k);
}
#endif

/* Whether the columns are a nearest 2x upsampling's: out = 2 w, column j one tap of weight 1 at j / 2. */
static int doubled_columns(const Taps *c, Py_ssize_t w)
{
    if (c->taps != 1 || c->out != 2 * w) return 0;
    for (Py_ssize_t j = 0; j < c->out; j++)
        if (c->idx[j] != j / 2 || c->w[j] != 1.0f) return 0;
    return 1;
}

/* Whether output row i takes the same source rows with the same weights as row i - 1 (nearest
 * upsampling: every other row at 2x), so that it is a copy of that row. */
static int same_row_taps(const Taps *r, Py_ssize_t i)
{
    return i > 0 && !memcmp(r->idx + i * r->taps, r->idx + (i - 1) * r->taps, (size_t)r->taps * sizeof(int32_t)) &&
           !memcmp(r->w + i * r->taps, r->w + (i - 1) * r->taps, (size_t)r->taps * sizeof(float));
}

typedef struct {
    const float *x;
    float *y;
    Py_ssize_t h, w;
    const Taps *r, *c;
    const int32_t *idx_t;
    const float *w_t;
    const unsigned char *repeats; /* [out_h]: output row i is a copy of row i - 1 (same_row_taps) */
    int avx2, direct; /* direct: every row one tap of weight 1, gathered from x's row itself */
    int doubled;      /* the columns double each value (doubled_columns) */
    int failed;       /* a range's row buffer could not be allocated */
} ResizeJob;

/* Planes [lo, hi). An output row whose row taps repeat the previous row's is copied from it; with
 * direct, the columns are gathered from the source row, not from a weighted copy of it. */
static void resize_range(void *ctx, Py_ssize_t lo, Py_ssize_t hi)
{
    ResizeJob *j = ctx;
    const Taps *r = j->r, *c = j->c;
    const Py_ssize_t h = j->h, w = j->w;
    const int direct = j->direct;
#ifdef HAVE_AVX2_PATH
    const int avx2 = j->avx2;
#endif
    float *row = direct ? NULL : PyMem_RawMalloc((size_t)w * sizeof(float));
    if (!direct && !row) {
        __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    for (Py_ssize_t p = lo; p < hi; p++) {
        const float *xp = j->x + p * h * w;
        float *yp = j->y + p * r->out * c->out;
        for (Py_ssize_t i = 0; i < r->out; i++) {
            float *yi = yp + i * c->out;
            if (j->repeats[i]) {
                memcpy(yi, yi - c->out, (size_t)c->out * sizeof(float));
                continue;
            }
            const float *src = direct ? xp + (Py_ssize_t)r->idx[i] * w : row;
#ifdef HAVE_AVX2_PATH
            if (avx2) {
                if (!direct) rows_avx2(xp, w, r->idx + i * r->taps, r->w + i * r->taps, r->taps, row);
                if (j->doubled) columns_doubled_avx2(src, w, yi);
                else columns_avx2(src, c, j->idx_t, j->w_t, yi);
                continue;
            }
#endif
            if (!direct) rows_generic(xp, w, r->idx + i * r->taps, r->w + i * r->taps, r->taps, row, 0);
            if (j->doubled) columns_doubled_generic(src, w, yi, 0);
            else columns_generic(src, c, yi, 0);
        }
    }
    PyMem_RawFree(row);
}

/* Loads taps [out, taps] (int32 indices < limit, float32 weights of the same shape). */
static int load_taps(PyObject *idx, PyObject *wts, Py_buffer *ib, Py_buffer *wb, Py_ssize_t out, Py_ssize_t limit,
                     Taps *t, const char *what)
{
    if (get_array_of_rank(idx, ib, 'i', 4, 0, 1, what) < 0 || get_array_of_rank(wts, wb, 'f', 4, 0, 1, what) < 0)
        return -1;
    if (ib->ndim != 2 || wb->ndim != 2 || ib->shape[0] != out || wb->shape[0] != out || ib->shape[1] != wb->shape[1] ||
        ib->shape[1] < 1) {
        PyErr_Format(PyExc_ValueError, "%s: indices and weights must both be [%zd, taps >= 1]", what, out);
        return -1;
    }
    t->idx = ib->buf;
    t->w = wb->buf;
    t->out = out;
    t->taps = ib->shape[1];
    for (Py_ssize_t k = 0; k < out * t->taps; k++) {
        if (t->idx[k] < 0 || t->idx[k] >= limit) {
            PyErr_Format(PyExc_ValueError, "%s: index %d at entry %zd is outside 0..%zd", what, t->idx[k], k,
                         limit - 1);
            return -1;
        }
    }
    return 0;
}

PyDoc_STRVAR(resize2d_doc,
"resize2d(x, y, row_indices, row_weights, col_indices, col_weights, threads=1) -> None\n\n"
"y [planes, out_h, out_w] = the separable interpolation of x [planes, h, w] (both float32,\n"
"C-contiguous): output row i takes the input rows row_indices[i, :] (int32 [out_h, taps]) with\n"
"row_weights[i, :] (float32, same shape), output column j the columns col_indices[j, :] with\n"
"col_weights[j, :] ([out_w, taps']). Releases the GIL for large calls, whose planes it splits over\n"
"up to `threads` threads of the native pool.");

static PyObject *resize2d(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"x", "y", "row_indices", "row_weights", "col_indices", "col_weights", "threads", NULL};
    PyObject *xo, *yo, *rio, *rwo, *cio, *cwo;
    int threads = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOOO|i", kwlist, &xo, &yo, &rio, &rwo, &cio, &cwo, &threads))
        return NULL;
    Py_buffer xb = {0}, yb = {0}, rib = {0}, rwb = {0}, cib = {0}, cwb = {0};
    PyObject *result = NULL;
    float *w_t = NULL;
    unsigned char *repeats = NULL;
    int32_t *idx_t = NULL;
    if (get_array_of_rank(xo, &xb, 'f', 4, 0, 1, "x") < 0 || get_array_of_rank(yo, &yb, 'f', 4, 1, 1, "y") < 0)
        goto done;
    if (xb.ndim != 3 || yb.ndim != 3 || xb.shape[0] != yb.shape[0]) {
        PyErr_SetString(PyExc_ValueError, "x and y must be [planes, h, w] and [planes, out_h, out_w]");
        goto done;
    }
    const Py_ssize_t planes = xb.shape[0], h = xb.shape[1], w = xb.shape[2];
    Taps r, c;
    if (load_taps(rio, rwo, &rib, &rwb, yb.shape[1], h, &r, "rows") < 0 ||
        load_taps(cio, cwo, &cib, &cwb, yb.shape[2], w, &c, "columns") < 0)
        goto done;
    const Py_ssize_t total = SIZE_PRODUCT(planes, r.out, c.out);
    if (total < 0 || SIZE_PRODUCT(c.out, c.taps) < 0) {
        PyErr_SetString(PyExc_ValueError, "sizes overflow");
        goto done;
    }
    if (total == 0) { /* no output (an input axis of 0 has no valid index, so out is 0 too) */
        result = Py_NewRef(Py_None);
        goto done;
    }
    idx_t = PyMem_RawMalloc((size_t)(c.out * c.taps) * sizeof(int32_t));
    w_t = PyMem_RawMalloc((size_t)(c.out * c.taps) * sizeof(float));
    repeats = PyMem_RawMalloc((size_t)r.out);
    if (!idx_t || !w_t || !repeats) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t j = 0; j < c.out; j++) /* tap-major: eight outputs' s-th taps side by side */
        for (Py_ssize_t s = 0; s < c.taps; s++) {
            idx_t[s * c.out + j] = c.idx[j * c.taps + s];
            w_t[s * c.out + j] = c.w[j * c.taps + s];
        }
    int direct = r.taps == 1; /* and every weight 1 (r.w is then one value a row) */
    for (Py_ssize_t i = 0; i < r.out; i++) {
        repeats[i] = (unsigned char)same_row_taps(&r, i);
        if (direct) direct = r.w[i] == 1.0f;
    }
    ResizeJob job = {xb.buf, yb.buf, h, w, &r, &c, idx_t, w_t, repeats, use_avx2(), direct, doubled_columns(&c, w), 0};
    if (total >= RELEASE_GIL_MIN) {
        Py_BEGIN_ALLOW_THREADS
        parallel_for(resize_range, &job, planes, 1 + RANGE_VALUES / (r.out * c.out + 1), threads);
        Py_END_ALLOW_THREADS
    } else {
        resize_range(&job, 0, planes);
    }
    result = job.failed ? PyErr_NoMemory() : Py_NewRef(Py_None);
done:
    PyMem_RawFree(idx_t);
    PyMem_RawFree(repeats);
    PyMem_RawFree(w_t);
    RELEASE_BUFFERS(&xb, &yb, &rib, &rwb, &cib, &cwb);
    return result;
}

typedef struct {
    Py_ssize_t c_out, kh, kw, n, h, w, out_h, out_w;
    Py_ssize_t stride[2], dilation[2], begin[2];
} Col2im;

/* The first j in [0, size) whose position j * stride + offset is >= 0, and the end of those < limit. */
static void tap_range(Py_ssize_t offset, Py_ssize_t stride, Py_ssize_t size, Py_ssize_t limit, Py_ssize_t *first,
                      Py_ssize_t *end)
{
    *first = offset >= 0 ? 0 : (-offset + stride - 1) / stride;
    *end = limit - offset <= 0 ? 0 : (limit - offset - 1) / stride + 1;
    if (*end > size) *end = size;
    if (*first > *end) *first = *end;
}

typedef struct {
    const Col2im *g;
    const float *cols, *bias;
    float *y;
} Col2imJob;

/* Output plane (s, c): the bias (or 0), plus every tap's value added at its strided position. */
static void col2im_plane(const Col2im *g, const float *cols, float fill, float *plane, Py_ssize_t s, Py_ssize_t c)
{
    for (Py_ssize_t k = 0; k < g->out_h * g->out_w; k++) plane[k] = fill;
    for (Py_ssize_t a = 0; a < g->kh; a++) {
        Py_ssize_t i0, i1, j0, j1;
        const Py_ssize_t row_off = a * g->dilation[0] - g->begin[0];
        tap_range(row_off, g->stride[0], g->h, g->out_h, &i0, &i1);
        for (Py_ssize_t b = 0; b < g->kw; b++) {
            const Py_ssize_t col_off = b * g->dilation[1] - g->begin[1];
            tap_range(col_off, g->stride[1], g->w, g->out_w, &j0, &j1);
            const float *src = cols + (((c * g->kh + a) * g->kw + b) * g->n + s) * g->h * g->w;
            for (Py_ssize_t i = i0; i < i1; i++) {
                float *row = plane + (i * g->stride[0] + row_off) * g->out_w + col_off;
                const float *in = src + i * g->w;
                for (Py_ssize_t j = j0; j < j1; j++) row[j * g->stride[1]] += in[j];
            }
        }
    }
}

/* Whether every output takes exactly one tap: stride = kernel, no dilation, nothing cropped or
 * padded (U-Net's 2x2/2 up-convolutions). Each output row is then written once, bias included. */
static int col2im_disjoint(const Col2im *g)
{
    return g->stride[0] == g->kh && g->stride[1] == g->kw && g->dilation[0] == 1 && g->dilation[1] == 1 &&
           g->begin[0] == 0 && g->begin[1] == 0 && g->out_h == g->h * g->kh && g->out_w == g->w * g->kw;
}

#define COL2IM_ROW_ARGS const Col2im *g, const float *src, float fill, float *row

/* Output row i * kh + a of a disjoint plane: row[j * kw + b] = fill + tap (a, b)'s value j. src: tap
 * (a, 0)'s input row i; tap (a, b)'s is b * n * h * w values further. */
static void col2im_row_generic(COL2IM_ROW_ARGS)
{
    const Py_ssize_t tap = g->n * g->h * g->w;
    for (Py_ssize_t b = 0; b < g->kw; b++)
        for (Py_ssize_t j = 0; j < g->w; j++) row[j * g->kw + b] = fill + src[b * tap + j];
}

#ifdef HAVE_AVX2_PATH
/* Two column taps (kw = 2) interleaved in registers: 8 values of each make 16 outputs. */
__attribute__((target("avx2,fma")))
static void col2im_row_avx2(COL2IM_ROW_ARGS)
{
    if (g->kw != 2) {
        col2im_row_generic(g, src, fill, row);
        return;
    }
    const float *src1 = src + g->n * g->h * g->w;
    const __m256 f = _mm256_set1_ps(fill);
    Py_ssize_t j = 0;
    for (; j + 8 <= g->w; j += 8) {
        __m256 v0 = _mm256_add_ps(_mm256_loadu_ps(src + j), f), v1 = _mm256_add_ps(_mm256_loadu_ps(src1 + j), f);
        __m256 lo = _mm256_unpacklo_ps(v0, v1), hi = _mm256_unpackhi_ps(v0, v1); /* pairs 0 1 4 5, 2 3 6 7 */
        _mm256_storeu_ps(row + 2 * j, _mm256_permute2f128_ps(lo, hi, 0x20));
        _mm256_storeu_ps(row + 2 * j + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
    }
    for (; j < g->w; j++) {
        row[2 * j] = fill + src[j];
        row[2 * j + 1] = fill + src1[j];
    }
}
#endif

/* Output planes [lo, hi) (plane p: sample p / c_out, channel p % c_out). */
static void col2im_range(void *ctx, Py_ssize_t lo, Py_ssize_t hi)
{
    const Col2imJob *job = ctx;
    const Col2im *g = job->g;
    const int disjoint = col2im_disjoint(g);
    for (Py_ssize_t p = lo; p < hi; p++) {
        Py_ssize_t s = p / g->c_out, c = p % g->c_out;
        float *plane = job->y + p * g->out_h * g->out_w;
        const float fill = job->bias ? job->bias[c] : 0.f;
        if (!disjoint) {
            col2im_plane(g, job->cols, fill, plane, s, c);
            continue;
        }
        for (Py_ssize_t a = 0; a < g->kh; a++) {
            const float *src = job->cols + ((c * g->kh + a) * g->kw * g->n + s) * g->h * g->w;
            for (Py_ssize_t i = 0; i < g->h; i++)
                DISPATCH(col2im_row, g, src + i * g->w, fill, plane + (i * g->kh + a) * g->out_w);
        }
    }
}

/* Two values of a tuple, each in [low, 2^31 - 1]. */
static int two_ints(PyObject *seq, Py_ssize_t *out, Py_ssize_t low, const char *what)
{
    if (!PyArg_ParseTuple(seq, "nn", &out[0], &out[1])) return -1;
    if (out[0] < low || out[1] < low || out[0] > INT32_MAX || out[1] > INT32_MAX) {
        PyErr_Format(PyExc_ValueError, "%s must be two values in %zd..2^31-1", what, low);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(col2im2d_doc,
"col2im2d(cols, y, strides, dilations, begin, bias=None, threads=1) -> None\n\n"
"The output y [n, c_out, out_h, out_w] of a 2-D ConvTranspose from cols [c_out, kh, kw, n, h, w]\n"
"(W^T @ X; both float32, C-contiguous): y = bias[c] (or 0) plus, for every tap (a, b) and input\n"
"position (i, j), cols[c, a, b, s, i, j] at (i * stride_h + a * dilation_h - begin_h, j * stride_w +\n"
"b * dilation_w - begin_w) where that falls inside y. strides, dilations: two values >= 1; begin:\n"
"the crop of the full output's start, two values >= 0. Releases the GIL for large calls and splits\n"
"their output planes over up to `threads` threads of the native pool.");

static PyObject *col2im2d(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"cols", "y", "strides", "dilations", "begin", "bias", "threads", NULL};
    PyObject *co, *yo, *so, *dlo, *bgo, *bo = Py_None;
    int threads = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO!O!O!|Oi", kwlist, &co, &yo, &PyTuple_Type, &so, &PyTuple_Type,
                                     &dlo, &PyTuple_Type, &bgo, &bo, &threads))
        return NULL;
    Col2im g;
    if (two_ints(so, g.stride, 1, "strides") < 0 || two_ints(dlo, g.dilation, 1, "dilations") < 0 ||
        two_ints(bgo, g.begin, 0, "begin") < 0)
        return NULL;
    Py_buffer cb = {0}, yb = {0}, bb = {0};
    PyObject *result = NULL;
    if (get_array_of_rank(co, &cb, 'f', 4, 0, 1, "cols") < 0 || get_array_of_rank(yo, &yb, 'f', 4, 1, 1, "y") < 0)
        goto done;
    if (cb.ndim != 6 || yb.ndim != 4 || yb.shape[0] != cb.shape[3] || yb.shape[1] != cb.shape[0]) {
        PyErr_SetString(PyExc_ValueError, "cols must be [c_out, kh, kw, n, h, w] and y [n, c_out, out_h, out_w]");
        goto done;
    }
    g.c_out = cb.shape[0], g.kh = cb.shape[1], g.kw = cb.shape[2], g.n = cb.shape[3], g.h = cb.shape[4];
    g.w = cb.shape[5], g.out_h = yb.shape[2], g.out_w = yb.shape[3];
    if (bo != Py_None) {
        if (get_array_of_rank(bo, &bb, 'f', 4, 0, 0, "bias") < 0) goto done;
        if (bb.len / 4 != g.c_out) {
            PyErr_Format(PyExc_ValueError, "bias must have %zd values", g.c_out);
            goto done;
        }
    }
    const Py_ssize_t total = SIZE_PRODUCT(g.n, g.c_out, g.out_h, g.out_w);
    if (total < 0 || SIZE_PRODUCT(g.c_out, g.kh, g.kw, g.n, g.h, g.w) < 0) {
        PyErr_SetString(PyExc_ValueError, "sizes overflow");
        goto done;
    }
    Col2imJob job = {&g, cb.buf, bb.buf, yb.buf};
    const Py_ssize_t planes = g.n * g.c_out, plane = g.out_h * g.out_w;
    if (total >= RELEASE_GIL_MIN) {
        Py_BEGIN_ALLOW_THREADS
        parallel_for(col2im_range, &job, planes, 1 + RANGE_VALUES / plane, threads);
        Py_END_ALLOW_THREADS
    } else {
        col2im_range(&job, 0, planes);
    }
    result = Py_NewRef(Py_None);
done:
    RELEASE_BUFFERS(&cb, &yb, &bb);
    return result;
}

static PyMethodDef module_methods[] = {
    {"set_simd", set_simd, METH_O, set_simd_doc},
    {"resize2d", (PyCFunction)(void (*)(void))resize2d, METH_VARARGS | METH_KEYWORDS, resize2d_doc},
    {"col2im2d", (PyCFunction)(void (*)(void))col2im2d, METH_VARARGS | METH_KEYWORDS, col2im2d_doc},
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_upsample", "Resize's interpolation and ConvTranspose's col2im (see _upsample.c).", -1,
    module_methods,
};

PyMODINIT_FUNC PyInit__upsample(void)
{
    import_pool();
    return PyModule_Create(&module);
}
