/* Fused encoder block of the sparse ViT (batch 1, float32, one thread): the same arithmetic
 * as Block.sparse_step / Block.dense_step in model/captioner.py, in one call per layer.
 *
 * Why it exists: at the ~20 active tokens of a sparse frame a block is four small matmuls
 * (M = active tokens) and a dozen other tensor calls. Through PyTorch each matmul packs its
 * weight matrix again (the packing is amortised over only M rows) and every call has a fixed
 * cost; together they kept the sparse encoder at ~0.4 of its ideal speedup. Here the weights
 * are stored once, in packed panels, and read in place by a register-tile kernel (AVX-512:
 * up to 12 x 32, AVX2/FMA: 6 x 16); layer norms, the key/value scatter into the token memory, attention
 * (softmax with a vectorised exp), residual adds and the activation run in the same call.
 *
 * Layout of one layer's token memory (owned by the caller, model/captioner.py LayerMemory):
 *   mem_x (N, D) last propagated input, mem_kt (H, D/H, N) keys *transposed*, mem_v (H, N, D/H)
 *   values, mem_out (N, D) output. svit_layer(L, n, idx, x) recomputes the n tokens idx (x: their
 *   (n, D) inputs, overwritten by their outputs); they attend to all N keys/values (fresh ones
 *   for idx, cached ones for the rest). n = N with idx = 0..N-1 is the dense pass.
 *
 * svit_layer_causal runs the caption decoder's blocks (the same Block with a prefix-causal mask:
 * inference/native_decoder.py) on the same code, the masked scores set after the score GEMM.
 *
 * Two sets of kernels, chosen at run time (svit_isa, __builtin_cpu_supports): AVX-512
 * (avx512f/bw/vl/dq) where the CPU has it, else AVX2/FMA/F16C; a CPU with neither runs the
 * caller's PyTorch path (svit_cpu_ok() == 0). Both are float32 arithmetic, in the same order
 * along each dot product; svit_set_isa picks the narrower set (tests and benchmarks compare).
 *
 * Where a sparse pass's fixed cost goes: whatever its token count, a pass reads every layer's
 * weights (float16 copies: 655 KB a layer of the shipped Medium branch) and its whole key/value
 * memory (256 KB a layer): 7.3 MB a pass, more than L2, so it streams from L3, or from DRAM
 * when the caller's other stages evicted it. While a layer computes, its matmul loops prefetch
 * the next layer's weights and keys/values into L2 (svit_pf_t, a line per step of the k loop,
 * passes of up to PF_MAX_N tokens): the stream then overlaps the arithmetic.
 *
 * Built by scripts/setup.sh (gcc -O3 -shared -fPIC; the vector code is compiled per function
 * with target attributes, so one build serves every x86-64 CPU).
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define SVIT_ABI 10

typedef struct {
    int64_t d, heads, hid, ntok, act;           /* act: 0 relu, 1 gelu (erf) */
    double eps1, eps2;
    /* linear weights packed (see gemm), hid padded to a multiple of 16 with zero weights */
    const float *ln1_w, *ln1_b, *wqkv_t, *bqkv, *wproj_t, *bproj, *ln2_w, *ln2_b, *w1_t, *b1, *w2_t, *b2;
    float *mem_x, *mem_kt, *mem_v, *mem_out;
    /* optional float16 copies of the four packed weights (NULL: none), read instead of the
     * float32 ones when all four are set: the caller sets them only when they are exact */
    const uint16_t *wqkv_h, *wproj_h, *w1_h, *w2_h;
} svit_layer_t;

/* The token memory's patch embedding and gate (svit_embed, below). */
typedef struct {
    int64_t d, ch, patch, h, w;                 /* model dim, event channels, patch side, frame */
    /* fc1 over the event columns only (ch * patch * patch inputs: the RGB columns of an
     * events-only frame are zeros), fc2, gate (2d inputs: new, old); packed (see gemm) */
    const float *w1_t, *b1, *w2_t, *b2, *wg_t, *bg;
} svit_embed_t;

