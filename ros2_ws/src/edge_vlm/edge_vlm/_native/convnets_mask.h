/* The change-mask net's passes (included once, by convnets.c, after its vector helpers: one
 * translation unit, one libconvnets.so): the planar 3 x 3 convs with GELU, the 2 x 2 pools (of a
 * map, or of log1p counts read from a table), the per-patch counts and mnet_forward. */
#ifndef CONVNETS_MASK_H
#define CONVNETS_MASK_H

/* Row y of NO output channels of a 3 x 3 conv, NV vectors wide (compile-time constants at each
 * call, so the NO * NV <= 8 accumulators stay in registers and each input load serves the NO
 * channels): gelu(bias + sum over cin, ky, kx of k * in). k: the first channel's weights, wstride
 * floats to the next; dst: the first channel's row, dstride floats to the next. */
INL void conv_rows(const float *in, int64_t cin, int64_t h, int64_t wp, int64_t y, const float *k,
                   int64_t wstride, const float *bias, float *dst, int64_t dstride, const int NO,
                   const int NV) {
    __m256 acc[8];
    for (int o = 0; o < NO; o++)
        for (int j = 0; j < NV; j++) acc[o * NV + j] = _mm256_set1_ps(bias[o]);
    for (int64_t i = 0; i < cin; i++, k += 9) {
        const float *src = in + (i * (h + 2) + y) * wp;
        for (int ky = 0; ky < 3; ky++, src += wp)
            for (int kx = 0; kx < 3; kx++)
                for (int j = 0; j < NV; j++) {
                    const __m256 x = _mm256_loadu_ps(src + kx + 8 * j);
                    for (int o = 0; o < NO; o++)
                        acc[o * NV + j] = _mm256_fmadd_ps(
                            _mm256_broadcast_ss(k + o * wstride + ky * 3 + kx), x, acc[o * NV + j]);
                }
    }
    for (int o = 0; o < NO; o++)
        for (int j = 0; j < NV; j++)
            _mm256_storeu_ps(dst + o * dstride + 8 * j, gelu8(acc[o * NV + j]));
}

/* out (cout, h, w) = gelu(conv3x3(in) + bias); in (cin, h + 2, w + 2) zero-padded; w 16, 32 or
 * 64 (a row of one channel: 2, 4 or 8 registers; 4, 2 or 1 channels at a time). */
TGT static void conv3x3_gelu(const float *in, int64_t cin, int64_t h, int64_t w,
                             const float *wt, const float *bias, int64_t cout, float *out) {
    const int64_t ws = cin * 9, ds = h * w, step = w == 64 ? 1 : w == 32 ? 2 : 4;
    int64_t o = 0;
    for (; o + step <= cout; o += step)
        for (int64_t y = 0; y < h; y++) {
            const float *k = wt + o * ws;
            float *dst = out + (o * h + y) * w;
            if (w == 64) conv_rows(in, cin, h, w + 2, y, k, ws, bias + o, dst, ds, 1, 8);
            else if (w == 32) conv_rows(in, cin, h, w + 2, y, k, ws, bias + o, dst, ds, 2, 4);
            else conv_rows(in, cin, h, w + 2, y, k, ws, bias + o, dst, ds, 4, 2);
        }
    for (; o < cout; o++)                        /* channels left over: one at a time */
        for (int64_t y = 0; y < h; y++) {
            const float *k = wt + o * ws;
            float *dst = out + (o * h + y) * w;
            if (w == 64) conv_rows(in, cin, h, w + 2, y, k, ws, bias + o, dst, ds, 1, 8);
            else if (w == 32) conv_rows(in, cin, h, w + 2, y, k, ws, bias + o, dst, ds, 1, 4);
            else conv_rows(in, cin, h, w + 2, y, k, ws, bias + o, dst, ds, 1, 2);
        }
}

/* dst (c, h/2 + 2, w/2 + 2): the 2 x 2 means of src (c, h, w) inside a zero border ((a + b) +
 * (c + d) of each window, then / 4; w a multiple of 16). */
