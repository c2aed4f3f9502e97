/* dcm.runtime.cpu._native: compiled kernels for pruned weights.
 *
 * SparseMatrix: the sparse fully connected kernels, y = relu(W @ x + b), at batch 1 (matvec) and
 *   for many vectors at once on packed panels (matmat, matmat_rows).
 * SparseConv: direct sparse convolution, y = relu(conv(x, W) + b), with no im2col.
 * winograd_conv: dense 3x3 stride-1 convolutions by Winograd F(2x2, 3x3) (winograd.py).
 * pool2d: MaxPool and AveragePool, separably, without a padded copy of the input.
 * depthwise2d: depthwise convolution (one input channel per group), bias and clamp fused.
 * conv_lanes2d: dense convolution of few input channels (a group), 8 or 16 output channels per register.
 * im2col2d: the column matrix of a 2-D convolution, padding included, for the BLAS product.
 *
 * Why C: a batch-1 product of a pruned layer is a few thousand multiply-adds, and scipy spends as
 * long in checks and conversions as in the product, then numpy adds the bias and clamps in two
 * more passes. This does the product, bias and ReLU in one call, and it can skip the zero inputs
 * that a ReLU leaves (about half of them) by walking the weight by columns.
 *
 * A SparseMatrix holds a weight [rows, cols] in CSR, CSC or both (indptr int64, indices int32 or
 * uint16, values float32). Every array is checked once when the object is made (lengths, indptr
 * monotone, every index in range), so that no later call can read out of bounds, whatever file the
 * weight came from. Calls release the GIL for large products, so threads may share one matrix; for
 * the same reason SparseMatrix and SparseConv are immutable (__init__ runs once): a second __init__
 * would free the arrays that another thread's call is reading.
 *
 * Every size a caller passes is bounded before use, and every buffer-length check compares against a
 * product made by size_product, which refuses overflow: a product that wrapped (2^62 + 1 samples
 * times 16 floats is 16) would pass the check and let the kernel read far past a small buffer.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__) && !defined(__clang__)
#define NO_VECTORIZE __attribute__((optimize("no-tree-vectorize")))
#else
#define NO_VECTORIZE
#endif

#include "_kernel_common.h" /* AVX2 dispatch and set_simd, size_product, get_array_of_rank */
#include "_packed_gemm.h"   /* Winograd's products on AVX-512 */

#define RELEASE_GIL_MIN_NNZ 32768 /* below this the GIL round trip costs more than it frees */
#define CSC_ALWAYS_NNZ (1 << 21)  /* from here (12 MiB and more in memory) CSC won on any x (see matvec) */
#define SPLIT_MIN_NNZ 32768       /* a batch-1 product of this many stored weights goes to the pool's threads */
#define CSC_PART_NNZ 65536        /* stored weights per part of a CSC product, each part its own partial sums */
#define CSC_MAX_PARTS 8
#define CSR_MAX_PARTS 64          /* a split CSR product's parts: 4 a thread, up to this many */

typedef struct {
    Py_buffer ptr, idx, val; /* ptr.buf == NULL: this form is absent */
    int wide;                /* indices are int32 (else uint16) */
} Form;

typedef struct {
    PyObject_HEAD
    Py_ssize_t rows, cols;
    Form csr, csc;
    int32_t *column_blocks; /* per CSR row, the COLUMN_BLOCK bounds of its stored weights, or NULL */
} SparseMatrix;

static void form_release(Form *f)
{
    if (f->ptr.buf) PyBuffer_Release(&f->ptr);
    if (f->idx.buf) PyBuffer_Release(&f->idx);
    if (f->val.buf) PyBuffer_Release(&f->val);
    memset(f, 0, sizeof(*f));
}

static int get_array(PyObject *obj, Py_buffer *view, char kind, Py_ssize_t itemsize, int writable,
                     const char *what)
{
    return get_array_of_rank(obj, view, kind, itemsize, writable, 0, what);
}

/* An input and an output array, float32 and C-contiguous (1-D unless any_rank); on failure neither
 * is held. */
static int get_in_out(PyObject *in, Py_buffer *ib, const char *in_name, PyObject *out, Py_buffer *ob,
                      const char *out_name, int any_rank)
{
    if (get_array_of_rank(in, ib, 'f', 4, 0, any_rank, in_name) < 0) return -1;
    if (get_array_of_rank(out, ob, 'f', 4, 1, any_rank, out_name) < 0) {
        PyBuffer_Release(ib);
        return -1;
    }
    return 0;
}

/* Releases an in/out pair and a third, optional array (buf NULL: not held). */
static void release_all(Py_buffer *a, Py_buffer *b, Py_buffer *c)
{
    PyBuffer_Release(a);
    PyBuffer_Release(b);
    if (c->buf) PyBuffer_Release(c);
}

/* Loads and checks one form: indptr [major + 1], indices [nnz] < minor, values [nnz]. */
static int form_load(Form *f, PyObject *ptr, PyObject *idx, PyObject *val, Py_ssize_t major,
                     Py_ssize_t minor, const char *name)
{
    if (ptr == Py_None) return 0;
    if (get_array(ptr, &f->ptr, 'i', 8, 0, "indptr") < 0) goto fail;
    Py_buffer probe;
    if (PyObject_GetBuffer(idx, &probe, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) goto fail;
    f->wide = probe.itemsize == 4;
    PyBuffer_Release(&probe);
    if (get_array(idx, &f->idx, f->wide ? 'i' : 'u', f->wide ? 4 : 2, 0, "indices") < 0) goto fail;
    if (get_array(val, &f->val, 'f', 4, 0, "values") < 0) goto fail;
    const int64_t *p = f->ptr.buf;
    Py_ssize_t nnz = f->idx.len / f->idx.itemsize;
    if (f->ptr.len / 8 != major + 1 || f->val.len / 4 != nnz || p[0] != 0 || p[major] != nnz) {
        PyErr_Format(PyExc_ValueError, "%s: indptr must have %zd entries from 0 to the %zd stored values",
                     name, major + 1, nnz);
        goto fail;
    }
    for (Py_ssize_t i = 0; i < major; i++) {
        if (p[i + 1] < p[i]) {
            PyErr_Format(PyExc_ValueError, "%s: indptr decreases at %zd", name, i);
            goto fail;
        }
    }
    for (Py_ssize_t k = 0; k < nnz; k++) {
        int64_t j = f->wide ? ((const int32_t *)f->idx.buf)[k] : ((const uint16_t *)f->idx.buf)[k];
        if (j < 0 || j >= minor) {
            PyErr_Format(PyExc_ValueError, "%s: index %lld at entry %zd is outside 0..%zd", name, (long long)j, k,
                         minor - 1);
            goto fail;
        }
    }
    return 0;
fail:
    form_release(f);
    return -1;
}

/* Kernel objects are immutable: a second __init__ is refused rather than freeing arrays that a call
 * on another thread (GIL released) may be reading. */
static int refuse_reinit(const char *type)
{
    PyErr_Format(PyExc_TypeError, "%s is immutable: __init__ runs once; make a new object", type);
    return -1;
}

/* The batched products walk a wide W one block of columns at a time, so that the block's slice of
 * the packed panel (32 KiB: 128 columns of a 64-vector panel, 256 of a 32-vector one) stays in L1
 * while every row of W adds its weights in the block; a whole panel of 4608 inputs (512 channels x
 * 3 x 3) is 576 KiB at 32 vectors, which each stored weight read from L2. *bounds: per row r,
 * COLUMN_BLOCKS(cols) + 1 offsets from p[r] of the first stored weight of each COLUMN_BLOCK columns,
 * then the row's count; NULL (one block) where W is narrow or a row's indices are not ascending. */
#define COLUMN_BLOCK 128
#define COLUMN_BLOCKS(cols) (((cols) + COLUMN_BLOCK - 1) / COLUMN_BLOCK)

static int column_blocks(const Form *f, Py_ssize_t rows, Py_ssize_t cols, int32_t **bounds)
{
    *bounds = NULL;
    const int64_t *p = f->ptr.buf;
    const int32_t *i32 = f->idx.buf;
    const uint16_t *u16 = f->idx.buf;
    Py_ssize_t nb = COLUMN_BLOCKS(cols), size = SIZE_PRODUCT(rows, nb + 1);
    if (nb < 2) return 0;
    for (Py_ssize_t r = 0; r < rows; r++) /* ascending indices, and fewer than 2^31 in a row */
        for (int64_t k = p[r] + 1; k < p[r + 1]; k++)
            if ((f->wide ? i32[k] <= i32[k - 1] : u16[k] <= u16[k - 1]) || p[r + 1] - p[r] > INT32_MAX) return 0;
    int32_t *b = size < 0 ? NULL : PyMem_Malloc((size_t)size * sizeof(int32_t));
    if (!b) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t r = 0; r < rows; r++) {
        int64_t k = p[r];
        int32_t *row = b + r * (nb + 1);
        for (Py_ssize_t blk = 0; blk < nb; blk++) {
            row[blk] = (int32_t)(k - p[r]);
            while (k < p[r + 1] && (f->wide ? i32[k] : u16[k]) < (blk + 1) * COLUMN_BLOCK) k++;
        }
        row[nb] = (int32_t)(p[r + 1] - p[r]);
    }
    *bounds = b;
    return 0;
}

static int SparseMatrix_init(SparseMatrix *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"rows", "cols", "csr_indptr", "csr_indices", "csr_values",
                             "csc_indptr", "csc_indices", "csc_values", NULL};
    PyObject *r[3] = {Py_None, Py_None, Py_None}, *c[3] = {Py_None, Py_None, Py_None};
    Py_ssize_t rows, cols;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "nn|OOOOOO", kwlist, &rows, &cols, &r[0], &r[1], &r[2], &c[0],
                                     &c[1], &c[2]))
        return -1;
    if (self->csr.ptr.buf || self->csc.ptr.buf) return refuse_reinit("SparseMatrix");
    if (rows < 0 || cols < 0 || rows > INT32_MAX || cols > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "rows and cols must be in 0..2^31-1");
        return -1;
    }
    if (r[0] == Py_None && c[0] == Py_None) {
        PyErr_SetString(PyExc_ValueError, "give the CSR arrays, the CSC arrays or both");
        return -1;
    }
    /* Loaded aside, then installed at once: getting a buffer may run Python code, and nothing may see
     * a half-made object. (The copied Py_buffers' shape pointers are never read after loading.) */
    Form csr = {0}, csc = {0};
    if (form_load(&csr, r[0], r[1], r[2], rows, cols, "csr") < 0) return -1;
    if (form_load(&csc, c[0], c[1], c[2], cols, rows, "csc") < 0) {
        form_release(&csr);
        return -1;
    }
    if (self->csr.ptr.buf || self->csc.ptr.buf) { /* another __init__ finished meanwhile */
        form_release(&csr);
        form_release(&csc);
        return refuse_reinit("SparseMatrix");
    }
    int32_t *blocks = NULL;
    if (csr.ptr.buf && column_blocks(&csr, rows, cols, &blocks) < 0) {
        form_release(&csr);
        form_release(&csc);
        return -1;
    }
    self->rows = rows;
    self->cols = cols;
    self->csr = csr;
    self->csc = csc;
    self->column_blocks = blocks;
    return 0;
}

static void SparseMatrix_dealloc(SparseMatrix *self)
{
    PyMem_Free(self->column_blocks);
    form_release(&self->csr);
    form_release(&self->csc);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* y[r] = bias[r] + W[r, :] . x for r in [begin, end), then the ReLU. */
#define CSR_ROWS(IDX)                                                                          \
    for (Py_ssize_t r = begin; r < end; r++) {                                                 \
        float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;                                          \
        int64_t k = p[r], e = p[r + 1];                                                        \
        for (; k + 4 <= e; k += 4) {                                                           \
            a0 += v[k] * x[IDX[k]];                                                            \
            a1 += v[k + 1] * x[IDX[k + 1]];                                                    \
            a2 += v[k + 2] * x[IDX[k + 2]];                                                    \
            a3 += v[k + 3] * x[IDX[k + 3]];                                                    \
        }                                                                                      \
        for (; k < e; k++) a0 += v[k] * x[IDX[k]];                                             \
        float s = (bias ? bias[r] : 0.f) + ((a0 + a1) + (a2 + a3));                            \
        y[r] = relu && s < 0.f ? 0.f : s;                                                      \
    }

/* y += W[:, c] * x[c] for the nonzero x[c], c in [begin, end). */
#define CSC_COLUMNS(IDX)                                                                       \
    for (Py_ssize_t c = begin; c < end; c++) {                                                 \
        float xc = x[c];                                                                       \
        if (xc == 0.f) continue;                                                               \
        for (int64_t k = p[c]; k < p[c + 1]; k++) y[IDX[k]] += v[k] * xc;                      \
    }

/* Kept scalar: at -O3 gcc vectorizes this gather without AVX2's gather instruction, and LeNet-300's
 * fc1 went from 6.9 to 11.2 us. */
NO_VECTORIZE
static void csr_rows(const Form *f, const float *x, const float *bias, float *y, int relu, Py_ssize_t begin,
                     Py_ssize_t end)
{
    const int64_t *p = f->ptr.buf;
    const float *v = f->val.buf;
    const int32_t *i32 = f->idx.buf;
    const uint16_t *u16 = f->idx.buf;
    if (f->wide) { CSR_ROWS(i32) } else { CSR_ROWS(u16) }
}

static void csc_columns(const Form *f, const float *x, float *y, Py_ssize_t begin, Py_ssize_t end)
{
    const int64_t *p = f->ptr.buf;
    const float *v = f->val.buf;
    const int32_t *i32 = f->idx.buf;
    const uint16_t *u16 = f->idx.buf;
    if (f->wide) { CSC_COLUMNS(i32) } else { CSC_COLUMNS(u16) }
}

static Py_ssize_t count_nonfinite(const float *x, Py_ssize_t begin, Py_ssize_t end)
{
    Py_ssize_t bad = 0;
    for (Py_ssize_t i = begin; i < end; i++) bad += !isfinite(x[i]);
    return bad;
}

/* The exponent bits of a float32: all set for Inf and NaN only. */
#define EXPONENT_BITS 0x7f800000u

/* Inf/NaN count by exponent bits, in a form the vectorizer takes. */
static Py_ssize_t count_nonfinite_fast(const float *x, Py_ssize_t n)
{
    const uint32_t *u = (const uint32_t *)x;
    Py_ssize_t total = 0;
    for (Py_ssize_t start = 0; start < n; start += 1 << 20) { /* a plain inner loop: vectorized */
        Py_ssize_t end = n - start < (1 << 20) ? n : start + (1 << 20);
        uint32_t bad = 0;
        for (Py_ssize_t i = start; i < end; i++) bad += (u[i] & EXPONENT_BITS) == EXPONENT_BITS;
        total += bad;
    }
    return total;
}

static Py_ssize_t count_zeros(const float *x, Py_ssize_t n)
{
    Py_ssize_t zeros = 0;
    for (Py_ssize_t i = 0; i < n; i++) zeros += x[i] == 0.f;
    return zeros;
}

PyDoc_STRVAR(matvec_doc,
"matvec(x, y, bias=None, relu=False, form='auto', begin=0, end=-1, threads=1) -> int\n\n"
"y = W @ x (+ bias) (then ReLU), x float32 [cols], y float32 [rows] (C-contiguous, any shape with\n"
"that many values, e.g. one row [1, cols]), bias float32 [rows] or None.\n"
"form 'csr': rows [begin, end) of y are written. form 'csc': columns [begin, end) of W are added\n"
"into y, which starts from bias when one is given (else from its own contents); the ReLU then\n"
"applies to all of y. form 'auto': the whole product (y's contents are ignored) by whichever stored\n"
"form is cheaper for this x (CSC skips zero inputs), split over up to `threads` threads of the\n"
"native pool: CSR by rows, CSC in parts of columns whose partial sums are added in order (the parts\n"
"depend on W alone: any thread count gives the same bits). Returns the number of Inf/NaN inputs\n"
"read, for the caller to give y the NaNs that the pruned weights hide.");

/* A whole batch-1 product (form 'auto') on the pool: its parts, cut where the stored weights before
 * them reach an equal share (bounds of rows for CSR, of columns for CSC). */
typedef struct {
    const Form *f;
    const float *x, *bias;
    float *y, *partial; /* CSC: parts 1.. add into partial [parts - 1][rows]; part 0 into y */
    Py_ssize_t rows, cuts[CSR_MAX_PARTS + 1];
    int relu;
} MatvecJob;

/* cuts[0..parts] over the major axis of a form whose indptr is p: equal shares of its stored weights
 * (fewer parts where shares would be empty). Returns the parts. */
static Py_ssize_t nnz_cuts(const int64_t *p, Py_ssize_t major, Py_ssize_t parts, Py_ssize_t *cuts)
{
    Py_ssize_t n = 0, at = 0;
    cuts[n++] = 0;
    for (Py_ssize_t i = 1; i < parts; i++) {
        const int64_t target = p[major] / parts * i + p[major] % parts * i / parts;
        while (at < major && p[at] < target) at++;
        if (at > cuts[n - 1] && at < major) cuts[n++] = at;
    }
    cuts[n] = major;
    return n;
}

static void csr_parts(void *ctx, Py_ssize_t lo, Py_ssize_t hi)
{
    const MatvecJob *j = ctx;
    for (Py_ssize_t u = lo; u < hi; u++) csr_rows(j->f, j->x, j->bias, j->y, j->relu, j->cuts[u], j->cuts[u + 1]);
}

static void csc_parts(void *ctx, Py_ssize_t lo, Py_ssize_t hi)
{
    const MatvecJob *j = ctx;
    for (Py_ssize_t u = lo; u < hi; u++)
        csc_columns(j->f, j->x, u ? j->partial + (u - 1) * j->rows : j->y, j->cuts[u], j->cuts[u + 1]);
}

/* y = W @ x (+ bias) (ReLU) by the form f, in parts on up to threads threads; -1 where the partial sums
 * could not be allocated. Called without the GIL wherever it has parts to hand out. */
static int matvec_parts(const SparseMatrix *self, const Form *f, int csc, const float *x, const float *bias, float *y,
                        int relu, int threads)
{
    const int64_t *p = f->ptr.buf;
    const Py_ssize_t major = csc ? self->cols : self->rows, nnz = (Py_ssize_t)p[major];
    MatvecJob j = {f, x, bias, y, NULL, self->rows, {0}, relu};
    if (!csc) { /* each row summed alone: the split never changes its bits */
        const Py_ssize_t want = 4 * (Py_ssize_t)threads < CSR_MAX_PARTS ? 4 * (Py_ssize_t)threads : CSR_MAX_PARTS;
        const Py_ssize_t parts = threads > 1 && nnz >= SPLIT_MIN_NNZ ? nnz_cuts(p, major, want, j.cuts) : 0;
        if (parts > 1) parallel_for(csr_parts, &j, parts, 1, threads);
        else csr_rows(f, x, bias, y, relu, 0, major);
        return 0;
    }
    Py_ssize_t parts = nnz / CSC_PART_NNZ < 1 ? 1 : nnz / CSC_PART_NNZ > CSC_MAX_PARTS ? CSC_MAX_PARTS : nnz / CSC_PART_NNZ;
    parts = nnz_cuts(p, major, parts, j.cuts);
    if (bias) memcpy(y, bias, self->rows * sizeof(float));
    else memset(y, 0, self->rows * sizeof(float));
    if (parts > 1 && !(j.partial = calloc((size_t)((parts - 1) * self->rows), sizeof(float)))) return -1;
    parallel_for(csc_parts, &j, parts, 1, threads);
    for (Py_ssize_t u = 1; u < parts; u++) /* in part order, whichever thread made them */
        for (Py_ssize_t r = 0; r < self->rows; r++) y[r] += j.partial[(u - 1) * self->rows + r];
    free(j.partial);
    if (relu)
        for (Py_ssize_t r = 0; r < self->rows; r++) y[r] = y[r] < 0.f ? 0.f : y[r];
    return 0;
}

static PyObject *SparseMatrix_matvec(SparseMatrix *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"x", "y", "bias", "relu", "form", "begin", "end", "threads", NULL};
    PyObject *xo, *yo, *bo = Py_None;
    int relu = 0, threads = 1;
    const char *form = "auto";
    Py_ssize_t begin = 0, end = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|Opsnni", kwlist, &xo, &yo, &bo, &relu, &form, &begin, &end,
                                     &threads))
        return NULL;
    Py_buffer xb, yb, bb = {0};
    if (get_in_out(xo, &xb, "x", yo, &yb, "y", 1) < 0) return NULL; /* any shape: [1, n] rows too */
    PyObject *result = NULL;
    if (bo != Py_None && get_array(bo, &bb, 'f', 4, 0, "bias") < 0) goto done;
    if (xb.len / 4 != self->cols || yb.len / 4 != self->rows || (bb.buf && bb.len / 4 != self->rows)) {
        PyErr_Format(PyExc_ValueError, "matvec: x must have %zd values, y and bias %zd", self->cols, self->rows);
        goto done;
    }
    const float *x = xb.buf, *bias = bb.buf;
    float *y = yb.buf;
    int csc, whole = 0;
    if (strcmp(form, "csr") == 0) csc = 0;
    else if (strcmp(form, "csc") == 0) csc = 1;
    else if (strcmp(form, "auto") == 0) {
        /* CSC scatters, CSR gathers, but CSC only touches the columns of nonzero inputs. With the weights
         * out of cache, as a batch-1 run finds them, CSC won from 75% zero inputs on layers of up to 1.5M
         * weights (2048 x 1000 at 30%: 191 against 186 us at 75%, 117 against 187 at 90%; on a dense x
         * 230 against 186) and on any x from 2.3M (AlexNet's fc6, 9216 x 4096 at 9%: 1282 against 2095
         * us; 6144 x 4096: 895 against 1104): python -m benchmarks.matvec_form. So: CSC from two
         * thirds zeros, or from CSC_ALWAYS_NNZ weights. */
        Py_ssize_t nnz = self->csc.ptr.buf ? self->csc.val.len / 4 : 0;
        csc = !self->csr.ptr.buf ||
              (nnz && (nnz >= CSC_ALWAYS_NNZ || 3 * count_zeros(x, self->cols) > 2 * self->cols));
        begin = 0;
        end = -1;
        whole = 1;
    } else {
        PyErr_Format(PyExc_ValueError, "matvec: form must be 'csr', 'csc' or 'auto', got %s", form);
        goto done;
    }
    Form *f = csc ? &self->csc : &self->csr;
    Py_ssize_t major = csc ? self->cols : self->rows;
    if (!f->ptr.buf) {
        PyErr_Format(PyExc_ValueError, "matvec: this matrix holds no %s form", csc ? "CSC" : "CSR");
        goto done;
    }
    if (end < 0) end = major;
    if (begin < 0 || begin > end || end > major) {
        PyErr_Format(PyExc_ValueError, "matvec: range [%zd, %zd) is outside 0..%zd", begin, end, major);
        goto done;
    }
    const int64_t *p = f->ptr.buf;
    Py_ssize_t bad;
    PyThreadState *ts = p[end] - p[begin] >= RELEASE_GIL_MIN_NNZ ? PyEval_SaveThread() : NULL;
    if (whole) {
        const int failed = matvec_parts(self, f, csc, x, bias, y, relu, threads);
        bad = failed ? 0 : count_nonfinite(x, 0, self->cols);
        if (ts) PyEval_RestoreThread(ts);
        if (failed) {
            PyErr_NoMemory();
            goto done;
        }
        result = PyLong_FromSsize_t(bad);
        goto done;
    }
    if (!csc) {
        csr_rows(f, x, bias, y, relu, begin, end);
        bad = count_nonfinite(x, 0, self->cols);
    } else {
        if (bias) memcpy(y, bias, self->rows * sizeof(float));
        else if (whole) memset(y, 0, self->rows * sizeof(float));
        csc_columns(f, x, y, begin, end);
        bad = count_nonfinite(x, begin, end);
        if (relu)
            for (Py_ssize_t r = 0; r < self->rows; r++) y[r] = y[r] < 0.f ? 0.f : y[r];
    }
    if (ts) PyEval_RestoreThread(ts);
    result = PyLong_FromSsize_t(bad);
done:
    release_all(&xb, &yb, &bb);
    return result;
}


/* The least work worth handing to another thread of the pool (a hand-off costs 1-5 us): multiply-adds
 * of a range of output channels or rows, values of a range of copied planes. */
#define RANGE_MIN_MACS 65536
#define RANGE_MIN_VALUES 16384

/* Batched products: y = W @ x for many activation vectors at once (a transformer's [tokens, hidden]
 * rows, a convolution's im2col columns). Each stored weight scales a run of vectors, so the vectors
 * go, SPARSE_PANEL at a time, into a packed panel [cols][SPARSE_PANEL] that stays in L1/L2 while every row of W
 * walks it. (Read in place, one feature's values sit n floats apart: at 128 vectors that stride
 * maps a 256-feature panel onto a quarter of L1's sets, and the kernel took 1.3-1.6x the time.)
 * Row r's sums over a panel are bias[r] + sum_k v[k] * panel[idx[k]][:], held in AVX2 registers,
 * two chains per register for the FMA latency. They go through a tile of PANEL_ROWS rows
 * to y: copied where y is [rows, n], transposed where y is [n, rows] (the activations' own layout,
 * so neither side needs a transposed copy). */
#define SPARSE_PANEL 32     /* vectors per panel: 4 AVX2 registers of sums per row */
#define WIDE_PANEL 64 /* AVX-512, past 32 vectors: 4 registers of sums per row (see panel_rows_avx512) */
#define TILE_PITCH WIDE_PANEL /* floats between a tile's rows */
#define PANEL_ROWS 8 /* rows of W per tile: one 8 x 8 transpose per 8 of its columns */

#define PANEL_ROWS_GENERIC(IDX)                                                                \
    for (Py_ssize_t r = r0; r < r1; r++) {                                                     \
        float *t = tile + (r - r0) * TILE_PITCH, b = bias ? bias[r] : 0.f;                     \
        for (Py_ssize_t j = 0; first && j < width; j++) t[j] = b;                              \
        for (int64_t k = kb[r - r0]; k < ke[r - r0]; k++) {                                    \
            const float *xr = panel + ((Py_ssize_t)IDX[k] << shift);                             \
            float w = v[k];                                                                    \
            for (Py_ssize_t j = 0; j < width; j++) t[j] += w * xr[j];                          \
        }                                                                                      \
        if (relu)                                                                              \
            for (Py_ssize_t j = 0; j < width; j++) t[j] = t[j] < 0.f ? 0.f : t[j];             \
    }

/* Rows [r0, r1) of W over a panel of width (8 or SPARSE_PANEL) vectors, rows stride floats apart: into
 * tile [r - r0][0, width), the stored weights [kb[r - r0], ke[r - r0]) of each row (one block of
 * columns), added to the tile's sums, or to the bias where first. */
static void panel_rows_generic(const Form *f, const int64_t *kb, const int64_t *ke, int first, const float *panel,
                               Py_ssize_t stride, Py_ssize_t width, const float *bias, int relu, Py_ssize_t r0,
                               Py_ssize_t r1, float *tile)
{
    const float *v = f->val.buf;
    const int32_t *i32 = f->idx.buf;
    const uint16_t *u16 = f->idx.buf;
    const int shift = stride == 8 ? 3 : 5;
    if (f->wide) { PANEL_ROWS_GENERIC(i32) } else { PANEL_ROWS_GENERIC(u16) }
}

#ifdef HAVE_AVX2_PATH
#define FMA_AT(w, x, a) _mm256_fmadd_ps(w, _mm256_load_ps(x), a)
#define PANEL_ROWS_AVX2(IDX)                                                                   \
    for (Py_ssize_t r = r0; r < r1; r++) {                                                     \
        float *t = tile + (r - r0) * TILE_PITCH;                                               \
        __m256 zero = _mm256_setzero_ps(), b = _mm256_set1_ps(bias ? bias[r] : 0.f);           \
        __m256 a0 = first ? b : _mm256_load_ps(t);                                             \
        int64_t k = kb[r - r0], e = ke[r - r0];                                                \
        if (width > 8) {                                                                       \
            __m256 a1 = first ? b : _mm256_load_ps(t + 8), a2 = first ? b : _mm256_load_ps(t + 16); \
            __m256 a3 = first ? b : _mm256_load_ps(t + 24);                                    \
            __m256 b0 = zero, b1 = zero, b2 = zero, b3 = zero;                                 \
            for (; k + 2 <= e; k += 2) {                                                       \
                const float *x0 = panel + ((Py_ssize_t)IDX[k] << shift);                         \
                const float *x1 = panel + ((Py_ssize_t)IDX[k + 1] << shift);                     \
                __m256 w0 = _mm256_broadcast_ss(v + k), w1 = _mm256_broadcast_ss(v + k + 1);  \
                a0 = FMA_AT(w0, x0, a0); a1 = FMA_AT(w0, x0 + 8, a1);                          \
                a2 = FMA_AT(w0, x0 + 16, a2); a3 = FMA_AT(w0, x0 + 24, a3);                    \
                b0 = FMA_AT(w1, x1, b0); b1 = FMA_AT(w1, x1 + 8, b1);                          \
                b2 = FMA_AT(w1, x1 + 16, b2); b3 = FMA_AT(w1, x1 + 24, b3);                    \
            }                                                                                  \
            if (k < e) {                                                                       \
                const float *x0 = panel + ((Py_ssize_t)IDX[k] << shift);                         \
                __m256 w0 = _mm256_broadcast_ss(v + k);                                        \
                a0 = FMA_AT(w0, x0, a0); a1 = FMA_AT(w0, x0 + 8, a1);                          \
                a2 = FMA_AT(w0, x0 + 16, a2); a3 = FMA_AT(w0, x0 + 24, a3);                    \
            }                                                                                  \
            a0 = _mm256_add_ps(a0, b0); a1 = _mm256_add_ps(a1, b1);                            \
            a2 = _mm256_add_ps(a2, b2); a3 = _mm256_add_ps(a3, b3);                            \
            if (relu) {                                                                        \
                a0 = _mm256_max_ps(zero, a0); a1 = _mm256_max_ps(zero, a1);                    \
                a2 = _mm256_max_ps(zero, a2); a3 = _mm256_max_ps(zero, a3);                    \
            }                                                                                  \
            _mm256_store_ps(t, a0); _mm256_store_ps(t + 8, a1);                                \
            _mm256_store_ps(t + 16, a2); _mm256_store_ps(t + 24, a3);                          \
        } else {                                                                               \
            __m256 a1 = zero, a2 = zero, a3 = zero;                                            \
            for (; k + 4 <= e; k += 4) {                                                       \
                a0 = FMA_AT(_mm256_broadcast_ss(v + k), panel + ((Py_ssize_t)IDX[k] << shift), a0); \
                a1 = FMA_AT(_mm256_broadcast_ss(v + k + 1), panel + ((Py_ssize_t)IDX[k + 1] << shift), a1); \
                a2 = FMA_AT(_mm256_broadcast_ss(v + k + 2), panel + ((Py_ssize_t)IDX[k + 2] << shift), a2); \
                a3 = FMA_AT(_mm256_broadcast_ss(v + k + 3), panel + ((Py_ssize_t)IDX[k + 3] << shift), a3); \
            }                                                                                  \
            for (; k < e; k++)                                                                 \
                a0 = FMA_AT(_mm256_broadcast_ss(v + k), panel + ((Py_ssize_t)IDX[k] << shift), a0); \
            a0 = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));                  \
            _mm256_store_ps(t, relu ? _mm256_max_ps(zero, a0) : a0);                           \
        }                                                                                      \
    }

/* AVX-512 where the CPU has it: panels of up to WIDE_PANEL vectors, whose row is nreg registers (the
 * panel's vectors rounded up to 16), each register as `chains` independent sums for the FMA latency.
 * A plane of 49 outputs (ResNet-18's 7x7 layers, im2col's columns) is one panel of 4 registers, so each
 * stored weight's index and value are read once, not once per 32-vector panel, and its multiply-adds
 * fill 49 of 64 lanes; a panel at 32 vectors read the weights twice, the second pass for 17 vectors.
 * The loop is bound by its loads (about two a cycle on Zen 5), so the stored weights go 8 at a time:
 * their 8 values in one load, each broadcast by a permute (a shuffle unit, not a load port), their 8
 * indices in two 8-byte loads (four), shifted out on the integer units; each weight then costs only its
 * nreg panel loads. A row of L1-resident 32-vector panels in a loop: 67 -> 95 GMAC/s, 16 vectors 49 ->
 * 75 (one core of a Zen 5 EPYC). The weights keep their chains (k - kb[r] modulo chains), so the sums
 * are the same bits as one weight at a time. */
