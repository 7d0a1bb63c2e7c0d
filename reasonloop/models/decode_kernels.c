/* Fused CPU kernels for the tiny backend's decode step (models/decode_kernels.py builds and
 * loads this file; models/tiny.py's `Block.fused_step` calls it).
 *
 * At batch 256 and 0.8-3M parameters a decode step is a few small matrix products plus a
 * few dozen elementwise ops on [256, dim] tensors. torch runs the products well; the rest costs
 * a dispatch and a round trip through memory each. These kernels fuse them: RMSNorm with the
 * residual add before it, RoPE with the KV-cache write, single-query attention over the cache
 * (read once, padding skipped), SwiGLU's gate. Matrices ("T") are float32 or bfloat16; the
 * residual stream, norms, rope tables, the attention bias and every accumulation are float32.
 *
 * Compiled with -ffast-math -fno-finite-math-only: reassociation (vectorised sums and exp)
 * but -inf keeps its meaning (the attention bias marks padding with it).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static inline float bf2f(uint16_t x) {
    uint32_t u = (uint32_t)x << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t f2bf(float f) { /* round to nearest even, as torch does */
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 64); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

#include "exp.h"

#define ID(x) (x)

/* The attention's inner loops: the dot product of a query row with a key row, and
 * acc += p * value row (acc float32). With AVX-512, 16 lanes at a time (bf16 widened by a
 * shift), and with AVX512-BF16 the bf16 dot product in one instruction per 32 elements;
 * otherwise plain loops that the compiler vectorises as it can. */
#if defined(__AVX512F__)
#include <immintrin.h>
static inline __m512 load16_f32(const float *x) { return _mm512_loadu_ps(x); }
static inline __m512 load16_bf16(const uint16_t *x) {
    __m256i raw = _mm256_loadu_si256((const __m256i *)x);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}
static inline float dot_f32(const float *q, const float *k, long hd) {
    __m512 a = _mm512_setzero_ps();
    long d = 0;
    for (; d + 16 <= hd; d += 16) a = _mm512_fmadd_ps(load16_f32(q + d), load16_f32(k + d), a);
    float s = _mm512_reduce_add_ps(a);
    for (; d < hd; d++) s += q[d] * k[d];
    return s;
}
static inline float dot_bf16(const uint16_t *q, const uint16_t *k, long hd) {
    __m512 a = _mm512_setzero_ps();
    long d = 0;
#if defined(__AVX512BF16__)
    for (; d + 32 <= hd; d += 32)
        a = _mm512_dpbf16_ps(a, (__m512bh)_mm512_loadu_si512(q + d),
                             (__m512bh)_mm512_loadu_si512(k + d));
#endif
    for (; d + 16 <= hd; d += 16) a = _mm512_fmadd_ps(load16_bf16(q + d), load16_bf16(k + d), a);
    float s = _mm512_reduce_add_ps(a);
    for (; d < hd; d++) s += bf2f(q[d]) * bf2f(k[d]);
    return s;
}
#define DEFINE_AXPY(SUFFIX, T, LOAD)                                                             \
    static inline void axpy_##SUFFIX(float *acc, float p, const T *v, long hd) {                \
        const __m512 pv = _mm512_set1_ps(p);                                                    \
        long d = 0;                                                                             \
        for (; d + 16 <= hd; d += 16)                                                           \
            _mm512_storeu_ps(acc + d,                                                           \
                             _mm512_fmadd_ps(pv, load16_##SUFFIX(v + d), load16_f32(acc + d))); \
        for (; d < hd; d++) acc[d] += p * LOAD(v[d]);                                           \
    }
#else
#define DEFINE_DOT(SUFFIX, T, LOAD)                                                              \
    static inline float dot_##SUFFIX(const T *q, const T *k, long hd) {                         \
        float s = 0.f;                                                                          \
        _Pragma("omp simd reduction(+ : s)")                                                    \
        for (long d = 0; d < hd; d++) s += LOAD(q[d]) * LOAD(k[d]);                             \
        return s;                                                                               \
    }
DEFINE_DOT(f32, float, ID)
DEFINE_DOT(bf16, uint16_t, bf2f)
#define DEFINE_AXPY(SUFFIX, T, LOAD)                                                             \
    static inline void axpy_##SUFFIX(float *acc, float p, const T *v, long hd) {                \
        _Pragma("omp simd")                                                                     \
        for (long d = 0; d < hd; d++) acc[d] += p * LOAD(v[d]);                                 \
    }
#endif
DEFINE_AXPY(f32, float, ID)
DEFINE_AXPY(bf16, uint16_t, bf2f)

