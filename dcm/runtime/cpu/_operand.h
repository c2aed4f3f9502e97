/* Strided float32 operands of the kernels built on sgemm (_gemm.c's gemm and gemm_packed, _pointwise.c's
 * attention): a buffer's view with its strides, its last two axes as sgemm reads them (row-major 'N' or
 * column-major 'T', with the leading dimension), and the checks that an output neither overlaps an
 * input nor holds two elements at one address, made before any thread writes. */
#ifndef DCM_OPERAND_H
#define DCM_OPERAND_H

#include "_kernel_common.h"

#define MAX_DIMS 16

/* One operand's last two axes as sgemm sees them: transposed or not, and the leading dimension. */
typedef struct {
    const char *base;
    Py_ssize_t lead_strides[MAX_DIMS]; /* bytes */
    Py_ssize_t row, col;               /* element strides of the last two axes */
    int ld;
    char trans; /* 'N': row-major, 'T': column-major (as a Fortran matrix, its transpose) */
} Operand;

/* The byte offset of item p of a stack of matrices with leading axes lead[nlead] and those axes' strides. */
static inline Py_ssize_t lead_offset(const Py_ssize_t *lead, int nlead, const Py_ssize_t *strides, Py_ssize_t p)
{
    Py_ssize_t offset = 0;
    for (int d = nlead - 1; d >= 0; d--) {
        offset += (p % lead[d]) * strides[d];
        p /= lead[d];
    }
    return offset;
}

/* An operand's leading axes broadcast to lead[nlead] as numpy broadcasts: aligned on the right, an axis it
 * lacks or holds once gets stride 0. -1 and a ValueError where an axis matches neither. */
static inline int broadcast_lead(const Py_buffer *v, const Py_ssize_t *lead, int nlead, Py_ssize_t *strides,
                                 const char *what)
{
    const int own = v->ndim - 2, skip = nlead - own;
    for (int d = 0; d < nlead; d++) {
        const Py_ssize_t size = d < skip ? 1 : v->shape[d - skip];
        if (size != lead[d] && size != 1) {
            PyErr_Format(PyExc_ValueError, "%s: leading axis %d has %zd items, which does not broadcast to %zd", what,
                         d, size, lead[d]);
            return -1;
        }
        strides[d] = size == 1 ? 0 : v->strides[d - skip];
    }
    return 0;
}

/* Reads an operand's layout from its buffer: rows x cols in its last two axes. */
static inline int read_operand(const Py_buffer *v, Operand *o, int allow_transposed, const char *what)
{
    const int nd = v->ndim;
    const Py_ssize_t rows = v->shape[nd - 2], cols = v->shape[nd - 1];
    for (int d = 0; d < nd; d++) {
        if (v->strides[d] < 0 || v->strides[d] % 4) {
            PyErr_Format(PyExc_ValueError, "%s must have non-negative strides that are whole floats", what);
            return -1;
        }
        /* each axis's extent, so that no offset or extent computed from them can overflow */
        if (v->shape[d] > 1 && SIZE_PRODUCT(v->shape[d] - 1, v->strides[d]) < 0) {
            PyErr_Format(PyExc_ValueError, "%s: strides overflow", what);
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
static inline void extent(const Py_buffer *v, const char **first, const char **last)
{
    Py_ssize_t span = 4;
    for (int d = 0; d < v->ndim; d++) span += (v->shape[d] - 1) * v->strides[d];
    *first = v->buf, *last = (const char *)v->buf + span;
}

static inline int overlaps(const Py_buffer *x, const Py_buffer *y)
{
    const char *x0, *x1, *y0, *y1;
    extent(x, &x0, &x1);
    extent(y, &y0, &y1);
    return x0 < y1 && y0 < x1;
}

/* out's axes of more than one element, sorted by stride (in any order in the array: an attention's output
 * written in the order of the Transpose after it), each stride at least the extent of the axes inside it:
 * no two elements share an address, so that the threads never write the same float. */
static inline int distinct_elements(const Py_buffer *v)
{
    Py_ssize_t stride[MAX_DIMS], shape[MAX_DIMS];
    int n = 0;
    for (int d = 0; d < v->ndim; d++) {
        if (v->shape[d] <= 1) continue;
        int at = n++;
        for (; at > 0 && stride[at - 1] > v->strides[d]; at--) stride[at] = stride[at - 1], shape[at] = shape[at - 1];
        stride[at] = v->strides[d], shape[at] = v->shape[d];
    }
    Py_ssize_t inner = 4;
    for (int a = 0; a < n; a++) {
        if (stride[a] < inner) return 0;
        inner = stride[a] * shape[a];
    }
    return 1;
}

static inline int get_float_view(PyObject *obj, Py_buffer *view, int writable, const char *what)
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

#endif
