/* dcm.runtime.cpu._pointwise: compiled pointwise kernels on float32.
 *
 * activate: y = act(x [* scale] [+ bias] [+ residual]), the scale and bias per column of a row-major
 *   [rows, cols] matrix (Gemm, MatMul) or per channel of NCHW planes (Conv; BatchNormalization's scale);
 *   act one of none, relu, clip, hardsigmoid, hardswish, leakyrelu, sigmoid, silu, gelu, gelu_tanh, erf.
 * layer_norm: LayerNormalization over the last axis, with scale, optional bias and statistics; with rms,
 *   RMSNormalization (no mean subtracted).
 * softmax: Softmax or LogSoftmax over the last axis (the row's maximum subtracted first).
 * attention: softmax(scale(q @ k) + mask) @ v, one head's block of query rows per task (the two products
 *   on the packed GEMM of _packed_gemm.h with the head's k and v packed, or sgemm; this file's softmax
 *   between them), so a second thread has work at batch 1 and the scores never take more than a block
 *   per thread.
 *
 * Why C: numpy makes a pass over the whole array for every arithmetic step, and these functions
 * are many steps (a GELU with its rational erf is about 20): at a BERT layer's 128 x 1024 values the
 * passes cost three times the matrix product before them. Here each value is read once, carried
 * through every step in registers, and written once.
 *
 * exp and erf are polynomial and rational approximations evaluated with the same operations on
 * the AVX2 path (8 values at a time, FMA) and the portable one, so both agree to an ulp or two.
 * exp is only ever taken of values <= 0 (sigmoid as exp(-|x|), softmax after the maximum), so it
 * never overflows; below -87.3 (exp under FLT_MIN) it returns 0.
 *
 * Every size is bounded with size_product before a length check (_kernel_common.h): a product that
 * wrapped past 2^64 could match a tiny buffer and let a loop run far past it.
 */
#include "_kernel_common.h"
#include "_operand.h"
#include "_packed_gemm.h"
#include <math.h>
#include <string.h>

#define RELEASE_GIL_MIN 32768 /* values below which the GIL round trip costs more than it frees */
/* Values of a range handed to another thread of the pool: ~25 us of work or more, as a worker the
 * scheduler takes off the core while it holds a range stalls the whole call (16k-value ranges made
 * BERT's attention softmax slower on 2 threads than on 1 on a loaded machine). */
#define RANGE_MIN 131072
#define BLOCK 1024            /* values the AVX2 paths sum in float before the sum joins a double */

/* A C-contiguous float32 array of any rank; None gives an empty view (buf NULL) where optional. */
static int get_floats(PyObject *obj, Py_buffer *view, int writable, int optional, const char *what)
{
    memset(view, 0, sizeof(*view));
    if ((optional && obj == Py_None) || get_array_of_rank(obj, view, 'f', 4, writable, 1, what) == 0) return 0;
    view->buf = NULL;
    return -1;
}

static void release(Py_buffer *views, int count)
{
    for (int i = 0; i < count; i++)
        if (views[i].buf) PyBuffer_Release(&views[i]);
}

/* ---- activations ------------------------------------------------------------------------------ */

enum { ACT_NONE, ACT_RELU, ACT_CLIP, ACT_HARDSIGMOID, ACT_HARDSWISH, ACT_LEAKYRELU, ACT_SIGMOID, ACT_SILU,
       ACT_GELU, ACT_GELU_TANH, ACT_ERF, ACT_COUNT };
static const char *const ACT_NAMES[ACT_COUNT] = {"none", "relu", "clip", "hardsigmoid", "hardswish", "leakyrelu",
                                                 "sigmoid", "silu", "gelu", "gelu_tanh", "erf"};

typedef struct {
    int kind;
    float a, b; /* clip: min, max; hardsigmoid: alpha, beta; leakyrelu: alpha; silu: alpha (x sigmoid(alpha x)) */
} Act;

/* exp's constants (EXP_LO, LOG2E, EXP_P, ...), erf's rational fit (ERF_P, ERF_Q), SQRT_HALF and the GELU (tanh)
 * constants: _kernel_common.h. */

static inline float clampf(float x, float lo, float hi) { return x < lo ? lo : x > hi ? hi : x; } /* NaN kept */

/* exp(x) for x <= 0 (NaN kept). */
static inline float exp_neg(float x)
{
    if (!(x >= EXP_LO)) return x < EXP_LO ? 0.0f : x; /* NaN kept (and never converted to an int) */
    float n = nearbyintf(x * LOG2E);
    float r = x - n * LN2_HI - n * LN2_LO;
    float y = EXP_P[0];
    for (int i = 1; i < 6; i++) y = y * r + EXP_P[i];
    y = y * (r * r) + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23; /* n in [-126, 0] */
    float scale;
    memcpy(&scale, &bits, 4);
    return y * scale;
}

/* 1 / (1 + exp(-x)) from exp(-|x|), which cannot overflow. */
static inline float sigmoid1(float x)
{
    float e = exp_neg(-fabsf(x)), s = 1.0f / (1.0f + e);
    return x >= 0.0f ? s : e * s;
}

static inline float erf1(float x)
{
    x = clampf(x, -4.0f, 4.0f);
    float x2 = x * x, p = ERF_P[0], q = ERF_Q[0];
    for (int i = 1; i < 7; i++) p = p * x2 + ERF_P[i];
    for (int i = 1; i < 5; i++) q = q * x2 + ERF_Q[i];
    return clampf(x * p / q, -1.0f, 1.0f); /* the fit overshoots 1 by an ulp near +-4 */
}

/* Every activation, for the switches that give each its own loop: with the kind a constant there,
 * the per-value switch folds away and the loop body is that activation's arithmetic alone. */
#define EACH_ACT(X) X(ACT_NONE) X(ACT_RELU) X(ACT_CLIP) X(ACT_HARDSIGMOID) X(ACT_HARDSWISH) X(ACT_LEAKYRELU) \
    X(ACT_SIGMOID) X(ACT_SILU) X(ACT_GELU) X(ACT_GELU_TANH) X(ACT_ERF)
#if defined(__GNUC__)
#define INLINE inline __attribute__((always_inline))
#else
#define INLINE inline
#endif

static INLINE float act1(float v, int kind, const Act *a)
{
    switch (kind) {
    case ACT_RELU: return v < 0.0f ? 0.0f : v;
    case ACT_CLIP: return clampf(v, a->a, a->b);
    case ACT_HARDSIGMOID: return clampf(a->a * v + a->b, 0.0f, 1.0f);
    case ACT_HARDSWISH: return v * clampf(v * (1.0f / 6.0f) + 0.5f, 0.0f, 1.0f);
    case ACT_LEAKYRELU: return v >= 0.0f ? v : v * a->a;
    case ACT_SIGMOID: return sigmoid1(v);
    case ACT_SILU: return v * sigmoid1(a->a * v);
    case ACT_GELU: return 0.5f * v * (1.0f + erf1(v * SQRT_HALF));
    case ACT_GELU_TANH: return v * sigmoid1(GELU_TANH_K * v * (1.0f + GELU_TANH_C * v * v));
    case ACT_ERF: return erf1(v);
    default: return v;
    }
}

/* The scale and bias of one activate_loop: each either a vector (n values) or one value (NULL: none). */
typedef struct {
    const float *svec, *sone, *bvec, *bone;
} Affine;

/* n values: out = act(x * scale + bias + residual), in the order a Conv's bias then its fused residual Add
 * are added (the product rounded before the bias is added, as numpy's two steps). */
static INLINE void activate_loop(float *out, const float *x, const float *res, const Affine *f, Py_ssize_t n, int kind,
                                 const Act *a)
{
    const float *bvec = f->bvec, *bone = f->bone, *svec = f->svec, *sone = f->sone;
    for (Py_ssize_t i = 0; i < n; i++) {
        float v = x[i];
        if (svec) v *= svec[i];
        else if (sone) v *= *sone;
        if (bvec) v += bvec[i];
        else if (bone) v += *bone;
        if (res) v += res[i];
        out[i] = act1(v, kind, a);
    }
}

