/* Native kernels over bfloat16 spectral weights (the search's first pass; formats/spectral-index.v2.md).
 *
 *   dot(q, bits, out)   out[i, j] = sum_c q[i, c] * bf16(bits[j, c])  (float32 queries, bfloat16 library)
 *   norms(bits, out)    out[j] = sum_c bf16(bits[j, c])^2; returns the largest bit pattern
 *   amx()               True when dot() runs on the CPU's AMX tiles (else dot() is not available)
 *   select(s, top, lo, hi, factor, rows, cols, vals)
 *                       per row of first-pass scores: update the row's running top-k (``top``,
 *                       descending) with its scores in [lo, hi), then write out every score there
 *                       that is > 0 and >= factor x the row's k-th best; returns their count
 *   dot_select(q, bits, top, lo, hi, ok, factor, rows, cols, vals[, norms])
 *                       dot() and select() in one pass on AMX tiles, no score matrix (each tile of
 *                       scores updates its queries' top-k and gives its candidates against the
 *                       k-th best so far); with norms, also the block's check (norms() of it)
 *   dot_select_blocks(q, fd, blocks, lo, hi, top, ok, factor, rows, cols, vals, norms, tops)
 *                       dot_select over a run of blocks of a file (one lane's), in one call: each
 *                       block's queries gathered by their windows, its rows read by the kernel a
 *                       piece of STAGE_ROWS at a time that stays in the core's cache
 *   pread_ranges(fd, offsets, sizes, out)
 *                       read many byte ranges of a file into one buffer (the exact stage's peaks)
 *
 * dot() runs on Intel AMX (TDPBF16PS): the library block is read where it lies, 16 entries x 32
 * m/z columns a tile; each query is split into two bfloat16 parts, hi = bf16(q) and
 * lo = bf16(q - hi), so q = hi + lo within 2^-16 relative, and both products accumulate in
 * float32. Every product of two bfloat16 values is exact in float32, the weights are >= 0, so
 * the result is within (1 + 2^-16)(1 + 2 w 2^-24) - 1 of the float32 product of the same values
 * (w columns): relative 1.2e-4 at w = 501 (neimsctl.evaluate.matching._STORED_REL takes the
 * stored weights' own rounding on top). A tile's rows may read up to 31 columns of the entries
 * after them (multiplied by the queries' zero padding; never past the block): finite weights
 * give the exact sums, damaged ones (NaN, inf) at worst NaN scores, which select no candidate
 * and which the block's check refuses (dot_select's norms, or the caller's before dot()).
 *
 * No Python objects are touched while the GIL is released. Built by setup.py as an optional
 * extension: without a compiler, or on another CPU, the package computes the same in numpy.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <errno.h>
#include <math.h>
#include <string.h>
#include <unistd.h>

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__)
#define HAVE_AMX 1
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

static inline uint16_t to_bf16(float x) {      /* round to nearest even; finite x */
    uint32_t u;
    memcpy(&u, &x, 4);
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

static inline float from_bf16(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float x;
    memcpy(&x, &u, 4);
    return x;
}

/* ---- reading -------------------------------------------------------------------------------- */

/* Read size bytes at offset of fd into buf: 0, an errno, or -1 when the file ends first. */
static int pread_full(int fd, void *buf, size_t size, int64_t offset) {
    char *p = buf;
    while (size > 0) {
        ssize_t got = pread(fd, p, size, (off_t)offset);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) return errno;
        if (got == 0) return -1;        /* the file ends first */
        p += got;
        size -= (size_t)got;
        offset += got;
    }
    return 0;
}

/* The OSError (a new instance) of pread_full's non-zero result; NULL with an error set when even
 * that fails. */
static PyObject *os_error(int err) {
    if (err > 0) return PyObject_CallFunction(PyExc_OSError, "is", err, strerror(err));
    return PyObject_CallFunction(PyExc_OSError, "s", "file shorter than its datasets (truncated?)");
}

/* The same error raised; NULL to return. */
static PyObject *read_error(int err) {
    PyObject *exc = os_error(err);
    if (exc != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return NULL;
}

/* ---- norms ---------------------------------------------------------------------------------- */

static uint16_t norms_plain(const uint16_t *bits, Py_ssize_t n, Py_ssize_t w, float *out) {
    uint16_t top = 0;
    for (Py_ssize_t j = 0; j < n; j++) {
        const uint16_t *row = bits + j * w;
        float lane[16] = {0};
        Py_ssize_t c = 0;
        for (; c + 16 <= w; c += 16)
            for (int t = 0; t < 16; t++) {
                float v = from_bf16(row[c + t]);
                lane[t] += v * v;
                if (row[c + t] > top) top = row[c + t];
            }
        float s = 0.0f;
        for (; c < w; c++) {
            float v = from_bf16(row[c]);
            s += v * v;
            if (row[c] > top) top = row[c];
        }
        for (int t = 0; t < 16; t++) s += lane[t];
        out[j] = s;
    }
    return top;
}

#ifdef HAVE_AMX
__attribute__((target("avx512f,avx512bw,avx512vl")))
static uint16_t norms_avx512(const uint16_t *bits, Py_ssize_t n, Py_ssize_t w, float *out) {
    __m512i top = _mm512_setzero_si512();
    for (Py_ssize_t j = 0; j < n; j++) {
        const uint16_t *row = bits + j * w;
        __m512 acc = _mm512_setzero_ps();
        for (Py_ssize_t c = 0; c < w; c += 16) {
            __mmask16 m = (w - c >= 16) ? (__mmask16)0xFFFF : (__mmask16)((1u << (w - c)) - 1u);
            __m256i h = _mm256_maskz_loadu_epi16(m, row + c);
            __m512i u = _mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16);
            __m512 v = _mm512_castsi512_ps(u);
            acc = _mm512_fmadd_ps(v, v, acc);
            top = _mm512_max_epu32(top, u);
        }
        out[j] = _mm512_reduce_add_ps(acc);
    }
    return (uint16_t)(_mm512_reduce_max_epu32(top) >> 16);
}
#endif