#define WEIGHTS_AT_ONCE 8
__attribute__((target("avx512f,avx2,fma,bmi2"), always_inline)) /* bmi2: shlx, one uop, for the index shift */
static inline void wide_rows(const Form *f, const int64_t *kb, const int64_t *ke, int first, const float *panel,
                             int shift, const float *bias, int relu, Py_ssize_t r0, Py_ssize_t r1, float *tile,
                             const int nreg, const int wide_index)
{
    const int chains = nreg <= 2 ? 4 : 2;
    const float *v = f->val.buf;
    const int32_t *i32 = f->idx.buf;
    const uint16_t *u16 = f->idx.buf;
    const __m512 zero = _mm512_setzero_ps();
    for (Py_ssize_t r = r0; r < r1; r++) {
        float *t = tile + (r - r0) * TILE_PITCH;
        int64_t k = kb[r - r0], e = ke[r - r0];
        __m512 a[4][4], b = _mm512_set1_ps(bias ? bias[r] : 0.f);
#pragma GCC unroll 4
        for (int c = 0; c < chains; c++)
#pragma GCC unroll 4
            for (int i = 0; i < nreg; i++) a[c][i] = c ? zero : first ? b : _mm512_load_ps(t + 16 * i);
        for (; k + WEIGHTS_AT_ONCE <= e; k += WEIGHTS_AT_ONCE) {
            const __m512 w8 = _mm512_castps256_ps512(_mm256_loadu_ps(v + k));
            uint64_t q[WEIGHTS_AT_ONCE / 2]; /* the indices, 4 (u16) or 2 (i32) to a load */
            memcpy(q, wide_index ? (const void *)(i32 + k) : (const void *)(u16 + k), wide_index ? 32 : 16);
#pragma GCC unroll 8
            for (int c = 0; c < WEIGHTS_AT_ONCE; c++) {
                const uint64_t at = wide_index ? (uint32_t)(q[c / 2] >> (32 * (c % 2)))
                                               : (uint16_t)(q[c / 4] >> (16 * (c % 4)));
                const float *x = panel + ((Py_ssize_t)at << shift);
                const __m512 w = _mm512_permutexvar_ps(_mm512_set1_epi32(c), w8);
#pragma GCC unroll 4
                for (int i = 0; i < nreg; i++)
                    a[c % chains][i] = _mm512_fmadd_ps(w, _mm512_load_ps(x + 16 * i), a[c % chains][i]);
            }
        }
        for (; k + chains <= e; k += chains)
#pragma GCC unroll 4
            for (int c = 0; c < chains; c++) {
                const float *x = panel + ((Py_ssize_t)(wide_index ? i32[k + c] : u16[k + c]) << shift);
                __m512 w = _mm512_set1_ps(v[k + c]);
#pragma GCC unroll 4
                for (int i = 0; i < nreg; i++) a[c][i] = _mm512_fmadd_ps(w, _mm512_load_ps(x + 16 * i), a[c][i]);
            }
        for (; k < e; k++) {
            const float *x = panel + ((Py_ssize_t)(wide_index ? i32[k] : u16[k]) << shift);
            __m512 w = _mm512_set1_ps(v[k]);
#pragma GCC unroll 4
            for (int i = 0; i < nreg; i++) a[0][i] = _mm512_fmadd_ps(w, _mm512_load_ps(x + 16 * i), a[0][i]);
        }
#pragma GCC unroll 4
        for (int i = 0; i < nreg; i++) {
            __m512 sum = chains == 4 ? _mm512_add_ps(_mm512_add_ps(a[0][i], a[1][i]), _mm512_add_ps(a[2][i], a[3][i]))
                                     : _mm512_add_ps(a[0][i], a[1][i]);
            _mm512_store_ps(t + 16 * i, relu ? _mm512_max_ps(zero, sum) : sum); /* NaN stays NaN */
        }
    }
}

/* Rows [r0, r1) of W over a panel whose rows are 1 << shift floats apart, its first nreg * 16
 * vectors: as panel_rows_avx2. */
__attribute__((target("avx512f,avx2,fma,bmi2")))
static void panel_rows_avx512(const Form *f, const int64_t *kb, const int64_t *ke, int first, const float *panel,
                              int shift, int nreg, const float *bias, int relu, Py_ssize_t r0, Py_ssize_t r1,
                              float *tile)
{
#define WIDE_ROWS(nreg) \
    f->wide ? wide_rows(f, kb, ke, first, panel, shift, bias, relu, r0, r1, tile, nreg, 1) \
            : wide_rows(f, kb, ke, first, panel, shift, bias, relu, r0, r1, tile, nreg, 0)
    switch (nreg) {
    case 1: WIDE_ROWS(1); break;
    case 2: WIDE_ROWS(2); break;
    case 3: WIDE_ROWS(3); break;
    default: WIDE_ROWS(4);
    }
#undef WIDE_ROWS
}

__attribute__((target("avx2,fma")))
static void panel_rows_avx2(const Form *f, const int64_t *kb, const int64_t *ke, int first, const float *panel,
                            Py_ssize_t stride, Py_ssize_t width, const float *bias, int relu, Py_ssize_t r0,
                            Py_ssize_t r1, float *tile)
{
    const float *v = f->val.buf;
    const int32_t *i32 = f->idx.buf;
    const uint16_t *u16 = f->idx.buf;
    const int shift = stride == 8 ? 3 : 5;
    if (f->wide) { PANEL_ROWS_AVX2(i32) } else { PANEL_ROWS_AVX2(u16) }
}
#endif

/* y[j][r] = tile[r][j] for the tile's rows r < nr and columns j < jw, y's rows ldy floats apart. */
static void tile_to_rows_generic(const float *tile, float *y, Py_ssize_t ldy, Py_ssize_t jw, Py_ssize_t nr)
{
    for (Py_ssize_t j = 0; j < jw; j++)
        for (Py_ssize_t r = 0; r < nr; r++) y[j * ldy + r] = tile[r * TILE_PITCH + j];
}

#ifdef HAVE_AVX2_PATH
/* A full tile of PANEL_ROWS rows goes 8 x 8 blocks at a time. */
__attribute__((target("avx2,fma")))
static void tile_to_rows_avx2(const float *tile, float *y, Py_ssize_t ldy, Py_ssize_t jw, Py_ssize_t nr)
{
    Py_ssize_t j = 0;
    if (nr == 8)
        for (; j + 8 <= jw; j += 8) {
            __m256 b[8];
            for (int r = 0; r < 8; r++) b[r] = _mm256_load_ps(tile + r * TILE_PITCH + j);
            transpose8(b);
            for (int i = 0; i < 8; i++) _mm256_storeu_ps(y + (j + i) * ldy, b[i]);
        }
    tile_to_rows_generic(tile + j, y + j * ldy, ldy, jw - j, nr);
}

/* A whole row group's tile (ROW_GROUP = 16 rows) into y by 16 x 16 transposes: each vector y[j][r0, +16)
 * one store, where the 8 x 8 ones wrote each line in two halves a tile apart. ConvNeXt's [3136, 40] @
 * [40, 160] at 30%: the transposes took 16% of the product. */
__attribute__((target("avx512f,avx2,fma")))
static void group_to_rows_avx512(const float *tile, float *y, Py_ssize_t ldy, Py_ssize_t jw)
{
    for (Py_ssize_t j = 0; j < jw; j += 16) {
        __m512 b[16];
        for (int r = 0; r < 16; r++) b[r] = _mm512_load_ps(tile + r * TILE_PITCH + j);
        transpose16(b);
        const int n = jw - j < 16 ? (int)(jw - j) : 16;
        for (int i = 0; i < n; i++) _mm512_storeu_ps(y + (j + i) * ldy, b[i]);
    }
}
#endif

/* panel[c][j] = x[j][c] for the vectors j in [j_begin, jw) (x's rows cols floats apart), zeros for
 * j in [jw, width). Returns whether a value it copied is Inf or NaN. */
static int pack_rows_from(const float *x, Py_ssize_t cols, Py_ssize_t j_begin, Py_ssize_t jw, Py_ssize_t width,
                          float *panel, Py_ssize_t stride)
{
    int bad = 0;
    for (Py_ssize_t c = 0; c < cols; c++) {
        float *dst = panel + c * stride;
        for (Py_ssize_t j = j_begin; j < jw; j++) {
            dst[j] = x[j * cols + c];
            bad |= !isfinite(dst[j]);
        }
        for (Py_ssize_t j = jw > j_begin ? jw : j_begin; j < width; j++) dst[j] = 0.f;
    }
    return bad;
}

static int pack_rows_generic(const float *x, Py_ssize_t cols, Py_ssize_t jw, Py_ssize_t width, float *panel,
                             Py_ssize_t stride)
{
    return pack_rows_from(x, cols, 0, jw, width, panel, stride);
}

#ifdef HAVE_AVX2_PATH
/* Whole blocks of 8 vectors x 8 features by 8 x 8 transposes (a scalar gather cost as much as the
 * product on a 256x256 layer at 128 rows); the rest as above. Feature blocks outermost: one block's
 * transposes fill its 8 panel rows whole, and the x lines they read half stay in L1 for the next
 * block. Vector blocks outermost wrote every panel line in two halves a sweep apart, each sweep
 * (all features) larger than L1: 64 vectors of 768 features took 52 us against 19. */
__attribute__((target("avx2,fma")))
static int pack_rows_avx2(const float *x, Py_ssize_t cols, Py_ssize_t jw, Py_ssize_t width, float *panel,
                          Py_ssize_t stride)
{
    const Py_ssize_t j8 = jw - jw % 8, c8 = cols - cols % 8;
    const __m256i exponent = _mm256_set1_epi32((int)EXPONENT_BITS);
    __m256i most = _mm256_setzero_si256(); /* the largest exponent field seen: all ones for Inf or NaN */
    for (Py_ssize_t c = 0; c < c8; c += 8)
        for (Py_ssize_t j = 0; j < j8; j += 8) {
            __m256 b[8];
            for (int i = 0; i < 8; i++) {
                b[i] = _mm256_loadu_ps(x + (j + i) * cols + c);
                most = _mm256_max_epu32(most, _mm256_and_si256(_mm256_castps_si256(b[i]), exponent));
            }
            transpose8(b);
            for (int i = 0; i < 8; i++) _mm256_store_ps(panel + (c + i) * stride + j, b[i]);
        }
    int bad = !_mm256_testz_si256(_mm256_cmpeq_epi32(most, exponent), _mm256_cmpeq_epi32(most, exponent));
    for (Py_ssize_t c = c8; c < cols; c++)
        for (Py_ssize_t j = 0; j < j8; j++) {
            panel[c * stride + j] = x[j * cols + c];
            bad |= !isfinite(panel[c * stride + j]);
        }
    return pack_rows_from(x, cols, j8, jw, width, panel, stride) | bad;
}
#endif

/* One batched product, shared by the pool's threads. Where there are panels enough for every thread
 * (streamed), a thread packs one panel at a time into its own buffer and runs every row of W over it
 * while it is in L1/L2: x is read once, and the panels never go through memory. Otherwise (a few
 * panels, as a transformer's 128-197 tokens make) the panels are packed first, by ranges of panels, and
 * the units, ROW_GROUP rows of W over one panel each, split the threads by rows of W. Panels hold span
 * vectors (SPARSE_PANEL, or on the AVX-512 path WIDE_PANEL), stride floats a row (8 where n <= 8). */
typedef struct {
    const SparseMatrix *m;
    const float *x, *bias;
    float *y, *panels;
    Py_ssize_t n, stride, span, begin, end, row_groups;
    int by_rows, relu, wide;
    int nonfinite, failed; /* set by the threads: an Inf/NaN packed (by_rows); a buffer not allocated */
} PanelJob;

/* Panel p's vectors (jw) and the values its kernel reads a row: 8, SPARSE_PANEL, or on the AVX-512 path
 * whole registers of 16. */
static void panel_extent(const PanelJob *j, Py_ssize_t p, Py_ssize_t *jw, Py_ssize_t *width)
{
    Py_ssize_t j0 = p * j->span;
    *jw = j->n - j0 < j->span ? j->n - j0 : j->span;
    *width = j->wide ? (*jw + 15) / 16 * 16 : *jw <= 8 ? 8 : SPARSE_PANEL;
}

/* Rows [c0, c1) of a panel of x [cols, n]: vectors [j0, j0 + jw), zeros to width. */
static void copy_columns(const PanelJob *j, Py_ssize_t j0, Py_ssize_t jw, Py_ssize_t width, Py_ssize_t c0,
                         Py_ssize_t c1, float *panel)
{
    for (Py_ssize_t c = c0; c < c1; c++) {
        memcpy(panel + c * j->stride, j->x + c * j->n + j0, (size_t)jw * sizeof(float));
        memset(panel + c * j->stride + jw, 0, (size_t)(width - jw) * sizeof(float));
    }
}

/* Vectors [p * span, + span) as panel [cols][stride], zeros past n; notes an Inf/NaN among them. */
static void pack_panel(PanelJob *j, Py_ssize_t p, float *panel)
{
    Py_ssize_t cols = j->m->cols, stride = j->stride, j0 = p * j->span, jw, width;
    panel_extent(j, p, &jw, &width);
    if (j->by_rows) {
        if (DISPATCH(pack_rows, j->x + j0 * cols, cols, jw, width, panel, stride))
            __atomic_store_n(&j->nonfinite, 1, __ATOMIC_RELAXED);
    } else {
        copy_columns(j, j0, jw, width, 0, cols, panel);
    }
}

/* Panels [lo, hi) into the shared panels. */
static void pack_range(void *ctx, Py_ssize_t lo, Py_ssize_t hi)
{
    PanelJob *j = ctx;
    for (Py_ssize_t p = lo; p < hi; p++) pack_panel(j, p, j->panels + p * j->m->cols * j->stride);
}

/* Rows group * ROW_GROUP + begin of W (ROW_GROUP of them, or to end) over panel p0, one block of
 * columns at a time (see column_blocks: 32 KiB of the panel, so two COLUMN_BLOCKs where it is narrower
 * than WIDE_PANEL), the group's sums kept in tile between blocks: column blocks [blk0, blk1) (all: 0 and
 * COLUMN_BLOCKS(cols), or 1 where W has no blocks), the sums started from bias (NULL: zero), ReLU
 * after the last block where relu. */
#define ROW_GROUP 16 /* rows per unit: their sums (2 KiB) stay in L1 beside the panel's block */

/* Rows [r0, r1) of W in row group `group` of the job's range. */
static inline void group_rows(const PanelJob *j, Py_ssize_t group, Py_ssize_t *r0, Py_ssize_t *r1)
{
    *r0 = j->begin + group * ROW_GROUP;
    *r1 = j->end - *r0 < ROW_GROUP ? j->end : *r0 + ROW_GROUP;
}

/* Prefetches the stored weights (values and indices) of rows [r0, r1) of W in column blocks [blk, next).
 * Walked block by block, a row group reads ROW_GROUP short runs of the CSR arrays (at 30% of 128
 * columns, 38 values), a row apart: too many streams, too short, for the hardware prefetcher, so in a
 * model, where each layer's weights come from L3 or memory, every run waited on its first lines. The
 * 256->512 3x3 stride-2 layer to 7x7 at 30% (im2col + this product), caches flushed before each call:
 * 1.20-1.97 -> 0.91-0.99 ms (onnxruntime 0.82-1.06; in cache 0.46-0.63 either way); inside ResNet-18
 * at batch 1, 1 thread: 1.29 -> 0.76 ms (onnxruntime 0.74-0.79). A unit that takes all its columns in
 * one pass reads its rows' weights as one run, which the hardware prefetcher follows; there these
 * prefetches (a whole row group's, 144 lines at 25% of 256 columns, issued at once) only cost: one
 * core of an Intel Xeon (AVX-512), both builds in one process, calls in turn, minimum of 15: GPT-2's
 * [50257, 256] output layer at 25% on 128 rows 21.9 -> 16.8 ms, on 32 rows 5.4 -> 4.4, [1024, 256]
 * on 128 rows 0.42 -> 0.34. */
static void prefetch_blocks(const SparseMatrix *m, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t blk, Py_ssize_t next)
{
    const int64_t *p = m->csr.ptr.buf;
    const int32_t *cb = m->column_blocks;
    const Py_ssize_t nb = COLUMN_BLOCKS(m->cols), isize = m->csr.wide ? 4 : 2;
    const char *v = m->csr.val.buf, *idx = m->csr.idx.buf;
    for (Py_ssize_t r = r0; r < r1; r++) {
        const int64_t k0 = p[r] + cb[r * (nb + 1) + blk], k1 = p[r] + cb[r * (nb + 1) + next];
        for (uintptr_t a = (uintptr_t)(v + k0 * 4) & ~(uintptr_t)63; a < (uintptr_t)(v + k1 * 4); a += 64)
            __builtin_prefetch((const void *)a);
        for (uintptr_t a = (uintptr_t)(idx + k0 * isize) & ~(uintptr_t)63; a < (uintptr_t)(idx + k1 * isize); a += 64)
            __builtin_prefetch((const void *)a);
    }
}

/* The end of the block of step COLUMN_BLOCKs that starts at blk, within [.., blk1). */
static inline Py_ssize_t block_end(Py_ssize_t blk, Py_ssize_t step, Py_ssize_t blk1)
{
    return blk + step < blk1 ? blk + step : blk1;
}

static void unit_sums(const PanelJob *j, const float *panel, Py_ssize_t p0, Py_ssize_t group, float *tile,
                      Py_ssize_t blk0, Py_ssize_t blk1, const float *bias, int relu)
{
    const SparseMatrix *m = j->m;
    const int64_t *p = m->csr.ptr.buf;
    const int32_t *cb = m->column_blocks;
    Py_ssize_t stride = j->stride, nb = cb ? COLUMN_BLOCKS(m->cols) : 1;
    Py_ssize_t step = cb && stride < WIDE_PANEL ? 2 : 1; /* COLUMN_BLOCKs per block */
    int64_t kb[ROW_GROUP], ke[ROW_GROUP];
    Py_ssize_t r0, r1, jw, width;
    group_rows(j, group, &r0, &r1);
    panel_extent(j, p0, &jw, &width);
    for (Py_ssize_t blk = blk0; blk < blk1; blk += step) {
        Py_ssize_t next = block_end(blk, step, blk1);
        for (Py_ssize_t r = r0; r < r1; r++) {
            kb[r - r0] = cb ? p[r] + cb[r * (nb + 1) + blk] : p[r];
            ke[r - r0] = cb ? p[r] + cb[r * (nb + 1) + next] : p[r + 1];
        }
        int first = blk == blk0, last_relu = relu && next == blk1;
        if (cb && blk1 - blk0 > step) { /* the next block's weights, or past the last the next row group's first */
            Py_ssize_t g0, g1;
            if (next < blk1) {
                prefetch_blocks(m, r0, r1, next, block_end(next, step, blk1));
            } else if (r1 < j->end) {
                group_rows(j, group + 1, &g0, &g1);
                prefetch_blocks(m, g0, g1, blk0, block_end(blk0, step, blk1));
            }
        }
#ifdef HAVE_AVX2_PATH
        if (j->wide)
            panel_rows_avx512(&m->csr, kb, ke, first, panel, stride == WIDE_PANEL ? 6 : 5, (int)(width / 16),
                              bias, last_relu, r0, r1, tile);
        else
#endif
            DISPATCH(panel_rows, &m->csr, kb, ke, first, panel, stride, width, bias, last_relu, r0, r1, tile);
    }
}

/* A unit's finished tile (its rows' sums over panel p0) into y, in y's layout. */
static void unit_store(const PanelJob *j, Py_ssize_t p0, Py_ssize_t group, const float *tile)
{
    Py_ssize_t rows = j->m->rows, j0 = p0 * j->span, r0, r1, jw, width;
    group_rows(j, group, &r0, &r1);
    panel_extent(j, p0, &jw, &width);
#ifdef HAVE_AVX2_PATH
    if (j->by_rows && j->wide && r1 - r0 == ROW_GROUP) {
        group_to_rows_avx512(tile, j->y + j0 * rows + r0, rows, jw);
        return;
    }
#endif
    for (Py_ssize_t t0 = r0; t0 < r1; t0 += PANEL_ROWS) {
        Py_ssize_t t1 = r1 - t0 < PANEL_ROWS ? r1 : t0 + PANEL_ROWS;
        const float *t = tile + (t0 - r0) * TILE_PITCH;
        if (j->by_rows) {
            DISPATCH(tile_to_rows, t, j->y + j0 * rows + t0, rows, jw, t1 - t0);
        } else {
            for (Py_ssize_t r = t0; r < t1; r++)
                memcpy(j->y + r * j->n + j0, t + (r - t0) * TILE_PITCH, (size_t)jw * sizeof(float));
        }
    }
}

/* A unit: a row group over all of panel p0's columns, into y. */
static void panel_unit(const PanelJob *j, const float *panel, Py_ssize_t p0, Py_ssize_t group, float *tile)
{
    const Py_ssize_t nb = j->m->column_blocks ? COLUMN_BLOCKS(j->m->cols) : 1;
    unit_sums(j, panel, p0, group, tile, 0, nb, j->bias, j->relu);
    unit_store(j, p0, group, tile);
}

/* Units [lo, hi) of the shared panels: unit u is row group u % row_groups over panel u / row_groups
 * (panel-major: a panel stays in cache while W's rows stream by). Group-major order (each group's
 * weights over every panel in turn) wrote y in 4 x 32 row streams at once: GPT-2's [50257, 256]
 * output layer at 25% on 128 rows took 42 ms against 17. */
static void panel_range(void *ctx, Py_ssize_t lo, Py_ssize_t hi)
{
    const PanelJob *j = ctx;
    float tile[ROW_GROUP * TILE_PITCH] __attribute__((aligned(64)));
    for (Py_ssize_t u = lo; u < hi; u++) {
        Py_ssize_t p0 = u / j->row_groups;
        panel_unit(j, j->panels + p0 * j->m->cols * j->stride, p0, u % j->row_groups, tile);
    }
}

/* Panels [lo, hi), streamed: each packed into this range's own buffer, then every row group over it. */
static void stream_range(void *ctx, Py_ssize_t lo, Py_ssize_t hi)
{
    PanelJob *j = ctx;
    float tile[ROW_GROUP * TILE_PITCH] __attribute__((aligned(64)));
    float *raw = PyMem_RawMalloc((size_t)(j->m->cols * j->stride + 16) * sizeof(float));
    if (!raw) {
        __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    float *panel = (float *)(((uintptr_t)raw + 63) & ~(uintptr_t)63);
    for (Py_ssize_t p = lo; p < hi; p++) {
        pack_panel(j, p, panel);
        for (Py_ssize_t g = 0; g < j->row_groups; g++) panel_unit(j, panel, p, g, tile);
    }
    PyMem_RawFree(raw);
}

/* One panel of x [cols, n] (33-64 vectors: a 7x7 plane's im2col columns, 4608 x 49 in ResNet-18's last
 * stage) and a W of KSPLIT_PARTS * 2 column blocks or more go in KSPLIT_PARTS parts by columns: each
 * part packs its columns of the panel and makes its partial sums for every row of W (part 0's from the
 * bias), then the parts' sums are added in order, the ReLU applied, and the rows written to y. Split
 * so whatever the thread count: any count gives the same bits. Shared by rows of W, every thread read
 * all of the one packed panel, half of it (0.6 MB there) from the other core's cache, and one thread
 * packed it while the other waited. */
#define KSPLIT_PARTS 2

typedef struct {
    PanelJob *job;
    Py_ssize_t blocks; /* COLUMN_BLOCKS(cols) */
    float *partial;    /* [KSPLIT_PARTS][row_groups][ROW_GROUP * TILE_PITCH] */
} SplitJob;

static inline void part_blocks(const SplitJob *s, Py_ssize_t part, Py_ssize_t *b0, Py_ssize_t *b1)
{
    *b0 = part * s->blocks / KSPLIT_PARTS;
    *b1 = (part + 1) * s->blocks / KSPLIT_PARTS;
}

/* Parts [lo, hi): their columns of the panel. */
static void split_pack(void *ctx, Py_ssize_t lo, Py_ssize_t hi)
{
    const SplitJob *s = ctx;
    const PanelJob *j = s->job;
    Py_ssize_t jw, width, b0, b1;
    panel_extent(j, 0, &jw, &width);
    for (Py_ssize_t part = lo; part < hi; part++) {
        part_blocks(s, part, &b0, &b1);
        const Py_ssize_t c1 = b1 * COLUMN_BLOCK < j->m->cols ? b1 * COLUMN_BLOCK : j->m->cols;
        copy_columns(j, 0, jw, width, b0 * COLUMN_BLOCK, c1, j->panels);
    }
}

/* Units [lo, hi): unit u is row group u % row_groups over part u / row_groups's columns, its partial
 * sums kept (part-major: a thread's range is its own part's columns, which it packed). */
static void split_units(void *ctx, Py_ssize_t lo, Py_ssize_t hi)
{
    const SplitJob *s = ctx;
    const PanelJob *j = s->job;
    Py_ssize_t b0, b1;
    for (Py_ssize_t u = lo; u < hi; u++) {
        const Py_ssize_t part = u / j->row_groups;
        part_blocks(s, part, &b0, &b1);
        unit_sums(j, j->panels, 0, u % j->row_groups, s->partial + u * ROW_GROUP * TILE_PITCH, b0, b1,
                  part == 0 ? j->bias : NULL, 0);
    }
}

/* Row groups [lo, hi): the parts' sums added in order (then the ReLU, which keeps NaN), into y. */
static void split_finish(void *ctx, Py_ssize_t lo, Py_ssize_t hi)
{
    const SplitJob *s = ctx;
    const PanelJob *j = s->job;
    float tile[ROW_GROUP * TILE_PITCH] __attribute__((aligned(64)));
    for (Py_ssize_t g = lo; g < hi; g++) {
        const float *first = s->partial + g * ROW_GROUP * TILE_PITCH;
        for (Py_ssize_t i = 0; i < ROW_GROUP * TILE_PITCH; i++) {
            float v = first[i];
            for (Py_ssize_t part = 1; part < KSPLIT_PARTS; part++)
                v += first[(part * j->row_groups) * ROW_GROUP * TILE_PITCH + i];
            tile[i] = j->relu && v < 0.f ? 0.f : v;
        }
        unit_store(j, 0, g, tile);
    }
}

/* The split product (see KSPLIT_PARTS); -1 where its buffer could not be allocated. */
static int split_product(PanelJob *job, int threads)
{
    const Py_ssize_t tile_floats = ROW_GROUP * TILE_PITCH, groups = job->row_groups;
    float *raw = PyMem_RawMalloc((size_t)(job->m->cols * job->stride + KSPLIT_PARTS * groups * tile_floats + 32) *
                                 sizeof(float));
    if (!raw) return -1;
    job->panels = (float *)(((uintptr_t)raw + 63) & ~(uintptr_t)63);
    SplitJob s = {job, COLUMN_BLOCKS(job->m->cols), job->panels + (job->m->cols * job->stride + 15) / 16 * 16};
    Py_ssize_t per_unit = (job->m->csr.val.len / 4 / (job->m->rows + 1) + 1) * ROW_GROUP * WIDE_PANEL / KSPLIT_PARTS;
    parallel_for(split_pack, &s, KSPLIT_PARTS, 1, threads);
    parallel_for(split_units, &s, KSPLIT_PARTS * groups, RANGE_MIN_MACS / per_unit + 1, threads);
    parallel_for(split_finish, &s, groups, 1 + 4096 / (tile_floats + 1), threads);
    PyMem_RawFree(raw);
    return 0;
}

/* Panels per thread from which a product streams them: at fewer, splitting by rows of W keeps the
 * threads evenly loaded (the last panel may hold a few vectors). */
#define STREAM_PANELS 4

/* Rows [begin, end) of y = W @ x (+ bias, ReLU) for n vectors: x [cols, n] and y [rows, n], or with
 * by_rows x [n, cols] and y [n, rows], on up to threads threads. Returns -1 where the panels could not
 * be allocated, else whether by_rows x holds an Inf or NaN (0 otherwise). */
static int panel_product(const SparseMatrix *m, const float *x, float *y, Py_ssize_t n, int by_rows,
                         const float *bias, int relu, Py_ssize_t begin, Py_ssize_t end, int threads)
{
#ifdef HAVE_AVX2_PATH
    int wide = n > 8 && use_avx512();
#else
    int wide = 0;
#endif
    /* WIDE_PANEL where it is the only panel, where W is wide enough for SPARSE_PANEL's panels to go by column
     * blocks too, or where x is [cols, n] (a convolution's pixels: panels are row copies, nothing to
     * transpose, and each stored weight's index and value serve 4 registers, not 2: 0.82-0.85x the
     * time on 64-96 channels at 196-3136 pixels, 0.97-1.0 elsewhere). By rows, on 256 inputs at 128-197
     * vectors, whole 32-vector panels (32 KiB) took 0.85-0.9x the time of 64-vector ones in two blocks,
     * whose tiles go through memory between blocks. */
    Py_ssize_t span = wide && n > SPARSE_PANEL && (n <= WIDE_PANEL || m->cols > 2 * COLUMN_BLOCK || !by_rows)
                          ? WIDE_PANEL : SPARSE_PANEL;
    Py_ssize_t cols = m->cols, stride = n <= 8 ? 8 : span, count = (n + span - 1) / span;
    PanelJob job = {m, x, bias, y, NULL, n, stride, span, begin, end, (end - begin + ROW_GROUP - 1) / ROW_GROUP,
                    by_rows, relu, wide, 0, 0};
    if (count >= STREAM_PANELS * threads) {
        parallel_for(stream_range, &job, count, 1, threads);
        return job.failed ? -1 : job.nonfinite;
    }
    if (count == 1 && !by_rows && stride == WIDE_PANEL && m->column_blocks &&
        COLUMN_BLOCKS(cols) >= 2 * KSPLIT_PARTS)
        return split_product(&job, threads); /* by columns, see KSPLIT_PARTS (x counted by the caller) */
    /* At most span - 1 vectors of zeros past x's own: the caller bounds (cols + 8) * (n + WIDE_PANEL) */
    float *raw = PyMem_RawMalloc((size_t)(count * cols * stride + 16) * sizeof(float));
    if (!raw) return -1;
    /* 64-byte aligned: an AVX-512 load across two cache lines took 1.2-1.3x the time of the kernel */
    job.panels = (float *)(((uintptr_t)raw + 63) & ~(uintptr_t)63);
    Py_ssize_t per_unit = (m->csr.val.len / 4 / (m->rows + 1) + 1) * ROW_GROUP * span; /* multiply-adds */
    parallel_for(pack_range, &job, count, RANGE_MIN_VALUES / (cols * stride + 1) + 1, threads);
    parallel_for(panel_range, &job, count * job.row_groups, RANGE_MIN_MACS / per_unit + 1, threads);
    PyMem_RawFree(raw);
    return job.nonfinite;
}

/* matmat and matmat_rows: by_rows says the layout. */
static PyObject *batched_product(SparseMatrix *self, PyObject *args, PyObject *kwds, int by_rows)
{
    static char *rows_kwlist[] = {"x", "y", "bias", "relu", "begin", "end", "threads", NULL};
    static char *kwlist[] = {"xt", "yt", "bias", "relu", "begin", "end", "threads", NULL};
    const char *name = by_rows ? "matmat_rows" : "matmat";
    PyObject *xo, *yo, *bo = Py_None;
    int relu = 0, threads = 1;
    Py_ssize_t begin = 0, end = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|Opnni", by_rows ? rows_kwlist : kwlist, &xo, &yo, &bo, &relu,
                                     &begin, &end, &threads))
        return NULL;
    if (!self->csr.ptr.buf) {
        PyErr_Format(PyExc_ValueError, "%s: this matrix holds no CSR form", name);
        return NULL;
    }
    Py_buffer xb, yb, bb = {0};
    if (get_in_out(xo, &xb, by_rows ? "x" : "xt", yo, &yb, by_rows ? "y" : "yt", 1) < 0) return NULL;
    PyObject *result = NULL;
    if (bo != Py_None && get_array(bo, &bb, 'f', 4, 0, "bias") < 0) goto done;
    int feature_axis = by_rows ? 1 : 0;
    Py_ssize_t n = xb.ndim == 2 ? xb.shape[1 - feature_axis] : 0;
    if (xb.ndim != 2 || yb.ndim != 2 || xb.shape[feature_axis] != self->cols ||
        yb.shape[feature_axis] != self->rows || yb.shape[1 - feature_axis] != n ||
        (bb.buf && bb.len / 4 != self->rows)) {
        if (by_rows)
            PyErr_Format(PyExc_ValueError, "%s: x must be [n, %zd], y [n, %zd] and bias [%zd]", name, self->cols,
                         self->rows, self->rows);
        else
            PyErr_Format(PyExc_ValueError, "%s: xt must be [%zd, n], yt [%zd, n] and bias [%zd]", name, self->cols,
                         self->rows, self->rows);
        goto done;
    }
    if (end < 0) end = self->rows;
    if (begin < 0 || begin > end || end > self->rows) {
        PyErr_Format(PyExc_ValueError, "%s: range [%zd, %zd) is outside 0..%zd", name, begin, end, self->rows);
        goto done;
    }
    if (SIZE_PRODUCT(self->cols + 8, n + WIDE_PANEL) < 0) { /* the panels: x's values, rounded up to whole panels */
        PyErr_Format(PyExc_ValueError, "%s: %zd features of %zd vectors are too many", name, self->cols, n);
        goto done;
    }
    Py_ssize_t bad = 0;
    int status = -2; /* no product ran */
    Py_BEGIN_ALLOW_THREADS
    if (n > 0 && begin < end) status = panel_product(self, xb.buf, yb.buf, n, by_rows, bb.buf, relu, begin, end, threads);
    /* Once per product (begin 0); not where packing x by rows saw every value and found no Inf/NaN. */
    if (begin == 0 && !(by_rows && status == 0)) bad = count_nonfinite_fast(xb.buf, self->cols * n);
    Py_END_ALLOW_THREADS
    result = status == -1 ? PyErr_NoMemory() : PyLong_FromSsize_t(bad);