static void activate_generic(float *out, const float *x, const float *res, const Affine *f, Py_ssize_t n,
                             const Act *a)
{
    switch (a->kind) {
#define LOOP(kind) case kind: activate_loop(out, x, res, f, n, kind, a); break;
        EACH_ACT(LOOP)
#undef LOOP
    }
}

#ifdef HAVE_AVX2_PATH
#define AVX2 __attribute__((target("avx2,fma")))
#define AVX512 __attribute__((target("avx512f,avx2,fma")))

AVX2 static INLINE __m256 act8(__m256 v, int kind, const Act *a)
{
    const __m256 zero = _mm256_setzero_ps(), one = _mm256_set1_ps(1.0f), half = _mm256_set1_ps(0.5f);
    switch (kind) {
    case ACT_RELU: return _mm256_max_ps(zero, v);
    case ACT_CLIP: return clamp8(v, _mm256_set1_ps(a->a), _mm256_set1_ps(a->b));
    case ACT_HARDSIGMOID:
        return clamp8(_mm256_fmadd_ps(_mm256_set1_ps(a->a), v, _mm256_set1_ps(a->b)), zero, one);
    case ACT_HARDSWISH:
        return _mm256_mul_ps(v, clamp8(_mm256_fmadd_ps(v, _mm256_set1_ps(1.0f / 6.0f), half), zero, one));
    case ACT_LEAKYRELU:
        return _mm256_blendv_ps(_mm256_mul_ps(v, _mm256_set1_ps(a->a)), v, _mm256_cmp_ps(v, zero, _CMP_GE_OQ));
    case ACT_SIGMOID: return sigmoid8(v);
    case ACT_SILU: return _mm256_mul_ps(v, sigmoid8(_mm256_mul_ps(_mm256_set1_ps(a->a), v)));
    case ACT_GELU:
        return _mm256_mul_ps(_mm256_mul_ps(half, v), _mm256_add_ps(one, erf8(_mm256_mul_ps(v, _mm256_set1_ps(SQRT_HALF)))));
    case ACT_GELU_TANH: {
        __m256 u = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(GELU_TANH_C), v), v, one);
        return _mm256_mul_ps(v, sigmoid8(_mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(GELU_TANH_K), v), u)));
    }
    case ACT_ERF: return erf8(v);
    default: return v;
    }
}

/* The k values at p: 8 where k >= 8, else the first k (the other lanes read as 0, nothing past p + k). */
AVX2 static inline __m256 load_part(const float *p, Py_ssize_t k)
{
    return k >= 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, part8(k));
}

AVX2 static inline void store_part(float *p, Py_ssize_t k, __m256 v)
{
    if (k >= 8) _mm256_storeu_ps(p, v);
    else _mm256_maskstore_ps(p, part8(k), v);
}

/* v with the lanes from k on set to 0 (for sums over a partial vector). */
AVX2 static inline __m256 keep_part(__m256 v, Py_ssize_t k)
{
    return k >= 8 ? v : _mm256_and_ps(v, _mm256_castsi256_ps(part8(k)));
}

/* x * scale + bias + residual at value i (of k left); s1, b1: the single scale and bias, broadcast. */
AVX2 static INLINE __m256 input8(const float *x, const float *res, const Affine *f, __m256 s1, __m256 b1, Py_ssize_t i,
                                 Py_ssize_t k)
{
    __m256 v = load_part(x + i, k);
    if (f->svec) v = _mm256_mul_ps(v, load_part(f->svec + i, k));
    else if (f->sone) v = _mm256_mul_ps(v, s1);
    if (f->bvec) v = _mm256_add_ps(v, load_part(f->bvec + i, k));
    else if (f->bone) v = _mm256_add_ps(v, b1);
    return res ? _mm256_add_ps(v, load_part(res + i, k)) : v;
}

/* activate_loop's 8 values at a time, two vectors to an iteration where there are 16: the two
 * activations' long dependency chains (exp's polynomial) overlap. The affine terms and the activation's
 * parameters are read into locals first: a float stored to out may, as far as GCC knows, be the
 * activation's parameter or the single scale or bias, so read through f and a it loaded them again
 * after every store, with a branch each. */
AVX2 static INLINE void activate_loop8(float *out, const float *x, const float *res, const Affine *affine,
                                       Py_ssize_t n, int kind, const Act *act)
{
    const Affine local = *affine, *f = &local;
    const Act params = *act, *a = &params;
    const __m256 s1 = _mm256_set1_ps(f->sone ? *f->sone : 1.0f), b1 = _mm256_set1_ps(f->bone ? *f->bone : 0.0f);
    Py_ssize_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256 v0 = input8(x, res, f, s1, b1, i, 8), v1 = input8(x, res, f, s1, b1, i + 8, 8);
        _mm256_storeu_ps(out + i, act8(v0, kind, a));
        _mm256_storeu_ps(out + i + 8, act8(v1, kind, a));
    }
    for (; i < n; i += 8) store_part(out + i, n - i, act8(input8(x, res, f, s1, b1, i, n - i), kind, a));
}

AVX2 static void activate_avx2(float *out, const float *x, const float *res, const Affine *f, Py_ssize_t n,
                               const Act *a)
{
    switch (a->kind) {
#define LOOP(kind) case kind: activate_loop8(out, x, res, f, n, kind, a); break;
        EACH_ACT(LOOP)
#undef LOOP
    }
}

/* GELU (erf or tanh) and erf on 16 lanes: conv_act16's forms (_kernel_common.h), which the convolutions
 * and the packed GEMM apply in their stores. One thread, in place: ViT-Tiny's 197 x 768 values 134 -> 56
 * us for GELU, 144 -> 66 for its tanh form; ConvNeXt's 3136 x 160 429 -> 187 (then bound by memory).
 * Sigmoid and SiLU keep the AVX2 loop: their 16-lane division made them no faster (88 against 95 us). */
AVX512 static INLINE __m512 input16(const float *x, const float *res, const Affine *f, __m512 s1, __m512 b1,
                                    Py_ssize_t i, __mmask16 m)
{
    __m512 v = load16(m, x + i);
    if (f->svec) v = _mm512_mul_ps(v, load16(m, f->svec + i));
    else if (f->sone) v = _mm512_mul_ps(v, s1);
    if (f->bvec) v = _mm512_add_ps(v, load16(m, f->bvec + i));
    else if (f->bone) v = _mm512_add_ps(v, b1);
    return res ? _mm512_add_ps(v, load16(m, res + i)) : v;
}

AVX512 static INLINE __m512 act16(__m512 v, const ConvAct *c)
{
    return c->kind == CONV_ACT_NONE ? erf16(v) : conv_act16(c, v);
}

/* act's kind as conv_act16 computes it (CONV_ACT_NONE standing for erf), or -1 where it keeps the AVX2 loop.
 * None, Relu and Clip are clamps (to +-inf for none: min and max keep NaN and -0 as clamp8 does, the same
 * bits). On 16 lanes, one thread, both builds in turns: a BatchNormalization + ReLU of 640 x 14 x 14 (each
 * channel's plane a call here) 40 -> 23 us, 256 x 7 x 7 6.1 -> 5.3, a Relu over 197 x 768 47 -> 25;
 * 160 x 56 x 56 (4 MB through memory) 1.02-1.03x; DenseNet (45 of them) 0.99x the time. */