/* The fusion's cross-attention with its per-token key/value cache (svit_fusion, below). */
typedef struct {
    int64_t d, heads, ntok, nq, hid, nage;      /* hid: MLP channels (a multiple of 16) */
    double eps_kv, eps2;
    const float *queries, *age;                 /* (nq, d), (nage, d) */
    /* linear weights packed (see gemm): keys/values (2d outputs), queries, output projection,
     * MLP; the MLP's activation is GELU (erf) */
    const float *ln_kv_w, *ln_kv_b, *wkv_t, *bkv, *wq_t, *bq, *wproj_t, *bproj, *ln2_w, *ln2_b;
    const float *w1_t, *b1, *w2_t, *b2;
    /* the vision head (model/sttf.py gesture_logits): layer norm over (mean of the fused
     * queries, mean of the cached z rows of bucket <= dyn_bucket), then (ncls, 2d) row-major */
    int64_t ncls, dyn_bucket;
    double eps_g;
    const float *gln_w, *gln_b, *gfc_w, *gfc_b;
    /* the cache (owned by the caller): z (N, d) tokens + age embedding, keys transposed
     * (H, d/H, N), values (H, N, d/H) */
    float *z, *kt, *v;
} svit_fusion_t;

int64_t svit_abi(void) { return (int64_t)(sizeof(svit_layer_t) + sizeof(svit_fusion_t) + sizeof(svit_embed_t)) | ((int64_t)SVIT_ABI << 16); }

int64_t svit_cpu_ok(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}

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

/* 2: AVX-512, 1: AVX2/FMA/F16C, 0: neither (the caller runs PyTorch) */
static int64_t cpu_isa(void) {
    __builtin_cpu_init();
    if (!svit_cpu_ok())
        return 0;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
        && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        return 2;
    return 1;
}

static int64_t isa_now = -1;                     /* -1: not chosen yet */

/* The kernels in use: the widest this CPU runs, unless svit_set_isa chose narrower. */
int64_t svit_isa(void) {
    if (isa_now < 0)
        isa_now = cpu_isa();
    return isa_now;
}

/* Use the kernels of `isa` (1: AVX2, 2: AVX-512; tests and benchmarks compare them) when this CPU
 * runs them, else the widest it does; -1: the default. Returns the ISA then in use. */
int64_t svit_set_isa(int64_t isa) {
    const int64_t best = cpu_isa();
    isa_now = isa < 0 || isa > best ? best : isa;
    return isa_now;
}

static int64_t pf_on = 1;

/* Prefetch the next layer's data (1, the default) or not (0: tests and benchmarks compare; the
 * results are the same); < 0: unchanged. Returns the setting before. Process-wide. */
int64_t svit_set_prefetch(int64_t on) {
    const int64_t was = pf_on;
    if (on >= 0)
        pf_on = on != 0;
    return was;
}

static const svit_ops_t *ops(void) { return svit_isa() >= 2 ? &ops_avx512 : &ops_avx2; }

/* Scratch of the calling thread, grown on demand and kept: a fresh malloc of this size (over
 * glibc's mmap threshold at ~20 tokens) would map, fault in and unmap its pages on every layer. */
static __thread float *ws_buf;
static __thread size_t ws_cap;

static float *workspace(size_t floats) {
    if (floats > ws_cap) {
        float *p = (float *)realloc(ws_buf, floats * sizeof(float));
        if (!p)
            return NULL;
        ws_buf = p;
        ws_cap = floats;
    }
    return ws_buf;
}

static void pf_add(svit_pf_t *pf, const void *p, int64_t bytes) {
    if (!p || bytes <= 0 || pf->nr >= PF_RANGES)
        return;
    const char *b = (const char *)((uintptr_t)p & ~(uintptr_t)63);
    pf->b[pf->nr] = b;
    pf->e[pf->nr] = (const char *)p + bytes;
    pf->nr++;
}

