/* dcm.runtime.cpu._gemm: dense float32 products split over the native thread pool.
 *
 * gemm(a, b, out, threads) computes out = a @ b for stacks of row-major or column-major operands with
 * the single-threaded sgemm of scipy's OpenBLAS (import_sgemm, _kernel_common.h), cutting the work
 * into chunks that the threads of parallel_for (_pool.c) share: whole products of a stack, else rows or
 * columns of one product.
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
#include "_operand.h"
#include "_packed_gemm.h"

/* The fewest rows (or columns) in a chunk of one product: narrower chunks run below sgemm's speed. */
#define CHUNK_MIN 16
/* Chunks per thread: more leave less undone behind a late thread, but each chunk packs the operand it does
 * not cut again. 2 threads, quiet machine, 4 -> 2 chunks each: 192x768 @ 768x196 353 -> 286 us,
 * 1024x256 @ 256x128 287 -> 255, 64x576 @ 576x3136 1179 -> 1071. */
#define CHUNKS_PER_THREAD 2

typedef struct {
    dcm_sgemm_fn sgemm;
    Operand a, b, c;
    Py_ssize_t lead[MAX_DIMS];
    int nlead;
    int m, n, k;
    int by_rows;      /* chunks of rows (else columns) of one product */
    Py_ssize_t chunk; /* rows or columns per chunk (the last one of a product may be shorter) */
    Py_ssize_t parts; /* chunks per product: 1 (whole products) or more */
} Gemm;

/* The byte offset of product p of the stack in an operand. */
static Py_ssize_t item_offset(const Gemm *g, const Operand *o, Py_ssize_t p)
{
    return lead_offset(g->lead, g->nlead, o->lead_strides, p);
}

#ifdef HAVE_AVX2_PATH
#define ROW_GROUP 8 /* rows of b added into c at a time (4: 1.13x the time with b in DRAM, 16: 1.4x in L3) */
#define ROW_PART 256 /* rows of b in a part of a one-row product (row_product) */

/* c [n] = a [k] (element stride as) @ b [k, n] (row-major, row stride ldb), b read in address order:
 * ROW_GROUP of its rows at a time are added into c, which stays in L1. A one-row product is bound by
 * reading b, and sgemm packs b first, a copy of the whole matrix: a 1280 x 1000 classifier at batch 1
 * on 2 threads took 144 us in sgemm's column chunks, 39 this way (numpy's one sgemv call: 52; on one
 * thread numpy's stays: 36-50 against this loop's 50, so blas.matmul sends it only split products). */
__attribute__((target("avx512f,avx2,fma"))) static void row_times_matrix(const float *a, Py_ssize_t as,
                                                                           const float *b, Py_ssize_t ldb,
                                                                           float *c, Py_ssize_t k, Py_ssize_t n)
{
    const __mmask16 tail = (__mmask16)((1u << (n % 16)) - 1);
    memset(c, 0, (size_t)n * sizeof(float));
    for (Py_ssize_t i = 0; i < k; i += ROW_GROUP) {
        const int rows = k - i < ROW_GROUP ? (int)(k - i) : ROW_GROUP;
        __m512 x[ROW_GROUP];
        const float *r[ROW_GROUP];
        for (int q = 0; q < ROW_GROUP; q++) {
            x[q] = _mm512_set1_ps(q < rows ? a[(i + q) * as] : 0.f);
            r[q] = b + (i + (q < rows ? q : 0)) * ldb; /* a missing row: row i again, times 0 */
        }
        Py_ssize_t j = 0;
        for (; j + 16 <= n; j += 16) {
            __m512 acc = _mm512_loadu_ps(c + j);
            for (int q = 0; q < ROW_GROUP; q++) acc = _mm512_fmadd_ps(x[q], _mm512_loadu_ps(r[q] + j), acc);
            _mm512_storeu_ps(c + j, acc);
        }
        if (tail) {
            __m512 acc = _mm512_maskz_loadu_ps(tail, c + j);
            for (int q = 0; q < ROW_GROUP; q++) acc = _mm512_fmadd_ps(x[q], _mm512_maskz_loadu_ps(tail, r[q] + j), acc);
            _mm512_mask_storeu_ps(c + j, tail, acc);
        }
    }
}
#endif

