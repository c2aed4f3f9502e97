/* dcm.runtime.cpu._recurrent: the time-step loop of LSTM, GRU and RNN (recurrent.py).
 *
 * recurrent_scan runs one direction of one layer: for each step, the recurrent product h @ R^T of
 * every sequence in the batch, added to that step's input projection (X @ W^T for all steps at once,
 * one BLAS or sparse product made by the caller, biases folded in), then the gates. R comes dense,
 * transposed [hidden, gates * hidden] (a step is then a sum of R's rows scaled by h, 8 outputs per
 * AVX2 register, up to three sequences sharing each load of R), or pruned, as CSR [gates * hidden,
 * hidden] (a dot product per row, AVX2 gathers of h).
 *
 * Why C: a step of a 256-wide LSTM is about a quarter of a million multiply-adds and a thousand
 * sigmoids; numpy spends as long again dispatching the dozen small array operations of the gates,
 * a hundred steps a layer. Here a step is one product and one pass over the gates, no allocation.
 *
 * exp is a polynomial (Cephes' expf) on the AVX2 path and libm on the portable one; sigmoid is
 * 1 / (1 + exp(-x)), tanh Cephes' odd polynomial below |x| 0.625 and 1 - 2 / (exp(2|x|) + 1) above,
 * so that both paths agree with numpy to a few ulp. Inputs are clamped to exp's range with the
 * operand order that keeps NaN, so NaN and Inf propagate as in the dense math; a pruned R's product
 * gives NaN wherever a dense one would (0 * Inf, 0 * NaN) although it skips the pruned weights.
 *
 * Every array's length is checked against the sizes read from the others, products of sizes made
 * with size_product, and a CSR weight is checked entry by entry (indptr monotone, indices in range)
 * before the loop, so that no call can read or write out of bounds.
 */
#include "_kernel_common.h"
#include <math.h>
#include <string.h>

#define RELEASE_GIL_MIN 32768 /* multiply-adds per call below which the GIL round trip costs more */

enum { CELL_RNN, CELL_GRU, CELL_LSTM };

typedef struct {
    const float *rt;                 /* dense R^T [hidden, rows], or NULL */
    const float *panels;             /* R^T as [rows / 8][hidden][8] (given, or packed from rt), or NULL */
    const int64_t *indptr;           /* CSR R [rows, hidden] */
    const int32_t *indices;
    const float *values;
    Py_ssize_t rows, hidden;
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

#ifdef HAVE_AVX2_PATH
/* Cephes' expf: exp(x) = 2^n * exp(r), |r| <= ln2 / 2, exp(r) a degree-7 polynomial. Above ln(FLT_MAX)
 * n is 128, whose bits make 2^n +Inf, as exp(Inf) is: sigmoid(-Inf) is then exactly 0, as numpy's. */
__attribute__((target("avx2,fma")))
static inline __m256 exp8(__m256 x)
{
    x = _mm256_min_ps(_mm256_set1_ps(88.8f), x); /* x second: a NaN x is kept */
    x = _mm256_max_ps(_mm256_set1_ps(-88.3762626647949f), x);
    __m256 fx = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 y = _mm256_set1_ps(1.9875691500E-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507E-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073E-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894E-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459E-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201E-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.f)));
    __m256i n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(n));
}

__attribute__((target("avx2,fma")))
static inline __m256 sigmoid8(__m256 x)
{
    __m256 one = _mm256_set1_ps(1.f);
    return _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), x))));
}

__attribute__((target("avx2,fma")))
static inline __m256 tanh8(__m256 x)
{
    __m256 sign = _mm256_and_ps(x, _mm256_set1_ps(-0.f));
    __m256 a = _mm256_andnot_ps(_mm256_set1_ps(-0.f), x);
    __m256 z = _mm256_mul_ps(x, x);
    __m256 p = _mm256_set1_ps(-5.70498872745E-3f);
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(2.06390887954E-2f));
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(-5.37397155531E-2f));
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(1.33314422036E-1f));
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(-3.33332819422E-1f));
    __m256 small = _mm256_fmadd_ps(_mm256_mul_ps(p, z), x, x);
    __m256 two = _mm256_set1_ps(2.f);
    __m256 large = _mm256_sub_ps(_mm256_set1_ps(1.f),
                                 _mm256_div_ps(two, _mm256_add_ps(exp8(_mm256_mul_ps(two, a)), _mm256_set1_ps(1.f))));
    large = _mm256_or_ps(large, sign);
    /* NaN compares false: it takes the polynomial branch, which keeps it */
    return _mm256_blendv_ps(small, large, _mm256_cmp_ps(a, _mm256_set1_ps(0.625f), _CMP_GE_OQ));
}

