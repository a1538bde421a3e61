/* The kernels of the sparse ViT's library (included once, by sparsevit.c: one translation unit,
 * one libsparsevit.so): the register-tile GEMM over packed weight panels (float32 or exact
 * float16 copies), layer norm and row softmax with a vectorised exp, each for AVX2/FMA/F16C and
 * for AVX-512 (svit_ops_t: the set of one CPU, chosen in sparsevit.c), and the software prefetch
 * the GEMM loops issue for the next layer (svit_pf_t). Both sets are float32 arithmetic in the
 * same order along each dot product. */
#ifndef SVIT_KERNELS_H
#define SVIT_KERNELS_H

#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* Software prefetch of what the next layer reads (in the order it reads it: norms, weights,
 * keys/values), issued from the matmul loops of this layer: PF_LINES cache lines per step of the
 * k loop, into L2 (pf_layer sets the ranges; empty: nothing). Prefetches never fault and change
 * no value: the results are those without them. */
#define PF_RANGES 16
typedef struct {
    const char *p, *end;                        /* the range being prefetched */
    int r, nr;                                  /* the next range, the number of ranges */
    const char *b[PF_RANGES], *e[PF_RANGES];
} svit_pf_t;

#ifndef PF_LINES
#define PF_LINES 1
#endif
static inline __attribute__((always_inline)) void pf_tick(svit_pf_t *pf) {
#if PF_LINES > 0
    for (int i = 0; i < PF_LINES; i++) {
        if (pf->p >= pf->end) {
            if (pf->r >= pf->nr)
                return;
            pf->p = pf->b[pf->r];
            pf->end = pf->e[pf->r];
            pf->r++;
        }
        _mm_prefetch(pf->p, _MM_HINT_T1);
        pf->p += 64;
    }
#else
    (void)pf;
#endif
}

#define TGT __attribute__((target("avx2,fma,f16c")))
#define INL static inline __attribute__((always_inline, target("avx2,fma,f16c")))

INL float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

INL float hmax(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* exp(x) for x <= 0 (softmax after the max is subtracted): 2^k * p(r), r = x - k ln2 in
 * [-ln2/2, ln2/2], p a degree-6 polynomial (relative error ~2e-7 on the range). */
INL __m256 exp_ps(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.0f);
    x = _mm256_max_ps(x, lo);
    __m256 k = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(k, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

/* Row k of a 16-column weight panel as two vectors: float16 weights (exact copies of
 * fp16-representable ones: half the bytes) or float32. */
INL void load_b(const int half, const void *B, int64_t ldb, int64_t k, __m256 *b0, __m256 *b1) {
    if (half) {
        const uint16_t *b = (const uint16_t *)B + k * ldb;
        *b0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)b));
        *b1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(b + 8)));
    } else {
        const float *b = (const float *)B + k * ldb;
        *b0 = _mm256_loadu_ps(b);
        *b1 = _mm256_loadu_ps(b + 8);
    }
}

