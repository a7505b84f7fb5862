/* GroupNorm, optionally followed by SiLU, over channels_last (N, H, W, C) tensors of float32 or bfloat16, forward
 * and backward, computed in float32 and rounded once to the tensor's dtype.
 *
 * An optional per-sample shift t_{n,c} (a U-Net's timestep embedding) is added first, in float32: x ← x + t, and
 * its gradient dt_{n,c} = Σ_p dx is returned beside dx.
 * Per sample n and group g (channels c of g, positions p, M = |g| * HW elements):
 *   mean = (1/M) Σ x,  var = (1/M) Σ (x − mean)²,  rstd = 1/√(var + eps)
 *   z = γ_c (x − mean) rstd + β_c = a_c x + b_c,   y = z, or SiLU(z) = z σ(z)
 * Backward, with dz = dy (or dy σ(z) (1 + z (1 − σ(z))) after SiLU) and x̂ = (x − mean) rstd:
 *   dβ_c = Σ_{n,p} dz,  dγ_c = Σ_{n,p} dz x̂
 *   dx = rstd (γ_c dz − m1 − x̂ m2),  m1 = (1/M) Σ_g γ dz,  m2 = (1/M) Σ_g γ dz x̂
 * In channels_last a sample is HW rows of C contiguous channels: per-channel loops run along a row, over c, and
 * vectorise. Parallel over samples. Each direction reads a sample's x twice while it stays in the core's cache:
 * the forward for the statistics, then the output; the backward for dz (kept in a float32 buffer) and its sums,
 * then dx. Loaded by core/kernels.py, which holds the reference in PyTorch's ops. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void load(const void *src, float *restrict dst, int64_t count, int bf16) {
    if (bf16) {
        const uint16_t *restrict s = src;
        uint32_t *restrict d = (uint32_t *)dst;
        for (int64_t i = 0; i < count; i++) d[i] = (uint32_t)s[i] << 16;
    } else {
        memcpy(dst, src, count * sizeof(float));
    }
}

/* a row of x, plus the sample's shift where there is one */
static void load_shifted(const void *src, float *restrict dst, const float *restrict shift, int64_t count, int bf16) {
    load(src, dst, count, bf16);
    if (shift)
        for (int64_t i = 0; i < count; i++) dst[i] += shift[i];
}

static void store(void *dst, const float *restrict src, int64_t count, int bf16) {
    if (bf16) {                                          /* round to nearest even, as torch's float -> bfloat16 */
        const uint32_t *restrict s = (const uint32_t *)src;
        uint16_t *restrict d = dst;
        for (int64_t i = 0; i < count; i++) d[i] = (uint16_t)((s[i] + 0x7FFFu + ((s[i] >> 16) & 1u)) >> 16);
    } else {
        memcpy(dst, src, count * sizeof(float));
    }
}

/* e^x = 2^k e^r with k = round(x / ln 2) and r = x − k ln 2 (ln 2 split in two so that r stays exact), |r| <= ln2/2,
 * e^r from its Taylor series to r⁷ (relative error below 1e-7, about one float32 ulp). Written out rather than
 * calling expf so that the SiLU loops vectorise without -ffast-math. */
#define EXP_MAX 88.f                                                /* e^88 is still a float32 */
#define LOG2_E 1.44269504089f
#define LN2_HIGH 0.693145751953125f
#define LN2_LOW 1.428606765330187e-06f

static inline float exp_approx(float x) {
    x = x < -87.f ? -87.f : x > EXP_MAX ? EXP_MAX : x;          /* e^x stays a normal float32 */
    float k = rintf(x * LOG2_E);
    float r = x - k * LN2_HIGH - k * LN2_LOW;
    float p = 1.f + r * (1.f + r * (0.5f + r * (1.f / 6 + r * (1.f / 24 + r * (1.f / 120 + r * (1.f / 720
                                                                                        + r * (1.f / 5040)))))));
    int32_t bits = ((int32_t)k + 127) << 23;                        /* 2^k */
    float scale;
    memcpy(&scale, &bits, 4);
    return p * scale;
}

static void silu_row(float *restrict row, const float *restrict a, const float *restrict b, int64_t c) {
    for (int64_t i = 0; i < c; i++) {
        float z = row[i] * a[i] + b[i];
        row[i] = z / (1.f + exp_approx(-z));
    }
}

