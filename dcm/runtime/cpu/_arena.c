/* dcm.runtime.cpu._arena: numpy's data allocator while a session runs (memory.py's buffer_arena).
 *
 * Why: a layer's output is written into whatever memory the allocator hands out, and the next layer
 * reads it back. glibc takes a large request from the best-fitting free chunk anywhere in its heap,
 * so a run's activations spread over tens of MiB (MobileNetV2 at batch 1: 66 MiB between its lowest
 * and highest buffer) and a fresh output is often memory last touched a whole run earlier, long gone
 * from the caches: its stores wait on lines read back from DRAM, and the layer after reads a buffer
 * that no longer fits the caches either. onnxruntime plans its buffers into one reused block. Here
 * each large request (LARGE_BYTES or more) is rounded up to a size class (8 per power of two: at most
 * 12.5% over) and served from that class's free list, the most recently freed buffer first, which is
 * still in cache. Pruned MobileNetV2 at batch 1 on 2 threads: 1.18 -> 0.91x onnxruntime's time,
 * RegNetX-400MF 1.37 -> 1.18, EfficientNet-B0 1.29 -> 1.17 (2-core Zen 5; docs/runtime.md).
 * A request takes the most recently freed block among its class and the REACH - 1 classes above it
 * (up to 8x its size; the tail it does not touch costs no cache), so that a run's layers of different
 * sizes take turns in fewer blocks: pruned MobileNetV2 at batch 1 kept 18.7 -> 13.1 MB of blocks and
 * ran in 0.95x the time, EfficientNet-B0 20.6 -> 10.9 MB and 0.94x, ResNet-18 0.96x, RegNetX 0.98x
 * (one thread, sessions of both in one process in turn); batch 8 and the transformers within 3%.
 *
 * Every block starts on a 64-byte line (kernels' vector loads then never span two lines) and carries a
 * Head just before its data: the base pointer to free, the free-list link, its capacity and class.
 * Requests below LARGE_BYTES are plain malloc blocks with the same Head (glibc's own lists are already
 * last-freed-first for those). Freed large blocks are kept up to CACHE_LIMIT bytes in all; past that
 * they go back to malloc. The lists are shared by every thread, under one lock.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_22_API_VERSION
#define NPY_TARGET_VERSION NPY_1_22_API_VERSION
#include <numpy/arrayobject.h>
#include <pythread.h>
#include <stdint.h>
#include <string.h>

#define LINE 64                                  /* bytes: a cache line */
#define LARGE_BYTES ((size_t)64 << 10)           /* the smallest request served from the size classes */
#define STEPS 8                                  /* size classes per power of two */
#define OCTAVES 40                               /* classes up to LARGE_BYTES << 40 (64 PiB) */
#define CLASSES (STEPS * OCTAVES)
#define CACHE_LIMIT ((unsigned long long)1 << 30) /* bytes of freed large blocks kept, in all */
#define REACH (STEPS * 3)                        /* classes a request may take a block from: up to 8x its size */

typedef struct Head {
    void *base;        /* what malloc returned */
    struct Head *next; /* the next block of its free list */
    size_t capacity;   /* bytes the data may hold */
    Py_ssize_t cls;    /* size class, or -1: a small block */
    unsigned long long freed; /* when it was last freed (a count of frees) */
} Head;

#define HEAD_SPACE (((sizeof(Head) + 15) / 16) * 16) /* a small block's data stays 16-byte aligned */

static PyThread_type_lock lock;
static Head *free_list[CLASSES];
static unsigned long long cached_bytes, cached_blocks, reused, allocated, frees;

static inline Head *head_of(void *data) { return (Head *)((char *)data - sizeof(Head)); }

/* The class of a large request of n bytes and that class's capacity (-1: too large for any class). */
static Py_ssize_t size_class(size_t n, size_t *capacity)
{
    size_t base = LARGE_BYTES;
    Py_ssize_t octave = 0;
    while (octave < OCTAVES && n > base * 2 - base / STEPS) base *= 2, octave++;
    if (octave == OCTAVES) return -1;
    const size_t step = base / STEPS, k = n <= base ? 0 : (n - base + step - 1) / step; /* k < STEPS */
    *capacity = base + k * step;
    return octave * STEPS + (Py_ssize_t)k;
}

/* A new block of capacity bytes: line-aligned data for a class's block, 16-byte aligned for a small one. */
static void *new_block(size_t capacity, Py_ssize_t cls)
{
    const size_t pad = cls >= 0 ? LINE + sizeof(Head) : HEAD_SPACE;
    if (capacity > SIZE_MAX - pad) return NULL;
    char *base = malloc(capacity + pad);
    if (!base) return NULL;
    char *data = cls >= 0 ? (char *)(((uintptr_t)base + sizeof(Head) + LINE - 1) & ~(uintptr_t)(LINE - 1))
                          : base + HEAD_SPACE;
    Head *h = head_of(data);
    h->base = base, h->next = NULL, h->capacity = capacity, h->cls = cls, h->freed = 0;
    return data;
}