/* Rows [r0, r1) and columns [c0, c1) of product p: row-major C = A @ B is the column-major C^T = B^T A^T. */
static void product_part(const Gemm *g, Py_ssize_t p, int r0, int r1, int c0, int c1)
{
    const float one = 1.f, zero = 0.f;
    const int m = r1 - r0, n = c1 - c0;
    const float *a = (const float *)(g->a.base + item_offset(g, &g->a, p)) + r0 * g->a.row;
    const float *b = (const float *)(g->b.base + item_offset(g, &g->b, p)) + c0 * g->b.col;
    float *c = (float *)(g->c.base + item_offset(g, &g->c, p)) + r0 * g->c.row + c0;
#ifdef HAVE_AVX2_PATH
    if (m == 1 && g->b.trans == 'N' && use_avx512()) {
        row_times_matrix(a, g->a.col, b, g->b.row, c, g->k, n);
        return;
    }
#endif
    g->sgemm(&g->b.trans, &g->a.trans, &n, &m, &g->k, &one, b, &g->b.ld, a, &g->a.ld, &zero, c, &g->c.ld);
}

/* parallel_for's range function over chunks [lo, hi) of the stack, parts chunks per product. The chunks
 * depend only on the shapes and the thread count, never on which thread runs them or whether the pool
 * was free: a product gets the same bits on every run. */
static void gemm_range(void *ctx, Py_ssize_t lo, Py_ssize_t hi)
{
    const Gemm *g = ctx;
    for (Py_ssize_t u = lo; u < hi; u++) {
        const Py_ssize_t p = u / g->parts, first = u % g->parts * g->chunk, span = g->by_rows ? g->m : g->n;
        const int last = (int)(first + g->chunk < span ? first + g->chunk : span);
        if (g->by_rows) product_part(g, p, (int)first, last, 0, g->n);
        else product_part(g, p, 0, g->m, (int)first, last);
    }
}

#ifdef HAVE_AVX2_PATH
/* One row's product, a [1, k] @ b [k, n], cut into parts of ROW_PART rows of b whose partial sums the
 * threads compute side by side, each reading its own contiguous stretch of b, and which are then added
 * in part order: every thread count gives the same bits. */
typedef struct {
    const Gemm *g;
    float *partial; /* [parts][n] */
} RowProduct;

static void row_parts(void *ctx, Py_ssize_t lo, Py_ssize_t hi)
{
    const RowProduct *r = ctx;
    const Gemm *g = r->g;
    for (Py_ssize_t u = lo; u < hi; u++) {
        const Py_ssize_t i0 = u * ROW_PART, rows = g->k - i0 < ROW_PART ? g->k - i0 : ROW_PART;
        row_times_matrix((const float *)g->a.base + i0 * g->a.col, g->a.col, (const float *)g->b.base + i0 * g->b.row,
                         g->b.row, r->partial + u * g->n, rows, g->n);
    }
}

static PyObject *row_product(const Gemm *g, int threads)
{
    const Py_ssize_t parts = (g->k + ROW_PART - 1) / ROW_PART, n = g->n;
    float *c = (float *)g->c.base;
    if (parts <= 1) {
        row_times_matrix((const float *)g->a.base, g->a.col, (const float *)g->b.base, g->b.row, c, g->k, n);
        return Py_NewRef(Py_None);
    }
    RowProduct r = {g, PyMem_RawMalloc((size_t)(parts * n) * sizeof(float))};
    if (!r.partial) return PyErr_NoMemory();
    Py_BEGIN_ALLOW_THREADS
    parallel_for(row_parts, &r, parts, 1, threads);
    memcpy(c, r.partial, (size_t)n * sizeof(float));
    for (Py_ssize_t u = 1; u < parts; u++)
        for (Py_ssize_t j = 0; j < n; j++) c[j] += r.partial[u * n + j];
    Py_END_ALLOW_THREADS
    PyMem_RawFree(r.partial);
    return Py_NewRef(Py_None);
}
#endif

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
    /* Whole products where there are enough of them, else each cut into rows unless it has more than twice
     * as many columns: a chunk of columns is narrow in sgemm's own (column-major) rows, where its kernel
     * is slowest. ViT's patch layer, 192x768 @ 768x196 on 2 threads, took 430 us in column chunks and 260 in
     * row chunks (one thread: 369). */
    g.by_rows = 2 * m >= n;
    const Py_ssize_t span = g.by_rows ? m : n;
    g.chunk = span, g.parts = 1;
    if (threads > 1 && count < 2 * (Py_ssize_t)threads && span >= 2 * CHUNK_MIN) {
        const Py_ssize_t wanted = (Py_ssize_t)threads * CHUNKS_PER_THREAD;
        g.chunk = (span + wanted - 1) / wanted;
        if (g.chunk < CHUNK_MIN) g.chunk = CHUNK_MIN;
        g.parts = (span + g.chunk - 1) / g.chunk;
    }
