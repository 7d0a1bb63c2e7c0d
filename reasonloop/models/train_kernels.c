/* Fused CPU kernels for the tiny backend's training forward and backward (models/train_kernels.py
 * builds and loads this file with decode_kernels.build; models/tiny.py's `Block.forward` calls it).
 *
 * Causal self-attention with the rotary embedding folded in, SwiGLU's gate, and RMSNorm, each
 * forward and backward. Why: at the tiny model's sizes (head size 32-64, 20-64 positions)
 * torch's CPU flash attention spends most of its time on blocking overhead, and RoPE and SwiGLU
 * are a dozen elementwise ops (and a concatenation of gradients) each a pass through memory; so
 * is RMSNorm's backward, which torch composes from pow, mean, rsqrt and products.
 * Here one (batch row, head) at a time stays in L1: q and k are rotated once into a scratch
 * buffer, each score row is a few 16-lane products, and the backward writes the gradient of
 * the projection's output [B, T, 3, H, hd] directly, the rotation undone. float32 throughout.
 *
 * The attention's layout: qkv [B, T, 3, H, hd] (the wqkv projection's output, contiguous),
 * cos and sin [T, hd] (sin sign-folded as `tiny.rope_tables` makes it; NULL for no rotation),
 * out [B, T, H, hd], lse [B, H, T] (each query row's log-sum-exp, kept for the backward).
 * The head size must be a multiple of 16, at most 256.
 *
 * Compiled with -ffast-math -fno-finite-math-only, like decode_kernels.c.
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "exp.h"

/* 16 float lanes (one AVX-512 register where there is one; the compiler splits it elsewhere),
 * loaded and stored unaligned */
typedef float v16 __attribute__((vector_size(64), aligned(4)));
#define LD(p) (*(const v16 *)(p))
#define ST(p, x) (*(v16 *)(p) = (x))

/* Two-source lane shuffles: lanes 0-7 (LO) or 8-15 (HI) of a and b, interleaved.
 * __builtin_shufflevector is clang's and GCC's from 12 on, so the compilers in use build the same
 * lines (the ones tests/test_train_kernels.py runs); older GCC has only __builtin_shuffle. */
#ifdef __has_builtin
#if __has_builtin(__builtin_shufflevector)
#define HAVE_SHUFFLEVECTOR 1
#endif
#endif
#ifdef HAVE_SHUFFLEVECTOR
#define SHUF_LO(a, b) __builtin_shufflevector(a, b, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23)
#define SHUF_HI(a, b) \
    __builtin_shufflevector(a, b, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31)
#else
typedef int v16i __attribute__((vector_size(64)));
#define SHUF_LO(a, b) \
    __builtin_shuffle(a, b, (v16i){0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23})
#define SHUF_HI(a, b) \
    __builtin_shuffle(a, b, (v16i){8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31})
#endif

/* dst[d * ld + t] = src[t * stride + d] for d, t < 16; rows t >= n are read as zeros. Four
 * rounds of the perfect shuffle (row 2i <- the low halves of rows i and i + 8 interleaved,
 * row 2i + 1 <- the high halves) transpose 16 rows in registers: 64 shuffles where element by
 * element it was 256 scattered stores, a quarter of the attention backward's time. */
static inline void transpose16(float *dst, long ld, const float *src, long stride, long n) {
    v16 r[16], w[16];
    for (long t = 0; t < 16; t++) r[t] = t < n ? LD(src + t * stride) : (v16){0};
    for (int round = 0; round < 4; round++) {
        for (int i = 0; i < 8; i++) {
            w[2 * i] = SHUF_LO(r[i], r[i + 8]);
            w[2 * i + 1] = SHUF_HI(r[i], r[i + 8]);
        }
        memcpy(r, w, sizeof r);
    }
    for (long d = 0; d < 16; d++) ST(dst + d * ld, r[d]);
}

/* mT [hd, Tp] = the transpose of T rows of hd floats, `stride` apart (columns T..Tp-1 zero) */
static inline void transpose(float *mT, long Tp, const float *m, long stride, long T, long hd) {
    for (long t = 0; t < T; t += 16)
        for (long d = 0; d < hd; d += 16)
            transpose16(mT + d * Tp + t, Tp, m + t * stride + d, stride, T - t);
}

/* s[j] = sum_d a[d] * mT[d * Tp + j] for j < n, rounded up to 16 (Tp a multiple of 16; hd a
 * multiple of 4). Four partial sums: one chain of fused multiply-adds would wait on each
 * one's latency, four keep both FMA units busy. */