/* h[b] = rmsnorm(x[b] (+= y[b] first, when y is not NULL)) * w, for B rows of D. */
#define DEFINE_ADD_RMS_NORM(NAME, T, LOAD, STORE)                                                \
    void NAME(float *x, const T *y, const float *w, T *h, long B, long D, float eps,           \
              int threads) {                                                                    \
        _Pragma("omp parallel for num_threads(threads) schedule(static)")                       \
        for (long b = 0; b < B; b++) {                                                          \
            float *xr = x + b * D;                                                              \
            float ss = 0.f;                                                                     \
            if (y) {                                                                            \
                const T *yr = y + b * D;                                                        \
                for (long d = 0; d < D; d++) {                                                  \
                    xr[d] += LOAD(yr[d]);                                                       \
                    ss += xr[d] * xr[d];                                                        \
                }                                                                               \
            } else {                                                                            \
                for (long d = 0; d < D; d++) ss += xr[d] * xr[d];                               \
            }                                                                                   \
            float r = 1.f / sqrtf(ss / (float)D + eps);                                         \
            T *hr = h + b * D;                                                                  \
            for (long d = 0; d < D; d++) hr[d] = STORE(xr[d] * r * w[d]);                       \
        }                                                                                       \
    }

/* qkv [B, 3, H, hd] -> q [B, H, hd] and this step's cache slots k, v [B, H, hd], with rotary
 * embedding on q and k: x * cos + swap_halves(x) * sin (sin sign-folded, tables [B, hd]);
 * cos == NULL means no positional encoding. */
#define DEFINE_ROPE_CACHE(NAME, T, LOAD, STORE)                                                  \
    void NAME(const T *qkv, const float *cos, const float *sin, T *q, T *k, T *v, long B,      \
              long H, long hd, int threads) {                                                   \
        long half = hd / 2, D = H * hd;                                                         \
        _Pragma("omp parallel for num_threads(threads) schedule(static)")                       \
        for (long b = 0; b < B; b++) {                                                          \
            const T *src = qkv + b * 3 * D;                                                     \
            for (long h = 0; h < H; h++) {                                                      \
                const T *sq = src + h * hd, *sk = src + D + h * hd, *sv = src + 2 * D + h * hd; \
                T *dq = q + b * D + h * hd, *dk = k + b * D + h * hd, *dv = v + b * D + h * hd; \
                if (cos) {                                                                      \
                    const float *c = cos + b * hd, *s = sin + b * hd;                           \
                    for (long d = 0; d < hd; d++) {                                             \
                        long o = d < half ? d + half : d - half;                                \
                        dq[d] = STORE(LOAD(sq[d]) * c[d] + LOAD(sq[o]) * s[d]);                 \
                        dk[d] = STORE(LOAD(sk[d]) * c[d] + LOAD(sk[o]) * s[d]);                 \
                    }                                                                           \
                } else {                                                                        \
                    memcpy(dq, sq, hd * sizeof(T));                                             \
                    memcpy(dk, sk, hd * sizeof(T));                                             \
                }                                                                               \
                memcpy(dv, sv, hd * sizeof(T));                                                 \
            }                                                                                   \
        }                                                                                       \
    }

/* Single-query attention for N independent rows over a time-major cache prefix:
 * q [N, hd], k, v [T, N, hd], bias [T, N] (0 or -inf), out [N, hd]. Each thread takes blocks of
 * `rows` consecutive rows: scores for all T (one pass over k), softmax, then one pass over v.
 * Big blocks make each slot's read one long contiguous run, which the prefetchers follow; the
 * block's scores and accumulators stay in L2. HD > 0 fixes the head size at compile time so
 * the dot products unroll. Returns 0, or -1 when out of memory. */