#ifdef HAVE_AVX2_PATH
    if (m == 1 && count == 1 && g.b.trans == 'N' && use_avx512()) {
        result = row_product(&g, threads);
        goto done;
    }
#endif
    Py_BEGIN_ALLOW_THREADS
    parallel_for(gemm_range, &g, count * g.parts, 1, threads);
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    RELEASE_BUFFERS(&av, &bv, &cv);
    return result;
}

PyDoc_STRVAR(pack_weight_doc,
"pack_weight(w) -> bytearray\n\n"
"A constant weight w [k, n] (float32, any strides) in the panel layout gemm_packed reads: its floats\n"
"(native byte order), for np.frombuffer(..., np.float32).");

static PyObject *pack_weight(PyObject *self, PyObject *arg)
{
    Py_buffer v = {0};
    if (get_float_view(arg, &v, 0, "w") < 0) return NULL;
    PyObject *result = NULL;
    if (v.ndim != 2 || v.strides[0] < 0 || v.strides[1] < 0) {
        PyErr_SetString(PyExc_ValueError, "w must be a matrix with non-negative strides");
        goto done;
    }
    const Py_ssize_t k = v.shape[0], n = v.shape[1], size = packed_size(k, n);
    if (size < 0) {
        PyErr_SetString(PyExc_ValueError, "sizes overflow");
        goto done;
    }
    if (!(result = PyByteArray_FromStringAndSize(NULL, size * 4))) goto done;
    pack_panels(v.buf, k, n, v.strides[0], v.strides[1], (float *)PyByteArray_AS_STRING(result));
done:
    RELEASE_BUFFERS(&v);
    return result;
}

PyDoc_STRVAR(gemm_packed_doc,
"gemm_packed(x, packed, out, threads=1, bias=None, relu=False, act=None, residual=None, scale=None) -> None\n\n"
"out = act((x * scale) @ w + bias [n] + residual) for float32 x [m, k] and out [m, n], both row-major\n"
"with unit stride along a row, and w [k, n] as pack_weight packed it (its length must be that of a\n"
"[k, n] weight). act: None or (name, a, b) as pointwise_conv takes it (relu, clip, sigmoid, silu,\n"
"hardswish); relu=True is act ('relu', 0, 0). residual: float32 contiguous [m, n]. scale: float32\n"
"contiguous [g, k], a factor per column of x for each of g equal groups of its rows (a squeeze-and-\n"
"excitation gate per sample); it goes into a copy of x or of the packed weight, whichever is smaller.\n"
"On up to `threads` threads of the native pool; releases the GIL. Needs AVX-512 or AVX2 + FMA\n"
"(packed_simd() says which this CPU and the set_simd and set_avx512 switches allow).");

#ifdef HAVE_AVX2_PATH
/* out [rows, k] = x [rows, k] (row stride ldx) times f [k] per column (vectorized by the compiler). */
__attribute__((target("avx2,fma"))) static void scale_columns(const float *x, Py_ssize_t ldx, Py_ssize_t rows,
                                                              Py_ssize_t k, const float *f, float *out)
{
    for (Py_ssize_t r = 0; r < rows; r++)
        for (Py_ssize_t i = 0; i < k; i++) out[r * k + i] = x[r * ldx + i] * f[i];
}

