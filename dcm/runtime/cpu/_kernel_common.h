/* What every compiled kernel module of dcm.runtime.cpu needs: the run-time AVX2 dispatch with its
 * set_simd switch for tests, overflow-safe size products, and the array checks of the buffers a
 * caller passes. Included once per module (each module gets its own copies of the static state).
 */
#ifndef DCM_KERNEL_COMMON_H
#define DCM_KERNEL_COMMON_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(DCM_NO_SIMD) /* -DDCM_NO_SIMD: portable C only */
#include <immintrin.h>
#define HAVE_AVX2_PATH 1 /* AVX2 + FMA kernels, chosen at run time when the CPU has them */
#endif

/* name##_avx2(...) where the CPU has AVX2 and FMA, else name##_generic(...). */
#ifdef HAVE_AVX2_PATH
#define DISPATCH(name, ...) (use_avx2() ? name##_avx2(__VA_ARGS__) : name##_generic(__VA_ARGS__))
#else
#define DISPATCH(name, ...) name##_generic(__VA_ARGS__)
#endif

/* The product of count sizes (each >= 0), or -1 where it would pass PY_SSIZE_T_MAX / 16, so that a
 * length check can never pass on a wrapped product. The margin of 16 keeps the result times 4
 * (bytes per float) or 16 in range as well. */
static inline Py_ssize_t size_product(const Py_ssize_t *sizes, int count)
{
    Py_ssize_t total = 1;
    for (int i = 0; i < count; i++) {
        if (sizes[i] < 0 || (sizes[i] > 0 && total > PY_SSIZE_T_MAX / 16 / sizes[i])) return -1;
        total *= sizes[i];
    }
    return total;
}

#define SIZE_PRODUCT(...) \
    size_product((const Py_ssize_t[]){__VA_ARGS__}, (int)(sizeof((Py_ssize_t[]){__VA_ARGS__}) / sizeof(Py_ssize_t)))

static int simd_allowed = 1; /* set_simd(False): the portable paths, so that tests reach them */

static inline int use_avx2(void)
{
#ifdef HAVE_AVX2_PATH
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    return cached && simd_allowed;
#else
    return 0;
#endif
}

PyDoc_STRVAR(set_simd_doc,
"set_simd(allowed) -> bool\n\n"
"Whether this module's kernels may take their AVX2 paths (default True; they still need a CPU with\n"
"AVX2 and FMA). False runs the portable C paths, as on other CPUs: for tests. Returns the previous\n"
"value.");

/* *flag = the truth of arg; returns the previous value: the test switches (set_simd, set_avx512, ...). */
static inline PyObject *switch_flag(int *flag, PyObject *arg)
{
    int value = PyObject_IsTrue(arg);
    if (value < 0) return NULL;
    int previous = *flag;
    *flag = value;
    return PyBool_FromLong(previous);
}

static inline PyObject *set_simd(PyObject *self, PyObject *arg) { return switch_flag(&simd_allowed, arg); }

static int avx512_allowed = 1; /* set_avx512(False): the AVX2 paths, so that tests reach them */

/* Whether the CPU has AVX-512 F and DQ and this module's AVX-512 paths are allowed (set_simd and
 * set_avx512): for kernels with an AVX-512 path of their own. */
static inline int use_avx512(void)
{
#ifdef HAVE_AVX2_PATH
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
    }
    return cached && avx512_allowed && use_avx2();
#else
    return 0;
#endif
}

PyDoc_STRVAR(set_avx512_doc,
"set_avx512(allowed) -> bool\n\n"
"Whether this module's kernels may take their AVX-512 paths where the CPU has them (default True;\n"
"set_simd must allow SIMD too). False runs their AVX2 paths: for tests. Returns the previous value.");

static inline PyObject *set_avx512(PyObject *self, PyObject *arg) { return switch_flag(&avx512_allowed, arg); }

/* One C-contiguous array of the given kind ('i' signed, 'u' unsigned, 'f' float) and item size,
 * 1-D unless any_rank. */