TGT static void pool2_padded(const float *src, int64_t c, int64_t h, int64_t w, float *dst) {
    const int64_t ho = h / 2, wo = w / 2, wp = wo + 2;
    const __m256 quarter = _mm256_set1_ps(0.25f);
    memset(dst, 0, sizeof(float) * (size_t)(c * (ho + 2) * wp));
    for (int64_t i = 0; i < c; i++)
        for (int64_t y = 0; y < ho; y++) {
            const float *r0 = src + (i * h + 2 * y) * w, *r1 = r0 + w;
            float *d = dst + (i * (ho + 2) + y + 1) * wp + 1;
            for (int64_t x = 0; x < w; x += 16) {
                __m256 t = _mm256_hadd_ps(_mm256_loadu_ps(r0 + x), _mm256_loadu_ps(r0 + x + 8));
                __m256 u = _mm256_hadd_ps(_mm256_loadu_ps(r1 + x), _mm256_loadu_ps(r1 + x + 8));
                __m256 v = _mm256_mul_ps(_mm256_add_ps(t, u), quarter);      /* lanes 0145 2367 */
                v = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(v), 0xD8));
                _mm256_storeu_ps(d + x / 2, v);
            }
        }
}

/* pool2_padded of log1p(src) for src of event counts, log1p from m's table: a run of 16 zeros
 * (most of a frame) costs one compare. The same sums as pool2_padded on the same values, so
 * the same result as PyTorch's log1p map pooled. -3 (nothing usable written): a value that is
 * not a count below nlut (the caller passes PyTorch's log1p instead). */
TGT static int64_t pool2_log_padded(const float *src, int64_t c, int64_t h, int64_t w,
                                    const float *lut, int64_t nlut, float *dst) {
    const int64_t ho = h / 2, wo = w / 2, wp = wo + 2;
    const __m256 quarter = _mm256_set1_ps(0.25f), zero = _mm256_setzero_ps();
    memset(dst, 0, sizeof(float) * (size_t)(c * (ho + 2) * wp));
    for (int64_t i = 0; i < c; i++)
        for (int64_t y = 0; y < ho; y++) {
            const float *r0 = src + (i * h + 2 * y) * w, *r1 = r0 + w;
            float *d = dst + (i * (ho + 2) + y + 1) * wp + 1;
            for (int64_t x = 0; x < w; x += 16) {
                const __m256 a0 = _mm256_loadu_ps(r0 + x), a1 = _mm256_loadu_ps(r0 + x + 8);
                const __m256 b0 = _mm256_loadu_ps(r1 + x), b1 = _mm256_loadu_ps(r1 + x + 8);
                const __m256 any = _mm256_or_ps(_mm256_or_ps(a0, a1), _mm256_or_ps(b0, b1));
                if (_mm256_movemask_ps(_mm256_cmp_ps(any, zero, _CMP_NEQ_UQ)) == 0)
                    continue;                    /* all zero (or -0): log1p 0, pooled 0 */
                float t0[16], t1[16];
                for (int64_t j = 0; j < 16; j++) {
                    const float u = r0[x + j], v = r1[x + j];
                    if (!(u >= 0.0f && u < (float)nlut && v >= 0.0f && v < (float)nlut)
                        || u != (float)(int32_t)u || v != (float)(int32_t)v)
                        return -3;
                    t0[j] = lut[(int32_t)u];
                    t1[j] = lut[(int32_t)v];
                }
                __m256 t = _mm256_hadd_ps(_mm256_loadu_ps(t0), _mm256_loadu_ps(t0 + 8));
                __m256 u = _mm256_hadd_ps(_mm256_loadu_ps(t1), _mm256_loadu_ps(t1 + 8));
                __m256 v = _mm256_mul_ps(_mm256_add_ps(t, u), quarter);      /* lanes 0145 2367 */
                v = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(v), 0xD8));
                _mm256_storeu_ps(d + x / 2, v);
            }
        }
    return 0;
}