/* C[i, j0:j0+16] (mr rows) = [C +] A[i, :] . B[:, j0:j0+16] [+ bias] [relu] */
INL void tile(const int mr, const int half, int64_t K, const float *A, int64_t lda, const void *B, int64_t ldb,
              float *C, int64_t ldc, const float *bias, int acc, int relu, svit_pf_t *pf) {
    __m256 c0[6], c1[6];
    for (int r = 0; r < mr; r++) {
        c0[r] = _mm256_setzero_ps();
        c1[r] = _mm256_setzero_ps();
    }
    int64_t k = 0;
    if (mr <= 2) {
        /* Few rows: 2*mr accumulator chains are too few to hide the FMA latency (the loop would
         * wait on it, not on the arithmetic), so odd k accumulate into a second set (d0, d1). */
        __m256 d0[2], d1[2];
        for (int r = 0; r < mr; r++) {
            d0[r] = _mm256_setzero_ps();
            d1[r] = _mm256_setzero_ps();
        }
        for (; k + 2 <= K; k += 2) {
            __m256 b0, b1, e0, e1;
            load_b(half, B, ldb, k, &b0, &b1);
            load_b(half, B, ldb, k + 1, &e0, &e1);
            pf_tick(pf);
            for (int r = 0; r < mr; r++) {
                __m256 a = _mm256_broadcast_ss(A + r * lda + k), a2 = _mm256_broadcast_ss(A + r * lda + k + 1);
                c0[r] = _mm256_fmadd_ps(a, b0, c0[r]);
                c1[r] = _mm256_fmadd_ps(a, b1, c1[r]);
                d0[r] = _mm256_fmadd_ps(a2, e0, d0[r]);
                d1[r] = _mm256_fmadd_ps(a2, e1, d1[r]);
            }
        }
        for (int r = 0; r < mr; r++) {
            c0[r] = _mm256_add_ps(c0[r], d0[r]);
            c1[r] = _mm256_add_ps(c1[r], d1[r]);
        }
    }
    for (; k < K; k++) {
        __m256 b0, b1;
        load_b(half, B, ldb, k, &b0, &b1);
        pf_tick(pf);
        for (int r = 0; r < mr; r++) {
            __m256 a = _mm256_broadcast_ss(A + r * lda + k);
            c0[r] = _mm256_fmadd_ps(a, b0, c0[r]);
            c1[r] = _mm256_fmadd_ps(a, b1, c1[r]);
        }
    }
    __m256 z = _mm256_setzero_ps();
    __m256 bb0 = bias ? _mm256_loadu_ps(bias) : z, bb1 = bias ? _mm256_loadu_ps(bias + 8) : z;
    for (int r = 0; r < mr; r++) {
        float *c = C + r * ldc;
        __m256 v0 = _mm256_add_ps(c0[r], bb0), v1 = _mm256_add_ps(c1[r], bb1);
        if (acc) {
            v0 = _mm256_add_ps(v0, _mm256_loadu_ps(c));
            v1 = _mm256_add_ps(v1, _mm256_loadu_ps(c + 8));
        }
        if (relu) {
            v0 = _mm256_max_ps(v0, z);
            v1 = _mm256_max_ps(v1, z);
        }
        _mm256_storeu_ps(c, v0);
        _mm256_storeu_ps(c + 8, v1);
    }
}

/* One 16-column panel of C for all M rows: 6-row tiles, then the remaining rows. */
INL void panel(const int half, int64_t M, int64_t K, const float *A, int64_t lda, const void *bj, int64_t ldb,
               float *C, int64_t ldc, const float *biasj, int acc, int relu, svit_pf_t *pf) {
    int64_t i = 0;
    for (; i + 6 <= M; i += 6)
        tile(6, half, K, A + i * lda, lda, bj, ldb, C + i * ldc, ldc, biasj, acc, relu, pf);
    const float *a = A + i * lda;
    float *c = C + i * ldc;
    switch (M - i) {
    case 5: tile(5, half, K, a, lda, bj, ldb, c, ldc, biasj, acc, relu, pf); break;
    case 4: tile(4, half, K, a, lda, bj, ldb, c, ldc, biasj, acc, relu, pf); break;
    case 3: tile(3, half, K, a, lda, bj, ldb, c, ldc, biasj, acc, relu, pf); break;
    case 2: tile(2, half, K, a, lda, bj, ldb, c, ldc, biasj, acc, relu, pf); break;
    case 1: tile(1, half, K, a, lda, bj, ldb, c, ldc, biasj, acc, relu, pf); break;
    default: break;
    }
}

/* C (M x N, ldc) = [C +] A (M x K, lda) . B [+ bias] [relu]. B is K x N row-major float32
 * (leading dimension ldb > 0), or with ldb = 0 *packed*: N/16 panels, each K x 16 contiguous
 * (the weights: a panel streams sequentially from memory, where K rows 4 KB apart defeat the
 * prefetcher), float32 or, with `half`, float16. */