static inline int get_array_of_rank(PyObject *obj, Py_buffer *view, char kind, Py_ssize_t itemsize, int writable,
                                    int any_rank, const char *what)
{
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0) return -1;
    const char *fmt = view->format ? view->format : "B";
    if (*fmt == '<' || *fmt == '=' || *fmt == '@') fmt++;
    char c = fmt[0];
    int ok = fmt[1] == '\0' && view->itemsize == itemsize && (any_rank || view->ndim <= 1);
    if (kind == 'f') ok = ok && c == 'f';
    else if (kind == 'i') ok = ok && (c == 'i' || c == 'l' || c == 'q');
    else ok = ok && (c == 'H' || c == 'I' || c == 'B');
    if (!ok) {
        PyErr_Format(PyExc_TypeError, "%s: expected a contiguous %sarray of %s%zd, got format %s, %d dims", what,
                     any_rank ? "" : "1-D ", kind == 'f' ? "float" : kind == 'i' ? "int" : "uint", 8 * itemsize, fmt,
                     view->ndim);
        PyBuffer_Release(view);
        view->buf = NULL;
        return -1;
    }
    return 0;
}

/* Releases the buffers of a call that were got (obj set), for the one exit of its error paths. */
static inline void release_buffers(Py_buffer *const *views, size_t count)
{
    for (size_t i = 0; i < count; i++)
        if (views[i]->obj) PyBuffer_Release(views[i]);
}

#define RELEASE_BUFFERS(...) \
    release_buffers((Py_buffer *const[]){__VA_ARGS__}, sizeof((Py_buffer *[]){__VA_ARGS__}) / sizeof(Py_buffer *))

/* The native thread pool (_pool.c): parallel_for(fn, ctx, count, grain, threads) runs fn(ctx, lo, hi)
 * over [0, count) in ranges of whole multiples of grain (the last one may be shorter), about
 * POOL_PARTS_PER_THREAD of them per thread, on up to `threads` threads, the caller included. Each
 * thread takes the ranges of its own contiguous segment in order, then, as it comes free, the last
 * ranges of the others'; ranges no pool thread has taken by the time the caller runs out are run by the
 * caller, so a thread the scheduler keeps off the core delays the call by one range at most. Call it
 * without the GIL (inside Py_BEGIN_ALLOW_THREADS); fn must not touch Python.
 * Runs serially where the pool is missing (a build without pthreads), threads < 2, there is one
 * range only, or another call holds the pool (a nested call, another Python thread's session).
 * Each module calls import_pool() once in its PyInit. */
typedef void (*dcm_range_fn)(void *ctx, Py_ssize_t lo, Py_ssize_t hi);
typedef struct {
    unsigned version;
    void (*run)(dcm_range_fn fn, void *ctx, Py_ssize_t count, Py_ssize_t grain, int threads);
} dcm_pool_api;
#define DCM_POOL_API_VERSION 1u
#define DCM_POOL_CAPSULE "dcm.runtime.cpu._pool._api"

static const dcm_pool_api *pool_api; /* NULL: serial */

/* Finds the pool; without it every parallel_for runs serially (no error: the kernels still work). */
static inline void import_pool(void)
{
    /* The capsule is read from the module object: PyCapsule_Import walks attributes from the top-level
     * package, and dcm.runtime.cpu is not yet an attribute of dcm.runtime while its __init__ imports
     * the kernel modules (the pool was then never found). */
    PyObject *module = PyImport_ImportModule("dcm.runtime.cpu._pool");
    PyObject *capsule = module ? PyObject_GetAttrString(module, "_api") : NULL;
    const dcm_pool_api *api = capsule ? (const dcm_pool_api *)PyCapsule_GetPointer(capsule, DCM_POOL_CAPSULE) : NULL;
    Py_XDECREF(capsule); /* the module keeps the capsule, and the pool is static in _pool.so, never unloaded */
    Py_XDECREF(module);
    if (!api || api->version != DCM_POOL_API_VERSION) {
        PyErr_Clear();
        api = NULL;
    }
    pool_api = api;
}