#ifdef HAVE_AMX
/* norms_avx512 with AVX512-BF16 (every CPU with AMX-BF16 has it): each bfloat16 pair squared
 * and summed into float32 by one instruction (products exact, denormals taken as 0), four rows
 * at a time with two accumulators each (eight independent chains); the largest bit pattern from
 * the raw 16-bit words. 4,096 x 317 weights: see norms_avx512's note. */
__attribute__((target("avx512f,avx512bw,avx512bf16")))
static uint16_t norms_bf16(const uint16_t *bits, Py_ssize_t n, Py_ssize_t w, float *out) {
    __m512i top = _mm512_setzero_si512();
    for (Py_ssize_t j = 0; j < n; j += 4) {
        int nr = n - j < 4 ? (int)(n - j) : 4;
        __m512 acc[4][2];
        for (int r = 0; r < 4; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
        for (Py_ssize_t c = 0; c < w; c += 64) {
            __mmask32 m0 = (w - c >= 32) ? (__mmask32)0xFFFFFFFFu : (__mmask32)((1u << (w - c)) - 1u);
            __mmask32 m1 = (w - c >= 64) ? (__mmask32)0xFFFFFFFFu : (w - c <= 32) ? (__mmask32)0 :
                           (__mmask32)((1u << (w - c - 32)) - 1u);
            for (int r = 0; r < nr; r++) {
                const uint16_t *row = bits + (j + r) * w + c;
                __m512i u0 = _mm512_maskz_loadu_epi16(m0, row), u1 = _mm512_maskz_loadu_epi16(m1, row + 32);
                acc[r][0] = _mm512_dpbf16_ps(acc[r][0], (__m512bh)u0, (__m512bh)u0);
                acc[r][1] = _mm512_dpbf16_ps(acc[r][1], (__m512bh)u1, (__m512bh)u1);
                top = _mm512_max_epu16(top, _mm512_max_epu16(u0, u1));
            }
        }
        for (int r = 0; r < nr; r++) out[j + r] = _mm512_reduce_add_ps(_mm512_add_ps(acc[r][0], acc[r][1]));
    }
    /* the largest 16-bit word of the 32 lanes */
    __m512i hi = _mm512_srli_epi32(top, 16), lo = _mm512_and_si512(top, _mm512_set1_epi32(0xFFFF));
    return (uint16_t)_mm512_reduce_max_epu32(_mm512_max_epu32(hi, lo));
}
#endif

/* ---- AMX ------------------------------------------------------------------------------------ */

#ifdef HAVE_AMX
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

static int amx_state = -1;          /* -1 unknown, 0 no, 1 yes */

static int amx_usable(void) {
    if (amx_state >= 0) return amx_state;
    unsigned int a, b, c, d;
    amx_state = 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    if (!(d & (1u << 22)) || !(d & (1u << 24))) return 0;        /* AMX-BF16, AMX-TILE */
    if (!(b & (1u << 16))) return 0;                              /* AVX-512F (norms, packing) */
    if (!__get_cpuid_count(7, 1, &a, &b, &c, &d) || !(a & (1u << 5))) return 0;   /* AVX512-BF16 (norms_bf16) */
    if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0) return 0;
    amx_state = 1;
    return 1;
}