static int on_16_lanes(const Act *a, ConvAct *c)
{
    switch (a->kind) {
    case ACT_GELU: *c = (ConvAct){CONV_ACT_GELU, 0.f, 0.f, a->a}; return 0;
    case ACT_GELU_TANH: *c = (ConvAct){CONV_ACT_GELU_TANH, 0.f, 0.f, a->a}; return 0;
    case ACT_ERF: *c = (ConvAct){CONV_ACT_NONE, 0.f, 0.f, a->a}; return 0;
    case ACT_NONE: *c = (ConvAct){CONV_ACT_CLAMP, -INFINITY, INFINITY, 0.f}; return 0;
    case ACT_RELU: *c = (ConvAct){CONV_ACT_CLAMP, 0.f, INFINITY, 0.f}; return 0;
    case ACT_CLIP: *c = (ConvAct){CONV_ACT_CLAMP, a->a, a->b, 0.f}; return 0;
    default: return -1;
    }
}

AVX512 static void activate_avx512(float *out, const float *x, const float *res, const Affine *f, Py_ssize_t n,
                                   const Act *a)
{
    ConvAct c;
    if (on_16_lanes(a, &c) < 0) {
        activate_avx2(out, x, res, f, n, a);
        return;
    }
    const __m512 s1 = _mm512_set1_ps(f->sone ? *f->sone : 1.0f), b1 = _mm512_set1_ps(f->bone ? *f->bone : 0.0f);
    Py_ssize_t i = 0;
    if (c.kind == CONV_ACT_CLAMP) { /* its own loop: no switch a vector (a 7x7 plane is 4 of them) */
        const __m512 lo = _mm512_set1_ps(c.lo), hi = _mm512_set1_ps(c.hi);
        for (; i + 16 <= n; i += 16)
            _mm512_storeu_ps(out + i, _mm512_min_ps(hi, _mm512_max_ps(lo, input16(x, res, f, s1, b1, i, 0xFFFF))));
        if (i < n) {
            const __mmask16 m = part16(n - i);
            _mm512_mask_storeu_ps(out + i, m, _mm512_min_ps(hi, _mm512_max_ps(lo, input16(x, res, f, s1, b1, i, m))));
        }
        return;
    }
    for (; i + 32 <= n; i += 32) { /* two vectors an iteration: their polynomials' chains overlap */
        __m512 v0 = input16(x, res, f, s1, b1, i, 0xFFFF), v1 = input16(x, res, f, s1, b1, i + 16, 0xFFFF);
        _mm512_storeu_ps(out + i, act16(v0, &c));
        _mm512_storeu_ps(out + i + 16, act16(v1, &c));
    }
    for (; i < n; i += 16) {
        const __mmask16 m = part16(n - i);
        _mm512_mask_storeu_ps(out + i, m, act16(input16(x, res, f, s1, b1, i, m), &c));
    }
}
#endif

/* activate's loop for the CPU: AVX-512, AVX2 or portable C. */
static void activate_values(float *out, const float *x, const float *res, const Affine *f, Py_ssize_t n, const Act *a)
{
#ifdef HAVE_AVX2_PATH
    if (use_avx512()) {
        activate_avx512(out, x, res, f, n, a);
        return;
    }
#endif
    DISPATCH(activate, out, x, res, f, n, a);
}

/* One activate call, shared by the pool's threads. Units: values (no bias or scale), rows of count values
 * (a bias and scale per column) or planes of plane values (per channel). */
typedef struct {
    float *out;
    const float *x, *res, *bias, *scale;
    Py_ssize_t count, plane, n;
    const Act *a;
} ActivateJob;

/* Units [lo, hi): value i gets bias[(i / plane) % count] and scale[(i / plane) % count]. */
static void activate_range(void *ctx, Py_ssize_t lo, Py_ssize_t hi)
{
    const ActivateJob *j = ctx;
    const float *res = j->res;
    if (!j->bias && !j->scale) {
        const Affine none = {NULL, NULL, NULL, NULL};
        activate_values(j->out + lo, j->x + lo, res ? res + lo : NULL, &none, hi - lo, j->a);
    } else if (j->plane == 1) { /* per column: rows of count values */
        const Affine f = {j->scale, NULL, j->bias, NULL};
        for (Py_ssize_t i = lo * j->count; i < hi * j->count; i += j->count)
            activate_values(j->out + i, j->x + i, res ? res + i : NULL, &f, j->count, j->a);
    } else { /* per channel: planes of plane values */
        for (Py_ssize_t u = lo; u < hi; u++) {
            Py_ssize_t i = u * j->plane, c = u % j->count;
            const Affine f = {NULL, j->scale ? j->scale + c : NULL, NULL, j->bias ? j->bias + c : NULL};
            activate_values(j->out + i, j->x + i, res ? res + i : NULL, &f, j->plane, j->a);
        }
    }
}

static void activate_all(const ActivateJob *j, int threads)
{
    Py_ssize_t unit = !j->bias && !j->scale ? 1 : j->plane == 1 ? j->count : j->plane, units = unit ? j->n / unit : 0;
    parallel_for(activate_range, (void *)j, units, 1 + RANGE_MIN / (unit + 1), threads);
}

PyDoc_STRVAR(activate_doc,
"activate(x, out, act, alpha=0.0, beta=0.0, bias=None, plane=1, residual=None, threads=1, scale=None)\n\n"
"out = act(x * scale + bias + residual) over float32 C-contiguous arrays of equal size (out may be x).\n"
"act: none, relu, clip (alpha, beta: min, max), hardsigmoid (alpha x + beta, clamped to [0, 1]),\n"
"hardswish, leakyrelu (alpha), sigmoid, silu (x sigmoid(alpha x)), gelu, gelu_tanh or erf.\n"
"bias: value i gets bias[(i // plane) % len(bias)]: plane=1 is a bias per column of a [rows, len(bias)]\n"
"matrix, plane=H*W a bias per channel of NCHW planes; the size must be a multiple of len(bias) * plane.\n"
"scale: as bias (the same length where both are given).\n"
"Large arrays are split over up to threads threads of the native pool.");

static PyObject *activate(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"x", "out", "act", "alpha", "beta", "bias", "plane", "residual", "threads", "scale", NULL};
    PyObject *xo, *oo, *bo = Py_None, *ro = Py_None, *so = Py_None;
    const char *name;
    Act a = {ACT_NONE, 0.0f, 0.0f};
    Py_ssize_t plane = 1;
    int threads = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOs|ffOnOiO", kwlist, &xo, &oo, &name, &a.a, &a.b, &bo, &plane, &ro,
                                     &threads, &so))
        return NULL;
    for (a.kind = 0; a.kind < ACT_COUNT && strcmp(name, ACT_NAMES[a.kind]); a.kind++) {}
    if (a.kind == ACT_COUNT) {
        PyErr_Format(PyExc_ValueError, "activate: unknown activation '%s'", name);
        return NULL;
    }
    Py_buffer v[5];
    memset(v, 0, sizeof(v));
    if (get_floats(xo, &v[0], 0, 0, "x") < 0 || get_floats(oo, &v[1], 1, 0, "out") < 0 ||
        get_floats(bo, &v[2], 0, 1, "bias") < 0 || get_floats(ro, &v[3], 0, 1, "residual") < 0 ||
        get_floats(so, &v[4], 0, 1, "scale") < 0) {
        release(v, 5);
        return NULL;
    }
    Py_ssize_t n = v[0].len / 4, count = v[2].buf ? v[2].len / 4 : v[4].len / 4;
    Py_ssize_t period = SIZE_PRODUCT(count, plane);
    PyObject *result = NULL;
    if (plane < 1 || period < 0) {
        PyErr_Format(PyExc_ValueError, "activate: plane %zd times %zd bias values overflows or is not positive", plane,
                     count);
    } else if (v[1].len / 4 != n || (v[3].buf && v[3].len / 4 != n)) {
        PyErr_Format(PyExc_ValueError, "activate: out and residual must have x's %zd values", n);
    } else if (v[2].buf && v[4].buf && v[4].len != v[2].len) {
        PyErr_Format(PyExc_ValueError, "activate: %zd scale values for %zd bias values", v[4].len / 4, count);
    } else if ((v[2].buf || v[4].buf) && (count == 0 ? n != 0 : n % period != 0)) {
        PyErr_Format(PyExc_ValueError, "activate: %zd values are not whole periods of %zd bias values times plane %zd",
                     n, count, plane);
    } else {
        ActivateJob job = {v[1].buf, v[0].buf, v[3].buf, v[2].buf, v[4].buf, count, plane, n, &a};
        if (n >= RELEASE_GIL_MIN) {
            Py_BEGIN_ALLOW_THREADS
            activate_all(&job, threads);
            Py_END_ALLOW_THREADS
        } else {
            activate_all(&job, 1);
        }
        result = Py_NewRef(Py_None);
    }
    release(v, 5);
    return result;
}