static inline void parallel_for(dcm_range_fn fn, void *ctx, Py_ssize_t count, Py_ssize_t grain, int threads)
{
    if (count <= 0) return;
    if (grain < 1) grain = 1;
    if (pool_api && threads > 1 && count > grain) pool_api->run(fn, ctx, count, grain, threads);
    else fn(ctx, 0, count);
}

/* The activations the convolution kernels and the packed GEMM apply to their own output (_pointconv.c's
 * 1x1 kernel, _native.c's depthwise2d, _gemm.c): a clamp (Relu, Clip), Sigmoid, SiLU, HardSwish, GELU
 * (erf) or GELU (tanh), with the formulas of _pointwise.c's activate; NaN kept by the clamp.
 * conv_act16 is its AVX-512 form: exp is Cephes' expf polynomial as in _pointwise.c's exp_neg8, erf
 * its rational fit (erf16), on 16 lanes. */
typedef struct {
    int kind;
    float lo, hi, alpha; /* CONV_ACT_CLAMP: the bounds; CONV_ACT_SILU: x sigmoid(alpha x) */
} ConvAct;
enum { CONV_ACT_NONE, CONV_ACT_CLAMP, CONV_ACT_SIGMOID, CONV_ACT_SILU, CONV_ACT_HARDSWISH, CONV_ACT_GELU,
       CONV_ACT_GELU_TANH, CONV_ACT_KINDS };
#define GELU_TANH_K 1.59576912160573071f /* 2 sqrt(2 / pi): 1 + tanh(u) = 2 sigmoid(2u) */
#define GELU_TANH_C 0.044715f
#define SQRT_HALF 0.70710678118654752f
/* erf(x) = x P(x^2) / Q(x^2) on [-4, 4]: Eigen's generic_fast_erf_float (as special.py). */
static const float ERF_P[7] = {-2.72614225801306e-10f, 2.77068142495902e-08f, -2.10102402082508e-06f,
                               -5.69250639462346e-05f, -7.34990630326855e-04f, -2.95459980854025e-03f,
                               -1.60960333262415e-02f};
static const float ERF_Q[5] = {-1.45660718464996e-05f, -2.13374055278905e-04f, -1.68282697438203e-03f,
                               -7.37332916720468e-03f, -1.42647390514189e-02f};
/* exp(x) = 2^n exp(r), r = x - n ln 2 in [-ln2/2, ln2/2]: Cephes' expf polynomial. */
#define EXP_LO -87.33654475f /* exp below this is under FLT_MIN: 0 */
#define LOG2E 1.44269504088896341f
#define ROUND_MAGIC 12582912.0f /* 1.5 * 2^23: adding it rounds a float under 2^22 to an integer */
#define LN2_HI 0.693359375f
#define LN2_LO -2.12194440e-4f
static const float EXP_P[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f,
                               1.6666665459e-1f, 5.0000001201e-1f};

/* None, or (name, a, b) as dcm.runtime.fusion.Epilogue.act: relu, clip (a, b: the bounds), sigmoid,
 * silu (a: alpha), hardswish, gelu, gelu_tanh. -1 and a ValueError naming the kernel for another name. */
static inline int parse_conv_act(PyObject *obj, ConvAct *act, const char *kernel)
{
    static const char *const names[] = {"none", "clip", "sigmoid", "silu", "hardswish", "gelu", "gelu_tanh", "relu"};
    const char *name;
    float a, b;
    *act = (ConvAct){CONV_ACT_NONE, 0.f, 0.f, 0.f};
    if (obj == Py_None) return 0;
    if (!PyArg_ParseTuple(obj, "sff", &name, &a, &b)) return -1;
    for (act->kind = 0; act->kind <= CONV_ACT_KINDS && strcmp(name, names[act->kind]); act->kind++) {}
    if (act->kind > CONV_ACT_KINDS) {
        PyErr_Format(PyExc_ValueError, "%s: unknown activation '%s'", kernel, name);
        return -1;
    }
    if (act->kind == CONV_ACT_KINDS) act->kind = CONV_ACT_CLAMP, a = 0.f, b = INFINITY; /* relu: a clamp at 0 */
    act->lo = a, act->hi = b, act->alpha = a;
    return 0;
}

