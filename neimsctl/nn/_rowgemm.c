/* One row through a stack of bfloat16 linear layers, summed the way oneDNN sums a batch
 * (neimsctl/nn/rowgemm.py; the student stack's single-molecule path).
 *
 *   usable()                  True when this CPU has AVX512-BF16 (else gemm() is not available)
 *   gemm(x, w, bias, out, n[, streams[, scales]])
 *                             out[s, j] = bf16(sum_k x[s, k] w[s, k, j] + bias[s, j]), j < n; with
 *                             streams (int64, one per row of x, or None), row r through stream
 *                             streams[r]; with scales (float32 (S, ceil(n/16)*16)), w holds int8
 *                             codes in the same layout and w[s, k, j] = bf16(code * scales[s, j])
 *
 * Arguments are uint16 bit patterns of bfloat16 values, C-contiguous: x (R, K), bias (S, n),
 * out (R, n) written (R = S without streams), and w (S, P) the weights packed by rowgemm.pack():
 * per stream, tiles of up to 128 output columns (the last one narrower, a multiple of 16,
 * zero-padded), each tile
 * K/2 rows of (columns x 2) values, the pair (w[2p, j], w[2p + 1, j]) side by side, so that
 * one VDPBF16PS adds x[2p + 1] w[2p + 1, j] and then x[2p] w[2p, j] to column j's float32 sum.
 *
 * The order of the sums is oneDNN's for a bfloat16 matrix product on AVX512-BF16 (measured
 * against torch.baddbmm, BENCHMARKS.md session 31): per chunk of 512 k, a sum from zero over
 * the pairs in order (odd element first, as the instruction does), the chunks' sums added in
 * order, the bias added in float32 last, rounded to bfloat16 by VCVTNEPS2BF16. Every product
 * of two bfloat16 values is exact in float32, so the same order gives the same bits; the
 * caller checks that it does on this machine before using it (rowgemm.agrees()).
 *
 *   sparse(cols, vals, tables, biases, out)
 *                             k students' sparse-input layers (SparseInputLinear: embedding_bag of
 *                             the molecule's non-zero inputs, plus the bias) on one molecule, each
 *                             reading its own table, with torch's sums and roundings here (see
 *                             sparse_rows; checked by rowgemm.sparse_agrees() before use)
 *   frag_mix(x, w, bias, mix, out)
 *                             the student's fragment path for k students at once: each one's
 *                             Conv1d(2, C, KW, padding=KW // 2) of the fragment rows x, times its
 *                             mix weights, summed over the C channels, in the order and with the
 *                             roundings torch's bf16 kernels use (see frag_mix_rows; checked by
 *                             rowgemm.frag_agrees() before use)
 *
 * No Python objects are touched while the GIL is released. Built by setup.py as an optional
 * extension: without a compiler, or on a CPU without AVX512-BF16, torch.baddbmm does the work.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define TILE 128       /* output columns per tile: 8 vectors of 16 float32 sums */
#define CHUNK 512      /* k per partial sum, as oneDNN blocks K */

static inline float bf16_value(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t bf16_round(float f) {       /* round to nearest even, as torch does */
    if (f != f) return 0x7FC0;
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

#if defined(__x86_64__) && defined(__GNUC__)
#define HAVE_BF16 1
#include <immintrin.h>

#define TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

/* the bf16 values at p under the mask m (16 at most), widened to float32, the rest zero */
TARGET static inline __m512 load_bf16(const uint16_t *p, __mmask16 m) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
}

/* 32 weights (16 columns x a pair of k) at w + i * 32 as bf16: stored so (Q = 0), or int8
 * codes times their columns' scales in float32, rounded to bf16 (Q = 1: the model's own
 * bf16(float(code) * scale), exactly; slo/shi hold each column's scale twice, columns 0-7 and
 * 8-15 of the vector) */
TARGET static inline __m512bh load_w(const int Q, const void *w, Py_ssize_t i, __m512 slo, __m512 shi) {
    if (!Q) return (__m512bh)_mm512_loadu_si512((const void *)((const uint16_t *)w + i * 32));
    const int8_t *p = (const int8_t *)w + i * 32;
    __m512 lo = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const void *)p))), slo);
    __m512 hi = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const void *)(p + 16)))), shi);
    return _mm512_cvtne2ps_pbh(hi, lo);
}