/* ---- row reductions: LayerNormalization and Softmax ------------------------------------------- */

/* The sum of row[i] - shift (squared when square), in double. */
static double row_sum_generic(const float *row, Py_ssize_t n, float shift, int square)
{
    double total = 0.0;
    for (Py_ssize_t i = 0; i < n; i++) {
        float d = row[i] - shift;
        total += square ? (double)d * d : d;
    }
    return total;
}

static void layer_norm_row_generic(float *out, const float *x, const float *scale, const float *bias, Py_ssize_t n,
                                   float eps, int rms, float *mean_out, float *inv_out)
{
    float mean = rms ? 0.0f : (float)(row_sum_generic(x, n, 0.0f, 0) / (double)n);
    float var = (float)(row_sum_generic(x, n, mean, 1) / (double)n);
    float inv = 1.0f / sqrtf(var + eps);
    for (Py_ssize_t i = 0; i < n; i++) {
        float y = (x[i] - mean) * inv * scale[i];
        out[i] = bias ? y + bias[i] : y;
    }
    *mean_out = mean;
    *inv_out = inv;
}

static float row_max_generic(const float *x, Py_ssize_t n)
{
    float m = x[0];
    for (Py_ssize_t i = 1; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

static void softmax_row_generic(float *out, const float *x, Py_ssize_t n, int take_log)
{
    float m = row_max_generic(x, n);
    double total = 0.0;
    for (Py_ssize_t i = 0; i < n; i++) {
        float e = exp_neg(x[i] - m);
        if (!take_log) out[i] = e;
        total += e;
    }
    if (take_log) {
        float shift = (float)log(total);
        for (Py_ssize_t i = 0; i < n; i++) out[i] = (x[i] - m) - shift;
    } else {
        float inv = (float)(1.0 / total);
        for (Py_ssize_t i = 0; i < n; i++) out[i] *= inv;
    }
}

#ifdef HAVE_AVX2_PATH
AVX2 static inline float hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

/* row_sum_generic's sum, in float over blocks of BLOCK values summed in double: float rounding then
 * grows with BLOCK, not with the row's length. */
AVX2 static double row_sum_avx2(const float *row, Py_ssize_t n, float shift, int square)
{
    double total = 0.0;
    __m256 sh = _mm256_set1_ps(shift);
    for (Py_ssize_t start = 0; start < n; start += BLOCK) {
        Py_ssize_t end = n - start < BLOCK ? n : start + BLOCK;
        __m256 s = _mm256_setzero_ps();
        for (Py_ssize_t i = start; i < end; i += 8) {
            __m256 d = keep_part(_mm256_sub_ps(load_part(row + i, end - i), sh), end - i);
            s = square ? _mm256_fmadd_ps(d, d, s) : _mm256_add_ps(s, d);
        }
        total += hsum8(s);
    }
    return total;
}

AVX2 static void layer_norm_row_avx2(float *out, const float *x, const float *scale, const float *bias, Py_ssize_t n,
                                     float eps, int rms, float *mean_out, float *inv_out)
{
    float mean = rms ? 0.0f : (float)(row_sum_avx2(x, n, 0.0f, 0) / (double)n);
    float var = (float)(row_sum_avx2(x, n, mean, 1) / (double)n);
    float inv = 1.0f / sqrtf(var + eps);
    __m256 mv = _mm256_set1_ps(mean), iv = _mm256_set1_ps(inv);
    for (Py_ssize_t i = 0; i < n; i += 8) {
        Py_ssize_t k = n - i;
        __m256 y = _mm256_mul_ps(_mm256_mul_ps(_mm256_sub_ps(load_part(x + i, k), mv), iv), load_part(scale + i, k));
        if (bias) y = _mm256_add_ps(y, load_part(bias + i, k));
        store_part(out + i, k, y);
    }
    *mean_out = mean;
    *inv_out = inv;
}

AVX2 static void softmax_row_avx2(float *out, const float *x, Py_ssize_t n, int take_log)
{
    __m256 first = _mm256_set1_ps(x[0]), mx = first; /* x[0] fills a partial vector's other lanes */
    for (Py_ssize_t i = 0; i < n; i += 8) {
        __m256 v = load_part(x + i, n - i);
        if (n - i < 8) v = _mm256_blendv_ps(first, v, _mm256_castsi256_ps(part8(n - i)));
        mx = _mm256_max_ps(mx, v);
    }
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    __m256 mv = _mm256_set1_ps(_mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h))));
    double total = 0.0;
    for (Py_ssize_t start = 0; start < n; start += BLOCK) {
        Py_ssize_t end = n - start < BLOCK ? n : start + BLOCK;
        __m256 s = _mm256_setzero_ps();
        for (Py_ssize_t i = start; i < end; i += 8) {
            __m256 e = keep_part(exp_neg8(_mm256_sub_ps(load_part(x + i, end - i), mv)), end - i);
            if (!take_log) store_part(out + i, end - i, e);
            s = _mm256_add_ps(s, e);
        }
        total += hsum8(s);
    }
    /* Softmax: times 1 / sum (within an ulp of dividing, at a fraction of the cost) */
    __m256 t = _mm256_set1_ps(take_log ? (float)log(total) : (float)(1.0 / total));
    for (Py_ssize_t i = 0; i < n; i += 8) {
        __m256 y = take_log ? _mm256_sub_ps(_mm256_sub_ps(load_part(x + i, n - i), mv), t)
                            : _mm256_mul_ps(load_part(out + i, n - i), t);
        store_part(out + i, n - i, y);
    }
}

/* softmax_row_avx2 of 4 rows ld floats apart, each of n (1 to BLOCK) values, their steps interleaved as
 * softmax_rows4_avx512's: the same bits as each row alone. */
AVX2 static void softmax_rows4_avx2(float *out, const float *x, Py_ssize_t n, Py_ssize_t ld, int take_log)
{
    __m256 first[4], mx[4], mv[4], s[4], t[4];
    for (int r = 0; r < 4; r++) first[r] = mx[r] = _mm256_set1_ps(x[r * ld]);
    for (Py_ssize_t i = 0; i < n; i += 8)
        for (int r = 0; r < 4; r++) {
            __m256 v = load_part(x + r * ld + i, n - i);
            if (n - i < 8) v = _mm256_blendv_ps(first[r], v, _mm256_castsi256_ps(part8(n - i)));
            mx[r] = _mm256_max_ps(mx[r], v);
        }
    for (int r = 0; r < 4; r++) {
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(mx[r]), _mm256_extractf128_ps(mx[r], 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        mv[r] = _mm256_set1_ps(_mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h))));
        s[r] = _mm256_setzero_ps();
    }
    for (Py_ssize_t i = 0; i < n; i += 8)
        for (int r = 0; r < 4; r++) {
            __m256 e = keep_part(exp_neg8(_mm256_sub_ps(load_part(x + r * ld + i, n - i), mv[r])), n - i);
            if (!take_log) store_part(out + r * ld + i, n - i, e);
            s[r] = _mm256_add_ps(s[r], e);
        }
    for (int r = 0; r < 4; r++) {
        const double total = 0.0 + hsum8(s[r]);
        t[r] = _mm256_set1_ps(take_log ? (float)log(total) : (float)(1.0 / total));
    }
    for (Py_ssize_t i = 0; i < n; i += 8)
        for (int r = 0; r < 4; r++) {
            __m256 y = take_log ? _mm256_sub_ps(_mm256_sub_ps(load_part(x + r * ld + i, n - i), mv[r]), t[r])
                                : _mm256_mul_ps(load_part(out + r * ld + i, n - i), t[r]);
            store_part(out + r * ld + i, n - i, y);
        }
}

