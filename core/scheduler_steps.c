/* The image-sized arithmetic of one sampler step (DDPM, DDIM, DPM-Solver++) in one pass over float32 tensors.
 *
 * Each function computes, element by element, exactly the float32 operations that core/schedulers/ writes with
 * PyTorch's ops, in the same order (diffusers' order, which the schedulers follow bit for bit): one rounding per
 * +, −, ×, ÷, and no fused multiply-add (the pragmas below: a compiler may otherwise contract a × b + c). So the
 * results are the same bits as the reference, in one pass over memory instead of one pass per operation. The step's
 * scalars come precomputed from the scheduler's `_coefficients`; the noise z is drawn by PyTorch beforehand.
 * Large tensors are split over `threads` OpenMP threads (torch's own runtime), which changes no value.
 *
 * x̂_0 from the model output m and x_t (core/schedulers/base.py, predicted_x0), by `prediction`:
 *   0 ε:      x̂_0 = (x_t − σ m) / α        1 x_0: x̂_0 = m        2 v: x̂_0 = α x_t − σ m
 * then clipped to [−r, r] when `clip` (NaN stays NaN, as in torch.clamp). */
#include <stdint.h>

#pragma STDC FP_CONTRACT OFF                 /* the C standard's way, which clang follows; GCC needs its own: */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#endif

enum { EPSILON = 0, SAMPLE = 1, V_PREDICTION = 2 };   /* the order of core.schedulers.base.PREDICTION_TYPES */
enum { PARALLEL_FROM = 1 << 15 };     /* elements; below this one thread beats waking a second (as torch's grain) */

static inline float predicted_x0(int prediction, float m, float x, float alpha, float sigma, int clip, float r) {
    float x0 = prediction == EPSILON ? (x - sigma * m) / alpha : prediction == SAMPLE ? m : alpha * x - sigma * m;
    if (clip) x0 = x0 < -r ? -r : x0 > r ? r : x0;
    return x0;
}

/* DDPM, Ho et al. 2020, Eq. 7: x_{t'} = (c_0 x̂_0 + c_t x_t) + std z (z NULL at t = 0: no noise). */
void ddpm_step(const float *restrict m, const float *restrict x, const float *restrict z, float *restrict x0_out,
               float *restrict prev, int64_t count, int prediction, float alpha, float sigma, int clip, float r,
               float x0_coeff, float xt_coeff, float std, int threads) {
#pragma omp parallel for num_threads(threads) if (count >= PARALLEL_FROM) schedule(static)
    for (int64_t i = 0; i < count; i++) {
        float x0 = predicted_x0(prediction, m[i], x[i], alpha, sigma, clip, r);
        float p = x0_coeff * x0 + xt_coeff * x[i];
        x0_out[i] = x0;
        prev[i] = z ? p + std * z[i] : p;
    }
}

/* DDIM, Song et al. 2021, Eq. 12: x_{t'} = √ᾱ_{t'} x̂_0 + √(1 − ᾱ_{t'} − σ_t²) ε̂ (+ σ_t z), with ε̂ from the
 * unclipped x̂_0 (ε: m; x_0: (x_t − α x̂_0)/σ; v: α m + σ x_t), or re-derived from the clipped one when
 * `clipped_eps` (use_clipped_model_output): ε̂ = (x_t − α x̂_0)/σ. */
void ddim_step(const float *restrict m, const float *restrict x, const float *restrict z, float *restrict x0_out,
               float *restrict prev, int64_t count, int prediction, float alpha, float sigma, int clip, float r,
               int clipped_eps, float alpha_prev, float direction, float std, int threads) {
#pragma omp parallel for num_threads(threads) if (count >= PARALLEL_FROM) schedule(static)
    for (int64_t i = 0; i < count; i++) {
        float raw = predicted_x0(prediction, m[i], x[i], alpha, sigma, 0, r);
        float eps = prediction == EPSILON ? m[i] : prediction == SAMPLE ? (x[i] - alpha * raw) / sigma
                                                                        : alpha * m[i] + sigma * x[i];
        float x0 = clip ? (raw < -r ? -r : raw > r ? r : raw) : raw;
        if (clipped_eps) eps = (x[i] - alpha * x0) / sigma;
        float p = alpha_prev * x0 + direction * eps;
        x0_out[i] = x0;
        prev[i] = z ? p + std * z[i] : p;
    }
}

/* DPM-Solver++ (Lu et al. 2022), ODE or SDE, orders 1 and 2M (core/schedulers/dpm_solver.py), from x̂_0 computed
 * beforehand (convert_model_output, which EDM's solver overrides):
 *   x_t = ratio x_s − first x̂_0                  (ODE: ratio = σ_t/σ_s, first = α_t (e^{−h} − 1); the SDE's own)
 *   2M:  D1 = (1/r) (x̂_0 − x̂_0,prev);  x_t −= correction D1 ("midpoint")  or  x_t += correction D1 ("heun")
 *   SDE: x_t += noise z
 * `x0_prev` NULL: first order; `heun` 0 midpoint, 1 heun; z NULL: no noise (the ODE). */
void dpm_solver_step(const float *restrict x, const float *restrict x0, const float *restrict x0_prev,
                     const float *restrict z, float *restrict prev, int64_t count, float ratio, float first,
                     float inverse_r, int heun, float correction, float noise, int threads) {
#pragma omp parallel for num_threads(threads) if (count >= PARALLEL_FROM) schedule(static)
    for (int64_t i = 0; i < count; i++) {
        float p = ratio * x[i] - first * x0[i];
        if (x0_prev) {
            float d1 = inverse_r * (x0[i] - x0_prev[i]);
            p = heun ? p + correction * d1 : p - correction * d1;
        }
        prev[i] = z ? p + noise * z[i] : p;
    }
}