/* dz = dy σ(z) (1 + z (1 − σ(z))), the gradient through SiLU at z = a x + b, written over dy's row. */
static void silu_grad_row(const float *restrict row, const float *restrict a, const float *restrict b,
                          float *restrict grad, int64_t c) {
    for (int64_t i = 0; i < c; i++) {
        float z = row[i] * a[i] + b[i], sig = 1.f / (1.f + exp_approx(-z));
        grad[i] *= sig * (1.f + z * (1.f - sig));
    }
}

/* The two passes of each direction with AVX-512 intrinsics, for rows of a multiple of 16 channels: 16 channels per
 * register, loaded, shifted, normalised, passed through SiLU (or its gradient) and rounded without leaving registers
 * (GCC's vectorisation of the loops above spends most of its time in loop set-up at 32-128 channels). The same
 * float32 arithmetic, except that e^−z stops at r⁶ and σ(z) = 1/(1 + e^−z) takes the reciprocal estimate with one
 * Newton step, r ← r (2 − d r) (relative error ~1e-7), instead of a division. */
#if defined(__AVX512F__)
#include <immintrin.h>
#define VECTOR_ROWS(c) ((c) % 16 == 0)

static inline __m512 load16(const char *src, int bf16) {
    if (!bf16) return _mm512_loadu_ps((const float *)src);
    __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)src));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}

static inline void store16(char *dst, __m512 value, int bf16) {
    if (!bf16) {
        _mm512_storeu_ps((float *)dst, value);
        return;
    }
#if defined(__AVX512BF16__)
    _mm256_storeu_si256((__m256i *)dst, (__m256i)_mm512_cvtneps_pbh(value));   /* round to nearest even */
#else
    __m512i bits = _mm512_castps_si512(value);                          /* round to nearest even, as store() */
    __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    bits = _mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF)));
    _mm256_storeu_si256((__m256i *)dst, _mm512_cvtepi32_epi16(_mm512_srli_epi32(bits, 16)));
#endif
}

/* σ(z) = 1/(1 + e^−z), with e^−z as exp_approx computes it (to r⁶ here) but with the negation folded into its
 * constants: k = round(−z / ln 2), r = −z − k ln 2. z is clamped from below at −EXP_MAX, and 2^k applied by scalef,
 * which underflows to 0 for large z. */
static inline __m512 sigmoid16(__m512 z) {
    __m512 clamped = _mm512_max_ps(z, _mm512_set1_ps(-EXP_MAX));
    __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(clamped, _mm512_set1_ps(-LOG2_E)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmsub_ps(k, _mm512_set1_ps(LN2_HIGH), clamped);
    r = _mm512_fnmadd_ps(k, _mm512_set1_ps(LN2_LOW), r);
    __m512 p = _mm512_set1_ps(1.f / 720);
    static const float taylor[] = {1.f / 120, 1.f / 24, 1.f / 6, 0.5f, 1.f, 1.f};
    for (int i = 0; i < 6; i++) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(taylor[i]));
    __m512 d = _mm512_add_ps(_mm512_set1_ps(1.f), _mm512_scalef_ps(p, k));          /* 1 + e^−z */
    __m512 inverse = _mm512_rcp14_ps(d);
    return _mm512_mul_ps(inverse, _mm512_fnmadd_ps(d, inverse, _mm512_set1_ps(2.f)));
}

static inline __m512 silu16(__m512 z) { return _mm512_mul_ps(z, sigmoid16(z)); }

/* Σ (x − k) and Σ (x − k)² per channel over a sample's rows, two rows per iteration (halving the dependency chains
 * through the accumulators). */
static void sums16(const char *xs, const float *shift, const float *first, float *sum, float *squares, int64_t hw,
                   int64_t c, int bf16) {
    const int64_t element = bf16 ? 2 : 4, stride = c * element;
    for (int64_t j = 0; j < c; j += 16) {
        __m512 k = _mm512_loadu_ps(first + j), total = _mm512_setzero_ps(), total_squares = _mm512_setzero_ps();
        if (shift) k = _mm512_sub_ps(k, _mm512_loadu_ps(shift + j));        /* (x + t) − k = x − (k − t) */
        const char *column = xs + j * element;
        int64_t p = 0;
        for (; p + 1 < hw; p += 2) {
            __m512 d0 = _mm512_sub_ps(load16(column + p * stride, bf16), k);
            __m512 d1 = _mm512_sub_ps(load16(column + (p + 1) * stride, bf16), k);
            total = _mm512_add_ps(total, _mm512_add_ps(d0, d1));
            total_squares = _mm512_add_ps(total_squares, _mm512_fmadd_ps(d0, d0, _mm512_mul_ps(d1, d1)));
        }
        if (p < hw) {
            __m512 d = _mm512_sub_ps(load16(column + p * stride, bf16), k);
            total = _mm512_add_ps(total, d);
            total_squares = _mm512_fmadd_ps(d, d, total_squares);
        }
        _mm512_storeu_ps(sum + j, total);
        _mm512_storeu_ps(squares + j, total_squares);
    }
}

