/* The native thread pool behind parallel_for (_kernel_common.h), shared by every compiled kernel module
 * through the capsule dcm.runtime.cpu._pool._api.
 *
 * Why not Python threads: handing a range to a Python thread costs 15-100 us (the GIL, a future, a
 * wake-up), so only products of tens of millions of multiply-adds were worth splitting, and a
 * MobileNetV2 ran no faster on two threads than on one. Here a hand-off is an atomic increment: an
 * idle worker watches for the next job for SPIN_NS before it sleeps, so the kernels of one run, a few
 * microseconds apart, find it awake.
 *
 * Why not OpenMP: its parallel loops end at a barrier that waits for every thread of the team,
 * started or not. On a machine another process keeps busy, a worker the scheduler keeps off the core
 * then holds up every kernel until it is scheduled (the BLAS pools' problem, see blas.py). Here the
 * caller takes ranges too, and once every range is taken it waits only for the ranges that were taken
 * by threads that are running; a worker that wakes late finds its segment taken by the others
 * (onnxruntime's pool works the same way).
 *
 * One job at a time: a call that finds the pool busy (a nested call from inside a range, another
 * Python thread's session) runs its ranges itself.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "_kernel_common.h"

#if !defined(_WIN32)
#include <pthread.h>
#include <sched.h>
#include <unistd.h>
#include <signal.h>
#include <stdatomic.h>
#include <time.h>

#define MAX_WORKERS 63          /* threads - 1; a larger request runs on this many workers + the caller */
#define PARTS_PER_THREAD 4      /* ranges per thread: a late thread leaves little undone */
#define SPIN_NS 200000L         /* how long an idle worker watches for the next job before it sleeps */
/* A job whose caller waited, after its own last range, more than twice its mean range time plus
 * STALL_SLACK_NS waited on a worker the scheduler took off the core (another process wants the core).
 * A stall whose wait is under 1 / NOISE_RATIO of the time since the last stall or back-off is noise (a
 * quiet machine's daemons: about 2 a second here) and changes nothing. Otherwise jobs run on the caller
 * alone for a while before the pool is tried again: BACKOFF_NS, twice as long after each further stall
 * that is not noise, up to BACKOFF_MAX_NS. On a 2-core machine with one core kept busy, such stalls (a
 * time slice, milliseconds) made BERT's median on 2 threads 2.1x its best run and 1.35x its median on
 * one thread. Backing off at every stall, doubling until a second passed without one, kept a quiet
 * machine's pool on one thread for much of the time: pruned ViT-Tiny's mean run on 2 threads was 1.17x
 * its best. */
#define STALL_SLACK_NS 50000LL
#define NOISE_RATIO 10
#define BACKOFF_NS 20000000LL
#define BACKOFF_MAX_NS 1280000000LL

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static long long now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static pthread_mutex_t submit_lock = PTHREAD_MUTEX_INITIALIZER; /* held by the one job's caller */
static atomic_llong spin_ns = SPIN_NS; /* 0 while more threads are asked for than the process has cores */
static atomic_llong alone_until; /* CLOCK_MONOTONIC ns: jobs before it run on the caller alone */
static atomic_llong stalls;      /* jobs that waited on a descheduled worker, for stalls() */
/* The stall policy's state: the next back-off, and when the last stall or back-off ended. */
typedef struct {
    long long backoff_ns, last_event;
} StallPolicy;

/* A stall at `finished` whose caller waited `waited` ns: 0 where it is noise, else the time until which
 * jobs run on the caller alone. Pure, so that tests can replay a sequence of stalls (stall_policy). */
static long long on_stall(StallPolicy *p, long long finished, long long waited)
{
    if (waited * NOISE_RATIO < finished - p->last_event) {
        p->backoff_ns = BACKOFF_NS;
        p->last_event = finished;
        return 0;
    }
    p->last_event = finished + waited + p->backoff_ns;
    p->backoff_ns = p->backoff_ns * 2 < BACKOFF_MAX_NS ? p->backoff_ns * 2 : BACKOFF_MAX_NS;
    return p->last_event;
}

static pthread_mutex_t sleep_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
static int started; /* workers running (under submit_lock) */
static atomic_int sleepers;

