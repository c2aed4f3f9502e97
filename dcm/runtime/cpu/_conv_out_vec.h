/* The SIMD kernel of conv_nhwc_out (_nhwc.c, which describes the layout), written once for two vector
 * widths like _depthwise_vec.h and with its macros, plus: VBCAST (one float in every lane), VLOADM and
 * VSTOREM (a load with zeros off a mask, a store of a mask's lanes; plain where the mask is whole),
 * OUT_VECTORS (the most output-channel vectors a block holds), OUT_ACC and OUT_RUN(V) (the accumulators
 * a block of pixels may hold, and its pixels at V vectors), NHWC_ACC, NHWC_RUN_OF(V) and NHWC_TAIL_OF(V)
 * (the same for the channels-last runs, and the shorter run a row's last few pixels take). AVX-512 has 32
 * registers, AVX2 16: the blocks are sized so that accumulators, weight vectors and the broadcast input
 * fit either file. The weight's rows are 16 floats whole (C_out / groups rounded up to 16), a whole
 * number of vectors at either width. */

/* The accumulators' start for R pixels: group gi's bias over channels [k, k + LANES V) (mask m[v]), or
 * zeros. R and V are constants where inlined. */
VTARGET static inline __attribute__((always_inline)) void
VNAME(out_start)(const ConvOut *p, Py_ssize_t gi, Py_ssize_t k, const VMASK *m, VEC *acc, const int R, const int V)
{
    const float *bias = p->bias ? p->bias + gi * p->co + k : NULL;
    UNROLL for (int v = 0; v < V; v++) {
        const VEC b = bias ? VLOADM(m[v], bias + LANES * v) : VZERO();
        UNROLL for (int q = 0; q < R; q++) acc[q * V + v] = b;
    }
}

/* The activation of count x V accumulators (acc[q * V + v]: pixel q, vector v), stored at yp's pixels
 * [0, count) (co_all apart), channels [k, k + LANES V) of the group, mask m[v]; count may be a run-time
 * value (the pixels past it are not stored), V a constant where inlined. */
VTARGET static inline __attribute__((always_inline)) void
VNAME(out_store)(const ConvOut *p, float *yp, Py_ssize_t k, const VMASK *m, const VEC *acc, Py_ssize_t count,
                 const int R, const int V)
{
    UNROLL for (int q = 0; q < R; q++)
        if (q < count)
            UNROLL for (int v = 0; v < V; v++) VSTOREM(yp + q * p->co_all + LANES * v, m[v], VACT(&p->act, acc[q * V + v]));
#ifdef VACT_STORED
    if (p->act.kind > CONV_ACT_CLAMP) { /* the activations VACT leaves, on the stored values (accumulators dead) */
        const Py_ssize_t left = p->co - k;
        VACT_STORED(&p->act, yp, p->co_all, count, left < LANES * V ? left : LANES * V);
    }
#else
    (void)k;
#endif
}

/* Output pixels [ox, ox + count) of row oy, sample s, group gi's channels [k, k + LANES V), kernel rows
 * [i0, i1): count x V accumulators in registers through every (tap, input channel), each weight vector
 * loaded once for the count pixels and each input value broadcast once for the V vectors. SW: the
 * horizontal stride as a constant (0: p's). checked: some of the pixels' taps may fall outside the row,
 * skipped one by one. count, V, SW and checked are constants where inlined. */