/* y = a x + b (then SiLU) over a sample's rows: (x + t) a + b = x a + (t a + b) */
static void output16(const char *xs, char *ys, const float *shift, const float *a, const float *b, int64_t hw,
                     int64_t c, int bf16, int silu) {
    const int64_t element = bf16 ? 2 : 4, stride = c * element;
    for (int64_t j = 0; j < c; j += 16) {
        __m512 scale = _mm512_loadu_ps(a + j), offset = _mm512_loadu_ps(b + j);
        if (shift) offset = _mm512_fmadd_ps(_mm512_loadu_ps(shift + j), scale, offset);
        for (int64_t p = 0; p < hw; p++) {
            __m512 z = _mm512_fmadd_ps(load16(xs + p * stride + j * element, bf16), scale, offset);
            store16(ys + p * stride + j * element, silu ? silu16(z) : z, bf16);
        }
    }
}

/* The backward's first pass: dz (through SiLU at z = a (x + t) + b) into a float32 buffer of the sample, with
 * Σ dz and Σ dz (x + t − mean) per channel; t folded in as in output16: z = a x + (t a + b), x − (mean − t). */
static void grads16(const char *xs, const char *dys, const float *shift, const float *a, const float *b,
                    const float *mean_c, float *dz, float *dbeta, float *dgamma, int64_t hw, int64_t c, int bf16,
                    int silu) {
    const int64_t element = bf16 ? 2 : 4, stride = c * element;
    for (int64_t j = 0; j < c; j += 16) {
        __m512 scale = _mm512_loadu_ps(a + j), offset = _mm512_loadu_ps(b + j), centre = _mm512_loadu_ps(mean_c + j);
        if (shift) {
            __m512 t = _mm512_loadu_ps(shift + j);
            offset = _mm512_fmadd_ps(t, scale, offset);
            centre = _mm512_sub_ps(centre, t);
        }
        __m512 total = _mm512_setzero_ps(), total_x = _mm512_setzero_ps();
        for (int64_t p = 0; p < hw; p++) {
            __m512 x = load16(xs + p * stride + j * element, bf16);
            __m512 grad = load16(dys + p * stride + j * element, bf16);
            if (silu) {                                         /* dy σ (1 + z (1 − σ)) */
                __m512 z = _mm512_fmadd_ps(x, scale, offset), sig = sigmoid16(z);
                __m512 one = _mm512_set1_ps(1.f);
                grad = _mm512_mul_ps(grad, _mm512_mul_ps(sig, _mm512_fmadd_ps(z, _mm512_sub_ps(one, sig), one)));
            }
            _mm512_storeu_ps(dz + p * c + j, grad);
            total = _mm512_add_ps(total, grad);
            total_x = _mm512_fmadd_ps(grad, _mm512_sub_ps(x, centre), total_x);
        }
        _mm512_storeu_ps(dbeta + j, total);
        _mm512_storeu_ps(dgamma + j, total_x);
    }
}

/* The second pass: dx = k_grad dz + k_x (x + t) + k = k_grad dz + k_x x + (k_x t + k), and dt = Σ_p dx where there
 * is a shift. */
static void inputs16(const char *xs, const float *dz, const float *shift, const float *k_grad, const float *k_x,
                     const float *k, char *dxs, float *dshift, int64_t hw, int64_t c, int bf16) {
    const int64_t element = bf16 ? 2 : 4, stride = c * element;
    for (int64_t j = 0; j < c; j += 16) {
        __m512 kg = _mm512_loadu_ps(k_grad + j), kx = _mm512_loadu_ps(k_x + j), k0 = _mm512_loadu_ps(k + j);
        if (shift) k0 = _mm512_fmadd_ps(kx, _mm512_loadu_ps(shift + j), k0);
        __m512 total = _mm512_setzero_ps();
        for (int64_t p = 0; p < hw; p++) {
            __m512 x = load16(xs + p * stride + j * element, bf16);
            __m512 value = _mm512_fmadd_ps(kg, _mm512_loadu_ps(dz + p * c + j), _mm512_fmadd_ps(kx, x, k0));
            total = _mm512_add_ps(total, value);
            store16(dxs + p * stride + j * element, value, bf16);
        }
        if (dshift) _mm512_storeu_ps(dshift + j, total);
    }
}
#else
#define VECTOR_ROWS(c) 0
static void sums16(const char *xs, const float *shift, const float *first, float *sum, float *squares, int64_t hw,
                   int64_t c, int bf16) {}