TGT static void gemm_h(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const void *B, int64_t ldb,
                       float *C, int64_t ldc, const float *bias, int acc, int relu, int half,
                       svit_pf_t *pf) {
    int64_t j = 0;
    const int packed = ldb == 0;
    for (; j + 16 <= N; j += 16) {
        const float *biasj = bias ? bias + j : NULL;
        if (packed && half)
            panel(1, M, K, A, lda, (const uint16_t *)B + j * K, 16, C + j, ldc, biasj, acc, relu, pf);
        else if (packed)
            panel(0, M, K, A, lda, (const float *)B + j * K, 16, C + j, ldc, biasj, acc, relu, pf);
        else
            panel(0, M, K, A, lda, (const float *)B + j, ldb, C + j, ldc, biasj, acc, relu, pf);
    }
    const float *Bf = (const float *)B;
    for (; j < N && !packed; j++) {             /* column tail (N not a multiple of 16) */
        for (int64_t i = 0; i < M; i++) {
            float s = bias ? bias[j] : 0.0f;
            for (int64_t k = 0; k < K; k++)
                s += A[i * lda + k] * Bf[k * ldb + j];
            if (acc)
                s += C[i * ldc + j];
            C[i * ldc + j] = relu && s < 0.0f ? 0.0f : s;
        }
    }
}

/* y = LayerNorm(x) over rows of length d (d a multiple of 8), biased variance like torch. */
TGT static void layer_norm(int64_t n, int64_t d, const float *x, float *y, const float *w, const float *b, double eps) {
    for (int64_t i = 0; i < n; i++) {
        const float *xi = x + i * d;
        float *yi = y + i * d;
        __m256 s = _mm256_setzero_ps();
        for (int64_t k = 0; k < d; k += 8)
            s = _mm256_add_ps(s, _mm256_loadu_ps(xi + k));
        float mean = hsum(s) / (float)d;
        __m256 m = _mm256_set1_ps(mean), q = _mm256_setzero_ps();
        for (int64_t k = 0; k < d; k += 8) {
            __m256 t = _mm256_sub_ps(_mm256_loadu_ps(xi + k), m);
            q = _mm256_fmadd_ps(t, t, q);
        }
        float rstd = (float)(1.0 / sqrt((double)(hsum(q) / (float)d) + eps));
        __m256 rs = _mm256_set1_ps(rstd);
        for (int64_t k = 0; k < d; k += 8) {
            __m256 t = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(xi + k), m), rs);
            _mm256_storeu_ps(yi + k, _mm256_fmadd_ps(t, _mm256_loadu_ps(w + k), _mm256_loadu_ps(b + k)));
        }
    }
}

/* In place softmax of each row of s (n x len) after scaling by `scale`. */
TGT static void softmax_rows(int64_t n, int64_t len, float *s, float scale) {
    __m256 sc = _mm256_set1_ps(scale);
    for (int64_t i = 0; i < n; i++) {
        float *r = s + i * len;
        __m256 mx = _mm256_set1_ps(-INFINITY);
        for (int64_t k = 0; k < len; k += 8)
            mx = _mm256_max_ps(mx, _mm256_loadu_ps(r + k));
        __m256 m = _mm256_set1_ps(hmax(mx) * scale), sum = _mm256_setzero_ps();
        for (int64_t k = 0; k < len; k += 8) {
            __m256 e = exp_ps(_mm256_fmsub_ps(_mm256_loadu_ps(r + k), sc, m));
            _mm256_storeu_ps(r + k, e);
            sum = _mm256_add_ps(sum, e);
        }
        __m256 inv = _mm256_set1_ps(1.0f / hsum(sum));
        for (int64_t k = 0; k < len; k += 8)
            _mm256_storeu_ps(r + k, _mm256_mul_ps(_mm256_loadu_ps(r + k), inv));
    }
}