/* AVX-512: 16 lanes, masked tails (591 rows of 197, ViT-Tiny's attention: 79 -> 56 us, one thread). */
AVX512 static void softmax_row_avx512(float *out, const float *x, Py_ssize_t n, int take_log)
{
    __m512 mx = _mm512_set1_ps(x[0]); /* x[0] fills a partial vector's other lanes */
    for (Py_ssize_t i = 0; i < n; i += 16) mx = _mm512_max_ps(mx, _mm512_mask_loadu_ps(mx, part16(n - i), x + i));
    const __m512 mv = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
    double total = 0.0;
    for (Py_ssize_t start = 0; start < n; start += BLOCK) {
        Py_ssize_t end = n - start < BLOCK ? n : start + BLOCK;
        __m512 s = _mm512_setzero_ps();
        for (Py_ssize_t i = start; i < end; i += 16) {
            const __mmask16 m = part16(end - i);
            __m512 e = _mm512_maskz_mov_ps(m, exp_neg16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), mv)));
            if (!take_log) store16(out + i, m, e);
            s = _mm512_add_ps(s, e);
        }
        total += _mm512_reduce_add_ps(s);
    }
    /* Softmax: times 1 / sum (within an ulp of dividing, at a fraction of the cost) */
    const __m512 t = _mm512_set1_ps(take_log ? (float)log(total) : (float)(1.0 / total));
    for (Py_ssize_t i = 0; i < n; i += 16) {
        const __mmask16 m = part16(n - i);
        __m512 y = take_log ? _mm512_sub_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), mv), t)
                            : _mm512_mul_ps(_mm512_maskz_loadu_ps(m, out + i), t);
        store16(out + i, m, y);
    }
}

/* softmax_row_avx512 of 4 rows ld floats apart, each of n (1 to BLOCK) values, their steps interleaved.
 * A short row (197 keys: 13 vectors) is a chain of dependent steps (the maximum, its reduction, the
 * exponentials' sum, its reduction, the reciprocal) whose latency one row leaves exposed; four rows'
 * chains overlap. Each row's arithmetic is softmax_row_avx512's, in its order: the same bits. */
AVX512 static void softmax_rows4_avx512(float *out, const float *x, Py_ssize_t n, Py_ssize_t ld, int take_log)
{
    __m512 mx[4], mv[4], s[4];
    for (int r = 0; r < 4; r++) mx[r] = _mm512_set1_ps(x[r * ld]);
    for (Py_ssize_t i = 0; i < n; i += 16) {
        const __mmask16 m = part16(n - i);
        for (int r = 0; r < 4; r++) mx[r] = _mm512_max_ps(mx[r], _mm512_mask_loadu_ps(mx[r], m, x + r * ld + i));
    }
    for (int r = 0; r < 4; r++) mv[r] = _mm512_set1_ps(_mm512_reduce_max_ps(mx[r])), s[r] = _mm512_setzero_ps();
    for (Py_ssize_t i = 0; i < n; i += 16) {
        const __mmask16 m = part16(n - i);
        for (int r = 0; r < 4; r++) {
            __m512 e = _mm512_maskz_mov_ps(m, exp_neg16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + r * ld + i), mv[r])));
            if (!take_log) store16(out + r * ld + i, m, e);
            s[r] = _mm512_add_ps(s[r], e);
        }
    }
    __m512 t[4];
    for (int r = 0; r < 4; r++) {
        const double total = 0.0 + _mm512_reduce_add_ps(s[r]);
        t[r] = _mm512_set1_ps(take_log ? (float)log(total) : (float)(1.0 / total));
    }
    for (Py_ssize_t i = 0; i < n; i += 16) {
        const __mmask16 m = part16(n - i);
        for (int r = 0; r < 4; r++) {
            __m512 y = take_log ? _mm512_sub_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + r * ld + i), mv[r]), t[r])
                                : _mm512_mul_ps(_mm512_maskz_loadu_ps(m, out + r * ld + i), t[r]);
            store16(out + r * ld + i, m, y);
        }
    }
}

/* row_sum_avx2's sum on 16 lanes, two chains a block (the adds' latency, not their count, bound one). */
AVX512 static double row_sum_avx512(const float *row, Py_ssize_t n, float shift, int square)
{
    double total = 0.0;
    const __m512 sh = _mm512_set1_ps(shift);
    for (Py_ssize_t start = 0; start < n; start += BLOCK) {
        const Py_ssize_t end = n - start < BLOCK ? n : start + BLOCK;
        __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
        Py_ssize_t i = start;
        for (; i + 32 <= end; i += 32) {
            const __m512 d0 = _mm512_sub_ps(_mm512_loadu_ps(row + i), sh);
            const __m512 d1 = _mm512_sub_ps(_mm512_loadu_ps(row + i + 16), sh);
            s0 = square ? _mm512_fmadd_ps(d0, d0, s0) : _mm512_add_ps(s0, d0);
            s1 = square ? _mm512_fmadd_ps(d1, d1, s1) : _mm512_add_ps(s1, d1);
        }
        for (; i < end; i += 16) {
            const __mmask16 m = part16(end - i);
            const __m512 d = _mm512_maskz_sub_ps(m, _mm512_maskz_loadu_ps(m, row + i), sh);
            s0 = square ? _mm512_fmadd_ps(d, d, s0) : _mm512_add_ps(s0, d);
        }
        total += _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
    }
    return total;
}

/* layer_norm_row_avx2 on 16 lanes (a ViT-Tiny row of 192: 0.52 -> 0.17 ns a value, one thread). */
AVX512 static void layer_norm_row_avx512(float *out, const float *x, const float *scale, const float *bias,
                                         Py_ssize_t n, float eps, int rms, float *mean_out, float *inv_out)
{
    const float mean = rms ? 0.0f : (float)(row_sum_avx512(x, n, 0.0f, 0) / (double)n);
    const float var = (float)(row_sum_avx512(x, n, mean, 1) / (double)n);
    const float inv = 1.0f / sqrtf(var + eps);
    const __m512 mv = _mm512_set1_ps(mean), iv = _mm512_set1_ps(inv);
    for (Py_ssize_t i = 0; i < n; i += 16) {
        const __mmask16 m = part16(n - i);
        __m512 y = _mm512_mul_ps(_mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), mv), iv),
                                 _mm512_maskz_loadu_ps(m, scale + i));
        if (bias) y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(m, bias + i));
        store16(out + i, m, y);
    }
    *mean_out = mean;
    *inv_out = inv;
}

AVX512 static void scale_mask_row_avx512(float *row, int n, int scale_op, float scale, const float *mask_row)
{
    const __m512 sv = _mm512_set1_ps(scale);
    for (int i = 0; i < n; i += 16) {
        const __mmask16 m = part16(n - i);
        __m512 x = load16(m, row + i);
        if (scale_op == 1) x = _mm512_mul_ps(x, sv);
        else if (scale_op == 2) x = _mm512_div_ps(x, sv);
        if (mask_row) x = _mm512_add_ps(x, load16(m, mask_row + i));
        store16(row + i, m, x);
    }
}
#endif

/* The number of rows of cols values that x and out hold; -1 with the error set where they hold no whole rows. */
static int rows_of(Py_buffer *x, Py_buffer *out, Py_ssize_t cols, Py_ssize_t *rows, const char *what)
{
    Py_ssize_t n = x->len / 4;
    if (cols < 1 || n % cols != 0 || out->len / 4 != n) {
        PyErr_Format(PyExc_ValueError, "%s: x and out must be whole rows of %zd values (x has %zd, out %zd)", what,
                     cols, n, out->len / 4);
        return -1;
    }
    *rows = n / cols;
    return 0;
}