static inline float conv_act1(const ConvAct *a, float v)
{
    switch (a->kind) {
    case CONV_ACT_CLAMP: return v < a->lo ? a->lo : v > a->hi ? a->hi : v;
    case CONV_ACT_SIGMOID: return 1.f / (1.f + expf(-v));
    case CONV_ACT_SILU: return v / (1.f + expf(-a->alpha * v));
    case CONV_ACT_HARDSWISH: {
        float t = v * (1.f / 6.f) + .5f;
        return v * (t < 0.f ? 0.f : t > 1.f ? 1.f : t);
    }
    case CONV_ACT_GELU: return 0.5f * v * (1.f + erff(v * SQRT_HALF));
    case CONV_ACT_GELU_TANH: return v / (1.f + expf(-GELU_TANH_K * v * (1.f + GELU_TANH_C * v * v)));
    default: return v;
    }
}

#ifdef HAVE_AVX2_PATH
/* The lanes of a 16-value vector that hold the first `left` values (all where left >= 16). */
static inline __mmask16 part16(Py_ssize_t left)
{
    return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
}

/* load16 and store16: a masked load (zeros in the lanes off m, which are not read) and a masked store,
 * as plain ones where m holds every lane. A masked access whose line is not in the caches is slow on
 * AMD's Zen 5: streaming 64 MiB on one core, loads 37 -> 15-21 GB/s and stores 42 -> 21 GB/s masked
 * with every lane set (equal in L1-L3). The kernels that stream activations through memory use these
 * wherever their masks are mostly whole (MaxPool 3x3/2 over 8 x 64 x 112 x 112: 7.0 -> 1.3 ms; dense
 * ResNet-18 at batch 8, one thread, timed in turns against the build before: 0.93x). Not in the
 * Winograd transforms, whose rows of tiles are in cache: the branch took their layers 5-10% slower. */
__attribute__((target("avx512f"), always_inline)) static inline __m512 load16(__mmask16 m, const float *p)
{
    return m == (__mmask16)0xFFFF ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(m, p);
}

__attribute__((target("avx512f"), always_inline)) static inline void store16(float *p, __mmask16 m, __m512 v)
{
    if (m == (__mmask16)0xFFFF) _mm512_storeu_ps(p, v);
    else _mm512_mask_storeu_ps(p, m, v);
}

/* The lanes of an 8-value vector below n (none where n <= 0, all where n >= 8): the mask of a last,
 * partial vector for maskload/maskstore. */