/* The prefetch ranges of layer L over n tokens, in the order layer_run reads them. */
static void pf_layer(svit_pf_t *pf, const svit_layer_t *L, int64_t n, int64_t half_max_n) {
    pf->p = pf->end = NULL;
    pf->r = pf->nr = 0;
    if (!L)
        return;
    const int64_t d = L->d, N = L->ntok, hid = L->hid;
    const int half = n <= half_max_n && L->wqkv_h && L->wproj_h && L->w1_h && L->w2_h;
    const int64_t es = half ? 2 : 4, f = 4;
    pf_add(pf, L->ln1_w, d * f);
    pf_add(pf, L->ln1_b, d * f);
    pf_add(pf, half ? (const void *)L->wqkv_h : L->wqkv_t, 3 * d * d * es);
    pf_add(pf, L->bqkv, 3 * d * f);
    pf_add(pf, L->mem_kt, d * N * f);
    pf_add(pf, L->mem_v, d * N * f);
    pf_add(pf, half ? (const void *)L->wproj_h : L->wproj_t, d * d * es);
    pf_add(pf, L->bproj, d * f);
    pf_add(pf, L->ln2_w, d * f);
    pf_add(pf, L->ln2_b, d * f);
    pf_add(pf, half ? (const void *)L->w1_h : L->w1_t, hid * d * es);
    pf_add(pf, L->b1, hid * f);
    pf_add(pf, half ? (const void *)L->w2_h : L->w2_t, hid * d * es);
    pf_add(pf, L->b2, d * f);
}

/* s[i][j] = v where token idx[i] may not see token j (j > idx[i] and j >= causal_from). */
static void mask_after(int64_t n, int64_t N, const int64_t *idx, int64_t causal_from, float *s,
                       float v) {
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = idx[i] + 1 > causal_from ? idx[i] + 1 : causal_from; j < N; j++)
            s[i * N + j] = v;
}

/* One encoder layer over the tokens idx with the kernels k (see svit_layer); prefetches what
 * layer `next` (NULL: none) reads; causal_from >= 0: a decoder layer (svit_layer_causal). */
