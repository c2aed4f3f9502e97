/* dcm.runtime.cpu._resize: separable interpolation of the last two axes (Resize, Upsample; resize.py).
 *
 * resize2d: y[p, i, j] = sum_s col_w[j, s] * (sum_t row_w[i, t] * x[p, row_idx[i, t], col_idx[j, s]]),
 * every plane p of x [planes, h, w] to y [planes, out_h, out_w], from the source taps and weights of
 * each output row and column, which resize.py computes once per shape for any coordinate mode,
 * nearest (one tap of weight 1), linear (2), cubic (4) or antialiased (more).
 *
 * Why C: numpy resizes an axis as a gather per tap, a multiply and an add, each a pass over the
 * whole output, and a gather along the last axis is an index per value. Here an output row is one
 * weighted sum of whole input rows (contiguous, 8 floats per AVX2 register) into a row buffer, then
 * a gather from that buffer (which stays in L1) per output value: each output is written once.
 *
 * Every index is checked against the axis it reads before any value is read; sizes come from the
 * arrays' own shapes, their products made with size_product.
 */
#include "_kernel_common.h"
#include <string.h>

#define RELEASE_GIL_MIN 32768 /* output values below which the GIL round trip costs more than it frees */

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

static void resize_planes(const float *x, float *y, Py_ssize_t planes, Py_ssize_t h, Py_ssize_t w, const Taps *r,
                          const Taps *c, const int32_t *idx_t, const float *w_t, float *row, int avx2)
{
    for (Py_ssize_t p = 0; p < planes; p++) {
        const float *xp = x + p * h * w;
        for (Py_ssize_t i = 0; i < r->out; i++) {
            float *yi = y + (p * r->out + i) * c->out;
#ifdef HAVE_AVX2_PATH
            if (avx2) {
                rows_avx2(xp, w, r->idx + i * r->taps, r->w + i * r->taps, r->taps, row);
                columns_avx2(row, c, idx_t, w_t, yi);
                continue;
            }
#endif
            rows_generic(xp, w, r->idx + i * r->taps, r->w + i * r->taps, r->taps, row, 0);
            columns_generic(row, c, yi, 0);
        }
    }
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
            PyErr_Format(PyExc_ValueError, "%s: index %d at entry %zd is outside 0..%zd", what, t->idx[k], k, limit - 1);
            return -1;
        }
    }
    return 0;
}

PyDoc_STRVAR(resize2d_doc,
"resize2d(x, y, row_indices, row_weights, col_indices, col_weights) -> None\n\n"
"y [planes, out_h, out_w] = the separable interpolation of x [planes, h, w] (both float32,\n"
"C-contiguous): output row i takes the input rows row_indices[i, :] (int32 [out_h, taps]) with\n"
"row_weights[i, :] (float32, same shape), output column j the columns col_indices[j, :] with\n"
"col_weights[j, :] ([out_w, taps']). Releases the GIL for large calls.");

static PyObject *resize2d(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"x", "y", "row_indices", "row_weights", "col_indices", "col_weights", NULL};
    PyObject *xo, *yo, *rio, *rwo, *cio, *cwo;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOOO", kwlist, &xo, &yo, &rio, &rwo, &cio, &cwo)) return NULL;
    Py_buffer xb = {0}, yb = {0}, rib = {0}, rwb = {0}, cib = {0}, cwb = {0};
    PyObject *result = NULL;
    float *row = NULL, *w_t = NULL;
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
    row = PyMem_RawMalloc((size_t)w * sizeof(float));
    idx_t = PyMem_RawMalloc((size_t)(c.out * c.taps) * sizeof(int32_t));
    w_t = PyMem_RawMalloc((size_t)(c.out * c.taps) * sizeof(float));
    if (!row || !idx_t || !w_t) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t j = 0; j < c.out; j++) /* tap-major: eight outputs' s-th taps side by side */
        for (Py_ssize_t s = 0; s < c.taps; s++) {
            idx_t[s * c.out + j] = c.idx[j * c.taps + s];
            w_t[s * c.out + j] = c.w[j * c.taps + s];
        }
    const int avx2 = use_avx2();
    if (total >= RELEASE_GIL_MIN) {
        Py_BEGIN_ALLOW_THREADS
        resize_planes(xb.buf, yb.buf, planes, h, w, &r, &c, idx_t, w_t, row, avx2);
        Py_END_ALLOW_THREADS
    } else {
        resize_planes(xb.buf, yb.buf, planes, h, w, &r, &c, idx_t, w_t, row, avx2);
    }
    result = Py_NewRef(Py_None);
done:
    PyMem_RawFree(row);
    PyMem_RawFree(idx_t);
    PyMem_RawFree(w_t);
    Py_buffer *views[] = {&xb, &yb, &rib, &rwb, &cib, &cwb};
    for (size_t i = 0; i < sizeof(views) / sizeof(views[0]); i++)
        if (views[i]->obj) PyBuffer_Release(views[i]);
    return result;
}

static PyMethodDef module_methods[] = {
    {"set_simd", set_simd, METH_O, set_simd_doc},
    {"resize2d", (PyCFunction)(void (*)(void))resize2d, METH_VARARGS | METH_KEYWORDS, resize2d_doc},
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_resize", "Separable interpolation of the last two axes (see _resize.c).", -1,
    module_methods,
};

PyMODINIT_FUNC PyInit__resize(void) { return PyModule_Create(&module); }
