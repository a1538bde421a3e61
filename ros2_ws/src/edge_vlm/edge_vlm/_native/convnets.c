/* The small conv nets of a streaming frame, each at batch 1 in one call (float32, one thread):
 *
 * 1. the change-mask net (model/sttf.py ChangeMaskNet), mnet_forward:
 *      x = pool2(log1p(hist)); x = gelu(conv3x3(x)); x = pool2(x); x = gelu(conv3x3(x));
 *      x = pool_q(x) (q = patch / 4); logit = scale * (log1p(count) - offset) + conv1x1(x)
 *    with count the events of each patch (all channels);
 * 2. the motion head's trunk (model/motion.py MotionHead._infer), mhead_forward;
 * 3. the ANC complexity estimator (model/anc.py ComplexityEstimator), mest_forward;
 * 4. the motion head's input maps of a frame (model/motion.py MotionState.update with
 *    patch_channel_counts), mstate_input.
 *
 * Why: each net is a dozen small tensor calls a frame, and PyTorch runs the mask net's first
 * conv (4 -> 8 channels at 64 x 64) on its generic im2col path at batch 1; the mask net alone
 * was about 1 ms of a ~9 ms sparse frame on a 2-core Xeon (`edge-vlm bench sttf`, op_profile).
 * Here the convs accumulate in AVX2 registers (FMA), the GELU is vectorised, and nothing is
 * allocated per call (the caller owns the work buffers).
 *
 * Not bit-identical to PyTorch: the convs add their products in another order (and fused
 * multiply-adds), and erf is the polynomial PyTorch's own vectorised GELU uses (Abramowitz and
 * Stegun 7.1.26, absolute error < 2e-7) with the ViT kernel's exp. tests/test_native_convs.py
 * bounds the differences and checks that whole engines give the same captions, labels and routes.
 *
 * The mask net's passes are in convnets_mask.h (included below: one translation unit).
 *
 * Built by scripts/setup.sh (gcc -O3 -shared -fPIC; the vector code carries target attributes,
 * so one build serves every x86-64 CPU; mnet_cpu_ok() == 0 sends the caller to PyTorch).
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define MNET_ABI 3

typedef struct {
    int64_t c, h, w, patch;     /* input channels and size, patch size (a multiple of 4) */
    int64_t h1, h2;             /* channels of the two 3 x 3 convs */
    const float *w1, *b1;       /* (h1, c, 3, 3), (h1) */
    const float *w2, *b2;       /* (h2, h1, 3, 3), (h2) */
    const float *wh;            /* (h2) head weights; the bias, scale and offset follow */
    double bh, scale, offset;
    const float *lut;           /* lut[i] = log1p(i) as PyTorch computes it, i < nlut */
    int64_t nlut;
} mnet_t;

int64_t mnet_abi(void) { return (int64_t)sizeof(mnet_t) | ((int64_t)MNET_ABI << 16); }