typedef struct {
    uint8_t palette;
    uint8_t start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tilecfg_t;

/* Queries as AMX B tiles: for group g of 16 queries and k-step s of 32 columns, 16 rows (column
 * pairs) x 32 values: B[r][2 i + t] = part(q[16 g + i][32 s + 2 r + t]); zero beyond nq and w. */
static void pack_queries(const float *q, Py_ssize_t nq, Py_ssize_t w, Py_ssize_t nk, Py_ssize_t ng,
                         uint16_t *hi, uint16_t *lo) {
    memset(hi, 0, (size_t)(ng * nk * 512) * 2);
    memset(lo, 0, (size_t)(ng * nk * 512) * 2);
    for (Py_ssize_t i = 0; i < nq; i++) {
        Py_ssize_t g = i / 16, ii = i % 16;
        for (Py_ssize_t c = 0; c < w; c++) {
            float x = q[i * w + c];
            if (x == 0.0f) continue;
            uint16_t h = to_bf16(x);
            uint16_t l = to_bf16(x - from_bf16(h));
            Py_ssize_t s = c / 32, r = (c % 32) / 2, t = c % 2;
            Py_ssize_t at = ((g * nk + s) * 16 + r) * 32 + 2 * ii + t;
            hi[at] = h;
            lo[at] = l;
        }
    }
}

static void scatter(const float (*tile)[16], Py_ssize_t j0, Py_ssize_t ne, Py_ssize_t i0, Py_ssize_t ni,
                    Py_ssize_t n, float *out) {
    for (Py_ssize_t i = 0; i < ni; i++) {
        float *dst = out + (i0 + i) * n + j0;
        for (Py_ssize_t e = 0; e < ne; e++) dst[e] = tile[e][i];
    }
}

/* The fused selection (dot_select): instead of the score matrix, each 16 x 16 tile of scores
 * updates its queries' running top-k and writes out the candidates, every score in the query's
 * window (and an allowed entry) that is > 0 and >= factor x the query's k-th best so far. The
 * k-th best only grows, so a candidate by the final k-th best is a candidate when it is seen. */
typedef struct {
    float *top;                     /* (nq, k), descending, 0 = empty */
    Py_ssize_t k;
    const int64_t *lo, *hi;         /* (nq,): each query's window, entries of the block */
    const uint8_t *ok;              /* (n,) allowed entries, or NULL */
    float factor;
    int64_t *rows, *cols;
    float *vals;
    Py_ssize_t cap, count;          /* count may pass cap: then nothing past cap is written */
    float *norms;                   /* (n,): the entries' squared norms, or NULL */
    uint16_t top_bits;              /* with norms: the largest bit pattern of the block */
} sink_t;

static void insert_top(float *t, Py_ssize_t k, float v) {
    Py_ssize_t p = k - 1;
    while (p > 0 && t[p - 1] < v) {
        t[p] = t[p - 1];
        p--;
    }
    t[p] = v;
}

__attribute__((target("avx512f")))
static void consume(sink_t *S, const float (*tile)[16], Py_ssize_t j0, Py_ssize_t ne, Py_ssize_t i0, Py_ssize_t ni) {
    float kth[16] __attribute__((aligned(64))), thr[16] __attribute__((aligned(64)));
    int32_t lo[16] __attribute__((aligned(64))), hi[16] __attribute__((aligned(64)));
    Py_ssize_t k = S->k;
    for (int i = 0; i < 16; i++) {
        if (i < ni) {
            kth[i] = S->top[(i0 + i) * k + k - 1];
            thr[i] = kth[i] * S->factor;
            /* entries are < n <= INT32_MAX: windows clamped to [0, INT32_MAX] keep their meaning */
            int64_t a = S->lo[i0 + i], b = S->hi[i0 + i];
            lo[i] = (int32_t)(a < 0 ? 0 : a > INT32_MAX ? INT32_MAX : a);
            hi[i] = (int32_t)(b < 0 ? 0 : b > INT32_MAX ? INT32_MAX : b);
        } else {
            kth[i] = thr[i] = INFINITY;
            lo[i] = 1;
            hi[i] = 0;
        }
    }
    __m512 kv = _mm512_load_ps(kth), tv = _mm512_load_ps(thr), zero = _mm512_setzero_ps();
    __m512i lov = _mm512_load_si512(lo), hiv = _mm512_load_si512(hi);
    for (Py_ssize_t e = 0; e < ne; e++) {
        int32_t j = (int32_t)(j0 + e);
        if (S->ok && !S->ok[j]) continue;
        __m512i jv = _mm512_set1_epi32(j);
        __mmask16 win = _mm512_cmple_epi32_mask(lov, jv) & _mm512_cmpgt_epi32_mask(hiv, jv);
        if (!win) continue;
        __m512 row = _mm512_load_ps(tile[e]);
        __mmask16 ins = _mm512_mask_cmp_ps_mask(win, row, kv, _CMP_GT_OQ);
        if (ins) {
            while (ins) {
                int i = __builtin_ctz(ins);
                float *t = S->top + (i0 + i) * k;
                insert_top(t, k, tile[e][i]);
                kth[i] = t[k - 1];
                thr[i] = kth[i] * S->factor;
                ins &= (__mmask16)(ins - 1);
            }
            kv = _mm512_load_ps(kth);
            tv = _mm512_load_ps(thr);
        }
        __mmask16 em = _mm512_mask_cmp_ps_mask(win, row, tv, _CMP_GE_OQ) & _mm512_cmp_ps_mask(row, zero, _CMP_GT_OQ);
        while (em) {
            int i = __builtin_ctz(em);
            if (S->count < S->cap) {
                S->rows[S->count] = i0 + i;
                S->cols[S->count] = j;
                S->vals[S->count] = tile[e][i];
            }
            S->count++;
            em &= (__mmask16)(em - 1);
        }
    }
}

/* tiles: 0 = A (16 entries x 32 columns), 1/2 = B hi/lo of group g, 3/4 = of group g + 1,
 * 5/6 = C of groups g and g + 1 (16 entries x 16 queries, float32). The tiles configured and the
 * queries packed (pack_queries) by the caller; ``lib`` holds entries base .. base + n - 1 of the
 * block (their scores go to columns base + j of ``out``, nout wide, or to the sink as such). */
__attribute__((target("amx-tile,amx-bf16,avx512f")))
static void tiles_amx(const uint16_t *bhi, const uint16_t *blo, Py_ssize_t nq, const uint16_t *lib, Py_ssize_t n,
                      Py_ssize_t w, Py_ssize_t base, float *out, Py_ssize_t nout, sink_t *sink, uint16_t *pad) {
    Py_ssize_t nk = (w + 31) / 32, ng = (nq + 15) / 16;
    float tile[16][16] __attribute__((aligned(64)));
    Py_ssize_t stride = w * 2;
    for (Py_ssize_t j0 = 0; j0 < n; j0 += 16) {
        Py_ssize_t ne = n - j0 < 16 ? n - j0 : 16;
        const uint16_t *a = lib + j0 * w;
        if (sink && sink->norms) {      /* the block's check, on rows the tiles then read from cache */
            uint16_t t = norms_bf16(a, ne, w, sink->norms + base + j0);
            if (t > sink->top_bits) sink->top_bits = t;
        }
        Py_ssize_t astride = stride;
        /* a tile whose direct read would pass the block's end (its last row's last k-step reads
         * up to 31 columns beyond the row): its rows copied into a zero-padded buffer */
        if (j0 + 16 > n || (j0 + 15) * w + nk * 32 > n * w) {
            memset(pad, 0, (size_t)(16 * nk * 32) * 2);
            for (Py_ssize_t e = 0; e < ne; e++) memcpy(pad + e * nk * 32, lib + (j0 + e) * w, (size_t)w * 2);
            a = pad;
            astride = nk * 64;
        }
        for (Py_ssize_t g = 0; g < ng; g += 2) {
            int two = g + 1 < ng;
            _tile_zero(5);
            _tile_zero(6);
            const uint16_t *h0 = bhi + g * nk * 512, *l0 = blo + g * nk * 512;
            for (Py_ssize_t s = 0; s < nk; s++) {
                _tile_loadd(0, a + s * 32, astride);
                _tile_loadd(1, h0 + s * 512, 64);
                _tile_loadd(2, l0 + s * 512, 64);
                _tile_dpbf16ps(5, 0, 1);
                _tile_dpbf16ps(5, 0, 2);
                if (two) {
                    _tile_loadd(3, h0 + (nk + s) * 512, 64);
                    _tile_loadd(4, l0 + (nk + s) * 512, 64);
                    _tile_dpbf16ps(6, 0, 3);
                    _tile_dpbf16ps(6, 0, 4);
                }
            }
            for (int h = 0; h < 1 + two; h++) {
                if (h)
                    _tile_stored(6, tile, 64);
                else
                    _tile_stored(5, tile, 64);
                Py_ssize_t i0 = (g + h) * 16, ni = nq - i0 < 16 ? nq - i0 : 16;
                if (sink)
                    consume(sink, (const float (*)[16])tile, base + j0, ne, i0, ni);
                else
                    scatter((const float (*)[16])tile, base + j0, ne, i0, ni, nout, out);
            }
        }
    }
}

/* 7 tiles of 16 rows x 64 bytes. A constant in memory: GCC 12 kept only the first 17 bytes of
 * such a configuration built on the stack (the rest looked unread), and the CPU refused it. */
static const tilecfg_t TILES __attribute__((aligned(64))) = {
    1, 0, {0}, {64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0, 0}, {16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0}};

__attribute__((target("amx-tile")))
static void tiles_config(void) { _tile_loadconfig(&TILES); }

__attribute__((target("amx-tile")))
static void tiles_done(void) { _tile_release(); }

static void dot_amx(const float *q, Py_ssize_t nq, const uint16_t *lib, Py_ssize_t n, Py_ssize_t w,
                    float *out, sink_t *sink, uint16_t *bhi, uint16_t *blo, uint16_t *pad) {
    Py_ssize_t nk = (w + 31) / 32, ng = (nq + 15) / 16;
    pack_queries(q, nq, w, nk, ng, bhi, blo);
    tiles_config();
    tiles_amx(bhi, blo, nq, lib, n, w, 0, out, n, sink, pad);
    tiles_done();
}

/* Entries read from the file in pieces of STAGE_ROWS (their weights stay in the core's cache
 * from the read to the tiles: copying a block's 2.6 MB out of the page cache into a buffer
 * and reading it back was half the time of a mass-filtered search). */
#define STAGE_ROWS 256

/* dot_amx into the sink, of n entries read from fd at offset (n x w bfloat16 bit patterns);
 * 0, an errno, or -1 when the file ends first */
static int pread_dot_amx(int fd, int64_t offset, const float *q, Py_ssize_t nq, Py_ssize_t n, Py_ssize_t w,
                         sink_t *sink, uint16_t *bhi, uint16_t *blo, uint16_t *pad, uint16_t *stage) {
    Py_ssize_t nk = (w + 31) / 32, ng = (nq + 15) / 16;
    pack_queries(q, nq, w, nk, ng, bhi, blo);
    int err = 0;
    tiles_config();
    for (Py_ssize_t j = 0; j < n && !err; j += STAGE_ROWS) {
        Py_ssize_t m = n - j < STAGE_ROWS ? n - j : STAGE_ROWS;
        err = pread_full(fd, stage, (size_t)(m * w) * 2, offset + (int64_t)(j * w) * 2);
        if (!err) tiles_amx(bhi, blo, nq, stage, m, w, j, NULL, 0, sink, pad);
    }
    tiles_done();
    return err;
}

/* One lane's run of blocks (dot_select_blocks): for each block (start entry, file offset, rows,
 * width) the queries whose window [lo, hi) reaches it are gathered (their weights, running
 * top-k and windows within the block), pread_dot_amx runs on them, and their top-k, the
 * candidates (query and entry numbers of the whole search) and the block's check go back.
 * Stops before a block whose candidates would pass cap (top-k unchanged for it: it worked on
 * the copy) or whose read fails; returns the blocks done, their candidates in *count. */
typedef struct {
    int fd;
    const float *q;                 /* (nq, W) */
    Py_ssize_t nq, W, k;
    const int64_t *blocks;          /* (m, 4): start, offset, rows, width */
    Py_ssize_t m;
    const int64_t *lo, *hi;         /* (nq,) windows, entries of the search */
    float *top;                     /* (nq, k) */
    const uint8_t *ok;              /* (rows of all blocks,) or NULL */
    float factor;
    int64_t *rows, *cols;
    float *vals;
    Py_ssize_t cap;
    float *norms;                   /* (rows of all blocks,) */
    int32_t *tops;                  /* (m,) each block's largest bit pattern */
} run_t;

static Py_ssize_t run_blocks(const run_t *R, Py_ssize_t *count, int *err, int64_t *sel, float *qsel, float *tsel,
                             int64_t *lsel, int64_t *hsel, uint16_t *bhi, uint16_t *blo, uint16_t *pad,
                             uint16_t *stage) {
    Py_ssize_t done = 0, at = 0, k = R->k;
    *count = 0;
    *err = 0;
    for (; done < R->m; done++) {
        const int64_t *b = R->blocks + 4 * done;
        int64_t start = b[0], n = b[2];
        Py_ssize_t w = (Py_ssize_t)b[3], ns = 0;
        for (Py_ssize_t i = 0; i < R->nq; i++) {
            if (R->lo[i] < start + n && R->hi[i] > start) {
                int64_t a = R->lo[i] - start, z = R->hi[i] - start;
                sel[ns] = i;
                memcpy(qsel + ns * w, R->q + i * R->W, (size_t)w * 4);
                memcpy(tsel + ns * k, R->top + i * k, (size_t)k * 4);
                lsel[ns] = a < 0 ? 0 : a;
                hsel[ns] = z > n ? n : z;
                ns++;
            }
        }
        Py_ssize_t room = R->cap - *count;
        sink_t S = {tsel, k, lsel, hsel, R->ok ? R->ok + at : NULL, R->factor, R->rows + *count, R->cols + *count,
                    R->vals + *count, room, 0, R->norms + at, 0};
        *err = pread_dot_amx(R->fd, b[1], qsel, ns, (Py_ssize_t)n, w, &S, bhi, blo, pad, stage);
        if (*err || S.count > room) break;
        for (Py_ssize_t c = 0; c < S.count; c++) {
            S.rows[c] = sel[S.rows[c]];
            S.cols[c] += start;
        }
        for (Py_ssize_t s = 0; s < ns; s++) memcpy(R->top + sel[s] * k, tsel + s * k, (size_t)k * 4);
        R->tops[done] = S.top_bits;
        *count += S.count;
        at += (Py_ssize_t)n;
    }
    return done;
}
#endif

/* ---- Python ---------------------------------------------------------------------------------- */

static int get_2d(PyObject *obj, Py_buffer *view, const char *fmt, int writable, const char *name) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) != 0) return -1;
    const char *f = view->format;
    if (f[0] == '=' || f[0] == '<' || f[0] == '@') f++;      /* native order (x86-64: little-endian) */
    int same = strcmp(f, fmt) == 0 ||        /* int64: 'l' on LP64, 'q' elsewhere */
               (fmt[0] == 'l' && view->itemsize == 8 && (strcmp(f, "q") == 0 || strcmp(f, "l") == 0));
    if (view->ndim < 1 || view->ndim > 2 || !same) {
        PyErr_Format(PyExc_TypeError, "%s: a C-contiguous 1- or 2-d array of format '%s'", name, fmt);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static Py_ssize_t dim(const Py_buffer *v, int k) { return v->ndim == 2 ? v->shape[k] : (k ? v->shape[0] : 1); }

/* the length of a 1-d argument, -1 for a 2-d one (a (0, n) array holds nothing) */
static Py_ssize_t len1(const Py_buffer *v) { return v->ndim == 1 ? v->shape[0] : -1; }

static PyObject *py_amx(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
#ifdef HAVE_AMX
    return PyBool_FromLong(amx_usable());
#else
    Py_RETURN_FALSE;
#endif
}

static PyObject *py_dot(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *qo, *lo, *oo;
    if (!PyArg_ParseTuple(args, "OOO", &qo, &lo, &oo)) return NULL;
#ifdef HAVE_AMX
    if (!amx_usable()) {
        PyErr_SetString(PyExc_RuntimeError, "dot: this CPU or kernel offers no AMX bf16 tiles");
        return NULL;
    }
    Py_buffer q, lib, out;
    if (get_2d(qo, &q, "f", 0, "q") != 0) return NULL;
    if (get_2d(lo, &lib, "H", 0, "bits") != 0) { PyBuffer_Release(&q); return NULL; }
    if (get_2d(oo, &out, "f", 1, "out") != 0) { PyBuffer_Release(&q); PyBuffer_Release(&lib); return NULL; }
    Py_ssize_t nq = dim(&q, 0), w = dim(&q, 1), n = dim(&lib, 0);
    PyObject *ret = NULL;
    if (q.ndim != 2 || lib.ndim != 2 || out.ndim != 2 || dim(&lib, 1) != w || dim(&out, 0) != nq || dim(&out, 1) != n) {
        PyErr_SetString(PyExc_ValueError, "dot: shapes (nq, w), (n, w), (nq, n) expected");
    } else if (nq > 0 && n > 0 && w > 0) {
        Py_ssize_t nk = (w + 31) / 32, ng = (nq + 15) / 16;
        uint16_t *bhi = aligned_alloc(64, (size_t)((ng * nk * 512 * 2 + 31) / 32 * 32) * 2);
        uint16_t *blo = bhi ? bhi + ng * nk * 512 : NULL;
        uint16_t *pad = aligned_alloc(64, (size_t)((16 * nk * 32 + 31) / 32 * 32) * 2);
        if (!bhi || !pad) {
            PyErr_NoMemory();
        } else {
            Py_BEGIN_ALLOW_THREADS
            dot_amx((const float *)q.buf, nq, (const uint16_t *)lib.buf, n, w, (float *)out.buf, NULL, bhi, blo, pad);
            Py_END_ALLOW_THREADS
            ret = Py_None;
            Py_INCREF(ret);
        }
        free(bhi);
        free(pad);
    } else {
        ret = Py_None;
        Py_INCREF(ret);
        if (w == 0) memset(out.buf, 0, (size_t)(nq * n) * 4);
    }
    PyBuffer_Release(&q);
    PyBuffer_Release(&lib);
    PyBuffer_Release(&out);
    return ret;
#else
    (void)qo; (void)lo; (void)oo;
    PyErr_SetString(PyExc_RuntimeError, "dot: built without AMX support");
    return NULL;
#endif
}

static PyObject *py_norms(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *bo, *oo;
    if (!PyArg_ParseTuple(args, "OO", &bo, &oo)) return NULL;
    Py_buffer bits, out;
    if (get_2d(bo, &bits, "H", 0, "bits") != 0) return NULL;
    if (get_2d(oo, &out, "f", 1, "out") != 0) { PyBuffer_Release(&bits); return NULL; }
    Py_ssize_t n = dim(&bits, 0), w = dim(&bits, 1);
    PyObject *ret = NULL;
    if (bits.ndim != 2 || out.ndim != 1 || out.shape[0] != n) {
        PyErr_SetString(PyExc_ValueError, "norms: shapes (n, w) and (n,) expected");
    } else {
        uint16_t top;
        Py_BEGIN_ALLOW_THREADS
#ifdef HAVE_AMX
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
            top = norms_avx512((const uint16_t *)bits.buf, n, w, (float *)out.buf);
        else
#endif
            top = norms_plain((const uint16_t *)bits.buf, n, w, (float *)out.buf);
        Py_END_ALLOW_THREADS
        ret = PyLong_FromLong(top);
    }
    PyBuffer_Release(&bits);
    PyBuffer_Release(&out);
    return ret;
}

/* Buffers of objs[0 .. n - 1] (formats, writable, names for the errors); how many were taken
 * (all n, or fewer after an error: release those). */
static int get_buffers(PyObject **objs, Py_buffer *b, int n, const char **fmts, const int *writable,
                       const char **names) {
    int got = 0;
    for (; got < n; got++)
        if (get_2d(objs[got], &b[got], fmts[got], writable[got], names[got]) != 0) break;
    return got;
}

/* dot_select(q, bits, top, lo, hi, ok, factor, rows, cols, vals[, norms]); ``bits`` the block's
 * (n, w) bit patterns (dot_select_blocks: blocks read from a file). */
static PyObject *py_dot_select(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *objs[9], *normo = NULL;
    double factor;
    if (!PyArg_ParseTuple(args, "OOOOOOdOOO|O", &objs[0], &objs[1], &objs[2], &objs[3], &objs[4], &objs[5], &factor,
                          &objs[6], &objs[7], &objs[8], &normo))
        return NULL;
#ifdef HAVE_AMX
    if (!amx_usable()) {
        PyErr_SetString(PyExc_RuntimeError, "dot_select: this CPU or kernel offers no AMX bf16 tiles");
        return NULL;
    }
    Py_buffer b[9];
    const char *fmts[9] = {"f", "H", "f", "l", "l", "B", "l", "l", "f"};
    const char *names[9] = {"q", "bits", "top", "lo", "hi", "ok", "rows", "cols", "vals"};
    const int writable[9] = {0, 0, 1, 0, 0, 0, 1, 1, 1};
    PyObject *ret = NULL;
    int got = get_buffers(objs, b, 9, fmts, writable, names);
    if (got < 9) goto done;
    Py_ssize_t nq = dim(&b[0], 0), w = dim(&b[0], 1), k = dim(&b[2], 1), n = dim(&b[1], 0);
    Py_ssize_t nok = len1(&b[5]), cap = len1(&b[6]);
    if (b[0].ndim != 2 || b[1].ndim != 2 || dim(&b[1], 1) != w || b[2].ndim != 2 || dim(&b[2], 0) != nq || k < 1 ||
        len1(&b[3]) != nq || len1(&b[4]) != nq || (nok != 0 && nok != n) || cap < 0 || len1(&b[7]) != cap ||
        len1(&b[8]) != cap || n > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "dot_select: shapes (nq, w), (n, w), (nq, k), (nq,), (nq,), (n,) or (0,), "
                                          "and three outputs of one size expected");
        goto done;
    }
    Py_buffer nb;
    int have_norms = 0;
    if (normo && normo != Py_None) {
        if (get_2d(normo, &nb, "f", 1, "norms") != 0) goto done;
        have_norms = 1;
        if (len1(&nb) != n) {
            PyErr_SetString(PyExc_ValueError, "dot_select: norms of shape (n,) expected");
            PyBuffer_Release(&nb);
            goto done;
        }
    }
    sink_t S = {(float *)b[2].buf, k, (const int64_t *)b[3].buf, (const int64_t *)b[4].buf,
                nok ? (const uint8_t *)b[5].buf : NULL, (float)factor, (int64_t *)b[6].buf, (int64_t *)b[7].buf,
                (float *)b[8].buf, cap, 0, have_norms ? (float *)nb.buf : NULL, 0};
    if (nq > 0 && n > 0 && w > 0) {
        Py_ssize_t nk = (w + 31) / 32, ng = (nq + 15) / 16;
        uint16_t *bhi = aligned_alloc(64, (size_t)((ng * nk * 512 * 2 + 31) / 32 * 32) * 2);
        uint16_t *blo = bhi ? bhi + ng * nk * 512 : NULL;
        uint16_t *pad = aligned_alloc(64, (size_t)((16 * nk * 32 + 31) / 32 * 32) * 2);
        if (!bhi || !pad) {
            free(bhi);
            free(pad);
            if (have_norms) PyBuffer_Release(&nb);
            PyErr_NoMemory();
            goto done;
        }
        Py_BEGIN_ALLOW_THREADS
        dot_amx((const float *)b[0].buf, nq, (const uint16_t *)b[1].buf, n, w, NULL, &S, bhi, blo, pad);
        Py_END_ALLOW_THREADS
        free(bhi);
        free(pad);
    } else if (have_norms && w > 0 && n > 0) {      /* no queries: the check all the same */
        Py_BEGIN_ALLOW_THREADS
        S.top_bits = norms_avx512((const uint16_t *)b[1].buf, n, w, S.norms);
        Py_END_ALLOW_THREADS
    } else if (have_norms) {
        memset(S.norms, 0, (size_t)n * 4);
    }
    if (have_norms) PyBuffer_Release(&nb);
    ret = Py_BuildValue("(ni)", S.count, (int)S.top_bits);
done:
    for (int i = 0; i < got; i++) PyBuffer_Release(&b[i]);
    return ret;
#else
    (void)objs;
    (void)factor;
    PyErr_SetString(PyExc_RuntimeError, "dot_select: built without AMX support");
    return NULL;
#endif
}

