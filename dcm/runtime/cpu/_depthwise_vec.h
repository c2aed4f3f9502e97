/* The depthwise kernel of _nhwc.c (depthwise_nhwc), written once for two vector widths: _nhwc.c includes
 * it with VEC __m512 (16 channels a vector, AVX-512) and with VEC __m256 (8 channels, AVX2 + FMA), the
 * macros VNAME, VTARGET, LANES, VMASK, VPART, VALL, VLOAD, VSTORE, VZERO, VFMA and VACT naming each
 * width's type, intrinsics and activation (see there; _vec_undef.h undefines them after each width);
 * VACT_STORED, where defined, applies the activations VACT leaves (all but Relu and Clip) to the stored
 * values (VCOUNT: the lanes of a mask). A vector's accumulators, weights and input fit either register
 * file: BLOCK accumulators, up to KERNEL_MAX weight vectors and one input vector are 16 registers. */


/* The activation of count x V accumulators (constants where inlined; acc[q * V + v]: pixel q,
 * vector v), stored at output pixels [ox, ox + count) of row oy, channels [k, k + LANES V). */
VTARGET static inline __attribute__((always_inline)) void
VNAME(store)(const Depthwise *p, Py_ssize_t s, Py_ssize_t oy, Py_ssize_t ox, Py_ssize_t k, VMASK m,
             const VEC *acc, const int count, const int V, const int whole)
{
    float *yp = p->y + ((s * p->oh + oy) * p->ow + ox) * p->c + k;
    UNROLL for (int q = 0; q < count; q++)
        UNROLL for (int v = 0; v < V; v++) {
            const VEC r = VACT(&p->act, acc[q * V + v]);
            VSTORE(whole, m, yp + q * p->c + LANES * v, r);
        }
#ifdef VACT_STORED
    if (p->act.kind > CONV_ACT_CLAMP) /* the activations VACT leaves, on the stored values (accumulators dead) */
        VACT_STORED(&p->act, yp, p->c, count, whole ? LANES * V : VCOUNT(m));
#endif
}

/* Output pixels [ox, ox + count) of row oy, sample s, channels [k, k + LANES V) (V vectors, whole, or
 * one with the mask m), kernel rows [i0, i1): count x V <= BLOCK accumulators in registers, each tap's
 * weight vector loaded once for the count pixels. Single pixels take V = 4 where they can: 4
 * independent chains of multiply-adds, not one waiting on each. checked: the columns may have taps
 * outside the row (border columns), skipped one by one. count, V, checked and whole are constants
 * where inlined. */
VTARGET static inline __attribute__((always_inline)) void
VNAME(pixels)(const Depthwise *p, Py_ssize_t s, Py_ssize_t oy, Py_ssize_t ox, Py_ssize_t k, VMASK m,
              Py_ssize_t i0, Py_ssize_t i1, const int count, const int V, const int checked, const int whole)
{
    const Py_ssize_t c = p->c, step = p->sw * c;
    VEC acc[BLOCK];
    UNROLL for (int v = 0; v < V; v++) {
        const VEC b = p->bias ? VLOAD(whole, m, p->bias + k + LANES * v) : VZERO();
        UNROLL for (int q = 0; q < count; q++) acc[q * V + v] = b;
    }
    for (Py_ssize_t i = i0; i < i1; i++) {
        const Py_ssize_t iy = oy * p->sh - p->pt + i * p->dh;
        const float *xr = p->x + (s * p->h + iy) * p->w_ * c + k, *wr = p->w + i * p->kw * c + k;
        for (Py_ssize_t j = 0; j < p->kw; j++) {
            const Py_ssize_t ix = ox * p->sw - p->pl + j * p->dw;
            if (checked && (ix < 0 || ix >= p->w_)) continue;
            const float *xp = xr + ix * c;
            UNROLL for (int v = 0; v < V; v++) {
                const VEC wv = VLOAD(whole, m, wr + j * c + LANES * v);
                UNROLL for (int q = 0; q < count; q++)
                    acc[q * V + v] = VFMA(wv, VLOAD(whole, m, xp + q * step + LANES * v), acc[q * V + v]);
            }
        }
    }
    VNAME(store)(p, s, oy, ox, k, m, acc, count, V, whole);
}

/* VNAME(pixels) for a kernel KW wide, horizontal stride SW and dilation 1 (all constants where
 * inlined): each input pixel of a kernel row is loaded once for all the taps that read it (3x3/1: 10
 * input loads for 24 multiply-adds, not 24), since the loads, not the multiply-adds, bound this loop.
 * checked: some of the run's input pixels may lie in the padding, and are skipped with all their
 * taps, so that border columns take the same register blocks. */