__attribute__((target("avx2,fma")))
static inline __m256i part8(Py_ssize_t n)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* r[0..7] = the 8x8 block's columns (in place). */
__attribute__((target("avx2,fma")))
static inline void transpose8(__m256 *r)
{
    __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
    r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
    r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
    r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
    r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
    r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
    r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
    r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

/* The AVX2 activations that _pointwise.c's act8 and conv_act8 below evaluate on 8 lanes. */
__attribute__((target("avx2,fma"))) static inline __m256 clamp8(__m256 x, __m256 lo, __m256 hi)
{
    return _mm256_min_ps(hi, _mm256_max_ps(lo, x)); /* NaN in x: each takes its second operand, x */
}

__attribute__((target("avx2,fma"))) static inline __m256 exp_neg8(__m256 x)
{
    __m256 under = _mm256_cmp_ps(x, _mm256_set1_ps(EXP_LO), _CMP_LT_OQ);
    /* Lanes under EXP_LO (a mask's -inf, softmax's far tails) are zeroed below; they compute exp(0)
     * meanwhile, since clamping them to EXP_LO made 2^-126 times a mantissa under 1: a subnormal, which
     * costs a microcode assist per lane (a causal softmax ran 6x slower). */
    x = _mm256_andnot_ps(under, x);
    /* n = x log2(e) rounded to the nearest integer, in the low mantissa bits of 1.5 * 2^23 + n: one
     * FMA for round and convert; those bits plus 127, shifted, are 2^n. */
    __m256 big = _mm256_fmadd_ps(x, _mm256_set1_ps(LOG2E), _mm256_set1_ps(ROUND_MAGIC));
    __m256 n = _mm256_sub_ps(big, _mm256_set1_ps(ROUND_MAGIC));
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
    __m256 y = _mm256_set1_ps(EXP_P[0]);
    for (int i = 1; i < 6; i++) y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(EXP_P[i]));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_castps_si256(big), _mm256_set1_epi32(127)), 23);
    y = _mm256_mul_ps(y, _mm256_castsi256_ps(e)); /* NaN: y is NaN already, whatever the scale's bits */
    return _mm256_andnot_ps(under, y);
}

__attribute__((target("avx2,fma"))) static inline __m256 sigmoid8(__m256 x)
{
    __m256 minus_abs = _mm256_or_ps(x, _mm256_set1_ps(-0.0f)), one = _mm256_set1_ps(1.0f);
    __m256 e = exp_neg8(minus_abs), s = _mm256_div_ps(one, _mm256_add_ps(one, e));
    return _mm256_mul_ps(_mm256_blendv_ps(one, e, x), s); /* x's sign bit picks e / (1 + e) */
}

__attribute__((target("avx2,fma"))) static inline __m256 erf8(__m256 x)
{
    x = clamp8(x, _mm256_set1_ps(-4.0f), _mm256_set1_ps(4.0f));
    __m256 x2 = _mm256_mul_ps(x, x), p = _mm256_set1_ps(ERF_P[0]), q = _mm256_set1_ps(ERF_Q[0]);
    for (int i = 1; i < 7; i++) p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(ERF_P[i]));
    for (int i = 1; i < 5; i++) q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(ERF_Q[i]));
    return clamp8(_mm256_div_ps(_mm256_mul_ps(x, p), q), _mm256_set1_ps(-1.0f), _mm256_set1_ps(1.0f));
}

/* conv_act1 on 8 lanes: the epilogue of the AVX2 kernels that fuse a ConvAct (gemm_packed's tiles). */
__attribute__((target("avx2,fma"))) static inline __m256 conv_act8(const ConvAct *a, __m256 v)
{
    const __m256 one = _mm256_set1_ps(1.0f);
    switch (a->kind) {
    case CONV_ACT_CLAMP: return clamp8(v, _mm256_set1_ps(a->lo), _mm256_set1_ps(a->hi));
    case CONV_ACT_SIGMOID: return sigmoid8(v);
    case CONV_ACT_SILU: return _mm256_mul_ps(v, sigmoid8(_mm256_mul_ps(_mm256_set1_ps(a->alpha), v)));
    case CONV_ACT_HARDSWISH: {
        const __m256 t = _mm256_fmadd_ps(v, _mm256_set1_ps(1.0f / 6.0f), _mm256_set1_ps(0.5f));
        return _mm256_mul_ps(v, clamp8(t, _mm256_setzero_ps(), one));
    }
    case CONV_ACT_GELU: {
        const __m256 half_v = _mm256_mul_ps(_mm256_set1_ps(0.5f), v);
        return _mm256_fmadd_ps(half_v, erf8(_mm256_mul_ps(v, _mm256_set1_ps(SQRT_HALF))), half_v);
    }
    case CONV_ACT_GELU_TANH: {
        const __m256 u = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(GELU_TANH_C), v), v, one);
        return _mm256_mul_ps(v, sigmoid8(_mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(GELU_TANH_K), v), u)));
    }
    default: return v;
    }
}