static int64_t layer_run(const svit_ops_t *k, const svit_layer_t *L, int64_t n, const int64_t *idx,
                         float *x, const svit_layer_t *next, int64_t causal_from) {
    const int64_t d = L->d, h = L->heads, N = L->ntok, hid = L->hid;
    if (n <= 0)
        return 0;
    if (h <= 0 || d % h || d % 16 || (d / h) % 16 || N % 16 || hid % 16 || n > N)
        return -1;
    for (int64_t i = 0; i < n; i++)
        if (idx[i] < 0 || idx[i] >= N)
            return -1;
    const int64_t dh = d / h;
    const size_t need = (size_t)n * (size_t)(d + 3 * d + d + N + hid);
    float *buf = workspace(need);
    if (!buf)
        return -2;
    float *y = buf, *qkv = y + n * d, *att = qkv + n * 3 * d, *s = att + n * d, *hdn = s + n * N;
    svit_pf_t pf;
    pf_layer(&pf, pf_on && n <= PF_MAX_N && n >= PF_MIN_N ? next : NULL, n, k->half_max_n);

    for (int64_t i = 0; i < n; i++)
        memcpy(L->mem_x + idx[i] * d, x + i * d, (size_t)d * sizeof(float));
    k->layer_norm(n, d, x, y, L->ln1_w, L->ln1_b, L->eps1);
    /* float16 weights (the same values): half the bytes to stream, which bounds a sparse step */
    const int half = n <= k->half_max_n && L->wqkv_h && L->wproj_h && L->w1_h && L->w2_h;
    const void *wqkv = half ? (const void *)L->wqkv_h : L->wqkv_t, *wproj = half ? (const void *)L->wproj_h : L->wproj_t;
    const void *w1 = half ? (const void *)L->w1_h : L->w1_t, *w2 = half ? (const void *)L->w2_h : L->w2_t;
    k->gemm(n, 3 * d, d, y, d, wqkv, 0, qkv, 3 * d, L->bqkv, 0, 0, half, &pf);
    for (int64_t i = 0; i < n; i++) {                /* fresh keys / values into the memory */
        const float *kq = qkv + i * 3 * d + d, *vq = kq + d;
        for (int64_t hh = 0; hh < h; hh++) {
            float *kt = L->mem_kt + hh * dh * N + idx[i];
            for (int64_t e = 0; e < dh; e++)
                kt[e * N] = kq[hh * dh + e];
            memcpy(L->mem_v + (hh * N + idx[i]) * dh, vq + hh * dh, (size_t)dh * sizeof(float));
        }
    }
    const float scale = 1.0f / sqrtf((float)dh);
    for (int64_t hh = 0; hh < h; hh++) {
        k->gemm(n, N, dh, qkv + hh * dh, 3 * d, L->mem_kt + hh * dh * N, N, s, N, NULL, 0, 0, 0, &pf);
        if (causal_from >= 0)       /* decoder: token idx[i] sees the prefix and j <= idx[i] */
            mask_after(n, N, idx, causal_from, s, -INFINITY);
        k->softmax(n, N, s, scale);
        if (causal_from >= 0)       /* the clamped exp left ~1e-38 there: exactly 0 instead */
            mask_after(n, N, idx, causal_from, s, 0.0f);
        k->gemm(n, dh, N, s, N, L->mem_v + hh * N * dh, dh, att + hh * dh, d, NULL, 0, 0, 0, &pf);
    }
    k->gemm(n, d, d, att, d, wproj, 0, x, d, L->bproj, 1, 0, half, &pf);     /* x += proj(att) */
    k->layer_norm(n, d, x, y, L->ln2_w, L->ln2_b, L->eps2);
    k->gemm(n, hid, d, y, d, w1, 0, hdn, hid, L->b1, 0, L->act == 0, half, &pf);
    if (L->act != 0) {
        for (int64_t i = 0; i < n * hid; i++) {
            float v = hdn[i];
            hdn[i] = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
        }
    }
    k->gemm(n, d, hid, hdn, hid, w2, 0, x, d, L->b2, 1, 0, half, &pf);        /* x += mlp */
    for (int64_t i = 0; i < n; i++)
        memcpy(L->mem_out + idx[i] * d, x + i * d, (size_t)d * sizeof(float));
    return 0;
}

/* One encoder layer over the tokens idx (see the file comment), on the kernels of svit_isa().
 * Returns 0, or -1 when the shapes are not supported, an index is out of range or no kernels run
 * on this CPU (the caller then runs its PyTorch path, which raises for a bad index), -2 on
 * allocation failure; nothing is written then. */
int64_t svit_layer(const svit_layer_t *L, int64_t n, const int64_t *idx, float *x) {
    return svit_isa() > 0 ? layer_run(ops(), L, n, idx, x, NULL, -1) : -1;
}

/* A decoder layer (MicroGPT's Block with causal_from): as svit_layer, but token idx[i] attends
 * only to the first causal_from tokens (the visible prefix) and to tokens j <= idx[i]. The
 * memory's tokens that no row may see must hold finite values (the caller zeroes them once). */
int64_t svit_layer_causal(const svit_layer_t *L, int64_t n, const int64_t *idx, float *x,
                          int64_t causal_from) {
    if (causal_from < 0)
        return -1;
    return svit_isa() > 0 ? layer_run(ops(), L, n, idx, x, NULL, causal_from) : -1;
}

