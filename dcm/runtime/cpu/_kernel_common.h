/* What every compiled kernel module of dcm.runtime.cpu needs: the run-time AVX2 dispatch with its
 * set_simd switch for tests, overflow-safe size products, and the array checks of the buffers a
 * caller passes. Included once per module (each module gets its own copies of the static state).
 */
#ifndef DCM_KERNEL_COMMON_H
#define DCM_KERNEL_COMMON_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

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

static inline PyObject *set_simd(PyObject *self, PyObject *arg)
{
    int allowed = PyObject_IsTrue(arg);
    if (allowed < 0) return NULL;
    int previous = simd_allowed;
    simd_allowed = allowed;
    return PyBool_FromLong(previous);
}

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
 * thread takes the next range as it comes free; ranges no pool thread has taken by the time the caller
 * runs out are run by the caller, so a thread the scheduler keeps off the core delays the call by one
 * range at most. Call it without the GIL (inside Py_BEGIN_ALLOW_THREADS); fn must not touch Python.
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

/* scipy's Fortran sgemm (the entry in scipy.linalg.cython_blas's C API: column-major, int32 sizes,
 * scipy's OpenBLAS, which a session holds at one thread), for kernels whose products run on the pool's
 * threads without the GIL. Found on the first call that needs it (with the GIL held); NULL and an
 * exception set where scipy is missing. */
typedef void (*dcm_sgemm_fn)(const char *transa, const char *transb, const int *m, const int *n, const int *k,
                             const float *alpha, const float *a, const int *lda, const float *b, const int *ldb,
                             const float *beta, float *c, const int *ldc);

static inline dcm_sgemm_fn import_sgemm(void)
{
    static dcm_sgemm_fn found;
    if (found) return found;
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