static PyObject *py_dot_select_blocks(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *objs[12];
    int fd;
    double factor;
    if (!PyArg_ParseTuple(args, "OiOOOOOdOOOOO", &objs[0], &fd, &objs[1], &objs[2], &objs[3], &objs[4], &objs[5],
                          &factor, &objs[6], &objs[7], &objs[8], &objs[9], &objs[10]))
        return NULL;
#ifdef HAVE_AMX
    if (!amx_usable()) {
        PyErr_SetString(PyExc_RuntimeError, "dot_select_blocks: this CPU or kernel offers no AMX bf16 tiles");
        return NULL;
    }
    Py_buffer b[11];
    const char *fmts[11] = {"f", "l", "l", "l", "f", "B", "l", "l", "f", "f", "i"};
    const char *names[11] = {"q", "blocks", "lo", "hi", "top", "ok", "rows", "cols", "vals", "norms", "tops"};
    const int writable[11] = {0, 0, 0, 0, 1, 0, 1, 1, 1, 1, 1};
    PyObject *ret = NULL;
    int got = get_buffers(objs, b, 11, fmts, writable, names);
    if (got < 11) goto done;
    Py_ssize_t nq = dim(&b[0], 0), W = dim(&b[0], 1), m = dim(&b[1], 0), k = dim(&b[4], 1);
    Py_ssize_t cap = len1(&b[6]), nok = len1(&b[5]);
    const int64_t *bl = (const int64_t *)b[1].buf;
    int64_t total = 0;
    int bad = fd < 0 || b[0].ndim != 2 || b[1].ndim != 2 || dim(&b[1], 1) != 4 || len1(&b[2]) != nq ||
              len1(&b[3]) != nq || b[4].ndim != 2 || dim(&b[4], 0) != nq || k < 1 || cap < 0 ||
              len1(&b[7]) != cap || len1(&b[8]) != cap || len1(&b[10]) != m || nq > INT32_MAX;
    for (Py_ssize_t i = 0; !bad && i < m; i++) {
        const int64_t *r = bl + 4 * i;
        /* start, offset, rows >= 0; 0 <= width <= W; entries < 2^31 (the sink's windows); the
         * block's bytes within int64 */
        if (r[0] < 0 || r[1] < 0 || r[2] < 0 || r[3] < 0 || r[3] > W || r[2] > INT32_MAX ||
            r[0] > INT32_MAX - r[2] || (r[3] && r[2] > (INT64_MAX - r[1]) / 2 / r[3]))
            bad = 1;
        else
            total += r[2];
    }
    if (bad || len1(&b[9]) != total || (nok != 0 && nok != total)) {
        PyErr_SetString(PyExc_ValueError, "dot_select_blocks: q (nq, W), blocks (m, 4) of start, offset, rows, "
                                          "width <= W; lo, hi (nq,); top (nq, k); ok (rows,) or (0,); three outputs "
                                          "of one size; norms (rows,); tops (m,) expected");
        goto done;
    }
    Py_ssize_t nk = (W + 31) / 32, ng = (nq + 15) / 16;
    size_t qn = (size_t)(nq > 0 ? nq : 1);
    int64_t *sel = malloc(qn * 3 * sizeof(int64_t));
    float *qsel = malloc(qn * (size_t)(W > 0 ? W : 1) * 4), *tsel = malloc(qn * (size_t)k * 4);
    uint16_t *bhi = aligned_alloc(64, (size_t)((ng * nk * 512 * 2 + 31) / 32 * 32 + 32) * 2);
    uint16_t *pad = aligned_alloc(64, (size_t)((16 * nk * 32 + 31) / 32 * 32 + 32) * 2);
    uint16_t *stage = aligned_alloc(64, (size_t)((STAGE_ROWS * W + 31) / 32 * 32 + 32) * 2);
    Py_ssize_t count = 0, done = 0;
    int err = 0;
    if (!sel || !qsel || !tsel || !bhi || !pad || !stage) {
        PyErr_NoMemory();
    } else {
        run_t R = {fd, (const float *)b[0].buf, nq, W, k, bl, m, (const int64_t *)b[2].buf, (const int64_t *)b[3].buf,
                   (float *)b[4].buf, nok ? (const uint8_t *)b[5].buf : NULL, (float)factor, (int64_t *)b[6].buf,
                   (int64_t *)b[7].buf, (float *)b[8].buf, cap, (float *)b[9].buf, (int32_t *)b[10].buf};
        Py_BEGIN_ALLOW_THREADS
        done = run_blocks(&R, &count, &err, sel, qsel, tsel, sel + qn, sel + 2 * qn, bhi, bhi + ng * nk * 512, pad,
                          stage);
        Py_END_ALLOW_THREADS
        PyObject *exc = err ? os_error(err) : NULL;
        if (!err || exc) ret = Py_BuildValue("(nnO)", done, count, err ? exc : Py_None);
        Py_XDECREF(exc);
    }
    free(sel);
    free(qsel);
    free(tsel);
    free(bhi);
    free(pad);
    free(stage);
done:
    for (int i = 0; i < got; i++) PyBuffer_Release(&b[i]);
    return ret;
#else
    (void)objs;
    (void)fd;
    (void)factor;
    PyErr_SetString(PyExc_RuntimeError, "dot_select_blocks: built without AMX support");
    return NULL;
#endif
}