static void output16(const char *xs, char *ys, const float *shift, const float *a, const float *b, int64_t hw,
                     int64_t c, int bf16, int silu) {}
static void grads16(const char *xs, const char *dys, const float *shift, const float *a, const float *b,
                    const float *mean_c, float *dz, float *dbeta, float *dgamma, int64_t hw, int64_t c, int bf16,
                    int silu) {}
static void inputs16(const char *xs, const float *dz, const float *shift, const float *k_grad, const float *k_x,
                     const float *k, char *dxs, float *dshift, int64_t hw, int64_t c, int bf16) {}
#endif

/* A scratch buffer per thread, kept between calls (a fresh malloc of this size maps new pages every call). */
static float *scratch(int64_t count) {
    static __thread float *buffer = NULL;
    static __thread int64_t capacity = 0;
    if (count > capacity) {
        free(buffer);
        buffer = malloc(count * sizeof(float));
        capacity = buffer ? count : 0;
    }
    return buffer;
}

/* a_c = γ_c rstd and b_c = β_c − mean a_c (y = a x + b before the SiLU), from the group statistics of a sample. */
static void affine(const float *restrict gamma, const float *restrict beta, const float *restrict mean,
                   const float *restrict rstd, float *restrict a, float *restrict b, int64_t c, int64_t groups) {
    for (int64_t i = 0; i < c; i++) {
        int64_t g = i / (c / groups);
        a[i] = gamma[i] * rstd[g];
        b[i] = beta[i] - mean[g] * a[i];
    }
}

void group_norm_silu_forward(const void *x, const float *shift, void *y, const float *gamma, const float *beta,
                             float *mean, float *rstd, int64_t n, int64_t hw, int64_t c, int64_t groups, float eps,
                             int bf16, int silu, int threads) {
    const int64_t per_group = c / groups, size = hw * c, element = bf16 ? 2 : 4;
    const float inv_m = 1.f / (float)(per_group * hw);
#pragma omp parallel num_threads(threads)
    {
        float *restrict row = scratch(6 * c);
        float *restrict first = row + c, *restrict sum = first + c, *restrict squares = sum + c;
        float *restrict a = squares + c, *restrict b = a + c;
#pragma omp for schedule(static)
        for (int64_t s = 0; s < n; s++) {
            const char *xs = (const char *)x + s * size * element;
            char *ys = (char *)y + s * size * element;
            float *mean_s = mean + s * groups, *rstd_s = rstd + s * groups;
            const float *shift_s = shift ? shift + s * c : NULL;
            /* One pass of shifted sums: with k_g a value of the group (its first), mean = k + Σ(x − k)/M and
             * var = Σ(x − k)²/M − (Σ(x − k)/M)², which keeps float32 accurate when |mean| >> std. */
            load_shifted(xs, row, shift_s, c, bf16);
            for (int64_t i = 0; i < c; i++) first[i] = row[i - i % per_group];
            memset(sum, 0, 2 * c * sizeof(float));
            if (VECTOR_ROWS(c))
                sums16(xs, shift_s, first, sum, squares, hw, c, bf16);
            else
                for (int64_t p = 0; p < hw; p++) {
                    load_shifted(xs + p * c * element, row, shift_s, c, bf16);
                    for (int64_t i = 0; i < c; i++) {
                        float d = row[i] - first[i];
                        sum[i] += d;
                        squares[i] += d * d;
                    }
                }
            for (int64_t g = 0; g < groups; g++) {
                float total = 0.f, total_squares = 0.f;
                for (int64_t i = g * per_group; i < (g + 1) * per_group; i++) {
                    total += sum[i];
                    total_squares += squares[i];
                }
                float offset = total * inv_m, var = total_squares * inv_m - offset * offset;
                mean_s[g] = first[g * per_group] + offset;
                rstd_s[g] = 1.f / sqrtf((var > 0.f ? var : 0.f) + eps);
            }
            affine(gamma, beta, mean_s, rstd_s, a, b, c, groups);
            if (VECTOR_ROWS(c))                                         /* the sample is still in cache */
                output16(xs, ys, shift_s, a, b, hw, c, bf16, silu);
            else
                for (int64_t p = 0; p < hw; p++) {
                    load_shifted(xs + p * c * element, row, shift_s, c, bf16);
                    if (silu)
                        silu_row(row, a, b, c);
                    else
                        for (int64_t i = 0; i < c; i++) row[i] = row[i] * a[i] + b[i];
                    store(ys + p * c * element, row, c, bf16);
                }
        }
    }
}

