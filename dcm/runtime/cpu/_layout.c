/* dcm.runtime.cpu._layout: the data movement of layout ops (Transpose, Concat).
 *
 * transpose2d (Transpose; shape.py): y[b, j, i] = x[b, i, j] for a float32 stack x [batch, rows,
 * cols]. Every permutation that, once the axes moving together are merged, swaps two blocks of axes
 * is one: NCHW <-> NHWC (ConvNeXt's channels-last LayerNorm and MLP), a [S, E] matrix, attention's
 * keys [B, H, S, d] -> [B, H, d, S].
 *
 * Why C: numpy copies a transposed view one value at a time along the output's rows, reading one
 * value per cache line of the input: [40, 3136] -> [3136, 40] took 3.4x as long as a plain copy of
 * the same bytes (43 against 13 us), the way back 5.3x. Here 8x8 tiles go through AVX registers
 * (eight loads, an in-register transpose, eight stores), over a block of input rows whose cache
 * lines stay in L1 while the tiles of one column strip after another use them. Strips of 8 output
 * rows are independent: the thread pool splits them.
 *
 * concat (Concat; shape.py): the inputs' blocks copied into one output, its runs of values split over
 * the thread pool (numpy's concatenate is one thread's memcpy).
 *
 * window_rows (pixel_gemm.py): a convolution's windows of a channels-last input as the rows of a
 * GEMM, one row per output pixel, each tap's C values one copy, zeros where a tap falls in the
 * padding; output rows split over the thread pool (numpy's strided gather ran on one thread).
 *
 * Sizes come from the caller and are checked against the arrays' lengths through size_product.
 */
#include "_kernel_common.h"
#include "_operand.h"
#include "_window.h"
#include <string.h>

#define TRANSPOSE_BLOCK_ROWS 256 /* input rows per pass over the column strips: a line each, 16 KiB of L1 */
/* Values a thread's range moves at least (512 KiB, ~25 us): a transpose smaller than this one thread
 * does alone. On 2 cores with 6 busy processes, ConvNeXt's [40, 3136] transposes split in 64 KiB
 * ranges took 3.4x their one-thread time (a worker descheduled while it held a range), for a gain of
 * ~7 us each on an idle machine. */
#define TRANSPOSE_RANGE_VALUES (1 << 17)

typedef struct {
    const float *x;
    float *y;
    Py_ssize_t rows, cols, strips; /* strips: column strips of 8 per matrix */
} Transpose;

/* y[j, i] = x[i, j] for i in [i0, i1), j in [j0, j1) of one matrix (x row stride cols, y rows). */
static void transpose_tile_generic(const Transpose *t, const float *x, float *y, Py_ssize_t i0, Py_ssize_t i1,
                                   Py_ssize_t j0, Py_ssize_t j1)
{
    for (Py_ssize_t j = j0; j < j1; j++)
        for (Py_ssize_t i = i0; i < i1; i++) y[j * t->rows + i] = x[i * t->cols + j];
}

#define TRANSPOSE_STRIP_ARGS const Transpose *t, const float *x, float *y, Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t j0

/* Rows [i0, i1) of the strip of columns [j0, j0 + 8), its last columns cut at cols. */
static void transpose_strip_generic(TRANSPOSE_STRIP_ARGS)
{
    transpose_tile_generic(t, x, y, i0, i1, j0, j0 + 8 < t->cols ? j0 + 8 : t->cols);
}

#ifdef HAVE_AVX2_PATH
__attribute__((target("avx2,fma")))
static void transpose_strip_avx2(TRANSPOSE_STRIP_ARGS)
{
    if (j0 + 8 > t->cols) {
        transpose_tile_generic(t, x, y, i0, i1, j0, t->cols);
        return;
    }
    Py_ssize_t i = i0;
    for (; i + 8 <= i1; i += 8) {
        const float *s = x + i * t->cols + j0;
        __m256 r[8], u[8];
        for (int k = 0; k < 8; k++) r[k] = _mm256_loadu_ps(s + k * t->cols);
        for (int k = 0; k < 8; k += 2) { /* pairs of rows interleaved, then pairs of pairs */
            u[k] = _mm256_unpacklo_ps(r[k], r[k + 1]);
            u[k + 1] = _mm256_unpackhi_ps(r[k], r[k + 1]);
        }
        for (int k = 0; k < 8; k += 4) {
            r[k] = _mm256_shuffle_ps(u[k], u[k + 2], _MM_SHUFFLE(1, 0, 1, 0));
            r[k + 1] = _mm256_shuffle_ps(u[k], u[k + 2], _MM_SHUFFLE(3, 2, 3, 2));
            r[k + 2] = _mm256_shuffle_ps(u[k + 1], u[k + 3], _MM_SHUFFLE(1, 0, 1, 0));
            r[k + 3] = _mm256_shuffle_ps(u[k + 1], u[k + 3], _MM_SHUFFLE(3, 2, 3, 2));
        }
        float *d = y + j0 * t->rows + i;
        for (int k = 0; k < 4; k++) { /* the low halves of rows 0-3 and 4-7 are columns 0-3, the high 4-7 */
            _mm256_storeu_ps(d + k * t->rows, _mm256_permute2f128_ps(r[k], r[k + 4], 0x20));
            _mm256_storeu_ps(d + (k + 4) * t->rows, _mm256_permute2f128_ps(r[k], r[k + 4], 0x31));
        }
    }
    transpose_tile_generic(t, x, y, i, i1, j0, j0 + 8);
}
#endif