int64_t mnet_cpu_ok(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

#define TGT __attribute__((target("avx2,fma")))
#define INL static inline __attribute__((always_inline, target("avx2,fma")))

/* exp(x) for x <= 0: 2^k * p(r), r = x - k ln2, p of degree 6 (relative error ~2e-7). */
INL __m256 exp_neg(__m256 x) {
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
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
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k),
                                                   _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

/* gelu(x) = x / 2 * (1 + erf(x / sqrt 2)), erf(z) = sign(z) (1 - t r(t) exp(-z^2)),
 * t = 1 / (1 + 0.3275911 |z|). */
INL __m256 gelu8(__m256 x) {
    const __m256 sgn = _mm256_set1_ps(-0.0f), one = _mm256_set1_ps(1.0f);
    __m256 z = _mm256_mul_ps(x, _mm256_set1_ps(0.70710678118654752f));
    __m256 s = _mm256_and_ps(sgn, z), a = _mm256_xor_ps(s, z);
    __m256 t = _mm256_div_ps(one, _mm256_fmadd_ps(_mm256_set1_ps(0.3275911f), a, one));
    __m256 r = _mm256_fmadd_ps(_mm256_set1_ps(1.061405429f), t, _mm256_set1_ps(-1.453152027f));
    r = _mm256_fmadd_ps(r, t, _mm256_set1_ps(1.421413741f));
    r = _mm256_fmadd_ps(r, t, _mm256_set1_ps(-0.284496736f));
    r = _mm256_fmadd_ps(r, t, _mm256_set1_ps(0.254829592f));
    __m256 e = exp_neg(_mm256_xor_ps(sgn, _mm256_mul_ps(z, z)));
    __m256 erf = _mm256_xor_ps(s, _mm256_fnmadd_ps(_mm256_mul_ps(e, t), r, one));
    return _mm256_mul_ps(_mm256_mul_ps(x, _mm256_set1_ps(0.5f)), _mm256_add_ps(one, erf));
}

#include "convnets_mask.h"

/* ------------------------------------------------------------------------------------------
 * The motion head's trunk (model/motion.py MotionHead._infer) at batch 1: 3 x 3 convs (padding 1,
 * stride 1 or 2), each followed by a ReLU, then the linear layer. Activations are kept channels
 * last, (y, x, channel), with a zero border, so each tap of a conv is one broadcast input times
 * a row of output channels (cout 8, 16, 32 or 64: 1 to 8 vectors, and 4 to 1 output pixels at
 * a time, so 8 or fewer accumulators share every weight load); the linear layer's weights come
 * reordered to that layout by the caller. Float rounding differs from PyTorch's (sum order).
 */
typedef struct {
    int64_t cin, cout, stride;
    const float *w;             /* (3, 3, cin, cout): w[((ky * 3 + kx) * cin + i) * cout + o] */
    const float *b;             /* (cout) */
} mconv_t;

typedef struct {
    int64_t n_conv, h, w, k;    /* convs, input size, outputs of the linear layer */
    const mconv_t *conv;
    const float *fc_w;          /* (k, hf * wf * cout_last), inputs in (y, x, channel) order */
    const float *fc_b;          /* (k) */
} mhead_t;

static int64_t conv_out(int64_t n, int64_t stride) { return (n - 1) / stride + 1; }

int64_t mhead_abi(void) {
    return (int64_t)sizeof(mhead_t) | (int64_t)sizeof(mconv_t) << 8 | (int64_t)MNET_ABI << 16;
}

/* Floats of the work buffer mhead_forward needs: two activation buffers of the largest map with
 * its zero border. */
int64_t mhead_work_size(const mhead_t *m) {
    int64_t h = m->h, w = m->w, big = (m->h + 2) * (m->w + 2) * m->conv[0].cin;
    for (int64_t l = 0; l < m->n_conv; l++) {
        h = conv_out(h, m->conv[l].stride);
        w = conv_out(w, m->conv[l].stride);
        if ((h + 2) * (w + 2) * m->conv[l].cout > big) big = (h + 2) * (w + 2) * m->conv[l].cout;
    }
    return 2 * big;
}

/* NP output pixels (x, x + 1, ...) of row y of a channels-last conv over a zero-bordered input
 * (h + 2, w + 2, cin), NV vectors of output channels (NP, NV compile-time constants: NP * NV <= 8
 * accumulators in registers; each weight load serves the NP pixels): relu(bias + sum of the 9
 * taps x cin), or its GELU. dst: the first pixel's channels, dstep floats to the next pixel. */
INL void conv_pixels(const float *in, int64_t wp, const mconv_t *c, int64_t y, int64_t x,
                     float *dst, int64_t dstep, const int NP, const int NV, const int GELU) {
    __m256 acc[8];
    const int64_t cin = c->cin, cout = c->cout, s = c->stride;
    for (int p = 0; p < NP; p++)
        for (int j = 0; j < NV; j++) acc[p * NV + j] = _mm256_loadu_ps(c->b + 8 * j);
    for (int64_t ky = 0; ky < 3; ky++)
        for (int64_t kx = 0; kx < 3; kx++) {
            const float *src = in + ((s * y + ky) * wp + s * x + kx) * cin;
            const float *wt = c->w + (ky * 3 + kx) * cin * cout;
            for (int64_t i = 0; i < cin; i++, wt += cout)
                for (int j = 0; j < NV; j++) {
                    const __m256 wv = _mm256_loadu_ps(wt + 8 * j);
                    for (int p = 0; p < NP; p++)
                        acc[p * NV + j] = _mm256_fmadd_ps(
                            _mm256_broadcast_ss(src + p * s * cin + i), wv, acc[p * NV + j]);
                }
        }
    for (int p = 0; p < NP; p++)
        for (int j = 0; j < NV; j++)
            _mm256_storeu_ps(dst + p * dstep + 8 * j,
                             GELU ? gelu8(acc[p * NV + j])
                                  : _mm256_max_ps(acc[p * NV + j], _mm256_setzero_ps()));
}

/* out = act(conv(in)) (ReLU, or GELU with gelu): in (h + 2, w + 2, cin) zero-bordered; out
 * (ho + 2, wo + 2, cout) with its zero border (pad) or (ho, wo, cout). cout 8, 16, 32 or 64
 * (four, four, two or one pixel at a time). */
TGT static void conv_hwc(const float *in, int64_t h, int64_t w, const mconv_t *c, float *out,
                         int pad, int gelu) {
    const int64_t ho = conv_out(h, c->stride), wo = conv_out(w, c->stride), co = c->cout;
    const int64_t wpo = wo + 2 * pad, np = co >= 64 ? 1 : co == 32 ? 2 : 4;
    if (pad) memset(out, 0, sizeof(float) * (size_t)((ho + 2) * wpo * co));
    for (int64_t y = 0; y < ho; y++) {
        float *row = out + ((y + pad) * wpo + pad) * co;
        int64_t x = 0;
        for (; x + np <= wo; x += np) {
            float *d = row + x * co;
            if (gelu) conv_pixels(in, w + 2, c, y, x, d, co, 4, 1, 1);   /* est.: 8 channels */
            else if (co == 64) conv_pixels(in, w + 2, c, y, x, d, co, 1, 8, 0);
            else if (co == 32) conv_pixels(in, w + 2, c, y, x, d, co, 2, 4, 0);
            else if (co == 16) conv_pixels(in, w + 2, c, y, x, d, co, 4, 2, 0);
            else conv_pixels(in, w + 2, c, y, x, d, co, 4, 1, 0);
        }
        for (; x < wo; x++) {
            float *d = row + x * co;
            if (gelu) conv_pixels(in, w + 2, c, y, x, d, co, 1, 1, 1);
            else if (co == 32) conv_pixels(in, w + 2, c, y, x, d, co, 1, 4, 0);
            else if (co == 16) conv_pixels(in, w + 2, c, y, x, d, co, 1, 2, 0);
            else conv_pixels(in, w + 2, c, y, x, d, co, 1, 1, 0);
        }
    }
}

/* The trunk's outputs (k) of x (cin, h, w), with work (mhead_work_size floats). 0: done; -1: a
 * shape it does not take (the caller runs PyTorch). */
TGT int64_t mhead_forward(const mhead_t *m, const float *x, float *work, float *out) {
    if (m->n_conv < 1) return -1;
    for (int64_t l = 0; l < m->n_conv; l++) {
        const mconv_t *c = m->conv + l;
        if ((c->cout != 8 && c->cout != 16 && c->cout != 32 && c->cout != 64) || c->cin < 1
            || c->stride < 1 || (l && c->cin != m->conv[l - 1].cout))
            return -1;
    }
    const int64_t half = mhead_work_size(m) / 2, cin = m->conv[0].cin, wp = m->w + 2;
    float *a = work, *b = work + half;
    memset(a, 0, sizeof(float) * (size_t)((m->h + 2) * wp * cin));
    for (int64_t i = 0; i < cin; i++)              /* (cin, h, w) -> (h + 2, w + 2, cin) */
        for (int64_t y = 0; y < m->h; y++)
            for (int64_t xx = 0; xx < m->w; xx++)
                a[((y + 1) * wp + xx + 1) * cin + i] = x[(i * m->h + y) * m->w + xx];
    int64_t h = m->h, w = m->w;
    for (int64_t l = 0; l < m->n_conv; l++) {
        conv_hwc(a, h, w, m->conv + l, b, l + 1 < m->n_conv, 0);
        h = conv_out(h, m->conv[l].stride);
        w = conv_out(w, m->conv[l].stride);
        float *t = a; a = b; b = t;
    }
    const int64_t n = h * w * m->conv[m->n_conv - 1].cout;
    for (int64_t k = 0; k < m->k; k++) {
        const float *wk = m->fc_w + k * n;
        __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
        int64_t i = 0;
        for (; i + 16 <= n; i += 16) {
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(wk + i), _mm256_loadu_ps(a + i), s0);
            s1 = _mm256_fmadd_ps(_mm256_loadu_ps(wk + i + 8), _mm256_loadu_ps(a + i + 8), s1);
        }
        __m256 s = _mm256_add_ps(s0, s1);
        __m128 q = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
        q = _mm_add_ps(q, _mm_movehl_ps(q, q));
        q = _mm_add_ss(q, _mm_movehdup_ps(q));
        float acc = _mm_cvtss_f32(q);
        for (; i < n; i++) acc += wk[i] * a[i];
        out[k] = m->fc_b[k] + acc;
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * The ANC complexity estimator (model/anc.py ComplexityEstimator) at batch 1: a 4 x 4 mean pool
 * of log1p(hist), two 3 x 3 convs of stride 2 (padding 1) with GELU, 8 channels each, their mean
 * over the map, log1p(event count) / 10, the two fractions, and the linear layer. The same
 * channels-last convs as the motion head.
 */
typedef struct {
    int64_t c, h, w, levels;    /* input channels and size (h a multiple of 4, w of 8, at most
                                 * 128), outputs */
    mconv_t conv1, conv2;       /* cout 8 each */
    const float *fc_w, *fc_b;   /* (levels, 8 + 3), (levels) */
} mest_t;

int64_t mest_abi(void) { return (int64_t)sizeof(mest_t) | (int64_t)MNET_ABI << 16; }

int64_t mest_work_size(const mest_t *m) {
    const int64_t h4 = m->h / 4, w4 = m->w / 4;
    return (h4 + 2) * (w4 + 2) * m->c + 2 * ((h4 + 2) * (w4 + 2) * 8);
}

/* Level logits (levels) of hist / loghist (c, h, w) and the changed and recently changed
 * fractions, with work (mest_work_size floats). 0: done; -1: a shape it does not take. */
TGT int64_t mest_forward(const mest_t *m, const float *hist, const float *loghist,
                         double change_frac, double recent_frac, float *work, float *out) {
    const int64_t c = m->c, h = m->h, w = m->w, h4 = h / 4, w4 = w / 4, wp = w4 + 2;
    if (h % 4 || w % 8 || w > 128 || m->conv1.cin != c || m->conv1.cout != 8 || m->conv2.cin != 8
        || m->conv2.cout != 8 || m->conv1.stride != 2 || m->conv2.stride != 2)
        return -1;
    float *a = work, *b = a + (h4 + 2) * wp * c, *d = b + (h4 + 2) * wp * 8;
    memset(a, 0, sizeof(float) * (size_t)((h4 + 2) * wp * c));
    __m256 tot = _mm256_setzero_ps();           /* integer counts: exact in float */
    float col[128];
    for (int64_t i = 0; i < c; i++)
        for (int64_t y = 0; y < h4; y++) {
            const float *r = loghist + (i * h + 4 * y) * w, *q = hist + (i * h + 4 * y) * w;
            for (int64_t x = 0; x < w; x += 8) {            /* the 4 rows' sums, per column */
                __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_loadu_ps(r + x),
                                                       _mm256_loadu_ps(r + w + x)),
                                         _mm256_add_ps(_mm256_loadu_ps(r + 2 * w + x),
                                                       _mm256_loadu_ps(r + 3 * w + x)));
                _mm256_storeu_ps(col + x, s);
                tot = _mm256_add_ps(tot, _mm256_add_ps(
                    _mm256_add_ps(_mm256_loadu_ps(q + x), _mm256_loadu_ps(q + w + x)),
                    _mm256_add_ps(_mm256_loadu_ps(q + 2 * w + x), _mm256_loadu_ps(q + 3 * w + x))));
            }
            float *dst = a + ((y + 1) * wp + 1) * c + i;
            for (int64_t x = 0; x < w4; x++)
                dst[x * c] = (col[4 * x] + col[4 * x + 1] + col[4 * x + 2] + col[4 * x + 3]) / 16.0f;
        }
    float tv[8];
    _mm256_storeu_ps(tv, tot);
    double total = 0.0;
    for (int j = 0; j < 8; j++) total += tv[j];
    conv_hwc(a, h4, w4, &m->conv1, b, 1, 1);
    const int64_t h8 = conv_out(h4, 2), w8 = conv_out(w4, 2);
    conv_hwc(b, h8, w8, &m->conv2, d, 0, 1);
    const int64_t h16 = conv_out(h8, 2), w16 = conv_out(w8, 2);
    float feat[11];
    for (int64_t o = 0; o < 8; o++) {
        float s = 0.0f;
        for (int64_t p = 0; p < h16 * w16; p++) s += d[p * 8 + o];
        feat[o] = s / (float)(h16 * w16);
    }
    feat[8] = log1pf((float)total) / 10.0f;
    feat[9] = (float)change_frac;
    feat[10] = (float)recent_frac;
    for (int64_t k = 0; k < m->levels; k++) {
        float s = m->fc_b[k];
        for (int64_t j = 0; j < 11; j++) s += m->fc_w[k * 11 + j] * feat[j];
        out[k] = s;
    }
    return 0;
}

