/* dcm.runtime.cpu._pointconv: the dense 1x1 convolution on NCHW, y[n] = act(W @ (x[n] * scale[n]) +
 * bias (+ residual)), act a clamp (Relu, ReLU6), SiLU, Sigmoid or HardSwish.
 *
 * Why not BLAS: MobileNet's and EfficientNet's 1x1 layers have few input channels (K = 16..960) and
 * many pixels, so BLAS spends much of its time packing both operands, then a second pass over the
 * output adds the bias, the residual and the ReLU6. Here a block of 8 output channels x up to 48
 * pixels is held in 24 AVX-512 registers through all the input channels (each input vector loaded
 * once per block, each weight broadcast from memory), and the bias, residual and activation are
 * applied in registers before the one store (a separate pass over a 96 x 112 x 112 output cost a
 * quarter of the product). The weight is packed once at load, [ceil(C_out / 8)][C_in][8],
 * so that a block's 8 weights of one input channel are adjacent. The blocks are independent: the
 * native pool (parallel_for) shares them between threads, pixel tiles outermost so that the tile
 * stays in cache across its channel blocks; each tile prefetches the next one's inputs (in its first
 * block) and outputs, whose rows lie a plane apart, too many streams for the hardware prefetcher (the
 * model's 1x1 layers in sequence, caches cold as in a run: 6.6-6.9 -> 5.4-5.7 ms, one thread).
 *
 * scale: dcm.ScaledConv's per-input-channel factor (a squeeze-and-excitation gate), applied to each
 * input vector as it is loaded, so that neither a scaled copy of x nor of W is made.
 */
#include "_kernel_common.h"

#define ROWS 8        /* output channels per block: the packed weight's inner size */
#define VECTORS 3     /* 16-pixel vectors per block at most: 8 x 3 accumulators + 3 inputs + a weight */
#define TILE (16 * VECTORS)
#define GRAIN_WORK 65536 /* multiply-adds a thread's range should hold at least (a hand-off is ~1-5 us) */

typedef struct {
    const float *x, *w, *bias, *res, *scale;
    float *y;
    Py_ssize_t cin, cout, pixels, blocks, tiles, scale_stride;
    ConvAct act;
} Plan;

/* Unit u: sample, pixel tile, channel block (fastest). Tiles split the plane's vectors evenly into
 * runs of at most VECTORS, so a 49-pixel plane is 2 + 2 vectors, not 3 + 1. */
static inline void unit_place(const Plan *p, Py_ssize_t u, Py_ssize_t *sample, Py_ssize_t *p0, Py_ssize_t *count,
                              Py_ssize_t *block)
{
    *block = u % p->blocks;
    Py_ssize_t t = u / p->blocks % p->tiles;
    *sample = u / p->blocks / p->tiles;
    Py_ssize_t vectors = (p->pixels + 15) / 16, v0 = vectors * t / p->tiles, v1 = vectors * (t + 1) / p->tiles;
    *p0 = v0 * 16;
    Py_ssize_t end = v1 * 16 < p->pixels ? v1 * 16 : p->pixels;
    *count = end - *p0;
}

static void range_generic(void *ctx, Py_ssize_t lo, Py_ssize_t hi)
{
    const Plan *p = ctx;
    float acc[ROWS][TILE];
    for (Py_ssize_t u = lo; u < hi; u++) {
        Py_ssize_t s, p0, count, b;
        unit_place(p, u, &s, &p0, &count, &b);
        const float *x = p->x + s * p->cin * p->pixels + p0, *w = p->w + b * p->cin * ROWS;
        const float *scale = p->scale ? p->scale + s * p->scale_stride : NULL;
        memset(acc, 0, sizeof(acc));
        for (Py_ssize_t ci = 0; ci < p->cin; ci++) {
            const float *xr = x + ci * p->pixels, f = scale ? scale[ci] : 1.f;
            for (int r = 0; r < ROWS; r++) {
                const float wv = w[ci * ROWS + r] * f;
                for (Py_ssize_t q = 0; q < count; q++) acc[r][q] += wv * xr[q];
            }
        }
        for (int r = 0; r < ROWS && b * ROWS + r < p->cout; r++) {
            const Py_ssize_t co = b * ROWS + r, at = (s * p->cout + co) * p->pixels + p0;
            const float bias = p->bias ? p->bias[co] : 0.f;
            for (Py_ssize_t q = 0; q < count; q++) {
                float v = acc[r][q] + bias;
                if (p->res) v += p->res[at + q];
                p->y[at + q] = conv_act1(&p->act, v);
            }
        }
    }
}

#ifdef HAVE_AVX2_PATH
#define AVX512 __attribute__((target("avx512f,avx2,fma")))
#define UNROLL _Pragma("GCC unroll 8") /* every register-block loop unrolled: the sums stay in registers */