__attribute__((target("avx2,fma")))
static void sigmoid_avx2(float *v, Py_ssize_t n)
{
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(v + i, sigmoid8(_mm256_loadu_ps(v + i)));
    sigmoid_generic(v + i, n - i);
}

__attribute__((target("avx2,fma")))
static void tanh_avx2(float *v, Py_ssize_t n)
{
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(v + i, tanh8(_mm256_loadu_ps(v + i)));
    tanh_generic(v + i, n - i);
}
#endif

/* ---- the recurrent product: out[b, j - r0] = h[b] . R[j] for rows j in [r0, r1) ---- */

static void dense_generic(const Weight *w, const float *h, Py_ssize_t n, float *out, Py_ssize_t ld, Py_ssize_t r0,
                          Py_ssize_t r1)
{
    for (Py_ssize_t b = 0; b < n; b++) {
        float *o = out + b * ld;
        memset(o, 0, (size_t)(r1 - r0) * sizeof(float));
        for (Py_ssize_t k = 0; k < w->hidden; k++) {
            const float hk = h[b * w->hidden + k];
            if (w->rt) {
                const float *row = w->rt + k * w->rows + r0;
                for (Py_ssize_t j = 0; j < r1 - r0; j++) o[j] += hk * row[j];
            } else { /* panels only: ranges are whole panels */
                for (Py_ssize_t j = r0; j < r1; j++) o[j - r0] += hk * w->panels[((j / 8) * w->hidden + k) * 8 + j % 8];
            }
        }
    }
}

static void csr_generic(const Weight *w, const float *h, Py_ssize_t n, float *out, Py_ssize_t ld, Py_ssize_t r0,
                        Py_ssize_t r1)
{
    for (Py_ssize_t j = r0; j < r1; j++) {
        for (Py_ssize_t b = 0; b < n; b++) {
            const float *hb = h + b * w->hidden;
            float s = 0.f;
            for (int64_t k = w->indptr[j]; k < w->indptr[j + 1]; k++) s += w->values[k] * hb[w->indices[k]];
            out[b * ld + j - r0] = s;
        }
    }
}

#ifdef HAVE_AVX2_PATH
/* Columns [j, j + 8 * U) of up to NB (<= 3) sequences: each load of R serves all of them. From the
 * panels where there are: each tile then reads U sequential streams, where R^T's rows, a few KB
 * apart, fell on the same few L1 sets. */
#define DENSE_TILE(U, NB)                                                                          \
    __attribute__((target("avx2,fma"))) static inline void dense_tile_##U##_##NB(                  \
        const Weight *w, const float *h, float *out, Py_ssize_t ld, Py_ssize_t j)                  \
    {                                                                                              \
        __m256 acc[NB][U];                                                                         \
        for (int b = 0; b < NB; b++)                                                               \
            for (int u = 0; u < U; u++) acc[b][u] = _mm256_setzero_ps();                           \
        const float *col = w->panels ? w->panels + j * w->hidden : w->rt + j;                      \
        const Py_ssize_t step_k = w->panels ? 8 : w->rows, step_u = w->panels ? 8 * w->hidden : 8; \
        for (Py_ssize_t k = 0; k < w->hidden; k++, col += step_k) {                                \
            __m256 r[U];                                                                           \
            for (int u = 0; u < U; u++) r[u] = _mm256_loadu_ps(col + u * step_u);                  \
            for (int b = 0; b < NB; b++) {                                                         \
                __m256 hk = _mm256_broadcast_ss(h + b * w->hidden + k);                            \
                for (int u = 0; u < U; u++) acc[b][u] = _mm256_fmadd_ps(hk, r[u], acc[b][u]);      \
            }                                                                                      \
        }                                                                                          \
        for (int b = 0; b < NB; b++)                                                               \
            for (int u = 0; u < U; u++) _mm256_storeu_ps(out + b * ld + 8 * u, acc[b][u]);         \
    }