/* ---- 4. the motion state maps ------------------------------------------------------------- */
typedef struct {
    int64_t ch, h, w, patch;    /* event channels, frame size, patch side */
    int64_t ring, nscale, nhist, max_age, nlut;
    const int64_t *hist_len;    /* (nhist) frames summed by each history map (<= ring) */
    const float *age_maps;      /* (nscale + 1, max_age + 1): the age channels of every age */
    const float *lut;           /* (nlut) log1p of the integers 0 .. nlut - 1 */
} mstate_t;

int64_t mstate_abi(void) { return (int64_t)sizeof(mstate_t) | (int64_t)MNET_ABI << 16; }

static float log1p_of(const mstate_t *S, float v) {
    const int64_t i = (int64_t)v;
    return (v >= 0.0f && (float)i == v && i < S->nlut) ? S->lut[i] : log1pf(v);
}

/* One frame of the motion state: hist (ch, h, w) event counts summed per patch and channel;
 * their channel total into ring (ring, g, g) at slot pos % ring; the maps x (nscale + 1 + ch +
 * nhist, g, g): the age channels of each token's age (age_maps), log1p of the counts, log1p of
 * each history window (the last hist_len[k] slots up to pos). The sums are of event counts
 * (integers: exact in any order), the log1p of integers below nlut the caller's own table.
 * Returns 0; -1 when the shapes are not supported or an age is outside 0 .. max_age (nothing
 * written: the caller runs its numpy path). */