done:
    release_all(&xb, &yb, &bb);
    return result;
}

PyDoc_STRVAR(matmat_doc,
"matmat(xt, yt, bias=None, relu=False, begin=0, end=-1, threads=1) -> int\n\n"
"yt = W @ xt (+ bias per row) (then ReLU) for rows [begin, end) of yt: xt float32 [cols, n] and yt\n"
"float32 [rows, n], both C-contiguous (one row per feature: a convolution's im2col columns). Needs\n"
"the CSR form. Splits the product over up to `threads` threads of the native pool. Releases the GIL:\n"
"Python threads may also run disjoint row ranges at once. Returns the number of\n"
"Inf/NaN values in xt when begin is 0 (else 0), for the caller to give yt the NaNs pruned weights hide.");

static PyObject *SparseMatrix_matmat(SparseMatrix *self, PyObject *args, PyObject *kwds)
{
    return batched_product(self, args, kwds, 0);
}

PyDoc_STRVAR(matmat_rows_doc,
"matmat_rows(x, y, bias=None, relu=False, begin=0, end=-1, threads=1) -> int\n\n"
"y = x @ W.T (+ bias) (then ReLU) for columns [begin, end) of y: x float32 [n, cols] and y float32\n"
"[n, rows], both C-contiguous (one row per vector: a fully connected layer's activations). Otherwise\n"
"as matmat.");

static PyObject *SparseMatrix_matmat_rows(SparseMatrix *self, PyObject *args, PyObject *kwds)
{
    return batched_product(self, args, kwds, 1);
}

PyDoc_STRVAR(batched_simd_doc,
"batched_simd() -> str\n\n"
"The path the batched sparse products (matmat, matmat_rows) take on this CPU under the current\n"
"settings: 'avx512', 'avx2' or 'portable'. Their break-even densities against BLAS differ.");

static PyObject *batched_simd(PyObject *self, PyObject *unused)
{
#ifdef HAVE_AVX2_PATH
    if (use_avx512()) return PyUnicode_FromString("avx512");
    if (use_avx2()) return PyUnicode_FromString("avx2");
#endif
    return PyUnicode_FromString("portable");
}

static PyObject *SparseMatrix_forms(SparseMatrix *self, void *closure)
{
    return Py_BuildValue("(OO)", self->csr.ptr.buf ? Py_True : Py_False, self->csc.ptr.buf ? Py_True : Py_False);
}

static PyMethodDef SparseMatrix_methods[] = {
    {"matvec", (PyCFunction)(void (*)(void))SparseMatrix_matvec, METH_VARARGS | METH_KEYWORDS, matvec_doc},
    {"matmat", (PyCFunction)(void (*)(void))SparseMatrix_matmat, METH_VARARGS | METH_KEYWORDS, matmat_doc},
    {"matmat_rows", (PyCFunction)(void (*)(void))SparseMatrix_matmat_rows, METH_VARARGS | METH_KEYWORDS,
     matmat_rows_doc},
    {NULL},
};

static PyGetSetDef SparseMatrix_getset[] = {
    {"forms", (getter)SparseMatrix_forms, NULL, "(has CSR, has CSC)", NULL},
    {NULL},
};

static PyMemberDef SparseMatrix_members[] = {
    {"rows", T_PYSSIZET, offsetof(SparseMatrix, rows), READONLY, NULL},
    {"cols", T_PYSSIZET, offsetof(SparseMatrix, cols), READONLY, NULL},
    {NULL},
};

static PyTypeObject SparseMatrixType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "dcm.runtime.cpu._native.SparseMatrix",
    .tp_doc = PyDoc_STR("SparseMatrix(rows, cols, csr_indptr=None, csr_indices=None, csr_values=None, "
                        "csc_indptr=None, csc_indices=None, csc_values=None): a weight for matvec."),
    .tp_basicsize = sizeof(SparseMatrix),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)SparseMatrix_init,
    .tp_dealloc = (destructor)SparseMatrix_dealloc,
    .tp_methods = SparseMatrix_methods,
    .tp_getset = SparseMatrix_getset,
    .tp_members = SparseMatrix_members,
};


/* ------------------------------------------------------------------------------------------------
 * SparseConv: direct sparse convolution (Park et al., "Faster CNNs with direct sparse convolutions").
 *
 * Each stored weight w at (input channel ci, ki, kj) adds w * (a shifted window of input plane ci)
 * to its output plane. The work is the stored weights times the output pixels, with no column
 * matrix: a pruned layer does only its kept fraction of the dense work, and small layers skip
 * im2col's copies and BLAS's dispatch. The output plane is cut into tiles of TILE_SEGMENTS segments of 8
 * pixels (a segment lies in one output row); a tile's sums stay in registers while every stored
 * weight of the channel passes over it, so each weight costs one broadcast, TILE_SEGMENTS loads and TILE_SEGMENTS
 * multiply-adds, and the output is stored once. The input is copied into a zero-padded work plane
 * with SLACK spare values at its end, so that a segment may read past its row's end (those lanes are
 * never stored) without a masked load.
 * ------------------------------------------------------------------------------------------------ */

#define SEG 8   /* pixels per segment: one AVX2 register */
#define TILE_SEGMENTS 4  /* segments per tile: the sums that stay in registers */
#define SLACK (SEG * 4)

#define PLAN_KEY 10 /* what a weight plan depends on: AVX-512, copy size, plane, row, dilations, block, phases,
                       how the copies are shifted (SHIFT_*), copies per tile */
#define SHIFT_NONE 0    /* one copy, unaligned loads */
#define SHIFT_COLUMNS 1 /* a copy per column shift of the taps, mod 16 */
#define SHIFT_FLAT 2    /* a copy per offset of the taps in the flat plane, mod 16 */
#define MAX_PHASES 4 /* the AVX-512 path's largest horizontal stride (see SparseConv_run) */

typedef struct {
    PyObject_HEAD
    Py_ssize_t c_out, c_in_g, kh, kw, groups;
    Form w; /* CSR of W [c_out, c_in_g * kh * kw], indices int32 */
    PyObject *plan; /* bytes: the last input geometry's weight plan (see conv_weight_plan), or NULL */
    Py_ssize_t plan_key[PLAN_KEY];
} SparseConv;

static int SparseConv_init(SparseConv *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"c_out", "c_in_per_group", "kh", "kw", "groups", "indptr", "indices", "values", NULL};
    PyObject *po, *io, *vo;
    Py_ssize_t c_out, c_in_g, kh, kw, groups;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "nnnnnOOO", kwlist, &c_out, &c_in_g, &kh, &kw, &groups, &po, &io,
                                     &vo))
        return -1;
    if (self->w.ptr.buf) return refuse_reinit("SparseConv");
    if (c_out < 1 || c_in_g < 1 || kh < 1 || kw < 1 || groups < 1 || c_out % groups || kh > 4096 || kw > 4096 ||
        c_out > INT32_MAX || c_in_g > INT32_MAX / (kh * kw)) {
        PyErr_SetString(PyExc_ValueError, "SparseConv: sizes must be >= 1 (columns below 2^31, kernel sides at most "
                                          "4096) and c_out divisible by groups");
        return -1;
    }
    Form w = {0}; /* loaded aside, as in SparseMatrix_init */
    if (form_load(&w, po, io, vo, c_out, c_in_g * kh * kw, "conv") < 0) return -1;
    if (!w.wide) {
        PyErr_SetString(PyExc_TypeError, "SparseConv: indices must be int32");
        form_release(&w);
        return -1;
    }
    const int64_t *p = w.ptr.buf;
    const int32_t *idx = w.idx.buf;
    for (Py_ssize_t co = 0; co < c_out; co++) { /* the kernels cut each row into input-channel blocks */
        for (int64_t k = p[co] + 1; k < p[co + 1]; k++) {
            if (idx[k] < idx[k - 1]) {
                PyErr_Format(PyExc_ValueError, "SparseConv: indices of row %zd are not sorted", co);
                form_release(&w);
                return -1;
            }
        }
    }
    if (self->w.ptr.buf) {
        form_release(&w);
        return refuse_reinit("SparseConv");
    }
    self->c_out = c_out;
    self->c_in_g = c_in_g;
    self->kh = kh;
    self->kw = kw;
    self->groups = groups;
    self->w = w;
    return 0;
}

static void SparseConv_dealloc(SparseConv *self)
{
    Py_XDECREF(self->plan);
    form_release(&self->w);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* A stored weight in the AVX-512 plan: its offset in the work buffer and its value, side by side so that
 * a tile's pass reads one stream. */
typedef struct {
    int32_t off;
    float val;
} WeightSlot;

typedef struct {
    Py_ssize_t hp, wp, oh, ow, sh, sw, plane; /* padded input plane (plus SLACK), output plane */
    Py_ssize_t segs;                           /* segments per output plane */
    Py_ssize_t *seg_in;                        /* per segment: its first input offset within a plane */
    Py_ssize_t *seg_out;                       /* per segment: its first output offset */
    int *seg_len;                              /* per segment: pixels, 1..SEG */
    uint32_t *seg_mask;                        /* AVX-512: per segment, the lanes it stores */
    int contiguous;                            /* segment t reads from t * WIDE_SEG (AVX-512) */
    int flat;                                  /* AVX-512: segments run across rows (see SparseConv_run) */
    Py_ssize_t per_row;                        /* segments per output row */
} ConvPlan;

/* One sample of SparseConv.run, shared by the pool's threads: each phase's ranges are disjoint
 * (input channels for the work planes, output channels for the sums). */
typedef struct {
    const SparseConv *self;
    const ConvPlan *g;
    const float *xs, *bias;
    float *work, *ys;
    const int32_t *offs;
    const WeightSlot *ws;
    const int64_t *blocks;
    const int *slot;
    Py_ssize_t nb, c, h, w, pt, pl, total, c0, c1, phases;
    /* AVX-512: each (tile, block of input channels) copies its input rows into a buffer of the thread's:
     * per copy, per_block channels of in_rows rows of wp values (ch_floats a channel, copy_floats a copy) */
    Py_ssize_t per_block, in_rows, ch_floats, copy_floats, buf_floats;
    int tiled; /* copies per (tile, block) in a thread's buffer; else in work, for all */
    int relu, wide, fast;
    int by_tiles; /* AVX-512: the sums' ranges are tiles of every channel in [c0, c1), not channels */
    Py_ssize_t bad; /* Inf/NaN inputs read, added atomically */
    int failed;     /* a range could not allocate its scratch */
    /* whole samples a thread (conv_samples_range): x and y, a sample's values in each, the work buffer's
     * floats (0 where tiled: no shared buffer) */
    const float *x;
    float *y;
    Py_ssize_t in_size, out_size, work_floats;
} ConvJob;

/* Output channels [c0, c1) of one sample, any stride: sums in a small array. */
static void conv_channels_generic(const SparseConv *self, const ConvPlan *g, const float *xs, float *ys,
                                  const int32_t *offs, const float *bias, int relu, Py_ssize_t c0, Py_ssize_t c1)
{
    const int64_t *p = self->w.ptr.buf;
    const float *v = self->w.val.buf;
    Py_ssize_t per_group = self->c_out / self->groups, pixels = g->oh * g->ow;
    for (Py_ssize_t co = c0; co < c1; co++) {
        const float *xg = xs + (co / per_group) * self->c_in_g * g->plane;
        float b = bias ? bias[co] : 0.f;
        for (Py_ssize_t t = 0; t < g->segs; t++) {
            float acc[SEG];
            for (int i = 0; i < SEG; i++) acc[i] = b;
            const float *xt = xg + g->seg_in[t];
            for (int64_t k = p[co]; k < p[co + 1]; k++) {
                const float *xk = xt + offs[k];
                float w = v[k];
                for (int i = 0; i < SEG; i++) acc[i] += w * xk[i * g->sw];
            }
            float *yt = ys + co * pixels + g->seg_out[t];
            for (int i = 0; i < g->seg_len[t]; i++) yt[i] = relu && acc[i] < 0.f ? 0.f : acc[i];
        }
    }
}

#ifdef HAVE_AVX2_PATH

__attribute__((target("avx2,fma")))
static inline void store_segment(float *yt, __m256 acc, int len, int relu)
{
    if (relu) acc = _mm256_max_ps(_mm256_setzero_ps(), acc); /* NaN stays NaN: maxps returns its second operand */
    if (len == SEG) {
        _mm256_storeu_ps(yt, acc);
    } else {
        float tmp[SEG];
        _mm256_storeu_ps(tmp, acc);
        memcpy(yt, tmp, len * sizeof(float));
    }
}

/* Unit horizontal stride, AVX2 + FMA: TILE_SEGMENTS segments in registers at a time. */
__attribute__((target("avx2,fma")))
static void conv_channels_avx2(const SparseConv *self, const ConvPlan *g, const float *xs, float *ys,
                               const int32_t *offs, const float *bias, int relu, Py_ssize_t c0, Py_ssize_t c1)
{
    const int64_t *p = self->w.ptr.buf;
    const float *v = self->w.val.buf;
    Py_ssize_t per_group = self->c_out / self->groups, pixels = g->oh * g->ow;
    for (Py_ssize_t co = c0; co < c1; co++) {
        const float *xg = xs + (co / per_group) * self->c_in_g * g->plane;
        float *yc = ys + co * pixels;
        __m256 b = _mm256_set1_ps(bias ? bias[co] : 0.f);
        int64_t k0 = p[co], k1 = p[co + 1];
        Py_ssize_t t = 0;
        for (; t + TILE_SEGMENTS <= g->segs; t += TILE_SEGMENTS) {
            __m256 a0 = b, a1 = b, a2 = b, a3 = b;
            const float *x0 = xg + g->seg_in[t], *x1 = xg + g->seg_in[t + 1];
            const float *x2 = xg + g->seg_in[t + 2], *x3 = xg + g->seg_in[t + 3];
            for (int64_t k = k0; k < k1; k++) {
                __m256 w = _mm256_broadcast_ss(v + k);
                Py_ssize_t o = offs[k];
                a0 = _mm256_fmadd_ps(w, _mm256_loadu_ps(x0 + o), a0);
                a1 = _mm256_fmadd_ps(w, _mm256_loadu_ps(x1 + o), a1);
                a2 = _mm256_fmadd_ps(w, _mm256_loadu_ps(x2 + o), a2);
                a3 = _mm256_fmadd_ps(w, _mm256_loadu_ps(x3 + o), a3);
            }
            store_segment(yc + g->seg_out[t], a0, g->seg_len[t], relu);
            store_segment(yc + g->seg_out[t + 1], a1, g->seg_len[t + 1], relu);
            store_segment(yc + g->seg_out[t + 2], a2, g->seg_len[t + 2], relu);
            store_segment(yc + g->seg_out[t + 3], a3, g->seg_len[t + 3], relu);
        }
        if (t < g->segs) { /* the last 1-3 segments in one pass (7x7 planes: 3 of 7), a missing one repeating
                              the last (its sums are not stored): one FMA chain each, not one in all */
            Py_ssize_t last = g->segs - 1, t1 = t + 1 < last ? t + 1 : last, t2 = t + 2 < last ? t + 2 : last;
            __m256 a0 = b, a1 = b, a2 = b;
            const float *x0 = xg + g->seg_in[t], *x1 = xg + g->seg_in[t1], *x2 = xg + g->seg_in[t2];
            for (int64_t k = k0; k < k1; k++) {
                __m256 w = _mm256_broadcast_ss(v + k);
                Py_ssize_t o = offs[k];
                a0 = _mm256_fmadd_ps(w, _mm256_loadu_ps(x0 + o), a0);
                a1 = _mm256_fmadd_ps(w, _mm256_loadu_ps(x1 + o), a1);
                a2 = _mm256_fmadd_ps(w, _mm256_loadu_ps(x2 + o), a2);
            }
            store_segment(yc + g->seg_out[t], a0, g->seg_len[t], relu);
            if (t + 1 <= last) store_segment(yc + g->seg_out[t + 1], a1, g->seg_len[t + 1], relu);
            if (t + 2 <= last) store_segment(yc + g->seg_out[t + 2], a2, g->seg_len[t + 2], relu);
        }
    }
}

#endif /* HAVE_AVX2_PATH: the sizes below are used by the portable paths too */

/* AVX-512: segments of WIDE_SEG pixels, up to WIDE_TILE of them in registers while stored weights
 * pass over them, so each weight costs one broadcast and WIDE_TILE multiply-adds that read their
 * input straight from memory: enough independent sums to keep both FMA units busy, where 4 AVX2 sums
 * left them waiting on the FMA latency. The input channels are cut into blocks whose rows under one
 * tile (all copies) take about WIDE_BLOCK_BYTES, and every output channel takes one block's weights
 * over the tile before the next block: without the cut a 64-channel 56x56 layer read each tile's
 * input from L2 once per output channel, and the loads, not the multiply-adds, set its time. A plane
 * of one tile is cut too (256 channels at 14x14, 30%: 1.22 -> 0.78 ms). Between blocks a channel's
 * sums wait in the thread's aligned scratch (one tile of each of its channels), in the same order as
 * one pass, so the result is the same; only the last block reads the row ends and masks to store
 * into y. With that scratch, blocks of 24-48 KiB (L1 is 48 KiB here) beat 64 KiB by 5-15% on 64ch
 * 56x56, 128ch 28x28 and 32ch 128x128 at 30%, where with partial sums in y (masked loads and stores
 * each block) 64 KiB had been fastest. Tiles of 4 and 8 segments take a plane's last ones. The
 * weights of each (block, output channel) are stored block-major with their offsets beside them, so
 * a block's pass over all channels reads one sequential stream. */
#define WIDE_SEG 16
#define WIDE_TILE 16
#define WIDE_BLOCK_BYTES 49152
#define TILE_SPLIT_MIN_BYTES (2 << 20) /* a work buffer past this goes to threads by tiles (SparseConv_run) */

#ifdef HAVE_AVX2_PATH

__attribute__((target("avx512f,avx2,fma"), always_inline))
static inline void conv_tile_avx512(const ConvPlan *g, const float *xg, Py_ssize_t base, float *yc, float *part,
                                    const WeightSlot *ws, int64_t k0, int64_t k1, float bias, int first, int final,
                                    int relu, Py_ssize_t t, const int count, const int contiguous, const int per_row)
{
    __m512 a[WIDE_TILE];
    const float *xt[WIDE_TILE];
    Py_ssize_t last = g->segs - 1;
#pragma GCC unroll 16
    for (int i = 0; i < count; i++) {
        if (!contiguous && (!per_row || i % per_row == 0))
            xt[i] = xg + (g->seg_in[t + i <= last ? t + i : last] - base); /* past the plane: repeat the last */
        a[i] = first ? _mm512_set1_ps(bias) : _mm512_load_ps(part + i * WIDE_SEG);
    }
    if (contiguous) xt[0] = xg + (g->seg_in[t] - base);
/* segment i's input for the weight at offset o. contiguous: one base register for all, not one each;
   per_row: one per output row of the tile */
#define TILE_INPUT(i, o) \
    _mm512_loadu_ps((contiguous ? xt[0] + (i) * WIDE_SEG \
                     : per_row ? xt[(i) / per_row * per_row] + (i) % per_row * WIDE_SEG : xt[i]) + (o))
    int64_t k = k0;
    if (count <= 4) { /* 4 sums wait on the multiply-add's latency: 2 weights at a time into 8 (7x7 planes) */
        __m512 b[4];
#pragma GCC unroll 4
        for (int i = 0; i < count; i++) b[i] = _mm512_setzero_ps();
        for (; k + 1 < k1; k += 2) {
            __m512 w0 = _mm512_set1_ps(ws[k].val), w1 = _mm512_set1_ps(ws[k + 1].val);
            Py_ssize_t o0 = ws[k].off, o1 = ws[k + 1].off;
#pragma GCC unroll 4
            for (int i = 0; i < count; i++) {
                a[i] = _mm512_fmadd_ps(w0, TILE_INPUT(i, o0), a[i]);
                b[i] = _mm512_fmadd_ps(w1, TILE_INPUT(i, o1), b[i]);
            }
        }
#pragma GCC unroll 4
        for (int i = 0; i < count; i++) a[i] = _mm512_add_ps(a[i], b[i]);
    }
    for (; k < k1; k++) {
        __m512 w = _mm512_set1_ps(ws[k].val);
        Py_ssize_t o = ws[k].off;
#pragma GCC unroll 16
        for (int i = 0; i < count; i++) a[i] = _mm512_fmadd_ps(w, TILE_INPUT(i, o), a[i]);
    }
#undef TILE_INPUT
    if (!final) { /* the partial sums wait in the thread's aligned scratch, not in y: no masks, no row ends */
#pragma GCC unroll 16
        for (int i = 0; i < count; i++) _mm512_store_ps(part + i * WIDE_SEG, a[i]);
        return;
    }
#pragma GCC unroll 16
    for (int i = 0; i < count; i++) { /* NaN stays NaN through the ReLU, as in AVX2 */
        if (t + i > last) break;
        __mmask16 m = (__mmask16)g->seg_mask[t + i];
        __m512 v = relu ? _mm512_max_ps(_mm512_setzero_ps(), a[i]) : a[i];
        if (g->flat) { /* the lanes of whole output columns, packed: they are adjacent in y */
            v = _mm512_maskz_compress_ps(m, v);
            m = (__mmask16)((1u << __builtin_popcount(m)) - 1);
        }
        _mm512_mask_storeu_ps(yc + g->seg_out[t + i], m, v);
    }
}

/* Row R of the zero-padded plane of input channel xc [h, w], its columns p + (i + s) * sw for i in [0, wp):
 * one row of the copy for phase p and shift s (see SparseConv_run). */
__attribute__((target("avx512f,avx2,fma"), always_inline))
static inline void fill_row(float *dst, const float *xc, Py_ssize_t R, const ConvJob *j, Py_ssize_t wp, Py_ssize_t p,
                            Py_ssize_t s)
{
    Py_ssize_t sw = j->phases, r = R - j->pt;
    if (r < 0 || r >= j->h) {
        memset(dst, 0, (size_t)wp * sizeof(float));
        return;
    }
    const float *xr = xc + r * j->w;
    Py_ssize_t first = p + s * sw - j->pl; /* x's column for i = 0 */
    /* src[k] = x[first + k], masked to [0, w): the address may lie outside x, the masked-off lanes are not read */
    const float *src = (const float *)((uintptr_t)xr + (uintptr_t)(first * 4));
    if (wp % WIDE_SEG == 0 && sw == 1) { /* src[i], i in [lo, hi), zeros around */
        Py_ssize_t lo = -first, hi = j->w - first;
        for (Py_ssize_t i = 0; i < wp; i += WIDE_SEG) {
            __m512 v;
            if (i >= lo && i + WIDE_SEG <= hi) {
                v = _mm512_loadu_ps(src + i);
            } else { /* the row's ends */
                Py_ssize_t a = lo - i < 0 ? 0 : lo - i > WIDE_SEG ? WIDE_SEG : lo - i;
                Py_ssize_t b = hi - i < a ? a : hi - i > WIDE_SEG ? WIDE_SEG : hi - i;
                v = _mm512_maskz_loadu_ps((__mmask16)(((1u << b) - 1) & ~((1u << a) - 1)), src + i);
            }
            _mm512_store_ps(dst + i, v);
        }
        return;
    }
    if (wp % WIDE_SEG == 0 && sw == 2) { /* src[2 i]: 32 columns a run of 16, every other one */
        const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
        for (Py_ssize_t i = 0; i < wp; i += WIDE_SEG) {
            Py_ssize_t c = first + 2 * i, a = -c < 0 ? 0 : -c > 32 ? 32 : -c;
            Py_ssize_t b = j->w - c < a ? a : j->w - c > 32 ? 32 : j->w - c;
            uint32_t m = (uint32_t)((b == 32 ? ~0ull : (1ull << b) - 1) & ~((1ull << a) - 1));
            __m512 lo = load16((__mmask16)m, src + 2 * i), hi = load16((__mmask16)(m >> 16), src + 2 * i + WIDE_SEG);
            _mm512_store_ps(dst + i, _mm512_permutex2var_ps(lo, even, hi));
        }
        return;
    }
    /* column first + i * sw of x lies in [0, w) for i in [i0, i1) */
    Py_ssize_t i0 = first >= 0 ? 0 : (-first + sw - 1) / sw, i1 = j->w - first > 0 ? (j->w - first + sw - 1) / sw : 0;
    i0 = i0 > wp ? wp : i0;
    i1 = i1 > wp ? wp : i1 < i0 ? i0 : i1;
    memset(dst, 0, (size_t)i0 * sizeof(float));
    for (Py_ssize_t i = i0; i < i1; i++) dst[i] = xr[first + i * sw];
    memset(dst + i1, 0, (size_t)(wp - i1) * sizeof(float));
}

/* Input channels [ci0, ci1) of the sample under one tile, padded rows [R0, R0 + in_rows), into buf: every
 * copy the weights read (slot), per_block channels each; zeros where a block has fewer channels. Flat
 * (unit strides), the rows of each channel from `lead` on in copy 0, and copy slot[s] is copy 0 moved s
 * values left, across the channels' rows. */
__attribute__((target("avx512f,avx2,fma")))
static void fill_block(const ConvJob *j, float *buf, Py_ssize_t R0, Py_ssize_t lead, Py_ssize_t ci0, Py_ssize_t ci1)
{
    Py_ssize_t wp = j->g->wp, hw = j->h * j->w;
    if (j->g->flat) {
        for (Py_ssize_t ci = ci0; ci < ci1; ci++)
            for (Py_ssize_t i = 0; i < j->in_rows; i++)
                fill_row(buf + (ci - ci0) * j->ch_floats + lead + i * wp, j->xs + ci * hw, R0 + i, j, wp, 0, 0);
        if (ci1 - ci0 < j->per_block)
            memset(buf + (ci1 - ci0) * j->ch_floats, 0, (size_t)((j->per_block - (ci1 - ci0)) * j->ch_floats) * 4);
        for (int s = 1; s < WIDE_SEG; s++)
            if (j->slot[s] > 0)
                memcpy(buf + j->slot[s] * j->copy_floats, buf + s, (size_t)(j->copy_floats - s) * sizeof(float));
        return;
    }
    for (Py_ssize_t q = 0; q < j->phases * WIDE_SEG; q++) { /* q: phase * WIDE_SEG + shift */
        if (j->slot[q] < 0) continue;
        float *dst = buf + j->slot[q] * j->copy_floats;
        for (Py_ssize_t ci = ci0; ci < ci1; ci++)
            for (Py_ssize_t i = 0; i < j->in_rows; i++)
                fill_row(dst + (ci - ci0) * j->ch_floats + i * wp, j->xs + ci * hw, R0 + i, j, wp, q / WIDE_SEG,
                         q % WIDE_SEG);
        if (ci1 - ci0 < j->per_block)
            memset(dst + (ci1 - ci0) * j->ch_floats, 0, (size_t)((j->per_block - (ci1 - ci0)) * j->ch_floats) * 4);
    }
}

/* Unit horizontal stride with AVX-512 (or its phases), output channels [c0, c1) over the tiles [tile0,
 * tile1): for each tile, each group and block of input channels, that block's rows under the tile are
 * copied into buf (fill_block: in L1 when the channels' weights read them), then every output channel of
 * the group adds the block's weights. blocks holds, block-major, the bounds of each (block, output
 * channel)'s stored weights in ws. part: scratch for (c1 - c0) channels' partial sums over one tile,
 * 64-byte aligned. */
__attribute__((target("avx512f,avx2,fma")))
static void conv_channels_avx512(const ConvJob *j, Py_ssize_t c0, Py_ssize_t c1, Py_ssize_t tile0, Py_ssize_t tile1,
                                 float *part, float *buf)
{
    const SparseConv *self = j->self;
    const ConvPlan *g = j->g;
    const WeightSlot *ws = j->ws;
    Py_ssize_t nb = j->nb, per_group = self->c_out / self->groups, pixels = g->oh * g->ow;
    Py_ssize_t end = tile1 * WIDE_TILE < g->segs ? tile1 * WIDE_TILE : g->segs;
    for (Py_ssize_t t = tile0 * WIDE_TILE; t < end; t += WIDE_TILE) {
        Py_ssize_t left = g->segs - t;
        Py_ssize_t R0 = (g->flat ? t * WIDE_SEG / g->wp : t / g->per_row) * g->sh;
        Py_ssize_t lead = g->flat ? R0 * g->wp % WIDE_SEG : 0; /* flat: where row R0 starts in a channel's copy */
        Py_ssize_t base = j->tiled ? R0 * g->wp - lead : 0;  /* tiled: its first padded row, less the lead */
        for (Py_ssize_t grp = c0 / per_group; grp * per_group < c1; grp++) {
            Py_ssize_t g0 = grp * per_group > c0 ? grp * per_group : c0;
            Py_ssize_t g1 = (grp + 1) * per_group < c1 ? (grp + 1) * per_group : c1;
            for (Py_ssize_t b = 0; b < nb; b++) {
                Py_ssize_t ci0 = grp * self->c_in_g + b * j->per_block;
                Py_ssize_t ci1 = ci0 + j->per_block < (grp + 1) * self->c_in_g ? ci0 + j->per_block
                                                                               : (grp + 1) * self->c_in_g;
                const float *xg = buf;
                if (j->tiled)
                    fill_block(j, buf, R0, lead, ci0, ci1);
                else
                    xg = j->work + grp * self->c_in_g * g->plane;
                for (Py_ssize_t co = g0; co < g1; co++) {
                    const int64_t *kb = j->blocks + b * self->c_out + co; /* block-major: [kb[0], kb[1]) */
                    int first = b == 0, final = b == nb - 1;
                    if (kb[0] == kb[1] && !first && !final) continue; /* nothing to add */
                    float *yc = j->ys + co * pixels, *pc = part + (co - c0) * WIDE_TILE * WIDE_SEG;
                    float bc = j->bias ? j->bias[co] : 0.f;
                    int size = left > 8 ? WIDE_TILE : left > 4 ? 8 : 4;
#define CONV_TILE(count, contiguous, per_row) \
    conv_tile_avx512(g, xg, base, yc, pc, ws, kb[0], kb[1], bc, first, final, j->relu, t, count, contiguous, per_row)
                    if (g->contiguous) {
                        if (size == WIDE_TILE) CONV_TILE(WIDE_TILE, 1, 0); else if (size == 8) CONV_TILE(8, 1, 0); else CONV_TILE(4, 1, 0);
                    } else if (left >= WIDE_TILE && g->per_row <= WIDE_TILE && WIDE_TILE % g->per_row == 0) {
                        /* whole rows of segments: one pointer per row, not one per segment, where padded rows
                           are wider than their segments (2^k widths; 64->32 at 128x128: 0.91x the time) */
                        switch (g->per_row) {
                        case 1: CONV_TILE(WIDE_TILE, 0, 1); break;
                        case 2: CONV_TILE(WIDE_TILE, 0, 2); break;
                        case 4: CONV_TILE(WIDE_TILE, 0, 4); break;
                        case 8: CONV_TILE(WIDE_TILE, 0, 8); break;
                        default: CONV_TILE(WIDE_TILE, 0, 16);
                        }
                    } else {
                        if (size == WIDE_TILE) CONV_TILE(WIDE_TILE, 0, 0); else if (size == 8) CONV_TILE(8, 0, 0); else CONV_TILE(4, 0, 0);
                    }
#undef CONV_TILE
                }
            }
        }
    }
}
#endif

PyDoc_STRVAR(conv_doc,
"run(x, y, shape, strides, dilations, pads, bias=None, relu=False, begin=0, end=-1, c_begin=0, c_end=-1,\n"
"    threads=1)\n\n"
"y = relu(conv(x, W) + bias) for samples [begin, end) and output channels [c_begin, c_end).\n"
"x float32 [N, C_in, H, W] and y float32 [N, C_out, OH, OW], both C-contiguous; shape =\n"
"(N, C_in, H, W), strides and dilations = (h, w), pads = (top, left, bottom, right), bias float32\n"
"[C_out] or None. Runs on up to `threads` threads of the native pool: whole samples a thread for as\n"
"many samples as divide evenly among them, each further sample split (by input channels, then output\n"
"channels). Releases the GIL: Python threads may also run disjoint ranges at once. Returns the number\n"
"of Inf/NaN values in the samples read, for the caller to give y the NaNs that pruned weights hide.");

/* The weights' places in the work buffer for one input geometry (key: see PLAN_KEY), as bytes. Portable
 * and AVX2 paths: per stored weight (CSR order) its offset from a segment's first input value, int32.
 * AVX-512: nb * c_out + 1 bounds, then the weights as WeightSlots ordered by (block of input channels,
 * output channel), the weights of block b and channel co at [bounds[b * c_out + co], + 1). O(weights) with divisions: kept for
 * the next call with the same geometry (every call of a layer in a session), so that a 512-channel
 * layer's 700k weights are not placed again on each run. Called with the GIL held; a call that
 * replaces the kept plan while another thread's call reads the old one is safe, as each call holds
 * its own reference. Returns a new reference, or NULL with an exception set. */
static PyObject *conv_weight_plan(SparseConv *self, const Py_ssize_t *key, const int *slot, Py_ssize_t nb)
{
    if (self->plan && !memcmp(key, self->plan_key, sizeof(self->plan_key))) {
        Py_INCREF(self->plan);
        return self->plan;
    }
    Py_ssize_t wide = key[0], total = key[1], plane = key[2], wp = key[3], dh = key[4], dw = key[5];
    Py_ssize_t per_block = key[6], phases = key[7], shifts = key[8], tiled = key[9], nnz = self->w.val.len / 4;
    Py_ssize_t kk = self->kh * self->kw;
    Py_ssize_t bounds = wide ? SIZE_PRODUCT(self->c_out, nb) : 0;
    bounds = bounds < 0 || bounds == PY_SSIZE_T_MAX ? -1 : bounds + wide; /* + 1: the last end */
    if (bounds < 0 || SIZE_PRODUCT(bounds + nnz, 8) < 0) {
        PyErr_SetString(PyExc_ValueError, "SparseConv.run: too many input channel blocks");
        return NULL;
    }
    PyObject *plan = PyBytes_FromStringAndSize(NULL, bounds * 8 + nnz * (wide ? sizeof(WeightSlot) : 4));
    if (!plan) return NULL;
    int64_t *blocks = (int64_t *)PyBytes_AS_STRING(plan);
    int32_t *offs = (int32_t *)(blocks + bounds); /* below 2^31: run bounds the work buffer */
    WeightSlot *ws = (WeightSlot *)(blocks + bounds);
    const int32_t *idx = self->w.idx.buf;
    const int64_t *p = self->w.ptr.buf;
    const float *v = self->w.val.buf;
    if (wide) { /* block-major: the weights of (block b, channel co) at [blocks[b * c_out + co], + 1) */
        memset(blocks, 0, (size_t)bounds * 8);
        for (Py_ssize_t co = 0; co < self->c_out; co++)
            for (int64_t k = p[co]; k < p[co + 1]; k++) blocks[idx[k] / kk / per_block * self->c_out + co + 1]++;
        for (Py_ssize_t i = 1; i < bounds; i++) blocks[i] += blocks[i - 1];
    }
    for (Py_ssize_t co = 0; co < self->c_out; co++) {
        int64_t at = 0, block = -1;
        for (int64_t k = p[co]; k < p[co + 1]; k++) {
            uint32_t q = (uint32_t)idx[k], ci = q / (uint32_t)kk, tap = q - ci * (uint32_t)kk;
            uint32_t ki = tap / (uint32_t)self->kw, kj = tap - ki * (uint32_t)self->kw;
            Py_ssize_t phase = kj * dw % phases, col = kj * dw / phases;
            Py_ssize_t shift = shifts == SHIFT_COLUMNS ? col % WIDE_SEG
                               : shifts == SHIFT_FLAT  ? (ki * dh * wp + col) % WIDE_SEG : 0;
            Py_ssize_t at_ci = tiled ? ci % per_block : ci; /* within its block's copy of the tile's rows */
            int32_t off = (int32_t)(slot[phase * WIDE_SEG + shift] * total + at_ci * plane + ki * dh * wp + col - shift);
            if (!wide) {
                offs[k] = off;
                continue;
            }
            if ((int64_t)(ci / per_block) != block) { /* indices ascend within a row (checked at init) */
                block = ci / per_block;
                at = blocks[block * self->c_out + co];
            }
            ws[at].off = off;
            ws[at++].val = v[k];
        }
    }
    Py_XDECREF(self->plan);
    self->plan = plan;
    memcpy(self->plan_key, key, sizeof(self->plan_key));
    Py_INCREF(plan);
    return plan;
}

/* One input plane [h, w] into its zero-padded work plane [hp, wp] (then zeros to plane). */
static void pad_plane(float *dst, const float *src, Py_ssize_t h, Py_ssize_t w, Py_ssize_t pt, Py_ssize_t pl,
                      Py_ssize_t wp, Py_ssize_t plane)
{
    memset(dst, 0, (size_t)(pt * wp + pl) * sizeof(float));
    for (Py_ssize_t r = 0; r < h; r++) {
        float *row = dst + (r + pt) * wp + pl;
        memcpy(row, src + r * w, (size_t)w * sizeof(float));
        /* the rest of this row and the left padding of the next */
        memset(row + w, 0, (size_t)(r + 1 < h ? wp - w : plane - (r + pt) * wp - pl - w) * sizeof(float));
    }
}

/* Phase `phase` of one input plane [h, w] for a horizontal stride of `phases`: row r of the zero-padded
 * plane [hp, phases * wp], its columns phase, phase + phases, ..., as a row of wp values (then zeros
 * to plane). */
static void phase_plane(float *dst, const float *src, Py_ssize_t h, Py_ssize_t w, Py_ssize_t pt, Py_ssize_t pl,
                        Py_ssize_t phases, Py_ssize_t phase, Py_ssize_t hp, Py_ssize_t wp, Py_ssize_t plane)
{
    /* columns [i0, i1) of a phase row read inside the input row */
    Py_ssize_t i0 = pl > phase ? (pl - phase + phases - 1) / phases : 0;
    Py_ssize_t i1 = (w + pl - phase + phases - 1) / phases;
    i0 = i0 > wp ? wp : i0;
    i1 = i1 > wp ? wp : i1 < i0 ? i0 : i1;
    for (Py_ssize_t r = 0; r < hp; r++) {
        float *row = dst + r * wp;
        if (r < pt || r >= pt + h) {
            memset(row, 0, (size_t)wp * sizeof(float));
            continue;
        }
        const float *in = src + (r - pt) * w + phase - pl;
        memset(row, 0, (size_t)i0 * sizeof(float));
        for (Py_ssize_t i = i0; i < i1; i++) row[i] = in[i * phases];
        memset(row + i1, 0, (size_t)(wp - i1) * sizeof(float));
    }
    memset(dst + hp * wp, 0, (size_t)(plane - hp * wp) * sizeof(float));
}

/* Input channels [lo, hi): their zero-padded work planes, and their Inf/NaN count. */
static void conv_pad_range(void *ctx, Py_ssize_t lo, Py_ssize_t hi)
{
    ConvJob *j = ctx;
    Py_ssize_t hw = j->h * j->w, plane = j->g->plane;
    Py_ssize_t bad = count_nonfinite_fast(j->xs + lo * hw, (hi - lo) * hw);
    for (Py_ssize_t ch = lo; ch < hi; ch++) { /* every value written, the padding as zeros: no calloc */
        if (j->phases == 1) {
            pad_plane(j->work + ch * plane, j->xs + ch * hw, j->h, j->w, j->pt, j->pl, j->g->wp, plane);
            continue;
        }
        for (Py_ssize_t ph = 0; ph < j->phases; ph++) /* each phase's unshifted copy */
            if (j->slot[ph * WIDE_SEG] >= 0) /* a phase no tap reads (1 x 1, stride 2) has none */
                phase_plane(j->work + j->slot[ph * WIDE_SEG] * j->total + ch * plane, j->xs + ch * hw, j->h, j->w,
                            j->pt, j->pl, j->phases, ph, j->g->hp, j->g->wp, plane);
    }
    __atomic_fetch_add(&j->bad, bad, __ATOMIC_RELAXED);
}

/* Input channels [lo, hi): their Inf/NaN count (where the copies are made per tile). */
static void conv_count_range(void *ctx, Py_ssize_t lo, Py_ssize_t hi)
{
    ConvJob *j = ctx;
    Py_ssize_t hw = j->h * j->w;
    __atomic_fetch_add(&j->bad, count_nonfinite_fast(j->xs + lo * hw, (hi - lo) * hw), __ATOMIC_RELAXED);
}

/* Input channels [lo, hi) of the shifted copies (AVX-512): copy slot[phase * WIDE_SEG + i] holds the
 * phase's work planes moved i values left, zeros past the last plane. Reads the next channel's plane:
 * after every pad range. */
static void conv_copy_range(void *ctx, Py_ssize_t lo, Py_ssize_t hi)
{
    ConvJob *j = ctx;
    Py_ssize_t plane = j->g->plane, tail = hi == j->c;
    for (Py_ssize_t ph = 0; ph < j->phases; ph++) {
        if (j->slot[ph * WIDE_SEG] < 0) continue;
        const float *src = j->work + j->slot[ph * WIDE_SEG] * j->total + lo * plane;
        for (int i = 1; i < WIDE_SEG; i++) {
            if (j->slot[ph * WIDE_SEG + i] < 0) continue;
            float *dst = j->work + j->slot[ph * WIDE_SEG + i] * j->total + lo * plane;
            Py_ssize_t len = (hi - lo) * plane - (tail ? i : 0);
            memcpy(dst, src + i, (size_t)len * sizeof(float));
            if (tail) memset(dst + len, 0, (size_t)i * sizeof(float));
        }
    }
}

/* Output channels c0 + [lo, hi), or with by_tiles the tiles [lo, hi) of channels [c0, c1). */
static void conv_sum_range(void *ctx, Py_ssize_t lo, Py_ssize_t hi)
{
    ConvJob *j = ctx;
    Py_ssize_t c0 = j->c0 + lo, c1 = j->c0 + hi;
#ifdef HAVE_AVX2_PATH
    if (j->wide) { /* by_tiles: tiles [lo, hi) of every channel; else channels c0 + [lo, hi) of every tile */
        Py_ssize_t t0 = j->by_tiles ? lo : 0, t1 = j->by_tiles ? hi : (j->g->segs + WIDE_TILE - 1) / WIDE_TILE;
        if (j->by_tiles) c0 = j->c0, c1 = j->c1;
        size_t part_floats = (size_t)(c1 - c0) * WIDE_TILE * WIDE_SEG;
        size_t buf_floats = j->tiled ? (size_t)(j->buf_floats + 15) / 16 * 16 : 0;
        float *part = aligned_alloc(64, (part_floats + buf_floats) * sizeof(float));
        if (!part) {
            __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
            return;
        }
        float *buf = part + part_floats;
        memset(buf, 0, buf_floats * sizeof(float)); /* the slack past the copies stays zero */
        conv_channels_avx512(j, c0, c1, t0, t1, part, buf);
        free(part);
        return;
    }
    if (j->fast) {
        conv_channels_avx2(j->self, j->g, j->work, j->ys, j->offs, j->bias, j->relu, c0, c1);
        return;
    }
#endif
    conv_channels_generic(j->self, j->g, j->work, j->ys, j->offs, j->bias, j->relu, c0, c1);
}

/* One sample's phases on the calling thread alone: its Inf/NaN count and work planes (or, tiled, the
 * count only), the shifted copies, the sums of every output channel. */
static void conv_sample(ConvJob *j, Py_ssize_t s)
{
    j->xs = j->x + s * j->in_size;
    j->ys = j->y + s * j->out_size;
    if (j->tiled) {
        conv_count_range(j, 0, j->c);
    } else {
        conv_pad_range(j, 0, j->c);
        conv_copy_range(j, 0, j->c);
    }
    conv_sum_range(j, 0, j->c1 - j->c0);
}

/* Samples [lo, hi), each whole on this thread: a batch of at least as many samples as threads goes to
 * the threads by samples, so no thread waits at a phase's end for another's share of the sample, and
 * each reads only its own samples' input. Split within each sample (three parallel phases a sample),
 * pruned ResNet-18 (30% kept) at batch 8 ran its direct layers 1.6-1.8x faster on 2 threads than on
 * one, by samples 1.8-2.0x; the whole model on 2 threads went from 1.12 to 0.86 of onnxruntime's time
 * (2-core Xeon), pruned U-Net from 0.92 to 0.81-0.86. A range with a shared work buffer (not tiled)
 * makes its own. */
static void conv_samples_range(void *ctx, Py_ssize_t lo, Py_ssize_t hi)
{
    ConvJob *shared = ctx, j = *shared;
    float *raw = NULL;
    j.bad = 0;
    j.by_tiles = 0;
    if (!j.tiled) {
        Py_ssize_t spare = (WIDE_TILE + 1) * WIDE_SEG;
        raw = PyMem_RawMalloc((size_t)(j.work_floats + spare) * sizeof(float) + 64);
        if (!raw) {
            __atomic_store_n(&shared->failed, 1, __ATOMIC_RELAXED);
            return;
        }
        j.work = (float *)(((uintptr_t)raw + 63) & ~(uintptr_t)63);
        memset(j.work + j.work_floats, 0, (size_t)(spare - WIDE_SEG) * sizeof(float));
    }
    for (Py_ssize_t s = lo; s < hi && !j.failed; s++) conv_sample(&j, s);
    PyMem_RawFree(raw);
    __atomic_fetch_add(&shared->bad, j.bad, __ATOMIC_RELAXED);
    if (j.failed) __atomic_store_n(&shared->failed, 1, __ATOMIC_RELAXED);
}

static PyObject *SparseConv_run(SparseConv *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"x", "y", "shape", "strides", "dilations", "pads", "bias", "relu", "begin", "end",
                             "c_begin", "c_end", "threads", NULL};
    PyObject *xo, *yo, *bo = Py_None;
    Py_ssize_t n, c, h, w, sh, sw, dh, dw, pt, pl, pb, pr, begin = 0, end = -1, c0 = 0, c1 = -1;
    int relu = 0, threads = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO(nnnn)(nn)(nn)(nnnn)|Opnnnni", kwlist, &xo, &yo, &n, &c, &h, &w,
                                     &sh, &sw, &dh, &dw, &pt, &pl, &pb, &pr, &bo, &relu, &begin, &end, &c0, &c1,
                                     &threads))
        return NULL;
    if (!self->w.ptr.buf) {
        PyErr_SetString(PyExc_ValueError, "SparseConv.run: the object was never initialized");
        return NULL;
    }
    const Py_ssize_t big = (Py_ssize_t)1 << 20;
    if (end < 0) end = n;
    if (c1 < 0) c1 = self->c_out;
    if (n < 0 || h < 1 || w < 1 || h > big || w > big || sh < 1 || sw < 1 || sh > big || sw > big || dh < 1 ||
        dw < 1 || dh > big || dw > big || pt < 0 || pl < 0 || pb < 0 || pr < 0 || pt + pb > big || pl + pr > big ||
        begin < 0 || begin > end || end > n || c0 < 0 || c0 > c1 || c1 > self->c_out) {
        PyErr_SetString(PyExc_ValueError, "SparseConv.run: a size, stride, dilation, pad or range is out of bounds");
        return NULL;
    }
    if (c != self->c_in_g * self->groups) {
        PyErr_Format(PyExc_ValueError, "SparseConv.run: input has %zd channels, the weight expects %zd", c,
                     self->c_in_g * self->groups);
        return NULL;
    }
    ConvPlan g = {.hp = h + pt + pb, .wp = w + pl + pr, .sh = sh, .sw = sw};
    Py_ssize_t span_h = (self->kh - 1) * dh + 1, span_w = (self->kw - 1) * dw + 1;
    if (g.hp < span_h || g.wp < span_w) {
        PyErr_SetString(PyExc_ValueError, "SparseConv.run: the input (padded) is smaller than the kernel window");
        return NULL;
    }
    g.oh = (g.hp - span_h) / sh + 1;
    g.ow = (g.wp - span_w) / sw + 1;