/* dgamma and dbeta are (n, c): each sample's share, summed over n by the caller. */
void group_norm_silu_backward(const void *dy, const void *x, const float *shift, const float *gamma,
                              const float *beta, const float *mean, const float *rstd, void *dx, float *dshift,
                              float *dgamma, float *dbeta, int64_t n, int64_t hw, int64_t c, int64_t groups, int bf16,
                              int silu, int threads) {
    const int64_t per_group = c / groups, size = hw * c, element = bf16 ? 2 : 4;
    const float inv_m = 1.f / (float)(per_group * hw);
#pragma omp parallel num_threads(threads)
    {
        float *restrict dz = scratch(size + 8 * c + 2 * groups);            /* dz of the sample, then rows */
        float *restrict row = dz + size, *restrict grad = row + c, *restrict a = grad + c, *restrict b = a + c;
        float *restrict mean_c = b + c, *restrict k_grad = mean_c + c, *restrict k_x = k_grad + c, *restrict k = k_x + c;
        float *restrict m1 = k + c, *restrict m2 = m1 + groups;
#pragma omp for schedule(static)
        for (int64_t s = 0; s < n; s++) {
            const char *xs = (const char *)x + s * size * element, *dys = (const char *)dy + s * size * element;
            const float *mean_s = mean + s * groups, *rstd_s = rstd + s * groups;
            float *restrict dgamma_s = dgamma + s * c, *restrict dbeta_s = dbeta + s * c;
            const float *shift_s = shift ? shift + s * c : NULL;
            float *restrict dshift_s = dshift ? dshift + s * c : NULL;
            affine(gamma, beta, mean_s, rstd_s, a, b, c, groups);
            for (int64_t i = 0; i < c; i++) mean_c[i] = mean_s[i / per_group];
            memset(dgamma_s, 0, c * sizeof(float));
            memset(dbeta_s, 0, c * sizeof(float));
            if (VECTOR_ROWS(c))
                grads16(xs, dys, shift_s, a, b, mean_c, dz, dbeta_s, dgamma_s, hw, c, bf16, silu);
            else
                for (int64_t p = 0; p < hw; p++) {                 /* dz, Σ dz and Σ dz (x − mean) per channel */
                    float *restrict dz_p = dz + p * c;
                    load_shifted(xs + p * c * element, row, shift_s, c, bf16);
                    load(dys + p * c * element, dz_p, c, bf16);
                    if (silu) silu_grad_row(row, a, b, dz_p, c);
                    for (int64_t i = 0; i < c; i++) {
                        dbeta_s[i] += dz_p[i];
                        dgamma_s[i] += dz_p[i] * (row[i] - mean_c[i]);
                    }
                }
            for (int64_t g = 0; g < groups; g++) {
                m1[g] = m2[g] = 0.f;
                for (int64_t i = g * per_group; i < (g + 1) * per_group; i++) {
                    dgamma_s[i] *= rstd_s[g];                                  /* Σ dz x̂ */
                    m1[g] += gamma[i] * dbeta_s[i];
                    m2[g] += gamma[i] * dgamma_s[i];
                }
                m1[g] *= inv_m;
                m2[g] *= inv_m;
            }
            /* dx = rstd γ dz − rstd m1 − (x − mean) rstd² m2 = k_grad dz + k_x x + k */
            for (int64_t i = 0; i < c; i++) {
                int64_t g = i / per_group;
                k_grad[i] = rstd_s[g] * gamma[i];
                k_x[i] = -rstd_s[g] * rstd_s[g] * m2[g];
                k[i] = -rstd_s[g] * m1[g] - mean_s[g] * k_x[i];
            }
            if (dshift_s) memset(dshift_s, 0, c * sizeof(float));
            if (VECTOR_ROWS(c))
                inputs16(xs, dz, shift_s, k_grad, k_x, k, (char *)dx + s * size * element, dshift_s, hw, c, bf16);
            else
                for (int64_t p = 0; p < hw; p++) {
                    load_shifted(xs + p * c * element, row, shift_s, c, bf16);
                    for (int64_t i = 0; i < c; i++) row[i] = k_grad[i] * dz[p * c + i] + k_x[i] * row[i] + k[i];
                    if (dshift_s)
                        for (int64_t i = 0; i < c; i++) dshift_s[i] += row[i];
                    store((char *)dx + (s * size + p * c) * element, row, c, bf16);
                }
        }
    }
}