TARGET static inline void tile_v(const int Q, const int V, const uint16_t *x, const void *w, const float *scale,
                                 const uint16_t *bias, uint16_t *out, Py_ssize_t K, Py_ssize_t cols) {
    __m512 tot[8], acc[8], slo[8], shi[8];
    for (int v = 0; v < V; v++) {
        tot[v] = slo[v] = shi[v] = _mm512_setzero_ps();
        if (Q) {
            __m512 sv = _mm512_loadu_ps(scale + v * 16);
            slo[v] = _mm512_permutexvar_ps(_mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0), sv);
            shi[v] = _mm512_permutexvar_ps(_mm512_set_epi32(15, 15, 14, 14, 13, 13, 12, 12, 11, 11, 10, 10, 9, 9, 8, 8), sv);
        }
    }
    for (Py_ssize_t c0 = 0; c0 < K; c0 += CHUNK) {
        for (int v = 0; v < V; v++) acc[v] = _mm512_setzero_ps();
        Py_ssize_t c1 = c0 + CHUNK < K ? c0 + CHUNK : K;
        for (Py_ssize_t k = c0; k < c1; k += 2) {
            uint32_t pair;
            memcpy(&pair, x + k, 4);
            __m512bh a = (__m512bh)_mm512_set1_epi32((int)pair);
            Py_ssize_t i = k / 2 * V;
            for (int v = 0; v < V; v++) acc[v] = _mm512_dpbf16_ps(acc[v], a, load_w(Q, w, i + v, slo[v], shi[v]));
        }
        for (int v = 0; v < V; v++) tot[v] = c0 == 0 ? acc[v] : _mm512_add_ps(tot[v], acc[v]);
    }
    for (int v = 0; v < V; v++) {
        Py_ssize_t j = (Py_ssize_t)v * 16;
        if (j >= cols) break;
        __mmask16 m = cols - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (cols - j)) - 1u);
        __m256bh r = _mm512_cvtneps_pbh(_mm512_add_ps(tot[v], load_bf16(bias + j, m)));
        _mm256_mask_storeu_epi16(out + j, m, (__m256i)r);
    }
}

/* one tile of V vectors, bf16 or int8 weights, with V and Q constants: the compiler keeps the
 * sums in registers */
typedef void (*tile_fn)(const uint16_t *, const void *, const float *, const uint16_t *, uint16_t *, Py_ssize_t,
                        Py_ssize_t);
#define TILE_FN(Q_, V_) \
    TARGET static void tile_##Q_##_##V_(const uint16_t *x, const void *w, const float *scale, const uint16_t *bias, \
                                        uint16_t *out, Py_ssize_t K, Py_ssize_t cols) { \
        tile_v(Q_, V_, x, w, scale, bias, out, K, cols); \
    }
TILE_FN(0, 1) TILE_FN(0, 2) TILE_FN(0, 3) TILE_FN(0, 4) TILE_FN(0, 5) TILE_FN(0, 6) TILE_FN(0, 7) TILE_FN(0, 8)
TILE_FN(1, 1) TILE_FN(1, 2) TILE_FN(1, 3) TILE_FN(1, 4) TILE_FN(1, 5) TILE_FN(1, 6) TILE_FN(1, 7) TILE_FN(1, 8)
static const tile_fn TILES[2][9] = {
    {NULL, tile_0_1, tile_0_2, tile_0_3, tile_0_4, tile_0_5, tile_0_6, tile_0_7, tile_0_8},
    {NULL, tile_1_1, tile_1_2, tile_1_3, tile_1_4, tile_1_5, tile_1_6, tile_1_7, tile_1_8},
};