/* One block of V vectors (a constant where inlined): the last one masked to the tile's pixels. */
AVX512 static inline __attribute__((always_inline)) void block_avx512(const Plan *p, Py_ssize_t s, Py_ssize_t p0,
                                                                       Py_ssize_t count, Py_ssize_t b, const int V)
{
    const float *x = p->x + s * p->cin * p->pixels + p0, *w = p->w + b * p->cin * ROWS;
    const float *scale = p->scale ? p->scale + s * p->scale_stride : NULL;
    const __mmask16 last = (__mmask16)(count - 16 * (V - 1) >= 16 ? 0xFFFF : (1u << (count - 16 * (V - 1))) - 1);
    __m512 acc[ROWS][VECTORS], xv[VECTORS];
    UNROLL for (int r = 0; r < ROWS; r++)
        UNROLL for (int v = 0; v < V; v++) acc[r][v] = _mm512_setzero_ps();
    for (Py_ssize_t ci = 0; ci < p->cin; ci++) {
        const float *xr = x + ci * p->pixels;
        if (b == 0) /* the next tile's inputs, while this tile's first block runs: a row per channel */
            for (int l = 0; l < VECTORS; l++) _mm_prefetch((const char *)(xr + TILE + 16 * l), _MM_HINT_T0);
        UNROLL for (int v = 0; v < V; v++) xv[v] = load16(v == V - 1 ? last : 0xFFFF, xr + 16 * v);
        if (scale) {
            const __m512 f = _mm512_set1_ps(scale[ci]);
            UNROLL for (int v = 0; v < V; v++) xv[v] = _mm512_mul_ps(xv[v], f);
        }
        const float *wr = w + ci * ROWS;
        UNROLL for (int r = 0; r < ROWS; r++) {
            const __m512 wv = _mm512_set1_ps(wr[r]);
            UNROLL for (int v = 0; v < V; v++) acc[r][v] = _mm512_fmadd_ps(wv, xv[v], acc[r][v]);
        }
    }
    UNROLL for (int r = 0; r < ROWS; r++) {
        const Py_ssize_t co = b * ROWS + r, at = (s * p->cout + co) * p->pixels + p0;
        if (co >= p->cout) break;
        const __m512 bias = _mm512_set1_ps(p->bias ? p->bias[co] : 0.f);
        for (int l = 0; l < VECTORS; l++) /* the next tile's outputs of this row, written a tile from now */
            _mm_prefetch((const char *)(p->y + at + TILE + 16 * l), _MM_HINT_T0);
        UNROLL for (int v = 0; v < V; v++) {
            const __mmask16 m = v == V - 1 ? last : 0xFFFF;
            __m512 a = _mm512_add_ps(acc[r][v], bias);
            if (p->res) a = _mm512_add_ps(a, load16(m, p->res + at + 16 * v));
            store16(p->y + at + 16 * v, m, conv_act16(&p->act, a));
        }
    }
}

AVX512 static void range_avx512(void *ctx, Py_ssize_t lo, Py_ssize_t hi)
{
    const Plan *p = ctx;
    for (Py_ssize_t u = lo; u < hi; u++) {
        Py_ssize_t s, p0, count, b;
        unit_place(p, u, &s, &p0, &count, &b);
        if (count > 32) block_avx512(p, s, p0, count, b, 3);
        else if (count > 16) block_avx512(p, s, p0, count, b, 2);
        else block_avx512(p, s, p0, count, b, 1);
    }
}
#endif

PyDoc_STRVAR(pointwise_conv_doc,
"pointwise_conv(x, y, weight, shape, bias=None, act=None, residual=None, scale=None, threads=1)\n\n"
"The 1x1 convolution of x float32 [N, C_in, P] into y float32 [N, C_out, P] (shape = (N, C_in, C_out,\n"
"P), P pixels): y[n, o, p] = act(sum_i weight[o, i] scale[n, i] x[n, i, p] + bias[o] + residual[n, o,\n"
"p]). weight: float32 [ceil(C_out / 8), C_in, 8], the [C_out, C_in] matrix packed 8 rows at a time\n"
"(zero rows past C_out). bias float32 [C_out]; act (name, a, b): ('relu', _, _), ('clip', lo, hi)\n"
"(NaN kept), ('sigmoid', _, _), ('silu', alpha, _): x sigmoid(alpha x), ('hardswish', _, _); residual\n"
"like y; scale"
" float32 [N, C_in] or [1, C_in]. Runs on up to `threads` threads of the native pool.");