/* A job is published by storing its epoch. Its ranges are cut into one contiguous segment per thread
 * (the caller's first), each an atomic epoch << 32 | front << 16 | back, so that a worker still holding
 * an older epoch can never take a range of a newer job. A thread takes its own segment's ranges from
 * the front, in order, then other segments' from the back: each thread works on one contiguous part of
 * the output, which the next kernel reads again in the same split (a 1x1 layer's rows, then the
 * depthwise layer's), while a late thread's ranges still go to whoever is free. Handed out from one
 * shared counter, the threads took every other range, so about half of each kernel's input sat in the
 * other core's cache: MobileNetV2 took 4.6 ms on 2 threads against 3.9, pruned ViT-Tiny 17.1 against
 * 15.4, EfficientNet-B0 8.2 against 7.6 (medians, the two builds in turn). The fields are written
 * before the epoch is published and not rewritten until every range of the job is done. */
#define MAX_THREADS (MAX_WORKERS + 1)
static atomic_uint epoch;
static atomic_ullong segments[MAX_THREADS];
static atomic_llong done; /* ranges of the current job finished */
static struct {
    _Atomic(dcm_range_fn) fn;
    _Atomic(void *) ctx;
    atomic_llong count, grain, units, parts;
    atomic_int workers; /* how many workers take part (the team less the caller) */
} job;

/* Takes a range of job e from segment t: its front one (own), else its back one. -1 where none is left. */
static long long take(unsigned e, int t, int own)
{
    unsigned long long s = atomic_load_explicit(&segments[t], memory_order_acquire);
    for (;;) {
        const unsigned front = (unsigned)(s >> 16) & 0xffffu, back = (unsigned)s & 0xffffu;
        if ((unsigned)(s >> 32) != e || front >= back) return -1;
        const unsigned long long next = own ? s + (1ULL << 16) : s - 1;
        if (atomic_compare_exchange_weak_explicit(&segments[t], &s, next, memory_order_acq_rel, memory_order_acquire))
            return own ? front : back - 1;
    }
}

/* Runs ranges of job e as thread `self` until none is left (its own segment, then the others'); returns
 * how many this thread ran. */
static long long run_ranges(unsigned e, int self)
{
    long long ran = 0;
    dcm_range_fn fn = atomic_load_explicit(&job.fn, memory_order_relaxed);
    void *ctx = atomic_load_explicit(&job.ctx, memory_order_relaxed);
    long long count = atomic_load_explicit(&job.count, memory_order_relaxed);
    long long grain = atomic_load_explicit(&job.grain, memory_order_relaxed);
    long long units = atomic_load_explicit(&job.units, memory_order_relaxed);
    long long parts = atomic_load_explicit(&job.parts, memory_order_relaxed);
    const int threads = atomic_load_explicit(&job.workers, memory_order_relaxed) + 1;
    for (int k = 0; k < threads; k++) {
        const int t = (self + k) % threads;
        for (long long i; (i = take(e, t, k == 0)) >= 0; ran++) {
            long long lo = units * i / parts * grain, hi = units * (i + 1) / parts * grain;
            fn(ctx, (Py_ssize_t)lo, (Py_ssize_t)(hi < count ? hi : count));
            atomic_fetch_add_explicit(&done, 1, memory_order_release);
        }
    }
    return ran;
}

/* Returns once the epoch differs from seen: after spinning up to SPIN_NS, asleep on the condition. */
static unsigned next_job(unsigned seen)
{
    long long until = now_ns() + atomic_load_explicit(&spin_ns, memory_order_relaxed);
    for (unsigned n = 1;; n++) {
        unsigned e = atomic_load_explicit(&epoch, memory_order_acquire);
        if (e != seen) return e;
        cpu_relax();
        if (n % 64 == 0 && now_ns() > until) break;
    }
    pthread_mutex_lock(&sleep_lock);
    atomic_fetch_add(&sleepers, 1); /* seq_cst, against the caller's store of the epoch then load of this */
    unsigned e;
    while ((e = atomic_load(&epoch)) == seen) pthread_cond_wait(&wake, &sleep_lock);
    atomic_fetch_sub(&sleepers, 1);
    pthread_mutex_unlock(&sleep_lock);
    return e;
}

static void *worker(void *arg)
{
    int id = (int)(intptr_t)arg;
    unsigned seen = atomic_load(&epoch);
    for (;;) {
        seen = next_job(seen);
        if (id < atomic_load_explicit(&job.workers, memory_order_relaxed)) run_ranges(seen, id + 1);
    }
    return NULL;
}

/* Starts workers up to `wanted` (under submit_lock), with every signal blocked: Python's handlers run
 * on the main thread. Returns how many are running. */
static int start_workers(int wanted)
{
    if (started >= wanted) return started;
    sigset_t all, previous;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &previous);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    while (started < wanted) {
        pthread_t t;
        if (pthread_create(&t, &attr, worker, (void *)(intptr_t)started) != 0) break;
        started++;
    }
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &previous, NULL);
    return started;
}