#ifdef HAVE_AVX2_PATH
    int wide = sw <= MAX_PHASES && use_avx512(), fast = sw == 1 && use_avx2();
#else
    int wide = 0, fast = 0;
#endif
    /* AVX-512: a horizontal stride s reads every s-th column, so the input goes in s phases (phase p:
     * the padded columns p, p + s, ...), in which a segment's 16 outputs read 16 adjacent values. Rows
     * padded to whole segments, and one copy of each phase per column shift (its column for tap kj,
     * kj * dw / s, mod 16), shifted back by it, so that every load of a segment is one aligned cache
     * line. slot[phase * WIDE_SEG + shift]: the copy, -1 where unused; a phase's shift 0 is the copy
     * the others are made from (each from x where the copies are made per tile, below). */
    int copies = 1, slot[MAX_PHASES * WIDE_SEG];
    Py_ssize_t phases = wide ? sw : 1;
    /* ... except planes of one segment a row whose padded rows would double (16x16 outputs: 18 values
     * padded to 32): their rows unpadded and one unshifted copy (unaligned loads), so that 256 channels'
     * planes stay in L2 (1.9 MB in three aligned copies) */
    int aligned = wide && !(sw == 1 && g.ow <= WIDE_SEG && g.wp > WIDE_SEG);
    /* ... and planes much narrower than a segment, which would fill few lanes of each row's registers
     * (7x7 outputs, ResNet's last stage: 7 of 16), run flat at unit strides: segments of 16 adjacent
     * values of the unpadded-width plane, across its rows, output q at row q / wp and column q % wp,
     * the lanes of the padding columns never stored; where that takes at most 3/4 of the lanes (7x7:
     * 4 registers for 49 outputs, not 7). A vertical stride would put unread rows between them. */
    int flat = 0;
    if (wide && sw == 1 && sh == 1) {
        Py_ssize_t by_rows = g.oh * ((g.ow + WIDE_SEG - 1) / WIDE_SEG * WIDE_SEG);
        Py_ssize_t by_run = ((g.oh - 1) * g.wp + g.ow + WIDE_SEG - 1) / WIDE_SEG * WIDE_SEG;
        flat = 4 * by_run <= 3 * by_rows;
        aligned = aligned && !flat;
    }
    for (int i = 0; i < MAX_PHASES * WIDE_SEG; i++) slot[i] = i ? -1 : 0;
    if (aligned) {
        g.wp = ((g.wp + sw - 1) / sw + WIDE_SEG - 1) / WIDE_SEG * WIDE_SEG;
        copies = 0;
        slot[0] = -1;
        for (Py_ssize_t kj = 0; kj < self->kw; kj++) {
            Py_ssize_t phase = kj * dw % sw, shift = kj * dw / sw % WIDE_SEG;
            if (slot[phase * WIDE_SEG] < 0) slot[phase * WIDE_SEG] = copies++;
            if (slot[phase * WIDE_SEG + shift] < 0) slot[phase * WIDE_SEG + shift] = copies++;
        }
    }
    if (flat) { /* a copy per tap offset mod 16 (7x7 planes, 3x3 kernel: 8), so that every load of a segment is
                   one aligned cache line (unaligned: 1.45x the time); tap (0, 0) first, shift 0 in copy 0 */
        copies = 0;
        slot[0] = -1;
        for (Py_ssize_t ki = 0; ki < self->kh; ki++)
            for (Py_ssize_t kj = 0; kj < self->kw; kj++)
                if (slot[(ki * dh * g.wp + kj * dw) % WIDE_SEG] < 0) slot[(ki * dh * g.wp + kj * dw) % WIDE_SEG] = copies++;
    }
    g.plane = g.hp * g.wp + SLACK * sw;
    /* the weight offsets are int32: a sample's work buffer (all copies) holds fewer than 2^31 values */
    if (g.plane > PY_SSIZE_T_MAX / 4 / WIDE_SEG / c || g.oh > PY_SSIZE_T_MAX / 32 / (g.ow + SEG) ||
        copies * c * g.plane > INT32_MAX - (WIDE_TILE + 1) * WIDE_SEG) {
        PyErr_SetString(PyExc_ValueError, "SparseConv.run: the padded input is too large for a work buffer");
        return NULL;
    }
    Py_ssize_t in_size = SIZE_PRODUCT(c, h, w), out_size = SIZE_PRODUCT(self->c_out, g.oh, g.ow);
    Py_ssize_t in_count = SIZE_PRODUCT(n, in_size), out_count = SIZE_PRODUCT(n, out_size);
    if (in_size < 0 || out_size < 0 || in_count < 0 || out_count < 0) {
        PyErr_SetString(PyExc_ValueError, "SparseConv.run: the input or output size overflows");
        return NULL;
    }
    Py_buffer xb, yb, bb = {0};
    if (get_in_out(xo, &xb, "x", yo, &yb, "y", 1) < 0) return NULL;
    PyObject *result = NULL;
    PyObject *plan = NULL;
    const int32_t *offs = NULL;
    const int64_t *blocks = NULL;
    Py_ssize_t *segs = NULL;
    float *raw = NULL;
    if (bo != Py_None && get_array(bo, &bb, 'f', 4, 0, "bias") < 0) goto done;
    if (xb.len / 4 != in_count || yb.len / 4 != out_count || (bb.buf && bb.len / 4 != self->c_out)) {
        PyErr_Format(PyExc_ValueError, "SparseConv.run: x must have %zd values, y %zd, bias %zd", in_count,
                     out_count, self->c_out);
        goto done;
    }
    int seg = wide ? WIDE_SEG : SEG; /* pixels per segment */
    Py_ssize_t per_row = (g.ow + seg - 1) / seg;
    /* AVX-512 at unit vertical stride where a row's segments fill the padded row: one run of segments */
    g.contiguous = wide && sh == 1 && (flat || per_row * seg == g.wp);
    g.flat = flat;
    g.segs = flat ? ((g.oh - 1) * g.wp + g.ow + WIDE_SEG - 1) / WIDE_SEG : g.oh * per_row;
    g.per_row = per_row;
    segs = PyMem_RawMalloc((3 * g.segs + 1) * sizeof(Py_ssize_t)); /* seg_in, seg_out, seg_len and seg_mask */
    Py_ssize_t total = c * g.plane; /* one copy */
    Py_ssize_t tiles = (g.segs + WIDE_TILE - 1) / WIDE_TILE;
    /* AVX-512 planes of at least 2 tiles a thread whose copies outgrow a core's L2 go by tiles, all
     * channels each: by channels, every range read the whole buffer (its tiles' rows, for each block)
     * for a quarter of a thread's channels (the pool's ranges), and U-Net's 32->32 layer at 128x128 (7
     * MB) took 1.05 ms to sum on one thread but 1.36 on two; 64->64 at 56x56 (2.8 MB) 0.86 ms on two by
     * channels, 0.79 by tiles. Copies that L2 holds read cheaply again, and their channels split evenly
     * where their few tiles do not (128->128 at 28x28, 1.5 MB in 4 tiles: 0.70 by channels, 0.75 by
     * tiles). */
    int by_tiles = wide && threads > 1 && tiles >= 2 * threads && copies * total > TILE_SPLIT_MIN_BYTES / 4;
    /* At horizontal strides 1 and 2 each (tile, block of input channels) copies its rows into a buffer
     * of the thread's just before the block's weights read them, so that they come from L1, not from a
     * copy of the whole input in L2 or beyond (64->128 3x3/2 at 56x56, 30%: 0.61 -> 0.55 ms; strides 3
     * and 4, whose columns fill_row gathers one by one, measured the same either way and keep the
     * whole copies). Split by channels, every range copies every tile again, so there the split is one
     * range a thread (30%, 2 threads: 128ch 28x28 0.66 -> 0.46 ms, 256ch 14x14 0.50 -> 0.46; two ranges
     * a thread: 0.57 and 0.54). */
    int tiled = wide && phases <= 2;
    /* the zero-padded planes (and AVX-512's copies), all of them, where not tiled; + a tile: a contiguous
     * tile's repeated segments read past the last plane (never stored) */
    Py_ssize_t spare = (WIDE_TILE + 1) * WIDE_SEG;
    raw = tiled ? NULL : PyMem_RawMalloc((size_t)(copies * total + spare) * sizeof(float) + 64);
    float *work = (float *)(((uintptr_t)raw + 63) & ~(uintptr_t)63);
    if (!segs || (!tiled && !raw)) {
        PyErr_NoMemory();
        goto done;
    }
    if (!tiled) memset(work + copies * total, 0, (size_t)(spare - WIDE_SEG) * sizeof(float));
    g.seg_in = segs;
    g.seg_out = g.seg_in + g.segs;
    g.seg_len = (int *)(g.seg_out + g.segs);
    g.seg_mask = (uint32_t *)(g.seg_len + g.segs);
    for (Py_ssize_t r = 0, t = 0; !flat && r < g.oh; r++) {
        for (Py_ssize_t j = 0; j < g.ow; j += seg, t++) {
            g.seg_in[t] = r * sh * g.wp + j * (sw / phases); /* a phase's columns are adjacent */
            g.seg_out[t] = r * g.ow + j;
            g.seg_len[t] = (int)(g.ow - j < seg ? g.ow - j : seg);
            g.seg_mask[t] = (1u << g.seg_len[t]) - 1;
        }
    }
    for (Py_ssize_t t = 0; flat && t < g.segs; t++) { /* lane i: output (q + i) / wp, (q + i) % wp */
        Py_ssize_t q = t * WIDE_SEG, col = q % g.wp;
        g.seg_in[t] = q;
        g.seg_out[t] = q / g.wp * g.ow + (col < g.ow ? col : g.ow); /* the outputs before lane 0 */
        g.seg_mask[t] = 0;
        for (Py_ssize_t i = 0; i < WIDE_SEG; i++)
            if ((q + i) % g.wp < g.ow && (q + i) / g.wp < g.oh) g.seg_mask[t] |= 1u << i;
        g.seg_len[t] = __builtin_popcount(g.seg_mask[t]);
    }
    /* AVX-512: a block's copy holds per_block channels of in_rows rows (the weights' offsets are within it);
     * flat, each channel's rows start up to 15 values in (fill_block), in whole cache lines */
    Py_ssize_t per_block = 0, nb = 1, in_rows = 0, ch_floats = 0;
    if (wide) { /* the output rows one tile can touch: exact where a tile is whole rows */
        Py_ssize_t tile_rows = flat ? (WIDE_TILE * WIDE_SEG + g.wp - 2) / g.wp + 1
                               : WIDE_TILE % per_row ? (WIDE_TILE * seg + g.ow - 1) / g.ow + 1 : WIDE_TILE / per_row;
        in_rows = (tile_rows - 1) * sh + span_h;
        in_rows = in_rows < g.hp ? in_rows : g.hp;
        ch_floats = flat ? (in_rows * g.wp + 2 * WIDE_SEG - 2) / WIDE_SEG * WIDE_SEG : in_rows * g.wp;
        per_block = WIDE_BLOCK_BYTES / 4 / (copies * ch_floats + 1);
        per_block = per_block < 1 ? 1 : per_block < self->c_in_g ? per_block : self->c_in_g;
        nb = (self->c_in_g + per_block - 1) / per_block;
    }
    Py_ssize_t copy_floats = per_block * ch_floats;
    Py_ssize_t key[PLAN_KEY] = {wide, tiled ? copy_floats : total, tiled ? ch_floats : g.plane, g.wp, dh, dw, per_block,
                                phases, flat ? SHIFT_FLAT : aligned ? SHIFT_COLUMNS : SHIFT_NONE, tiled};
    plan = conv_weight_plan(self, key, slot, nb);
    if (!plan) goto done;
    blocks = (const int64_t *)PyBytes_AS_STRING(plan);
    offs = (const int32_t *)(blocks + (wide ? self->c_out * nb + 1 : 0));
    /* + a tile and a row: a contiguous tile's repeated segments read past the last copy (never stored) */
    ConvJob job = {self, &g, NULL, bb.buf, work, NULL, offs, (const WeightSlot *)offs, blocks, slot, nb, c, h, w, pt,
                   pl, total, c0, c1, phases, per_block, in_rows, ch_floats, copy_floats,
                   copies * copy_floats + g.wp + (WIDE_TILE + 1) * WIDE_SEG, tiled, relu, wide, fast, by_tiles, 0, 0,
                   (const float *)xb.buf + begin * in_size, (float *)yb.buf + begin * out_size, in_size, out_size,
                   tiled ? 0 : copies * total};
    Py_ssize_t per_channel = self->w.val.len / 4 / self->c_out * g.oh * g.ow + 1; /* multiply-adds */
    double per_tile = (double)(self->w.val.len / 4) * (double)(c1 - c0) / (double)self->c_out * WIDE_TILE * WIDE_SEG;
    Py_ssize_t pad_grain = RANGE_MIN_VALUES / g.plane + 1, sum_grain = RANGE_MIN_MACS / per_channel + 1;
    Py_ssize_t whole = threads > 1 ? (end - begin) / threads * threads : 0; /* samples split by samples */
    Py_BEGIN_ALLOW_THREADS
    if (whole) parallel_for(conv_samples_range, &job, whole, 1, threads); /* job.x and job.y start at begin */
    for (Py_ssize_t s = begin + whole; s < end; s++) { /* each phase ends before the next reads what it wrote */
        job.xs = (const float *)xb.buf + s * in_size;
        job.ys = (float *)yb.buf + s * out_size;
        parallel_for(tiled ? conv_count_range : conv_pad_range, &job, c, pad_grain, threads);
        if (!tiled && copies > 1) parallel_for(conv_copy_range, &job, c, pad_grain, threads);
        if (by_tiles)
            parallel_for(conv_sum_range, &job, tiles, (Py_ssize_t)(RANGE_MIN_MACS / (per_tile + 1.0)) + 1, threads);
        else
            parallel_for(conv_sum_range, &job, c1 - c0, tiled ? (c1 - c0 + threads - 1) / threads : sum_grain, threads);
    }
    Py_END_ALLOW_THREADS
    if (job.failed) {
        PyErr_NoMemory();
        goto done;
    }
    result = PyLong_FromSsize_t(job.bad);
done:
    Py_XDECREF(plan);
    PyMem_RawFree(segs);
    PyMem_RawFree(raw);
    release_all(&xb, &yb, &bb);
    return result;
}

static PyMethodDef SparseConv_methods[] = {
    {"run", (PyCFunction)(void (*)(void))SparseConv_run, METH_VARARGS | METH_KEYWORDS, conv_doc},
    {NULL},
};

static PyTypeObject SparseConvType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "dcm.runtime.cpu._native.SparseConv",
    .tp_doc = PyDoc_STR("SparseConv(c_out, c_in_per_group, kh, kw, groups, indptr, indices, values): a pruned "
                        "convolution weight, CSR over [c_out, c_in_per_group * kh * kw]."),
    .tp_basicsize = sizeof(SparseConv),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)SparseConv_init,
    .tp_dealloc = (destructor)SparseConv_dealloc,
    .tp_methods = SparseConv_methods,
};


/* ------------------------------------------------------------------------------------------------
 * Winograd F(2x2, 3x3) convolution (dense 3x3 stride-1 layers; winograd.py chooses it). Layouts keep
 * the tiles innermost, so both transforms are plain loops over a row of tiles, which the compiler
 * vectorizes: V [16, C, tiles] and M [16, K, tiles], tiles ordered (sample, tile row within the band,
 * tile column). The products are M[i] = U[i]^T V[i] with U^T [16, K, C], through scipy's sgemm. numpy
 * did these transforms in about ten whole-array passes with temporaries, and Python threads took
 * whole bands at 15-100 us a hand-off; here a band is one thread's work from input to output.
 * ------------------------------------------------------------------------------------------------ */

typedef struct {
    Py_ssize_t n, c, h, w, pt, pl; /* input and its top/left padding */
    Py_ssize_t n0, n1, t0, t1, tw; /* the band: samples [n0, n1), tile rows [t0, t1), tiles per row */
} WinoGeometry;

