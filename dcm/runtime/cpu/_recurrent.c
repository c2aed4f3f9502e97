/* dcm.runtime.cpu._recurrent: the time-step loop of LSTM, GRU and RNN (recurrent.py).
 *
 * recurrent_scan runs one direction of one layer: for each step, the recurrent product h @ R^T of
 * every sequence in the batch, added to that step's input projection (X @ W^T for all steps at once,
 * one BLAS or sparse product made by the caller) and the biases, then the gates. R comes dense,
 * as R^T in unit-major panels of 16 columns (a step is a sum of R's rows scaled by h; a tile of up
 * to 8 sequences shares each load of R, so batch 8 reads R once a step; one AVX-512 or two AVX2
 * registers a panel), or pruned, as CSR [gates * hidden, hidden]: one sequence takes a dot product
 * per row (AVX2 gathers of h), more take h^T [hidden, 8 sequences a vector] so that each stored
 * weight is applied to 8 sequences by one multiply-add.
 *
 * Threads: a step's units are split, in shares of whole panels, across the native pool
 * (parallel_for), each thread keeping its share (its part of R) from step to step; all of a unit's
 * gates are in one share, so each thread runs its units' gates after its own products, and h is
 * double-buffered, as every share reads all of the old h. A GRU without linear_before_reset needs
 * r * h of every unit before R_h's product: two hand-offs a step. Timed probes choose between one
 * thread and the split as the steps run (see Probe). Each unit's sums are made in the same order
 * whatever the split: any thread count gives the same bits.
 *
 * Why C: a step of a 256-wide LSTM is about a quarter of a million multiply-adds and a thousand
 * sigmoids; numpy spends as long again dispatching the dozen small array operations of the gates,
 * a hundred steps a layer. Here a step is one product and one pass over the gates, no allocation.
 *
 * exp is a polynomial (Cephes' expf) on the AVX2 and AVX-512 paths and libm on the portable one;
 * sigmoid is 1 / (1 + exp(-x)), tanh Cephes' odd polynomial below |x| 0.625 and
 * 1 - 2 / (exp(2|x|) + 1) above, so that the paths agree with numpy to a few ulp. Inputs are
 * clamped to exp's range with the operand order that keeps NaN, so NaN and Inf propagate as in the
 * dense math; a pruned R's product gives NaN wherever a dense one would (0 * Inf, 0 * NaN)
 * although it skips the pruned weights.
 *
 * Every array's length is checked against the sizes read from the others, products of sizes made
 * with size_product, and a CSR weight is checked entry by entry (indptr monotone, indices in range)
 * before the loop, so that no call can read or write out of bounds.
 */
#include "_kernel_common.h"
#include <math.h>
#include <string.h>

#if defined(_WIN32) /* no native pool there (_pool.c is POSIX): every step runs on the calling thread */
typedef int share_flag;
static inline int take_share(share_flag *flag) { return (*flag)++; }
static inline int next_pool_share(void) { return 1; }
static double seconds(void) { return 0.0; }
#else
#include <stdatomic.h>
#include <time.h>
typedef atomic_int share_flag;
static atomic_int shares_given;
static inline int take_share(share_flag *flag) { return atomic_exchange(flag, 1); }
static inline int next_pool_share(void) { return 1 + atomic_fetch_add(&shares_given, 1) % 63; }
static double seconds(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}
#endif

#define RELEASE_GIL_MIN 32768 /* multiply-adds per call below which the GIL round trip costs more */
#define PANEL_W 16             /* units per panel of a dense R, and per part of a thread's share */
#define PARALLEL_MIN 65536     /* multiply-adds per step below which a step runs on one thread */

enum { CELL_RNN, CELL_GRU, CELL_LSTM };

typedef struct {
    const float *panels;   /* dense R^T as unit-major panels (see half_panel), or NULL */
    const int64_t *indptr; /* CSR R [gates * hidden, hidden] */
    const int32_t *indices;
    const float *values;
    Py_ssize_t hidden, gates;
    Py_ssize_t units; /* hidden rounded up to PANEL_W: a gate's columns in the panels and in acc */
} Weight;

/* ---- activations, in place ---- */

static void sigmoid_generic(float *v, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) v[i] = 1.f / (1.f + expf(-v[i]));
}

static void tanh_generic(float *v, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) v[i] = tanhf(v[i]);
}

/* AVX-512 where the CPU has it (use_avx512, _kernel_common.h): twice the values per instruction, in
 * the gates and in the dense product. */
#ifdef HAVE_AVX2_PATH

/* Per instruction set: the target, the register types, the intrinsics' prefix, and the few
 * operations whose intrinsics differ by more than the prefix. */
#define TARGET_avx2 __attribute__((target("avx2,fma")))
#define VEC_avx2 __m256
#define IVEC_avx2 __m256i
#define MM_avx2(op) _mm256_##op
#define FLOOR_avx2(x) _mm256_floor_ps(x)
#define AS_FLOAT_avx2(i) _mm256_castsi256_ps(i)
#define SELECT_GE_avx2(a, t, lo, hi) _mm256_blendv_ps(lo, hi, _mm256_cmp_ps(a, t, _CMP_GE_OQ))
#define SPAN_avx2 1 /* half panels a register holds */
#define TARGET_avx512 __attribute__((target("avx512f,avx512dq,avx2,fma")))
#define VEC_avx512 __m512
#define IVEC_avx512 __m512i
#define MM_avx512(op) _mm512_##op
#define FLOOR_avx512(x) _mm512_roundscale_ps(x, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC)
#define AS_FLOAT_avx512(i) _mm512_castsi512_ps(i)
#define SELECT_GE_avx512(a, t, lo, hi) _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, t, _CMP_GE_OQ), lo, hi)
#define SPAN_avx512 2

/* Cephes' expf: exp(x) = 2^n * exp(r), |r| <= ln2 / 2, exp(r) a degree-7 polynomial. Above ln(FLT_MAX)
 * n is 128, whose bits make 2^n +Inf, as exp(Inf) is: sigmoid(-Inf) is then exactly 0, as numpy's.
 * sigmoid is 1 / (1 + exp(-x)); tanh Cephes' odd polynomial below |x| 0.625, else
 * 1 - 2 / (exp(2|x|) + 1) with x's sign. Both instruction sets make the same operations in the same
 * order: the same bits. */