static inline void rowdots(float *s, const float *a, const float *mT, long Tp, long n, long hd) {
    for (long jc = 0; jc < n; jc += 16) {
        v16 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
        for (long d = 0; d < hd; d += 4) {
            const float *m = mT + d * Tp + jc;
            a0 += a[d] * LD(m);
            a1 += a[d + 1] * LD(m + Tp);
            a2 += a[d + 2] * LD(m + 2 * Tp);
            a3 += a[d + 3] * LD(m + 3 * Tp);
        }
        ST(s + jc, (a0 + a1) + (a2 + a3));
    }
}

/* q (times scale) and k of row (b, h) with the rotary embedding into qr, kr [T, hd], and
 * kr transposed into kT [hd, Tp] */
static void load_qk(const float *qkv, const float *cos, const float *sin, long b, long h,
                    long T, long H, long hd, float scale, float *restrict qr,
                    float *restrict kr, float *restrict kT, long Tp) {
    long half = hd / 2, D = H * hd;
    for (long t = 0; t < T; t++) {
        const float *restrict q = qkv + ((b * T + t) * 3) * D + h * hd, *restrict k = q + D;
        float *restrict qo = qr + t * hd, *restrict ko = kr + t * hd;
        if (!cos) {
            for (long d = 0; d < hd; d++) { qo[d] = q[d] * scale; ko[d] = k[d]; }
            continue;
        }
        const float *restrict c = cos + t * hd, *restrict s = sin + t * hd;
        for (long d = 0; d < half; d++) {
            qo[d] = (q[d] * c[d] + q[d + half] * s[d]) * scale;
            qo[d + half] = (q[d + half] * c[d + half] + q[d] * s[d + half]) * scale;
            ko[d] = k[d] * c[d] + k[d + half] * s[d];
            ko[d + half] = k[d + half] * c[d + half] + k[d] * s[d + half];
        }
    }
    transpose(kT, Tp, kr, hd, T, hd);
}

/* g [hd] = the gradient with respect to a vector before position t's rotation, given a, the
 * gradient after it: the rotation's transpose (a copy without rotary embedding). */
static inline void unrotate(float *restrict g, const float *restrict a, const float *cos,
                            const float *sin, long t, long hd) {
    if (!cos) {
        memcpy(g, a, sizeof(float) * hd);
        return;
    }
    long half = hd / 2;
    const float *c = cos + t * hd, *s = sin + t * hd;
    for (long d = 0; d < half; d++) {
        g[d] = a[d] * c[d] + a[d + half] * s[d + half];
        g[d + half] = a[d + half] * c[d + half] + a[d] * s[d];
    }
}

#define MAXV 16 /* head size at most 16 * MAXV */

#define INLINE static inline __attribute__((always_inline))

/* The body of attn_fwd and attn_bwd: CALL(nv) for every (batch row, head) (b, h), over
 * `threads` OpenMP threads, each with its own zeroed scratch `buf` of FLOATS floats; nv is a
 * literal for the usual head sizes, so that each gets its own unrolled copy. Returns 1 if a
 * thread could not allocate its buffer. */
#define EACH_ROW_HEAD(FLOATS, CALL)                                                               \
    int failed = 0;                                                                              \
    _Pragma("omp parallel num_threads(threads)") {                                               \
        float *buf = calloc((FLOATS), sizeof(float));                                           \
        if (!buf) {                                                                              \
            _Pragma("omp atomic write") failed = 1;                                              \
        }                                                                                        \
        _Pragma("omp for schedule(static)") for (long bh = 0; bh < B * H; bh++) {                \
            if (!buf) continue;                                                                  \
            long b = bh / H, h = bh % H;                                                         \
            switch (nv) {                                                                        \
            case 1: CALL(1); break;                                                              \
            case 2: CALL(2); break;                                                              \
            case 4: CALL(4); break;                                                              \
            case 8: CALL(8); break;                                                              \
            default: CALL(nv);                                                                   \
            }                                                                                    \
        }                                                                                        \
        free(buf);                                                                               \
    }                                                                                            \
    return failed;

/* acc[c] = sum_{j < n} w[j] * rows[j * stride + 16 c .. + 16], c < nv: P.V in the forward, dS.K
 * in the backward. Even and odd j go to separate sums, added at the end: one chain of fused
 * multiply-adds would wait on each one's latency (as in rowdots). */