/* out[m, j] = bf16(half_up(sum_i vals[i] tables[m][cols[i], j]) + bias[m][j]): the rows of the
 * non-zero inputs, each times its value, summed in order in float32 from zero, rounded to bf16
 * with ties away from zero (as torch's embedding_bag does it here, through fbgemm), then the
 * bias added in float32 and rounded to nearest even (torch's bf16 add) */
TARGET static void sparse_rows(const int64_t *cols, const uint16_t *vals, Py_ssize_t nnz, const uint16_t *const *tables,
                               const uint16_t *const *biases, uint16_t *out, Py_ssize_t k, Py_ssize_t D, float *acc) {
    for (Py_ssize_t m = 0; m < k; m++) {
        for (Py_ssize_t j = 0; j < D; j++) acc[j] = 0.0f;
        for (Py_ssize_t i = 0; i < nnz; i++) {
            __m512 w = _mm512_set1_ps(bf16_value(vals[i]));
            const uint16_t *row = tables[m] + cols[i] * D;
            for (Py_ssize_t j = 0; j < D; j += 16) {
                __mmask16 mk = D - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (D - j)) - 1u);
                __m512 r = load_bf16(row + j, mk);
                __m512 a = _mm512_maskz_loadu_ps(mk, acc + j);
                _mm512_mask_storeu_ps(acc + j, mk, _mm512_add_ps(a, _mm512_mul_ps(w, r)));   /* product exact */
            }
        }
        for (Py_ssize_t j = 0; j < D; j++) {
            uint32_t u;
            memcpy(&u, &acc[j], 4);
            uint32_t h = (u + 0x8000u) & 0xFFFF0000u;
            float half;
            memcpy(&half, &h, 4);
            if (acc[j] != acc[j]) half = acc[j];
            out[m * D + j] = bf16_round(half + bf16_value(biases[m][j]));
        }
    }
}

static int bf16_usable(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
}

/* row r of x and out through stream streams[r] (r itself without streams) of w and bias; w of
 * bf16 values, or of int8 codes with scale (S, npad) the columns' scales */
static void gemm_rows(const uint16_t *x, const void *w, const float *scale, const uint16_t *bias, uint16_t *out,
                      Py_ssize_t R, Py_ssize_t K, Py_ssize_t n, const int64_t *streams) {
    Py_ssize_t npad = (n + 15) / 16 * 16;
    int q = scale != NULL;
    for (Py_ssize_t r = 0; r < R; r++) {
        Py_ssize_t s = streams ? (Py_ssize_t)streams[r] : r;
        const char *ws = (const char *)w + (s * npad * K) * (q ? 1 : 2);
        for (Py_ssize_t t0 = 0; t0 < npad; t0 += TILE) {
            Py_ssize_t width = npad - t0 < TILE ? npad - t0 : TILE;
            TILES[q][width / 16](x + r * K, ws + (t0 * K) * (q ? 1 : 2), q ? scale + s * npad + t0 : NULL,
                                 bias + s * n + t0, out + r * n + t0, K, n - t0);
        }
    }
}
#endif

/* VDPBF16PS's handling of subnormals (oneDNN's convolution uses it): subnormal inputs read as
 * zero (DAZ), subnormal results written as zero (FTZ), the sign kept */
static inline float bf16_daz(uint16_t b) { return (b & 0x7F80u) ? bf16_value(b) : bf16_value(b & 0x8000u); }

static inline float ftz(float f) { return fabsf(f) < FLT_MIN ? copysignf(0.0f, f) : f; }