#define ACTIVATIONS(ISA)                                                                                 \
    TARGET_##ISA static inline VEC_##ISA exp_##ISA(VEC_##ISA x)                                          \
    {                                                                                                    \
        x = MM_##ISA(min_ps)(MM_##ISA(set1_ps)(88.8f), x); /* x second: a NaN x is kept */                \
        x = MM_##ISA(max_ps)(MM_##ISA(set1_ps)(-88.3762626647949f), x);                                  \
        VEC_##ISA fx = FLOOR_##ISA(MM_##ISA(fmadd_ps)(x, MM_##ISA(set1_ps)(1.44269504088896341f),          \
                                                      MM_##ISA(set1_ps)(0.5f)));                         \
        x = MM_##ISA(fnmadd_ps)(fx, MM_##ISA(set1_ps)(0.693359375f), x);                                 \
        x = MM_##ISA(fnmadd_ps)(fx, MM_##ISA(set1_ps)(-2.12194440e-4f), x);                              \
        VEC_##ISA y = MM_##ISA(set1_ps)(1.9875691500E-4f);                                               \
        y = MM_##ISA(fmadd_ps)(y, x, MM_##ISA(set1_ps)(1.3981999507E-3f));                               \
        y = MM_##ISA(fmadd_ps)(y, x, MM_##ISA(set1_ps)(8.3334519073E-3f));                               \
        y = MM_##ISA(fmadd_ps)(y, x, MM_##ISA(set1_ps)(4.1665795894E-2f));                               \
        y = MM_##ISA(fmadd_ps)(y, x, MM_##ISA(set1_ps)(1.6666665459E-1f));                               \
        y = MM_##ISA(fmadd_ps)(y, x, MM_##ISA(set1_ps)(5.0000001201E-1f));                               \
        y = MM_##ISA(fmadd_ps)(y, MM_##ISA(mul_ps)(x, x), MM_##ISA(add_ps)(x, MM_##ISA(set1_ps)(1.f)));  \
        IVEC_##ISA n = MM_##ISA(slli_epi32)(                                                             \
            MM_##ISA(add_epi32)(MM_##ISA(cvttps_epi32)(fx), MM_##ISA(set1_epi32)(127)), 23);             \
        return MM_##ISA(mul_ps)(y, AS_FLOAT_##ISA(n));                                                   \
    }                                                                                                    \
    TARGET_##ISA static inline VEC_##ISA sigmoid_v_##ISA(VEC_##ISA x)                                    \
    {                                                                                                    \
        VEC_##ISA one = MM_##ISA(set1_ps)(1.f);                                                          \
        return MM_##ISA(div_ps)(one, MM_##ISA(add_ps)(one, exp_##ISA(MM_##ISA(sub_ps)(MM_##ISA(setzero_ps)(), x)))); \
    }                                                                                                    \
    TARGET_##ISA static inline VEC_##ISA tanh_v_##ISA(VEC_##ISA x)                                       \
    {                                                                                                    \
        VEC_##ISA sign = MM_##ISA(and_ps)(x, MM_##ISA(set1_ps)(-0.f));                                   \
        VEC_##ISA a = MM_##ISA(andnot_ps)(MM_##ISA(set1_ps)(-0.f), x);                                   \
        VEC_##ISA z = MM_##ISA(mul_ps)(x, x);                                                            \
        VEC_##ISA p = MM_##ISA(set1_ps)(-5.70498872745E-3f);                                             \
        p = MM_##ISA(fmadd_ps)(p, z, MM_##ISA(set1_ps)(2.06390887954E-2f));                              \
        p = MM_##ISA(fmadd_ps)(p, z, MM_##ISA(set1_ps)(-5.37397155531E-2f));                             \
        p = MM_##ISA(fmadd_ps)(p, z, MM_##ISA(set1_ps)(1.33314422036E-1f));                              \
        p = MM_##ISA(fmadd_ps)(p, z, MM_##ISA(set1_ps)(-3.33332819422E-1f));                             \
        VEC_##ISA small = MM_##ISA(fmadd_ps)(MM_##ISA(mul_ps)(p, z), x, x);                              \
        VEC_##ISA two = MM_##ISA(set1_ps)(2.f);                                                          \
        VEC_##ISA large = MM_##ISA(sub_ps)(MM_##ISA(set1_ps)(1.f),                                       \
            MM_##ISA(div_ps)(two, MM_##ISA(add_ps)(exp_##ISA(MM_##ISA(mul_ps)(two, a)), MM_##ISA(set1_ps)(1.f)))); \
        large = MM_##ISA(or_ps)(large, sign);                                                            \
        /* NaN compares false: it takes the polynomial branch, which keeps it */                        \
        return SELECT_GE_##ISA(a, MM_##ISA(set1_ps)(0.625f), small, large);                              \
    }
ACTIVATIONS(avx2)
ACTIVATIONS(avx512)

/* In place over v[0, n): whole registers, then the rest (AVX2: the portable loop; AVX-512: one
 * masked register, so that every value takes the same polynomial whatever n). */