DENSE_TILE(8, 1)
DENSE_TILE(4, 1)
DENSE_TILE(4, 2)
DENSE_TILE(4, 3)
DENSE_TILE(1, 1)
DENSE_TILE(1, 3)

__attribute__((target("avx2,fma")))
static void dense_avx2(const Weight *w, const float *h, Py_ssize_t n, float *out, Py_ssize_t ld, Py_ssize_t r0,
                       Py_ssize_t r1)
{
    Py_ssize_t j = r0;
    if (n == 1) /* eight accumulators: two FMA units of four cycles' latency kept busy */
        for (; j + 64 <= r1; j += 64) dense_tile_8_1(w, h, out + j - r0, ld, j);
    for (; j + 32 <= r1; j += 32) {
        Py_ssize_t b = 0;
        for (; b + 3 <= n; b += 3) dense_tile_4_3(w, h + b * w->hidden, out + b * ld + j - r0, ld, j);
        if (n - b == 2) dense_tile_4_2(w, h + b * w->hidden, out + b * ld + j - r0, ld, j);
        if (n - b == 1) dense_tile_4_1(w, h + b * w->hidden, out + b * ld + j - r0, ld, j);
    }
    for (; j + 8 <= r1; j += 8) {
        Py_ssize_t b = 0;
        for (; b + 3 <= n; b += 3) dense_tile_1_3(w, h + b * w->hidden, out + b * ld + j - r0, ld, j);
        for (; b < n; b++) dense_tile_1_1(w, h + b * w->hidden, out + b * ld + j - r0, ld, j);
    }
    if (j < r1) dense_generic(w, h, n, out + j - r0, ld, j, r1);
}

__attribute__((target("avx2,fma")))
static void csr_avx2(const Weight *w, const float *h, Py_ssize_t n, float *out, Py_ssize_t ld, Py_ssize_t r0,
                     Py_ssize_t r1)
{
    for (Py_ssize_t j = r0; j < r1; j++) {
        const int64_t begin = w->indptr[j], end = w->indptr[j + 1];
        for (Py_ssize_t b = 0; b < n; b++) {
            const float *hb = h + b * w->hidden;
            __m256 acc = _mm256_setzero_ps();
            int64_t k = begin;
            for (; k + 8 <= end; k += 8) {
                __m256i idx = _mm256_loadu_si256((const __m256i *)(w->indices + k));
                acc = _mm256_fmadd_ps(_mm256_i32gather_ps(hb, idx, 4), _mm256_loadu_ps(w->values + k), acc);
            }
            __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
            s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
            float s = _mm_cvtss_f32(_mm_add_ss(s4, _mm_movehdup_ps(s4)));
            for (; k < end; k++) s += w->values[k] * hb[w->indices[k]];
            out[b * ld + j - r0] = s;
        }
    }
}
#endif

/* A pruned R skips the weights a dense product would multiply by an Inf or NaN of h (0 * Inf is
 * NaN): the rows that do not store a weight at every such position get NaN. */
static void csr_poison(const Weight *w, const float *h, Py_ssize_t n, float *out, Py_ssize_t ld, Py_ssize_t r0,
                       Py_ssize_t r1)
{
    for (Py_ssize_t b = 0; b < n; b++) {
        const float *hb = h + b * w->hidden;
        Py_ssize_t bad = 0;
        for (Py_ssize_t k = 0; k < w->hidden; k++) bad += !isfinite(hb[k]);
        if (!bad) continue;
        for (Py_ssize_t j = r0; j < r1; j++) {
            Py_ssize_t hits = 0;
            for (int64_t k = w->indptr[j]; k < w->indptr[j + 1]; k++) hits += !isfinite(hb[w->indices[k]]);
            if (hits < bad) out[b * ld + j - r0] = NAN;
        }
    }
}