VTARGET static inline __attribute__((always_inline)) void
VNAME(out_pixels)(const ConvOut *p, Py_ssize_t s, Py_ssize_t oy, Py_ssize_t ox, Py_ssize_t gi, Py_ssize_t k,
                  const VMASK *m, Py_ssize_t i0, Py_ssize_t i1, const int count, const int V, const int SW,
                  const int checked)
{
    const Window *g = &p->g;
    const Py_ssize_t sw = SW ? SW : g->sw, cp = p->cp, step = sw * p->xcol; /* step: the next pixel's input */
    VEC acc[OUT_ACC];
    VNAME(out_start)(p, gi, k, m, acc, count, V);
    for (Py_ssize_t i = i0; i < i1; i++) {
        /* x index of pixel ox's tap (i, 0), the group's input channel 0: before the row where that tap is
           in the padding (never read then) */
        const Py_ssize_t row = s * p->xs + (oy * g->sh - g->pt + i * g->dh) * p->xrow + (ox * sw - g->pl) * p->xcol
                               + gi * p->c * p->xc;
        const float *wp = p->w + (gi * g->kh + i) * g->kw * p->c * cp + k;
        for (Py_ssize_t j = 0; j < g->kw; j++) {
            const Py_ssize_t ix = ox * sw - g->pl + j * g->dw; /* pixel ox's input column */
            for (Py_ssize_t c = 0, at = row + j * g->dw * p->xcol; c < p->c; c++, at += p->xc, wp += cp) {
                VEC wv[OUT_VECTORS];
                UNROLL for (int v = 0; v < V; v++) wv[v] = VLOAD(1, VALL, wp + LANES * v);
                UNROLL for (int q = 0; q < count; q++) {
                    if (checked && (ix + q * sw < 0 || ix + q * sw >= g->w)) continue;
                    const VEC xv = VBCAST(p->x[at + q * step]);
                    UNROLL for (int v = 0; v < V; v++) acc[q * V + v] = VFMA(wv[v], xv, acc[q * V + v]);
                }
            }
        }
    }
    VNAME(out_store)(p, p->y + ((s * p->oh + oy) * p->ow + ox) * p->co_all + gi * p->co + k, k, m, acc, count,
                     count, V);
}

/* Group gi's channels [k, k + LANES V) of one output row. The interior columns in runs of OUT_RUN(V)
 * pixels (at most 12), then of 4 (fewer where a run is shorter), the last few as the run of 4 that ends
 * the interior (recomputing up to 3 pixels to the same bits) rather than single pixels, whose V chains
 * of multiply-adds each wait on the last; the border columns (1-3 a side in a stem) one by one with
 * their valid taps, since a checked run costs a test per pixel and tap (3x3/2 at 224: 10% of the
 * time). V and SW are constants where inlined. */
VTARGET static inline __attribute__((always_inline)) void
VNAME(out_row)(const ConvOut *p, Py_ssize_t s, Py_ssize_t oy, Py_ssize_t gi, Py_ssize_t k, const VMASK *m,
               Py_ssize_t i0, Py_ssize_t i1, const int V, const int SW)
{
    const int run = OUT_RUN(V), four = run < 4 ? run : 4;
    Py_ssize_t ox = p->inner0;
    for (; ox + run <= p->inner1; ox += run) VNAME(out_pixels)(p, s, oy, ox, gi, k, m, i0, i1, run, V, SW, 0);
    for (; ox + four <= p->inner1; ox += four) VNAME(out_pixels)(p, s, oy, ox, gi, k, m, i0, i1, four, V, SW, 0);
    if (ox < p->inner1 && p->inner1 - p->inner0 >= four)
        VNAME(out_pixels)(p, s, oy, p->inner1 - four, gi, k, m, i0, i1, four, V, SW, 0);
    else
        for (; ox < p->inner1; ox++) VNAME(out_pixels)(p, s, oy, ox, gi, k, m, i0, i1, 1, V, SW, 0);
    for (ox = 0; ox < p->inner0; ox++) VNAME(out_pixels)(p, s, oy, ox, gi, k, m, i0, i1, 1, V, SW, 1);
    for (ox = p->inner1; ox < p->ow; ox++) VNAME(out_pixels)(p, s, oy, ox, gi, k, m, i0, i1, 1, V, SW, 1);
}