#define ACTIVATION_LOOPS(NAME)                                                                           \
    TARGET_avx2 static void NAME##_avx2(float *v, Py_ssize_t n)                                         \
    {                                                                                                    \
        Py_ssize_t i = 0;                                                                                \
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(v + i, NAME##_v_avx2(_mm256_loadu_ps(v + i)));        \
        NAME##_generic(v + i, n - i);                                                                    \
    }                                                                                                    \
    TARGET_avx512 static void NAME##_avx512(float *v, Py_ssize_t n)                                     \
    {                                                                                                    \
        Py_ssize_t i = 0;                                                                                \
        for (; i + 16 <= n; i += 16) _mm512_storeu_ps(v + i, NAME##_v_avx512(_mm512_loadu_ps(v + i)));    \
        if (i < n) {                                                                                     \
            const __mmask16 m = (__mmask16)((1u << (n - i)) - 1);                                        \
            _mm512_mask_storeu_ps(v + i, m, NAME##_v_avx512(_mm512_maskz_loadu_ps(m, v + i)));            \
        }                                                                                                \
    }
ACTIVATION_LOOPS(sigmoid)
ACTIVATION_LOOPS(tanh)
#endif

/* ---- the recurrent product: acc[b, g * units + u] = h[b] . R[g * hidden + u] ----
 *
 * Each call covers the units [u0, u1) of gates [g0, g1), so that a thread can take a range of units
 * and run their gates without waiting for the others' (all of a unit's gates are in its range). */

/* Dense panels: R^T in unit-major order, panel p = (u / PANEL_W) * gates + g holding gate g's
 * units (u / PANEL_W) * PANEL_W .. + PANEL_W (zeros past hidden), as [panels][hidden][PANEL_W]. A
 * range of units, all gates, is then one run of panels, each read as a sequential stream. acc rows
 * are [gates][units], so that the zero units past hidden have columns of their own. Vectors are 8
 * floats, half a panel; v's panel and the column of acc it is summed into: */
static inline const float *half_panel(const Weight *w, Py_ssize_t v, Py_ssize_t *col)
{
    const Py_ssize_t p = v / 2;
    *col = (p % w->gates) * w->units + (p / w->gates) * PANEL_W + (v % 2) * 8;
    return w->panels + p * w->hidden * PANEL_W + (v % 2) * 8;
}

static void panels_generic(const Weight *w, const float *h, Py_ssize_t n, float *acc, Py_ssize_t v0, Py_ssize_t v1)
{
    for (Py_ssize_t v = v0; v < v1; v++) {
        Py_ssize_t col;
        const float *r = half_panel(w, v, &col);
        for (Py_ssize_t b = 0; b < n; b++) {
            float s[8] = {0};
            for (Py_ssize_t k = 0; k < w->hidden; k++)
                for (int i = 0; i < 8; i++) s[i] += h[b * w->hidden + k] * r[k * PANEL_W + i];
            memcpy(acc + b * w->gates * w->units + col, s, sizeof s);
        }
    }
}

#ifdef HAVE_AVX2_PATH
/* Unrolled before GCC's scalar replacement, so that a tile's sums stay in registers (without it
 * each was stored to the stack on every k). */
#define UNROLLED _Pragma("GCC unroll 16")

/* NB sequences times U registers from register v (in units of SPAN half panels): each load of R
 * serves all NB sequences (NB = 8: batch 8 reads R once a step), each broadcast of h all U. */
#define PANEL_TILE(ISA, NB, U)                                                                         \
    TARGET_##ISA static inline void tile_##ISA##_##NB##_##U(const Weight *w, const float *h, float *acc, \
                                                           Py_ssize_t v)                               \
    {                                                                                                  \
        const float *r[U];                                                                             \
        Py_ssize_t col[U];                                                                             \
        VEC_##ISA a[NB][U];                                                                            \
        UNROLLED for (int u = 0; u < U; u++) {                                                         \
            r[u] = half_panel(w, SPAN_##ISA * (v + u), &col[u]);                                       \
            UNROLLED for (int b = 0; b < NB; b++) a[b][u] = MM_##ISA(setzero_ps)();                    \
        }                                                                                              \
        const Py_ssize_t hid = w->hidden, ld = w->gates * w->units; /* locals: a[][] stays in registers */ \
        for (Py_ssize_t k = 0; k < hid; k++) {                                                         \
            UNROLLED for (int b = 0; b < NB; b++) { /* R's loads are shared by the rows (CSE) */        \
                VEC_##ISA hk = MM_##ISA(set1_ps)(h[b * hid + k]);                                      \
                UNROLLED for (int u = 0; u < U; u++)                                                   \
                    a[b][u] = MM_##ISA(fmadd_ps)(hk, MM_##ISA(loadu_ps)(r[u] + k * PANEL_W), a[b][u]); \
            }                                                                                          \
        }                                                                                              \
        UNROLLED for (int b = 0; b < NB; b++)                                                          \
            UNROLLED for (int u = 0; u < U; u++) MM_##ISA(storeu_ps)(acc + b * ld + col[u], a[b][u]);  \
    }
/* Registers [v0, v1): U at a time, the rest one at a time. */
#define PANEL_RUN(ISA, NB, U)                                                                          \
    TARGET_##ISA static void run_##ISA##_##NB##_##U(const Weight *w, const float *h, float *acc,        \
                                                    Py_ssize_t v0, Py_ssize_t v1)                      \
    {                                                                                                  \
        Py_ssize_t v = v0;                                                                             \
        for (; v + U <= v1; v += U) tile_##ISA##_##NB##_##U(w, h, acc, v);                             \
        for (; v < v1; v++) tile_##ISA##_##NB##_1(w, h, acc, v);                                       \
    }

/* Registers [v0, v1) of 8 sequences at a time, then the rest in the widest tile that fits. */
#define PANELS(ISA, U8, U4, U3, U2, U1)                                                                \
    TARGET_##ISA static void panels_##ISA(const Weight *w, const float *h, Py_ssize_t n, float *acc,   \
                                          Py_ssize_t v0, Py_ssize_t v1)                                \
    {                                                                                                  \
        for (Py_ssize_t b = 0; b < n;) {                                                               \
            const Py_ssize_t left = n - b;                                                             \
            const float *hb = h + b * w->hidden;                                                       \
            float *ab = acc + b * w->gates * w->units;                                                 \
            if (left >= 8) run_##ISA##_8_##U8(w, hb, ab, v0, v1), b += 8;                              \
            else if (left >= 4) run_##ISA##_4_##U4(w, hb, ab, v0, v1), b += 4;                         \
            else if (left == 3) run_##ISA##_3_##U3(w, hb, ab, v0, v1), b += 3;                         \
            else if (left == 2) run_##ISA##_2_##U2(w, hb, ab, v0, v1), b += 2;                         \
            else run_##ISA##_1_##U1(w, hb, ab, v0, v1), b += 1;                                        \
        }                                                                                              \
    }

/* AVX2 (16 registers): NB * U sums and U loads of R fit. */
PANEL_TILE(avx2, 1, 1)
PANEL_TILE(avx2, 2, 1)
PANEL_TILE(avx2, 3, 1)
PANEL_TILE(avx2, 4, 1)
PANEL_TILE(avx2, 8, 1)
PANEL_TILE(avx2, 1, 8)
PANEL_TILE(avx2, 2, 4)
PANEL_TILE(avx2, 3, 4)
PANEL_TILE(avx2, 4, 3)
PANEL_RUN(avx2, 1, 8)
PANEL_RUN(avx2, 2, 4)
PANEL_RUN(avx2, 3, 4)
PANEL_RUN(avx2, 4, 3)
PANEL_RUN(avx2, 8, 1)
PANELS(avx2, 1, 3, 4, 4, 8)
/* AVX-512 (32 registers) */
PANEL_TILE(avx512, 1, 1)
PANEL_TILE(avx512, 2, 1)
PANEL_TILE(avx512, 3, 1)
PANEL_TILE(avx512, 4, 1)
PANEL_TILE(avx512, 8, 1)
PANEL_TILE(avx512, 1, 8)
PANEL_TILE(avx512, 2, 8)
PANEL_TILE(avx512, 3, 6)
PANEL_TILE(avx512, 4, 5)
PANEL_TILE(avx512, 8, 3)
PANEL_RUN(avx512, 1, 8)
PANEL_RUN(avx512, 2, 8)
PANEL_RUN(avx512, 3, 6)
PANEL_RUN(avx512, 4, 5)
PANEL_RUN(avx512, 8, 3)
PANELS(avx512, 3, 5, 6, 8, 8)
#endif

/* CSR rows [r0, r1) into out[b * ld + j - r0]. One sequence: a dot product per row. More: h^T
 * [hidden, lanes] (lanes: n rounded up to 8, the rest zero), so that each stored weight is applied
 * to 8 sequences at once. A row's sum is made the same way whichever rows it is computed with: any
 * split of the units gives the same bits. */
static void csr_generic(const Weight *w, const float *h, const float *ht, Py_ssize_t lanes, Py_ssize_t n,
                        float *out, Py_ssize_t ld, Py_ssize_t r0, Py_ssize_t r1)
{
    for (Py_ssize_t j = r0; j < r1; j++) {
        for (Py_ssize_t b = 0; b < n; b++) {
            float s = 0.f;
            for (int64_t k = w->indptr[j]; k < w->indptr[j + 1]; k++)
                s += w->values[k] * (n == 1 ? h[w->indices[k]] : ht[w->indices[k] * lanes + b]);
            out[b * ld + j - r0] = s;
        }
    }
}

#ifdef HAVE_AVX2_PATH
/* Row j's products with h, 8 lanes of partial sums: whole gathers of 8, then one masked gather for
 * the rest (masked loads: nothing is read past the row's last weight). */
__attribute__((target("avx2,fma")))
static inline __m256 row_gathered(const Weight *w, const float *h, Py_ssize_t j)
{
    __m256 a = _mm256_setzero_ps();
    int64_t k = w->indptr[j];
    const int64_t end = w->indptr[j + 1];
    for (; k + 8 <= end; k += 8) {
        __m256i idx = _mm256_loadu_si256((const __m256i *)(w->indices + k));
        a = _mm256_fmadd_ps(_mm256_i32gather_ps(h, idx, 4), _mm256_loadu_ps(w->values + k), a);
    }
    if (k < end) {
        const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(end - k)),
                                                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        __m256i idx = _mm256_maskload_epi32(w->indices + k, mask);
        __m256 g = _mm256_mask_i32gather_ps(_mm256_setzero_ps(), h, idx, _mm256_castsi256_ps(mask), 4);
        a = _mm256_fmadd_ps(g, _mm256_maskload_ps(w->values + k, mask), a);
    }
    return a;
}

/* The sum of v's 8 lanes in the order sums8 gives each of its rows:
 * ((v0 + v1) + (v2 + v3)) + ((v4 + v5) + (v6 + v7)). */