PyDoc_STRVAR(layer_norm_doc,
"layer_norm(x, out, cols, scale, bias=None, epsilon=1e-5, mean=None, inv_std=None, threads=1, rms=False)\n\n"
"Each row of cols values: out = (x - mean) / sqrt(var + epsilon) * scale + bias, float32 C-contiguous\n"
"(out may be x). scale and bias have cols values; mean and inv_std, when given, receive a value per row.\n"
"rms: RMSNormalization, mean taken as 0 (var is then the mean of the squares).\n"
"Rows split over up to threads threads of the native pool.");

/* One layer_norm or softmax call, shared by the pool's threads, which take ranges of rows. */
typedef struct {
    float *out, *mean, *inv;
    const float *x, *scale, *bias;
    Py_ssize_t cols;
    float eps;
    int take_log, rms;
} RowsJob;

/* One row's layer normalization on the widest path the CPU has. */
static void layer_norm_row(float *out, const float *x, const float *scale, const float *bias, Py_ssize_t n, float eps,
                           int rms, float *mean_out, float *inv_out)
{
#ifdef HAVE_AVX2_PATH
    if (use_avx512()) {
        layer_norm_row_avx512(out, x, scale, bias, n, eps, rms, mean_out, inv_out);
        return;
    }
#endif
    DISPATCH(layer_norm_row, out, x, scale, bias, n, eps, rms, mean_out, inv_out);
}

static void layer_norm_range(void *ctx, Py_ssize_t lo, Py_ssize_t hi)
{
    const RowsJob *j = ctx;
    for (Py_ssize_t r = lo; r < hi; r++) {
        float m, s;
        layer_norm_row(j->out + r * j->cols, j->x + r * j->cols, j->scale, j->bias, j->cols, j->eps, j->rms, &m, &s);
        if (j->mean) j->mean[r] = m;
        if (j->inv) j->inv[r] = s;
    }
}

/* One row's softmax on the widest path the CPU has. */
static void softmax_row(float *out, const float *x, Py_ssize_t n, int take_log)
{
#ifdef HAVE_AVX2_PATH
    if (use_avx512()) {
        softmax_row_avx512(out, x, n, take_log);
        return;
    }
#endif
    DISPATCH(softmax_row, out, x, n, take_log);
}

/* Rows [0, rows) of x and out, ld floats apart, n values each: 4 at a time where they are short
 * (softmax_rows4_avx512, softmax_rows4_avx2). One core of an Intel Xeon, both builds in one process,
 * calls in turn, minimum of 200: ViT-Tiny's attention probabilities (591 rows of 197) 61.5 -> 53.8 us,
 * BERT's (512 of 128) 39.8 -> 31.3; native.attention on ViT-Tiny's 3 heads of 197 x 64 316 -> 289 us,
 * on BERT's 4 heads of 128 x 64 with a mask 238 -> 211. The AVX2 path of the same CPU: 591 rows of
 * 197 121 -> 97 us, 512 of 128 68 -> 53. */
static void softmax_rows(float *out, const float *x, Py_ssize_t rows, Py_ssize_t n, Py_ssize_t ld, int take_log)
{
    Py_ssize_t r = 0;
#ifdef HAVE_AVX2_PATH
    if (n >= 1 && n <= BLOCK && use_avx512())
        for (; r + 4 <= rows; r += 4) softmax_rows4_avx512(out + r * ld, x + r * ld, n, ld, take_log);
    else if (n >= 1 && n <= BLOCK && use_avx2())
        for (; r + 4 <= rows; r += 4) softmax_rows4_avx2(out + r * ld, x + r * ld, n, ld, take_log);
#endif
    for (; r < rows; r++) softmax_row(out + r * ld, x + r * ld, n, take_log);
}

static void softmax_range(void *ctx, Py_ssize_t lo, Py_ssize_t hi)
{
    const RowsJob *j = ctx;
    softmax_rows(j->out + lo * j->cols, j->x + lo * j->cols, hi - lo, j->cols, j->cols, j->take_log);
}

static PyObject *layer_norm(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"x", "out", "cols", "scale", "bias", "epsilon", "mean", "inv_std", "threads", "rms", NULL};
    PyObject *xo, *oo, *so, *bo = Py_None, *mo = Py_None, *io = Py_None;
    Py_ssize_t cols, rows;
    float eps = 1e-5f;
    int threads = 1, rms = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOnO|OfOOip", kwlist, &xo, &oo, &cols, &so, &bo, &eps, &mo, &io,
                                     &threads, &rms))
        return NULL;
    Py_buffer v[6];
    memset(v, 0, sizeof(v));
    if (get_floats(xo, &v[0], 0, 0, "x") < 0 || get_floats(oo, &v[1], 1, 0, "out") < 0 ||
        get_floats(so, &v[2], 0, 0, "scale") < 0 || get_floats(bo, &v[3], 0, 1, "bias") < 0 ||
        get_floats(mo, &v[4], 1, 1, "mean") < 0 || get_floats(io, &v[5], 1, 1, "inv_std") < 0) {
        release(v, 6);
        return NULL;
    }
    PyObject *result = NULL;
    if (rows_of(&v[0], &v[1], cols, &rows, "layer_norm") < 0) goto done;
    if (v[2].len / 4 != cols || (v[3].buf && v[3].len / 4 != cols) || (v[4].buf && v[4].len / 4 != rows) ||
        (v[5].buf && v[5].len / 4 != rows)) {
        PyErr_Format(PyExc_ValueError, "layer_norm: scale and bias must have %zd values, mean and inv_std %zd", cols,
                     rows);
        goto done;
    }
    RowsJob job = {.out = v[1].buf, .mean = v[4].buf, .inv = v[5].buf, .x = v[0].buf, .scale = v[2].buf,
                   .bias = v[3].buf, .cols = cols, .eps = eps, .rms = rms};
    Py_BEGIN_ALLOW_THREADS
    parallel_for(layer_norm_range, &job, rows, 1 + RANGE_MIN / (cols + 1), threads);
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    release(v, 6);
    return result;
}

PyDoc_STRVAR(softmax_doc,
"softmax(x, out, cols, log=False, threads=1)\n\n"
"Softmax (or LogSoftmax) of each row of cols values, float32 C-contiguous (out may be x): the row's\n"
"maximum is subtracted first, so no exp overflows. Rows split over up to threads threads of the pool.");

static PyObject *softmax(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"x", "out", "cols", "log", "threads", NULL};
    PyObject *xo, *oo;
    Py_ssize_t cols, rows;
    int take_log = 0, threads = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOn|pi", kwlist, &xo, &oo, &cols, &take_log, &threads))
        return NULL;
    Py_buffer v[2];
    memset(v, 0, sizeof(v));
    if (get_floats(xo, &v[0], 0, 0, "x") < 0 || get_floats(oo, &v[1], 1, 0, "out") < 0) {
        release(v, 2);
        return NULL;
    }
    PyObject *result = NULL;
    if (rows_of(&v[0], &v[1], cols, &rows, "softmax") == 0) {
        RowsJob job = {.out = v[1].buf, .x = v[0].buf, .cols = cols, .take_log = take_log};
        Py_BEGIN_ALLOW_THREADS
        parallel_for(softmax_range, &job, rows, 1 + RANGE_MIN / (cols + 1), threads);
        Py_END_ALLOW_THREADS
        result = Py_NewRef(Py_None);
    }
    release(v, 2);
    return result;
}

/* ---- attention ------------------------------------------------------------------------------ */

/* Scores per block of one head's query rows: at most this many floats (256 KB, within one core's L2), and
 * never fewer than ROWS_MIN rows (sgemm's speed falls on thinner products). */