INLINE void weighted_rows(v16 *acc, const float *w, const float *rows, long stride, long n,
                          const long nv) {
    /* local sums, written to acc once: stores through acc could alias w, which would keep
     * the sums in memory rather than registers */
    v16 even[MAXV], odd[MAXV];
    for (long c = 0; c < nv; c++) even[c] = odd[c] = (v16){0};
    long j = 0;
    for (; j + 1 < n; j += 2) {
        const float *r = rows + j * stride;
        for (long c = 0; c < nv; c++) {
            even[c] += w[j] * LD(r + 16 * c);
            odd[c] += w[j + 1] * LD(r + stride + 16 * c);
        }
    }
    if (j < n)
        for (long c = 0; c < nv; c++) even[c] += w[j] * LD(rows + j * stride + 16 * c);
    for (long c = 0; c < nv; c++) acc[c] = even[c] + odd[c];
}

/* One (batch row, head) of the forward: nv = hd / 16 is a constant at each call site, so the
 * accumulators below live in registers. */
INLINE void fwd_one(const float *qkv, const float *cos, const float *sin, float *out, float *lse,
                    long b, long h, long T, long H, float scale, float *buf, const long nv) {
    long hd = 16 * nv, D = H * hd, Tp = (T + 15) / 16 * 16;
    float *qr = buf, *kr = qr + T * hd, *kT = kr + T * hd, *p = kT + Tp * hd;
    load_qk(qkv, cos, sin, b, h, T, H, hd, scale, qr, kr, kT, Tp);
    for (long i = 0; i < T; i++) {
        rowdots(p, qr + i * hd, kT, Tp, i + 1, hd);
        float m = p[0];
        for (long j = 1; j <= i; j++) m = p[j] > m ? p[j] : m;
        float l = 0.f;
        for (long jc = 0; jc <= i; jc += 16)
            for (long jj = 0; jj < 16; jj++) {
                float e = jc + jj <= i ? exp_(p[jc + jj] - m) : 0.f;
                p[jc + jj] = e;
                l += e;
            }
        v16 acc[MAXV];
        weighted_rows(acc, p, qkv + ((b * T) * 3 + 2) * D + h * hd, 3 * D, i + 1, nv);
        float inv = 1.f / l, *o = out + (b * T + i) * D + h * hd;
        for (long c = 0; c < nv; c++) ST(o + 16 * c, acc[c] * inv);
        lse[(b * H + h) * T + i] = m + logf(l);
    }
}

int attn_fwd(const float *qkv, const float *cos, const float *sin, float *out, float *lse,
             long B, long T, long H, long hd, float scale, int threads) {
    if (hd % 16 || hd > 16 * MAXV) return 2;
    long Tp = (T + 15) / 16 * 16, nv = hd / 16;
#define FWD(NV) fwd_one(qkv, cos, sin, out, lse, b, h, T, H, scale, buf, NV)
    EACH_ROW_HEAD(2 * T * hd + Tp * hd + Tp, FWD)
#undef FWD
}

/* One (batch row, head) of the backward (nv as in fwd_one). */
INLINE void bwd_one(const float *qkv, const float *cos, const float *sin, const float *out,
                    const float *lse, const float *dout, float *dqkv, long b, long h, long T,
                    long H, float scale, float *buf, const long nv) {
    long hd = 16 * nv, D = H * hd, Tp = (T + 15) / 16 * 16, bh = b * H + h;
    float *qr = buf, *kr = qr + T * hd, *kT = kr + T * hd, *vT = kT + Tp * hd,
          *P = vT + Tp * hd, *dS = P + T * Tp, *dp = dS + T * Tp;
    load_qk(qkv, cos, sin, b, h, T, H, hd, scale, qr, kr, kT, Tp);
    transpose(vT, Tp, qkv + ((b * T) * 3 + 2) * D + h * hd, 3 * D, T, hd);
    /* P and dS = P * (dP - rowsum(dO * O)), row by row, zero right of the diagonal */
    for (long i = 0; i < T; i++) {
        const float *go = dout + (b * T + i) * D + h * hd,
                    *o = out + (b * T + i) * D + h * hd;
        float Di = 0.f, L = lse[bh * T + i], *p = P + i * Tp, *ds = dS + i * Tp;
        for (long d = 0; d < hd; d++) Di += go[d] * o[d];
        rowdots(p, qr + i * hd, kT, Tp, i + 1, hd);
        rowdots(dp, go, vT, Tp, i + 1, hd);
        for (long jc = 0; jc <= i; jc += 16)
            for (long jj = 0; jj < 16; jj++) {
                float e = jc + jj <= i ? exp_(p[jc + jj] - L) : 0.f;
                p[jc + jj] = e;
                ds[jc + jj] = e * (dp[jc + jj] - Di);
            }
    }
    /* dK_j = sum_i dS_ij q_i, dV_j = sum_i P_ij dO_i (i >= j), in registers */
    for (long j = 0; j < T; j++) {
        v16 dk[MAXV], dv[MAXV];
        for (long c = 0; c < nv; c++) dk[c] = dv[c] = (v16){0};
        for (long i = j; i < T; i++) {
            const float *qi = qr + i * hd, *go = dout + (b * T + i) * D + h * hd;
            float s = dS[i * Tp + j], pp = P[i * Tp + j];
            for (long c = 0; c < nv; c++) {
                dk[c] += s * LD(qi + 16 * c);
                dv[c] += pp * LD(go + 16 * c);
            }
        }
        float a[16 * MAXV];
        for (long c = 0; c < nv; c++) ST(a + 16 * c, dk[c]);
        float *gk = dqkv + ((b * T + j) * 3 + 1) * D + h * hd, *gv = gk + D;
        for (long c = 0; c < nv; c++) ST(gv + 16 * c, dv[c]);
        unrotate(gk, a, cos, sin, j, hd);
    }
    /* dQ_i = scale * sum_j dS_ij k_j (j <= i) */
    for (long i = 0; i < T; i++) {
        v16 dq[MAXV];
        weighted_rows(dq, dS + i * Tp, kr, hd, i + 1, nv);
        float a[16 * MAXV];
        for (long c = 0; c < nv; c++) ST(a + 16 * c, dq[c] * scale);
        float *gq = dqkv + ((b * T + i) * 3) * D + h * hd;
        unrotate(gq, a, cos, sin, i, hd);
    }
}

