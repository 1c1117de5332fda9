// Per-element math of every bbam op, written once and shared by the CPU kernels
// (scalar code and at::vec::Vectorized lanes) and the CUDA kernels.
//
// Every formula is a template over the value type T: `float` / `double` on the
// host and the device, or `at::vec::Vectorized<float|double>` in the CPU
// kernels (define BBAM_CPU_VECTORIZED before including this header to get the
// Vectorized overloads of the primitives). Branches are written as `select`
// so that the same code runs lane-wise.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define BBAM_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define BBAM_HOST_DEVICE inline
#endif

#if defined(BBAM_CPU_VECTORIZED) && !defined(__CUDACC__)
#include <ATen/cpu/vec/vec.h>
#endif

namespace bbam {
namespace math {

// ---------------------------------------------------------------------------
// Constants shared with bbam/reference.py (keep the two in sync).
// ---------------------------------------------------------------------------

// Cosines are clamped to [-1 + eps, 1 - eps] before acos in the BBAM angle path:
// acos stays finite and its derivative -1/sin(theta) stays bounded at |cos| = 1.
template <typename T> struct CosEps;
template <> struct CosEps<float> { static constexpr float value = 1e-7f; };
template <> struct CosEps<double> { static constexpr double value = 1e-12; };

// F.normalize's eps: x / max(|x|, eps).
constexpr double kNormEps = 1e-12;

// ---------------------------------------------------------------------------
// Primitive adapters. Scalars: host and device.
// ---------------------------------------------------------------------------
BBAM_HOST_DEVICE float v_acos(float x) { return ::acosf(x); }
BBAM_HOST_DEVICE double v_acos(double x) { return ::acos(x); }
BBAM_HOST_DEVICE float v_cos(float x) { return ::cosf(x); }
BBAM_HOST_DEVICE double v_cos(double x) { return ::cos(x); }
BBAM_HOST_DEVICE float v_sin(float x) { return ::sinf(x); }
BBAM_HOST_DEVICE double v_sin(double x) { return ::sin(x); }
BBAM_HOST_DEVICE float v_sqrt(float x) { return ::sqrtf(x); }
BBAM_HOST_DEVICE double v_sqrt(double x) { return ::sqrt(x); }
BBAM_HOST_DEVICE float v_exp(float x) { return ::expf(x); }
BBAM_HOST_DEVICE double v_exp(double x) { return ::exp(x); }
BBAM_HOST_DEVICE float v_log1p(float x) { return ::log1pf(x); }
BBAM_HOST_DEVICE double v_log1p(double x) { return ::log1p(x); }
BBAM_HOST_DEVICE float v_abs(float x) { return ::fabsf(x); }
BBAM_HOST_DEVICE double v_abs(double x) { return ::fabs(x); }
// NaN-propagating min/max (a NaN input must never be clamped into a number).
template <typename T> BBAM_HOST_DEVICE T v_max(T a, T b) { return (a != a || a > b) ? a : b; }
template <typename T> BBAM_HOST_DEVICE T v_min(T a, T b) { return (a != a || a < b) ? a : b; }
template <typename T> BBAM_HOST_DEVICE T v_select(bool cond, T if_true, T if_false) {
  return cond ? if_true : if_false;
}

#if defined(BBAM_CPU_VECTORIZED) && !defined(__CUDACC__)
// Vectorized lanes (CPU). Comparisons yield all-ones/all-zeros lane masks.
template <typename T> using Vec = at::vec::Vectorized<T>;
template <typename T> inline Vec<T> v_acos(const Vec<T>& x) { return x.acos(); }
template <typename T> inline Vec<T> v_cos(const Vec<T>& x) { return x.cos(); }
template <typename T> inline Vec<T> v_sin(const Vec<T>& x) { return x.sin(); }
template <typename T> inline Vec<T> v_sqrt(const Vec<T>& x) { return x.sqrt(); }
template <typename T> inline Vec<T> v_exp(const Vec<T>& x) { return x.exp(); }
template <typename T> inline Vec<T> v_log1p(const Vec<T>& x) { return x.log1p(); }
template <typename T> inline Vec<T> v_abs(const Vec<T>& x) { return x.abs(); }
template <typename T> inline Vec<T> v_max(const Vec<T>& a, const Vec<T>& b) { return at::vec::maximum(a, b); }
template <typename T> inline Vec<T> v_min(const Vec<T>& a, const Vec<T>& b) { return at::vec::minimum(a, b); }
template <typename T>
inline Vec<T> v_select(const Vec<T>& mask, const Vec<T>& if_true, const Vec<T>& if_false) {
  return Vec<T>::blendv(if_false, if_true, mask);
}
#if defined(CPU_CAPABILITY_AVX2)
// fp32 lanes on AVX2: Sleef's 3.5-ulp acos / cos / sincos (at::vec uses the 1-ulp ones,
// about twice as slow); a few ulp are far below what a loss and its gradient need.
inline Vec<float> v_acos(const Vec<float>& x) { return Vec<float>(Sleef_acosf8_u35(x)); }
inline Vec<float> v_cos(const Vec<float>& x) { return Vec<float>(Sleef_cosf8_u35(x)); }
inline void v_sincos(const Vec<float>& x, Vec<float>* sin_x, Vec<float>* cos_x) {
  const Sleef___m256_2 r = Sleef_sincosf8_u35(x);
  *sin_x = Vec<float>(r.x);
  *cos_x = Vec<float>(r.y);
}
#endif
#if defined(CPU_CAPABILITY_AVX512)
// fp32 lanes on AVX-512: the 16-lane 3.5-ulp Sleef functions (see the AVX2 note above).
inline Vec<float> v_acos(const Vec<float>& x) { return Vec<float>(Sleef_acosf16_u35(x)); }
inline Vec<float> v_cos(const Vec<float>& x) { return Vec<float>(Sleef_cosf16_u35(x)); }
inline void v_sincos(const Vec<float>& x, Vec<float>* sin_x, Vec<float>* cos_x) {
  const Sleef___m512_2 r = Sleef_sincosf16_u35(x);
  *sin_x = Vec<float>(r.x);
  *cos_x = Vec<float>(r.y);
}
#endif
#endif

// sin and cos of the same argument (one call where the platform has a fused one).
template <typename T>
BBAM_HOST_DEVICE void v_sincos(T x, T* sin_x, T* cos_x) {
  *sin_x = v_sin(x);
  *cos_x = v_cos(x);
}

// ---------------------------------------------------------------------------
// Formulas. `T` is a scalar or a Vectorized lane pack; `S` its scalar type.
// ---------------------------------------------------------------------------

// Coefficient of one element by its target: 1 -> positive row, 0 -> negative
// row, anything else (-1 unknown, or no targets) -> the average of both rows
// (the inference transform  theta' = 1/2 (a0 theta + b0) + 1/2 (a1 theta + b1)).
template <typename T>
BBAM_HOST_DEVICE T coef_by_target(T y, T coef_neg, T coef_pos, T coef_avg) {
  const T one(1.0f), zero(0.0f);
  return v_select(y == one, coef_pos, v_select(y == zero, coef_neg, coef_avg));
}

// BBAM angle transformation and its derivative w.r.t. the cosine:
//   theta  = acos(cc),  cc = clamp(c, -1 + eps, 1 - eps)
//   theta' = a * theta + b
//   phi    = cos(theta')
//   dphi/dc = -sin(theta') * a * dtheta/dc = a * sin(theta') / sin(theta),
//   with sin(theta) = sqrt((1 - cc)(1 + cc))  (> 0 thanks to the clamp, so the
//   gradient is finite at |c| = 1; the clamp is straight-through for it).
// (a, b) = (1, 0) is the exact identity: phi = c, dphi/dc = 1 (no acos/cos
// round trip, so the BAM loss is exactly BAM).
template <typename T, typename S>
BBAM_HOST_DEVICE void transform_cos(T c, T a, T b, T* phi, T* dphi_dc) {
  const T one(S(1)), zero(S(0)), eps(CosEps<S>::value);
  const T cc = v_min(v_max(c, eps - one), one - eps);
  const T theta = v_acos(cc);
  const T theta_t = a * theta + b;
  const auto identity = (a == one) & (b == zero);
  if (dphi_dc == nullptr) {
    *phi = v_select(identity, c, v_cos(theta_t));
    return;
  }
  T sin_t, cos_t;
  v_sincos(theta_t, &sin_t, &cos_t);
  const T sin_theta = v_sqrt((one - cc) * (one + cc));
  *phi = v_select(identity, c, cos_t);
  *dphi_dc = v_select(identity, one, a * sin_t / sin_theta);
}

// Logit of the (B)BAM loss: s * (phi - y * m), the margin applied to positives.
template <typename T>
BBAM_HOST_DEVICE T bam_logit(T phi, T y, T margin, T scale) {
  return scale * (phi - y * margin);
}

// Binary cross-entropy with logits in the stable softplus form:
//   softplus(x) - x * y = max(x, 0) - x * y + log1p(exp(-|x|)).
template <typename T>
BBAM_HOST_DEVICE T bce_with_logits(T x, T y) {
  const T zero(0.0f);
  return v_max(x, zero) - x * y + v_log1p(v_exp(zero - v_abs(x)));
}

// d bce / d x = sigmoid(x) - y. exp(-x) overflowing to inf gives sigmoid 0, as it should.
template <typename T>
BBAM_HOST_DEVICE T bce_with_logits_grad(T x, T y) {
  const T one(1.0f), zero(0.0f);
  return one / (one + v_exp(zero - x)) - y;
}

// One element of the BBAM loss, weighted; 0 where the target is unknown.
// `known` is a bool (scalar) or a lane mask (vector).
template <typename T, typename S, typename Mask>
BBAM_HOST_DEVICE T bbam_loss_element(T c, T y, Mask known, T a, T b, T w, T margin, T scale) {
  T phi;
  transform_cos<T, S>(c, a, b, &phi, nullptr);
  const T x = bam_logit(phi, y, margin, scale);
  return v_select(known, w * bce_with_logits(x, y), T(S(0)));
}

// d loss / d c of one element, times the upstream gradient `g_out`:
//   dL/dc = g_out * w * (sigmoid(x) - y)   [d bce / d x]
//                     * s                  [d x / d phi]
//                     * a sin(theta') / sin(theta)  [d phi / d c]
template <typename T, typename S, typename Mask>
BBAM_HOST_DEVICE T bbam_loss_element_grad(T g_out, T c, T y, Mask known, T a, T b, T w, T margin,
                                          T scale) {
  T phi, dphi_dc;
  transform_cos<T, S>(c, a, b, &phi, &dphi_dc);
  const T x = bam_logit(phi, y, margin, scale);
  return v_select(known, g_out * w * bce_with_logits_grad(x, y) * scale * dphi_dc, T(S(0)));
}

// Loss and d loss / d c of one element in one pass (the training path: the forward
// kernel stores the gradient so the backward is a single multiply). Shares exp(-|x|)
// between the loss and the sigmoid:
//   loss = w * (max(x, 0) - x y + log1p(e)),          e = exp(-|x|)
//   dL/dc = w * (sigmoid(x) - y) * s * dphi/dc,      sigmoid(x) = (x >= 0 ? 1 : e) / (1 + e)
template <typename T, typename S, typename Mask>
BBAM_HOST_DEVICE void bbam_loss_element_and_grad(T c, T y, Mask known, T a, T b, T w, T margin, T scale,
                                                 T* loss, T* grad) {
  const T zero(S(0)), one(S(1));
  T phi, dphi_dc;
  transform_cos<T, S>(c, a, b, &phi, &dphi_dc);
  const T x = bam_logit(phi, y, margin, scale);
  const T e = v_exp(zero - v_abs(x));
  const T sigmoid = v_select(x >= zero, one, e) / (one + e);
  *loss = v_select(known, w * (v_max(x, zero) - x * y + v_log1p(e)), zero);
  *grad = v_select(known, w * (sigmoid - y) * scale * dphi_dc, zero);
}

// Angle of a cosine for the statistics: acos(clamp(c, -1, 1)) (no eps: no gradient here).
template <typename T, typename S>
BBAM_HOST_DEVICE T stats_angle(T c) {
  const T one(S(1));
  return v_acos(v_min(v_max(c, T(S(-1))), one));
}

// Chan et al.'s parallel update: merge (n_b, mean_b, m2_b) into (n_a, mean_a, m2_a).
// Exact in exact arithmetic, so chunks, tiles, blocks and ranks combine to one pass.
BBAM_HOST_DEVICE void chan_merge(double& n_a, double& mean_a, double& m2_a, double n_b,
                                 double mean_b, double m2_b) {
  if (n_b <= 0.0) return;
  const double n = n_a + n_b;
  const double delta = mean_b - mean_a;
  mean_a += delta * (n_b / n);
  m2_a += m2_b + delta * delta * (n_a * n_b / n);
  n_a = n;
}

// A target value is valid iff it is -1, 0 or 1.
BBAM_HOST_DEVICE bool target_is_valid(int8_t t) { return t >= -1 && t <= 1; }

// ---------------------------------------------------------------------------
// Negative sampling band scan (negative_band_scan): where the cosine `score` of a
// negative with its label's prototype falls relative to the label's band
// [lower, upper]. Above the band the negative is certainly among the label's m_k
// most similar (selected now); inside it is a candidate, ranked exactly later;
// below it is certainly not selected. NaN scores compare false: never selected.
// ---------------------------------------------------------------------------
enum BandClass : int8_t { kBelowBand = 0, kInBand = 1, kAboveBand = 2 };

template <typename T>
BBAM_HOST_DEVICE int8_t band_class(T score, T lower, T upper) {
  return score > upper ? kAboveBand : (score >= lower ? kInBand : kBelowBand);
}

}  // namespace math
}  // namespace bbam