/* Strips [lo, hi) of all matrices (strip u: matrix u / strips, columns 8 (u % strips) on), a block
 * of input rows at a time. */
static void transpose_range(void *ctx, Py_ssize_t lo, Py_ssize_t hi)
{
    const Transpose *t = ctx;
    for (Py_ssize_t i0 = 0; i0 < t->rows; i0 += TRANSPOSE_BLOCK_ROWS) {
        Py_ssize_t i1 = t->rows - i0 < TRANSPOSE_BLOCK_ROWS ? t->rows : i0 + TRANSPOSE_BLOCK_ROWS;
        for (Py_ssize_t u = lo; u < hi; u++) {
            Py_ssize_t b = u / t->strips, matrix = t->rows * t->cols;
            DISPATCH(transpose_strip, t, t->x + b * matrix, t->y + b * matrix, i0, i1, 8 * (u % t->strips));
        }
    }
}

PyDoc_STRVAR(transpose_doc,
"transpose2d(x, y, shape, threads=1)\n\n"
"y[b, j, i] = x[b, i, j]: x float32 C-contiguous [batch, rows, cols] (shape), y float32 C-contiguous\n"
"[batch, cols, rows], on up to `threads` threads of the native pool.");

static PyObject *transpose2d(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"x", "y", "shape", "threads", NULL};
    PyObject *xo, *yo;
    Py_ssize_t batch, rows, cols;
    int threads = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO(nnn)|i", kwlist, &xo, &yo, &batch, &rows, &cols, &threads))
        return NULL;
    Py_ssize_t count = SIZE_PRODUCT(batch, rows, cols);
    if (count < 0) {
        PyErr_SetString(PyExc_ValueError, "transpose2d: a size is negative or the size overflows");
        return NULL;
    }
    Py_buffer xb, yb = {0};
    if (get_array_of_rank(xo, &xb, 'f', 4, 0, 1, "x") < 0) return NULL;
    PyObject *result = NULL;
    if (get_array_of_rank(yo, &yb, 'f', 4, 1, 1, "y") < 0) goto done;
    if (xb.len / 4 != count || yb.len / 4 != count) {
        PyErr_Format(PyExc_ValueError, "transpose2d: x and y must have %zd values, have %zd and %zd", count,
                     xb.len / 4, yb.len / 4);
        goto done;
    }
    if (count) {
        Transpose t = {xb.buf, yb.buf, rows, cols, (cols + 7) / 8};
        Py_BEGIN_ALLOW_THREADS
        parallel_for(transpose_range, &t, batch * t.strips, 1 + TRANSPOSE_RANGE_VALUES / (8 * rows), threads);
        Py_END_ALLOW_THREADS
    }
    result = Py_NewRef(Py_None);
done:
    RELEASE_BUFFERS(&xb, &yb);
    return result;
}

/* ------------------------------------------------------------------------------------------------
 * concat: y [outer, sum of inner_i] from inputs x_i [outer, inner_i] (Concat on any axis: outer is
 * the product of the axes before it). The output is cut into equal runs of values, each copied by
 * one thread of the pool from the inputs it spans: one memcpy per input row it crosses. A batch-1
 * channel concat (outer 1, two blocks of megabytes) is then split as evenly as a wide one.
 * ------------------------------------------------------------------------------------------------ */

#define CONCAT_RUN (1 << 17) /* values per range: 512 KiB (4-byte values), as transpose2d's ranges */

typedef struct {
    const char *const *src; /* per input */
    const Py_ssize_t *inner; /* per input: values per outer index */
    Py_ssize_t count, row, total, itemsize; /* inputs, values per output row, values */
    char *y;
} Concat;