/* conv_act_block8's loop for one activation kind (a constant where inlined: conv_act8's switch folds, and
 * the parameters are a local copy that a store to y cannot change, so nothing is read again per vector). */
__attribute__((target("avx2,fma"), always_inline)) static inline void
act_rows8(const ConvAct *a, const int kind, float *y, Py_ssize_t ld, Py_ssize_t rows, Py_ssize_t cols)
{
    ConvAct c = *a;
    c.kind = kind;
    const __m256i tail = part8(cols % 8);
    for (Py_ssize_t r = 0; r < rows; r++, y += ld) {
        Py_ssize_t j = 0;
        for (; j + 8 <= cols; j += 8) _mm256_storeu_ps(y + j, conv_act8(&c, _mm256_loadu_ps(y + j)));
        if (j < cols) _mm256_maskstore_ps(y + j, tail, conv_act8(&c, _mm256_maskload_ps(y + j, tail)));
    }
}

/* y[r * ld + j] = conv_act8(y[r * ld + j]) for r < rows, j < cols: an activation over a block of values an
 * AVX2 kernel stored, one call per block (the kernels keep their accumulators out of any call, and a call
 * per vector cost more than the activation: EfficientNet-B0's 16 -> 96 1x1 layer with SiLU, 4.0 ms
 * against 3.0 on OpenBLAS plus a separate pass). One loop per kind: with the kind read from a (a store to y
 * might change it, as far as GCC knew) the switch ran per vector, and SiLU over 12544 x 96 stored sums
 * in 6 x 16 blocks cost 1.17 ms. */
__attribute__((target("avx2,fma"), noinline, unused)) static void conv_act_block8(const ConvAct *a, float *y, Py_ssize_t ld,
                                                                Py_ssize_t rows, Py_ssize_t cols)
{
    switch (a->kind) {
    case CONV_ACT_CLAMP: act_rows8(a, CONV_ACT_CLAMP, y, ld, rows, cols); break;
    case CONV_ACT_SIGMOID: act_rows8(a, CONV_ACT_SIGMOID, y, ld, rows, cols); break;
    case CONV_ACT_SILU: act_rows8(a, CONV_ACT_SILU, y, ld, rows, cols); break;
    case CONV_ACT_HARDSWISH: act_rows8(a, CONV_ACT_HARDSWISH, y, ld, rows, cols); break;
    case CONV_ACT_GELU: act_rows8(a, CONV_ACT_GELU, y, ld, rows, cols); break;
    case CONV_ACT_GELU_TANH: act_rows8(a, CONV_ACT_GELU_TANH, y, ld, rows, cols); break;
    default: break; /* none */
    }
}

/* r[i] = column i of the 16 x 16 block in r (rows in, columns out): four rounds of 16 shuffles. */
__attribute__((target("avx512f,avx2,fma"))) static inline void transpose16(__m512 *r)
{
    __m512 t[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) {
        const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]);
        const __m512d c = _mm512_castps_pd(t[4 * i + 2]), d = _mm512_castps_pd(t[4 * i + 3]);
        r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
        r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
    for (int i = 0; i < 2; i++)
        for (int k = 0; k < 4; k++) {
            t[8 * i + k] = _mm512_shuffle_f32x4(r[8 * i + k], r[8 * i + 4 + k], 0x88);
            t[8 * i + 4 + k] = _mm512_shuffle_f32x4(r[8 * i + k], r[8 * i + 4 + k], 0xdd);
        }
    for (int k = 0; k < 8; k++) {
        r[k] = _mm512_shuffle_f32x4(t[k], t[8 + k], 0x88);
        r[8 + k] = _mm512_shuffle_f32x4(t[k], t[8 + k], 0xdd);
    }
}

/* exp(x) with x clamped to [-87.3, 88.8] (NaN kept): the smallest normal float below, +inf above. The
 * exponent goes in with vscalefps, which needs no overflow masks (a third fewer instructions than
 * building 2^n from its bits, and SiLU epilogues are bound by their instruction count). */