/* ---- AVX-512 (avx512f/bw/vl/dq): the same arithmetic on 16-lane vectors ---------------------
 * The register tile is mr x 32 (mr <= 8 rows, two 16-column vectors: 16 accumulators of the 32
 * zmm registers), the rows of a GEMM split into tiles of balanced height (M = 16: 8 + 8, M = 17:
 * 6 + 6 + 5, never a 1-row tile after a full one); a column tile's weights (K x 32, 8-16 KB)
 * stay in L1 while the row tiles pass over them. */
#define ISA5 "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c"
#ifndef MR5
#define MR5 12
#endif
#define TGT5 __attribute__((target(ISA5)))
#define INL5 static inline __attribute__((always_inline, target(ISA5)))

/* exp(x) for x <= 0: exp_ps on 16 lanes (the same constants and steps: the same values). */
INL5 __m512 exp_ps5(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(k, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(k), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(p, _mm512_castsi512_ps(e));
}

/* 16 weights at B + off: float16 (exact copies) or float32. */
INL5 __m512 ldb5(const int half, const void *B, int64_t off) {
    if (half)
        return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)B + off)));
    return _mm512_loadu_ps((const float *)B + off);
}

/* C[0:mr, 0:16 nr] = [C +] A[0:mr, 0:K] . B [+ bias] [relu]; B's row k of column vector p at
 * B + p * ps + k * ks (packed panels: ps = 16 K, ks = 16; row-major: ps = 16, ks = ldb). With
 * few rows (mr <= 3) the odd k accumulate into a second set: enough independent FMA chains to
 * hide the FMA latency. */
INL5 void tile5(const int mr, const int nr, const int half, int64_t K, const float *A, int64_t lda,
                const void *B, int64_t ps, int64_t ks, float *C, int64_t ldc, const float *bias,
                int acc, int relu, svit_pf_t *pf) {
    __m512 c[12][2];
    const __m512 z = _mm512_setzero_ps();
    for (int r = 0; r < mr; r++)
        for (int p = 0; p < nr; p++)
            c[r][p] = z;
    int64_t k = 0;
    if (mr <= 3) {
        __m512 d[3][2];
        for (int r = 0; r < mr; r++)
            for (int p = 0; p < nr; p++)
                d[r][p] = z;
        for (; k + 2 <= K; k += 2) {
            __m512 b[2], e[2];
            for (int p = 0; p < nr; p++) {
                b[p] = ldb5(half, B, p * ps + k * ks);
                e[p] = ldb5(half, B, p * ps + (k + 1) * ks);
            }
            pf_tick(pf);
            for (int r = 0; r < mr; r++) {
                __m512 a = _mm512_set1_ps(A[r * lda + k]), a2 = _mm512_set1_ps(A[r * lda + k + 1]);
                for (int p = 0; p < nr; p++) {
                    c[r][p] = _mm512_fmadd_ps(a, b[p], c[r][p]);
                    d[r][p] = _mm512_fmadd_ps(a2, e[p], d[r][p]);
                }
            }
        }
        for (int r = 0; r < mr; r++)
            for (int p = 0; p < nr; p++)
                c[r][p] = _mm512_add_ps(c[r][p], d[r][p]);
    }
    for (; k < K; k++) {
        __m512 b[2];
        for (int p = 0; p < nr; p++)
            b[p] = ldb5(half, B, p * ps + k * ks);
        pf_tick(pf);
        for (int r = 0; r < mr; r++) {
            __m512 a = _mm512_set1_ps(A[r * lda + k]);
            for (int p = 0; p < nr; p++)
                c[r][p] = _mm512_fmadd_ps(a, b[p], c[r][p]);
        }
    }
    for (int r = 0; r < mr; r++) {
        float *cr = C + r * ldc;
        for (int p = 0; p < nr; p++) {
            __m512 v = c[r][p];
            if (bias)
                v = _mm512_add_ps(v, _mm512_loadu_ps(bias + 16 * p));
            if (acc)
                v = _mm512_add_ps(v, _mm512_loadu_ps(cr + 16 * p));
            if (relu)
                v = _mm512_max_ps(v, z);
            _mm512_storeu_ps(cr + 16 * p, v);
        }
    }
}