TGT int64_t mstate_input(const mstate_t *S, const float *hist, const int64_t *age, float *ring,
                         int64_t pos, float *x) {
    const int64_t p = S->patch, C = S->ch;
    if (p <= 0 || S->h % p || S->w % p || S->ring <= 0 || pos < 0 || S->nlut < 1)
        return -1;
    const int64_t gh = S->h / p, gw = S->w / p, gg = gh * gw, na = S->nscale + 1;
    for (int64_t k = 0; k < S->nhist; k++)
        if (S->hist_len[k] < 1 || S->hist_len[k] > S->ring)
            return -1;
    for (int64_t t = 0; t < gg; t++)
        if (age[t] < 0 || age[t] > S->max_age)
            return -1;
    for (int64_t i = 0; i < na; i++)               /* age channels */
        for (int64_t t = 0; t < gg; t++)
            x[i * gg + t] = S->age_maps[i * (S->max_age + 1) + age[t]];
    float *counts = x + na * gg, *slot = ring + (pos % S->ring) * gg;
    memset(counts, 0, sizeof(float) * (size_t)(C * gg));
    for (int64_t c = 0; c < C; c++)                /* per-patch counts */
        for (int64_t y = 0; y < S->h; y++) {
            const float *row = hist + (c * S->h + y) * S->w;
            float *dst = counts + (c * gh + y / p) * gw;
            for (int64_t gx = 0; gx < gw; gx++) {
                __m256 acc = _mm256_setzero_ps();
                int64_t px = 0;
                for (; px + 8 <= p; px += 8)
                    acc = _mm256_add_ps(acc, _mm256_loadu_ps(row + gx * p + px));
                float sum = 0.0f;
                for (; px < p; px++)
                    sum += row[gx * p + px];
                __m128 q = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
                q = _mm_add_ps(q, _mm_movehl_ps(q, q));
                q = _mm_add_ss(q, _mm_movehdup_ps(q));
                dst[gx] += _mm_cvtss_f32(q) + sum;
            }
        }
    for (int64_t t = 0; t < gg; t++) {             /* the frame's total into the ring */
        float v = 0.0f;
        for (int64_t c = 0; c < C; c++)
            v += counts[c * gg + t];
        slot[t] = v;
    }
    for (int64_t i = 0; i < C * gg; i++)
        counts[i] = log1p_of(S, counts[i]);
    float *hm = counts + C * gg;
    for (int64_t k = 0; k < S->nhist; k++) {       /* history windows, newest slot first */
        float *dst = hm + k * gg;
        for (int64_t t = 0; t < gg; t++) {
            float v = 0.0f;
            for (int64_t i = 0; i < S->hist_len[k]; i++)
                v += ring[((pos - i) % S->ring + S->ring) % S->ring * gg + t];
            dst[t] = log1p_of(S, v);
        }
    }
    return 0;
}