/* out[m, t] = sum_c bf16(conv_mc[t] * mix[m, c]) (c in order, from 0), bf16; conv_mc[t] =
 * bf16(sum_kw (x[1, t + kw - h] w[m, c, 1, kw] + x[0, t + kw - h] w[m, c, 0, kw]) + bias[m, c]),
 * kw in order, the odd input channel first (oneDNN's VDPBF16PS over the channel pair, with its
 * subnormals read and written as zero), zero
 * padding (h = KW / 2): what Conv1d(2, C, KW, padding=KW//2) in bf16 and then
 * (conv * mix[..., None]).sum(1) give. xp: the two rows with h zeros either side. */
static void frag_mix_rows(const float *xp, const uint16_t *w, const uint16_t *bias, const uint16_t *mix,
                          uint16_t *out, Py_ssize_t k, Py_ssize_t C, Py_ssize_t KW, Py_ssize_t L, float *acc,
                          float *sum) {
    Py_ssize_t Lp = L + KW - 1;
    for (Py_ssize_t m = 0; m < k; m++) {
        for (Py_ssize_t t = 0; t < L; t++) sum[t] = 0.0f;
        for (Py_ssize_t c = 0; c < C; c++) {
            const uint16_t *wc = w + (m * C + c) * 2 * KW;
            for (Py_ssize_t t = 0; t < L; t++) acc[t] = 0.0f;
            for (Py_ssize_t kw = 0; kw < KW; kw++) {
                float w1 = bf16_daz(wc[KW + kw]), w0 = bf16_daz(wc[kw]);
                const float *x1 = xp + Lp + kw, *x0 = xp + kw;
                for (Py_ssize_t t = 0; t < L; t++) {     /* products of two bf16: exact */
                    acc[t] = ftz(acc[t] + x1[t] * w1);
                    acc[t] = ftz(acc[t] + x0[t] * w0);
                }
            }
            float b = bf16_value(bias[m * C + c]), mx = bf16_value(mix[m * C + c]);
            for (Py_ssize_t t = 0; t < L; t++) {
                float conv = bf16_value(bf16_round(acc[t] + b));
                sum[t] = sum[t] + bf16_value(bf16_round(conv * mx));
            }
        }
        for (Py_ssize_t t = 0; t < L; t++) out[m * L + t] = bf16_round(sum[t]);
    }
}

/* a C-contiguous buffer of ndim dimensions and items of one of the struct formats fmts */
static int get_buf(const char *fn, PyObject *o, Py_buffer *b, const char *fmts, Py_ssize_t itemsize, int ndim,
                   int writable, const char *name, const char *kind) {
    if (PyObject_GetBuffer(o, b, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) != 0)
        return -1;
    if (b->itemsize != itemsize || b->ndim != ndim || !b->format || !b->format[0] || b->format[1] ||
        !strchr(fmts, b->format[0])) {
        PyErr_Format(PyExc_ValueError, "%s: %s must be a C-contiguous %d-d array of %s", fn, name, ndim, kind);
        PyBuffer_Release(b);
        return -1;
    }
    return 0;
}

/* do two buffers share any byte? */
static int overlaps(const Py_buffer *a, const Py_buffer *b) {
    const char *a0 = a->buf, *b0 = b->buf;
    return a->len > 0 && b->len > 0 && a0 < b0 + b->len && b0 < a0 + a->len;
}

static PyObject *py_usable(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
#ifdef HAVE_BF16
    return PyBool_FromLong(bf16_usable());
#else
    Py_RETURN_FALSE;
#endif
}

static PyObject *py_gemm(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *objs[6] = {NULL, NULL, NULL, NULL, Py_None, Py_None};
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "OOOOn|OO", &objs[0], &objs[1], &objs[2], &objs[3], &n, &objs[4], &objs[5]))
        return NULL;