VTARGET static inline __attribute__((always_inline)) void
VNAME(pixels_fixed)(const Depthwise *p, Py_ssize_t s, Py_ssize_t oy, Py_ssize_t ox, Py_ssize_t k, VMASK m,
                    Py_ssize_t i0, Py_ssize_t i1, const int count, const int checked, const int whole, const int KW,
                    const int SW)
{
    const Py_ssize_t c = p->c;
    const VEC b = p->bias ? VLOAD(whole, m, p->bias + k) : VZERO();
    VEC acc[BLOCK], wv[KERNEL_MAX];
    UNROLL for (int q = 0; q < count; q++) acc[q] = b;
    for (Py_ssize_t i = i0; i < i1; i++) {
        const Py_ssize_t iy = oy * p->sh - p->pt + i * p->dh;
        const Py_ssize_t ix0 = ox * SW - p->pl;
        const float *xr = p->x + (s * p->h + iy) * p->w_ * c + k, *wr = p->w + i * KW * c + k;
        UNROLL for (int j = 0; j < KW; j++) wv[j] = VLOAD(whole, m, wr + j * c);
        UNROLL for (int t = 0; t < (count - 1) * SW + KW; t++) { /* input pixel t of the run */
            if (checked && (ix0 + t < 0 || ix0 + t >= p->w_)) continue;
            VEC xv = VLOAD(whole, m, xr + (ix0 + t) * c);
            __asm__("" : "+v"(xv)); /* one load in a register: GCC would fold it into each multiply-add */
            UNROLL for (int j = 0; j < KW; j++) /* output q = (t - j) / SW reads it through tap j */
                if (t >= j && (t - j) % SW == 0 && (t - j) / SW < count)
                    acc[(t - j) / SW] = VFMA(wv[j], xv, acc[(t - j) / SW]);
        }
    }
    VNAME(store)(p, s, oy, ox, k, m, acc, count, 1, whole);
}

/* Output pixels [ox, ox + count) of row oy, every channel vector in turn (the first and last ones
 * may be partial), so that the loads walk along the pixels' channels. count, checked, KW, SW:
 * constants where inlined; checked only with KW. */
VTARGET static inline __attribute__((always_inline)) void
VNAME(run)(const Depthwise *p, Py_ssize_t s, Py_ssize_t oy, Py_ssize_t ox, Py_ssize_t i0, Py_ssize_t i1,
           const int count, const int checked, const int KW, const int SW)
{
#define PIXELS(k, m, whole) (KW ? VNAME(pixels_fixed)(p, s, oy, ox, k, m, i0, i1, count, checked, whole, KW, SW) \
                             : VNAME(pixels)(p, s, oy, ox, k, m, i0, i1, count, 1, 0, whole))
    Py_ssize_t k = p->head;
    if (k) PIXELS(0, VPART(k), 0);
    for (; k + LANES <= p->c; k += LANES) PIXELS(k, VALL, 1);
    if (k < p->c) PIXELS(k, VPART(p->c - k), 0);
#undef PIXELS
}

/* VNAME(run) of a run that may reach into the padding (checked) or not. */
VTARGET static inline __attribute__((always_inline)) void
VNAME(fixed_run)(const Depthwise *p, Py_ssize_t s, Py_ssize_t oy, Py_ssize_t ox, Py_ssize_t i0, Py_ssize_t i1,
                 const int count, const int KW, const int SW)
{
    if (ox < p->inner0 || ox + count > p->inner1) VNAME(run)(p, s, oy, ox, i0, i1, count, 1, KW, SW);
    else VNAME(run)(p, s, oy, ox, i0, i1, count, 0, KW, SW);
}

/* One output pixel, all its channels: 4 vectors at a time, then 1 (the last one masked). */
VTARGET static inline __attribute__((always_inline)) void
VNAME(single)(const Depthwise *p, Py_ssize_t s, Py_ssize_t oy, Py_ssize_t ox, Py_ssize_t i0, Py_ssize_t i1,
              const int checked)
{
    Py_ssize_t k = p->head;
    if (k) VNAME(pixels)(p, s, oy, ox, 0, VPART(k), i0, i1, 1, 1, checked, 0);
    for (; k + 4 * LANES <= p->c; k += 4 * LANES) VNAME(pixels)(p, s, oy, ox, k, VALL, i0, i1, 1, 4, checked, 1);
    for (; k + LANES <= p->c; k += LANES) VNAME(pixels)(p, s, oy, ox, k, VALL, i0, i1, 1, 1, checked, 1);
    if (k < p->c) VNAME(pixels)(p, s, oy, ox, k, VPART(p->c - k), i0, i1, 1, 1, checked, 0);
}