/* Channels-last x, up to NHWC_RUN_VECTORS vectors of outputs, NHWC_RUN_MIN_INPUTS or more input channels
 * a group: output pixels [ox, ox + count) of row oy (count <= R), group gi's channels [k, k + LANES V),
 * computed as a run of R pixels whose taps in the padding, and pixels past count, read p->zeros instead
 * of x. No border pixel is left to a tap-by-tap path and no run recomputes pixels: a 7-wide row
 * (RegNet's 7x7 stage) is one run on AVX-512, where runs of 4 and single border pixels did the work of
 * 10 pixels (one layer, 1 thread: 400 channels in 25 groups at 7x7 0.10 -> 0.061 ms, 512 in 32 0.13 ->
 * 0.065, 256 in 16 at 14x14 0.159 -> 0.132). Runs of 12 for one vector were slower (7x7: 0.108 ms), and
 * so were these runs on 4 or 8 input channels a group (0.29 -> 0.38 ms, 0.29 -> 0.36). R, V, SW and CIN
 * (the input channels a group, 0: p's) are constants where inlined; CIN = 16 (RegNet's groups), the
 * channel loop straight-line code: 42-54 -> 50-62 GMAC/s on RegNetX-400MF's grouped layers (AVX-512).
 * CP (the weight's row, 0: p's) is 16 with it: the 16 weight rows are then constant offsets, where with
 * p's their offsets were spilled and reloaded per row (RegNetX-400MF's grouped layers at batch 1, one
 * thread, the sum of their profile: 1.83-1.86 -> 1.69-1.79 ms). */
VTARGET static inline __attribute__((always_inline)) void
VNAME(nhwc_run)(const ConvOut *p, Py_ssize_t s, Py_ssize_t oy, Py_ssize_t ox, Py_ssize_t count, Py_ssize_t gi,
                Py_ssize_t k, const VMASK *m, Py_ssize_t i0, Py_ssize_t i1, const int R, const int V, const int SW,
                const int CIN, const int CP)
{
    const Window *g = &p->g;
    const Py_ssize_t sw = SW ? SW : g->sw, cp = CP ? CP : p->cp, cin = CIN ? CIN : p->c;
    VEC acc[NHWC_ACC];
    VNAME(out_start)(p, gi, k, m, acc, R, V);
    for (Py_ssize_t i = i0; i < i1; i++) {
        const float *row = p->x + s * p->xs + (oy * g->sh - g->pt + i * g->dh) * p->xrow + gi * p->c;
        const float *wp = p->w + (gi * g->kh + i) * g->kw * p->c * cp + k;
        for (Py_ssize_t j = 0; j < g->kw; j++, wp += p->c * cp) {
            const float *px[NHWC_RUN];
            UNROLL for (int q = 0; q < R; q++) {
                const Py_ssize_t ix = (ox + q) * sw - g->pl + j * g->dw;
                px[q] = q < count && ix >= 0 && ix < g->w ? row + ix * p->xcol : p->zeros;
            }
#pragma GCC unroll 16
            for (Py_ssize_t c = 0; c < cin; c++) {
                VEC wv[NHWC_RUN_VECTORS];
                UNROLL for (int v = 0; v < V; v++) wv[v] = VLOAD(1, VALL, wp + c * cp + LANES * v);
                UNROLL for (int q = 0; q < R; q++) {
                    const VEC xv = VBCAST(px[q][c]);
                    UNROLL for (int v = 0; v < V; v++) acc[q * V + v] = VFMA(wv[v], xv, acc[q * V + v]);
                }
            }
        }
    }
    VNAME(out_store)(p, p->y + ((s * p->oh + oy) * p->ow + ox) * p->co_all + gi * p->co + k, k, m, acc, count, R,
                     V);
}

/* One output row of group gi's channels [k, k + LANES V) as channels-last runs: NHWC_RUN_OF(V) pixels a
 * run, the row's last pixels a run of NHWC_TAIL_OF(V) where they fit one (AVX2's runs of 6 would do a
 * 7-wide row as 12 pixels' work, 6 + 3 with it). The group's 16 inputs into 16 outputs (one weight row
 * of whole vectors) with CIN and CP constant. V and SW are constants where inlined. */