static PyObject *pointwise_conv(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"x", "y", "weight", "shape", "bias", "act", "residual", "scale", "threads", NULL};
    PyObject *xo, *yo, *wo, *bo = Py_None, *acto = Py_None, *ro = Py_None, *so = Py_None;
    Py_ssize_t n;
    int threads = 1;
    Plan p = {0};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO(nnnn)|OOOOi", kwlist, &xo, &yo, &wo, &n, &p.cin, &p.cout,
                                     &p.pixels, &bo, &acto, &ro, &so, &threads))
        return NULL;
    if (parse_conv_act(acto, &p.act, "pointwise_conv") < 0) return NULL;
    const Py_ssize_t big = (Py_ssize_t)1 << 30;
    if (n < 0 || p.cin < 1 || p.cout < 1 || p.pixels < 1 || n > big || p.cin > big || p.cout > big || p.pixels > big) {
        PyErr_SetString(PyExc_ValueError, "pointwise_conv: a size is out of bounds");
        return NULL;
    }
    p.blocks = (p.cout + ROWS - 1) / ROWS;
    Py_ssize_t x_count = SIZE_PRODUCT(n, p.cin, p.pixels), y_count = SIZE_PRODUCT(n, p.cout, p.pixels),
               w_count = SIZE_PRODUCT(p.blocks, p.cin, ROWS);
    if (x_count < 0 || y_count < 0 || w_count < 0) {
        PyErr_SetString(PyExc_ValueError, "pointwise_conv: the input, output or weight size overflows");
        return NULL;
    }
    Py_buffer xb = {0}, yb = {0}, wb = {0}, bb = {0}, rb = {0}, sb = {0};
    PyObject *result = NULL;
    if (get_array_of_rank(xo, &xb, 'f', 4, 0, 1, "x") < 0 || get_array_of_rank(yo, &yb, 'f', 4, 1, 1, "y") < 0 ||
        get_array_of_rank(wo, &wb, 'f', 4, 0, 1, "weight") < 0 ||
        (bo != Py_None && get_array_of_rank(bo, &bb, 'f', 4, 0, 1, "bias") < 0) ||
        (ro != Py_None && get_array_of_rank(ro, &rb, 'f', 4, 0, 1, "residual") < 0) ||
        (so != Py_None && get_array_of_rank(so, &sb, 'f', 4, 0, 1, "scale") < 0))
        goto done;
    Py_ssize_t scales = sb.obj ? sb.len / 4 : 0;
    if (xb.len / 4 != x_count || yb.len / 4 != y_count || wb.len / 4 != w_count || (bb.obj && bb.len / 4 != p.cout) ||
        (rb.obj && rb.len / 4 != y_count) || (sb.obj && scales != p.cin && scales != SIZE_PRODUCT(n, p.cin))) {
        PyErr_Format(PyExc_ValueError, "pointwise_conv: x must have %zd values, y and residual %zd, weight %zd, bias "
                     "%zd, scale %zd or %zd x %zd", x_count, y_count, w_count, p.cout, p.cin, n, p.cin);
        goto done;
    }
    if (yb.buf == xb.buf) { /* the sums read all of x's tile after a store could overwrite it */
        PyErr_SetString(PyExc_ValueError, "pointwise_conv: y must not be x");
        goto done;
    }
    p.x = xb.buf, p.y = yb.buf, p.w = wb.buf, p.bias = bb.obj ? bb.buf : NULL, p.res = rb.obj ? rb.buf : NULL;
    p.scale = sb.obj ? sb.buf : NULL;
    p.scale_stride = scales == p.cin ? 0 : p.cin;
    p.tiles = ((p.pixels + 15) / 16 + VECTORS - 1) / VECTORS;
    Py_ssize_t units = n * p.tiles * p.blocks, per_unit = p.cin * ROWS * TILE;
    Py_ssize_t grain = per_unit >= GRAIN_WORK ? 1 : GRAIN_WORK / per_unit;
    dcm_range_fn run = range_generic;
#ifdef HAVE_AVX2_PATH
    if (use_avx512()) run = range_avx512;
#endif
    Py_BEGIN_ALLOW_THREADS
    parallel_for(run, &p, units, grain, threads);
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    RELEASE_BUFFERS(&xb, &yb, &wb, &bb, &rb, &sb);
    return result;
}

PyDoc_STRVAR(simd_doc, "simd() -> str\n\nThe path pointwise_conv takes here: 'avx512' or 'portable' (set_simd(False)).");

static PyObject *simd(PyObject *self, PyObject *unused)
{
    return PyUnicode_FromString(use_avx512() ? "avx512" : "portable");
}

static PyMethodDef module_methods[] = {
    {"set_simd", set_simd, METH_O, set_simd_doc},
    {"simd", simd, METH_NOARGS, simd_doc},
    {"pointwise_conv", (PyCFunction)(void (*)(void))pointwise_conv, METH_VARARGS | METH_KEYWORDS, pointwise_conv_doc},
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_pointconv", "dcm's compiled 1x1 convolution (see _pointconv.c).", -1, module_methods,
};

PyMODINIT_FUNC PyInit__pointconv(void)
{
    import_pool();
    return PyModule_Create(&module);
}