static void product(const Weight *w, const float *h, Py_ssize_t n, float *out, Py_ssize_t ld, Py_ssize_t r0,
                    Py_ssize_t r1)
{
    if (w->rt || w->panels) {
        DISPATCH(dense, w, h, n, out, ld, r0, r1);
    } else {
        DISPATCH(csr, w, h, n, out, ld, r0, r1);
        csr_poison(w, h, n, out, ld, r0, r1);
    }
}

/* ---- the gates ---- */

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

static inline void sigmoid(float *v, Py_ssize_t n) { DISPATCH(sigmoid, v, n); }
static inline void tanh_(float *v, Py_ssize_t n) { DISPATCH(tanh, v, n); }

/* LSTM, gates i, o, f, c in g (input projection and recurrent product summed); c updated in place,
 * the new h written to h_out. tmp: [hidden]. */
static void lstm_gates(const Gates *gs, float *g, float *c, float *h_out, float *tmp, Py_ssize_t hid)
{
    float *gi = g, *go = g + hid, *gf = g + 2 * hid, *gc = g + 3 * hid;
    const float *p = gs->peephole;
    if (p) {
        for (Py_ssize_t j = 0; j < hid; j++) {
            gi[j] += p[j] * c[j];
            gf[j] += p[2 * hid + j] * c[j];
        }
        clip_range(gs, gi, hid);
        clip_range(gs, gf, 2 * hid);
        sigmoid(gi, hid);
        if (!gs->input_forget) sigmoid(gf, hid);
    } else {
        clip_range(gs, g, 4 * hid);
        sigmoid(g, gs->input_forget ? 2 * hid : 3 * hid);
    }
    tanh_(gc, hid);
    for (Py_ssize_t j = 0; j < hid; j++) c[j] = (gs->input_forget ? 1.f - gi[j] : gf[j]) * c[j] + gi[j] * gc[j];
    if (p) {
        for (Py_ssize_t j = 0; j < hid; j++) go[j] += p[hid + j] * c[j];
        clip_range(gs, go, hid);
        sigmoid(go, hid);
    }
    memcpy(tmp, c, (size_t)hid * sizeof(float));
    tanh_(tmp, hid);
    for (Py_ssize_t j = 0; j < hid; j++) h_out[j] = go[j] * tmp[j];
}

/* GRU's last part: candidate (pre-activation in cand) and h = (1 - z) * cand + z * h. */
static void gru_finish(const Gates *gs, const float *z, float *cand, float *h, Py_ssize_t hid)
{
    clip_range(gs, cand, hid);
    tanh_(cand, hid);
    for (Py_ssize_t j = 0; j < hid; j++) h[j] = (1.f - z[j]) * cand[j] + z[j] * h[j];
}

typedef struct {
    const float *xw;     /* [steps, n, gates * hidden], biases folded in */
    float *y;            /* [steps, directions, n, hidden] */
    float *h, *c;        /* [n, hidden] */
    const int64_t *lens; /* [n] */
    Py_ssize_t steps, n, hidden, directions, direction;
    int backwards;
} Scan;