/* counts[gy * gx]: the events of each p x p patch over the c channels of hist (c, h, w); p and
 * w multiples of 8, w at most 128. Integer counts: exact in any order. */
TGT static void patch_counts(const float *hist, int64_t c, int64_t h, int64_t w, int64_t p,
                             float *counts) {
    const int64_t nv = w / 8, gx = w / p;
    for (int64_t py = 0; py < h / p; py++) {
        __m256 acc[16];
        for (int64_t j = 0; j < nv; j++) acc[j] = _mm256_setzero_ps();
        for (int64_t i = 0; i < c; i++)
            for (int64_t y = py * p; y < (py + 1) * p; y++) {
                const float *r = hist + (i * h + y) * w;
                for (int64_t j = 0; j < nv; j++) acc[j] = _mm256_add_ps(acc[j], _mm256_loadu_ps(r + 8 * j));
            }
        float row[128];
        for (int64_t j = 0; j < nv; j++) _mm256_storeu_ps(row + 8 * j, acc[j]);
        for (int64_t px = 0; px < gx; px++) {
            float s = 0.0f;
            for (int64_t x = px * p; x < (px + 1) * p; x++) s += row[x];
            counts[py * gx + px] = s;
        }
    }
}

/* Floats of the work buffer mnet_forward needs for m's sizes. */
int64_t mnet_work_size(const mnet_t *m) {
    const int64_t h2 = m->h / 2, w2 = m->w / 2, h4 = m->h / 4, w4 = m->w / 4;
    return m->c * (h2 + 2) * (w2 + 2) + m->h1 * h2 * w2 + m->h1 * (h4 + 2) * (w4 + 2)
           + m->h2 * h4 * w4;
}

/* The net's logits (h/patch * w/patch) of hist and loghist = log1p(hist) (c, h, w), with work
 * (mnet_work_size floats, the caller's: nothing is allocated here); loghist NULL: log1p from
 * m's table (pool2_log_padded). 0: done; -1: a size it does not take (the caller runs PyTorch);
 * -3: loghist NULL and a value the table does not hold (the caller passes loghist). */
TGT int64_t mnet_forward(const mnet_t *m, const float *hist, const float *loghist, float *work,
                         float *out) {
    const int64_t c = m->c, h = m->h, w = m->w, p = m->patch, q = p / 4;
    const int64_t h2 = h / 2, w2 = w / 2, h4 = h / 4, w4 = w / 4, gy = h / p, gx = w / p;
    if (p % 8 || h % p || w % p || w % 32 || w > 128 || h > 128 || m->h1 < 1 || m->h2 < 1)
        return -1;
    const int64_t na = c * (h2 + 2) * (w2 + 2), nb = m->h1 * h2 * w2;
    const int64_t nc = m->h1 * (h4 + 2) * (w4 + 2);
    float *a = work, *b = a + na, *cc = b + nb, *d = cc + nc;
    if (loghist)
        pool2_padded(loghist, c, h, w, a);
    else if (!m->lut || pool2_log_padded(hist, c, h, w, m->lut, m->nlut, a) != 0)
        return -3;
    conv3x3_gelu(a, c, h2, w2, m->w1, m->b1, m->h1, b);
    pool2_padded(b, m->h1, h2, w2, cc);
    conv3x3_gelu(cc, m->h1, h4, w4, m->w2, m->b2, m->h2, d);
    float counts[256];
    patch_counts(hist, c, h, w, p, counts);
    for (int64_t py = 0; py < gy; py++)
        for (int64_t px = 0; px < gx; px++) {
            double v = m->bh;
            for (int64_t o = 0; o < m->h2; o++) {
                float s = 0.0f;
                for (int64_t y = py * q; y < (py + 1) * q; y++)
                    for (int64_t x = px * q; x < (px + 1) * q; x++) s += d[(o * h4 + y) * w4 + x];
                v += (double)m->wh[o] * (double)(s / (float)(q * q));
            }
            out[py * gx + px] = (float)(m->scale * ((double)log1pf(counts[py * gx + px])
                                                    - m->offset) + v);
        }
    return 0;
}

#endif