#ifdef HAVE_BF16
    if (!bf16_usable()) {
        PyErr_SetString(PyExc_RuntimeError, "gemm: this CPU has no AVX512-BF16");
        return NULL;
    }
    int q = objs[5] != Py_None, have_streams = objs[4] != Py_None;
    /* x, w, bias, out, streams, scales */
    const char *names[6] = {"x", q ? "w (int8 codes)" : "w", "bias", "out", "streams", "scales"};
    const char *fmts[6] = {"Hh", q ? "b" : "Hh", "Hh", "Hh", "lq", "f"};
    const Py_ssize_t sizes[6] = {2, q ? 1 : 2, 2, 2, 8, 4};
    const int dims[6] = {2, 2, 2, 2, 1, 2};
    const char *bf = "bfloat16 bit patterns (16-bit integers)";
    const char *kinds[6] = {bf, q ? "int8" : bf, bf, bf, "int64", "float32"};
    Py_buffer b[6];
    int held[6] = {0}, ok = 1;
    for (int i = 0; i < 6 && ok; i++) {
        if (i >= 4 && objs[i] == Py_None) continue;                /* streams, scales: optional */
        ok = get_buf("gemm", objs[i], &b[i], fmts[i], sizes[i], dims[i], i == 3, names[i], kinds[i]) == 0;
        held[i] = ok;
    }
    PyObject *ret = NULL;
    int64_t *streams = NULL;
    if (ok && (overlaps(&b[3], &b[0]) || overlaps(&b[3], &b[1]) || overlaps(&b[3], &b[2]) ||
               (q && overlaps(&b[3], &b[5])))) {
        PyErr_SetString(PyExc_ValueError, "gemm: out must not share memory with x, w, bias or scales");
        ok = 0;
    }
    if (ok && have_streams) {              /* a copy: checked once, then read without the GIL */
        streams = malloc((size_t)(b[4].shape[0] > 0 ? b[4].shape[0] : 1) * sizeof(int64_t));
        if (!streams) {
            PyErr_NoMemory();
            ok = 0;
        } else {
            memcpy(streams, b[4].buf, (size_t)b[4].shape[0] * sizeof(int64_t));
        }
    }
    if (ok) {
        Py_ssize_t R = b[0].shape[0], K = b[0].shape[1], S = b[1].shape[0], npad = (n + 15) / 16 * 16;
        int bad = n < 1 || K < 2 || K % 2 || b[1].shape[1] != npad * K || b[2].shape[0] != S ||
                  b[2].shape[1] != n || b[3].shape[0] != R || b[3].shape[1] != n ||
                  (have_streams ? b[4].shape[0] != R : R != S) ||
                  (q && (b[5].shape[0] != S || b[5].shape[1] != npad));
        for (Py_ssize_t r = 0; !bad && streams && r < R; r++) bad = streams[r] < 0 || streams[r] >= S;
        if (bad) {
            PyErr_SetString(PyExc_ValueError, "gemm: x (R, K) with K even, w (S, ceil(n/16)*16*K), bias (S, n), "
                                              "out (R, n), streams (R,) in [0, S) (R = S without) and scales "
                                              "(S, ceil(n/16)*16) expected");
        } else {
            Py_BEGIN_ALLOW_THREADS
            gemm_rows(b[0].buf, b[1].buf, q ? (const float *)b[5].buf : NULL, b[2].buf, b[3].buf, R, K, n, streams);
            Py_END_ALLOW_THREADS
            ret = Py_None;
            Py_INCREF(ret);
        }
    }
    free(streams);
    for (int i = 0; i < 6; i++)
        if (held[i]) PyBuffer_Release(&b[i]);
    return ret;
#else
    PyErr_SetString(PyExc_RuntimeError, "gemm: built without AVX512-BF16 support");
    return NULL;
#endif
}

/* frag_mix(x, w, bias, mix, out): x (2, L), w (k, C * 2 * KW) as Conv1d's (k, C, 2, KW) weights,
 * bias and mix (k, C), out (k, L), all bf16 bit patterns (see frag_mix_rows) */