static void scan(const Scan *s, const Weight *w, const Gates *gs, float *acc, float *tmp, float *tmp2)
{
    const Py_ssize_t hid = s->hidden, gh = w->rows, n = s->n;
    /* y is zero past each sequence's end, in either direction */
    for (Py_ssize_t b = 0; b < n; b++)
        for (Py_ssize_t t = s->lens[b]; t < s->steps; t++)
            memset(s->y + ((t * s->directions + s->direction) * n + b) * hid, 0, (size_t)hid * sizeof(float));
    const int split_reset = gs->cell == CELL_GRU && !gs->linear_before_reset; /* R_h waits for r * h */
    for (Py_ssize_t t = 0; t < s->steps; t++) {
        int active = 0;
        for (Py_ssize_t b = 0; b < n; b++) active |= s->lens[b] > t;
        if (!active) break;
        product(w, s->h, n, acc, gh, 0, split_reset ? 2 * hid : gh);
        for (Py_ssize_t b = 0; b < n; b++) {
            if (s->lens[b] <= t) continue; /* ended: its state stays */
            const Py_ssize_t at = s->backwards ? s->lens[b] - 1 - t : t;
            const float *x = s->xw + (at * n + b) * gh;
            float *g = acc + b * gh, *hb = s->h + b * hid;
            /* a GRU's candidate takes its input projection after the reset gate */
            for (Py_ssize_t j = 0; j < (gs->cell == CELL_GRU ? 2 * hid : gh); j++) g[j] += x[j];
            if (gs->cell == CELL_RNN) {
                clip_range(gs, g, hid);
                tanh_(g, hid);
                memcpy(hb, g, (size_t)hid * sizeof(float));
            } else if (gs->cell == CELL_LSTM) {
                lstm_gates(gs, g, s->c + b * hid, hb, tmp, hid);
            } else {
                clip_range(gs, g, 2 * hid);
                sigmoid(g, 2 * hid); /* z and r */
                if (split_reset) {
                    for (Py_ssize_t j = 0; j < hid; j++) tmp[b * hid + j] = g[hid + j] * hb[j];
                    continue; /* finished after R_h's product below */
                }
                const float *rb = gs->recurrent_bias;
                for (Py_ssize_t j = 0; j < hid; j++)
                    g[2 * hid + j] = x[2 * hid + j] + g[hid + j] * (g[2 * hid + j] + (rb ? rb[j] : 0.f));
                gru_finish(gs, g, g + 2 * hid, hb, hid);
            }
            memcpy(s->y + ((at * s->directions + s->direction) * n + b) * hid, hb, (size_t)hid * sizeof(float));
        }
        if (!split_reset) continue;
        product(w, tmp, n, tmp2, hid, 2 * hid, 3 * hid);
        for (Py_ssize_t b = 0; b < n; b++) {
            if (s->lens[b] <= t) continue;
            const Py_ssize_t at = s->backwards ? s->lens[b] - 1 - t : t;
            const float *x = s->xw + (at * n + b) * gh + 2 * hid;
            float *cand = tmp2 + b * hid, *hb = s->h + b * hid;
            for (Py_ssize_t j = 0; j < hid; j++) cand[j] += x[j];
            gru_finish(gs, acc + b * gh, cand, hb, hid);
            memcpy(s->y + ((at * s->directions + s->direction) * n + b) * hid, hb, (size_t)hid * sizeof(float));
        }
    }
}

/* ---- the Python call ---- */

#define MAX_SIZE INT32_MAX

