/* F(4x4, 3x3)'s input and output transforms on vectors of tiles (_native.c, "Winograd"), included
 * once per instruction set with VTARGET (its target attribute), VNAME (its functions' suffix), VEC
 * and VW (the vector type and its floats) and the V* operations defined; this file undefines them.
 * Defines wino4_input_<suffix> and wino4_output_<suffix>. */

/* WINO4_COLUMNS on vectors of VW tiles: f4, f5 are the next tile's f0, f1 (read from e + 4, of which
 * only those two of every 4 values: the row ends 2 values after the last tile's f3). */
#define WINO4_COLUMNS_VEC(e, vv, tw)                                                               \
    for (Py_ssize_t t = 0; t < (tw); t += VW) {                                                    \
        int count = (tw) - t < VW ? (int)((tw) - t) : VW;                                          \
        VEC f[4], g2[4], two = VSET1(2.f), four = VSET1(4.f), five = VSET1(5.f);                   \
        VDEINTERLEAVE4((e) + 4 * t, 4 * count, f);                                                 \
        VDEINTERLEAVE4((e) + 4 * t + 4, 4 * count - 2, g2);                                        \
        VEC f4 = g2[0], f5 = g2[1];                                                                \
        VSTORE((vv)[0] + t, count, VADD(VFMSUB(four, f[0], VMUL(five, f[2])), f4));                \
        VSTORE((vv)[1] + t, count, VFNMADD(four, VADD(f[1], f[2]), VADD(f[3], f4)));               \
        VSTORE((vv)[2] + t, count, VFMADD(four, VSUB(f[1], f[2]), VSUB(f4, f[3])));                \
        VSTORE((vv)[3] + t, count, VFMADD(two, VSUB(f[3], f[1]), VSUB(f4, f[2])));                 \
        VSTORE((vv)[4] + t, count, VFMADD(two, VSUB(f[1], f[3]), VSUB(f4, f[2])));                 \
        VSTORE((vv)[5] + t, count, VADD(VFMSUB(four, f[1], VMUL(five, f[3])), f5));                \
    }

/* WINO4_TILES on vectors of VW tiles (the ReLU as max(0, y): NaN stays NaN, as in the scalar code) */
#define WINO4_TILES_VEC(q, b, relu, rows, yw, tw)                                                  \
    for (Py_ssize_t t = 0; t < (tw); t += VW) {                                                    \
        int count = (tw) - t < VW ? (int)((tw) - t) : VW;                                          \
        VEC p[4][6], vb = VSET1(b), zero = VSET1(0.f);                                             \
        VEC two = VSET1(2.f), four = VSET1(4.f), eight = VSET1(8.f);                               \
        for (int j = 0; j < 6; j++) { /* A^T along the rows */                                     \
            VEC m0 = VLOAD((q)[j] + t, count), m1 = VLOAD((q)[6 + j] + t, count);                  \
            VEC m2 = VLOAD((q)[12 + j] + t, count), m3 = VLOAD((q)[18 + j] + t, count);            \
            VEC m4 = VLOAD((q)[24 + j] + t, count), m5 = VLOAD((q)[30 + j] + t, count);            \
            VEC s12 = VADD(m1, m2), d12 = VSUB(m1, m2), s34 = VADD(m3, m4), d34 = VSUB(m3, m4);    \
            p[0][j] = VADD(VADD(m0, s12), s34);                                                    \
            p[1][j] = VFMADD(two, d34, d12);                                                       \
            p[2][j] = VFMADD(four, s34, s12);                                                      \
            p[3][j] = VADD(VFMADD(eight, d34, d12), m5);                                           \
        }                                                                                          \
        for (int a = 0; a < 4; a++) { /* ... and along the columns */                              \
            const VEC *f = p[a];                                                                   \
            VEC s12 = VADD(f[1], f[2]), d12 = VSUB(f[1], f[2]), s34 = VADD(f[3], f[4]), d34 = VSUB(f[3], f[4]); \
            VEC y[4] = {VADD(vb, VADD(VADD(f[0], s12), s34)), VADD(vb, VFMADD(two, d34, d12)),     \
                        VADD(vb, VFMADD(four, s34, s12)), VADD(vb, VADD(VFMADD(eight, d34, d12), f[5]))}; \
            if (relu)                                                                              \
                for (int i = 0; i < 4; i++) y[i] = VMAX(zero, y[i]);                               \
            VINTERLEAVE4(y, (rows) + a * (yw) + 4 * t, count);                                     \
        }                                                                                          \
    }

__attribute__((target(VTARGET)))
static void VNAME(wino4_input)(const WinoGeometry *g, const float *x, float *v, float *rows, Py_ssize_t c0,
                               Py_ssize_t c1)
{
    WINO4_INPUT_BODY(WINO4_COLUMNS_VEC)
}

__attribute__((target(VTARGET)))
static void VNAME(wino4_output)(const WinoGeometry *g, const float *m, float *out, Py_ssize_t kk, Py_ssize_t oh,
                                Py_ssize_t ow, const float *bias, int relu, float *rows, Py_ssize_t k0,
                                Py_ssize_t k1)
{
    WINO4_OUTPUT_BODY(WINO4_TILES_VEC)
}

#undef WINO4_COLUMNS_VEC
#undef WINO4_TILES_VEC
#undef VTARGET
#undef VNAME
#undef VEC
#undef VW
#undef VSET1
#undef VADD
#undef VSUB
#undef VMUL
#undef VMAX
#undef VFMADD
#undef VFMSUB
#undef VFNMADD
#undef VLOAD
#undef VSTORE
#undef VDEINTERLEAVE4
#undef VINTERLEAVE4