/* rows: 4 scratch rows of wp = 2 tw + 2 floats, plus 4 more for the row sums. */
#define WINO_INPUT_BODY                                                                            \
    Py_ssize_t wp = 2 * g->tw + 2, bt = g->t1 - g->t0, tiles = (g->n1 - g->n0) * bt * g->tw;      \
    float *r[4] = {rows, rows + wp, rows + 2 * wp, rows + 3 * wp};                                 \
    float *d[4] = {rows + 4 * wp, rows + 5 * wp, rows + 6 * wp, rows + 7 * wp};                    \
    for (Py_ssize_t n = g->n0; n < g->n1; n++)                                                     \
        for (Py_ssize_t c = c0; c < c1; c++) {                                                     \
            const float *plane = x + (n * g->c + c) * g->h * g->w;                                 \
            for (Py_ssize_t tr = g->t0; tr < g->t1; tr++) {                                        \
                for (int i = 0; i < 4; i++) {                                                      \
                    Py_ssize_t src = 2 * tr + i - g->pt;                                           \
                    memset(r[i], 0, wp * sizeof(float));                                           \
                    if (src >= 0 && src < g->h) {                                                  \
                        Py_ssize_t lo = g->pl, len = g->w < wp - lo ? g->w : wp - lo;              \
                        if (len > 0) memcpy(r[i] + lo, plane + src * g->w, len * sizeof(float));   \
                    }                                                                              \
                }                                                                                  \
                for (Py_ssize_t j = 0; j < wp; j++) { /* B^T along the rows */                     \
                    d[0][j] = r[0][j] - r[2][j];                                                   \
                    d[1][j] = r[1][j] + r[2][j];                                                   \
                    d[2][j] = r[2][j] - r[1][j];                                                   \
                    d[3][j] = r[1][j] - r[3][j];                                                   \
                }                                                                                  \
                Py_ssize_t base = ((n - g->n0) * bt + tr - g->t0) * g->tw;                         \
                for (int a = 0; a < 4; a++) { /* ... and along the columns of every tile */        \
                    const float *e = d[a];                                                         \
                    float *v0 = v + ((4 * a + 0) * g->c + c) * tiles + base;                       \
                    float *v1 = v + ((4 * a + 1) * g->c + c) * tiles + base;                       \
                    float *v2 = v + ((4 * a + 2) * g->c + c) * tiles + base;                       \
                    float *v3 = v + ((4 * a + 3) * g->c + c) * tiles + base;                       \
                    for (Py_ssize_t t = 0; t < g->tw; t++) {                                       \
                        float e0 = e[2 * t], e1 = e[2 * t + 1], e2 = e[2 * t + 2], e3 = e[2 * t + 3]; \
                        v0[t] = e0 - e2;                                                           \
                        v1[t] = e1 + e2;                                                           \
                        v2[t] = e2 - e1;                                                           \
                        v3[t] = e1 - e3;                                                           \
                    }                                                                              \
                }                                                                                  \
            }                                                                                      \
        }

/* out rows [2 t0, 2 t1) of channels [k0, k1): A^T M A, bias, ReLU, cropped to oh x ow. */
#define WINO_OUTPUT_BODY                                                                           \
    Py_ssize_t bt = g->t1 - g->t0, tiles = (g->n1 - g->n0) * bt * g->tw;                           \
    float *y0 = rows, *y1 = rows + 2 * g->tw;                                                      \
    for (Py_ssize_t n = g->n0; n < g->n1; n++)                                                     \
        for (Py_ssize_t k = k0; k < k1; k++) {                                                     \
            float b = bias ? bias[k] : 0.f;                                                        \
            float *plane = out + (n * kk + k) * oh * ow;                                           \
            for (Py_ssize_t tr = g->t0; tr < g->t1; tr++) {                                       \
                Py_ssize_t base = ((n - g->n0) * bt + tr - g->t0) * g->tw;                         \
                const float *q[16];                                                                \
                for (int i = 0; i < 16; i++) q[i] = m + (i * kk + k) * tiles + base;               \
                for (Py_ssize_t t = 0; t < g->tw; t++) {                                           \
                    float p0[4], p1[4];                                                            \
                    for (int j = 0; j < 4; j++) {                                                  \
                        p0[j] = q[j][t] + q[4 + j][t] + q[8 + j][t];                               \
                        p1[j] = q[4 + j][t] - q[8 + j][t] - q[12 + j][t];                          \
                    }                                                                              \
                    float a = b + p0[0] + p0[1] + p0[2], c_ = b + p0[1] - p0[2] - p0[3];           \
                    float e = b + p1[0] + p1[1] + p1[2], f = b + p1[1] - p1[2] - p1[3];            \
                    if (relu) {                                                                    \
                        a = a < 0.f ? 0.f : a; c_ = c_ < 0.f ? 0.f : c_;                           \
                        e = e < 0.f ? 0.f : e; f = f < 0.f ? 0.f : f;                              \
                    }                                                                              \
                    y0[2 * t] = a; y0[2 * t + 1] = c_;                                             \
                    y1[2 * t] = e; y1[2 * t + 1] = f;                                              \
                }                                                                                  \
                if (2 * tr < oh) memcpy(plane + 2 * tr * ow, y0, ow * sizeof(float));              \
                if (2 * tr + 1 < oh) memcpy(plane + (2 * tr + 1) * ow, y1, ow * sizeof(float));    \
            }                                                                                      \
        }

/* F(4x4, 3x3): 6x6 input tiles 4 apart, V [36, C, tiles], 4x4 output tiles (Lavin & Gray's B^T and
 * A^T, points 0, +-1, +-2 and infinity). rows: 6 scratch rows of wp = 4 tw + 2 floats, 6 more for the
 * row sums. COLUMNS(e, vv, tw): B^T along the columns of every tile of row sums e into vv[0..5]. */
#define WINO4_INPUT_BODY(COLUMNS)                                                                  \
    Py_ssize_t wp = 4 * g->tw + 2, bt = g->t1 - g->t0, tiles = (g->n1 - g->n0) * bt * g->tw;      \
    float *r[6], *d[6];                                                                            \
    for (int i = 0; i < 6; i++) r[i] = rows + i * wp, d[i] = rows + (6 + i) * wp;                  \
    for (Py_ssize_t n = g->n0; n < g->n1; n++)                                                     \
        for (Py_ssize_t c = c0; c < c1; c++) {                                                     \
            const float *plane = x + (n * g->c + c) * g->h * g->w;                                 \
            for (Py_ssize_t tr = g->t0; tr < g->t1; tr++) {                                       \
                for (int i = 0; i < 6; i++) {                                                      \
                    Py_ssize_t src = 4 * tr + i - g->pt;                                           \
                    memset(r[i], 0, wp * sizeof(float));                                           \
                    if (src >= 0 && src < g->h) {                                                  \
                        Py_ssize_t lo = g->pl, len = g->w < wp - lo ? g->w : wp - lo;              \
                        if (len > 0) memcpy(r[i] + lo, plane + src * g->w, len * sizeof(float));   \
                    }                                                                              \
                }                                                                                  \
                for (Py_ssize_t j = 0; j < wp; j++) { /* B^T along the rows */                     \
                    float r0 = r[0][j], r1 = r[1][j], r2 = r[2][j], r3 = r[3][j], r4 = r[4][j];    \
                    d[0][j] = 4.f * r0 - 5.f * r2 + r4;                                            \
                    d[1][j] = r3 + r4 - 4.f * (r1 + r2);                                           \
                    d[2][j] = r4 - r3 + 4.f * (r1 - r2);                                           \
                    d[3][j] = r4 - r2 + 2.f * (r3 - r1);                                           \
                    d[4][j] = r4 - r2 + 2.f * (r1 - r3);                                           \
                    d[5][j] = 4.f * r1 - 5.f * r3 + r[5][j];                                       \
                }                                                                                  \
                Py_ssize_t base = ((n - g->n0) * bt + tr - g->t0) * g->tw;                         \
                for (int a = 0; a < 6; a++) { /* ... and along the columns of every tile */        \
                    float *vv[6];                                                                  \
                    for (int b = 0; b < 6; b++) vv[b] = v + ((6 * a + b) * g->c + c) * tiles + base; \
                    COLUMNS(d[a], vv, g->tw);                                                      \
                }                                                                                  \
            }                                                                                      \
        }

#define WINO4_COLUMNS(e, vv, tw)                                                                   \
    for (Py_ssize_t t = 0; t < (tw); t++) {                                                        \
        const float *f = (e) + 4 * t;                                                              \
        (vv)[0][t] = 4.f * f[0] - 5.f * f[2] + f[4];                                               \
        (vv)[1][t] = f[3] + f[4] - 4.f * (f[1] + f[2]);                                            \
        (vv)[2][t] = f[4] - f[3] + 4.f * (f[1] - f[2]);                                            \
        (vv)[3][t] = f[4] - f[2] + 2.f * (f[3] - f[1]);                                            \
        (vv)[4][t] = f[4] - f[2] + 2.f * (f[1] - f[3]);                                            \
        (vv)[5][t] = 4.f * f[1] - 5.f * f[3] + f[5];                                               \
    }

/* out rows [4 t0, 4 t1) of channels [k0, k1): A^T M A, bias, ReLU, cropped to oh x ow. rows: 4 rows of
 * 4 tw floats. TILES(q, b, relu, rows, yw, tw): one row of tiles from the 36 rows q of M into rows. */
#define WINO4_OUTPUT_BODY(TILES)                                                                   \
    Py_ssize_t bt = g->t1 - g->t0, tiles = (g->n1 - g->n0) * bt * g->tw, yw = 4 * g->tw;           \
    for (Py_ssize_t n = g->n0; n < g->n1; n++)                                                     \
        for (Py_ssize_t k = k0; k < k1; k++) {                                                     \
            float b = bias ? bias[k] : 0.f;                                                        \
            float *plane = out + (n * kk + k) * oh * ow;                                           \
            for (Py_ssize_t tr = g->t0; tr < g->t1; tr++) {                                       \
                Py_ssize_t base = ((n - g->n0) * bt + tr - g->t0) * g->tw;                         \
                const float *q[36];                                                                \
                for (int i = 0; i < 36; i++) q[i] = m + (i * kk + k) * tiles + base;               \
                TILES(q, b, relu, rows, yw, g->tw);                                                \
                for (int a = 0; a < 4; a++)                                                        \
                    if (4 * tr + a < oh) memcpy(plane + (4 * tr + a) * ow, rows + a * yw, ow * sizeof(float)); \
            }                                                                                      \
        }

static void wino_input_generic(const WinoGeometry *g, const float *x, float *v, float *rows, Py_ssize_t c0,
                               Py_ssize_t c1)
{
    WINO_INPUT_BODY
}

static void wino_output_generic(const WinoGeometry *g, const float *m, float *out, Py_ssize_t kk, Py_ssize_t oh,
                                Py_ssize_t ow, const float *bias, int relu, float *rows, Py_ssize_t k0, Py_ssize_t k1)
{
    WINO_OUTPUT_BODY
}

#define WINO4_TILES(q, b, relu, rows, yw, tw)                                                      \
    for (Py_ssize_t t = 0; t < (tw); t++) {                                                        \
        float p[4][6];                                                                             \
        for (int j = 0; j < 6; j++) { /* A^T along the rows */                                     \
            float m0 = (q)[j][t], m1 = (q)[6 + j][t], m2 = (q)[12 + j][t], m3 = (q)[18 + j][t];    \
            float m4 = (q)[24 + j][t], m5 = (q)[30 + j][t];                                        \
            p[0][j] = m0 + m1 + m2 + m3 + m4;                                                      \
            p[1][j] = m1 - m2 + 2.f * (m3 - m4);                                                   \
            p[2][j] = m1 + m2 + 4.f * (m3 + m4);                                                   \
            p[3][j] = m1 - m2 + 8.f * (m3 - m4) + m5;                                              \
        }                                                                                          \
        for (int a = 0; a < 4; a++) { /* ... and along the columns */                              \
            const float *f = p[a];                                                                 \
            float y0 = (b) + f[0] + f[1] + f[2] + f[3] + f[4];                                     \
            float y1 = (b) + f[1] - f[2] + 2.f * (f[3] - f[4]);                                    \
            float y2 = (b) + f[1] + f[2] + 4.f * (f[3] + f[4]);                                    \
            float y3 = (b) + f[1] - f[2] + 8.f * (f[3] - f[4]) + f[5];                             \
            if (relu) {                                                                            \
                y0 = y0 < 0.f ? 0.f : y0; y1 = y1 < 0.f ? 0.f : y1;                                \
                y2 = y2 < 0.f ? 0.f : y2; y3 = y3 < 0.f ? 0.f : y3;                                \
            }                                                                                      \
            float *yr = (rows) + a * (yw) + 4 * t;                                                 \
            yr[0] = y0; yr[1] = y1; yr[2] = y2; yr[3] = y3;                                        \
        }                                                                                          \
    }

static void wino4_input_generic(const WinoGeometry *g, const float *x, float *v, float *rows, Py_ssize_t c0,
                                Py_ssize_t c1)
{
    WINO4_INPUT_BODY(WINO4_COLUMNS)
}

static void wino4_output_generic(const WinoGeometry *g, const float *m, float *out, Py_ssize_t kk, Py_ssize_t oh,
                                 Py_ssize_t ow, const float *bias, int relu, float *rows, Py_ssize_t k0, Py_ssize_t k1)
{
    WINO4_OUTPUT_BODY(WINO4_TILES)
}

#ifdef HAVE_AVX2_PATH
__attribute__((target("avx2,fma")))
static void wino_input_avx2(const WinoGeometry *g, const float *x, float *v, float *rows, Py_ssize_t c0,
                            Py_ssize_t c1)
{
    WINO_INPUT_BODY
}

__attribute__((target("avx2,fma")))
static void wino_output_avx2(const WinoGeometry *g, const float *m, float *out, Py_ssize_t kk, Py_ssize_t oh,
                             Py_ssize_t ow, const float *bias, int relu, float *rows, Py_ssize_t k0, Py_ssize_t k1)
{
    WINO_OUTPUT_BODY
}

/* F(4x4, 3x3)'s transforms on vectors of tiles, 16 to an AVX-512 register, 8 to an AVX2 one: the
 * compiler left the loops above over tiles, whose values lie 4 apart, scalar, and they took 3x the
 * products' time (64 channels at 64x64, one thread, AVX-512). A row of tiles goes in runs of a
 * register's width, the last masked; each run's values are gathered 4 apart into registers
 * (deinterleave4) or scattered back (interleave4) by shuffles. The transforms themselves are written once
 * (_wino4_vec.h) over the V* operations, defined for each instruction set below. */

/* The first `lanes` of 64 values e[0..64) (masked loads: none past them) as f[i][t] = e[4 t + i]. */
__attribute__((target("avx512f,avx2,fma"), always_inline))
static inline void deinterleave4_avx512(const float *e, int lanes, __m512 f[4])
{
    const __m512i even = _mm512_set_epi32(29, 25, 21, 17, 13, 9, 5, 1, 28, 24, 20, 16, 12, 8, 4, 0);
    const __m512i odd = _mm512_set_epi32(31, 27, 23, 19, 15, 11, 7, 3, 30, 26, 22, 18, 14, 10, 6, 2);
    __m512 r[4];
    for (int i = 0; i < 4; i++) {
        int left = lanes - 16 * i;
        r[i] = _mm512_maskz_loadu_ps(left > 0 ? part16(left) : 0, e + 16 * i);
    }
    __m512 ab = _mm512_permutex2var_ps(r[0], even, r[1]), cd = _mm512_permutex2var_ps(r[2], even, r[3]);
    f[0] = _mm512_shuffle_f32x4(ab, cd, 0x44); /* the low halves: values 4 t */
    f[1] = _mm512_shuffle_f32x4(ab, cd, 0xEE); /* the high halves: 4 t + 1 */
    ab = _mm512_permutex2var_ps(r[0], odd, r[1]), cd = _mm512_permutex2var_ps(r[2], odd, r[3]);
    f[2] = _mm512_shuffle_f32x4(ab, cd, 0x44);
    f[3] = _mm512_shuffle_f32x4(ab, cd, 0xEE);
}

/* out[4 t + i] = y[i][t] for the first `count` of 16 tiles. */
__attribute__((target("avx512f,avx2,fma"), always_inline))
static inline void interleave4_avx512(const __m512 y[4], float *out, int count)
{
    __m512 t0 = _mm512_unpacklo_ps(y[0], y[1]), t1 = _mm512_unpackhi_ps(y[0], y[1]);
    __m512 t2 = _mm512_unpacklo_ps(y[2], y[3]), t3 = _mm512_unpackhi_ps(y[2], y[3]);
    /* u_i, 128-bit lane l: the 4 values of tile 4 l + i */
    __m512 u0 = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t0), _mm512_castps_pd(t2)));
    __m512 u1 = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t0), _mm512_castps_pd(t2)));
    __m512 u2 = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t1), _mm512_castps_pd(t3)));
    __m512 u3 = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t1), _mm512_castps_pd(t3)));
    __m512 v0 = _mm512_shuffle_f32x4(u0, u1, 0x44), v1 = _mm512_shuffle_f32x4(u2, u3, 0x44);
    __m512 v2 = _mm512_shuffle_f32x4(u0, u1, 0xEE), v3 = _mm512_shuffle_f32x4(u2, u3, 0xEE);
    __m512 o[4] = {_mm512_shuffle_f32x4(v0, v1, 0x88), _mm512_shuffle_f32x4(v0, v1, 0xDD),
                   _mm512_shuffle_f32x4(v2, v3, 0x88), _mm512_shuffle_f32x4(v2, v3, 0xDD)};
    for (int i = 0; i < 4; i++) {
        int left = 4 * count - 16 * i;
        if (left > 0) _mm512_mask_storeu_ps(out + 16 * i, part16(left), o[i]);
    }
}

/* deinterleave4_avx512 for 8 tiles, from 32 values */
__attribute__((target("avx2,fma"), always_inline))
static inline void deinterleave4_avx2(const float *e, int lanes, __m256 f[4])
{
    __m256 r[4];
    for (int i = 0; i < 4; i++) r[i] = _mm256_maskload_ps(e + 8 * i, part8(lanes - 8 * i));
    /* a_i: tile i in the low 128 bits, tile i + 4 in the high ones */
    __m256 a0 = _mm256_permute2f128_ps(r[0], r[2], 0x20), a1 = _mm256_permute2f128_ps(r[0], r[2], 0x31);
    __m256 a2 = _mm256_permute2f128_ps(r[1], r[3], 0x20), a3 = _mm256_permute2f128_ps(r[1], r[3], 0x31);
    __m256 b0 = _mm256_unpacklo_ps(a0, a1), b1 = _mm256_unpackhi_ps(a0, a1);
    __m256 b2 = _mm256_unpacklo_ps(a2, a3), b3 = _mm256_unpackhi_ps(a2, a3);
    f[0] = _mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(b0), _mm256_castps_pd(b2)));
    f[1] = _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(b0), _mm256_castps_pd(b2)));
    f[2] = _mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(b1), _mm256_castps_pd(b3)));
    f[3] = _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(b1), _mm256_castps_pd(b3)));
}

/* interleave4_avx512 for 8 tiles */
__attribute__((target("avx2,fma"), always_inline))
static inline void interleave4_avx2(const __m256 y[4], float *out, int count)
{
    __m256 t0 = _mm256_unpacklo_ps(y[0], y[1]), t1 = _mm256_unpackhi_ps(y[0], y[1]);
    __m256 t2 = _mm256_unpacklo_ps(y[2], y[3]), t3 = _mm256_unpackhi_ps(y[2], y[3]);
    /* u_i: tile i in the low 128 bits, tile i + 4 in the high ones */
    __m256 u0 = _mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(t0), _mm256_castps_pd(t2)));
    __m256 u1 = _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(t0), _mm256_castps_pd(t2)));
    __m256 u2 = _mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(t1), _mm256_castps_pd(t3)));
    __m256 u3 = _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(t1), _mm256_castps_pd(t3)));
    __m256 o[4] = {_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u2, u3, 0x20),
                   _mm256_permute2f128_ps(u0, u1, 0x31), _mm256_permute2f128_ps(u2, u3, 0x31)};
    for (int i = 0; i < 4; i++) {
        int left = 4 * count - 8 * i;
        if (left >= 8) /* a plain store where whole: AMD's masked stores are slow */
            _mm256_storeu_ps(out + 8 * i, o[i]);
        else if (left > 0)
            _mm256_maskstore_ps(out + 8 * i, part8(left), o[i]);
    }
}

#define VTARGET "avx512f,avx2,fma"
#define VNAME(name) name##_avx512
#define VEC __m512
#define VW 16
#define VSET1 _mm512_set1_ps
#define VADD _mm512_add_ps
#define VSUB _mm512_sub_ps
#define VMUL _mm512_mul_ps
#define VMAX _mm512_max_ps
#define VFMADD _mm512_fmadd_ps
#define VFMSUB _mm512_fmsub_ps
#define VFNMADD _mm512_fnmadd_ps
#define VLOAD(p, n) _mm512_maskz_loadu_ps(part16(n), p)
#define VSTORE(p, n, v) _mm512_mask_storeu_ps(p, part16(n), v)
#define VDEINTERLEAVE4 deinterleave4_avx512
#define VINTERLEAVE4 interleave4_avx512
#include "_wino4_vec.h"

#define VTARGET "avx2,fma"
#define VNAME(name) name##_avx2
#define VEC __m256
#define VW 8
#define VSET1 _mm256_set1_ps
#define VADD _mm256_add_ps
#define VSUB _mm256_sub_ps
#define VMUL _mm256_mul_ps
#define VMAX _mm256_max_ps
#define VFMADD _mm256_fmadd_ps
#define VFMSUB _mm256_fmsub_ps
#define VFNMADD _mm256_fnmadd_ps
#define VLOAD(p, n) _mm256_maskload_ps(p, part8(n))
#define VSTORE(p, n, v) _mm256_maskstore_ps(p, part8(n), v)
#define VDEINTERLEAVE4 deinterleave4_avx2
#define VINTERLEAVE4 interleave4_avx2
#include "_wino4_vec.h"
#endif

/* winograd_conv: the whole convolution in bands of samples x tile rows, each band's transforms and
 * its products (M[i] = U[i]^T V[i], sgemm: 16 for F(2x2, 3x3), 36 for F(4x4, 3x3)) done by one thread
 * while its V and M are in cache; the pool's threads take whole bands. A convolution of one band (a
 * small plane: 512 channels at 7x7 is 16 tiles) splits each phase instead: the input transform by
 * channels, the products by i, the output transform by channels. */
typedef struct {
    WinoGeometry g; /* the band fields unused: set per band */
    const float *x, *u, *bias;
    float *out, *v, *m; /* v, m: the one band's buffers (single-band phases only) */
    Py_ssize_t k, oh, ow, th, rows, samples, row_bands, max_tiles, scratch;
    Py_ssize_t panels; /* floats of a range's packed V[i] (AVX-512), else 0: the products on sgemm */
    int relu, f4, mats; /* f4: F(4x4, 3x3); mats: 16 or 36 products */
    dcm_sgemm_fn sgemm;
    int failed; /* a range could not allocate its buffers */
} WinoConv;

static void wino_in(const WinoConv *w, const WinoGeometry *g, float *v, float *rows, Py_ssize_t c0, Py_ssize_t c1)
{
#ifdef HAVE_AVX2_PATH
    if (w->f4 && use_avx512()) {
        wino4_input_avx512(g, w->x, v, rows, c0, c1);
        return;
    }
#endif
    if (w->f4) DISPATCH(wino4_input, g, w->x, v, rows, c0, c1);
    else DISPATCH(wino_input, g, w->x, v, rows, c0, c1);
}

static void wino_out(const WinoConv *w, const WinoGeometry *g, const float *m, float *rows, Py_ssize_t k0,
                     Py_ssize_t k1)
{
#ifdef HAVE_AVX2_PATH
    if (w->f4 && use_avx512()) {
        wino4_output_avx512(g, m, w->out, w->k, w->oh, w->ow, w->bias, w->relu, rows, k0, k1);
        return;
    }
#endif
    if (w->f4) DISPATCH(wino4_output, g, m, w->out, w->k, w->oh, w->ow, w->bias, w->relu, rows, k0, k1);
    else DISPATCH(wino_output, g, m, w->out, w->k, w->oh, w->ow, w->bias, w->relu, rows, k0, k1);
}

static void wino_band(const WinoConv *w, Py_ssize_t b, WinoGeometry *g)
{
    *g = w->g;
    g->n0 = b / w->row_bands * w->samples;
    g->n1 = g->n0 + w->samples < w->g.n ? g->n0 + w->samples : w->g.n;
    g->t0 = b % w->row_bands * w->rows;
    g->t1 = g->t0 + w->rows < w->th ? g->t0 + w->rows : w->th;
}

/* M[i] = U[i]^T V[i] for i in [i0, i1): U^T [mats, K, C], V [mats, C, tiles], M [mats, K, tiles], row-major.
 * On AVX-512 the packed GEMM with V[i] packed into `panels` (packed_size(C, tiles) floats): OpenBLAS
 * runs the kernels of the CPU it recognizes, and on one it does not (Zen 5) its AVX2 ones at half the
 * speed (dense U-Net at batch 1, one thread: 1.52 -> 1.25x onnxruntime's time with these; ResNet-18
 * 1.22 -> 0.95). Otherwise sgemm, column-major: M^T (tiles x K) = V^T (tiles x C) @ U (C x K), every
 * operand untransposed. */
static void wino_products(const WinoConv *w, const float *v, float *m, int tiles, int i0, int i1, float *panels)
{
    const int c = (int)w->g.c, k = (int)w->k;
    const float one = 1.f, zero = 0.f;
#ifdef HAVE_AVX2_PATH
    if (panels) {
        for (int i = i0; i < i1; i++) {
            pack_panels((const char *)(v + (Py_ssize_t)i * c * tiles), c, tiles, (Py_ssize_t)tiles * 4, 4, panels);
            packed_product(w->u + (Py_ssize_t)i * c * k, c, panels, m + (Py_ssize_t)i * k * tiles, tiles, k, c, tiles);
        }
        return;
    }
#endif
    for (int i = i0; i < i1; i++)
        w->sgemm("N", "N", &tiles, &k, &c, &one, v + (Py_ssize_t)i * c * tiles, &tiles, w->u + (Py_ssize_t)i * c * k,
                 &c, &zero, m + (Py_ssize_t)i * k * tiles, &tiles);
}

static void wino_bands_range(void *ctx, Py_ssize_t lo, Py_ssize_t hi)
{
    WinoConv *w = ctx;
    Py_ssize_t tw = w->g.tw;
    float *v = malloc((size_t)(w->mats * (w->g.c + w->k) * w->max_tiles + w->scratch + w->panels) * sizeof(float));
    if (!v) {
        __atomic_store_n(&w->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    float *m = v + w->mats * w->g.c * w->max_tiles, *rows = m + w->mats * w->k * w->max_tiles;
    float *panels = w->panels ? rows + w->scratch : NULL;
    for (Py_ssize_t b = lo; b < hi; b++) {
        WinoGeometry g;
        wino_band(w, b, &g);
        int tiles = (int)((g.n1 - g.n0) * (g.t1 - g.t0) * tw);
        wino_in(w, &g, v, rows, 0, g.c);
        wino_products(w, v, m, tiles, 0, w->mats, panels);
        wino_out(w, &g, m, rows, 0, w->k);
    }
    free(v);
}

static void wino_input_range(void *ctx, Py_ssize_t lo, Py_ssize_t hi)
{
    WinoConv *w = ctx;
    WinoGeometry g;
    wino_band(w, 0, &g);
    float *rows = malloc((size_t)w->scratch * sizeof(float));
    if (!rows) {
        __atomic_store_n(&w->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    wino_in(w, &g, w->v, rows, lo, hi);
    free(rows);
}

static void wino_products_range(void *ctx, Py_ssize_t lo, Py_ssize_t hi)
{
    WinoConv *w = ctx;
    float *panels = w->panels ? malloc((size_t)w->panels * sizeof(float)) : NULL;
    if (w->panels && !panels) {
        __atomic_store_n(&w->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    wino_products(w, w->v, w->m, (int)w->max_tiles, (int)lo, (int)hi, panels);
    free(panels);
}

static void wino_output_range(void *ctx, Py_ssize_t lo, Py_ssize_t hi)
{
    WinoConv *w = ctx;
    WinoGeometry g;
    wino_band(w, 0, &g);
    float *rows = malloc((size_t)w->scratch * sizeof(float));
    if (!rows) {
        __atomic_store_n(&w->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    wino_out(w, &g, w->m, rows, lo, hi);
    free(rows);
}

PyDoc_STRVAR(wino_conv_doc,
"winograd_conv(x, u, out, shape, pads, band_tiles, bias=None, relu=False, threads=1, tile=2)\n\n"
"A dense 3x3 stride-1 convolution by Winograd F(tile x tile, 3x3), tile 2 or 4: x float32 [N, C, H, W]\n"
"(shape), pads = (top, left) (zeros outside x; the output size says how far the bottom/right padding\n"
"goes), u float32 [(tile + 2)^2, K, C] (winograd.transform_weight), out float32 [N, K, OH, OW], then\n"
"bias float32 [K] and the ReLU. Bands of about band_tiles tiles (whole tile rows, then whole samples),\n"
"taken by up to threads threads of the native pool.");

static PyObject *winograd_conv(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"x", "u", "out", "shape", "pads", "band_tiles", "bias", "relu", "threads", "tile",
                             NULL};
    PyObject *xo, *uo, *oo, *so, *po, *biaso = Py_None;
    Py_ssize_t band_tiles, k, oh, ow;
    int relu = 0, threads = 1, tile = 2;
    WinoConv w = {0};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOOn|Opii", kwlist, &xo, &uo, &oo, &so, &po, &band_tiles, &biaso,
                                     &relu, &threads, &tile))
        return NULL;
    WinoGeometry *g = &w.g;
    if (!PyArg_ParseTuple(so, "nnnnnnn", &g->n, &g->c, &g->h, &g->w, &k, &oh, &ow) ||
        !PyArg_ParseTuple(po, "nn", &g->pt, &g->pl))
        return NULL;
    const Py_ssize_t big = (Py_ssize_t)1 << 20;
    if (g->n < 1 || g->c < 1 || g->h < 1 || g->w < 1 || k < 1 || oh < 1 || ow < 1 || g->h > big || g->w > big ||
        oh > big || ow > big || g->c > big || k > big || g->pt < 0 || g->pl < 0 || g->pt > big || g->pl > big ||
        band_tiles < 1 || band_tiles > big || threads < 1 || (tile != 2 && tile != 4)) {
        PyErr_SetString(PyExc_ValueError,
                        "winograd_conv: a size, pad, band, thread count or tile size is out of bounds");
        return NULL;
    }
    w.k = k, w.oh = oh, w.ow = ow, w.relu = relu, w.f4 = tile == 4, w.mats = (tile + 2) * (tile + 2);
    w.th = (oh + tile - 1) / tile, g->tw = (ow + tile - 1) / tile;
    /* a range's scratch rows: the input transform's (2 (tile + 2) rows of tile tw + 2), which hold the
     * output transform's (tile rows of tile tw) too */
    w.scratch = 2 * (tile + 2) * (tile * g->tw + 2);
    Py_ssize_t tiles = g->tw > band_tiles ? g->tw : band_tiles; /* per band: whole tile rows */
    w.rows = tiles / g->tw < w.th ? tiles / g->tw : w.th;
    w.samples = w.rows == w.th ? (tiles / (w.rows * g->tw) < g->n ? tiles / (w.rows * g->tw) : g->n) : 1;
    w.row_bands = (w.th + w.rows - 1) / w.rows;
    if (threads > 1 && w.row_bands > 1 && g->n * w.row_bands < 4 * (Py_ssize_t)threads) {
        /* Few bands: as many as a multiple of the threads, of equal rows. A plane of 14 tile rows in
         * bands of 9 and 5 left one of 2 threads idle for a third of the layer. */
        const Py_ssize_t total = (g->n * w.row_bands + threads - 1) / threads * threads;
        const Py_ssize_t per_sample = (total + g->n - 1) / g->n;
        w.rows = (w.th + per_sample - 1) / per_sample;
        w.row_bands = (w.th + w.rows - 1) / w.rows;
    }
    Py_ssize_t bands = (g->n + w.samples - 1) / w.samples * w.row_bands;
    w.max_tiles = w.samples * w.rows * g->tw;
    Py_ssize_t x_count = SIZE_PRODUCT(g->n, g->c, g->h, g->w), u_count = SIZE_PRODUCT(w.mats, g->c, k),
               out_count = SIZE_PRODUCT(g->n, k, oh, ow), buffers = SIZE_PRODUCT(w.mats, g->c + k, w.max_tiles);
    if (x_count < 0 || u_count < 0 || out_count < 0 || buffers < 0 || w.max_tiles > INT32_MAX / 36 ||
        SIZE_PRODUCT(g->c, k) > INT32_MAX || SIZE_PRODUCT(g->c, w.max_tiles) > INT32_MAX ||
        SIZE_PRODUCT(k, w.max_tiles) > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "winograd_conv: the sizes overflow");
        return NULL;
    }
#ifdef HAVE_AVX2_PATH
    if (use_avx512() && (w.panels = packed_size(g->c, w.max_tiles)) < 0) {
        PyErr_SetString(PyExc_ValueError, "winograd_conv: the sizes overflow");
        return NULL;
    }
#endif
    if (!(w.sgemm = import_sgemm())) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ImportError, "winograd_conv: scipy's sgemm was not found");
        return NULL;
    }
    Py_buffer xb, ob, ub = {0}, bb = {0};
    if (get_in_out(xo, &xb, "x", oo, &ob, "out", 1) < 0) return NULL;
    PyObject *result = NULL;
    if (get_array_of_rank(uo, &ub, 'f', 4, 0, 1, "u") < 0 ||
        (biaso != Py_None && get_array(biaso, &bb, 'f', 4, 0, "bias") < 0))
        goto done;
    if (xb.len / 4 != x_count || ub.len / 4 != u_count || ob.len / 4 != out_count || (bb.buf && bb.len / 4 != k)) {
        PyErr_Format(PyExc_ValueError, "winograd_conv: x must have %zd values, u %zd, out %zd, bias %zd", x_count,
                     u_count, out_count, k);
        goto done;
    }
    w.x = xb.buf, w.u = ub.buf, w.out = ob.buf, w.bias = bb.buf;
    if (bands > 1 || threads < 2) {
        Py_BEGIN_ALLOW_THREADS
        parallel_for(wino_bands_range, &w, bands, 1, threads);
        Py_END_ALLOW_THREADS
    } else {
        w.v = PyMem_RawMalloc((size_t)buffers * sizeof(float));
        if (!w.v) {
            PyErr_NoMemory();
            goto done;
        }
        w.m = w.v + w.mats * g->c * w.max_tiles;
        Py_BEGIN_ALLOW_THREADS
        parallel_for(wino_input_range, &w, g->c, 1, threads);
        parallel_for(wino_products_range, &w, w.mats, 1, threads);
        parallel_for(wino_output_range, &w, k, 1, threads);
        Py_END_ALLOW_THREADS
        PyMem_RawFree(w.v);
    }
    if (w.failed) {
        PyErr_NoMemory();
        goto done;
    }
    result = Py_NewRef(Py_None);
done:
    RELEASE_BUFFERS(&xb, &ob, &ub, &bb);
    return result;
}

/* ------------------------------------------------------------------------------------------------
 * pool2d: MaxPool / AveragePool over [N, C, H, W] planes, separably: for each output row, the kh
 * input rows of its windows are reduced in one pass into one padded row (max: padding is -inf;
 * average: 0), then the kw columns of each window are reduced from that row. kh + kw operations per
 * output instead of kh * kw, all on contiguous runs; stride 2 takes each pair of window columns from
 * one even/odd split of two loads. The average is then divided by the caller's divisor per output
 * pixel, which knows count_include_pad and ceil_mode. Output rows are independent: the thread pool
 * splits them (over planes and within a plane), each range with its own padded row.
 * ------------------------------------------------------------------------------------------------ */

typedef struct {
    Py_ssize_t h, w, oh, ow, kh, kw, sh, sw, dh, dw, pt, pl, wp; /* wp: padded width */
} PoolGeometry;

typedef struct {
    PoolGeometry g;
    const float *x, *divisor; /* divisor NULL: max */
    float *y;
    int failed; /* a range could not get its padded row */
} PoolJob;

#define POOL_SLACK 16      /* spare values after a padded row: a stride-2 vector load reads 16 */
#define POOL_FOLD 4        /* input rows reduced per pass over the padded row */
/* Input values a thread's range reads at least (~25 us of work), as _layout.c's ranges: a worker the
 * scheduler takes off the core while it holds a range delays the call by that range. */
#define POOL_RANGE_READS (1 << 17)

/* acc = op(acc, v): max with NaN winning (as np.maximum), or sum. */
#define POOL_OP(acc, v) ((average) ? (acc) + (v) : (((v) > (acc) || (v) != (v)) ? (v) : (acc)))

#define POOL_FOLD_ARGS float *t, const float *const *rows, int count, int first, Py_ssize_t w, int average
#define POOL_ROW_ARGS const PoolGeometry *g, const float *tmp, float *yr, const float *divisor, int average

/* t[0, w) = op over the count rows (and over t itself unless first). */
static void pool_fold_generic(POOL_FOLD_ARGS)
{
    for (Py_ssize_t c = 0; c < w; c++) {
        float acc = first ? rows[0][c] : POOL_OP(t[c], rows[0][c]);
        for (int i = 1; i < count; i++) acc = POOL_OP(acc, rows[i][c]);
        t[c] = acc;
    }
}

/* One output row from its padded row: op over the kw taps of each window, then the divisor. */
static void pool_row_generic(POOL_ROW_ARGS)
{
    for (Py_ssize_t c = 0; c < g->ow; c++) {
        float acc = tmp[c * g->sw];
        for (Py_ssize_t j = 1; j < g->kw; j++) acc = POOL_OP(acc, tmp[c * g->sw + j * g->dw]);
        yr[c] = average ? acc / divisor[c] : acc;
    }
}

#ifdef HAVE_AVX2_PATH
__attribute__((target("avx2,fma")))
static inline __m256 pool_op8(__m256 acc, __m256 v, int average)
{
    if (average) return _mm256_add_ps(acc, v);
    return _mm256_blendv_ps(_mm256_max_ps(v, acc), v, _mm256_cmp_ps(v, v, _CMP_UNORD_Q)); /* NaN in v wins */
}

/* Whole vectors but the last of a row, which has its lanes past the end masked off. */
#define POOL_LOAD(p, full, mask) ((full) ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, mask))
#define POOL_STORE(p, full, mask, v) ((full) ? _mm256_storeu_ps(p, v) : _mm256_maskstore_ps(p, mask, v))

__attribute__((target("avx2,fma")))
static void pool_fold_avx2(POOL_FOLD_ARGS)
{
    for (Py_ssize_t c = 0; c < w; c += 8) {
        int full = w - c >= 8;
        __m256i mask = part8(w - c);
        __m256 acc = POOL_LOAD(rows[0] + c, full, mask);
        if (!first) acc = pool_op8(POOL_LOAD(t + c, full, mask), acc, average);
        for (int i = 1; i < count; i++) acc = pool_op8(acc, POOL_LOAD(rows[i] + c, full, mask), average);
        POOL_STORE(t + c, full, mask, acc);
    }
}

/* The even-indexed values of a[0, 16) (a shuffle of its two halves) in the order 0 2 8 10 4 6 12 14:
 * the lanes stay crossed until uncross8, once per output vector (pool2d's stride-2 rows, im2col2d's). */
#define EVENS8(a, b) _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0))
#define ODDS8(a, b) _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1))

__attribute__((target("avx2,fma")))
static inline __m256 uncross8(__m256 v)
{
    return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(v), _MM_SHUFFLE(3, 1, 2, 0)));
}