/* ---- selection ------------------------------------------------------------------------------ */

static Py_ssize_t select_rows(const float *s, Py_ssize_t m, Py_ssize_t n, float *top, Py_ssize_t k,
                              const int64_t *lo, const int64_t *hi, double factor,
                              int64_t *rows, int64_t *cols, float *vals) {
    Py_ssize_t count = 0;
    for (Py_ssize_t j = 0; j < m; j++) {
        const float *row = s + j * n;
        float *t = top + j * k;
        Py_ssize_t a = lo[j] < 0 ? 0 : (Py_ssize_t)lo[j], b = hi[j] > n ? n : (Py_ssize_t)hi[j];
        for (Py_ssize_t c = a; c < b; c++) {
            float v = row[c];
            if (v > t[k - 1]) {
                Py_ssize_t p = k - 1;
                while (p > 0 && t[p - 1] < v) {
                    t[p] = t[p - 1];
                    p--;
                }
                t[p] = v;
            }
        }
        double thr = (double)t[k - 1] * factor;
        for (Py_ssize_t c = a; c < b; c++) {
            float v = row[c];
            if (v > 0.0f && (double)v >= thr) {
                rows[count] = j;
                cols[count] = c;
                vals[count] = v;
                count++;
            }
        }
    }
    return count;
}