/* out = packed (panels of k rows of PANEL floats) with row i times f[i]: the weight of (x * f) @ w. */
__attribute__((target("avx2,fma"))) static void scale_panel_rows(const float *packed, Py_ssize_t panels,
                                                                 Py_ssize_t k, const float *f, float *out)
{
    for (Py_ssize_t q = 0; q < panels; q++)
        for (Py_ssize_t i = 0; i < k; i++, packed += PANEL, out += PANEL)
            for (int j = 0; j < PANEL; j++) out[j] = packed[j] * f[i];
}

/* The product with a scale [groups, k] (see gemm_packed): a sample's x smaller than the weight (7x7
 * planes) is scaled for all groups at once, then one product; else each group gets the weight scaled
 * and its own product. In numpy the two copies took 20-230 us on EfficientNet-B0's projections, on one
 * thread, a quarter of the product's time. 0, or -1 where the scratch could not be allocated. */
static int scaled_product(const Packed *p, const float *scale, Py_ssize_t groups, Py_ssize_t size, int threads)
{
    const Py_ssize_t rows = p->m / groups;
    const int scale_x = rows * p->k < size;
    const size_t count = (size_t)(scale_x ? p->m * p->k : size);
    float *tmp = malloc((count ? count : 1) * sizeof(float));
    if (!tmp) return -1;
    if (scale_x) {
        for (Py_ssize_t g = 0; g < groups; g++)
            scale_columns(p->x + g * rows * p->ldx, p->ldx, rows, p->k, scale + g * p->k, tmp + g * rows * p->k);
        Packed q = *p;
        q.x = tmp, q.ldx = p->k;
        parallel_for(packed_range, &q, q.row_blocks * q.panels, 1, threads);
    } else {
        for (Py_ssize_t g = 0; g < groups; g++) {
            scale_panel_rows(p->packed, p->panels, p->k, scale + g * p->k, tmp);
            Packed q = *p;
            q.packed = tmp, q.m = rows, q.x = p->x + g * rows * p->ldx, q.out = p->out + g * rows * p->ldo;
            q.residual = p->residual ? p->residual + g * rows * p->n : NULL;
            packed_plan(&q);
            parallel_for(packed_range, &q, q.row_blocks * q.panels, 1, threads);
        }
    }
    free(tmp);
    return 0;
}
#endif