/* A whole inference pass of the ViT over the tokens idx (no per-layer gating): x[i] =
 * e[idx[i]] + pos[idx[i]] (x: caller's (n, D) buffer), the layers Ls[0..nl) in turn, then the
 * final layer norm of the last layer's output into vis (N, D): of every token when `all_rows`,
 * else of the tokens idx only (vis then holds the norm of the other tokens' unchanged outputs
 * from the earlier passes: the caller says so; vis NULL: no final norm). Returns the number of
 * layers done; fewer than nl when a layer returned an error (nothing of that layer written, x
 * holds its input, vis untouched: the caller goes on with PyTorch). */
int64_t svit_encode(const svit_layer_t *const *Ls, int64_t nl, int64_t n, const int64_t *idx,
                    const float *e, const float *pos, float *x, const float *ln_w, const float *ln_b,
                    double eps, float *vis, int64_t all_rows) {
    if (nl <= 0 || svit_isa() <= 0)
        return 0;
    const svit_ops_t *k = ops();
    const int64_t d = Ls[0]->d, N = Ls[0]->ntok;
    for (int64_t i = 0; i < n; i++) {
        if (idx[i] < 0 || idx[i] >= N)
            return 0;
        const float *a = e + idx[i] * d, *b = pos + idx[i] * d;
        for (int64_t c = 0; c < d; c++)
            x[i * d + c] = a[c] + b[c];
    }
    for (int64_t l = 0; l < nl; l++)
        if (layer_run(k, Ls[l], n, idx, x, l + PF_AHEAD < nl ? Ls[l + PF_AHEAD] : NULL, -1) != 0)
            return l;
    const float *out = Ls[nl - 1]->mem_out;
    if (!vis)
        ;                                       /* the caller runs more layers and its own norm */
    else if (all_rows)
        k->layer_norm(N, d, out, vis, ln_w, ln_b, eps);
    else
        for (int64_t i = 0; i < n; i++)
            k->layer_norm(1, d, out + idx[i] * d, vis + idx[i] * d, ln_w, ln_b, eps);
    return nl;
}

/* The vision head of the fused queries out (nq, d) and the cached z (see svit_fusion_t). */
static void vision_head(const svit_ops_t *k, const svit_fusion_t *F, const float *out,
                        const int64_t *bucket, float *hv, float *logits) {
    const int64_t d = F->d, N = F->ntok;
    float *hn = hv + 2 * d;
    for (int64_t c = 0; c < 2 * d; c++)
        hv[c] = 0.0f;
    for (int64_t i = 0; i < F->nq; i++)
        for (int64_t c = 0; c < d; c++)
            hv[c] += out[i * d + c];
    int64_t cnt = 0;
    for (int64_t j = 0; j < N; j++)
        if (bucket[j] <= F->dyn_bucket) {
            cnt++;
            for (int64_t c = 0; c < d; c++)
                hv[d + c] += F->z[j * d + c];
        }
    for (int64_t c = 0; c < d; c++) {
        hv[c] /= (float)F->nq;
        hv[d + c] /= (float)(cnt > 0 ? cnt : 1);
    }
    k->layer_norm(1, 2 * d, hv, hn, F->gln_w, F->gln_b, F->eps_g);
    for (int64_t o = 0; o < F->ncls; o++) {
        float acc = F->gfc_b[o];
        for (int64_t c = 0; c < 2 * d; c++)
            acc += F->gfc_w[o * 2 * d + c] * hn[c];
        logits[o] = acc;
    }
}

/* The fusion (model/sttf.py Fusion, inference/fusion_cache.py): the tokens idx (n of them) get
 * z = vis + age[bucket] and their keys/values (layer norm, projection) in the cache; then the nq
 * learned queries attend to all N cached keys/values, the scores biased by strength * change[j],
 * and x = queries + proj(attention), out = x + mlp(ln2(x)) (nq, d); then the vision head's
 * logits (ncls). n = N with idx = 0..N-1 fills the whole cache. Returns 0, -1 when the shapes are not supported, an index or bucket is
 * out of range or no kernels run on this CPU (nothing written; the caller runs PyTorch), -2 on
 * allocation failure. */