static PyObject *py_select(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *so, *to, *loo, *hio, *ro, *co, *vo;
    double factor;
    if (!PyArg_ParseTuple(args, "OOOOdOOO", &so, &to, &loo, &hio, &factor, &ro, &co, &vo)) return NULL;
    Py_buffer bs, bt, blo, bhi, br, bc, bv;
    Py_buffer *all[7] = {&bs, &bt, &blo, &bhi, &br, &bc, &bv};
    PyObject *objs[7] = {so, to, loo, hio, ro, co, vo};
    const char *fmts[7] = {"f", "f", "l", "l", "l", "l", "f"};
    const char *names[7] = {"s", "top", "lo", "hi", "rows", "cols", "vals"};
    int writable[7] = {0, 1, 0, 0, 1, 1, 1};
    int got = 0;
    PyObject *ret = NULL;
    for (; got < 7; got++) {
        if (get_2d(objs[got], all[got], fmts[got], writable[got], names[got]) != 0) goto done;
        if (strcmp(fmts[got], "l") == 0 && all[got]->itemsize != 8) {
            PyErr_Format(PyExc_TypeError, "%s: int64 expected", names[got]);
            got++;
            goto done;
        }
    }
    Py_ssize_t m = dim(&bs, 0), n = dim(&bs, 1), k = dim(&bt, 1);
    if (bs.ndim != 2 || bt.ndim != 2 || dim(&bt, 0) != m || k < 1 || len1(&blo) != m || len1(&bhi) != m ||
        len1(&br) < m * n || len1(&bc) < m * n || len1(&bv) < m * n) {
        PyErr_SetString(PyExc_ValueError, "select: shapes (m, n), (m, k >= 1), (m,), (m,) and >= m n outputs expected");
        goto done;
    }
    Py_ssize_t count;
    Py_BEGIN_ALLOW_THREADS
    count = select_rows((const float *)bs.buf, m, n, (float *)bt.buf, k, (const int64_t *)blo.buf,
                        (const int64_t *)bhi.buf, factor, (int64_t *)br.buf, (int64_t *)bc.buf, (float *)bv.buf);
    Py_END_ALLOW_THREADS
    ret = PyLong_FromSsize_t(count);
done:
    for (int i = 0; i < got; i++) PyBuffer_Release(all[i]);
    return ret;
}

