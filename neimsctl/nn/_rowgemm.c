/* One row through a stack of bfloat16 linear layers, summed the way oneDNN sums a batch
 * (neimsctl/nn/rowgemm.py; the student stack's single-molecule path).
 *
 *   usable()                  True when this CPU has AVX512-BF16 (else gemm() is not available)
 *   gemm(x, w, bias, out, n[, streams])
 *                             out[s, j] = bf16(sum_k x[s, k] w[s, k, j] + bias[s, j]), j < n; with
 *                             streams (int64, one per row of x), row r through stream streams[r]
 *
 * Arguments are uint16 bit patterns of bfloat16 values, C-contiguous: x (R, K), bias (S, n),
 * out (R, n) written (R = S without streams), and w (S, P) the weights packed by rowgemm.pack(): per stream, tiles of
 * up to 128 output columns (the last one narrower, a multiple of 16, zero-padded), each tile
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
 * No Python objects are touched while the GIL is released. Built by setup.py as an optional
 * extension: without a compiler, or on a CPU without AVX512-BF16, torch.baddbmm does the work.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define TILE 128       /* output columns per tile: 8 vectors of 16 float32 sums */
#define CHUNK 512      /* k per partial sum, as oneDNN blocks K */

#if defined(__x86_64__) && defined(__GNUC__)
#define HAVE_BF16 1
#include <immintrin.h>

__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) static inline void
tile_v(const int V, const uint16_t *x, const uint16_t *w, const uint16_t *bias, uint16_t *out,
       Py_ssize_t K, Py_ssize_t cols) {
    __m512 tot[8], acc[8];
    for (int v = 0; v < V; v++) tot[v] = _mm512_setzero_ps();
    for (Py_ssize_t c0 = 0; c0 < K; c0 += CHUNK) {
        for (int v = 0; v < V; v++) acc[v] = _mm512_setzero_ps();
        Py_ssize_t c1 = c0 + CHUNK < K ? c0 + CHUNK : K;
        const uint16_t *wp = w + c0 * V * 16;
        for (Py_ssize_t k = c0; k < c1; k += 2, wp += V * 32) {
            uint32_t pair;
            memcpy(&pair, x + k, 4);
            __m512bh a = (__m512bh)_mm512_set1_epi32((int)pair);
            for (int v = 0; v < V; v++)
                acc[v] = _mm512_dpbf16_ps(acc[v], a, (__m512bh)_mm512_loadu_si512((const void *)(wp + v * 32)));
        }
        for (int v = 0; v < V; v++) tot[v] = c0 == 0 ? acc[v] : _mm512_add_ps(tot[v], acc[v]);
    }
    for (int v = 0; v < V; v++) {
        Py_ssize_t j = (Py_ssize_t)v * 16;
        if (j >= cols) break;
        __mmask16 m = cols - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (cols - j)) - 1u);
        __m256i b16 = _mm256_maskz_loadu_epi16(m, bias + j);
        __m512 b = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(b16), 16));
        __m256bh r = _mm512_cvtneps_pbh(_mm512_add_ps(tot[v], b));
        _mm256_mask_storeu_epi16(out + j, m, (__m256i)r);
    }
}

/* one tile of V vectors with V a constant: the compiler keeps the sums in registers */
#define TILE_FN(V_) \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) static void tile_##V_( \
        const uint16_t *x, const uint16_t *w, const uint16_t *bias, uint16_t *out, Py_ssize_t K, Py_ssize_t cols) { \
        tile_v(V_, x, w, bias, out, K, cols); \
    }
TILE_FN(1) TILE_FN(2) TILE_FN(3) TILE_FN(4) TILE_FN(5) TILE_FN(6) TILE_FN(7) TILE_FN(8)
typedef void (*tile_fn)(const uint16_t *, const uint16_t *, const uint16_t *, uint16_t *, Py_ssize_t, Py_ssize_t);
static const tile_fn TILES[9] = {NULL, tile_1, tile_2, tile_3, tile_4, tile_5, tile_6, tile_7, tile_8};

static int bf16_usable(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
}