static void *arena_malloc(void *ctx, size_t n)
{
    (void)ctx;
    size_t capacity;
    const Py_ssize_t cls = n >= LARGE_BYTES ? size_class(n, &capacity) : -1;
    if (cls < 0) return new_block(n ? n : 1, -1);
    PyThread_acquire_lock(lock, WAIT_LOCK);
    Py_ssize_t best = cls; /* the class whose head was freed last */
    for (Py_ssize_t c = cls + 1; c < cls + REACH && c < CLASSES; c++)
        if (free_list[c] && (!free_list[best] || free_list[c]->freed > free_list[best]->freed)) best = c;
    Head *h = free_list[best];
    if (h) {
        free_list[best] = h->next;
        cached_bytes -= h->capacity, cached_blocks--, reused++;
    } else {
        allocated++;
    }
    PyThread_release_lock(lock);
    return h ? (void *)((char *)h + sizeof(Head)) : new_block(capacity, cls);
}

static void arena_free(void *ctx, void *data, size_t n)
{
    (void)ctx, (void)n; /* n: numpy's idea of the size; the Head knows the block's */
    if (!data) return;
    Head *h = head_of(data);
    if (h->cls >= 0) {
        PyThread_acquire_lock(lock, WAIT_LOCK);
        const int keep = cached_bytes + h->capacity <= CACHE_LIMIT;
        if (keep) {
            h->freed = ++frees;
            h->next = free_list[h->cls], free_list[h->cls] = h;
            cached_bytes += h->capacity, cached_blocks++;
        }
        PyThread_release_lock(lock);
        if (keep) return;
    }
    free(h->base);
}

static void *arena_calloc(void *ctx, size_t count, size_t size)
{
    if (size && count > SIZE_MAX / size) return NULL;
    void *data = arena_malloc(ctx, count * size);
    if (data) memset(data, 0, count * size);
    return data;
}

static void *arena_realloc(void *ctx, void *data, size_t n)
{
    if (!data) return arena_malloc(ctx, n);
    Head *h = head_of(data);
    if (h->cls >= 0 && n <= h->capacity && n >= LARGE_BYTES) return data; /* still within its class */
    void *moved = arena_malloc(ctx, n);
    if (!moved) return NULL;
    memcpy(moved, data, h->capacity < n ? h->capacity : n);
    arena_free(ctx, data, h->capacity);
    return moved;
}

static PyDataMem_Handler handler = {
    "dcm_arena", 1, {NULL, arena_malloc, arena_calloc, arena_realloc, arena_free}};
static PyObject *handler_capsule;

PyDoc_STRVAR(use_doc,
"use() -> previous\n\n"
"Make this allocator numpy's for new arrays in the current context (thread or task); returns the\n"
"handler it replaces, for restore(). Arrays keep the allocator that made them until they are freed.");

static PyObject *use(PyObject *self, PyObject *noargs)
{
    return PyDataMem_SetHandler(handler_capsule);
}

PyDoc_STRVAR(restore_doc, "restore(previous) -> None\n\nMake `previous` (what use() returned) numpy's allocator again.");

static PyObject *restore(PyObject *self, PyObject *previous)
{
    if (!PyCapsule_IsValid(previous, "mem_handler")) {
        PyErr_SetString(PyExc_TypeError, "restore() takes the handler use() returned");
        return NULL;
    }
    PyObject *ours = PyDataMem_SetHandler(previous);
    if (!ours) return NULL;
    Py_DECREF(ours);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(stats_doc,
"stats() -> dict\n\n"
"cached_bytes and cached_blocks (freed large blocks kept for reuse), reused (large requests served\n"
"from them) and allocated (large requests that took a new block), since the process started.");

static PyObject *stats(PyObject *self, PyObject *noargs)
{
    PyThread_acquire_lock(lock, WAIT_LOCK);
    const unsigned long long b = cached_bytes, c = cached_blocks, r = reused, a = allocated;
    PyThread_release_lock(lock);
    return Py_BuildValue("{sKsKsKsK}", "cached_bytes", b, "cached_blocks", c, "reused", r, "allocated", a);
}

PyDoc_STRVAR(trim_doc, "trim() -> int\n\nFree every kept block; returns the bytes given back to malloc.");

static PyObject *trim(PyObject *self, PyObject *noargs)
{
    Head *lists[CLASSES];
    PyThread_acquire_lock(lock, WAIT_LOCK);
    memcpy(lists, free_list, sizeof(lists));
    memset(free_list, 0, sizeof(free_list));
    const unsigned long long freed = cached_bytes;
    cached_bytes = cached_blocks = 0;
    PyThread_release_lock(lock);
    for (Py_ssize_t c = 0; c < CLASSES; c++)
        for (Head *h = lists[c], *next; h; h = next) next = h->next, free(h->base);
    return PyLong_FromUnsignedLongLong(freed);
}

static PyMethodDef methods[] = {
    {"use", use, METH_NOARGS, use_doc},
    {"restore", restore, METH_O, restore_doc},
    {"stats", stats, METH_NOARGS, stats_doc},
    {"trim", trim, METH_NOARGS, trim_doc},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_arena",
                                    "numpy's data allocator while a session runs: large buffers reused, "
                                    "the most recently freed first, each on a 64-byte line.",
                                    -1, methods};

PyMODINIT_FUNC PyInit__arena(void)
{
    import_array();
    if (!(lock = PyThread_allocate_lock())) return PyErr_NoMemory();
    handler_capsule = PyCapsule_New(&handler, "mem_handler", NULL);
    if (!handler_capsule) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m && (PyModule_AddIntConstant(m, "LARGE_BYTES", (long)LARGE_BYTES) < 0 ||
              PyModule_AddObject(m, "CACHE_LIMIT", PyLong_FromUnsignedLongLong(CACHE_LIMIT)) < 0 ||
              PyModule_AddIntConstant(m, "REACH", (long)REACH) < 0)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