int64_t svit_fusion(const svit_fusion_t *F, int64_t n, const int64_t *idx, const float *vis,
                    const int64_t *bucket, const uint8_t *change, double strength, float *out,
                    float *logits) {
    const int64_t d = F->d, h = F->heads, N = F->ntok, nq = F->nq, hid = F->hid;
    if (svit_isa() <= 0 || h <= 0 || d % h || d % 16 || (d / h) % 16 || N % 16 || hid % 16
        || nq <= 0 || n < 0 || n > N)
        return -1;
    for (int64_t i = 0; i < n; i++)
        if (idx[i] < 0 || idx[i] >= N || bucket[idx[i]] < 0 || bucket[idx[i]] >= F->nage)
            return -1;
    if (F->ncls <= 0 || F->dyn_bucket < 0)
        return -1;
    const svit_ops_t *k = ops();
    const int64_t dh = d / h;
    const size_t need = (size_t)n * (size_t)(4 * d) + (size_t)nq * (size_t)(4 * d + N + hid)
                        + (size_t)(4 * d);
    float *buf = workspace(need);
    if (!buf)
        return -2;
    float *zz = buf, *y = zz + n * d, *kv = y + n * d, *q = kv + n * 2 * d, *s = q + nq * d;
    float *att = s + nq * N, *y2 = att + nq * d, *hdn = y2 + nq * d;
    svit_pf_t pf = {0};
    for (int64_t i = 0; i < n; i++) {                /* z rows, into the cache */
        const float *a = vis + idx[i] * d, *e = F->age + bucket[idx[i]] * d;
        for (int64_t c = 0; c < d; c++)
            zz[i * d + c] = a[c] + e[c];
        memcpy(F->z + idx[i] * d, zz + i * d, (size_t)d * sizeof(float));
    }
    if (n) {
        k->layer_norm(n, d, zz, y, F->ln_kv_w, F->ln_kv_b, F->eps_kv);
        k->gemm(n, 2 * d, d, y, d, F->wkv_t, 0, kv, 2 * d, F->bkv, 0, 0, 0, &pf);
    }
    for (int64_t i = 0; i < n; i++) {                /* fresh keys / values into the cache */
        const float *kq = kv + i * 2 * d, *vq = kq + d;
        for (int64_t hh = 0; hh < h; hh++) {
            float *kt = F->kt + hh * dh * N + idx[i];
            for (int64_t e = 0; e < dh; e++)
                kt[e * N] = kq[hh * dh + e];
            memcpy(F->v + (hh * N + idx[i]) * dh, vq + hh * dh, (size_t)dh * sizeof(float));
        }
    }
    k->gemm(nq, d, d, F->queries, d, F->wq_t, 0, q, d, F->bq, 0, 0, 0, &pf);
    const float scale = 1.0f / sqrtf((float)dh), str = (float)strength;
    for (int64_t hh = 0; hh < h; hh++) {
        k->gemm(nq, N, dh, q + hh * dh, d, F->kt + hh * dh * N, N, s, N, NULL, 0, 0, 0, &pf);
        for (int64_t i = 0; i < nq; i++)             /* scaled scores plus the mask's bias */
            for (int64_t j = 0; j < N; j++)
                s[i * N + j] = s[i * N + j] * scale + (change[j] ? str : 0.0f);
        k->softmax(nq, N, s, 1.0f);
        k->gemm(nq, dh, N, s, N, F->v + hh * N * dh, dh, att + hh * dh, d, NULL, 0, 0, 0, &pf);
    }
    memcpy(out, F->queries, (size_t)(nq * d) * sizeof(float));
    k->gemm(nq, d, d, att, d, F->wproj_t, 0, out, d, F->bproj, 1, 0, 0, &pf);   /* += proj */
    k->layer_norm(nq, d, out, y2, F->ln2_w, F->ln2_b, F->eps2);
    k->gemm(nq, hid, d, y2, d, F->w1_t, 0, hdn, hid, F->b1, 0, 0, 0, &pf);
    for (int64_t i = 0; i < nq * hid; i++) {
        float v = hdn[i];
        hdn[i] = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    }
    k->gemm(nq, d, hid, hdn, hid, F->w2_t, 0, out, d, F->b2, 1, 0, 0, &pf);     /* += mlp */
    vision_head(k, F, out, bucket, hdn + nq * hid, logits);
    return 0;
}