int attn_bwd(const float *qkv, const float *cos, const float *sin, const float *out,
             const float *lse, const float *dout, float *dqkv, long B, long T, long H, long hd,
             float scale, int threads) {
    if (hd % 16 || hd > 16 * MAXV) return 2;
    long Tp = (T + 15) / 16 * 16, nv = hd / 16;
#define BWD(NV) bwd_one(qkv, cos, sin, out, lse, dout, dqkv, b, h, T, H, scale, buf, NV)
    EACH_ROW_HEAD(2 * T * hd + 2 * Tp * hd + 2 * T * Tp + Tp, BWD)
#undef BWD
}

static inline float sigm(float x) { return 1.f / (1.f + exp_(-x)); }

/* out [N, F] = silu(gu[:, :F]) * gu[:, F:] */
void swiglu_fwd(const float *gu, float *out, long N, long F, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long n = 0; n < N; n++) {
        const float *g = gu + n * 2 * F, *u = g + F;
        float *o = out + n * F;
        for (long f = 0; f < F; f++) o[f] = g[f] * sigm(g[f]) * u[f];
    }
}

/* dgu [N, 2F] from dout [N, F] */
void swiglu_bwd(const float *gu, const float *dout, float *dgu, long N, long F, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long n = 0; n < N; n++) {
        const float *g = gu + n * 2 * F, *u = g + F, *d = dout + n * F;
        float *dg = dgu + n * 2 * F, *du = dg + F;
        for (long f = 0; f < F; f++) {
            float s = sigm(g[f]), silu = g[f] * s;
            du[f] = d[f] * silu;
            dg[f] = d[f] * u[f] * (s + silu * (1.f - s));
        }
    }
}

/* y [N, D] = x * rstd * w with rstd [N] = 1 / sqrt(mean(x^2) + eps), kept for the backward */
void rms_fwd(const float *x, const float *w, float *y, float *rstd, long N, long D, float eps,
             int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long n = 0; n < N; n++) {
        const float *a = x + n * D;
        float ss = 0.f;
        for (long d = 0; d < D; d++) ss += a[d] * a[d];
        float r = 1.f / sqrtf(ss / D + eps);
        rstd[n] = r;
        for (long d = 0; d < D; d++) y[n * D + d] = a[d] * r * w[d];
    }
}

/* dx [N, D] from dy; dw_parts [threads, D], zeroed by the caller, gets each thread's share of
 * dw (the caller sums the rows: a fixed order, so the result does not depend on timing) */
void rms_bwd(const float *x, const float *w, const float *rstd, const float *dy, float *dx,
             float *dw_parts, long N, long D, int threads) {
#pragma omp parallel num_threads(threads)
    {
        float *restrict dw = dw_parts + (long)omp_get_thread_num() * D;
#pragma omp for schedule(static)
        for (long n = 0; n < N; n++) {
            const float *restrict a = x + n * D, *restrict g = dy + n * D;
            float r = rstd[n], s = 0.f;
            for (long d = 0; d < D; d++) {
                s += g[d] * w[d] * a[d];
                dw[d] += g[d] * a[d] * r;
            }
            float c = s * r * r * r / D;
            for (long d = 0; d < D; d++) dx[n * D + d] = g[d] * w[d] * r - a[d] * c;
        }
    }
}