static PyObject *py_frag_mix(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *objs[5];
    if (!PyArg_ParseTuple(args, "OOOOO", &objs[0], &objs[1], &objs[2], &objs[3], &objs[4])) return NULL;
    const char *names[5] = {"x", "w", "bias", "mix", "out"};
    Py_buffer b[5];
    int got = 0;
    for (; got < 5; got++)
        if (get_buf("frag_mix", objs[got], &b[got], "Hh", 2, 2, got == 4, names[got], "bfloat16 bit patterns (16-bit integers)") != 0)
            break;
    PyObject *ret = NULL;
    if (got == 5) {
        Py_ssize_t L = b[0].shape[1], k = b[1].shape[0], C = b[2].shape[1];
        Py_ssize_t KW = C > 0 ? b[1].shape[1] / (2 * C) : 0;
        if (b[0].shape[0] != 2 || L < 1 || k < 1 || C < 1 || KW < 1 || KW % 2 == 0 || b[1].shape[1] != C * 2 * KW ||
            b[2].shape[0] != k || b[3].shape[0] != k || b[3].shape[1] != C || b[4].shape[0] != k || b[4].shape[1] != L ||
            overlaps(&b[4], &b[0]) || overlaps(&b[4], &b[1]) || overlaps(&b[4], &b[2]) || overlaps(&b[4], &b[3])) {
            PyErr_SetString(PyExc_ValueError, "frag_mix: x (2, L), w (k, C * 2 * KW) with KW odd, bias and mix (k, C), "
                                              "out (k, L) sharing no memory with them expected");
        } else {
            Py_ssize_t Lp = L + KW - 1;
            float *buf = calloc((size_t)(2 * Lp + 2 * L), sizeof(float));
            if (!buf) {
                PyErr_NoMemory();
            } else {
                const uint16_t *x = b[0].buf;
                for (Py_ssize_t i = 0; i < 2; i++)
                    for (Py_ssize_t t = 0; t < L; t++) buf[i * Lp + KW / 2 + t] = bf16_daz(x[i * L + t]);
                Py_BEGIN_ALLOW_THREADS
                frag_mix_rows(buf, b[1].buf, b[2].buf, b[3].buf, b[4].buf, k, C, KW, L, buf + 2 * Lp, buf + 2 * Lp + L);
                Py_END_ALLOW_THREADS
                free(buf);
                ret = Py_None;
                Py_INCREF(ret);
            }
        }
    }
    for (int i = 0; i < got; i++) PyBuffer_Release(&b[i]);
    return ret;
}

/* sparse(cols, vals, tables, biases, out): cols int64 (nnz,), vals (nnz,) bf16, tables a tuple of
 * k (V, D) bf16 arrays, biases a tuple of k (D,) bf16 arrays, out (k, D) bf16 (see sparse_rows) */