/* One output row in runs of BLOCK pixels. KW (and SW) fixed: then runs of 4, 3 and 2 and at most one
 * single pixel (a 7x7 plane's rows took 0.6x the time as 4 + 3 than as 4 + 1 + 1 + 1), the runs covering
 * the border columns too; otherwise runs of 4, then single pixels, the border columns tap by tap. */
VTARGET static inline __attribute__((always_inline)) void
VNAME(row)(const Depthwise *p, Py_ssize_t s, Py_ssize_t oy, const int KW, const int SW)
{
    Py_ssize_t i0, i1, ox;
    valid_rows(p, oy, &i0, &i1);
    if (KW) {
        for (ox = 0; ox + BLOCK <= p->ow; ox += BLOCK) {
            const int last = ox + 2 * BLOCK > p->ow; /* the last whole run takes the row's rest */
            prefetch_next_rows(p, s, oy, ox * SW - p->pl, last ? p->w_ : (ox + BLOCK) * SW - p->pl);
            prefetch_next_out(p, s, oy, ox, last ? p->ow : ox + BLOCK);
            VNAME(fixed_run)(p, s, oy, ox, i0, i1, BLOCK, KW, SW);
        }
        if (ox == 0) { /* a row narrower than a run */
            prefetch_next_rows(p, s, oy, 0, p->w_);
            prefetch_next_out(p, s, oy, 0, p->ow);
        }
        if (p->ow - ox >= 4) {
            VNAME(fixed_run)(p, s, oy, ox, i0, i1, 4, KW, SW);
            ox += 4;
        }
        if (p->ow - ox == 3) VNAME(fixed_run)(p, s, oy, ox, i0, i1, 3, KW, SW);
        else if (p->ow - ox == 2) VNAME(fixed_run)(p, s, oy, ox, i0, i1, 2, KW, SW);
        else if (p->ow - ox == 1) VNAME(single)(p, s, oy, ox, i0, i1, ox < p->inner0 || ox >= p->inner1);
        return;
    }
    for (ox = p->inner0; ox + BLOCK <= p->inner1; ox += BLOCK) VNAME(run)(p, s, oy, ox, i0, i1, BLOCK, 0, 0, 0);
    if (p->inner1 - ox >= 4) {
        VNAME(run)(p, s, oy, ox, i0, i1, 4, 0, 0, 0);
        ox += 4;
    }
    for (; ox < p->inner1; ox++) VNAME(single)(p, s, oy, ox, i0, i1, 0);
    for (ox = 0; ox < p->inner0; ox++) VNAME(single)(p, s, oy, ox, i0, i1, 1);
    for (ox = p->inner1; ox < p->ow; ox++) VNAME(single)(p, s, oy, ox, i0, i1, 1);
}

/* Units u = sample * OH + output row. MobileNet's and EfficientNet's kernels (3x3 and 5x5, stride 1
 * or 2, dilation 1) and ConvNeXt's (7x7, stride 1) with their width and stride as constants, any other
 * with p's (ConvNeXt-atto's 7x7 layers took 2.6x the time on p's: 56x56x40 336 -> 130 us). */
VTARGET static void VNAME(depthwise)(void *ctx, Py_ssize_t lo, Py_ssize_t hi)
{
    const Depthwise *p = ctx;
    const int fixed = p->dw == 1 ? (int)(p->kw * 4 + p->sw) : 0; /* 4 kw + sw */
    for (Py_ssize_t u = lo; u < hi; u++) {
        const Py_ssize_t s = u / p->oh, oy = u % p->oh;
        switch (fixed) {
        case 3 * 4 + 1: VNAME(row)(p, s, oy, 3, 1); break;
        case 3 * 4 + 2: VNAME(row)(p, s, oy, 3, 2); break;
        case 5 * 4 + 1: VNAME(row)(p, s, oy, 5, 1); break;
        case 5 * 4 + 2: VNAME(row)(p, s, oy, 5, 2); break;
        case 7 * 4 + 1: VNAME(row)(p, s, oy, 7, 1); break;
        default: VNAME(row)(p, s, oy, 0, 0);
        }
    }
}