/* The rows of one column tile (nr vectors wide) in tiles of height mr (a compile-time constant
 * in each case: the accumulators stay in registers). */
#define TILE5_CASES(NR, HALF)                                                                    \
    switch (mr) {                                                                               \
    case 12: tile5(12, NR, HALF, K, a, lda, bj, ps, ks, c, ldc, biasj, acc, relu, pf); break;     \
    case 11: tile5(11, NR, HALF, K, a, lda, bj, ps, ks, c, ldc, biasj, acc, relu, pf); break;     \
    case 10: tile5(10, NR, HALF, K, a, lda, bj, ps, ks, c, ldc, biasj, acc, relu, pf); break;     \
    case 9: tile5(9, NR, HALF, K, a, lda, bj, ps, ks, c, ldc, biasj, acc, relu, pf); break;       \
    case 8: tile5(8, NR, HALF, K, a, lda, bj, ps, ks, c, ldc, biasj, acc, relu, pf); break;       \
    case 7: tile5(7, NR, HALF, K, a, lda, bj, ps, ks, c, ldc, biasj, acc, relu, pf); break;       \
    case 6: tile5(6, NR, HALF, K, a, lda, bj, ps, ks, c, ldc, biasj, acc, relu, pf); break;       \
    case 5: tile5(5, NR, HALF, K, a, lda, bj, ps, ks, c, ldc, biasj, acc, relu, pf); break;       \
    case 4: tile5(4, NR, HALF, K, a, lda, bj, ps, ks, c, ldc, biasj, acc, relu, pf); break;       \
    case 3: tile5(3, NR, HALF, K, a, lda, bj, ps, ks, c, ldc, biasj, acc, relu, pf); break;       \
    case 2: tile5(2, NR, HALF, K, a, lda, bj, ps, ks, c, ldc, biasj, acc, relu, pf); break;       \
    default: tile5(1, NR, HALF, K, a, lda, bj, ps, ks, c, ldc, biasj, acc, relu, pf); break;      \
    }

/* gemm_h's contract (see there) on AVX-512; N a multiple of 16. */
TGT5 static void gemm5(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const void *B,
                       int64_t ldb, float *C, int64_t ldc, const float *bias, int acc, int relu,
                       int half, svit_pf_t *pf) {
    const int packed = ldb == 0;
    const int64_t ps = packed ? 16 * K : 16, ks = packed ? 16 : ldb;
    const int64_t tiles = (M + MR5 - 1) / MR5, base = M / tiles, extra = M % tiles;
    for (int64_t j = 0; j < N; j += 32) {
        const int nr = j + 32 <= N ? 2 : 1;
        const void *bj = half ? (const void *)((const uint16_t *)B + (j / 16) * ps)
                              : (const void *)((const float *)B + (j / 16) * ps);
        const float *biasj = bias ? bias + j : NULL;
        const float *a = A;
        float *c = C + j;
        for (int64_t t = 0; t < tiles; t++) {
            const int mr = (int)(base + (t < extra));
            if (nr == 2 && half) {
                TILE5_CASES(2, 1)
            } else if (nr == 2) {
                TILE5_CASES(2, 0)
            } else if (half) {
                TILE5_CASES(1, 1)
            } else {
                TILE5_CASES(1, 0)
            }
            a += mr * lda;
            c += mr * ldc;
        }
    }
}