#define SCORES_BLOCK_FLOATS 65536
#define ROWS_MIN 8
/* Below this many multiply-adds in all, one thread: the hand-off costs about what a second thread saves. */
#define ATTENTION_SPLIT_MIN (1 << 18)

typedef struct {
    dcm_sgemm_fn sgemm;
    Operand q, k, v, out;
    const char *mask;                 /* NULL: none */
    Py_ssize_t mask_lead[MAX_DIMS];   /* bytes */
    Py_ssize_t mask_row, mask_col;    /* elements */
    Py_ssize_t lead[MAX_DIMS];
    int nlead;
    int lq, lk, d, dv, rows;          /* rows: query rows per task */
    Py_ssize_t blocks;                /* tasks per head */
    int scale_op;                     /* 0 none, 1 multiply, 2 divide */
    float scale;
    int fill;                         /* NaN probabilities become nan_to */
    float nan_to;
    int packed;                       /* the products on the packed GEMM (AVX-512, q row-major) */
    int failed;                       /* a worker's scratch allocation failed */
} AttentionJob;

/* row = scale_op(row, scale) + mask_row (mask_row NULL: none; mask_col: its stride in floats). The AVX-512
 * path stores 16 lanes at a time, so that the softmax's 64-byte loads which follow read whole earlier
 * stores: after a compiler's 16-byte stores each of them waited on store forwarding (BERT's attention,
 * 4 heads of 128 x 128 on one thread: 212 -> 188 us, the unmasked time). */
static void scale_mask_row(float *row, int n, int scale_op, float scale, const float *mask_row, Py_ssize_t mask_col)
{
#ifdef HAVE_AVX2_PATH
    if (use_avx512() && (!mask_row || mask_col == 1)) {
        scale_mask_row_avx512(row, n, scale_op, scale, mask_row);
        return;
    }
#endif
    for (int c = 0; c < n; c++) {
        float x = scale_op == 1 ? row[c] * scale : scale_op == 2 ? row[c] / scale : row[c];
        row[c] = mask_row ? x + mask_row[(Py_ssize_t)c * mask_col] : x;
    }
}

/* Tasks [lo, hi): each one head's block of query rows, end to end: its scores into a scratch block,
 * scaled, masked and normalized there, then times v into its rows of out. On the packed GEMM, the
 * head's k and v are packed when a task starts a head: ViT-Tiny's 3 heads of 197 x 64, one thread,
 * 311 -> 270 us against sgemm (which packs both operands of each product on every call) and a pass
 * that scaled the scores; 2 heads of 1024 x 64: 5.2 -> 3.6 ms. The packing (pack_panels) copies v's
 * rows a panel at a time and transposes the exported graphs' k (each key's features adjacent) 16 x 16
 * at a time: ViT-Tiny's heads 0.94, BERT's (4 of 128 x 64) 0.92 of the time of packing value by value. */