static PyObject *py_sparse(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *co, *vo, *to, *bo, *oo;
    if (!PyArg_ParseTuple(args, "OOO!O!O", &co, &vo, &PyTuple_Type, &to, &PyTuple_Type, &bo, &oo)) return NULL;
#ifdef HAVE_BF16
    if (!bf16_usable()) {
        PyErr_SetString(PyExc_RuntimeError, "sparse: this CPU has no AVX512-BF16");
        return NULL;
    }
    Py_ssize_t k = PyTuple_GET_SIZE(to);
    if (k < 1 || k > 64 || PyTuple_GET_SIZE(bo) != k) {
        PyErr_SetString(PyExc_ValueError, "sparse: 1 to 64 tables and as many biases expected");
        return NULL;
    }
    const char *bf = "bfloat16 bit patterns (16-bit integers)";
    Py_buffer cb, vb, ob, tb[64], bb[64];
    int nt = 0, nb = 0, have = 0;
    PyObject *ret = NULL;
    float *acc = NULL;
    int64_t *cols = NULL;
    if (get_buf("sparse", co, &cb, "lq", 8, 1, 0, "cols", "int64") != 0) return NULL;
    have = 1;
    if (get_buf("sparse", vo, &vb, "Hh", 2, 1, 0, "vals", bf) != 0) goto done;
    have = 2;
    if (get_buf("sparse", oo, &ob, "Hh", 2, 2, 1, "out", bf) != 0) goto done;
    have = 3;
    for (; nt < k; nt++)
        if (get_buf("sparse", PyTuple_GET_ITEM(to, nt), &tb[nt], "Hh", 2, 2, 0, "a table", bf) != 0) goto done;
    for (; nb < k; nb++)
        if (get_buf("sparse", PyTuple_GET_ITEM(bo, nb), &bb[nb], "Hh", 2, 1, 0, "a bias", bf) != 0) goto done;
    Py_ssize_t nnz = cb.shape[0], V = tb[0].shape[0], D = tb[0].shape[1];
    int bad = vb.shape[0] != nnz || ob.shape[0] != k || ob.shape[1] != D || D < 1;
    for (Py_ssize_t m = 0; m < k && !bad; m++)
        bad = tb[m].shape[0] != V || tb[m].shape[1] != D || bb[m].shape[0] != D ||
              overlaps(&ob, &tb[m]) || overlaps(&ob, &bb[m]);
    bad = bad || overlaps(&ob, &cb) || overlaps(&ob, &vb);
    cols = malloc((size_t)(nnz > 0 ? nnz : 1) * sizeof(int64_t));   /* a copy: checked, then read without the GIL */
    if (!cols) {
        PyErr_NoMemory();
        goto done;
    }
    memcpy(cols, cb.buf, (size_t)nnz * sizeof(int64_t));
    for (Py_ssize_t i = 0; i < nnz && !bad; i++) bad = cols[i] < 0 || cols[i] >= V;
    if (bad) {
        PyErr_SetString(PyExc_ValueError, "sparse: cols (nnz,) in [0, V), vals (nnz,), k tables (V, D), k biases "
                                          "(D,) and out (k, D) sharing no memory with them expected");
        goto done;
    }
    const uint16_t *tables[64], *biases[64];
    for (Py_ssize_t m = 0; m < k; m++) {
        tables[m] = tb[m].buf;
        biases[m] = bb[m].buf;
    }
    acc = malloc((size_t)D * sizeof(float));
    if (!acc) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    sparse_rows(cols, vb.buf, nnz, tables, biases, ob.buf, k, D, acc);
    Py_END_ALLOW_THREADS
    ret = Py_None;
    Py_INCREF(ret);
done:
    free(acc);
    free(cols);
    for (int i = 0; i < nt; i++) PyBuffer_Release(&tb[i]);
    for (int i = 0; i < nb; i++) PyBuffer_Release(&bb[i]);
    if (have >= 3) PyBuffer_Release(&ob);
    if (have >= 2) PyBuffer_Release(&vb);
    if (have >= 1) PyBuffer_Release(&cb);
    return ret;
#else
    (void)co; (void)vo; (void)oo;
    PyErr_SetString(PyExc_RuntimeError, "sparse: built without AVX512-BF16 support");
    return NULL;
#endif
}

static PyMethodDef methods[] = {
    {"usable", py_usable, METH_NOARGS, "True when this CPU has AVX512-BF16."},
    {"gemm", py_gemm, METH_VARARGS,
     "gemm(x, w, bias, out, n[, streams[, scales]]): one row per stream through packed bf16 (or int8) layers."},
    {"sparse", py_sparse, METH_VARARGS,
     "sparse(cols, vals, tables, biases, out): k sparse-input layers on one molecule, as torch computes them."},
    {"frag_mix", py_frag_mix, METH_VARARGS,
     "frag_mix(x, w, bias, mix, out): the students' fragment convolutions mixed, as torch computes them in bf16."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_rowgemm", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__rowgemm(void) { return PyModule_Create(&module); }