/* ---- reads ----------------------------------------------------------------------------------- */

static PyObject *py_pread_ranges(PyObject *self, PyObject *args) {
    (void)self;
    int fd;
    PyObject *oo, *so, *bo;
    if (!PyArg_ParseTuple(args, "iOOO", &fd, &oo, &so, &bo)) return NULL;
    Py_buffer off, size, out;
    if (get_2d(oo, &off, "l", 0, "offsets") != 0) return NULL;
    if (get_2d(so, &size, "l", 0, "sizes") != 0) { PyBuffer_Release(&off); return NULL; }
    if (PyObject_GetBuffer(bo, &out, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) != 0) {
        PyBuffer_Release(&off);
        PyBuffer_Release(&size);
        return NULL;
    }
    PyObject *ret = NULL;
    Py_ssize_t m = len1(&off);
    const int64_t *o = (const int64_t *)off.buf, *z = (const int64_t *)size.buf;
    int64_t total = 0;
    int bad = off.itemsize != 8 || size.itemsize != 8 || m < 0 || len1(&size) != m;
    for (Py_ssize_t i = 0; !bad && i < m; i++) {
        if (z[i] < 0 || o[i] < 0 || z[i] > out.len - total) bad = 1;   /* no sum past the output (or INT64_MAX) */
        else total += z[i];
    }
    if (bad || total > out.len) {
        PyErr_SetString(PyExc_ValueError, "pread_ranges: int64 offsets and sizes >= 0, an output of their total size");
        goto done;
    }
    int err = 0;
    Py_BEGIN_ALLOW_THREADS
    char *dst = (char *)out.buf;
    for (Py_ssize_t i = 0; i < m && !err; i++) {
        err = pread_full(fd, dst, (size_t)z[i], o[i]);
        dst += z[i];
    }
    Py_END_ALLOW_THREADS
    ret = err ? read_error(err) : PyLong_FromLongLong(total);
done:
    PyBuffer_Release(&off);
    PyBuffer_Release(&size);
    PyBuffer_Release(&out);
    return ret;
}