/* The token memory update of an events-only frame (model/sttf.py PatchEmbed, the engine's
 * _update_memory): for each of the n tokens idx, its patch of hist (ch, h, w) as log1p counts
 * (zeros where on[i] is 0: a patch outside the change mask counts as empty), embedded as
 * fc2(gelu(fc1(.))); where merge[i], gated into the token's row of e (N, d): g = sigmoid(gate(new,
 * old)), e = g * new + (1 - g) * old; else it replaces the row. Returns 0, -1 when the shapes
 * are not supported, an index is out of range or no kernels run on this CPU (nothing written;
 * the caller runs PyTorch), -2 on allocation failure. */
int64_t svit_embed(const svit_embed_t *E, int64_t n, const int64_t *idx, const uint8_t *on,
                   const uint8_t *merge, const float *hist, float *e, int64_t ntok) {
    const int64_t d = E->d, p = E->patch, C = E->ch, K = C * p * p;
    if (svit_isa() <= 0 || d % 16 || K % 16 || p <= 0 || E->h % p || E->w % p || n < 0
        || ntok != (E->h / p) * (E->w / p))
        return -1;
    for (int64_t i = 0; i < n; i++)
        if (idx[i] < 0 || idx[i] >= ntok)
            return -1;
    if (n == 0)
        return 0;
    const svit_ops_t *k = ops();
    float *buf = workspace((size_t)n * (size_t)(K + 4 * d));
    if (!buf)
        return -2;
    float *x = buf, *hid = x + n * K, *cat = hid + n * d, *g = cat + n * 2 * d;
    svit_pf_t pf = {0};
    const int64_t gw = E->w / p;
    for (int64_t i = 0; i < n; i++) {                /* the patches, as the engine's _content */
        const int64_t gy = idx[i] / gw, gx = idx[i] % gw;
        float *r = x + i * K;
        for (int64_t c = 0; c < C; c++)
            for (int64_t py = 0; py < p; py++) {
                const float *src = hist + (c * E->h + gy * p + py) * E->w + gx * p;
                for (int64_t px = 0; px < p; px++)
                    *r++ = on[i] ? log1pf(src[px]) : 0.0f;
            }
    }
    k->gemm(n, d, K, x, K, E->w1_t, 0, hid, d, E->b1, 0, 0, 0, &pf);
    for (int64_t i = 0; i < n * d; i++) {
        float v = hid[i];
        hid[i] = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    }
    for (int64_t i = 0; i < n; i++)                  /* new into the first half of cat */
        memcpy(cat + i * 2 * d + d, e + idx[i] * d, (size_t)d * sizeof(float));
    k->gemm(n, d, d, hid, d, E->w2_t, 0, cat, 2 * d, E->b2, 0, 0, 0, &pf);
    int any = 0;
    for (int64_t i = 0; i < n; i++)
        any |= merge[i] != 0;
    if (any)
        k->gemm(n, d, 2 * d, cat, 2 * d, E->wg_t, 0, g, d, E->bg, 0, 0, 0, &pf);
    for (int64_t i = 0; i < n; i++) {
        float *row = e + idx[i] * d;
        const float *nw = cat + i * 2 * d, *old = nw + d;
        if (!merge[i]) {
            memcpy(row, nw, (size_t)d * sizeof(float));
            continue;
        }
        for (int64_t c = 0; c < d; c++) {
            const float gg = 1.0f / (1.0f + expf(-g[i * d + c]));
            row[c] = gg * nw[c] + (1.0f - gg) * old[c];
        }
    }
    return 0;
}