/* Strides 1 and 2 on vectors (tmp has POOL_SLACK spare values, so the last vectors may read past
 * wp); other strides on the portable path. */
__attribute__((target("avx2,fma")))
static void pool_row_avx2(POOL_ROW_ARGS)
{
    if (g->sw > 2) {
        pool_row_generic(g, tmp, yr, divisor, average);
        return;
    }
    for (Py_ssize_t c = 0; c < g->ow; c += 8) {
        int full = g->ow - c >= 8;
        __m256i mask = part8(g->ow - c);
        __m256 acc = _mm256_setzero_ps();
        if (g->sw == 1) {
            acc = _mm256_loadu_ps(tmp + c);
            for (Py_ssize_t j = 1; j < g->kw; j++) acc = pool_op8(acc, _mm256_loadu_ps(tmp + c + j * g->dw), average);
        } else {
            for (Py_ssize_t j = 0; j < g->kw;) {
                const float *s = tmp + 2 * c + j * g->dw;
                __m256 lo = _mm256_loadu_ps(s), hi = _mm256_loadu_ps(s + 8), v = EVENS8(lo, hi);
                acc = j++ ? pool_op8(acc, v, average) : v;
                if (g->dw == 1 && j < g->kw) /* the next tap: the odd values of the same loads */
                    acc = pool_op8(acc, ODDS8(lo, hi), average), j++;
            }
            acc = uncross8(acc);
        }
        if (average) acc = _mm256_div_ps(acc, POOL_LOAD(divisor + c, full, mask));
        POOL_STORE(yr + c, full, mask, acc);
    }
}
#endif

#ifdef HAVE_AVX2_PATH
/* acc = max(acc, v), a NaN in either winning (max_ps keeps acc's NaN; the mask puts v's). */
__attribute__((target("avx512f,avx2,fma"), always_inline))
static inline __m512 pool_max16(__m512 acc, __m512 v)
{
    return _mm512_mask_mov_ps(_mm512_max_ps(v, acc), _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), v);
}

/* Input columns [b, b + 16) of the window rows (those inside the plane): their max, -inf outside the row. */
__attribute__((target("avx512f,avx2,fma"), always_inline))
static inline __m512 pool_column_max16(const float *const *rows, int count, Py_ssize_t b, Py_ssize_t w)
{
    const Py_ssize_t lo = b < 0 ? -b : 0, hi = w - b < 16 ? w - b : 16;
    if (lo == 0 && hi == 16) { /* plain loads where whole, as load16's (the masked lanes here need -inf) */
        __m512 acc = _mm512_loadu_ps(rows[0] + b);
        for (int i = 1; i < count; i++) acc = pool_max16(acc, _mm512_loadu_ps(rows[i] + b));
        return acc;
    }
    const __mmask16 m = hi <= lo ? 0 : (__mmask16)(((1u << hi) - 1) & ~((1u << lo) - 1));
    const __m512 fill = _mm512_set1_ps(-INFINITY);
    __m512 acc = _mm512_mask_loadu_ps(fill, m, rows[0] + b); /* masked lanes are not read */
    for (int i = 1; i < count; i++) acc = pool_max16(acc, _mm512_mask_loadu_ps(fill, m, rows[i] + b));
    return acc;
}

/* MaxPool 3x3 or 2x2 (kh and kw each), stride 2, pads up to 1 (ResNet's 3x3 after the stem: 6.6 ns per
 * output with the padded row and AVX2; U-Net's and VGG's 2x2: 0.61 against onnxruntime's 0.20 ms on 32
 * planes of 128x128): one output row straight from its input rows (2 or 3), no padded copy. 16 outputs
 * take the columns' maxima over the rows at [b, b + 32) (b = 2 c - left pad) in two vectors, and a
 * 3-wide window also the next block's first (this one's third); their even, odd and shifted even lanes
 * (permutes) are the window's columns. */
__attribute__((target("avx512f,avx2,fma")))
static void pool_max_s2_avx512(const PoolGeometry *g, const float *const *rows, int count, float *yr)
{
    const __m512i evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odds = _mm512_add_epi32(evens, _mm512_set1_epi32(1));
    Py_ssize_t b = -g->pl;
    __m512 v0 = pool_column_max16(rows, count, b, g->w);
    for (Py_ssize_t c = 0; c < g->ow; c += 16, b += 32) {
        const __m512 v1 = pool_column_max16(rows, count, b + 16, g->w);
        __m512 acc = pool_max16(_mm512_permutex2var_ps(v0, evens, v1), _mm512_permutex2var_ps(v0, odds, v1));
        if (g->kw == 3) {
            const __m512 v2 = pool_column_max16(rows, count, b + 32, g->w);
            const __m512 s0 = _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(v1), _mm512_castps_si512(v0), 2));
            const __m512 s1 = _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(v2), _mm512_castps_si512(v1), 2));
            acc = pool_max16(acc, _mm512_permutex2var_ps(s0, evens, s1));
            v0 = v2;
        } else {
            v0 = pool_column_max16(rows, count, b + 32, g->w);
        }
        store16(yr + c, part16(g->ow - c), acc);
    }
}

/* Whether pool_max_s2_avx512 takes the job: every window holds at least one input row and column. */
static int pool_max_s2(const PoolJob *job)
{
    const PoolGeometry *g = &job->g;
    return !job->divisor && (g->kh == 2 || g->kh == 3) && (g->kw == 2 || g->kw == 3) && g->sh == 2 && g->sw == 2 &&
           g->dh == 1 && g->dw == 1 && g->pt <= 1 && g->pl <= 1 && 2 * (g->oh - 1) - g->pt < g->h &&
           2 * (g->ow - 1) - g->pl < g->w && use_avx512();
}
#endif

/* Output rows [lo, hi) of all planes (row u: plane u / oh, row u % oh), with a padded row of its own. */
static void pool_range(void *ctx, Py_ssize_t lo, Py_ssize_t hi)
{
    PoolJob *job = ctx;
    const PoolGeometry *g = &job->g;
    int average = job->divisor != NULL;
#ifdef HAVE_AVX2_PATH
    if (pool_max_s2(job)) {
        for (Py_ssize_t u = lo; u < hi; u++) {
            Py_ssize_t p = u / g->oh, r = u % g->oh;
            const float *plane = job->x + p * g->h * g->w, *rows[3];
            int count = 0;
            for (Py_ssize_t i = 0; i < g->kh; i++) {
                Py_ssize_t row = r * 2 + i - g->pt;
                if (row >= 0 && row < g->h) rows[count++] = plane + row * g->w;
            }
            pool_max_s2_avx512(g, rows, count, job->y + u * g->ow);
        }
        return;
    }
#endif
    float fill = average ? 0.f : -INFINITY;
    float *tmp = PyMem_RawMalloc((g->wp + POOL_SLACK) * sizeof(float));
    if (!tmp) {
        job->failed = 1;
        return;
    }
    for (Py_ssize_t j = 0; j < g->wp + POOL_SLACK; j++) tmp[j] = fill; /* the pads stay as they are */
    for (Py_ssize_t u = lo; u < hi; u++) {
        Py_ssize_t p = u / g->oh, r = u % g->oh;
        const float *plane = job->x + p * g->h * g->w, *rows[POOL_FOLD];
        int count = 0, first = 1;
        for (Py_ssize_t i = 0; i < g->kh; i++) {
            Py_ssize_t row = r * g->sh + i * g->dh - g->pt;
            if (row >= 0 && row < g->h) rows[count++] = plane + row * g->w;
            if (count && (count == POOL_FOLD || i + 1 == g->kh)) {
                DISPATCH(pool_fold, tmp + g->pl, rows, count, first, g->w, average);
                count = first = 0;
            }
        }
        if (first) /* a window in the padding only */
            for (Py_ssize_t c = 0; c < g->w; c++) tmp[g->pl + c] = fill;
        const float *divisor = average ? job->divisor + r * g->ow : NULL;
        DISPATCH(pool_row, g, tmp, job->y + u * g->ow, divisor, average);
    }
    PyMem_RawFree(tmp);
}

PyDoc_STRVAR(pool_doc,
"pool2d(x, y, shape, kernel, strides, dilations, pads, divisor=None, threads=1)\n\n"
"Max (divisor None) or average pooling of x float32 [N, C, H, W] (shape) into y float32\n"
"[N, C, OH, OW]; kernel, strides, dilations = (h, w), pads = (top, left, bottom, right). divisor\n"
"float32 [OH * OW]: the count each average is divided by. Output rows are split over up to\n"
"`threads` threads of the native pool.");

static PyObject *pool2d(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"x", "y", "shape", "kernel", "strides", "dilations", "pads", "divisor", "threads", NULL};
    PyObject *xo, *yo, *dvo = Py_None;
    Py_ssize_t n, c, pb, pr;
    int threads = 1;
    PoolJob job = {0};
    PoolGeometry *g = &job.g;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO(nnnn)(nn)(nn)(nn)(nnnn)|Oi", kwlist, &xo, &yo, &n, &c, &g->h,
                                     &g->w, &g->kh, &g->kw, &g->sh, &g->sw, &g->dh, &g->dw, &g->pt, &g->pl, &pb, &pr,
                                     &dvo, &threads))
        return NULL;
    const Py_ssize_t big = (Py_ssize_t)1 << 20;
    Py_ssize_t planes = SIZE_PRODUCT(n, c); /* -1 (refused below) where it overflows */
    if (planes < 0 || n < 0 || c < 1 || g->h < 1 || g->w < 1 || g->h > big || g->w > big || g->kh < 1 ||
        g->kw < 1 || g->kh > big || g->kw > big || g->sh < 1 || g->sw < 1 || g->sh > big || g->sw > big ||
        g->dh < 1 || g->dw < 1 || g->dh > big || g->dw > big || g->pt < 0 || g->pl < 0 || pb < 0 || pr < 0 ||
        g->pt + pb > big || g->pl + pr > big) {
        PyErr_SetString(PyExc_ValueError, "pool2d: a size, stride, dilation or pad is out of bounds");
        return NULL;
    }
    Py_ssize_t span_h = (g->kh - 1) * g->dh + 1, span_w = (g->kw - 1) * g->dw + 1;
    if (g->h + g->pt + pb < span_h || g->w + g->pl + pr < span_w) {
        PyErr_SetString(PyExc_ValueError, "pool2d: the input (padded) is smaller than the kernel window");
        return NULL;
    }
    g->oh = (g->h + g->pt + pb - span_h) / g->sh + 1;
    g->ow = (g->w + g->pl + pr - span_w) / g->sw + 1;
    g->wp = g->w + g->pl + pr;
    Py_buffer xb, yb, db = {0};
    if (get_in_out(xo, &xb, "x", yo, &yb, "y", 1) < 0) return NULL;
    PyObject *result = NULL;
    if (dvo != Py_None && get_array_of_rank(dvo, &db, 'f', 4, 0, 1, "divisor") < 0) goto done;
    Py_ssize_t x_count = SIZE_PRODUCT(planes, g->h, g->w), y_count = SIZE_PRODUCT(planes, g->oh, g->ow);
    if (x_count < 0 || y_count < 0) {
        PyErr_SetString(PyExc_ValueError, "pool2d: the input or output size overflows");
        goto done;
    }
    if (xb.len / 4 != x_count || yb.len / 4 != y_count || (db.buf && db.len / 4 != g->oh * g->ow)) {
        PyErr_Format(PyExc_ValueError, "pool2d: x must have %zd values, y %zd, divisor %zd", x_count, y_count,
                     g->oh * g->ow);
        goto done;
    }
    job.x = xb.buf;
    job.y = yb.buf;
    job.divisor = db.buf;
    Py_BEGIN_ALLOW_THREADS
    parallel_for(pool_range, &job, planes * g->oh, 1 + POOL_RANGE_READS / (g->w * g->kh), threads);
    Py_END_ALLOW_THREADS
    if (job.failed) PyErr_NoMemory();
    else result = Py_NewRef(Py_None);
done:
    release_all(&xb, &yb, &db);
    return result;
}

/* ------------------------------------------------------------------------------------------------
 * depthwise2d: a convolution with one input channel per group (MobileNet's and EfficientNet's kxk
 * layers). Each output row is a few multiply-adds of shifted input rows by one weight each, with the
 * bias first and an optional clamp (Relu, ReLU6) last, while the row is in cache. As a grouped GEMM
 * it was one tiny product per channel; the sparse direct kernel takes horizontal stride 1 only.
 * ------------------------------------------------------------------------------------------------ */

/* The geometry of a 2-D window: input c x h x w, output oh x ow, kernel, strides, dilations, pads
 * (top, left, bottom, right); multiplier: output channels per input channel (depthwise2d only). */
typedef struct {
    Py_ssize_t c, h, w, oh, ow, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, multiplier;
} Window2d;

#define DEPTHWISE_LANES_MAX_WIDTH 32 /* narrower outputs, and strided ones, take 8 channels side by side */
#define DEPTHWISE_GRAIN_WORK 65536    /* multiply-adds a thread's range holds at least (a hand-off is ~3 us) */
/* Strided layers take 16 lanes (AVX-512) only on input planes up to this many values: their transposes
 * cost as much as at stride 1 for a quarter of the sums, and 16 lanes lost from 28x28 up (one thread,
 * 16 lanes against 8: 3x3/2 at 14x14 0.88x, 28x28 1.08x, 56x56 1.14x, 112x112 1.22x; at stride 1,
 * 0.82x at 7x7, 0.91x at 14x14 and 28x28). */
#define DEPTHWISE_LANES16_MAX_STRIDED 256

#define DEPTHWISE_ARGS const Window2d *g, const float *x, const float *wt, const float *bias, float *y, int clamp, \
                       float lo, float hi, const Py_ssize_t *cols, float *flat, Py_ssize_t p0, Py_ssize_t p1

#define DEPTHWISE_LANES_ARGS const Window2d *g, const float *x, const float *wt, const float *bias, float *y, \
                             int clamp, float lo, float hi, float *tile, float *lane_w, float *work,        \
                             Py_ssize_t p0, Py_ssize_t p1

/* Output planes [p0, p1) (plane = sample * C * multiplier + output channel). cols[2j], cols[2j+1]:
 * the output columns [c0, c1) whose tap j falls inside the input row (computed once per call, so
 * that 7x7 planes do not pay two divisions per tap per row). */
#define DEPTHWISE_BODY                                                                                 \
    const Py_ssize_t channels = g->c * g->multiplier, h = g->h, w = g->w, oh = g->oh, ow = g->ow;      \
    const Py_ssize_t kh = g->kh, kw = g->kw, sh = g->sh, sw = g->sw, dh = g->dh, dw = g->dw;           \
    for (Py_ssize_t p = p0; p < p1; p++) {                                                             \
        Py_ssize_t o = p % channels, sample = p / channels;                                            \
        const float *plane = x + (sample * g->c + o / g->multiplier) * h * w;                          \
        const float *wo = wt + o * kh * kw;                                                            \
        float b = bias ? bias[o] : 0.f;                                                                \
        if (flat) { /* stride 1: a zero-padded copy (the caller zeroed the borders, which no plane  \
                       writes), then each tap is one shift of the whole plane */                       \
            const Py_ssize_t wp = w + g->pl + g->pr, span = oh * wp;                                   \
            for (Py_ssize_t r = 0; r < h; r++)                                                         \
                memcpy(flat + (g->pt + r) * wp + g->pl, plane + r * w, w * sizeof(float));              \
            float *restrict acc = flat + (h + g->pt + g->pb + 1) * wp;                                 \
            for (Py_ssize_t q = 0; q < span; q++) acc[q] = b;                                          \
            for (Py_ssize_t i = 0; i < kh; i++) /* a kernel row per pass: kw products per load of acc */ \
                for (Py_ssize_t j0 = 0; j0 < kw; j0 += 4) {                                            \
                    const float *restrict src = flat + i * dh * wp + j0 * dw;                          \
                    const float *wr = wo + i * kw + j0;                                                \
                    if (kw - j0 >= 4) {                                                                \
                        const float w0 = wr[0], w1 = wr[1], w2 = wr[2], w3 = wr[3];                    \
                        const float *s1 = src + dw, *s2 = src + 2 * dw, *s3 = src + 3 * dw;             \
                        for (Py_ssize_t q = 0; q < span; q++)                                          \
                            acc[q] += w0 * src[q] + w1 * s1[q] + w2 * s2[q] + w3 * s3[q];              \
                    } else if (kw - j0 == 3) {                                                         \
                        const float w0 = wr[0], w1 = wr[1], w2 = wr[2];                                \
                        const float *s1 = src + dw, *s2 = src + 2 * dw;                                \
                        for (Py_ssize_t q = 0; q < span; q++) acc[q] += w0 * src[q] + w1 * s1[q] + w2 * s2[q]; \
                    } else if (kw - j0 == 2) {                                                         \
                        const float w0 = wr[0], w1 = wr[1], *s1 = src + dw;                            \
                        for (Py_ssize_t q = 0; q < span; q++) acc[q] += w0 * src[q] + w1 * s1[q];      \
                    } else {                                                                           \
                        const float w0 = wr[0];                                                        \
                        for (Py_ssize_t q = 0; q < span; q++) acc[q] += w0 * src[q];                   \
                    }                                                                                  \
                }                                                                                      \
            for (Py_ssize_t r = 0; r < oh; r++) {                                                      \
                float *restrict yr = y + (p * oh + r) * ow;                                            \
                const float *ar = acc + r * wp;                                                        \
                if (clamp)                                                                             \
                    for (Py_ssize_t c = 0; c < ow; c++) yr[c] = ar[c] < lo ? lo : ar[c] > hi ? hi : ar[c]; \
                else                                                                                   \
                    memcpy(yr, ar, ow * sizeof(float));                                                \
            }                                                                                          \
            continue;                                                                                  \
        }                                                                                              \
        for (Py_ssize_t r = 0; r < oh; r++) {                                                          \
            float *restrict yr = y + (p * oh + r) * ow;                                                \
            for (Py_ssize_t c = 0; c < ow; c++) yr[c] = b;                                             \
            for (Py_ssize_t i = 0; i < kh; i++) {                                                      \
                Py_ssize_t row = r * sh + i * dh - g->pt;                                              \
                if (row < 0 || row >= h) continue;                                                     \
                const float *restrict xr = plane + row * w;                                            \
                for (Py_ssize_t j = 0; j < kw; j++) {                                                  \
                    const float wv = wo[i * kw + j];                                                   \
                    const Py_ssize_t off = j * dw - g->pl, c1 = cols[2 * j + 1]; /* column c*sw+off */ \
                    if (sw == 1)                                                                       \
                        for (Py_ssize_t c = cols[2 * j]; c < c1; c++) yr[c] += wv * xr[c + off];      \
                    else                                                                               \
                        for (Py_ssize_t c = cols[2 * j]; c < c1; c++) yr[c] += wv * xr[c * sw + off]; \
                }                                                                                      \
            }                                                                                          \
            if (clamp) /* NaN stays NaN, as np.clip */                                                 \
                for (Py_ssize_t c = 0; c < ow; c++) yr[c] = yr[c] < lo ? lo : yr[c] > hi ? hi : yr[c]; \
        }                                                                                              \
    }

/* Narrow planes (7x7, 14x14): rows too short for vectors, so 8 channels go side by side instead;
 * strided layers too, whose rows would need gathers (96 channels 3x3/2 at 112x112: 0.89 -> 0.48 ms).
 * Planes [p0, p1) in groups of 8 are copied into tile [hp][wp][8] (zero borders, set by the caller
 * and never written), each output pixel is then kh*kw 8-wide multiply-adds, and the 8 sums go back
 * to their planes. lane_w [kh*kw][8] holds the group's weights side by side, b8 their biases. */
static void lanes_load(const Window2d *g, const float *x, const float *wt, const float *bias, float *tile,
                       float *lane_w, float *b8, Py_ssize_t p, int lanes)
{
    const Py_ssize_t channels = g->c * g->multiplier, h = g->h, w = g->w, wp = w + g->pl + g->pr;
    const Py_ssize_t taps = g->kh * g->kw;
    for (int k = 0; k < 8; k++) b8[k] = 0.f;
    for (int k = 0; k < lanes; k++) {
        Py_ssize_t o = (p + k) % channels, sample = (p + k) / channels;
        const float *plane = x + (sample * g->c + o / g->multiplier) * h * w;
        for (Py_ssize_t r = 0; r < h; r++) {
            float *tr = tile + ((g->pt + r) * wp + g->pl) * 8 + k;
            for (Py_ssize_t c = 0; c < w; c++) tr[c * 8] = plane[r * w + c];
        }
        for (Py_ssize_t t = 0; t < taps; t++) lane_w[t * 8 + k] = wt[o * taps + t];
        if (bias) b8[k] = bias[o];
    }
}

static void depthwise_lanes_generic(DEPTHWISE_LANES_ARGS)
{
    const Py_ssize_t oh = g->oh, ow = g->ow, wp = g->w + g->pl + g->pr;
    for (Py_ssize_t p = p0; p < p1; p += 8) {
        int lanes = p1 - p < 8 ? (int)(p1 - p) : 8;
        float b8[8], acc[8];
        lanes_load(g, x, wt, bias, tile, lane_w, b8, p, lanes);
        for (Py_ssize_t r = 0; r < oh; r++)
            for (Py_ssize_t c = 0; c < ow; c++) {
                for (int k = 0; k < 8; k++) acc[k] = b8[k];
                for (Py_ssize_t i = 0; i < g->kh; i++)
                    for (Py_ssize_t j = 0; j < g->kw; j++) {
                        const float *t8 = tile + ((r * g->sh + i * g->dh) * wp + c * g->sw + j * g->dw) * 8;
                        const float *w8 = lane_w + (i * g->kw + j) * 8;
                        for (int k = 0; k < 8; k++) acc[k] += w8[k] * t8[k];
                    }
                if (clamp)
                    for (int k = 0; k < 8; k++) acc[k] = acc[k] < lo ? lo : acc[k] > hi ? hi : acc[k];
                for (int k = 0; k < lanes; k++) y[((p + k) * oh + r) * ow + c] = acc[k];
            }
    }
}

#ifdef HAVE_AVX2_PATH
/* a clamped to [lo, hi]; NaN compares false both ways and stays, as in np.clip. */
__attribute__((target("avx2,fma"), always_inline))
static inline __m256 clamp_avx2(__m256 a, __m256 vlo, __m256 vhi)
{
    return _mm256_blendv_ps(_mm256_blendv_ps(a, vlo, _mm256_cmp_ps(a, vlo, _CMP_LT_OQ)), vhi,
                            _mm256_cmp_ps(a, vhi, _CMP_GT_OQ));
}

/* Output columns [c, c + count) of one output row (count = 1, 2, 4 or 8, a constant where inlined):
 * one accumulator per column, so that the kh*kw multiply-adds of each are independent chains (one
 * chain per pixel waited out the FMA latency at every tap), and each weight load serves them all.
 * t8: the tile at the row's first input row; out: the row in work [ow][8]. */
__attribute__((target("avx2,fma"), always_inline))
static inline void lanes_block_avx2(const Window2d *g, const float *t8, const float *lane_w, __m256 vb,
                                    int clamp, __m256 vlo, __m256 vhi, float *out, Py_ssize_t c, int count)
{
    const Py_ssize_t wp = g->w + g->pl + g->pr, step = g->sw * 8;
    __m256 a[8];
    for (int u = 0; u < count; u++) a[u] = vb;
    for (Py_ssize_t i = 0; i < g->kh; i++) {
        const float *row = t8 + (i * g->dh * wp + c * g->sw) * 8;
        const float *w8 = lane_w + i * g->kw * 8;
        for (Py_ssize_t j = 0; j < g->kw; j++) {
            const __m256 wv = _mm256_loadu_ps(w8 + j * 8);
            const float *src = row + j * g->dw * 8;
            for (int u = 0; u < count; u++) a[u] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(src + u * step), a[u]);
        }
    }
    for (int u = 0; u < count; u++) _mm256_storeu_ps(out + (c + u) * 8, clamp ? clamp_avx2(a[u], vlo, vhi) : a[u]);
}

/* The lanes kernel with full groups of 8 planes transposed 8 values at a time: the planes go, flat,
 * into work [h*w][8] and then row by row into the padded tile; the sums go into work [oh*ow][8]
 * and, transposed back, to their 8 planes. A last group of fewer planes takes the portable path. */
__attribute__((target("avx2,fma")))
static void depthwise_lanes_avx2(DEPTHWISE_LANES_ARGS)
{
    const Py_ssize_t channels = g->c * g->multiplier, h = g->h, w = g->w, oh = g->oh, ow = g->ow;
    const Py_ssize_t wp = w + g->pl + g->pr, hw = h * w, ohw = oh * ow, taps = g->kh * g->kw;
    const __m256 vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi);
    Py_ssize_t p = p0;
    for (; p + 8 <= p1; p += 8) {
        const float *src[8];
        float b8[8];
        for (int k = 0; k < 8; k++) {
            Py_ssize_t o = (p + k) % channels, sample = (p + k) / channels;
            src[k] = x + (sample * g->c + o / g->multiplier) * hw;
            for (Py_ssize_t t = 0; t < taps; t++) lane_w[t * 8 + k] = wt[o * taps + t];
            b8[k] = bias ? bias[o] : 0.f;
        }
        Py_ssize_t q = 0;
        __m256 v[8];
        if (w >= 8) /* row by row straight into the tile */
            for (Py_ssize_t r = 0; r < h; r++) {
                float *dst = tile + ((g->pt + r) * wp + g->pl) * 8;
                Py_ssize_t c = 0;
                for (; c + 8 <= w; c += 8) {
                    for (int k = 0; k < 8; k++) v[k] = _mm256_loadu_ps(src[k] + r * w + c);
                    transpose8(v);
                    for (int k = 0; k < 8; k++) _mm256_storeu_ps(dst + (c + k) * 8, v[k]);
                }
                for (; c < w; c++)
                    for (int k = 0; k < 8; k++) dst[c * 8 + k] = src[k][r * w + c];
            }
        else { /* rows shorter than a vector: the planes flat into work, then row by row into the tile */
            for (; q + 8 <= hw; q += 8) {
                for (int k = 0; k < 8; k++) v[k] = _mm256_loadu_ps(src[k] + q);
                transpose8(v);
                for (int k = 0; k < 8; k++) _mm256_storeu_ps(work + (q + k) * 8, v[k]);
            }
            for (; q < hw; q++)
                for (int k = 0; k < 8; k++) work[q * 8 + k] = src[k][q];
            for (Py_ssize_t r = 0; r < h; r++)
                memcpy(tile + ((g->pt + r) * wp + g->pl) * 8, work + r * w * 8, w * 8 * sizeof(float));
        }
        const __m256 vb = _mm256_loadu_ps(b8);
        for (Py_ssize_t r = 0; r < oh; r++) {
            const float *t8 = tile + r * g->sh * wp * 8;
            float *out = work + r * ow * 8;
            Py_ssize_t c = 0;
            for (; c + 8 <= ow; c += 8) lanes_block_avx2(g, t8, lane_w, vb, clamp, vlo, vhi, out, c, 8);
            if (c + 4 <= ow) lanes_block_avx2(g, t8, lane_w, vb, clamp, vlo, vhi, out, c, 4), c += 4;
            if (c + 2 <= ow) lanes_block_avx2(g, t8, lane_w, vb, clamp, vlo, vhi, out, c, 2), c += 2;
            if (c < ow) lanes_block_avx2(g, t8, lane_w, vb, clamp, vlo, vhi, out, c, 1);
        }
        float *dst = y + p * ohw;
        for (q = 0; q + 8 <= ohw; q += 8) {
            for (int k = 0; k < 8; k++) v[k] = _mm256_loadu_ps(work + (q + k) * 8);
            transpose8(v);
            for (int k = 0; k < 8; k++) _mm256_storeu_ps(dst + k * ohw + q, v[k]);
        }
        for (; q < ohw; q++)
            for (int k = 0; k < 8; k++) dst[k * ohw + q] = work[q * 8 + k];
    }
    if (p < p1) depthwise_lanes_generic(g, x, wt, bias, y, clamp, lo, hi, tile, lane_w, work, p, p1);
}