VTARGET static inline __attribute__((always_inline)) void
VNAME(nhwc_row)(const ConvOut *p, Py_ssize_t s, Py_ssize_t oy, Py_ssize_t gi, Py_ssize_t k, const VMASK *m,
                Py_ssize_t i0, Py_ssize_t i1, const int V, const int SW)
{
    const int R = NHWC_RUN_OF(V), T = NHWC_TAIL_OF(V);
    const int sixteen = LANES * V == 16 && p->c == 16 && p->cp == 16;
    for (Py_ssize_t ox = 0; ox < p->ow; ox += R) {
        const Py_ssize_t count = p->ow - ox < R ? p->ow - ox : R;
        if (T < R && count <= T) {
            if (sixteen) VNAME(nhwc_run)(p, s, oy, ox, count, gi, k, m, i0, i1, T, V, SW, 16, 16);
            else VNAME(nhwc_run)(p, s, oy, ox, count, gi, k, m, i0, i1, T, V, SW, 0, 0);
        } else if (sixteen) VNAME(nhwc_run)(p, s, oy, ox, count, gi, k, m, i0, i1, R, V, SW, 16, 16);
        else VNAME(nhwc_run)(p, s, oy, ox, count, gi, k, m, i0, i1, R, V, SW, 0, 0);
    }
}

/* Units u = sample * OH + output row, group by group, in blocks of up to OUT_VECTORS vectors of a group's
 * output channels; strides 1 and 2 as constants. */
VTARGET static void VNAME(conv_out)(void *ctx, Py_ssize_t lo, Py_ssize_t hi)
{
    const ConvOut *p = ctx;
    const int stride = p->g.sw == 1 || p->g.sw == 2 ? (int)p->g.sw : 0;
    const int runs = p->zeros && p->c >= NHWC_RUN_MIN_INPUTS;
    for (Py_ssize_t u = lo; u < hi; u++) {
        const Py_ssize_t s = u / p->oh, oy = u % p->oh;
        Py_ssize_t i0, i1;
        valid_taps(oy * p->g.sh - p->g.pt, p->g.kh, p->g.dh, p->g.h, &i0, &i1);
        for (Py_ssize_t gi = 0; gi < p->groups; gi++)
        for (Py_ssize_t k = 0; k < p->co; k += LANES * OUT_VECTORS) {
            VMASK m[OUT_VECTORS];
            int V = 0;
            for (; V < OUT_VECTORS && k + LANES * V < p->co; V++) {
                const Py_ssize_t left = p->co - k - LANES * V;
                m[V] = left >= LANES ? VALL : VPART(left);
            }
            for (int v = V; v < OUT_VECTORS; v++) m[v] = VALL; /* not read */
/* The (V, SW) instances up to 3 vectors, SW 1, 2 or 0 (p's), for a switch on V * 4 + stride */
#define UP_TO_3_VECTORS(F)                                                                                   \
    case 1 * 4 + 1: F(1, 1); break;                                                                          \
    case 1 * 4 + 2: F(1, 2); break;                                                                          \
    case 1 * 4 + 0: F(1, 0); break;                                                                          \
    case 2 * 4 + 1: F(2, 1); break;                                                                          \
    case 2 * 4 + 2: F(2, 2); break;                                                                          \
    case 2 * 4 + 0: F(2, 0); break;                                                                          \
    case 3 * 4 + 1: F(3, 1); break;                                                                          \
    case 3 * 4 + 2: F(3, 2); break;                                                                          \
    case 3 * 4 + 0: F(3, 0); break;
#define RUNS(V, SW) VNAME(nhwc_row)(p, s, oy, gi, k, m, i0, i1, V, SW)
#define ROW(V, SW) VNAME(out_row)(p, s, oy, gi, k, m, i0, i1, V, SW)
            if (runs && V <= NHWC_RUN_VECTORS) {
                switch (V * 4 + stride) { UP_TO_3_VECTORS(RUNS) }
                continue;
            }
            switch (V * 4 + stride) {
            UP_TO_3_VECTORS(ROW)
#if OUT_VECTORS > 3
            case 4 * 4 + 1: ROW(4, 1); break;
            case 4 * 4 + 2: ROW(4, 2); break;
            default: ROW(4, 0);
#endif
            }
#undef ROW
#undef RUNS
#undef UP_TO_3_VECTORS
        }
    }
}