/* row r of x and out through stream streams[r] (r itself without streams) of w and bias */
static void gemm_rows(const uint16_t *x, const uint16_t *w, const uint16_t *bias, uint16_t *out,
                      Py_ssize_t R, Py_ssize_t K, Py_ssize_t n, const int64_t *streams) {
    Py_ssize_t npad = (n + 15) / 16 * 16;
    for (Py_ssize_t r = 0; r < R; r++) {
        Py_ssize_t s = streams ? (Py_ssize_t)streams[r] : r;
        const uint16_t *ws = w + s * npad * K;
        for (Py_ssize_t t0 = 0; t0 < npad; t0 += TILE) {
            Py_ssize_t width = npad - t0 < TILE ? npad - t0 : TILE;
            TILES[width / 16](x + r * K, ws + t0 * K, bias + s * n + t0, out + r * n + t0, K, n - t0);
        }
    }
}
#endif

static int get_u16(PyObject *o, Py_buffer *b, int writable, const char *name) {
    if (PyObject_GetBuffer(o, b, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) != 0)
        return -1;
    if (b->itemsize != 2 || b->ndim != 2 || !b->format || (strcmp(b->format, "H") != 0 && strcmp(b->format, "h") != 0)) {
        PyErr_Format(PyExc_ValueError, "gemm: %s must be a C-contiguous 2-d array of 16-bit values", name);
        PyBuffer_Release(b);
        return -1;
    }
    return 0;
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
    PyObject *objs[4], *so = NULL;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "OOOOn|O", &objs[0], &objs[1], &objs[2], &objs[3], &n, &so)) return NULL;
#ifdef HAVE_BF16
    if (!bf16_usable()) {
        PyErr_SetString(PyExc_RuntimeError, "gemm: this CPU has no AVX512-BF16");
        return NULL;
    }
    Py_buffer b[4];
    const char *names[4] = {"x", "w", "bias", "out"};
    int got = 0;
    for (; got < 4; got++)
        if (get_u16(objs[got], &b[got], got == 3, names[got]) != 0) break;
    PyObject *ret = NULL;
    Py_buffer sb;
    int have_streams = 0;
    if (got == 4 && so && so != Py_None) {
        if (PyObject_GetBuffer(so, &sb, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0) goto done;
        have_streams = 1;
        if (sb.itemsize != 8 || sb.ndim != 1 || !sb.format || !strchr("lq", sb.format[0]) || sb.format[1]) {
            PyErr_SetString(PyExc_ValueError, "gemm: streams must be a 1-d array of int64");
            goto done;
        }
    }
    if (got == 4) {
        Py_ssize_t R = b[0].shape[0], K = b[0].shape[1], S = b[1].shape[0], npad = (n + 15) / 16 * 16;
        int bad = n < 1 || K < 2 || K % 2 || b[1].shape[1] != npad * K || b[2].shape[0] != S ||
                  b[2].shape[1] != n || b[3].shape[0] != R || b[3].shape[1] != n ||
                  (have_streams ? sb.shape[0] != R : R != S);
        const int64_t *streams = have_streams ? (const int64_t *)sb.buf : NULL;
        for (Py_ssize_t r = 0; !bad && streams && r < R; r++) bad = streams[r] < 0 || streams[r] >= S;
        if (bad) {
            PyErr_SetString(PyExc_ValueError, "gemm: x (R, K) with K even, w (S, ceil(n/16)*16*K), bias (S, n), "
                                              "out (R, n) and streams (R,) in [0, S) (R = S without) expected");
        } else {
            Py_BEGIN_ALLOW_THREADS
            gemm_rows(b[0].buf, b[1].buf, b[2].buf, b[3].buf, R, K, n, streams);
            Py_END_ALLOW_THREADS
            ret = Py_None;
            Py_INCREF(ret);
        }
    }
done:
    if (have_streams) PyBuffer_Release(&sb);
    for (int i = 0; i < got; i++) PyBuffer_Release(&b[i]);
    return ret;
#else
    PyErr_SetString(PyExc_RuntimeError, "gemm: built without AVX512-BF16 support");
    return NULL;
#endif
}

static PyMethodDef methods[] = {
    {"usable", py_usable, METH_NOARGS, "True when this CPU has AVX512-BF16."},
    {"gemm", py_gemm, METH_VARARGS, "gemm(x, w, bias, out, n[, streams]): one row per stream through packed bf16 layers."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_rowgemm", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__rowgemm(void) { return PyModule_Create(&module); }