/* AVX-512: 16 planes side by side, each output pixel kh*kw 16-wide multiply-adds (half the AVX2
 * path's instructions), the planes transposed in and out as two groups of 8 by transpose8. The
 * caller runs a last group of fewer than 16 planes on the AVX2 path. tile [hp][wp][16], lane_w
 * [kh*kw][16], work [max(h*w, oh*ow)][16]; otherwise as depthwise_lanes_avx2. */
__attribute__((target("avx512f,avx2,fma"), always_inline))
static inline void lanes16_block_avx512(const Window2d *g, const float *t16, const float *lane_w, __m512 vb,
                                        int clamp, __m512 vlo, __m512 vhi, float *out, Py_ssize_t c, int count)
{
    const Py_ssize_t wp = g->w + g->pl + g->pr, step = g->sw * 16;
    __m512 a[8];
    for (int u = 0; u < count; u++) a[u] = vb;
    for (Py_ssize_t i = 0; i < g->kh; i++) {
        const float *row = t16 + (i * g->dh * wp + c * g->sw) * 16;
        const float *w16 = lane_w + i * g->kw * 16;
        for (Py_ssize_t j = 0; j < g->kw; j++) {
            const __m512 wv = _mm512_loadu_ps(w16 + j * 16);
            const float *src = row + j * g->dw * 16;
            for (int u = 0; u < count; u++) a[u] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(src + u * step), a[u]);
        }
    }
    for (int u = 0; u < count; u++) /* NaN: max and min each return their second operand, a[u] */
        _mm512_storeu_ps(out + (c + u) * 16, clamp ? _mm512_min_ps(vhi, _mm512_max_ps(vlo, a[u])) : a[u]);
}

__attribute__((target("avx512f,avx2,fma")))
static void depthwise_lanes_avx512(DEPTHWISE_LANES_ARGS)
{
    const Py_ssize_t channels = g->c * g->multiplier, h = g->h, w = g->w, oh = g->oh, ow = g->ow;
    const Py_ssize_t wp = w + g->pl + g->pr, hw = h * w, ohw = oh * ow, taps = g->kh * g->kw;
    const __m512 vlo = _mm512_set1_ps(lo), vhi = _mm512_set1_ps(hi);
    for (Py_ssize_t p = p0; p + 16 <= p1; p += 16) {
        const float *src[16];
        float b16[16];
        for (int k = 0; k < 16; k++) {
            Py_ssize_t o = (p + k) % channels, sample = (p + k) / channels;
            src[k] = x + (sample * g->c + o / g->multiplier) * hw;
            for (Py_ssize_t t = 0; t < taps; t++) lane_w[t * 16 + k] = wt[o * taps + t];
            b16[k] = bias ? bias[o] : 0.f;
        }
        Py_ssize_t q = 0;
        __m256 v[8];
        if (w >= 8) /* row by row straight into the tile */
            for (Py_ssize_t r = 0; r < h; r++) {
                float *dst = tile + ((g->pt + r) * wp + g->pl) * 16;
                Py_ssize_t c = 0;
                for (; c + 8 <= w; c += 8)
                    for (int half = 0; half < 2; half++) {
                        for (int k = 0; k < 8; k++) v[k] = _mm256_loadu_ps(src[half * 8 + k] + r * w + c);
                        transpose8(v);
                        for (int k = 0; k < 8; k++) _mm256_storeu_ps(dst + (c + k) * 16 + half * 8, v[k]);
                    }
                for (; c < w; c++)
                    for (int k = 0; k < 16; k++) dst[c * 16 + k] = src[k][r * w + c];
            }
        else { /* rows shorter than a vector: the planes flat into work, then row by row into the tile */
            for (; q + 8 <= hw; q += 8)
                for (int half = 0; half < 2; half++) {
                    for (int k = 0; k < 8; k++) v[k] = _mm256_loadu_ps(src[half * 8 + k] + q);
                    transpose8(v);
                    for (int k = 0; k < 8; k++) _mm256_storeu_ps(work + (q + k) * 16 + half * 8, v[k]);
                }
            for (; q < hw; q++)
                for (int k = 0; k < 16; k++) work[q * 16 + k] = src[k][q];
            for (Py_ssize_t r = 0; r < h; r++)
                memcpy(tile + ((g->pt + r) * wp + g->pl) * 16, work + r * w * 16, w * 16 * sizeof(float));
        }
        const __m512 vb = _mm512_loadu_ps(b16);
        for (Py_ssize_t r = 0; r < oh; r++) {
            const float *t16 = tile + r * g->sh * wp * 16;
            float *out = work + r * ow * 16;
            Py_ssize_t c = 0;
            for (; c + 8 <= ow; c += 8) lanes16_block_avx512(g, t16, lane_w, vb, clamp, vlo, vhi, out, c, 8);
            if (c + 4 <= ow) lanes16_block_avx512(g, t16, lane_w, vb, clamp, vlo, vhi, out, c, 4), c += 4;
            if (c + 2 <= ow) lanes16_block_avx512(g, t16, lane_w, vb, clamp, vlo, vhi, out, c, 2), c += 2;
            if (c < ow) lanes16_block_avx512(g, t16, lane_w, vb, clamp, vlo, vhi, out, c, 1);
        }
        float *dst = y + p * ohw;
        for (q = 0; q + 8 <= ohw; q += 8)
            for (int half = 0; half < 2; half++) {
                for (int k = 0; k < 8; k++) v[k] = _mm256_loadu_ps(work + (q + k) * 16 + half * 8);
                transpose8(v);
                for (int k = 0; k < 8; k++) _mm256_storeu_ps(dst + (half * 8 + k) * ohw + q, v[k]);
            }
        for (; q < ohw; q++)
            for (int k = 0; k < 16; k++) dst[k * ohw + q] = work[q * 16 + k];
    }
}

#endif /* HAVE_AVX2_PATH: the sizes below are used by the portable paths too */

/* AVX-512 (where the CPU has it): wide stride-1 layers row by row, 16 output columns to a register
 * and up to 4 registers at a time, each tap one broadcast weight times one unaligned load of the
 * zero-padded plane, the bias first and the clamp at the one store: no passes over a sum buffer
 * (MobileNetV2's 32 channels 3x3 at 112x112: 0.37 -> 0.27 ms, onnxruntime 0.45; 144 at 56x56: 0.44
 * -> 0.34, onnxruntime 0.54; one thread). Narrow and strided layers keep the lanes path, which wins
 * there (8 channels side by side: no per-row overhead on 7x7 planes, no gathers). tile: the padded
 * plane [hp][wp] and 16 spare values for the last block's masked-off lanes. */
#define DEPTHWISE_ROWS_SPARE 16

#ifdef HAVE_AVX2_PATH

/* Output columns [c, c + 16 V) of one output row (V a constant where inlined), the last register
 * masked to the row's end. base: the tile at the row's first input row. */
__attribute__((target("avx512f,avx2,fma"), always_inline))
static inline void rows_block_avx512(const Window2d *g, const float *base, const Py_ssize_t *taps,
                                     const float *wo, float b, int clamp, float lo, float hi, float *yr, Py_ssize_t c,
                                     const int V)
{
    const __mmask16 last = (__mmask16)(g->ow - c - 16 * (V - 1) >= 16 ? 0xFFFF : (1u << (g->ow - c - 16 * (V - 1))) - 1);
    __m512 a[4];
    _Pragma("GCC unroll 4") for (int v = 0; v < V; v++) a[v] = _mm512_set1_ps(b);
    for (Py_ssize_t t = 0, count = g->kh * g->kw; t < count; t++) {
        const float *src = base + taps[t] + c;
        const __m512 wv = _mm512_set1_ps(wo[t]);
        _Pragma("GCC unroll 4") for (int v = 0; v < V; v++) a[v] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(src + 16 * v), a[v]);
    }
    const __m512 vlo = _mm512_set1_ps(lo), vhi = _mm512_set1_ps(hi);
    _Pragma("GCC unroll 4") for (int v = 0; v < V; v++) {
        __m512 r = clamp ? _mm512_min_ps(vhi, _mm512_max_ps(vlo, a[v])) : a[v]; /* NaN: each returns a[v] */
        store16(yr + c + 16 * v, v == V - 1 ? last : 0xFFFF, r);
    }
}

/* Planes [p0, p1) of a layer with horizontal stride 1; tile: (hp * wp + DEPTHWISE_ROWS_SPARE) values, its
 * padding zeroed by the caller and never written; taps[i * kw + j] = i * dh * wp + j * dw: where tap
 * (i, j) reads in the tile, from an output row's first input value. */
__attribute__((target("avx512f,avx2,fma")))
static void depthwise_rows_avx512(const Window2d *g, const float *x, const float *wt, const float *bias, float *y,
                                  int clamp, float lo, float hi, float *tile, const Py_ssize_t *taps, Py_ssize_t p0,
                                  Py_ssize_t p1)
{
    const Py_ssize_t channels = g->c * g->multiplier, wp = g->w + g->pl + g->pr;
    for (Py_ssize_t p = p0; p < p1; p++) {
        Py_ssize_t o = p % channels, sample = p / channels;
        const float *plane = x + (sample * g->c + o / g->multiplier) * g->h * g->w, *wo = wt + o * g->kh * g->kw;
        for (Py_ssize_t r = 0; r < g->h; r++) memcpy(tile + (g->pt + r) * wp + g->pl, plane + r * g->w, g->w * sizeof(float));
        const float b = bias ? bias[o] : 0.f;
        for (Py_ssize_t r = 0; r < g->oh; r++) {
            const float *base = tile + r * g->sh * wp;
            float *yr = y + (p * g->oh + r) * g->ow;
            Py_ssize_t c = 0;
            for (; c + 64 <= g->ow; c += 64) rows_block_avx512(g, base, taps, wo, b, clamp, lo, hi, yr, c, 4);
            Py_ssize_t left = g->ow - c;
            if (left > 32) rows_block_avx512(g, base, taps, wo, b, clamp, lo, hi, yr, c, left > 48 ? 4 : 3);
            else if (left > 16) rows_block_avx512(g, base, taps, wo, b, clamp, lo, hi, yr, c, 2);
            else if (left > 0) rows_block_avx512(g, base, taps, wo, b, clamp, lo, hi, yr, c, 1);
        }
    }
}
#endif

static void depthwise_generic(DEPTHWISE_ARGS) { DEPTHWISE_BODY }

#ifdef HAVE_AVX2_PATH
/* The same loops; the compiler vectorizes the row loops 8 wide with FMA. */
__attribute__((target("avx2,fma")))
static void depthwise_avx2(DEPTHWISE_ARGS) { DEPTHWISE_BODY }
#endif

/* Bounds every size of g (each at most 2^20, the pads of an axis together too) and sets its output
 * size; else a ValueError that names the kernel, and -1. */
static int window_output(Window2d *g, const char *kernel)
{
    const Py_ssize_t big = (Py_ssize_t)1 << 20;
    if (g->c < 1 || g->h < 1 || g->w < 1 || g->c > big || g->h > big || g->w > big || g->kh < 1 || g->kw < 1 ||
        g->kh > big || g->kw > big || g->sh < 1 || g->sw < 1 || g->sh > big || g->sw > big || g->dh < 1 ||
        g->dw < 1 || g->dh > big || g->dw > big || g->pt < 0 || g->pl < 0 || g->pb < 0 || g->pr < 0 ||
        g->pt + g->pb > big || g->pl + g->pr > big) {
        PyErr_Format(PyExc_ValueError, "%s: a size, stride, dilation, pad or range is out of bounds", kernel);
        return -1;
    }
    Py_ssize_t span_h = (g->kh - 1) * g->dh + 1, span_w = (g->kw - 1) * g->dw + 1;
    if (g->h + g->pt + g->pb < span_h || g->w + g->pl + g->pr < span_w) {
        PyErr_Format(PyExc_ValueError, "%s: the input (padded) is smaller than the kernel window", kernel);
        return -1;
    }
    g->oh = (g->h + g->pt + g->pb - span_h) / g->sh + 1;
    g->ow = (g->w + g->pl + g->pr - span_w) / g->sw + 1;
    return 0;
}

PyDoc_STRVAR(depthwise_doc,
"depthwise2d(x, y, weight, shape, kernel, strides, dilations, pads, multiplier=1, bias=None,\n"
"            act=None, begin=0, end=-1, threads=1)\n\n"
"Depthwise convolution of x float32 [N, C, H, W] (shape) into y float32 [N, C * multiplier, OH, OW]:\n"
"output channel o reads input channel o // multiplier through weight float32 [C * multiplier, kh,\n"
"kw]; kernel, strides, dilations = (h, w), pads = (top, left, bottom, right). bias float32\n"
"[C * multiplier] is added, then the activation act = (name, a, b): ('relu', _, _), ('clip', lo, hi)\n"
"(NaN kept), ('sigmoid', _, _), ('silu', alpha, _): x sigmoid(alpha x), ('hardswish', _, _). Output\n"
"planes [begin, end), on up to `threads` threads of the native pool.");

/* One depthwise2d call, as the pool's ranges of output planes see it. */
typedef struct {
    Window2d g;
    const float *x, *wt, *bias;
    float *y;
    const Py_ssize_t *cols, *taps; /* taps: the rows path's read offsets (depthwise_rows_avx512) */
    int clamp, rows, lanes, flat; /* rows: AVX-512 row blocks; lanes: 8 channels side by side; flat: stride 1
                                     on the zero-padded plane */
    float lo, hi;
    ConvAct act; /* a clamp (clamp, lo, hi) the kernels apply as they store; another kind after each range */
    Py_ssize_t p0, tile, lane_w, work; /* the first plane; the parts of a range's scratch, in floats */
    _Atomic int failed;                /* a range found no memory for its scratch */
} DepthwiseJob;

/* This thread's scratch of at least count floats, kept between calls: a fresh calloc of a 112 x 112
 * lanes tile (416 KiB, past malloc's mmap threshold) faulted its pages in again on every call. NULL
 * where it cannot grow. Each thread's one buffer is the largest any layer asked of it. */
static float *thread_scratch(Py_ssize_t count)
{
    static _Thread_local float *buf;
    static _Thread_local Py_ssize_t cap;
    if (count > cap) {
        free(buf);
        buf = malloc((size_t)count * sizeof(float));
        cap = buf ? count : 0;
    }
    return buf;
}

/* Zeros all of a [rows][wp][lanes] array but its rows [top, top + h) x columns [left, left + w): the
 * padding around the planes copied in, which no plane writes (reused scratch holds the last call's). */
static void zero_borders(float *t, Py_ssize_t rows, Py_ssize_t wp, Py_ssize_t lanes, Py_ssize_t top, Py_ssize_t h,
                         Py_ssize_t left, Py_ssize_t w)
{
    const Py_ssize_t row = wp * lanes;
    memset(t, 0, top * row * sizeof(float));
    memset(t + (top + h) * row, 0, (rows - top - h) * row * sizeof(float));
    for (Py_ssize_t r = top; r < top + h; r++) {
        memset(t + r * row, 0, left * lanes * sizeof(float));
        memset(t + r * row + (left + w) * lanes, 0, (wp - left - w) * lanes * sizeof(float));
    }
}

static void depthwise_range(void *ctx, Py_ssize_t lo, Py_ssize_t hi)
{
    DepthwiseJob *j = ctx;
    const Window2d *g = &j->g;
    const Py_ssize_t wp = g->w + g->pl + g->pr, hp = g->h + g->pt + g->pb;
    float *s = NULL;
    if (j->rows || j->lanes || j->flat) {
        s = thread_scratch(j->tile + j->lane_w + j->work);
        if (!s) {
            j->failed = 1;
            return;
        }
    }
#ifdef HAVE_AVX2_PATH
    if (j->rows) {
        zero_borders(s, hp, wp, 1, g->pt, g->h, g->pl, g->w);
        memset(s + j->tile - DEPTHWISE_ROWS_SPARE, 0, DEPTHWISE_ROWS_SPARE * sizeof(float));
        depthwise_rows_avx512(g, j->x, j->wt, j->bias, j->y, j->clamp, j->lo, j->hi, s, j->taps, j->p0 + lo,
                              j->p0 + hi);
    }
#endif
    Py_ssize_t from = lo; /* the planes left to the paths below */
#ifdef HAVE_AVX2_PATH
    if (j->lanes && use_avx512() && (g->sw == 1 || g->h * g->w <= DEPTHWISE_LANES16_MAX_STRIDED)) {
        /* whole groups of 16 planes; a last smaller group on the AVX2 path */
        zero_borders(s, hp, wp, 16, g->pt, g->h, g->pl, g->w);
        from = lo + (hi - lo) / 16 * 16;
        depthwise_lanes_avx512(g, j->x, j->wt, j->bias, j->y, j->clamp, j->lo, j->hi, s, s + j->tile,
                               s + j->tile + j->lane_w, j->p0 + lo, j->p0 + from);
    }
#endif
    if ((j->lanes && from < hi) || j->flat)
        zero_borders(s, j->lanes ? hp : hp + 1, wp, j->lanes ? 8 : 1, g->pt, g->h, g->pl, g->w);
    if (j->lanes && from < hi)
        DISPATCH(depthwise_lanes, g, j->x, j->wt, j->bias, j->y, j->clamp, j->lo, j->hi, s, s + j->tile,
                 s + j->tile + j->lane_w, j->p0 + from, j->p0 + hi);
    else if (!j->rows && !j->lanes)
        DISPATCH(depthwise, g, j->x, j->wt, j->bias, j->y, j->clamp, j->lo, j->hi, j->cols, s, j->p0 + lo, j->p0 + hi);
    if (j->act.kind != CONV_ACT_NONE && !j->clamp) { /* the range's planes, still in cache */
        float *y = j->y + (j->p0 + lo) * g->oh * g->ow;
        const Py_ssize_t n = (hi - lo) * g->oh * g->ow;
#ifdef HAVE_AVX2_PATH
        if (use_avx512()) {
            conv_act_span_avx512(&j->act, y, n);
            return;
        }
#endif
        conv_act_span_generic(&j->act, y, n);
    }
}

static PyObject *depthwise2d(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"x", "y", "weight", "shape", "kernel", "strides", "dilations", "pads", "multiplier",
                             "bias", "act", "begin", "end", "threads", NULL};
    PyObject *xo, *yo, *wo, *bo = Py_None, *acto = Py_None;
    Py_ssize_t n, p0 = 0, p1 = -1;
    int threads = 1;
    Window2d g = {.multiplier = 1};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO(nnnn)(nn)(nn)(nn)(nnnn)|nOOnni", kwlist, &xo, &yo, &wo, &n,
                                     &g.c, &g.h, &g.w, &g.kh, &g.kw, &g.sh, &g.sw, &g.dh, &g.dw, &g.pt, &g.pl, &g.pb,
                                     &g.pr, &g.multiplier, &bo, &acto, &p0, &p1, &threads))
        return NULL;
    ConvAct act;
    if (parse_conv_act(acto, &act, "depthwise2d") < 0) return NULL;
    const int clamp = act.kind == CONV_ACT_CLAMP;
    const float lo = act.lo, hi = act.hi;
    Py_ssize_t channels = SIZE_PRODUCT(g.c, g.multiplier), planes = SIZE_PRODUCT(n, g.c, g.multiplier);
    if (p1 < 0) p1 = planes;
    if (channels < 0 || planes < 0 || n < 0 || g.multiplier < 1 || p0 < 0 || p0 > p1 || p1 > planes) {
        PyErr_SetString(PyExc_ValueError, "depthwise2d: a size, stride, dilation, pad or range is out of bounds");
        return NULL;
    }
    if (window_output(&g, "depthwise2d") < 0) return NULL;
    Py_buffer xb, yb, wb = {0}, bb = {0};
    if (get_in_out(xo, &xb, "x", yo, &yb, "y", 1) < 0) return NULL;
    PyObject *result = NULL;
    Py_ssize_t *cols = NULL;
    if (get_array_of_rank(wo, &wb, 'f', 4, 0, 1, "weight") < 0) goto done;
    if (bo != Py_None && get_array_of_rank(bo, &bb, 'f', 4, 0, 1, "bias") < 0) goto done;
    Py_ssize_t x_count = SIZE_PRODUCT(n, g.c, g.h, g.w), y_count = SIZE_PRODUCT(planes, g.oh, g.ow),
               w_count = SIZE_PRODUCT(channels, g.kh, g.kw);
    if (x_count < 0 || y_count < 0 || w_count < 0) {
        PyErr_SetString(PyExc_ValueError, "depthwise2d: the input, output or weight size overflows");
        goto done;
    }
    if (xb.len / 4 != x_count || yb.len / 4 != y_count || wb.len / 4 != w_count || (bb.buf && bb.len / 4 != channels)) {
        PyErr_Format(PyExc_ValueError, "depthwise2d: x must have %zd values, y %zd, weight %zd, bias %zd", x_count,
                     y_count, w_count, channels);
        goto done;
    }
    cols = PyMem_RawMalloc((2 * g.kw + g.kh * g.kw) * sizeof(Py_ssize_t)); /* and the taps' offsets */
    if (!cols) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t j = 0; j < g.kw; j++) {
        Py_ssize_t off = j * g.dw - g.pl, c1 = g.w - 1 - off < 0 ? 0 : (g.w - 1 - off) / g.sw + 1;
        cols[2 * j] = off >= 0 ? 0 : (-off + g.sw - 1) / g.sw;
        cols[2 * j + 1] = c1 > g.ow ? g.ow : c1;
    }
    DepthwiseJob job = {.g = g, .x = xb.buf, .wt = wb.buf, .bias = bb.buf, .y = yb.buf, .cols = cols,
                        .taps = cols + 2 * g.kw, .clamp = clamp, .lo = lo, .hi = hi, .act = act, .p0 = p0};
    const Py_ssize_t wp = g.w + g.pl + g.pr, hp = g.h + g.pt + g.pb;
    for (Py_ssize_t i = 0; i < g.kh; i++)
        for (Py_ssize_t j = 0; j < g.kw; j++) cols[2 * g.kw + i * g.kw + j] = i * g.dh * wp + j * g.dw;
    job.lanes = g.ow < DEPTHWISE_LANES_MAX_WIDTH || g.sw > 1; /* 8 channels side by side */
#ifdef HAVE_AVX2_PATH
    job.rows = !job.lanes && use_avx512();
#endif
    job.flat = !job.rows && !job.lanes && g.sh == 1; /* stride 1: shifts of the zero-padded plane */
    if (job.rows) { /* the padded plane and the spare values */
        job.tile = SIZE_PRODUCT(hp, wp);
        job.tile = job.tile < 0 ? -1 : job.tile + DEPTHWISE_ROWS_SPARE;
    } else if (job.lanes) { /* the tile [hp][wp][16], the group's weights, a transposed plane or its sums
                               (AVX-512's 16 lanes, or the first 8 of each) */
        job.tile = SIZE_PRODUCT(hp, wp, 16), job.lane_w = SIZE_PRODUCT(g.kh, g.kw, 16);
        job.work = SIZE_PRODUCT(g.h * g.w > g.oh * g.ow ? g.h * g.w : g.oh * g.ow, 16);
    } else if (job.flat) { /* the padded plane, a spare row (the last taps' overrun) and the sums */
        job.tile = SIZE_PRODUCT(wp, hp + 1 + g.oh);
    }
    if (job.tile < 0 || job.lane_w < 0 || job.work < 0 || SIZE_PRODUCT(job.tile + job.lane_w + job.work, 4) < 0) {
        PyErr_SetString(PyExc_ValueError, "depthwise2d: the scratch size overflows");
        goto done;
    }
    /* ranges of at least DEPTHWISE_GRAIN_WORK multiply-adds, whole groups of 16 planes on the lanes path */
    Py_ssize_t per_plane = SIZE_PRODUCT(g.oh, g.ow, g.kh, g.kw);
    Py_ssize_t grain = per_plane < 0 ? 1 : (DEPTHWISE_GRAIN_WORK + per_plane - 1) / per_plane;
    if (job.lanes) grain = (grain + 15) / 16 * 16;
    Py_BEGIN_ALLOW_THREADS
    parallel_for(depthwise_range, &job, p1 - p0, grain, threads);
    Py_END_ALLOW_THREADS
    if (job.failed) {
        PyErr_NoMemory();
        goto done;
    }
    result = Py_NewRef(Py_None);
done:
    PyMem_RawFree(cols);
    PyBuffer_Release(&xb);
    PyBuffer_Release(&yb);
    if (wb.buf) PyBuffer_Release(&wb);
    if (bb.buf) PyBuffer_Release(&bb);
    return result;
}

/* ------------------------------------------------------------------------------------------------
 * conv_lanes2d: a dense convolution with 8 output channels side by side in a register: each input
 * value of a window is broadcast and multiplied by the 8 channels' weights of its tap, 8 output
 * pixels at a time (independent chains), and the 8x8 block is transposed into the 8 output planes.
 * For layers with few input channels (the RGB stems: 3 channels, 27 to 147 taps per output), whose
 * im2col product is too short (K = 27) for BLAS to reach its speed and whose column matrix and
 * cropped, transposed output cost more passes over memory than the arithmetic, and for grouped
 * layers with few input channels a group (RegNet's 16), one group at a time. Bias and clamp are
 * fused. Every sample is zero-padded once into a scratch copy, so the loops have no bounds tests; the
 * pool's threads then take units of (sample, group, output row).
 * ------------------------------------------------------------------------------------------------ */

/* Output rows [r0, r1) of sample s, the k_out channels of one group (g->c its input channels): xs is
 * the group's first plane in the sample's padded copy, wt, bias and y start at the group's first
 * output channel, k_all is y's channels a sample, offs each tap's offset in a window (shared), lane_w
 * the calling thread's own buffer of a channel block's weights. */
#define CONV_LANES_ARGS const Window2d *g, Py_ssize_t k_out, Py_ssize_t k_all, const float *wt, const float *bias, \
                        float *y, int clamp, float lo, float hi, const float *xs, float *lane_w,                  \
                        const Py_ssize_t *offs, Py_ssize_t s, Py_ssize_t r0, Py_ssize_t r1

/* xp [c][h + pt + pb][w + pl + pr] = sample x (the borders stay as the caller zeroed them). */
/* Planes [lo, hi) (sample * channels + channel) of x copied into the padded buffer xp, the pads written as
 * zeros in the same pass (a zeroed buffer first wrote every value twice), on the pool's threads. */
typedef struct {
    const Window2d *g;
    const float *x;
    float *xp;
} PadJob;

static void pad_planes(void *ctx, Py_ssize_t lo, Py_ssize_t hi)
{
    const PadJob *j = ctx;
    const Window2d *g = j->g;
    const Py_ssize_t hp = g->h + g->pt + g->pb, wp = g->w + g->pl + g->pr;
    for (Py_ssize_t p = lo; p < hi; p++) {
        const float *x = j->x + p * g->h * g->w;
        float *xp = j->xp + p * hp * wp;
        memset(xp, 0, (size_t)(g->pt * wp) * sizeof(float));
        for (Py_ssize_t r = 0; r < g->h; r++) {
            float *row = xp + (g->pt + r) * wp;
            memset(row, 0, (size_t)g->pl * sizeof(float));
            memcpy(row + g->pl, x + r * g->w, (size_t)g->w * sizeof(float));
            memset(row + g->pl + g->w, 0, (size_t)g->pr * sizeof(float));
        }
        memset(xp + (g->pt + g->h) * wp, 0, (size_t)(g->pb * wp) * sizeof(float));
    }
}

/* offs[t]: tap t's offset in a window of the padded sample, taps in weight order (c, i, j). */
static void lanes_offsets(const Window2d *g, Py_ssize_t *offs)
{
    const Py_ssize_t hp = g->h + g->pt + g->pb, wp = g->w + g->pl + g->pr;
    for (Py_ssize_t ci = 0, t = 0; ci < g->c; ci++)
        for (Py_ssize_t i = 0; i < g->kh; i++)
            for (Py_ssize_t j = 0; j < g->kw; j++) offs[t++] = (ci * hp + i * g->dh) * wp + j * g->dw;
}

static void conv_lanes_generic(CONV_LANES_ARGS)
{
    const Py_ssize_t hp = g->h + g->pt + g->pb, wp = g->w + g->pl + g->pr;
    const Py_ssize_t taps = g->c * g->kh * g->kw, ohw = g->oh * g->ow;
    (void)lane_w, (void)offs;
    {
        for (Py_ssize_t o = 0; o < k_out; o++)
            for (Py_ssize_t r = r0; r < r1; r++)
                for (Py_ssize_t c = 0; c < g->ow; c++) {
                    const float *wo = wt + o * taps, *base = xs + r * g->sh * wp + c * g->sw;
                    float acc = bias ? bias[o] : 0.f;
                    for (Py_ssize_t ci = 0; ci < g->c; ci++)
                        for (Py_ssize_t i = 0; i < g->kh; i++)
                            for (Py_ssize_t j = 0; j < g->kw; j++)
                                acc += *wo++ * base[(ci * hp + i * g->dh) * wp + j * g->dw];
                    if (clamp) acc = acc < lo ? lo : acc > hi ? hi : acc; /* NaN stays */
                    y[(s * k_all + o) * ohw + r * g->ow + c] = acc;
                }
    }
}

#ifdef HAVE_AVX2_PATH
/* a[u] = the 8 channels' sums at the output pixel whose window starts at padded input base + u * sw
 * (count = 8, or fewer at a row's end): offs[t] is tap t's offset in the window; each tap's weights are
 * loaded once for all the pixels. sw and count are constants where inlined. */
__attribute__((target("avx2,fma"), always_inline))
static inline void conv_lanes_block_avx2(const float *base, const Py_ssize_t *offs, Py_ssize_t taps, Py_ssize_t sw,
                                         const float *lane_w, __m256 vb, __m256 *a, int count)
{
    for (int u = 0; u < count; u++) a[u] = vb;
    for (Py_ssize_t t = 0; t < taps; t++) {
        const __m256 wv = _mm256_loadu_ps(lane_w + t * 8);
        const float *src = base + offs[t];
        for (int u = 0; u < count; u++) a[u] = _mm256_fmadd_ps(wv, _mm256_broadcast_ss(src + u * sw), a[u]);
    }
}

/* Output row r of channels [o0, o0 + lanes): blocks of 8 pixels transposed into the planes, then the
 * row's last pixels one lane at a time. */
__attribute__((target("avx2,fma"), always_inline))
static inline void conv_lanes_row_avx2(const Window2d *g, const float *xp, const Py_ssize_t *offs, Py_ssize_t sw,
                                       const float *lane_w, __m256 vb, int clamp, __m256 vlo, __m256 vhi,
                                       float *planes, int lanes, Py_ssize_t r)
{
    const Py_ssize_t taps = g->c * g->kh * g->kw, ohw = g->oh * g->ow, ow = g->ow;
    const float *base = xp + r * g->sh * (g->w + g->pl + g->pr);
    __m256 a[8];
    Py_ssize_t c = 0;
    for (; c + 8 <= ow; c += 8) {
        conv_lanes_block_avx2(base + c * sw, offs, taps, sw, lane_w, vb, a, 8);
        for (int k = 0; k < 8; k++) a[k] = clamp ? clamp_avx2(a[k], vlo, vhi) : a[k];
        transpose8(a); /* a[k]: channel o0 + k at the 8 pixels */
        for (int k = 0; k < lanes; k++) _mm256_storeu_ps(planes + k * ohw + r * ow + c, a[k]);
    }
    if (c < ow) {
        int count = (int)(ow - c);
        float sums[8][8];
        conv_lanes_block_avx2(base + c * sw, offs, taps, sw, lane_w, vb, a, count);
        for (int q = 0; q < count; q++) _mm256_storeu_ps(sums[q], clamp ? clamp_avx2(a[q], vlo, vhi) : a[q]);
        for (int k = 0; k < lanes; k++)
            for (int q = 0; q < count; q++) planes[k * ohw + r * ow + c + q] = sums[q][k];
    }
}

