/* The exp that the kernels' vectorised loops use (decode_kernels.c, train_kernels.c). */
#ifndef REASONLOOP_EXP_H
#define REASONLOOP_EXP_H
#include <stdint.h>
#include <string.h>

/* exp, clamped above at 88 (silu's a / (1 + exp(-a)) is then 0 to float precision for
 * a < -88), exact 0 below -87.3 (so -inf, padding, gives 0);
 * written as straight-line code so that loops over it vectorise: 2^n times a degree-6
 * polynomial on the reduced argument, relative error about 2e-7 (libm's expf does not
 * vectorise without -ffinite-math-only, which would break -inf). */
static inline float exp_(float x) {
    float xc = x < -87.3f ? -87.3f : (x > 88.f ? 88.f : x);
    float n = __builtin_roundf(xc * 1.44269504088896341f);
    float r = xc - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.f + r * (1.f + r * (0.5f + r * (1.66666672e-1f + r * (4.16666381e-2f +
              r * (8.33338592e-3f + r * 1.38878621e-3f)))));
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, 4);
    return x < -87.3f ? 0.f : p * scale;
}

#endif