static PyMethodDef methods[] = {
    {"select", py_select, METH_VARARGS, "select(s, top, lo, hi, factor, rows, cols, vals) -> count."},
    {"dot_select", py_dot_select, METH_VARARGS,
     "dot_select(q, bits, top, lo, hi, ok, factor, rows, cols, vals[, norms]) -> (count, largest bits); "
     "count past len(rows): call again."},
    {"dot_select_blocks", py_dot_select_blocks, METH_VARARGS,
     "dot_select_blocks(q, fd, blocks, lo, hi, top, ok, factor, rows, cols, vals, norms, tops) -> "
     "(blocks done, count, OSError of block 'done' or None): dot_select over blocks of a file, one lane's run."},
    {"pread_ranges", py_pread_ranges, METH_VARARGS, "pread_ranges(fd, offsets int64, sizes int64, out) -> bytes read."},
    {"amx", py_amx, METH_NOARGS, "True when dot() runs on AMX tiles here."},
    {"dot", py_dot, METH_VARARGS, "dot(q float32 (nq, w), bits uint16 (n, w), out float32 (nq, n))."},
    {"norms", py_norms, METH_VARARGS, "norms(bits uint16 (n, w), out float32 (n,)) -> largest bit pattern."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native", "native kernels of the search", -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&module); }