/* a[u][v] = the sums of channels [8 v, 8 v + 8) of a 16-channel block at the output pixel whose window
 * starts at padded input base + u * sw (count <= LANES16_RUN, a constant where inlined): each tap's two
 * weight vectors loaded once for the pixels, each input value broadcast once for two multiply-adds
 * (with one vector per broadcast the kernel is bound by its loads: RegNet's grouped 3x3 layers, 16
 * channels a group, ran at half the speed of the direct kernel). */
#define LANES16_RUN 6 /* pixels a 16-channel block holds: 12 accumulators, 2 weights and the broadcast */
__attribute__((target("avx2,fma"), always_inline))
static inline void conv_lanes16_block_avx2(const float *base, const Py_ssize_t *offs, Py_ssize_t taps,
                                           Py_ssize_t sw, const float *lane_w, const __m256 *vb, __m256 (*a)[2],
                                           int count)
{
    __m256 acc[LANES16_RUN][2]; /* local: written to a only at the end (through a, gcc stored every sum every tap) */
    for (int u = 0; u < count; u++) acc[u][0] = vb[0], acc[u][1] = vb[1];
    for (Py_ssize_t t = 0; t < taps; t++) {
        const __m256 w0 = _mm256_loadu_ps(lane_w + t * 16), w1 = _mm256_loadu_ps(lane_w + t * 16 + 8);
        const float *src = base + offs[t];
        for (int u = 0; u < count; u++) {
            const __m256 xv = _mm256_broadcast_ss(src + u * sw);
            acc[u][0] = _mm256_fmadd_ps(w0, xv, acc[u][0]);
            acc[u][1] = _mm256_fmadd_ps(w1, xv, acc[u][1]);
        }
    }
    for (int u = 0; u < count; u++) a[u][0] = acc[u][0], a[u][1] = acc[u][1];
}

/* Output row r of a 16-channel block: the row in as few runs of at most LANES16_RUN pixels as cover it,
 * evenly (a 7-wide row: 4 + 3, not 6 + 1), each run's sums scattered into the planes. */
__attribute__((target("avx2,fma"), always_inline))
static inline void conv_lanes16_row_avx2(const Window2d *g, const float *xp, const Py_ssize_t *offs, Py_ssize_t sw,
                                         const float *lane_w, const __m256 *vb, int clamp, __m256 vlo, __m256 vhi,
                                         float *planes, int lanes, Py_ssize_t r)
{
    const Py_ssize_t taps = g->c * g->kh * g->kw, ohw = g->oh * g->ow, ow = g->ow;
    const Py_ssize_t runs = (ow + LANES16_RUN - 1) / LANES16_RUN;
    const float *base = xp + r * g->sh * (g->w + g->pl + g->pr);
    __m256 a[LANES16_RUN][2];
    float sums[LANES16_RUN][16];
    for (Py_ssize_t k = 0; k < runs; k++) {
        const Py_ssize_t c = ow * k / runs;
        const int count = (int)(ow * (k + 1) / runs - c);
        switch (count) { /* each count a constant: the accumulators stay in registers */
        case 6: conv_lanes16_block_avx2(base + c * sw, offs, taps, sw, lane_w, vb, a, 6); break;
        case 5: conv_lanes16_block_avx2(base + c * sw, offs, taps, sw, lane_w, vb, a, 5); break;
        case 4: conv_lanes16_block_avx2(base + c * sw, offs, taps, sw, lane_w, vb, a, 4); break;
        case 3: conv_lanes16_block_avx2(base + c * sw, offs, taps, sw, lane_w, vb, a, 3); break;
        case 2: conv_lanes16_block_avx2(base + c * sw, offs, taps, sw, lane_w, vb, a, 2); break;
        default: conv_lanes16_block_avx2(base + c * sw, offs, taps, sw, lane_w, vb, a, 1);
        }
        for (int q = 0; q < count; q++)
            for (int v = 0; v < 2; v++)
                _mm256_storeu_ps(sums[q] + 8 * v, clamp ? clamp_avx2(a[q][v], vlo, vhi) : a[q][v]);
        for (int o = 0; o < lanes; o++)
            for (int q = 0; q < count; q++) planes[o * ohw + r * ow + c + q] = sums[q][o];
    }
}

/* lane_w [taps][width]: output channels [o0, o0 + lanes) side by side, zeros past them; b [width]
 * their biases. */
static void lanes_weights(const float *wt, const float *bias, Py_ssize_t taps, Py_ssize_t o0, int lanes, int width,
                          float *lane_w, float *b)
{
    for (Py_ssize_t t = 0; t < taps; t++)
        for (int k = 0; k < width; k++) lane_w[t * width + k] = k < lanes ? wt[(o0 + k) * taps + t] : 0.f;
    for (int k = 0; k < width; k++) b[k] = bias && k < lanes ? bias[o0 + k] : 0.f;
}

/* Taps a window from which the 16-channel blocks run: with fewer, scattering each run's sums into the
 * planes costs more than the second multiply-add per broadcast saves (one thread, the 3->32 3x3/2
 * stem at 224x224: 0.48-0.52 ms against 0.45-0.46 in 8-channel blocks; the 3->64 7x7/2 stem, 147 taps:
 * 3.2-3.6 against 4.1-4.4; RegNet's grouped layers have 144). */
#define LANES16_MIN_TAPS 64

/* Blocks of 16 channels while more than 8 are left (windows of LANES16_MIN_TAPS taps or more), then of
 * 8, each over the rows. */
__attribute__((target("avx2,fma")))
static void conv_lanes_avx2(CONV_LANES_ARGS)
{
    const Py_ssize_t ohw = g->oh * g->ow, taps = g->c * g->kh * g->kw;
    const __m256 vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi);
    Py_ssize_t o0 = 0;
    for (; k_out - o0 > 8 && taps >= LANES16_MIN_TAPS; o0 += 16) {
        const int lanes = k_out - o0 < 16 ? (int)(k_out - o0) : 16;
        float b16[16];
        lanes_weights(wt, bias, taps, o0, lanes, 16, lane_w, b16);
        const __m256 vb[2] = {_mm256_loadu_ps(b16), _mm256_loadu_ps(b16 + 8)};
        float *planes = y + (s * k_all + o0) * ohw;
        for (Py_ssize_t r = r0; r < r1; r++)
            if (g->sw == 1) conv_lanes16_row_avx2(g, xs, offs, 1, lane_w, vb, clamp, vlo, vhi, planes, lanes, r);
            else if (g->sw == 2) conv_lanes16_row_avx2(g, xs, offs, 2, lane_w, vb, clamp, vlo, vhi, planes, lanes, r);
            else conv_lanes16_row_avx2(g, xs, offs, g->sw, lane_w, vb, clamp, vlo, vhi, planes, lanes, r);
    }
    for (; o0 < k_out; o0 += 8) {
        int lanes = k_out - o0 < 8 ? (int)(k_out - o0) : 8;
        float b8[8];
        lanes_weights(wt, bias, taps, o0, lanes, 8, lane_w, b8);
        const __m256 vb = _mm256_loadu_ps(b8);
        float *planes = y + (s * k_all + o0) * ohw;
        for (Py_ssize_t r = r0; r < r1; r++) /* the common strides as constants: plain addressing */
            if (g->sw == 1) conv_lanes_row_avx2(g, xs, offs, 1, lane_w, vb, clamp, vlo, vhi, planes, lanes, r);
            else if (g->sw == 2) conv_lanes_row_avx2(g, xs, offs, 2, lane_w, vb, clamp, vlo, vhi, planes, lanes, r);
            else conv_lanes_row_avx2(g, xs, offs, g->sw, lane_w, vb, clamp, vlo, vhi, planes, lanes, r);
    }
}

/* AVX-512: 32 output channels in two registers per pixel, so each broadcast input value feeds two
 * multiply-adds (the AVX2 kernel is bound by its loads, one broadcast per FMA; the 7x7 RGB stem of
 * ResNet-18 with one 16-channel register: 3.06 ms against onnxruntime's 1.72). */
__attribute__((target("avx512f,avx2,fma"), always_inline))
static inline __m512 clamp_avx512(__m512 a, __m512 vlo, __m512 vhi)
{
    a = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, vlo, _CMP_LT_OQ), a, vlo); /* NaN compares false: kept */
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, vhi, _CMP_GT_OQ), a, vhi);
}

/* a[u][v] = the sums of the block's channels [16 v, 16 v + 16) at the output pixel whose window starts at
 * padded input base + u * sw, for nb = 1 or 2 vectors (a constant where inlined): each tap's nb weight
 * vectors are loaded once for all the pixels, each input value broadcast once for the nb products. */
__attribute__((target("avx512f,avx2,fma"), always_inline))
static inline void conv_lanes512_block(const float *base, const Py_ssize_t *offs, Py_ssize_t taps, Py_ssize_t sw,
                                       const float *lane_w, const __m512 *vb, __m512 (*a)[2], int count, int nb)
{
    for (int u = 0; u < count; u++)
        for (int v = 0; v < nb; v++) a[u][v] = vb[v];
    for (Py_ssize_t t = 0; t < taps; t++) {
        const __m512 w0 = _mm512_loadu_ps(lane_w + t * 16 * nb);
        const __m512 w1 = nb > 1 ? _mm512_loadu_ps(lane_w + t * 16 * nb + 16) : w0;
        const float *src = base + offs[t];
        for (int u = 0; u < count; u++) {
            const __m512 xv = _mm512_set1_ps(src[u * sw]);
            a[u][0] = _mm512_fmadd_ps(w0, xv, a[u][0]);
            if (nb > 1) a[u][1] = _mm512_fmadd_ps(w1, xv, a[u][1]);
        }
    }
}

/* conv_lanes_row_avx2 with 16 nb channels: each 8-pixel block's 8-channel quarters transposed 8x8 apart. */
__attribute__((target("avx512f,avx2,fma"), always_inline))
static inline void conv_lanes512_row(const Window2d *g, const float *xp, const Py_ssize_t *offs, Py_ssize_t sw,
                                     const float *lane_w, const __m512 *vb, int clamp, __m512 vlo, __m512 vhi,
                                     float *planes, int lanes, Py_ssize_t r, int nb)
{
    const Py_ssize_t taps = g->c * g->kh * g->kw, ohw = g->oh * g->ow, ow = g->ow;
    const float *base = xp + r * g->sh * (g->w + g->pl + g->pr);
    __m512 a[8][2];
    Py_ssize_t c = 0;
    for (; c + 8 <= ow; c += 8) {
        conv_lanes512_block(base + c * sw, offs, taps, sw, lane_w, vb, a, 8, nb);
        __m256 quarter[4][8];
        for (int u = 0; u < 8; u++)
            for (int v = 0; v < nb; v++) {
                const __m512 x = clamp ? clamp_avx512(a[u][v], vlo, vhi) : a[u][v];
                quarter[2 * v][u] = _mm512_castps512_ps256(x);
                quarter[2 * v + 1][u] = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1));
            }
        for (int q = 0; q < 2 * nb; q++) transpose8(quarter[q]); /* quarter[k / 8][k % 8]: channel k, 8 pixels */
        for (int k = 0; k < lanes; k++) _mm256_storeu_ps(planes + k * ohw + r * ow + c, quarter[k / 8][k % 8]);
    }
    if (c < ow) { /* the row's last pixels, fewer than 8 */
        int count = (int)(ow - c);
        float sums[8][32];
        conv_lanes512_block(base + c * sw, offs, taps, sw, lane_w, vb, a, count, nb);
        for (int q = 0; q < count; q++)
            for (int v = 0; v < nb; v++)
                _mm512_storeu_ps(sums[q] + 16 * v, clamp ? clamp_avx512(a[q][v], vlo, vhi) : a[q][v]);
        for (int k = 0; k < lanes; k++)
            for (int q = 0; q < count; q++) planes[k * ohw + r * ow + c + q] = sums[q][k];
    }
}

/* Rows [r0, r1) of channels [o0, o0 + 16 nb), the strides 1 and 2 as constants. */
__attribute__((target("avx512f,avx2,fma"), always_inline))
static inline void conv_lanes512_rows(const Window2d *g, Py_ssize_t k_out, Py_ssize_t k_all, const float *wt,
                                      const float *bias, float *y, int clamp, __m512 vlo, __m512 vhi, const float *xs,
                                      float *lane_w, const Py_ssize_t *offs, Py_ssize_t s, Py_ssize_t r0,
                                      Py_ssize_t r1, Py_ssize_t o0, int nb)
{
    const int width = 16 * nb, lanes = k_out - o0 < width ? (int)(k_out - o0) : width;
    float b[32];
    lanes_weights(wt, bias, g->c * g->kh * g->kw, o0, lanes, width, lane_w, b);
    const __m512 vb[2] = {_mm512_loadu_ps(b), _mm512_loadu_ps(b + 16)};
    float *planes = y + (s * k_all + o0) * g->oh * g->ow;
    for (Py_ssize_t r = r0; r < r1; r++)
        if (g->sw == 1) conv_lanes512_row(g, xs, offs, 1, lane_w, vb, clamp, vlo, vhi, planes, lanes, r, nb);
        else if (g->sw == 2) conv_lanes512_row(g, xs, offs, 2, lane_w, vb, clamp, vlo, vhi, planes, lanes, r, nb);
        else conv_lanes512_row(g, xs, offs, g->sw, lane_w, vb, clamp, vlo, vhi, planes, lanes, r, nb);
}

/* Blocks of 32 channels, then one of 16 for what is left (zero weights past the last channel). */
__attribute__((target("avx512f,avx2,fma")))
static void conv_lanes_avx512(CONV_LANES_ARGS)
{
    const __m512 vlo = _mm512_set1_ps(lo), vhi = _mm512_set1_ps(hi);
    Py_ssize_t o0 = 0;
    for (; k_out - o0 > 16; o0 += 32)
        conv_lanes512_rows(g, k_out, k_all, wt, bias, y, clamp, vlo, vhi, xs, lane_w, offs, s, r0, r1, o0, 2);
    if (o0 < k_out)
        conv_lanes512_rows(g, k_out, k_all, wt, bias, y, clamp, vlo, vhi, xs, lane_w, offs, s, r0, r1, o0, 1);
}
#endif

/* One call's units, shared by the pool's threads; each range gets its own lane_w. g: one group's window
 * (g->c its input channels); k_out: a group's output channels. */
typedef struct {
    const Window2d *g;
    Py_ssize_t k_out, groups, padded, taps;
    const float *wt, *bias, *xp;
    float *y, lo, hi;
    int clamp, failed;
    const Py_ssize_t *offs;
} LanesJob;

/* Units [u0, u1): unit u is output row u % OH of sample u / OH / groups, group u / OH % groups. */
static void lanes_range(void *ctx, Py_ssize_t u0, Py_ssize_t u1)
{
    LanesJob *j = ctx;
    float *lane_w = malloc((size_t)j->taps * 32 * sizeof(float)); /* [taps][32] for AVX-512 */
    if (!lane_w) {
        __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    const Window2d *g = j->g;
    const Py_ssize_t oh = g->oh, k_all = j->k_out * j->groups, plane = (g->h + g->pt + g->pb) * (g->w + g->pl + g->pr);
    for (Py_ssize_t u = u0; u < u1;) { /* the range's rows of each sample and group */
        const Py_ssize_t s = u / oh / j->groups, gi = u / oh % j->groups, r0 = u % oh;
        const Py_ssize_t r1 = r0 + (u1 - u) < oh ? r0 + (u1 - u) : oh;
        const float *xs = j->xp + s * j->padded + gi * g->c * plane, *wt = j->wt + gi * j->k_out * j->taps;
        const float *bias = j->bias ? j->bias + gi * j->k_out : NULL;
        float *y = j->y + gi * j->k_out * g->oh * g->ow;
#ifdef HAVE_AVX2_PATH
        if (use_avx512())
            conv_lanes_avx512(g, j->k_out, k_all, wt, bias, y, j->clamp, j->lo, j->hi, xs, lane_w, j->offs, s, r0, r1);
        else
#endif
            DISPATCH(conv_lanes, g, j->k_out, k_all, wt, bias, y, j->clamp, j->lo, j->hi, xs, lane_w, j->offs, s, r0,
                     r1);
        u += r1 - r0;
    }
    free(lane_w);
}

PyDoc_STRVAR(conv_lanes_doc,
"conv_lanes2d(x, y, weight, shape, kernel, strides, dilations, pads, out_channels, bias=None, clip=None,\n"
"             threads=1, groups=1)\n\n"
"Dense convolution of x float32 [N, C, H, W] (shape) into y float32 [N, out_channels, OH, OW] through\n"
"weight float32 [out_channels, C / groups, kh, kw] (ONNX's layout: groups divides C and out_channels);\n"
"kernel, strides, dilations = (h, w), pads = (top, left, bottom, right). bias float32 [out_channels]\n"
"is added, then clip = (lo, hi) clamps (NaN kept). Output rows of each group (every channel of it)\n"
"taken by up to threads threads of the native pool.");

static PyObject *conv_lanes2d(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"x", "y", "weight", "shape", "kernel", "strides", "dilations", "pads", "out_channels",
                             "bias", "clip", "threads", "groups", NULL};
    PyObject *xo, *yo, *wo, *bo = Py_None, *clipo = Py_None;
    Py_ssize_t n, k_out, groups = 1;
    int threads = 1;
    Window2d g = {.multiplier = 1};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO(nnnn)(nn)(nn)(nn)(nnnn)n|OOin", kwlist, &xo, &yo, &wo, &n,
                                     &g.c, &g.h, &g.w, &g.kh, &g.kw, &g.sh, &g.sw, &g.dh, &g.dw, &g.pt, &g.pl, &g.pb,
                                     &g.pr, &k_out, &bo, &clipo, &threads, &groups))
        return NULL;
    Window2d group = g; /* one group's window: its input channels */
    LanesJob job = {.g = &group, .groups = groups, .clamp = clipo != Py_None};
    if (job.clamp && !PyArg_ParseTuple(clipo, "ff", &job.lo, &job.hi)) return NULL;
    if (n < 0 || k_out < 1 || k_out > ((Py_ssize_t)1 << 20) || threads < 1) {
        PyErr_SetString(PyExc_ValueError,
                        "conv_lanes2d: a size, stride, dilation, pad or thread count is out of bounds");
        return NULL;
    }
    if (groups < 1 || g.c % groups || k_out % groups) {
        PyErr_Format(PyExc_ValueError, "conv_lanes2d: groups=%zd must divide the %zd input and %zd output channels",
                     groups, g.c, k_out);
        return NULL;
    }
    if (window_output(&g, "conv_lanes2d") < 0) return NULL;
    group.c = g.c / groups, group.oh = g.oh, group.ow = g.ow, job.k_out = k_out / groups;
    Py_buffer xb, yb, wb = {0}, bb = {0};
    if (get_in_out(xo, &xb, "x", yo, &yb, "y", 1) < 0) return NULL;
    PyObject *result = NULL;
    float *xp = NULL;
    Py_ssize_t *offs = NULL;
    if (get_array_of_rank(wo, &wb, 'f', 4, 0, 1, "weight") < 0) goto done;
    if (bo != Py_None && get_array_of_rank(bo, &bb, 'f', 4, 0, 1, "bias") < 0) goto done;
    Py_ssize_t x_count = SIZE_PRODUCT(n, g.c, g.h, g.w), y_count = SIZE_PRODUCT(n, k_out, g.oh, g.ow),
               w_count = SIZE_PRODUCT(k_out, group.c, g.kh, g.kw), taps = SIZE_PRODUCT(group.c, g.kh, g.kw, 16),
               padded = SIZE_PRODUCT(g.c, g.h + g.pt + g.pb, g.w + g.pl + g.pr), all = SIZE_PRODUCT(n, padded);
    Py_ssize_t units = SIZE_PRODUCT(n, groups, g.oh), row_work = SIZE_PRODUCT(g.ow, job.k_out, taps);
    if (x_count < 0 || y_count < 0 || w_count < 0 || taps < 0 || padded < 0 || all < 0 || units < 0 ||
        row_work < 0) {
        PyErr_SetString(PyExc_ValueError, "conv_lanes2d: the input, output or weight size overflows");
        goto done;
    }
    if (xb.len / 4 != x_count || yb.len / 4 != y_count || wb.len / 4 != w_count || (bb.buf && bb.len / 4 != k_out)) {
        PyErr_Format(PyExc_ValueError, "conv_lanes2d: x must have %zd values, y %zd, weight %zd, bias %zd", x_count,
                     y_count, w_count, k_out);
        goto done;
    }
    /* Without pads the windows read x itself (ConvNeXt's 4x4 stride-4 stem, 3 -> 40 at 224x224: 191 -> 152 us on
     * one thread, 146 -> 97 on two, with the pads written in parallel instead of a zeroed copy) */
    const int padless = !(g.pt | g.pb | g.pl | g.pr);
    xp = padless ? NULL : PyMem_RawMalloc((all > 0 ? all : 1) * sizeof(float));
    offs = PyMem_RawMalloc(taps / 16 * sizeof(Py_ssize_t));
    if ((!padless && !xp) || !offs) {
        PyErr_NoMemory();
        goto done;
    }
    job.wt = wb.buf, job.bias = bb.buf, job.y = yb.buf, job.xp = padless ? xb.buf : xp, job.padded = padded;
    job.taps = taps / 16, job.offs = offs;
    PadJob pad = {&g, xb.buf, xp};
    Py_BEGIN_ALLOW_THREADS
    lanes_offsets(&group, offs);
    if (!padless) parallel_for(pad_planes, &pad, n * g.c, 1 + RANGE_MIN_VALUES / (padded / (g.c > 0 ? g.c : 1) + 1), threads);
    parallel_for(lanes_range, &job, units, 1 + RANGE_MIN_MACS * 16 / (row_work + 1), threads);
    Py_END_ALLOW_THREADS
    if (job.failed) {
        PyErr_NoMemory();
        goto done;
    }
    result = Py_NewRef(Py_None);
done:
    PyMem_RawFree(xp);
    PyMem_RawFree(offs);
    RELEASE_BUFFERS(&xb, &yb, &wb, &bb);
    return result;
}

/* ------------------------------------------------------------------------------------------------
 * im2col2d: the column matrix of a 2-D convolution, cols [C * kh * kw, N * OH * OW], written once,
 * zeros for the padding, no padded copy of the input and no garbage columns, so that the product
 * W [C_out, C * kh * kw] @ cols is already the NCHW output of a sample (numpy's strided copies made
 * a padded copy per stride phase, columns past OW in every row, then a crop of the product).
 * ------------------------------------------------------------------------------------------------ */

/* One call's geometry, shared by the pool's threads: each takes column-matrix rows (c, i, j). */
typedef struct {
    const Window2d *g;
    const float *x;
    float *cols;
    Py_ssize_t n, columns;
} Im2colJob;

#ifdef HAVE_AVX2_PATH
/* One column-matrix row of at most 16 outputs a row whose inputs span at most 32 values ((ow - 1) * sw
 * < 32: the 7x7 planes of the small-plane sparse layers, at stride 1 or 2): each run one or two masked
 * loads of exactly the in-row inputs of columns [q0, q1), at stride 2 or more gathered into place by
 * one permute, and one store. memcpy and the padding loops took 0.19 ms for a 512-channel 3x3
 * layer's 32k runs of 7 values, the scalar strided copy 0.10 ms for a 256-channel stride-2 one's 16k. */
__attribute__((target("avx512f,avx2,fma")))
static void im2col_short_rows_avx512(const Window2d *g, const float *x, Py_ssize_t c, Py_ssize_t i,
                                     Py_ssize_t off, Py_ssize_t q0, Py_ssize_t q1, Py_ssize_t n, float *dst)
{
    const Py_ssize_t ow = g->ow, sw = g->sw, h = g->h, w = g->w, plane = h * w, sample = g->c * plane;
    const Py_ssize_t r0 = i * g->dh - g->pt, sh = g->sh, oh = g->oh;
    uint32_t lanes = ((1u << q1) - 1) & ~((1u << q0) - 1); /* the input values read, from the run's first */
    if (sw > 1)
        for (Py_ssize_t q = lanes = 0; q < q1; q++) lanes |= q < q0 ? 0 : 1u << (q * sw);
    /* lane q takes input q * sw (past ow the index wraps mod 32: never stored) */
    const __m512i order = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                             _mm512_set1_epi32((int)sw));
    const __mmask16 low = (__mmask16)lanes, high = (__mmask16)(lanes >> 16), all = (__mmask16)((1u << ow) - 1);
    for (Py_ssize_t s = 0; s < n; s++) {
        const float *xc = x + s * sample + c * plane + off;
        if (sw == 1)
            for (Py_ssize_t r = 0; r < oh; r++, dst += ow) {
                const Py_ssize_t row = r * sh + r0;
                __m512 v = row < 0 || row >= h ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(low, xc + row * w);
                _mm512_mask_storeu_ps(dst, all, v);
            }
        else
            for (Py_ssize_t r = 0; r < oh; r++, dst += ow) {
                const Py_ssize_t row = r * sh + r0;
                const float *in = xc + row * w;
                __m512 v = row < 0 || row >= h ? _mm512_setzero_ps()
                           : _mm512_permutex2var_ps(_mm512_maskz_loadu_ps(low, in), order,
                                                    _mm512_maskz_loadu_ps(high, in + 16));
                _mm512_mask_storeu_ps(dst, all, v);
            }
    }
}

/* dst[q] = src[2 q] for q in [0, n): 8 outputs from two loads of 16 inputs, the even ones picked as
 * pool2d's (EVENS8, uncross8), the last few (and any whose loads would pass src[2 n - 2]) one at a
 * time. The scalar strided copy took half of a stride-2 grouped layer's im2col + product (RegNetX's
 * 32-channel 3x3 of 2 groups at 112x112, a Zen 3 without AVX-512). */
__attribute__((target("avx2,fma")))
static void copy_stride2_avx2(float *dst, const float *src, Py_ssize_t n)
{
    Py_ssize_t q = 0;
    for (; q + 8 < n; q += 8) /* reads src[2 q .. 2 q + 15], all at most 2 (n - 1) */
        _mm256_storeu_ps(dst + q, uncross8(EVENS8(_mm256_loadu_ps(src + 2 * q), _mm256_loadu_ps(src + 2 * q + 8))));
    for (; q < n; q++) dst[q] = src[2 * q];
}
#endif

static void im2col_range(void *ctx, Py_ssize_t lo, Py_ssize_t hi)
{
    const Im2colJob *job = ctx;
    const Window2d *g = job->g;
    const Py_ssize_t oh = g->oh, ow = g->ow, hw = g->h * g->w;
    for (Py_ssize_t t = lo; t < hi; t++) {
        const Py_ssize_t c = t / (g->kh * g->kw), i = t / g->kw % g->kh, j = t % g->kw;
        /* output columns [q0, q1) read inside the input row; the others are padding */
        const Py_ssize_t off = j * g->dw - g->pl;
        Py_ssize_t q0 = off >= 0 ? 0 : (-off + g->sw - 1) / g->sw;
        Py_ssize_t q1 = g->w - 1 - off < 0 ? 0 : (g->w - 1 - off) / g->sw + 1;
        q0 = q0 > ow ? ow : q0;
        q1 = q1 > ow ? ow : q1 < q0 ? q0 : q1;
        float *dst = job->cols + t * job->columns;
#ifdef HAVE_AVX2_PATH
        if (ow <= 16 && (ow - 1) * g->sw < 32 && use_avx512()) {
            im2col_short_rows_avx512(g, job->x, c, i, off, q0, q1, job->n, dst);
            continue;
        }
#endif
        for (Py_ssize_t s = 0; s < job->n; s++)
            for (Py_ssize_t r = 0; r < oh; r++, dst += ow) {
                const Py_ssize_t row = r * g->sh + i * g->dh - g->pt;
                if (row < 0 || row >= g->h) {
                    memset(dst, 0, ow * sizeof(float));
                    continue;
                }
                const float *src = job->x + (s * g->c + c) * hw + row * g->w;
                for (Py_ssize_t q = 0; q < q0; q++) dst[q] = 0.f;
                if (g->sw == 1)
                    memcpy(dst + q0, src + q0 + off, (q1 - q0) * sizeof(float));
#ifdef HAVE_AVX2_PATH
                else if (g->sw == 2 && use_avx2())
                    copy_stride2_avx2(dst + q0, src + 2 * q0 + off, q1 - q0);
#endif
                else
                    for (Py_ssize_t q = q0; q < q1; q++) dst[q] = src[q * g->sw + off];
                for (Py_ssize_t q = q1; q < ow; q++) dst[q] = 0.f;
            }
    }
}

PyDoc_STRVAR(im2col_doc,
"im2col2d(x, cols, shape, kernel, strides, dilations, pads, threads=1)\n\n"
"cols float32 [C * kh * kw, N * OH * OW] of x float32 [N, C, H, W] (shape): row (c, i, j), column\n"
"(n, r, q) holds x[n, c, r * sh + i * dh - top, q * sw + j * dw - left], 0 outside; kernel, strides,\n"
"dilations = (h, w), pads = (top, left, bottom, right). Rows taken by up to threads threads.");

static PyObject *im2col2d(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"x", "cols", "shape", "kernel", "strides", "dilations", "pads", "threads", NULL};
    PyObject *xo, *co;
    Py_ssize_t n;
    int threads = 1;
    Window2d g = {.multiplier = 1};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO(nnnn)(nn)(nn)(nn)(nnnn)|i", kwlist, &xo, &co, &n, &g.c, &g.h,
                                     &g.w, &g.kh, &g.kw, &g.sh, &g.sw, &g.dh, &g.dw, &g.pt, &g.pl, &g.pb, &g.pr,
                                     &threads))
        return NULL;
    if (n < 0 || threads < 1) {
        PyErr_SetString(PyExc_ValueError,
                        "im2col2d: a size, stride, dilation, pad or thread count is out of bounds");
        return NULL;
    }
    if (window_output(&g, "im2col2d") < 0) return NULL;
    Py_buffer xb, cb;
    if (get_in_out(xo, &xb, "x", co, &cb, "cols", 1) < 0) return NULL;
    PyObject *result = NULL;
    const Py_ssize_t x_count = SIZE_PRODUCT(n, g.c, g.h, g.w), rows = SIZE_PRODUCT(g.c, g.kh, g.kw),
                     columns = SIZE_PRODUCT(n, g.oh, g.ow), c_count = SIZE_PRODUCT(n, g.c, g.kh, g.kw, g.oh, g.ow);
    if (x_count < 0 || rows < 0 || columns < 0 || c_count < 0) {
        PyErr_SetString(PyExc_ValueError, "im2col2d: the input or column matrix size overflows");
        goto done;
    }
    if (xb.len / 4 != x_count || cb.len / 4 != c_count) {
        PyErr_Format(PyExc_ValueError, "im2col2d: x must have %zd values, cols %zd", x_count, c_count);
        goto done;
    }
    Im2colJob job = {&g, xb.buf, cb.buf, n, columns};
    Py_BEGIN_ALLOW_THREADS
    parallel_for(im2col_range, &job, rows, 1 + RANGE_MIN_VALUES / (columns + 1), threads);
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&xb);
    PyBuffer_Release(&cb);
    return result;
}

static PyMethodDef module_methods[] = {
    {"set_simd", set_simd, METH_O, set_simd_doc},
    {"set_avx512", set_avx512, METH_O, set_avx512_doc},
    {"batched_simd", batched_simd, METH_NOARGS, batched_simd_doc},
    {"pool2d", (PyCFunction)(void (*)(void))pool2d, METH_VARARGS | METH_KEYWORDS, pool_doc},
    {"depthwise2d", (PyCFunction)(void (*)(void))depthwise2d, METH_VARARGS | METH_KEYWORDS, depthwise_doc},
    {"conv_lanes2d", (PyCFunction)(void (*)(void))conv_lanes2d, METH_VARARGS | METH_KEYWORDS, conv_lanes_doc},
    {"im2col2d", (PyCFunction)(void (*)(void))im2col2d, METH_VARARGS | METH_KEYWORDS, im2col_doc},
    {"winograd_conv", (PyCFunction)(void (*)(void))winograd_conv, METH_VARARGS | METH_KEYWORDS, wino_conv_doc},
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_native", "dcm's compiled kernels (see _native.c).", -1, module_methods,
};

PyMODINIT_FUNC PyInit__native(void)
{
    import_pool();
    if (PyType_Ready(&SparseMatrixType) < 0 || PyType_Ready(&SparseConvType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    if (PyModule_AddObjectRef(m, "SparseMatrix", (PyObject *)&SparseMatrixType) < 0 ||
        PyModule_AddObjectRef(m, "SparseConv", (PyObject *)&SparseConvType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
