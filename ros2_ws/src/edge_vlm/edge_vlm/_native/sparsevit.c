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
 * svit_fusion and svit_embed run two more stages of a streaming frame on the same kernels
 * (inference/native_stages.py): the fusion's cross-attention with its key/value cache and the
 * vision head, and the token memory's patch embedding and gate.
 *
 * The kernels themselves (GEMM, layer norm, softmax, prefetch) are in svit_kernels.h, included
 * below. Built by scripts/setup.sh (gcc -O3 -shared -fPIC; the vector code is compiled per
 * function with target attributes, so one build serves every x86-64 CPU).
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define SVIT_ABI 12

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
    /* linear weights packed (see gemm): keys/values (2d outputs), output projection, MLP (its
     * activation GELU, erf); q: the queries' projection (nq, d), constant, made by the caller */
    const float *ln_kv_w, *ln_kv_b, *wkv_t, *bkv, *q, *wproj_t, *bproj, *ln2_w, *ln2_b;
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

int64_t svit_abi(void) {
    const size_t sizes = sizeof(svit_layer_t) + sizeof(svit_fusion_t) + sizeof(svit_embed_t);
    return (int64_t)sizes | ((int64_t)SVIT_ABI << 16);
}

int64_t svit_cpu_ok(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}

#include "svit_kernels.h"


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
 * layer `next` (NULL: none) reads; causal_from >= 0: a decoder layer (svit_layer_causal); the
 * first n_kv rows get their keys and values into the memory only (no attention, no output: x
 * keeps their input there). */
static int64_t layer_run(const svit_ops_t *k, const svit_layer_t *L, int64_t n, const int64_t *idx,
                         float *x, const svit_layer_t *next, int64_t causal_from, int64_t n_kv) {
    const int64_t d = L->d, h = L->heads, N = L->ntok, hid = L->hid;
    if (n <= 0)
        return 0;
    if (h <= 0 || d % h || d % 16 || (d / h) % 16 || N % 16 || hid % 16 || n > N || n_kv < 0
        || n_kv > n)
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
    /* the rows past the first n_kv from here on (all of them unless a decoder pass's last block
     * needs only the prefix's keys and values) */
    n -= n_kv, idx += n_kv, x += n_kv * d, qkv += n_kv * 3 * d;
    if (n == 0)
        return 0;
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
    return svit_isa() > 0 ? layer_run(ops(), L, n, idx, x, NULL, -1, 0) : -1;
}

/* A decoder layer (MicroGPT's Block with causal_from): as svit_layer, but token idx[i] attends
 * only to the first causal_from tokens (the visible prefix) and to tokens j <= idx[i]. The
 * memory's tokens that no row may see must hold finite values (the caller zeroes them once).
 * The first n_kv rows get their keys and values only (a pass's last block: the prefix's outputs
 * are read by no one; x keeps their input). */
int64_t svit_layer_causal(const svit_layer_t *L, int64_t n, const int64_t *idx, float *x,
                          int64_t causal_from, int64_t n_kv) {
    if (causal_from < 0)
        return -1;
    return svit_isa() > 0 ? layer_run(ops(), L, n, idx, x, NULL, causal_from, n_kv) : -1;
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
        if (layer_run(k, Ls[l], n, idx, x, l + PF_AHEAD < nl ? Ls[l + PF_AHEAD] : NULL, -1, 0) != 0)
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
    const size_t need = (size_t)n * (size_t)(4 * d) + (size_t)nq * (size_t)(3 * d + N + hid)
                        + (size_t)(4 * d);
    float *buf = workspace(need);
    if (!buf)
        return -2;
    float *zz = buf, *y = zz + n * d, *kv = y + n * d, *s = kv + n * 2 * d;
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
    const float scale = 1.0f / sqrtf((float)dh), str = (float)strength;
    for (int64_t hh = 0; hh < h; hh++) {
        k->gemm(nq, N, dh, F->q + hh * dh, d, F->kt + hh * dh * N, N, s, N, NULL, 0, 0, 0, &pf);
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