/* Output values [lo, hi) * CONCAT_RUN (the last range cut at the end). */
static void concat_range(void *ctx, Py_ssize_t lo, Py_ssize_t hi)
{
    const Concat *t = ctx;
    Py_ssize_t pos = lo * CONCAT_RUN, end = hi * CONCAT_RUN < t->total ? hi * CONCAT_RUN : t->total;
    while (pos < end) {
        Py_ssize_t o = pos / t->row, r = pos % t->row, i = 0, start = 0;
        while (r >= start + t->inner[i]) start += t->inner[i++]; /* the input whose block holds r */
        Py_ssize_t take = t->inner[i] - (r - start);
        if (take > end - pos) take = end - pos;
        memcpy(t->y + pos * t->itemsize, t->src[i] + (o * t->inner[i] + r - start) * t->itemsize,
               take * t->itemsize);
        pos += take;
    }
}

/* Whether a buffer's items are Python objects, whose pointers must never be copied as bytes (the
 * copies would hold no reference). */
static int holds_objects(const Py_buffer *view)
{
    return view->format && strchr(view->format, 'O') != NULL;
}

PyDoc_STRVAR(concat_doc,
"concat(xs, y, outer, threads=1)\n\n"
"y = the concatenation of each x in xs seen as [outer, x.size / outer] along its second axis: y\n"
"[outer, sum of those]. All C-contiguous with the same item size (4 or 8 bytes, not objects); y must\n"
"not overlap an x. On up to `threads` threads of the native pool.");

static PyObject *concat(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"xs", "y", "outer", "threads", NULL};
    PyObject *xso, *yo;
    Py_ssize_t outer;
    int threads = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!On|i", kwlist, &PyList_Type, &xso, &yo, &outer, &threads))
        return NULL;
    Py_ssize_t count = PyList_GET_SIZE(xso);
    if (outer < 1 || count < 1 || count > (1 << 20)) {
        PyErr_SetString(PyExc_ValueError, "concat: outer must be >= 1 and xs hold 1 to 2^20 arrays");
        return NULL;
    }
    Py_buffer yb = {0}, *views = PyMem_Calloc(count, sizeof(Py_buffer));
    const char **src = PyMem_Calloc(count, sizeof(char *));
    Py_ssize_t *inner = PyMem_Calloc(count, sizeof(Py_ssize_t));
    PyObject *result = NULL;
    if (!views || !src || !inner) {
        PyErr_NoMemory();
        goto done;
    }
    if (PyObject_GetBuffer(yo, &yb, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) < 0) goto done;
    Py_ssize_t itemsize = yb.itemsize, row = 0;
    if ((itemsize != 4 && itemsize != 8) || holds_objects(&yb)) {
        PyErr_SetString(PyExc_TypeError, "concat: y must have 4- or 8-byte items that are not objects");
        goto done;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        if (PyObject_GetBuffer(PyList_GET_ITEM(xso, i), &views[i], PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) goto done;
        Py_ssize_t values = views[i].len / itemsize;
        if (views[i].itemsize != itemsize || holds_objects(&views[i]) || values % outer) {
            PyErr_Format(PyExc_ValueError, "concat: input %zd must be %zd-byte items in whole rows of outer %zd", i,
                         itemsize, outer);
            goto done;
        }
        src[i] = views[i].buf;
        inner[i] = values / outer;
        row += inner[i];
    }
    Py_ssize_t total = SIZE_PRODUCT(outer, row);
    if (total < 0 || yb.len / itemsize != total) {
        PyErr_Format(PyExc_ValueError, "concat: y must have %zd values (outer %zd x %zd), has %zd", total, outer, row,
                     yb.len / itemsize);
        goto done;
    }
    if (total) {
        Concat t = {src, inner, count, row, total, itemsize, yb.buf};
        Py_BEGIN_ALLOW_THREADS
        parallel_for(concat_range, &t, (total + CONCAT_RUN - 1) / CONCAT_RUN, 1, threads);
        Py_END_ALLOW_THREADS
    }
    result = Py_NewRef(Py_None);
done:
    for (Py_ssize_t i = 0; views && i < count; i++)
        if (views[i].obj) PyBuffer_Release(&views[i]);
    if (yb.obj) PyBuffer_Release(&yb);
    PyMem_Free(views);
    PyMem_Free(src);
    PyMem_Free(inner);
    return result;
}

/* ------------------------------------------------------------------------------------------------
 * window_rows: y [N * OH * OW, kh * kw * C] from x [N, H, W, C]; row (s, oy, ox), tap (i, j) holds the
 * C values of x[s, oy sh - pt + i dh, ox sw - pl + j dw], zeros outside the input.
 * ------------------------------------------------------------------------------------------------ */

typedef struct {
    const float *x;
    float *y;
    Window g;
    Py_ssize_t c, oh, ow;
} Windows;