__attribute__((target("avx2,fma")))
static inline float sum8(__m256 v)
{
    float s[8];
    _mm256_storeu_ps(s, v);
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

/* Lane r of the result: the sum of a[r]'s lanes, as sum8 adds them (three rounds of pairwise adds
 * in place of eight horizontal sums and scalar stores). */
__attribute__((target("avx2,fma")))
static inline __m256 sums8(const __m256 *a)
{
    __m256 lo = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
    __m256 hi = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
    return _mm256_add_ps(_mm256_permute2f128_ps(lo, hi, 0x20), _mm256_permute2f128_ps(lo, hi, 0x31));
}

/* Row j's products with 8 sequences of h^T from hl, two chains for the FMA latency. */
#define CSR_FMA(k, a) \
    a = _mm256_fmadd_ps(_mm256_broadcast_ss(w->values + (k)), _mm256_loadu_ps(hl + w->indices[k] * lanes), a)

__attribute__((target("avx2,fma")))
static inline __m256 row_lanes(const Weight *w, const float *hl, Py_ssize_t lanes, Py_ssize_t j)
{
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t k = w->indptr[j];
    const int64_t end = w->indptr[j + 1];
    for (; k + 2 <= end; k += 2) {
        CSR_FMA(k, a0);
        CSR_FMA(k + 1, a1);
    }
    if (k < end) CSR_FMA(k, a0);
    return _mm256_add_ps(a0, a1);
}

/* Whole blocks of 8 rows go out 8 values a store: one sequence's 8 sums as one vector (sums8), or for
 * 8 sequences the block's 8 x 8 sums transposed, so that each sequence's 8 rows are one vector (per
 * row and sequence scalar stores took a third of a step at batch 8 and 10% kept). */
__attribute__((target("avx2,fma")))
static void csr_avx2(const Weight *w, const float *h, const float *ht, Py_ssize_t lanes, Py_ssize_t n,
                     float *out, Py_ssize_t ld, Py_ssize_t r0, Py_ssize_t r1)
{
    __m256 a[8];
    Py_ssize_t j = r0;
    if (n == 1) { /* AVX2 gathers of h */
        for (; j + 8 <= r1; j += 8) {
            for (int r = 0; r < 8; r++) a[r] = row_gathered(w, h, j + r);
            _mm256_storeu_ps(out + j - r0, sums8(a));
        }
        for (; j < r1; j++) out[j - r0] = sum8(row_gathered(w, h, j));
        return;
    }
    for (; j + 8 <= r1; j += 8)
        for (Py_ssize_t b0 = 0; b0 < n; b0 += 8) {
            for (int r = 0; r < 8; r++) a[r] = row_lanes(w, ht + b0, lanes, j + r);
            transpose8(a);
            const Py_ssize_t nb = n - b0 < 8 ? n - b0 : 8;
            for (Py_ssize_t b = 0; b < nb; b++) _mm256_storeu_ps(out + (b0 + b) * ld + j - r0, a[b]);
        }
    for (; j < r1; j++)
        for (Py_ssize_t b0 = 0; b0 < n; b0 += 8) {
            float s[8];
            _mm256_storeu_ps(s, row_lanes(w, ht + b0, lanes, j));
            for (Py_ssize_t b = 0; b < n - b0 && b < 8; b++) out[(b0 + b) * ld + j - r0] = s[b];
        }
}
#endif

/* A pruned R skips the weights a dense product would multiply by an Inf or NaN of h (0 * Inf is
 * NaN): the rows that do not store a weight at every such position get NaN. bad[b]: how many of
 * h[b] are not finite. */
static void csr_poison(const Weight *w, const float *h, const Py_ssize_t *bad, Py_ssize_t n, float *out,
                       Py_ssize_t ld, Py_ssize_t r0, Py_ssize_t r1)
{
    for (Py_ssize_t b = 0; b < n; b++) {
        if (!bad[b]) continue;
        const float *hb = h + b * w->hidden;
        for (Py_ssize_t j = r0; j < r1; j++) {
            Py_ssize_t hits = 0;
            for (int64_t k = w->indptr[j]; k < w->indptr[j + 1]; k++) hits += !isfinite(hb[w->indices[k]]);
            if (hits < bad[b]) out[b * ld + j - r0] = NAN;
        }
    }
}

/* The product's input: h [n, hidden], and for a pruned R at n > 1 h^T and the non-finite counts. */
typedef struct {
    const float *h, *ht;
    const Py_ssize_t *bad;
} Input;

static void product(const Weight *w, const Input *in, Py_ssize_t n, Py_ssize_t lanes, float *acc, Py_ssize_t u0,
                    Py_ssize_t u1, Py_ssize_t g0, Py_ssize_t g1)
{
    if (w->panels) { /* u0: a panel's first unit; u1 may end within one */
        const Py_ssize_t b0 = u0 / PANEL_W, b1 = (u1 + PANEL_W - 1) / PANEL_W, gates = w->gates;
        const int all = g0 == 0 && g1 == gates; /* then one run of panels */
        for (Py_ssize_t blk = b0; blk < (all ? b0 + 1 : b1); blk++) {
            const Py_ssize_t p0 = blk * gates + g0, p1 = all ? b1 * gates : blk * gates + g1;
#ifdef HAVE_AVX2_PATH
            if (use_avx512()) {
                panels_avx512(w, in->h, n, acc, p0, p1);
                continue;
            }
#endif
            DISPATCH(panels, w, in->h, n, acc, 2 * p0, 2 * p1);
        }
        return;
    }
    const Py_ssize_t ld = w->gates * w->units;
    for (Py_ssize_t g = g0; g < g1; g++) {
        const Py_ssize_t r0 = g * w->hidden + u0, r1 = g * w->hidden + u1;
        float *out = acc + g * w->units + u0;
        DISPATCH(csr, w, in->h, in->ht, lanes, n, out, ld, r0, r1);
        csr_poison(w, in->h, in->bad, n, out, ld, r0, r1);
    }
}

/* ---- the gates, over units [u0, u0 + m) of one sequence ---- */

typedef struct {
    int cell, input_forget, linear_before_reset;
    float clip; /* < 0: none */
    const float *peephole, *recurrent_bias;
} Gates;

/* v clamped to [-clip, clip]; a NaN v stays NaN (comparisons with it are false), as np.clip. */
static inline void clip_range(const Gates *g, float *v, Py_ssize_t n)
{
    if (g->clip < 0) return;
    const float c = g->clip;
    for (Py_ssize_t i = 0; i < n; i++) v[i] = v[i] < -c ? -c : v[i] > c ? c : v[i];
}

#ifdef HAVE_AVX2_PATH
#define ACTIVATE(name, v, n) (use_avx512() ? name##_avx512(v, n) : DISPATCH(name, v, n))
#else
#define ACTIVATE(name, v, n) DISPATCH(name, v, n)
#endif
static inline void sigmoid(float *v, Py_ssize_t n) { ACTIVATE(sigmoid, v, n); }
static inline void tanh_(float *v, Py_ssize_t n) { ACTIVATE(tanh, v, n); }

/* LSTM, gates i, o, f, c at g + 0, stride, 2 stride, 3 stride (input projection and recurrent
 * product summed); c updated in place, the new h written to h_out. p: the peepholes [i, o, f] (each
 * hid long) from u0, or NULL. tmp: [m]. */
static void lstm_gates(const Gates *gs, const float *p, Py_ssize_t hid, float *g, Py_ssize_t stride, float *c,
                       float *h_out, float *tmp, Py_ssize_t m)
{
    float *gi = g, *go = g + stride, *gf = g + 2 * stride, *gc = g + 3 * stride;
    if (p) {
        for (Py_ssize_t j = 0; j < m; j++) {
            gi[j] += p[j] * c[j];
            gf[j] += p[2 * hid + j] * c[j];
        }
    } else {
        clip_range(gs, go, m);
        sigmoid(go, m);
    }
    clip_range(gs, gi, m);
    clip_range(gs, gf, m);
    clip_range(gs, gc, m);
    sigmoid(gi, m);
    if (!gs->input_forget) sigmoid(gf, m);
    tanh_(gc, m);
    for (Py_ssize_t j = 0; j < m; j++) c[j] = (gs->input_forget ? 1.f - gi[j] : gf[j]) * c[j] + gi[j] * gc[j];
    if (p) {
        for (Py_ssize_t j = 0; j < m; j++) go[j] += p[hid + j] * c[j];
        clip_range(gs, go, m);
        sigmoid(go, m);
    }
    memcpy(tmp, c, (size_t)m * sizeof(float));
    tanh_(tmp, m);
    for (Py_ssize_t j = 0; j < m; j++) h_out[j] = go[j] * tmp[j];
}

/* GRU's last part: candidate (pre-activation in cand), h_out = (1 - z) * cand + z * h. */
static void gru_finish(const Gates *gs, const float *z, float *cand, const float *h, float *h_out, Py_ssize_t m)
{
    clip_range(gs, cand, m);
    tanh_(cand, m);
    for (Py_ssize_t j = 0; j < m; j++) h_out[j] = (1.f - z[j]) * cand[j] + z[j] * h[j];
}

/* ---- the loop over time steps ---- */

typedef struct {
    const Weight *w;
    const Gates *gs;
    const float *xw;     /* [steps, n, gates * hidden] */
    const float *bias;   /* [gates * hidden], added to every step's xw */
    float *y;            /* [steps, directions, n, hidden] */
    float *c;            /* [n, hidden], updated in place */
    const int64_t *lens; /* [n] */
    Py_ssize_t steps, n, hidden, directions, direction, lanes;
    int backwards;
    /* this step's */
    Py_ssize_t t;
    Input in, reset_in; /* h, and a GRU's r * h (tmp) */
    float *h_out, *ht_out, *acc, *tmp, *tmpt;
    /* the threads' shares of the units (see by_share) */
    Py_ssize_t shares, blocks;
    share_flag *taken;
    void (*part)(void *, Py_ssize_t, Py_ssize_t); /* step_units or step_reset_units */
} Scan;

/* ht[u][b] = h[b][u] for units [u0, u1) of n sequences (h [n, hidden], ht [hidden, lanes]). */
static void transpose_state_generic(const float *h, float *ht, Py_ssize_t n, Py_ssize_t hidden, Py_ssize_t lanes,
                                    Py_ssize_t u0, Py_ssize_t u1)
{
    for (Py_ssize_t u = u0; u < u1; u++)
        for (Py_ssize_t b = 0; b < n; b++) ht[u * lanes + b] = h[b * hidden + u];
}

#ifdef HAVE_AVX2_PATH
/* 8 units of 8 sequences a transpose (the lanes past n get zeros, as they hold); the rest as above. */
__attribute__((target("avx2,fma")))
static void transpose_state_avx2(const float *h, float *ht, Py_ssize_t n, Py_ssize_t hidden, Py_ssize_t lanes,
                                 Py_ssize_t u0, Py_ssize_t u1)
{
    Py_ssize_t u = u0;
    for (; u + 8 <= u1; u += 8)
        for (Py_ssize_t b0 = 0; b0 < n; b0 += 8) {
            __m256 r[8];
            for (int b = 0; b < 8; b++)
                r[b] = b0 + b < n ? _mm256_loadu_ps(h + (b0 + b) * hidden + u) : _mm256_setzero_ps();
            transpose8(r);
            for (int i = 0; i < 8; i++) _mm256_storeu_ps(ht + (u + i) * lanes + b0, r[i]);
        }
    transpose_state_generic(h, ht, n, hidden, lanes, u, u1);
}
#endif

/* The new state's transposed copy, for the next step's pruned product. */
static void write_ht(const Scan *s, const float *h, float *ht, Py_ssize_t u0, Py_ssize_t u1)
{
    if (ht) DISPATCH(transpose_state, h, ht, s->n, s->hidden, s->lanes, u0, u1);
}

static inline Py_ssize_t step_at(const Scan *s, Py_ssize_t b) { return s->backwards ? s->lens[b] - 1 - s->t : s->t; }

static inline float *y_at(const Scan *s, Py_ssize_t b, Py_ssize_t u0)
{
    return s->y + ((step_at(s, b) * s->directions + s->direction) * s->n + b) * s->hidden + u0;
}

/* One step of units [u0, u1): their gates' products, then their gates; a GRU without
 * linear_before_reset stops at r * h, which step_reset_units takes on once every unit has it. */
static void step_units(void *ctx, Py_ssize_t u0, Py_ssize_t u1)
{
    const Scan *s = ctx;
    const Gates *gs = s->gs;
    const Py_ssize_t hid = s->hidden, gh = s->w->gates * hid, st = s->w->units, m = u1 - u0;
    const int split_reset = gs->cell == CELL_GRU && !gs->linear_before_reset;
    product(s->w, &s->in, s->n, s->lanes, s->acc, u0, u1, 0, split_reset ? 2 : s->w->gates);
    for (Py_ssize_t b = 0; b < s->n; b++) {
        const float *h = s->in.h + b * hid + u0;
        float *h_out = s->h_out + b * hid + u0;
        if (s->lens[b] <= s->t) { /* ended: its state stays */
            memcpy(h_out, h, (size_t)m * sizeof(float));
            continue;
        }
        const float *x = s->xw + (step_at(s, b) * s->n + b) * gh + u0, *bias = s->bias + u0;
        float *g = s->acc + b * s->w->gates * st + u0; /* gate q at g + q * st */
        /* a GRU's candidate takes its input projection after the reset gate */
        for (Py_ssize_t q = 0; q < (gs->cell == CELL_GRU ? 2 : s->w->gates); q++)
            for (Py_ssize_t j = 0; j < m; j++) g[q * st + j] += x[q * hid + j] + bias[q * hid + j];
        if (gs->cell == CELL_RNN) {
            clip_range(gs, g, m);
            tanh_(g, m);
            memcpy(h_out, g, (size_t)m * sizeof(float));
        } else if (gs->cell == CELL_LSTM) {
            lstm_gates(gs, gs->peephole ? gs->peephole + u0 : NULL, hid, g, st, s->c + b * hid + u0, h_out,
                       s->tmp + b * hid + u0, m);
        } else {
            clip_range(gs, g, m);
            clip_range(gs, g + st, m);
            sigmoid(g, m); /* z */
            sigmoid(g + st, m); /* r */
            if (split_reset) {
                for (Py_ssize_t j = 0; j < m; j++) s->tmp[b * hid + u0 + j] = g[st + j] * h[j];
                continue;
            }
            const float *rb = gs->recurrent_bias ? gs->recurrent_bias + u0 : NULL;
            for (Py_ssize_t j = 0; j < m; j++)
                g[2 * st + j] = x[2 * hid + j] + bias[2 * hid + j] + g[st + j] * (g[2 * st + j] + (rb ? rb[j] : 0.f));
            gru_finish(gs, g, g + 2 * st, h, h_out, m);
        }
        memcpy(y_at(s, b, u0), h_out, (size_t)m * sizeof(float));
    }
    if (split_reset) write_ht(s, s->tmp, s->tmpt, u0, u1);
    else write_ht(s, s->h_out, s->ht_out, u0, u1);
}

/* A GRU without linear_before_reset: R_h's product with r * h, the candidate and the new state. */
static void step_reset_units(void *ctx, Py_ssize_t u0, Py_ssize_t u1)
{
    const Scan *s = ctx;
    const Py_ssize_t hid = s->hidden, gh = s->w->gates * hid, st = s->w->units, m = u1 - u0;
    product(s->w, &s->reset_in, s->n, s->lanes, s->acc, u0, u1, 2, 3);
    for (Py_ssize_t b = 0; b < s->n; b++) {
        const float *h = s->in.h + b * hid + u0;
        float *h_out = s->h_out + b * hid + u0;
        if (s->lens[b] <= s->t) {
            memcpy(h_out, h, (size_t)m * sizeof(float));
            continue;
        }
        const float *x = s->xw + (step_at(s, b) * s->n + b) * gh + 2 * hid + u0, *bias = s->bias + 2 * hid + u0;
        float *g = s->acc + b * s->w->gates * st + u0, *cand = g + 2 * st;
        for (Py_ssize_t j = 0; j < m; j++) cand[j] += x[j] + bias[j];
        gru_finish(s->gs, g, cand, h, h_out, m);
        memcpy(y_at(s, b, u0), h_out, (size_t)m * sizeof(float));
    }
    write_ht(s, s->h_out, s->ht_out, u0, u1);
}

/* A step's units go to the threads as `shares` equal parts (in whole panels), each thread taking
 * the same part every step where it can: the caller part 0, a pool thread the part its first call
 * gave it. So each thread's part of R stays in its own core's cache; handed out in the pool's order
 * instead, half of R moved between the cores every step, and 2 threads took longer than one. A
 * part already taken (a thread came late, or the pool ran the call serially) sends the thread on to
 * the next free one: every part is done once, by one of the pool's calls. */
static _Thread_local int scanning;       /* set on the thread that runs scan */
static _Thread_local int own_share = -1; /* a pool thread's part, once it has one */

static void by_share(void *ctx, Py_ssize_t lo, Py_ssize_t hi)
{
    const Scan *s = ctx;
    for (Py_ssize_t call = lo; call < hi; call++) {
        if (!scanning && own_share < 0) own_share = next_pool_share();
        const Py_ssize_t first = scanning ? 0 : own_share % s->shares;
        for (Py_ssize_t i = 0; i < s->shares; i++) {
            const Py_ssize_t q = (first + i) % s->shares;
            if (take_share(&s->taken[q])) continue;
            const Py_ssize_t u0 = q * s->blocks / s->shares * PANEL_W, u1 = (q + 1) * s->blocks / s->shares * PANEL_W;
            s->part((void *)s, u0, u1 < s->hidden ? u1 : s->hidden);
            break;
        }
    }
}

/* One part of a step (step_units or step_reset_units) over all units, on up to `threads` threads. */
static void run_step(Scan *s, void (*part)(void *, Py_ssize_t, Py_ssize_t), int threads)
{
    if (threads < 2 || s->shares < 2) {
        part(s, 0, s->hidden);
        return;
    }
    s->part = part;
    for (Py_ssize_t q = 0; q < s->shares; q++) s->taken[q] = 0;
    parallel_for(by_share, s, s->shares, 1, threads);
}

/* How many values of each sequence's h are not finite (for csr_poison). */
static void count_bad(const float *h, Py_ssize_t n, Py_ssize_t hid, Py_ssize_t *bad)
{
    for (Py_ssize_t b = 0; b < n; b++) {
        bad[b] = 0;
        for (Py_ssize_t k = 0; k < hid; k++) bad[b] += !isfinite(h[b * hid + k]);
    }
}

/* Scratch of scan: h's second buffer, and for a pruned R at n > 1 the transposed states. The ones
 * the threads' shares write (h2, ht, acc, tmp, tmpt) are carved out of one zeroed block, each from a
 * cache line of its own (see carve). */
typedef struct {
    float *block, *h2, *ht[2], *acc, *tmp, *tmpt, *zero_bias;
    Py_ssize_t *bad, *reset_bad;
    share_flag *taken; /* [shares] */
} Buffers;

/* Floats rounded up to whole 64-byte lines. */
#define LINE_FLOATS 16
static inline Py_ssize_t whole_lines(Py_ssize_t count) { return (count + LINE_FLOATS - 1) / LINE_FLOATS * LINE_FLOATS; }

/* The step buffers in one block, each on lines of its own: the threads' shares write neighbouring
 * units of acc, tmp, h2 and ht, and where PyMem_RawMalloc's 16-byte alignment put both sides of a
 * share's edge on one line, that line moved between the cores at every write (a split step at batch
 * 8 took 1.13-1.2x the time). sizes: floats of h2, ht[0], ht[1], acc, tmp, tmpt (0: none). */
static int carve(Buffers *buf, const Py_ssize_t sizes[6])
{
    Py_ssize_t total = LINE_FLOATS; /* room to align the start */
    for (int i = 0; i < 6; i++) total += whole_lines(sizes[i]);
    if (!(buf->block = PyMem_RawCalloc((size_t)total, sizeof(float)))) return -1;
    float *p = (float *)(((uintptr_t)buf->block + 63) & ~(uintptr_t)63);
    float **slots[6] = {&buf->h2, &buf->ht[0], &buf->ht[1], &buf->acc, &buf->tmp, &buf->tmpt};
    for (int i = 0; i < 6; i++) {
        *slots[i] = sizes[i] ? p : NULL;
        p += whole_lines(sizes[i]);
    }
    return 0;
}

/* Whether a step runs faster on one thread or split across `threads` is measured as the loops run:
 * a probe runs PROBE_STEPS steps on one thread, then PROBE_STEPS split, each timed, and the steps up
 * to the next probe take the faster (best step of each). The next probe comes PROBE_FIRST steps
 * later, twice as many (up to PROBE_LAST) each time the choice stays the same. The state carries
 * over from call to call on the calling thread (a model's layers and runs), so that a choice that
 * holds is probed rarely: on a loaded machine a split probe step can wait milliseconds for a pool
 * thread that another process keeps off its core, where a step takes tens of microseconds; on a
 * quiet machine the split wins. The choice cannot change the result: every thread count gives the
 * same bits. */
#define PROBE_STEPS 2
#define PROBE_FIRST 16
#define PROBE_LAST 1024

typedef struct {
    int split;             /* the last probe's choice */
    int phase;             /* the step within a probe, -1 between probes */
    Py_ssize_t interval, countdown;
    double best[2];        /* the probe's best step on one thread, split */
} Probe;

static _Thread_local Probe probe_state = {1, 0, PROBE_FIRST, 0, {0, 0}};
static int always_split; /* set_always_split(True): every step split, no probes (tests) */

/* The steps, h double-buffered (a step reads every unit of h while its ranges write theirs). Units
 * go to the pool in whole panels; `threads` < 2 runs them in one range. */
static void scan(Scan *s, Buffers *buf, float *h, int threads)
{
    const Py_ssize_t hid = s->hidden, n = s->n;
    /* y is zero past each sequence's end, in either direction */
    for (Py_ssize_t b = 0; b < n; b++)
        for (Py_ssize_t t = s->lens[b]; t < s->steps; t++)
            memset(s->y + ((t * s->directions + s->direction) * n + b) * hid, 0, (size_t)hid * sizeof(float));
    const int split_reset = s->gs->cell == CELL_GRU && !s->gs->linear_before_reset;
    float *hs[2] = {h, buf->h2};
    s->acc = buf->acc;
    s->tmp = buf->tmp;
    s->tmpt = buf->tmpt;
    s->reset_in = (Input){buf->tmp, buf->tmpt, buf->reset_bad};
    write_ht(s, h, buf->ht[0], 0, hid);
    s->taken = buf->taken;
    scanning = 1;
    Py_ssize_t cur = 0;
    Probe *pr = &probe_state;
    for (Py_ssize_t t = 0; t < s->steps; t++) {
        int active = 0;
        for (Py_ssize_t b = 0; b < n; b++) active |= s->lens[b] > t;
        if (!active) break;
        if (threads > 1 && !always_split && pr->phase < 0 && --pr->countdown <= 0) pr->phase = 0;
        const int probe = threads > 1 && !always_split && pr->phase >= 0;
        const int split = always_split || (probe ? pr->phase >= PROBE_STEPS : pr->split);
        const int use = split ? threads : 1;
        const double start = probe ? seconds() : 0;
        s->t = t;
        s->in = (Input){hs[cur], buf->ht[cur], buf->bad};
        s->h_out = hs[1 - cur];
        s->ht_out = buf->ht[1 - cur];
        if (buf->bad) count_bad(hs[cur], n, hid, buf->bad);
        run_step(s, step_units, use);
        if (split_reset) {
            if (buf->reset_bad) count_bad(buf->tmp, n, hid, buf->reset_bad);
            run_step(s, step_reset_units, use);
        }
        if (probe) {
            const double took = seconds() - start;
            if (pr->phase % PROBE_STEPS == 0 || took < pr->best[split]) pr->best[split] = took;
            if (++pr->phase == 2 * PROBE_STEPS) {
                const int choice = pr->best[1] < pr->best[0];
                pr->interval = choice == pr->split && pr->interval < PROBE_LAST ? 2 * pr->interval : PROBE_FIRST;
                pr->split = choice;
                pr->countdown = pr->interval;
                pr->phase = -1;
            }
        }
        cur = 1 - cur;
    }
    scanning = 0;
    if (cur) memcpy(h, hs[1], (size_t)(n * hid) * sizeof(float));
}

/* ---- the Python call ---- */

#define MAX_SIZE INT32_MAX

PyDoc_STRVAR(scan_doc,
"recurrent_scan(cell, xw, y, h, c, lens, direction, backwards, rt=None, indptr=None, indices=None,\n"
"               values=None, peephole=None, recurrent_bias=None, clip=None, input_forget=False,\n"
"               linear_before_reset=False, threads=1, input_bias=None) -> None\n\n"
"One direction of an ONNX LSTM, GRU or RNN (cell 'LSTM', 'GRU', 'RNN') with its default\n"
"activations. xw float32 [steps, n, gates * hidden]: the input projection of every step;\n"
"input_bias float32 [gates * hidden], added to each step's: both biases, W_b + R_b (a GRU with\n"
"linear_before_reset takes R_h's bias as recurrent_bias [hidden] instead). y float32\n"
"[steps, directions, n, hidden]: slot `direction` is written, zero past each sequence's end.\n"
"h (and c, LSTM only) float32 [n, hidden]: the initial states,\n"
"overwritten with the final ones. lens int64 [n]: each sequence's length (<= steps); backwards\n"
"reads each from its own last step. R: dense as rt [hidden, gates * hidden] (R transposed) or as\n"
"its unit-major panels [gates * units / 16, hidden, 16] (units: hidden rounded up to 16): panel\n"
"(u // 16) * gates + g holds rt's columns g * hidden + (u // 16) * 16 + 0..15, zeros past hidden,\n"
"the form the tiles read (rt is packed so on every call); or CSR [gates * hidden, hidden] as\n"
"indptr int64, indices int32, values float32. peephole [3 * hidden] (LSTM: i, o, f). clip: bound\n"
"of every gate's input, None for none. threads: how many threads of the native pool may share each\n"
"step's units (large calls only; each call times both and keeps the faster). Arrays C-contiguous;\n"
"the GIL is released for large calls.");

static int optional_array(PyObject *obj, Py_buffer *view, char kind, Py_ssize_t itemsize, Py_ssize_t count,
                          const char *what)
{
    if (obj == Py_None) return 0;
    if (get_array_of_rank(obj, view, kind, itemsize, 0, 0, what) < 0) return -1;
    if (count >= 0 && view->len / itemsize != count) {
        PyErr_Format(PyExc_ValueError, "%s must have %zd values, got %zd", what, count, view->len / itemsize);
        return -1;
    }
    return 0;
}

static PyObject *recurrent_scan(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"cell", "xw", "y", "h", "c", "lens", "direction", "backwards", "rt", "indptr", "indices",
                             "values", "peephole", "recurrent_bias", "clip", "input_forget", "linear_before_reset",
                             "threads", "input_bias", NULL};
    const char *cell_name;
    PyObject *xo, *yo, *ho, *co, *lo, *rto = Py_None, *po = Py_None, *io = Py_None, *vo = Py_None, *peo = Py_None,
             *rbo = Py_None, *clo = Py_None, *ibo = Py_None;
    Py_ssize_t direction;
    int backwards, input_forget = 0, lbr = 0, threads = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "sOOOOOnp|OOOOOOOppiO", kwlist, &cell_name, &xo, &yo, &ho, &co,
                                     &lo, &direction, &backwards, &rto, &po, &io, &vo, &peo, &rbo, &clo, &input_forget,
                                     &lbr, &threads, &ibo))
        return NULL;
    Gates gs = {0};
    int gates;
    if (!strcmp(cell_name, "LSTM")) gs.cell = CELL_LSTM, gates = 4;
    else if (!strcmp(cell_name, "GRU")) gs.cell = CELL_GRU, gates = 3;
    else if (!strcmp(cell_name, "RNN")) gs.cell = CELL_RNN, gates = 1;
    else {
        PyErr_Format(PyExc_ValueError, "cell must be 'LSTM', 'GRU' or 'RNN', got %s", cell_name);
        return NULL;
    }
    gs.input_forget = input_forget && gs.cell == CELL_LSTM;
    gs.linear_before_reset = lbr;
    gs.clip = -1.f;
    if (clo != Py_None) {
        double v = PyFloat_AsDouble(clo);
        if (v == -1.0 && PyErr_Occurred()) return NULL;
        if (!(v >= 0 && v <= 3.4e38)) {
            PyErr_SetString(PyExc_ValueError, "clip must be a non-negative finite number");
            return NULL;
        }
        gs.clip = (float)v;
    }
    Py_buffer xb = {0}, yb = {0}, hb = {0}, cb = {0}, lb = {0}, rtb = {0}, pb = {0}, ib = {0}, vb = {0}, peb = {0},
              rbb = {0}, ibb = {0};
    PyObject *result = NULL;
    float *packed = NULL;
    Buffers buf = {0};
    Weight w = {0};
    if (get_array_of_rank(xo, &xb, 'f', 4, 0, 1, "xw") < 0 || get_array_of_rank(yo, &yb, 'f', 4, 1, 1, "y") < 0 ||
        get_array_of_rank(ho, &hb, 'f', 4, 1, 1, "h") < 0 || get_array_of_rank(lo, &lb, 'i', 8, 0, 0, "lens") < 0)
        goto done;
    if (xb.ndim != 3 || yb.ndim != 4 || hb.ndim != 2) {
        PyErr_SetString(PyExc_ValueError, "xw must be 3-D, y 4-D and h 2-D");
        goto done;
    }
    const Py_ssize_t steps = xb.shape[0], n = xb.shape[1], gh = xb.shape[2], hid = gh / gates;
    if (steps > MAX_SIZE || n > MAX_SIZE || gh > MAX_SIZE || gh % gates) {
        PyErr_Format(PyExc_ValueError, "xw's sizes must be at most 2^31 - 1, the last a multiple of %d gates", gates);
        goto done;
    }
    const Py_ssize_t directions = yb.shape[1];
    if (yb.shape[0] != steps || yb.shape[2] != n || yb.shape[3] != hid || hb.shape[0] != n || hb.shape[1] != hid) {
        PyErr_SetString(PyExc_ValueError, "y must be [steps, directions, n, hidden] and h [n, hidden] to match xw");
        goto done;
    }
    if (direction < 0 || direction >= directions) {
        PyErr_Format(PyExc_ValueError, "direction %zd is outside 0..%zd", direction, directions - 1);
        goto done;
    }
    if (lb.len / 8 != n) {
        PyErr_Format(PyExc_ValueError, "lens must have %zd values", n);
        goto done;
    }
    const int64_t *lens = lb.buf;
    for (Py_ssize_t b = 0; b < n; b++) {
        if (lens[b] < 0 || lens[b] > steps) {
            PyErr_Format(PyExc_ValueError, "sequence length %lld is outside 0..%zd", (long long)lens[b], steps);
            goto done;
        }
    }
    if (gs.cell == CELL_LSTM) {
        if (get_array_of_rank(co, &cb, 'f', 4, 1, 1, "c") < 0) goto done;
        if (cb.ndim != 2 || cb.shape[0] != n || cb.shape[1] != hid) {
            PyErr_SetString(PyExc_ValueError, "c must be [n, hidden] to match xw");
            goto done;
        }
    } else if (co != Py_None || peo != Py_None) {
        PyErr_SetString(PyExc_ValueError, "c and peephole must be None for a GRU or RNN");
        goto done;
    }
    if (rbo != Py_None && !(gs.cell == CELL_GRU && lbr)) {
        PyErr_SetString(PyExc_ValueError, "recurrent_bias is for a GRU with linear_before_reset only");
        goto done;
    }
    if (optional_array(peo, &peb, 'f', 4, 3 * hid, "peephole") < 0 ||
        optional_array(rbo, &rbb, 'f', 4, hid, "recurrent_bias") < 0 ||
        optional_array(ibo, &ibb, 'f', 4, gh, "input_bias") < 0)
        goto done;
    gs.peephole = peb.buf;
    gs.recurrent_bias = rbb.buf;
    w.hidden = hid;
    w.gates = gates;
    w.units = (hid + PANEL_W - 1) / PANEL_W * PANEL_W;
    const Py_ssize_t panel_count = gates * (w.units / PANEL_W);
    const float *rt = NULL; /* R^T [hidden, gates * hidden] as given, to pack */
    if ((rto == Py_None) == (po == Py_None) || (po != Py_None && (io == Py_None || vo == Py_None))) {
        PyErr_SetString(PyExc_ValueError, "give R as rt or as the CSR arrays indptr, indices and values");
        goto done;
    }
    if (rto != Py_None) {
        if (get_array_of_rank(rto, &rtb, 'f', 4, 0, 1, "rt") < 0) goto done;
        if (rtb.ndim == 3 && rtb.shape[0] == panel_count && rtb.shape[1] == hid && rtb.shape[2] == PANEL_W) {
            w.panels = rtb.buf;
        } else if (rtb.ndim == 2 && rtb.shape[0] == hid && rtb.shape[1] == gh) {
            rt = rtb.buf;
        } else {
            PyErr_Format(PyExc_ValueError, "rt must be [%zd, %zd] (R transposed) or its panels [%zd, %zd, %d]", hid,
                         gh, panel_count, hid, PANEL_W);
            goto done;
        }
    } else {
        if (optional_array(po, &pb, 'i', 8, gh + 1, "indptr") < 0 ||
            optional_array(io, &ib, 'i', 4, -1, "indices") < 0 ||
            optional_array(vo, &vb, 'f', 4, ib.len / 4, "values") < 0) /* as many values as indices */
            goto done;
        w.indptr = pb.buf;
        w.indices = ib.buf;
        w.values = vb.buf;
        if (w.indptr[0] != 0 || w.indptr[gh] != ib.len / 4) {
            PyErr_Format(PyExc_ValueError, "indptr must run from 0 to the %zd stored values", ib.len / 4);
            goto done;
        }
        for (Py_ssize_t j = 0; j < gh; j++) {
            if (w.indptr[j + 1] < w.indptr[j]) {
                PyErr_Format(PyExc_ValueError, "indptr decreases at %zd", j);
                goto done;
            }
        }
        for (Py_ssize_t k = 0; k < ib.len / 4; k++) {
            if (w.indices[k] < 0 || w.indices[k] >= hid) {
                PyErr_Format(PyExc_ValueError, "index %d at entry %zd is outside 0..%zd", w.indices[k], k, hid - 1);
                goto done;
            }
        }
    }
    Py_ssize_t work = SIZE_PRODUCT(steps, n, gh, hid);
    if (SIZE_PRODUCT(n, gates, w.units) < 0 || SIZE_PRODUCT(panel_count, hid, PANEL_W) < 0 || work < 0) {
        PyErr_SetString(PyExc_ValueError, "sizes overflow");
        goto done;
    }
    if (n == 0 || hid == 0 || steps == 0) { /* nothing to compute; y has no values */
        result = Py_NewRef(Py_None);
        goto done;
    }
    if (rt) { /* R^T given: packed for this call, zeros past hidden */
        packed = PyMem_RawCalloc((size_t)(panel_count * hid * PANEL_W), sizeof(float));
        if (!packed) {
            PyErr_NoMemory();
            goto done;
        }
        for (Py_ssize_t k = 0; k < hid; k++)
            for (Py_ssize_t j = 0; j < gh; j++) {
                const Py_ssize_t g = j / hid, u = j % hid, p = (u / PANEL_W) * gates + g;
                packed[(p * hid + k) * PANEL_W + u % PANEL_W] = rt[k * gh + j];
            }
        w.panels = packed;
    }
    /* a pruned R at n > 1 reads h^T, 8 sequences a vector */
    const Py_ssize_t lanes = (n + 7) / 8 * 8, transposed = w.indptr && n > 1 ? hid * lanes : 0;
    const int split_reset = gs.cell == CELL_GRU && !lbr;
    const Py_ssize_t sizes[6] = {n * hid, transposed, transposed, n * gates * w.units, n * hid,
                                 split_reset ? transposed : 0};
    int failed = carve(&buf, sizes) < 0;
    /* a step worth splitting goes to up to `threads` threads, a part of whole panels each */
    if (work < RELEASE_GIL_MIN || SIZE_PRODUCT(n, gh, hid) < PARALLEL_MIN) threads = 1;
    const Py_ssize_t blocks = (hid + PANEL_W - 1) / PANEL_W;
    const Py_ssize_t shares = threads < 2 ? 1 : threads < blocks ? threads : blocks;
    buf.taken = PyMem_RawCalloc((size_t)shares, sizeof(share_flag));
    failed |= !buf.taken;
    if (!ibb.buf) failed |= !(buf.zero_bias = PyMem_RawCalloc((size_t)gh, sizeof(float)));
    if (w.indptr) {
        failed |= !(buf.bad = PyMem_RawMalloc((size_t)n * sizeof(Py_ssize_t)));
        if (split_reset) failed |= !(buf.reset_bad = PyMem_RawMalloc((size_t)n * sizeof(Py_ssize_t)));
    }
    if (failed) {
        PyErr_NoMemory();
        goto done;
    }
    Scan s = {.w = &w, .gs = &gs, .xw = xb.buf, .bias = ibb.buf ? ibb.buf : buf.zero_bias, .y = yb.buf, .c = cb.buf, .lens = lens, .steps = steps, .n = n,
              .hidden = hid, .directions = directions, .direction = direction, .lanes = lanes,
              .backwards = backwards, .shares = shares, .blocks = blocks};
    if (work >= RELEASE_GIL_MIN) {
        Py_BEGIN_ALLOW_THREADS
        scan(&s, &buf, hb.buf, threads);
        Py_END_ALLOW_THREADS
    } else {
        scan(&s, &buf, hb.buf, 1);
    }
    result = Py_NewRef(Py_None);