static PyObject *gemm_packed(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"x", "packed", "out", "threads", "bias", "relu", "act", "residual", "scale", NULL};
    PyObject *xo, *po, *oo, *bo = Py_None, *acto = Py_None, *ro = Py_None, *so = Py_None;
    int threads = 1, relu = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO|iOpOOO", kwlist, &xo, &po, &oo, &threads, &bo, &relu, &acto,
                                     &ro, &so))
        return NULL;
    ConvAct act;
    if (parse_conv_act(acto, &act, "gemm_packed") < 0) return NULL;
    if (relu) {
        if (act.kind != CONV_ACT_NONE) {
            PyErr_SetString(PyExc_ValueError, "gemm_packed: relu=True and act both given");
            return NULL;
        }
        act = (ConvAct){CONV_ACT_CLAMP, 0.f, INFINITY, 0.f};
    }
    Py_buffer xv = {0}, pv = {0}, ov = {0}, bv = {0}, rv = {0}, sv = {0};
    PyObject *result = NULL;
    Operand xa, oa;
    Py_ssize_t groups = 0;
    if (get_float_view(xo, &xv, 0, "x") < 0 || get_float_view(oo, &ov, 1, "out") < 0 ||
        get_array_of_rank(po, &pv, 'f', 4, 0, 0, "packed") < 0)
        goto done;
    if (xv.ndim != 2 || ov.ndim != 2 || ov.shape[0] != xv.shape[0]) {
        PyErr_SetString(PyExc_ValueError, "x must be [m, k] and out [m, n]");
        goto done;
    }
    Packed p = {.m = xv.shape[0], .k = xv.shape[1], .n = ov.shape[1], .act = act};
    const Py_ssize_t size = packed_size(p.k, p.n);
    if (size < 0) {
        PyErr_SetString(PyExc_ValueError, "sizes overflow");
        goto done;
    }
    if (pv.len / 4 != size) {
        PyErr_Format(PyExc_ValueError, "packed holds %zd floats, a [%zd, %zd] weight packs to %zd", pv.len / 4, p.k,
                     p.n, size);
        goto done;
    }
    if (bo != Py_None) {
        if (get_array_of_rank(bo, &bv, 'f', 4, 0, 0, "bias") < 0) goto done;
        if (bv.len / 4 != p.n) {
            PyErr_Format(PyExc_ValueError, "bias must have %zd values", p.n);
            goto done;
        }
    }
    if (ro != Py_None) {
        if (get_array_of_rank(ro, &rv, 'f', 4, 0, 1, "residual") < 0) goto done;
        if (rv.len / 4 != SIZE_PRODUCT(p.m, p.n)) {
            PyErr_Format(PyExc_ValueError, "residual must have %zd x %zd values", p.m, p.n);
            goto done;
        }
    }
    if (so != Py_None) {
        if (get_array_of_rank(so, &sv, 'f', 4, 0, 1, "scale") < 0) goto done;
        groups = p.k > 0 ? sv.len / 4 / p.k : 0;
        if (groups < 1 || sv.len / 4 != SIZE_PRODUCT(groups, p.k) || p.m % groups) {
            PyErr_Format(PyExc_ValueError, "scale must be [g, %zd] for g groups of x's %zd rows, got %zd values", p.k,
                         p.m, sv.len / 4);
            goto done;
        }
    }
    if (read_operand(&xv, &xa, 0, "x") < 0 || read_operand(&ov, &oa, 0, "out") < 0 || !distinct_elements(&ov))
        goto done;
    if ((xv.len && overlaps(&xv, &ov)) || (pv.len && overlaps(&pv, &ov)) || (bv.len && overlaps(&bv, &ov)) ||
        (rv.len && overlaps(&rv, &ov)) || (sv.len && overlaps(&sv, &ov))) {
        PyErr_SetString(PyExc_ValueError, "out overlaps an input");
        goto done;
    }
    if (!use_avx2()) {
        PyErr_SetString(PyExc_RuntimeError, "gemm_packed needs AVX2 + FMA (see packed_simd())");
        goto done;
    }
    p.x = xv.buf, p.packed = pv.buf, p.bias = bv.buf, p.out = ov.buf, p.ldx = xa.row, p.ldo = oa.row;
    p.residual = rv.buf;
    packed_plan(&p);
#ifdef HAVE_AVX2_PATH
    int failed = 0;
    Py_BEGIN_ALLOW_THREADS
    if (groups)
        failed = scaled_product(&p, sv.buf, groups, size, threads);
    else
        parallel_for(packed_range, &p, p.row_blocks * p.panels, 1, threads);
    Py_END_ALLOW_THREADS
    if (failed) {
        PyErr_NoMemory();
        goto done;
    }
#endif
    result = Py_NewRef(Py_None);
done:
    RELEASE_BUFFERS(&xv, &pv, &ov, &bv, &rv, &sv);
    return result;
}

PyDoc_STRVAR(packed_simd_doc,
"packed_simd() -> str | None\n\n"
"The tiles gemm_packed runs: 'avx512' or 'avx2' (by the CPU and the set_simd and set_avx512 switches),\n"
"None where it cannot run.");

static PyObject *packed_simd(PyObject *self, PyObject *unused)
{
    return use_avx512() ? PyUnicode_FromString("avx512") : use_avx2() ? PyUnicode_FromString("avx2") : Py_NewRef(Py_None);
}

static PyMethodDef module_methods[] = {
    {"gemm", (PyCFunction)(void (*)(void))gemm, METH_VARARGS | METH_KEYWORDS, gemm_doc},
    {"gemm_packed", (PyCFunction)(void (*)(void))gemm_packed, METH_VARARGS | METH_KEYWORDS, gemm_packed_doc},
    {"pack_weight", pack_weight, METH_O, pack_weight_doc},
    {"packed_simd", packed_simd, METH_NOARGS, packed_simd_doc},
    {"set_simd", set_simd, METH_O, set_simd_doc},
    {"set_avx512", set_avx512, METH_O, set_avx512_doc},
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
