/* A convolution's window for the channels-last kernels (_nhwc.c) and window_rows (_layout.c): the call's
 * sizes as its arguments give them, bounded once, and the output plane ONNX Conv computes. Include after
 * _kernel_common.h. */
#ifndef DCM_WINDOW_H
#define DCM_WINDOW_H

#define BIG ((Py_ssize_t)1 << 20) /* bound on every size, stride, dilation and pad (as depthwise2d's) */

/* A convolution call's window as its arguments give it: batch, input plane, kernel, strides,
 * dilations and pads (top, left, bottom, right). */
typedef struct {
    Py_ssize_t n, h, w, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr;
} Window;

/* Bounds every size of g and the channel counts c0, c1 (so that no later product overflows
 * unnoticed), then sets the output plane *oh x *ow as ONNX Conv computes it (floor). -1 and a
 * ValueError naming the kernel where a size, stride, dilation or pad is out of bounds or the kernel's
 * span is larger than the padded input. */
static inline int window_output(const char *kernel, const Window *g, Py_ssize_t c0, Py_ssize_t c1, Py_ssize_t *oh,
                                Py_ssize_t *ow)
{
    const Py_ssize_t sizes[] = {g->h, g->w, c0, c1, g->kh, g->kw, g->sh, g->sw, g->dh, g->dw};
    int ok = g->n >= 0 && g->n <= BIG * BIG && g->pt >= 0 && g->pl >= 0 && g->pb >= 0 && g->pr >= 0 &&
             g->pt + g->pb <= BIG && g->pl + g->pr <= BIG;
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) ok = ok && sizes[i] >= 1 && sizes[i] <= BIG;
    if (!ok) {
        PyErr_Format(PyExc_ValueError, "%s: a size, stride, dilation or pad is out of bounds", kernel);
        return -1;
    }
    const Py_ssize_t span_h = (g->kh - 1) * g->dh + 1, span_w = (g->kw - 1) * g->dw + 1;
    if (g->h + g->pt + g->pb < span_h || g->w + g->pl + g->pr < span_w) {
        PyErr_Format(PyExc_ValueError, "%s: the input (padded) is smaller than the kernel window", kernel);
        return -1;
    }
    *oh = (g->h + g->pt + g->pb - span_h) / g->sh + 1;
    *ow = (g->w + g->pl + g->pr - span_w) / g->sw + 1;
    return 0;
}

#endif /* DCM_WINDOW_H */