PyDoc_STRVAR(scan_doc,
"recurrent_scan(cell, xw, y, h, c, lens, direction, backwards, rt=None, indptr=None, indices=None,\n"
"               values=None, peephole=None, recurrent_bias=None, clip=None, input_forget=False,\n"
"               linear_before_reset=False) -> None\n\n"
"One direction of an ONNX LSTM, GRU or RNN (cell 'LSTM', 'GRU', 'RNN') with its default\n"
"activations. xw float32 [steps, n, gates * hidden]: the input projection of every step with both\n"
"biases folded in (GRU: R_h's bias too unless linear_before_reset, which takes it as\n"
"recurrent_bias [hidden]). y float32 [steps, directions, n, hidden]: slot `direction` is written,\n"
"zero past each sequence's end. h (and c, LSTM only) float32 [n, hidden]: the initial states,\n"
"overwritten with the final ones. lens int64 [n]: each sequence's length (<= steps); backwards\n"
"reads each from its own last step. R: dense as rt [hidden, gates * hidden] (R transposed) or, where\n"
"gates * hidden is a multiple of 8, as its panels [gates * hidden / 8, hidden, 8] (rt's columns in\n"
"blocks of 8, the form the AVX2 tiles read; rt is packed so on every call), or CSR\n"
"[gates * hidden, hidden] as indptr int64, indices int32, values float32. peephole [3 * hidden]\n"
"(LSTM: i, o, f). clip: bound of every gate's input, None for none. Arrays C-contiguous; the GIL\n"
"is released for large calls.");

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
                             NULL};
    const char *cell_name;
    PyObject *xo, *yo, *ho, *co, *lo, *rto = Py_None, *po = Py_None, *io = Py_None, *vo = Py_None, *peo = Py_None,
             *rbo = Py_None, *clo = Py_None;
    Py_ssize_t direction;
    int backwards, input_forget = 0, lbr = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "sOOOOOnp|OOOOOOOpp", kwlist, &cell_name, &xo, &yo, &ho, &co, &lo,
                                     &direction, &backwards, &rto, &po, &io, &vo, &peo, &rbo, &clo, &input_forget,
                                     &lbr))
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
              rbb = {0};
    PyObject *result = NULL;
    float *acc = NULL, *tmp = NULL, *tmp2 = NULL, *packed = NULL;
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
        optional_array(rbo, &rbb, 'f', 4, hid, "recurrent_bias") < 0)
        goto done;
    gs.peephole = peb.buf;
    gs.recurrent_bias = rbb.buf;
    w.rows = gh;
    w.hidden = hid;
    if ((rto == Py_None) == (po == Py_None) || (po != Py_None && (io == Py_None || vo == Py_None))) {
        PyErr_SetString(PyExc_ValueError, "give R as rt or as the CSR arrays indptr, indices and values");
        goto done;
    }
    /* Panels must be whole in every product's row range: all of R, and a GRU's R_zr [2 * hidden]
     * (3 * hidden a multiple of 8 makes hidden one too). */
    const int panels_fit = gh % 8 == 0;
    if (rto != Py_None) {
        if (get_array_of_rank(rto, &rtb, 'f', 4, 0, 1, "rt") < 0) goto done;
        if (rtb.ndim == 3 && panels_fit && rtb.shape[0] == gh / 8 && rtb.shape[1] == hid && rtb.shape[2] == 8) {
            w.panels = rtb.buf;
        } else if (rtb.ndim == 2 && rtb.shape[0] == hid && rtb.shape[1] == gh) {
            w.rt = rtb.buf;
        } else {
            PyErr_Format(PyExc_ValueError, "rt must be [%zd, %zd] (R transposed)%s", hid, gh,
                         panels_fit ? " or its panels [rows / 8, hidden, 8]" : "");
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
    if (SIZE_PRODUCT(n, gh) < 0 || work < 0) {
        PyErr_SetString(PyExc_ValueError, "sizes overflow");
        goto done;
    }
    if (n == 0 || hid == 0 || steps == 0) { /* nothing to compute; y has no values */
        result = Py_NewRef(Py_None);
        goto done;
    }
    if (w.rt && use_avx2() && panels_fit) { /* R^T given: packed for this call */
        packed = PyMem_RawMalloc((size_t)(gh * hid) * sizeof(float));
        if (!packed) {
            PyErr_NoMemory();
            goto done;
        }
        for (Py_ssize_t k = 0; k < hid; k++)
            for (Py_ssize_t j = 0; j < gh; j++) packed[((j / 8) * hid + k) * 8 + j % 8] = w.rt[k * gh + j];
        w.panels = packed;
    }
    acc = PyMem_RawMalloc((size_t)(n * gh) * sizeof(float));
    tmp = PyMem_RawCalloc((size_t)(n * hid), sizeof(float));
    tmp2 = PyMem_RawMalloc((size_t)(n * hid) * sizeof(float));
    if (!acc || !tmp || !tmp2) {
        PyErr_NoMemory();
        goto done;
    }
    Scan s = {xb.buf, yb.buf, hb.buf, cb.buf, lens, steps, n, hid, directions, direction, backwards};
    if (work >= RELEASE_GIL_MIN) {
        Py_BEGIN_ALLOW_THREADS
        scan(&s, &w, &gs, acc, tmp, tmp2);
        Py_END_ALLOW_THREADS
    } else {
        scan(&s, &w, &gs, acc, tmp, tmp2);
    }
    result = Py_NewRef(Py_None);
done:
    PyMem_RawFree(packed);
    PyMem_RawFree(acc);
    PyMem_RawFree(tmp);
    PyMem_RawFree(tmp2);
    RELEASE_BUFFERS(&xb, &yb, &hb, &cb, &lb, &rtb, &pb, &ib, &vb, &peb, &rbb);
    return result;
}

static PyMethodDef module_methods[] = {
    {"set_simd", set_simd, METH_O, set_simd_doc},
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