/* The cores this process may run on (its CPU affinity where the system has one). */
static int cores(void)
{
#ifdef CPU_COUNT
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) return CPU_COUNT(&set);
#endif
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

static void pool_run(dcm_range_fn fn, void *ctx, Py_ssize_t count, Py_ssize_t grain, int threads)
{
    long long units = (count + grain - 1) / grain;
    if (threads < 2 || units < 2 || now_ns() < atomic_load_explicit(&alone_until, memory_order_relaxed) ||
        pthread_mutex_trylock(&submit_lock) != 0) {
        fn(ctx, 0, count);
        return;
    }
    int workers = start_workers(threads - 1 < MAX_WORKERS ? threads - 1 : MAX_WORKERS);
    if (workers == 0) {
        pthread_mutex_unlock(&submit_lock);
        fn(ctx, 0, count);
        return;
    }
    const int team = threads - 1 < workers ? threads : workers + 1; /* the caller and the workers that take part */
    long long parts = (long long)team * PARTS_PER_THREAD;
    if (parts > units) parts = units;
    static int available;
    if (!available) available = cores();
    /* More threads than cores: a spinning worker would only take time from the ones with work. */
    atomic_store_explicit(&spin_ns, threads > available ? 0 : SPIN_NS, memory_order_relaxed);
    unsigned e = atomic_load(&epoch) + 1;
    atomic_store_explicit(&job.fn, fn, memory_order_relaxed);
    atomic_store_explicit(&job.ctx, ctx, memory_order_relaxed);
    atomic_store_explicit(&job.count, count, memory_order_relaxed);
    atomic_store_explicit(&job.grain, grain, memory_order_relaxed);
    atomic_store_explicit(&job.units, units, memory_order_relaxed);
    atomic_store_explicit(&job.parts, parts, memory_order_relaxed);
    atomic_store_explicit(&job.workers, team - 1, memory_order_relaxed);
    atomic_store_explicit(&done, 0, memory_order_relaxed);
    for (int t = 0; t < team; t++) /* thread t's segment: ranges [t parts / team, (t + 1) parts / team) */
        atomic_store_explicit(&segments[t], (unsigned long long)e << 32 | (unsigned long long)(parts * t / team) << 16 |
                                                (unsigned long long)(parts * (t + 1) / team),
                              memory_order_release);
    atomic_store(&epoch, e); /* seq_cst: published before sleepers is read */
    if (atomic_load(&sleepers) > 0) {
        pthread_mutex_lock(&sleep_lock);
        pthread_cond_broadcast(&wake);
        pthread_mutex_unlock(&sleep_lock);
    }
    long long start = now_ns(), own = run_ranges(e, 0), finished = now_ns();
    /* Every range is taken: wait for those still running on other threads. */
    for (unsigned n = 1; atomic_load_explicit(&done, memory_order_acquire) < parts; n++) {
        cpu_relax();
        if (n % 1024 == 0) sched_yield(); /* the thread holding a range may be off the core */
    }
    long long waited = now_ns() - finished;
    if (own > 0 && waited > 2 * (finished - start) / own + STALL_SLACK_NS) { /* not an imbalance: a stall */
        static StallPolicy policy = {BACKOFF_NS, 0}; /* under submit_lock */
        atomic_fetch_add_explicit(&stalls, 1, memory_order_relaxed);
        const long long until = on_stall(&policy, finished, waited);
        if (until) atomic_store_explicit(&alone_until, until, memory_order_relaxed);
    }
    pthread_mutex_unlock(&submit_lock);
}

/* A child of fork() has none of the workers: it starts its own on its first job. */
static void after_fork_in_child(void)
{
    pthread_mutex_init(&submit_lock, NULL);
    pthread_mutex_init(&sleep_lock, NULL);
    pthread_cond_init(&wake, NULL);
    started = 0;
    atomic_store(&sleepers, 0);
}

static const dcm_pool_api api = {DCM_POOL_API_VERSION, pool_run};
#define HAVE_POOL 1
#endif /* !_WIN32 */

/* --- Python functions, for tests --- */

typedef struct {
    unsigned char *hits;
    atomic_int ranges;
} coverage_ctx;

static void cover(void *arg, Py_ssize_t lo, Py_ssize_t hi)
{
    coverage_ctx *c = (coverage_ctx *)arg;
    for (Py_ssize_t i = lo; i < hi; i++) c->hits[i]++;
    atomic_fetch_add(&c->ranges, 1);
}

