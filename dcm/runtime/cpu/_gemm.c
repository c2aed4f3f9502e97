/* dcm.runtime.cpu._gemm: dense float32 products split over the native thread pool.
 *
 * gemm(a, b, out, threads) computes out = a @ b for stacks of row-major or column-major operands with
 * the single-threaded sgemm of scipy's OpenBLAS (import_sgemm, _kernel_common.h), cutting the work
 * into chunks that the threads of parallel_for (_pool.c) take as they come free: whole products of a
 * stack, else rows or columns of one product.
 *
 * Why: numpy's matmul runs on its own OpenBLAS, which the session holds at one thread (blas.py: its
 * pool waits for every thread, so a busy machine stalls every product), and splitting a product over
 * Python threads cost 15-100 us per hand-off, so only products of tens of millions of multiply-adds
 * used a second thread. A hand-off on the native pool costs microseconds.
 *
 * Every operand's strides are checked before any read: the last two axes must be a row-major or a
 * column-major matrix (unit stride on one axis, the other at least as long as the matrix's extent on
 * it), every stride non-negative, out row-major without two elements at one address and not
 * overlapping a or b. Sizes and leading dimensions must fit sgemm's 32-bit integers.
 */
#include "_kernel_common.h"

/* The fewest rows (or columns) in a chunk of one product: narrower chunks run below sgemm's speed. */
#define CHUNK_MIN 16
#define MAX_DIMS 16

/* One operand's last two axes as sgemm sees them: transposed or not, and the leading dimension. */
typedef struct {
    const char *base;
    Py_ssize_t lead_strides[MAX_DIMS]; /* bytes */
    Py_ssize_t row, col;               /* element strides of the last two axes */
    int ld;
    char trans; /* 'N': row-major, 'T': column-major (as a Fortran matrix, its transpose) */
} Operand;

typedef struct {
    dcm_sgemm_fn sgemm;
    Operand a, b, c;
    Py_ssize_t lead[MAX_DIMS];
    int nlead;
    int m, n, k;
    int by_rows;     /* chunks of rows (else columns) of one product */
    Py_ssize_t span; /* units per product: 1 (whole products), m or n */
} Gemm;

/* The byte offset of product p of the stack in an operand. */
static Py_ssize_t item_offset(const Gemm *g, const Operand *o, Py_ssize_t p)
{
    Py_ssize_t offset = 0;
    for (int d = g->nlead - 1; d >= 0; d--) {
        offset += (p % g->lead[d]) * o->lead_strides[d];
        p /= g->lead[d];
    }
    return offset;
}

/* Rows [r0, r1) and columns [c0, c1) of product p: row-major C = A @ B is the column-major C^T = B^T A^T. */
static void product_part(const Gemm *g, Py_ssize_t p, int r0, int r1, int c0, int c1)
{
    const float one = 1.f, zero = 0.f;
    const int m = r1 - r0, n = c1 - c0;
    const float *a = (const float *)(g->a.base + item_offset(g, &g->a, p)) + r0 * g->a.row;
    const float *b = (const float *)(g->b.base + item_offset(g, &g->b, p)) + c0 * g->b.col;
    float *c = (float *)(g->c.base + item_offset(g, &g->c, p)) + r0 * g->c.row + c0;
    g->sgemm(&g->b.trans, &g->a.trans, &n, &m, &g->k, &one, b, &g->b.ld, a, &g->a.ld, &zero, c, &g->c.ld);
}

/* parallel_for's range function: units [lo, hi) of the stack, span units per product. */
static void gemm_range(void *ctx, Py_ssize_t lo, Py_ssize_t hi)
{
    const Gemm *g = ctx;
    while (lo < hi) {
        const Py_ssize_t p = lo / g->span, first = lo % g->span;
        const Py_ssize_t last = first + (hi - lo) < g->span ? first + (hi - lo) : g->span;
        if (g->span == 1) product_part(g, p, 0, g->m, 0, g->n);
        else if (g->by_rows) product_part(g, p, (int)first, (int)last, 0, g->n);
        else product_part(g, p, 0, g->m, (int)first, (int)last);
        lo += last - first;
    }
}