__attribute__((target("avx512f,avx2,fma"))) static inline __m512 exp16(__m512 x)
{
    x = _mm512_max_ps(_mm512_set1_ps(EXP_LO), _mm512_min_ps(_mm512_set1_ps(88.8f), x)); /* NaN: x */
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(LOG2E)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
    __m512 y = _mm512_set1_ps(EXP_P[0]);
    for (int i = 1; i < 6; i++) y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(EXP_P[i]));
    y = _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(y, n);
}

/* exp(x) for x <= 0 (NaN kept, 0 below -87.3). */
__attribute__((target("avx512f,avx2,fma"))) static inline __m512 exp_neg16(__m512 x)
{
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(EXP_LO), _CMP_NLT_UQ), exp16(x));
}

/* v / (1 + exp(-x)): sigmoid(x) for v = 1, SiLU for v = x. exp(-x) is +inf for x < -88.8: the quotient
 * is 0 there (the exact value is under 1e-38 times v). */
__attribute__((target("avx512f,avx2,fma"))) static inline __m512 over_one_plus_exp_neg16(__m512 v, __m512 x)
{
    return _mm512_div_ps(v, _mm512_add_ps(_mm512_set1_ps(1.0f), exp16(_mm512_sub_ps(_mm512_setzero_ps(), x))));
}

/* erf(x) on [-4, 4] by ERF_P / ERF_Q (the fit _pointwise.c's erf8 evaluates on 8 lanes), clamped to
 * [-1, 1]; NaN kept. */
__attribute__((target("avx512f,avx2,fma"))) static inline __m512 erf16(__m512 x)
{
    x = _mm512_min_ps(_mm512_set1_ps(4.0f), _mm512_max_ps(_mm512_set1_ps(-4.0f), x)); /* NaN: x */
    __m512 x2 = _mm512_mul_ps(x, x), p = _mm512_set1_ps(ERF_P[0]), q = _mm512_set1_ps(ERF_Q[0]);
    for (int i = 1; i < 7; i++) p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(ERF_P[i]));
    for (int i = 1; i < 5; i++) q = _mm512_fmadd_ps(q, x2, _mm512_set1_ps(ERF_Q[i]));
    __m512 e = _mm512_div_ps(_mm512_mul_ps(x, p), q);
    return _mm512_min_ps(_mm512_set1_ps(1.0f), _mm512_max_ps(_mm512_set1_ps(-1.0f), e)); /* the fit overshoots by an ulp */
}

__attribute__((target("avx512f,avx2,fma"))) static inline __m512 conv_act16(const ConvAct *a, __m512 v)
{
    switch (a->kind) {
    case CONV_ACT_CLAMP: /* NaN in v: max and min each return their second operand, v */
        return _mm512_min_ps(_mm512_set1_ps(a->hi), _mm512_max_ps(_mm512_set1_ps(a->lo), v));
    case CONV_ACT_SIGMOID: return over_one_plus_exp_neg16(_mm512_set1_ps(1.0f), v);
    case CONV_ACT_SILU: return over_one_plus_exp_neg16(v, _mm512_mul_ps(_mm512_set1_ps(a->alpha), v));
    case CONV_ACT_HARDSWISH: {
        __m512 t = _mm512_fmadd_ps(v, _mm512_set1_ps(1.0f / 6.0f), _mm512_set1_ps(0.5f));
        return _mm512_mul_ps(v, _mm512_min_ps(_mm512_set1_ps(1.0f), _mm512_max_ps(_mm512_setzero_ps(), t)));
    }
    case CONV_ACT_GELU: {
        const __m512 half_v = _mm512_mul_ps(_mm512_set1_ps(0.5f), v);
        return _mm512_fmadd_ps(half_v, erf16(_mm512_mul_ps(v, _mm512_set1_ps(SQRT_HALF))), half_v);
    }
    case CONV_ACT_GELU_TANH: { /* v sigmoid(K v (1 + C v^2)) */
        const __m512 u = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_set1_ps(GELU_TANH_C), v), v, _mm512_set1_ps(1.0f));
        return over_one_plus_exp_neg16(v, _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(GELU_TANH_K), v), u));
    }
    default: return v;
    }
}
#endif