PyDoc_STRVAR(coverage_doc,
"coverage(count, grain, threads) -> (bytes, ranges)\n\n"
"Runs parallel_for over [0, count) with a range function that counts how often each index is visited\n"
"(bytes of count values, each 1 when the pool is right) and how many ranges ran: for tests.");

static PyObject *coverage(PyObject *self, PyObject *args)
{
    Py_ssize_t count, grain;
    int threads;
    if (!PyArg_ParseTuple(args, "nni:coverage", &count, &grain, &threads)) return NULL;
    if (count < 0 || count > (1 << 24) || grain < 1 || threads < 1) {
        PyErr_SetString(PyExc_ValueError, "coverage: need 0 <= count <= 2**24, grain >= 1, threads >= 1");
        return NULL;
    }
    PyObject *hits = PyBytes_FromStringAndSize(NULL, count);
    if (!hits) return NULL;
    coverage_ctx c = {(unsigned char *)PyBytes_AS_STRING(hits), 0};
    memset(c.hits, 0, (size_t)count);
    Py_BEGIN_ALLOW_THREADS
    parallel_for(cover, &c, count, grain, threads);
    Py_END_ALLOW_THREADS
    return Py_BuildValue("Ni", hits, atomic_load(&c.ranges));
}

PyDoc_STRVAR(workers_doc, "workers() -> int\n\nThe pool's worker threads started so far (0 without a pool).");

static PyObject *workers(PyObject *self, PyObject *unused)
{
#ifdef HAVE_POOL
    return PyLong_FromLong(started);
#else
    return PyLong_FromLong(0);
#endif
}

PyDoc_STRVAR(stalls_doc, "stalls() -> int\n\nJobs so far whose caller waited on a worker the scheduler took off the core\n"
"(each one that is not noise sends the jobs of the next 20 ms, or longer after repeated stalls, to the\n"
"caller alone: see stall_policy).");

static PyObject *stalls_count(PyObject *self, PyObject *unused)
{
#ifdef HAVE_POOL
    return PyLong_FromLongLong(atomic_load(&stalls));
#else
    return PyLong_FromLong(0);
#endif
}

PyDoc_STRVAR(stall_policy_doc,
"stall_policy(stalls) -> list\n\n"
"Replays the pool's stall policy from a fresh state over (finished_ns, waited_ns) pairs: for each, 0\n"
"where the stall is noise, else the time until which jobs would run on the caller alone. For tests.");

static PyObject *stall_policy(PyObject *self, PyObject *arg)
{
#ifdef HAVE_POOL
    PyObject *seq = PySequence_Fast(arg, "stall_policy: expected a sequence of (finished_ns, waited_ns)");
    if (!seq) return NULL;
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject *out = PyList_New(n);
    StallPolicy p = {BACKOFF_NS, 0};
    for (Py_ssize_t i = 0; out && i < n; i++) {
        long long finished, waited;
        PyObject *v;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "LL", &finished, &waited) ||
            !(v = PyLong_FromLongLong(on_stall(&p, finished, waited)))) {
            Py_CLEAR(out);
            break;
        }
        PyList_SET_ITEM(out, i, v);
    }
    Py_DECREF(seq);
    return out;
#else
    PyErr_SetString(PyExc_NotImplementedError, "stall_policy: this build has no pool");
    return NULL;
#endif
}

static PyMethodDef module_methods[] = {
    {"stall_policy", stall_policy, METH_O, stall_policy_doc},
    {"coverage", coverage, METH_VARARGS, coverage_doc},
    {"workers", workers, METH_NOARGS, workers_doc},
    {"stalls", stalls_count, METH_NOARGS, stalls_doc},
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_pool", "The native thread pool of dcm's compiled kernels (see _pool.c).", -1,
    module_methods,
};

PyMODINIT_FUNC PyInit__pool(void)
{
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
#ifdef HAVE_POOL
    static int forked_handler;
    if (!forked_handler) {
        pthread_atfork(NULL, NULL, after_fork_in_child);
        forked_handler = 1;
    }
    pool_api = &api; /* this module's own parallel_for (coverage) */
    PyObject *capsule = PyCapsule_New((void *)&api, DCM_POOL_CAPSULE, NULL);
    int failed = !capsule || PyModule_AddObjectRef(m, "_api", capsule) < 0;
    Py_XDECREF(capsule);
    if (failed) {
        Py_DECREF(m);
        return NULL;
    }
#endif
    return m;
}