#define DEFINE_ATTENTION(NAME, T, LOAD, STORE, DOT, AXPY, HD)                                               \
    static int NAME(const T *q, const T *k, const T *v, const float *bias, T *out, long T_,    \
                    long N, long hd_, float scale, long rows, int threads) {                    \
        const long hd = HD ? HD : hd_;                                                          \
        const long nblocks = (N + rows - 1) / rows;                                             \
        int failed = 0;                                                                         \
        _Pragma("omp parallel num_threads(threads) reduction(| : failed)") {                   \
            float *acc = malloc(sizeof(float) * rows * hd);                                     \
            float *sc = malloc(sizeof(float) * T_ * rows);                                      \
            float *mx = malloc(sizeof(float) * rows), *den = malloc(sizeof(float) * rows);      \
            failed = !acc || !sc || !mx || !den;                                                \
            _Pragma("omp for schedule(static)")                                                 \
            for (long blk = 0; blk < nblocks; blk++) {                                          \
                if (failed) continue;                                                           \
                const long n0 = blk * rows, nb = N - n0 < rows ? N - n0 : rows;                \
                for (long i = 0; i < nb; i++) {                                                 \
                    for (long d = 0; d < hd; d++) acc[i * hd + d] = 0.f;                        \
                    mx[i] = -INFINITY;                                                          \
                    den[i] = 0.f;                                                               \
                }                                                                               \
                for (long t = 0; t < T_; t++) {                                                 \
                    const T *kr = k + (t * N + n0) * hd;                                        \
                    const float *br = bias + t * N + n0;                                        \
                    float *st = sc + t * rows;                                                  \
                    for (long i = 0; i < nb; i++) {                                             \
                        if (br[i] == -INFINITY) { /* left padding: skip its key */              \
                            st[i] = -INFINITY;                                                  \
                            continue;                                                           \
                        }                                                                       \
                        const float s = DOT(q + (n0 + i) * hd, kr + i * hd, hd) * scale + br[i];\
                        st[i] = s;                                                              \
                        mx[i] = s > mx[i] ? s : mx[i];                                          \
                    }                                                                           \
                }                                                                               \
                for (long t = 0; t < T_; t++) {                                                 \
                    float *st = sc + t * rows;                                                  \
                    _Pragma("omp simd")                                                         \
                    for (long i = 0; i < nb; i++) {                                             \
                        float p = exp_(st[i] - mx[i]);                                          \
                        st[i] = p;                                                              \
                        den[i] += p;                                                            \
                    }                                                                           \
                }                                                                               \
                for (long t = 0; t < T_; t++) {                                                 \
                    const T *vr = v + (t * N + n0) * hd;                                        \
                    const float *st = sc + t * rows;                                            \
                    for (long i = 0; i < nb; i++) {                                             \
                        const float p = st[i];                                                  \
                        if (p == 0.f) continue; /* padding */                                   \
                        AXPY(acc + i * hd, p, vr + i * hd, hd);                                 \
                    }                                                                           \
                }                                                                               \
                for (long i = 0; i < nb; i++) {                                                 \
                    const float r = 1.f / den[i];                                               \
                    for (long d = 0; d < hd; d++) out[(n0 + i) * hd + d] = STORE(acc[i * hd + d] * r); \
                }                                                                               \
            }                                                                                   \
            free(acc);                                                                          \
            free(sc);                                                                           \
            free(mx);                                                                           \
            free(den);                                                                          \
        }                                                                                       \
        return failed ? -1 : 0;                                                                 \
    }

/* out [B, F] = silu(gu[:, :F]) * gu[:, F:] for gu [B, 2F] (SwiGLU's gate). */
#define DEFINE_SILU_MUL(NAME, T, LOAD, STORE)                                                    \
    void NAME(const T *gu, T *out, long B, long F, int threads) {                               \
        _Pragma("omp parallel for num_threads(threads) schedule(static)")                       \
        for (long b = 0; b < B; b++) {                                                          \
            const T *g = gu + b * 2 * F, *u = g + F;                                            \
            T *o = out + b * F;                                                                 \
            for (long f = 0; f < F; f++) {                                                      \
                float a = LOAD(g[f]);                                                           \
                o[f] = STORE(a / (1.f + exp_(-a)) * LOAD(u[f]));                                \
            }                                                                                   \
        }                                                                                       \
    }

#define DEFINE_ALL(SUFFIX, T, LOAD, STORE)                                                       \
    DEFINE_ADD_RMS_NORM(add_rms_norm_##SUFFIX, T, LOAD, STORE)                                   \
    DEFINE_ROPE_CACHE(rope_cache_##SUFFIX, T, LOAD, STORE)                                       \
    DEFINE_SILU_MUL(silu_mul_##SUFFIX, T, LOAD, STORE)                                           \
    DEFINE_ATTENTION(attention_any_##SUFFIX, T, LOAD, STORE, dot_##SUFFIX, axpy_##SUFFIX, 0)                                  \
    DEFINE_ATTENTION(attention_32_##SUFFIX, T, LOAD, STORE, dot_##SUFFIX, axpy_##SUFFIX, 32)                                  \
    DEFINE_ATTENTION(attention_64_##SUFFIX, T, LOAD, STORE, dot_##SUFFIX, axpy_##SUFFIX, 64)                                  \
    int attention_##SUFFIX(const T *q, const T *k, const T *v, const float *bias, T *out,       \
                           long T_, long N, long hd, float scale, long rows, int threads) {     \
        if (hd == 32) return attention_32_##SUFFIX(q, k, v, bias, out, T_, N, hd, scale, rows, threads); \
        if (hd == 64) return attention_64_##SUFFIX(q, k, v, bias, out, T_, N, hd, scale, rows, threads); \
        return attention_any_##SUFFIX(q, k, v, bias, out, T_, N, hd, scale, rows, threads);     \
    }


DEFINE_ALL(f32, float, ID, ID)
DEFINE_ALL(bf16, uint16_t, bf2f, f2bf)