/* Reads an operand's layout from its buffer: rows x cols in its last two axes. */
static int read_operand(const Py_buffer *v, Operand *o, int allow_transposed, const char *what)
{
    const int nd = v->ndim;
    const Py_ssize_t rows = v->shape[nd - 2], cols = v->shape[nd - 1];
    for (int d = 0; d < nd; d++) {
        if (v->strides[d] < 0 || v->strides[d] % 4) {
            PyErr_Format(PyExc_ValueError, "%s must have non-negative strides that are whole floats", what);
            return -1;
        }
    }
    o->base = v->buf;
    for (int d = 0; d < nd - 2; d++) o->lead_strides[d] = v->strides[d];
    const Py_ssize_t outer = v->strides[nd - 2] / 4, inner = v->strides[nd - 1] / 4;
    /* An axis of one element (or an empty matrix) has no stride that matters: the least sgemm accepts. */
    const Py_ssize_t row_ld = rows <= 1 || cols == 0 ? (cols > 1 ? cols : 1) : outer;
    const Py_ssize_t col_ld = cols <= 1 || rows == 0 ? (rows > 1 ? rows : 1) : inner;
    if ((cols <= 1 || inner == 1) && row_ld >= (cols > 1 ? cols : 1)) {
        o->trans = 'N', o->row = row_ld, o->col = 1;
        o->ld = row_ld <= INT32_MAX ? (int)row_ld : -1;
    } else if (allow_transposed && (rows <= 1 || outer == 1) && col_ld >= (rows > 1 ? rows : 1)) {
        o->trans = 'T', o->row = 1, o->col = col_ld;
        o->ld = col_ld <= INT32_MAX ? (int)col_ld : -1;
    } else {
        PyErr_Format(PyExc_ValueError, "%s must be %s matrices (unit stride along a row%s)", what,
                     allow_transposed ? "row-major or column-major" : "row-major",
                     allow_transposed ? " or a column" : "");
        return -1;
    }
    if (o->ld < 0) {
        PyErr_Format(PyExc_ValueError, "%s: a stride overflows sgemm's 32-bit sizes", what);
        return -1;
    }
    return 0;
}

/* [first, last) byte range an operand's elements occupy (strides are non-negative). */
static void extent(const Py_buffer *v, const char **first, const char **last)
{
    Py_ssize_t span = 4;
    for (int d = 0; d < v->ndim; d++) span += (v->shape[d] - 1) * v->strides[d];
    *first = v->buf, *last = (const char *)v->buf + span;
}

static int overlaps(const Py_buffer *x, const Py_buffer *y)
{
    const char *x0, *x1, *y0, *y1;
    extent(x, &x0, &x1);
    extent(y, &y0, &y1);
    return x0 < y1 && y0 < x1;
}

/* out's axes, innermost first, each step at least the extent of the axes inside it: no two elements share
 * an address, so that the threads never write the same float. */
static int distinct_elements(const Py_buffer *v)
{
    Py_ssize_t inner = 4;
    for (int d = v->ndim - 1; d >= 0; d--) {
        if (v->shape[d] <= 1) continue;
        if (v->strides[d] < inner) return 0;
        inner = v->strides[d] * v->shape[d];
    }
    return 1;
}