/* layer_norm on 16 lanes (d a multiple of 16). */
TGT5 static void layer_norm5(int64_t n, int64_t d, const float *x, float *y, const float *w,
                             const float *b, double eps) {
    for (int64_t i = 0; i < n; i++) {
        const float *xi = x + i * d;
        float *yi = y + i * d;
        __m512 s = _mm512_setzero_ps();
        for (int64_t k = 0; k < d; k += 16)
            s = _mm512_add_ps(s, _mm512_loadu_ps(xi + k));
        const float mean = _mm512_reduce_add_ps(s) / (float)d;
        __m512 m = _mm512_set1_ps(mean), q = _mm512_setzero_ps();
        for (int64_t k = 0; k < d; k += 16) {
            __m512 t = _mm512_sub_ps(_mm512_loadu_ps(xi + k), m);
            q = _mm512_fmadd_ps(t, t, q);
        }
        const float rstd = (float)(1.0 / sqrt((double)(_mm512_reduce_add_ps(q) / (float)d) + eps));
        __m512 rs = _mm512_set1_ps(rstd);
        for (int64_t k = 0; k < d; k += 16) {
            __m512 t = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(xi + k), m), rs);
            _mm512_storeu_ps(yi + k, _mm512_fmadd_ps(t, _mm512_loadu_ps(w + k), _mm512_loadu_ps(b + k)));
        }
    }
}

/* softmax_rows on 16 lanes (len a multiple of 16). */
TGT5 static void softmax5(int64_t n, int64_t len, float *s, float scale) {
    const __m512 sc = _mm512_set1_ps(scale);
    for (int64_t i = 0; i < n; i++) {
        float *r = s + i * len;
        __m512 mx = _mm512_set1_ps(-INFINITY);
        for (int64_t k = 0; k < len; k += 16)
            mx = _mm512_max_ps(mx, _mm512_loadu_ps(r + k));
        __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(mx) * scale), sum = _mm512_setzero_ps();
        for (int64_t k = 0; k < len; k += 16) {
            __m512 e = exp_ps5(_mm512_fmsub_ps(_mm512_loadu_ps(r + k), sc, m));
            _mm512_storeu_ps(r + k, e);
            sum = _mm512_add_ps(sum, e);
        }
        __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sum));
        for (int64_t k = 0; k < len; k += 16)
            _mm512_storeu_ps(r + k, _mm512_mul_ps(_mm512_loadu_ps(r + k), inv));
    }
}

/* ---- the kernels of this CPU ---------------------------------------------------------------- */
typedef struct {
    void (*gemm)(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const void *B,
                 int64_t ldb, float *C, int64_t ldc, const float *bias, int acc, int relu, int half,
                 svit_pf_t *pf);
    void (*layer_norm)(int64_t n, int64_t d, const float *x, float *y, const float *w,
                       const float *b, double eps);
    void (*softmax)(int64_t n, int64_t len, float *s, float scale);
    /* the float16 weight copies are read up to this many tokens (a sparse step, bound by the
     * bytes it streams); above it the float32 ones (AVX-512: the conversion uops compete with
     * the FMAs of a compute-bound dense pass) */
    int64_t half_max_n;
} svit_ops_t;

/* prefetch for passes over PF_MIN_N..PF_MAX_N tokens (more: compute-bound, the float32
 * weights), PF_AHEAD layers ahead */
#ifndef PF_MIN_N
#define PF_MIN_N 1
#endif
#ifndef PF_AHEAD
#define PF_AHEAD 1
#endif
#ifndef PF_MAX_N
#define PF_MAX_N 64
#endif
static const svit_ops_t ops_avx2 = {gemm_h, layer_norm, softmax_rows, INT64_MAX};
#ifndef HALF_MAX_N5
#define HALF_MAX_N5 48
#endif
static const svit_ops_t ops_avx512 = {gemm5, layer_norm5, softmax5, HALF_MAX_N5};

#endif /* SVIT_KERNELS_H */