static void attention_range(void *ctx, Py_ssize_t lo, Py_ssize_t hi)
{
    AttentionJob *j = ctx;
    const float one = 1.f, zero = 0.f;
    const char no = 'N';
    const size_t kp_size = j->packed ? (size_t)packed_size(j->d, j->lk) : 0;
    const size_t vp_size = j->packed ? (size_t)packed_size(j->lk, j->dv) : 0;
    float *s = malloc(((size_t)j->rows * (size_t)j->lk + kp_size + vp_size) * sizeof(float));
    if (!s) {
        __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    float *kp = s + (size_t)j->rows * (size_t)j->lk, *vp = kp + kp_size;
    Py_ssize_t packed_head = -1;
    const int scale_op = j->packed ? 0 : j->scale_op; /* packed: k took the scale */
    for (Py_ssize_t u = lo; u < hi; u++) {
        const Py_ssize_t p = u / j->blocks;
        const int r0 = (int)(u % j->blocks) * j->rows, m = j->lq - r0 < j->rows ? j->lq - r0 : j->rows;
        const float *q = (const float *)(j->q.base + lead_offset(j->lead, j->nlead, j->q.lead_strides, p)) + r0 * j->q.row;
        const float *k = (const float *)(j->k.base + lead_offset(j->lead, j->nlead, j->k.lead_strides, p));
        const float *v = (const float *)(j->v.base + lead_offset(j->lead, j->nlead, j->v.lead_strides, p));
        float *o = (float *)(j->out.base + lead_offset(j->lead, j->nlead, j->out.lead_strides, p)) + r0 * j->out.row;
        if (j->packed && p != packed_head) { /* the scale goes into k: no pass over the scores for it */
            pack_panels((const char *)k, j->d, j->lk, j->k.row * 4, j->k.col * 4, kp);
            if (j->scale_op)
                for (size_t i = 0; i < kp_size; i++) kp[i] = j->scale_op == 1 ? kp[i] * j->scale : kp[i] / j->scale;
            pack_panels((const char *)v, j->lk, j->dv, j->v.row * 4, j->v.col * 4, vp);
            packed_head = p;
        }
        /* row-major s [m, lk] = q [m, d] @ k [d, lk] is the column-major s^T = k^T q^T */
        if (j->packed)
            packed_product(q, j->q.row, kp, s, j->lk, m, j->d, j->lk);
        else
            j->sgemm(&j->k.trans, &j->q.trans, &j->lk, &m, &j->d, &one, k, &j->k.ld, q, &j->q.ld, &zero, s, &j->lk);
        const char *mask = j->mask ? j->mask + lead_offset(j->lead, j->nlead, j->mask_lead, p) : NULL;
        for (int r = 0; r < m && (scale_op || mask); r++) {
            const float *mrow = mask ? (const float *)mask + (Py_ssize_t)(r0 + r) * j->mask_row : NULL;
            scale_mask_row(s + (Py_ssize_t)r * j->lk, j->lk, scale_op, j->scale, mrow, j->mask_col);
        }
        softmax_rows(s, s, m, j->lk, j->lk, 0);
        for (Py_ssize_t i = 0; j->fill && i < (Py_ssize_t)m * j->lk; i++) s[i] = s[i] != s[i] ? j->nan_to : s[i];
        /* o [m, dv] = s [m, lk] @ v [lk, dv] */
        if (j->packed)
            packed_product(s, j->lk, vp, o, j->out.row, m, j->lk, j->dv);
        else
            j->sgemm(&j->v.trans, &no, &j->dv, &m, &j->lk, &one, v, &j->v.ld, s, &j->lk, &zero, o, &j->out.ld);
    }
    free(s);
}

PyDoc_STRVAR(attention_doc,
"attention(q, k, v, out, mask=None, scale_op=0, scale=1.0, nan_to=None, threads=1)\n\n"
"out = softmax(scale_op(q @ k, scale) + mask) @ v over the last axis, for float32 stacks q [..., lq, d],\n"
"k [..., d, lk], v [..., lk, dv], out [..., lq, dv] and mask [..., lq or 1, lk or 1], whose leading axes\n"
"broadcast to out's as numpy's do (out's are the broadcast ones: the caller allocates it). scale_op:\n"
"0 none, 1 multiply, 2 divide by scale. With nan_to,\n"
"NaN probabilities (rows a mask hid everywhere) become that value. q, k, v: row-major or column-major\n"
"in their last two axes; mask: any non-negative strides; out: row-major, apart from the inputs.\n"
"Each task is one head's block of query rows, its scores never larger than 256 KB; the tasks split\n"
"over up to threads threads of the pool. Releases the GIL.");

static PyObject *attention(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"q", "k", "v", "out", "mask", "scale_op", "scale", "nan_to", "threads", NULL};
    PyObject *qo, *ko, *vo, *oo, *mo = Py_None, *fo = Py_None;
    int scale_op = 0, threads = 1;
    float scale = 1.0f;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOO|OifOi", kwlist, &qo, &ko, &vo, &oo, &mo, &scale_op, &scale,
                                     &fo, &threads))
        return NULL;
    Py_buffer qv = {0}, kv = {0}, vv = {0}, ov = {0}, mv = {0};
    PyObject *result = NULL;
    AttentionJob j;
    memset(&j, 0, sizeof(j));
    if (scale_op < 0 || scale_op > 2) {
        PyErr_SetString(PyExc_ValueError, "attention: scale_op must be 0 (none), 1 (multiply) or 2 (divide)");
        return NULL;
    }
    if (fo != Py_None) {
        j.nan_to = (float)PyFloat_AsDouble(fo);
        if (j.nan_to == -1.0f && PyErr_Occurred()) return NULL;
        j.fill = 1;
    }
    if (get_float_view(qo, &qv, 0, "q") < 0 || get_float_view(ko, &kv, 0, "k") < 0 ||
        get_float_view(vo, &vv, 0, "v") < 0 || get_float_view(oo, &ov, 1, "out") < 0 ||
        (mo != Py_None && get_float_view(mo, &mv, 0, "mask") < 0))
        goto done;
    const int nd = ov.ndim;
    if (qv.ndim > nd || kv.ndim > nd || vv.ndim > nd || (mv.obj && mv.ndim > nd)) {
        PyErr_SetString(PyExc_ValueError, "attention: q, k, v and mask must have no more axes than out");
        goto done;
    }
    j.nlead = nd - 2;
    for (int d = 0; d < j.nlead; d++) j.lead[d] = ov.shape[d];
    const Py_ssize_t lq = qv.shape[qv.ndim - 2], d = qv.shape[qv.ndim - 1], lk = kv.shape[kv.ndim - 1];
    const Py_ssize_t dv = vv.shape[vv.ndim - 1];
    const Py_ssize_t mask_rows = mv.obj ? mv.shape[mv.ndim - 2] : 1, mask_cols = mv.obj ? mv.shape[mv.ndim - 1] : 1;
    if (kv.shape[kv.ndim - 2] != d || vv.shape[vv.ndim - 2] != lk || ov.shape[nd - 2] != lq || ov.shape[nd - 1] != dv ||
        (mask_rows != lq && mask_rows != 1) || (mask_cols != lk && mask_cols != 1)) {
        PyErr_Format(PyExc_ValueError, "attention: shapes must be q [lq, d], k [d, lk], v [lk, dv], out [lq, dv], "
                     "mask [lq or 1, lk or 1]: got lq=%zd d=%zd, k [%zd, %zd], v [%zd, %zd], out [%zd, %zd]", lq, d,
                     kv.shape[kv.ndim - 2], lk, vv.shape[vv.ndim - 2], dv, ov.shape[nd - 2], ov.shape[nd - 1]);
        goto done;
    }
    if (lq > INT32_MAX || d > INT32_MAX || lk > INT32_MAX || dv > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "attention: sizes overflow sgemm's 32-bit integers");
        goto done;
    }
    const Py_ssize_t heads = size_product(j.lead, j.nlead);
    if (heads < 0 || SIZE_PRODUCT(heads, lq, lk) < 0 || SIZE_PRODUCT(heads, lq, dv) < 0 ||
        SIZE_PRODUCT(heads, lq, lk, d + dv) < 0) {
        PyErr_SetString(PyExc_ValueError, "attention: sizes overflow");
        goto done;
    }
    if (heads == 0 || lq == 0 || dv == 0) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    if (lk == 0 || d == 0) {
        PyErr_SetString(PyExc_ValueError, "attention: k must have keys and q features (lk, d >= 1)");
        goto done;
    }
    if (read_operand(&qv, &j.q, 1, "q") < 0 || read_operand(&kv, &j.k, 1, "k") < 0 ||
        read_operand(&vv, &j.v, 1, "v") < 0 || read_operand(&ov, &j.out, 0, "out") < 0 ||
        broadcast_lead(&qv, j.lead, j.nlead, j.q.lead_strides, "q") < 0 ||
        broadcast_lead(&kv, j.lead, j.nlead, j.k.lead_strides, "k") < 0 ||
        broadcast_lead(&vv, j.lead, j.nlead, j.v.lead_strides, "v") < 0)
        goto done;
    if (mv.obj) {
        const int md = mv.ndim;
        for (int a = 0; a < md; a++)
            if (mv.strides[a] < 0 || mv.strides[a] % 4 || (mv.shape[a] > 1 && SIZE_PRODUCT(mv.shape[a] - 1, mv.strides[a]) < 0)) {
                PyErr_SetString(PyExc_ValueError, "mask must have non-negative strides that are whole floats");
                goto done;
            }
        if (broadcast_lead(&mv, j.lead, j.nlead, j.mask_lead, "mask") < 0) goto done;
        j.mask = mv.buf;
        j.mask_row = mask_rows > 1 ? mv.strides[md - 2] / 4 : 0, j.mask_col = mask_cols > 1 ? mv.strides[md - 1] / 4 : 0;
    }
    if (!distinct_elements(&ov)) {
        PyErr_SetString(PyExc_ValueError, "out must not hold two elements at one address");
        goto done;
    }
    if (overlaps(&qv, &ov) || overlaps(&kv, &ov) || overlaps(&vv, &ov) || (mv.obj && overlaps(&mv, &ov))) {
        PyErr_SetString(PyExc_ValueError, "out overlaps an input");
        goto done;
    }
    if (!(j.sgemm = import_sgemm())) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ImportError, "attention: scipy's sgemm was not found");
        goto done;
    }
    j.lq = (int)lq, j.lk = (int)lk, j.d = (int)d, j.dv = (int)dv;
    j.scale_op = scale_op, j.scale = scale;
    j.packed = use_avx512() && j.q.trans == 'N';
    /* Query rows per task: the scores block in L2, then enough tasks for every thread to take two. */
    Py_ssize_t rows = SCORES_BLOCK_FLOATS / lk;
    if (rows < ROWS_MIN) rows = ROWS_MIN;
    if (heads * lq * lk * (d + dv) < ATTENTION_SPLIT_MIN) threads = 1;
    if (threads > 1 && heads < 2 * (Py_ssize_t)threads) {
        const Py_ssize_t per_head = (2 * (Py_ssize_t)threads + heads - 1) / heads;
        const Py_ssize_t fit = (lq + per_head - 1) / per_head;
        if (fit < rows) rows = fit < ROWS_MIN ? ROWS_MIN : fit;
    }
    if (rows > lq) rows = lq;
    j.rows = (int)rows;
    j.blocks = (lq + rows - 1) / rows;
    Py_BEGIN_ALLOW_THREADS
    parallel_for(attention_range, &j, heads * j.blocks, 1, threads);
    Py_END_ALLOW_THREADS
    if (j.failed) {
        PyErr_NoMemory();
        goto done;
    }
    result = Py_NewRef(Py_None);
done:
    RELEASE_BUFFERS(&qv, &kv, &vv, &ov, &mv);
    return result;
}

static PyMethodDef module_methods[] = {
    {"set_simd", set_simd, METH_O, set_simd_doc},
    {"set_avx512", set_avx512, METH_O, set_avx512_doc},
    {"activate", (PyCFunction)(void (*)(void))activate, METH_VARARGS | METH_KEYWORDS, activate_doc},
    {"layer_norm", (PyCFunction)(void (*)(void))layer_norm, METH_VARARGS | METH_KEYWORDS, layer_norm_doc},
    {"softmax", (PyCFunction)(void (*)(void))softmax, METH_VARARGS | METH_KEYWORDS, softmax_doc},
    {"attention", (PyCFunction)(void (*)(void))attention, METH_VARARGS | METH_KEYWORDS, attention_doc},
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_pointwise", "dcm's compiled pointwise kernels (see _pointwise.c).", -1, module_methods,
};

PyMODINIT_FUNC PyInit__pointwise(void)
{
    import_pool();
    return PyModule_Create(&module);
}