done:
    PyMem_RawFree(packed);
    void *scratch[] = {buf.block, buf.zero_bias, buf.bad, buf.reset_bad, (void *)buf.taken};
    for (size_t i = 0; i < sizeof scratch / sizeof *scratch; i++) PyMem_RawFree(scratch[i]);
    RELEASE_BUFFERS(&xb, &yb, &hb, &cb, &lb, &rtb, &pb, &ib, &vb, &peb, &rbb, &ibb);
    return result;
}

PyDoc_STRVAR(set_always_split_doc,
"set_always_split(always) -> bool\n\n"
"True: every step of a call with threads > 1 is split across the pool, without the timed probes\n"
"that otherwise choose between one thread and all (default False): for tests, which must reach the\n"
"split steps whatever the machine's load. Returns the previous value.");

static PyObject *set_always_split(PyObject *self, PyObject *arg) { return switch_flag(&always_split, arg); }

static PyMethodDef module_methods[] = {
    {"set_simd", set_simd, METH_O, set_simd_doc},
    {"set_avx512", set_avx512, METH_O, set_avx512_doc},
    {"set_always_split", set_always_split, METH_O, set_always_split_doc},
    {"recurrent_scan", (PyCFunction)(void (*)(void))recurrent_scan, METH_VARARGS | METH_KEYWORDS, scan_doc},
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_recurrent", "The compiled time-step loop of LSTM, GRU and RNN (see _recurrent.c).", -1,
    module_methods,
};

PyMODINIT_FUNC PyInit__recurrent(void)
{
    import_pool();
    return PyModule_Create(&module);
}