static int get_float_view(PyObject *obj, Py_buffer *view, int writable, const char *what)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_STRIDES | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) < 0) return -1;
    const char *fmt = view->format ? view->format : "B";
    if (*fmt == '<' || *fmt == '=' || *fmt == '@') fmt++;
    if (fmt[0] != 'f' || fmt[1] != '\0' || view->itemsize != 4 || view->ndim < 2 || view->ndim > MAX_DIMS) {
        PyErr_Format(PyExc_TypeError, "%s: expected a float32 array of 2 to %d dims, got format %s, %d dims", what,
                     MAX_DIMS, fmt, view->ndim);
        PyBuffer_Release(view);
        view->obj = NULL;
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(gemm_doc,
"gemm(a, b, out, threads=1) -> None\n\n"
"out = a @ b for float32 stacks a [..., m, k], b [..., k, n], out [..., m, n] with the same leading\n"
"axes (broadcast ones with stride 0 in a and b), on up to `threads` threads of the native pool.\n"
"a and b: row-major or column-major in their last two axes (transposed views need no copy); out:\n"
"row-major, not overlapping a or b. Strides must be non-negative; sizes and leading dimensions must\n"
"fit 32 bits. Releases the GIL. Splits any product with threads >= 2: the caller (blas.matmul) decides\n"
"which products are worth it.");

static PyObject *gemm(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"a", "b", "out", "threads", NULL};
    PyObject *ao, *bo, *co;
    int threads = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO|i", kwlist, &ao, &bo, &co, &threads)) return NULL;
    Py_buffer av = {0}, bv = {0}, cv = {0};
    PyObject *result = NULL;
    Gemm g;
    if (get_float_view(ao, &av, 0, "a") < 0 || get_float_view(bo, &bv, 0, "b") < 0 ||
        get_float_view(co, &cv, 1, "out") < 0)
        goto done;
    const int nd = cv.ndim;
    if (av.ndim != nd || bv.ndim != nd) {
        PyErr_SetString(PyExc_ValueError, "a, b and out must have the same number of axes");
        goto done;
    }
    g.nlead = nd - 2;
    for (int d = 0; d < g.nlead; d++) {
        if (av.shape[d] != cv.shape[d] || bv.shape[d] != cv.shape[d]) {
            PyErr_SetString(PyExc_ValueError, "a, b and out must have the same leading axes");
            goto done;
        }
        g.lead[d] = cv.shape[d];
    }
    const Py_ssize_t m = av.shape[nd - 2], k = av.shape[nd - 1], n = bv.shape[nd - 1];
    if (bv.shape[nd - 2] != k || cv.shape[nd - 2] != m || cv.shape[nd - 1] != n) {
        PyErr_Format(PyExc_ValueError, "shapes must be a [m, k], b [k, n], out [m, n]: got m=%zd k=%zd, b [%zd, %zd], "
                     "out [%zd, %zd]", m, k, bv.shape[nd - 2], n, cv.shape[nd - 2], cv.shape[nd - 1]);
        goto done;
    }
    if (m > INT32_MAX || n > INT32_MAX || k > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "sizes overflow sgemm's 32-bit integers");
        goto done;
    }
    const Py_ssize_t count = size_product(g.lead, g.nlead);
    if (count < 0 || SIZE_PRODUCT(count, m, n) < 0) {
        PyErr_SetString(PyExc_ValueError, "sizes overflow");
        goto done;
    }
    if (m == 0 || n == 0 || count == 0) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    if (read_operand(&av, &g.a, 1, "a") < 0 || read_operand(&bv, &g.b, 1, "b") < 0 ||
        read_operand(&cv, &g.c, 0, "out") < 0)
        goto done;
    if (!distinct_elements(&cv)) {
        PyErr_SetString(PyExc_ValueError, "out must not hold two elements at one address");
        goto done;
    }
    if ((av.len && overlaps(&av, &cv)) || (bv.len && overlaps(&bv, &cv))) {
        PyErr_SetString(PyExc_ValueError, "out overlaps an input");
        goto done;
    }
    if (!(g.sgemm = import_sgemm())) goto done;
    g.m = (int)m, g.n = (int)n, g.k = (int)k;
    Py_ssize_t grain = 1;
    g.by_rows = m >= n;
    if (count >= 2 * (Py_ssize_t)threads || (m < 2 * CHUNK_MIN && n < 2 * CHUNK_MIN)) g.span = 1; /* whole products */
    else g.span = g.by_rows ? m : n, grain = CHUNK_MIN;
    Py_BEGIN_ALLOW_THREADS
    parallel_for(gemm_range, &g, count * g.span, grain, threads);
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    RELEASE_BUFFERS(&av, &bv, &cv);
    return result;
}

static PyMethodDef module_methods[] = {
    {"gemm", (PyCFunction)(void (*)(void))gemm, METH_VARARGS | METH_KEYWORDS, gemm_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_gemm", "Dense float32 products on the native thread pool (see _gemm.c).", -1,
    module_methods,
};

PyMODINIT_FUNC PyInit__gemm(void)
{
    import_pool();
    return PyModule_Create(&module);
}