/* Output rows [lo, hi) of the stack of samples: unit u is sample u / OH, output row u % OH. */
static void window_rows_range(void *ctx, Py_ssize_t lo, Py_ssize_t hi)
{
    const Windows *job = ctx;
    const Window *g = &job->g;
    const Py_ssize_t c = job->c;
    const size_t run = (size_t)c * sizeof(float);
    for (Py_ssize_t u = lo; u < hi; u++) {
        const Py_ssize_t s = u / job->oh, oy = u % job->oh;
        float *row = job->y + u * job->ow * g->kh * g->kw * c;
        for (Py_ssize_t ox = 0; ox < job->ow; ox++)
            for (Py_ssize_t i = 0; i < g->kh; i++) {
                const Py_ssize_t iy = oy * g->sh - g->pt + i * g->dh;
                for (Py_ssize_t j = 0; j < g->kw; j++, row += c) {
                    const Py_ssize_t ix = ox * g->sw - g->pl + j * g->dw;
                    if (iy >= 0 && iy < g->h && ix >= 0 && ix < g->w)
                        memcpy(row, job->x + ((s * g->h + iy) * g->w + ix) * c, run);
                    else
                        memset(row, 0, run);
                }
            }
    }
}

PyDoc_STRVAR(window_rows_doc,
"window_rows(x, y, shape, kernel, strides, dilations, pads, threads=1)\n\n"
"A convolution's windows as GEMM rows: x float32 [N, H, W, C] channels-last (shape = (N, H, W, C)), y\n"
"float32 [N * OH * OW, kh * kw * C] with OH, OW as ONNX Conv's (floor), each row one output pixel's\n"
"taps in (kh, kw) order, C values each, zeros in the padding. kernel, strides, dilations = (h, w);\n"
"pads = (top, left, bottom, right). Output rows on up to `threads` threads of the native pool.");

static PyObject *window_rows(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"x", "y", "shape", "kernel", "strides", "dilations", "pads", "threads", NULL};
    PyObject *xo, *yo;
    int threads = 1;
    Windows job = {0};
    Window *g = &job.g;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO(nnnn)(nn)(nn)(nn)(nnnn)|i", kwlist, &xo, &yo, &g->n, &g->h, &g->w,
                                     &job.c, &g->kh, &g->kw, &g->sh, &g->sw, &g->dh, &g->dw, &g->pt, &g->pl, &g->pb,
                                     &g->pr, &threads))
        return NULL;
    if (window_output("window_rows", g, job.c, job.c, &job.oh, &job.ow) < 0) return NULL;
    const Py_ssize_t n = g->n, x_count = SIZE_PRODUCT(n, g->h, g->w, job.c);
    const Py_ssize_t y_count = SIZE_PRODUCT(n, job.oh, job.ow, g->kh, g->kw, job.c);
    if (x_count < 0 || y_count < 0) {
        PyErr_SetString(PyExc_ValueError, "window_rows: the input or output size overflows");
        return NULL;
    }
    Py_buffer xb, yb = {0};
    if (get_array_of_rank(xo, &xb, 'f', 4, 0, 1, "x") < 0) return NULL;
    PyObject *result = NULL;
    if (get_array_of_rank(yo, &yb, 'f', 4, 1, 1, "y") < 0) goto done;
    if (xb.len / 4 != x_count || yb.len / 4 != y_count) {
        PyErr_Format(PyExc_ValueError, "window_rows: x must have %zd values, y %zd", x_count, y_count);
        goto done;
    }
    if (overlaps(&xb, &yb)) {
        PyErr_SetString(PyExc_ValueError, "window_rows: y must not overlap x");
        goto done;
    }
    job.x = xb.buf, job.y = yb.buf;
    Py_BEGIN_ALLOW_THREADS
    parallel_for(window_rows_range, &job, n * job.oh, 1 + TRANSPOSE_RANGE_VALUES / (job.ow * g->kh * g->kw * job.c + 1),
                 threads);
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    RELEASE_BUFFERS(&xb, &yb);
    return result;
}

static PyMethodDef module_methods[] = {
    {"window_rows", (PyCFunction)(void (*)(void))window_rows, METH_VARARGS | METH_KEYWORDS, window_rows_doc},
    {"transpose2d", (PyCFunction)(void (*)(void))transpose2d, METH_VARARGS | METH_KEYWORDS, transpose_doc},
    {"concat", (PyCFunction)(void (*)(void))concat, METH_VARARGS | METH_KEYWORDS, concat_doc},
    {"set_simd", set_simd, METH_O, set_simd_doc},
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_layout", "dcm's compiled layout kernels (see _layout.c).", -1, module_methods,
};

PyMODINIT_FUNC PyInit__layout(void)
{
    import_pool();
    return PyModule_Create(&module);
}