/* y[0, n) = act(y) in place: the AVX-512 form where the caller found the CPU has it. */
static inline void conv_act_span_generic(const ConvAct *a, float *y, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) y[i] = conv_act1(a, y[i]);
}

#ifdef HAVE_AVX2_PATH
__attribute__((target("avx512f,avx2,fma"))) static inline void conv_act_span_avx512(const ConvAct *a, float *y,
                                                                                     Py_ssize_t n)
{
    Py_ssize_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, conv_act16(a, _mm512_loadu_ps(y + i)));
    if (i < n) {
        const __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(y + i, m, conv_act16(a, _mm512_maskz_loadu_ps(m, y + i)));
    }
}
#endif

/* A Fortran sgemm (column-major, int32 sizes) for kernels whose products run on the pool's threads
 * without the GIL: numpy's bundled OpenBLAS through a 64-bit-integer wrapper where sgemm_source.py found
 * it (0.75-0.95 of the time of scipy's on the zoo's products), else the entry in
 * scipy.linalg.cython_blas's C API (scipy's OpenBLAS). A session holds both libraries at one thread.
 * Found on the first call that needs it (with the GIL held); NULL and an exception set where neither is. */
typedef void (*dcm_sgemm_fn)(const char *transa, const char *transb, const int *m, const int *n, const int *k,
                             const float *alpha, const float *a, const int *lda, const float *b, const int *ldb,
                             const float *beta, float *c, const int *ldc);
typedef void (*dcm_sgemm64_fn)(const char *transa, const char *transb, const int64_t *m, const int64_t *n,
                               const int64_t *k, const float *alpha, const float *a, const int64_t *lda,
                               const float *b, const int64_t *ldb, const float *beta, float *c, const int64_t *ldc);
static dcm_sgemm64_fn sgemm64;

static inline void sgemm_via_ilp64(const char *transa, const char *transb, const int *m, const int *n, const int *k,
                                   const float *alpha, const float *a, const int *lda, const float *b, const int *ldb,
                                   const float *beta, float *c, const int *ldc)
{
    const int64_t m8 = *m, n8 = *n, k8 = *k, lda8 = *lda, ldb8 = *ldb, ldc8 = *ldc;
    sgemm64(transa, transb, &m8, &n8, &k8, alpha, a, &lda8, b, &ldb8, beta, c, &ldc8);
}

static inline dcm_sgemm_fn import_sgemm(void)
{
    static dcm_sgemm_fn found;
    if (found) return found;
    PyObject *source = PyImport_ImportModule("dcm.runtime.cpu.sgemm_source");
    PyObject *address = source ? PyObject_GetAttrString(source, "ILP64_SGEMM") : NULL;
    const unsigned long long at = address ? PyLong_AsUnsignedLongLong(address) : 0;
    Py_XDECREF(address);
    Py_XDECREF(source);
    if (PyErr_Occurred()) PyErr_Clear(); /* scipy's, below */
    if (at) {
        sgemm64 = (dcm_sgemm64_fn)(uintptr_t)at;
        return found = sgemm_via_ilp64;
    }
    PyObject *module = PyImport_ImportModule("scipy.linalg.cython_blas");
    PyObject *api = module ? PyObject_GetAttrString(module, "__pyx_capi__") : NULL;
    PyObject *capsule = api ? PyMapping_GetItemString(api, "sgemm") : NULL;
    if (capsule) found = (dcm_sgemm_fn)PyCapsule_GetPointer(capsule, PyCapsule_GetName(capsule));
    Py_XDECREF(capsule);
    Py_XDECREF(api);
    Py_XDECREF(module);
    return found;
}

#endif
