// negative_select on CUDA (contract and algorithm in negative_select.h), the same steps
// as the CPU version: counts (label_counts_cuda.cu) and the ranked labels on the host;
// bands from a sorted [sample, K] score block; then row tiles: cuBLAS multiplies the
// tile by the normalised prototypes, select_tile_kernel turns the products into
// cosines, writes the mask and a band code per (row, label) (math::band_class), and the
// in-band candidates are compacted with nonzero. Candidates are ranked by two stable
// sorts (cosine desc, then label), so ties go to the lower row as on the CPU. Labels
// whose threshold fell outside the band are rescanned with that side opened.
// Extra memory: O(K*D + tile*K + sample*K + candidates); no N x K score matrix.
#include "negative_select.h"

#include "../bbam_math.h"
#include "../cuda/cuda_utils.cuh"
#include "../label_counts/label_counts.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace bbam {
namespace {

constexpr const char* kOp = "negative_select";

// One thread per (row, label) of the tile (grid-stride). code: math::BandClass of a
// ranked negative, kBelowBand for every other entry.
template <typename op_t, bool kInitMask>
__global__ void select_tile_kernel(op_t* __restrict__ dots, const op_t* __restrict__ inv_norm,
                                   const int8_t* __restrict__ targets, const bool* __restrict__ keep_all,
                                   const bool* __restrict__ ranked, const op_t* __restrict__ lower,
                                   const op_t* __restrict__ upper, bool* __restrict__ mask,
                                   int8_t* __restrict__ code, int64_t n, int64_t K) {
  const int64_t total = n * K;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = idx / K, k = idx - i * K;
    const int8_t t = targets[idx];
    const op_t s = dots[idx] * inv_norm[i];
    dots[idx] = s;
    const bool neg = t == 0;
    const bool searched = neg && ranked[k];
    const int8_t c = searched ? math::band_class(s, lower[k], upper[k]) : int8_t(math::kBelowBand);
    if (kInitMask) {
      mask[idx] = t == 1 || (neg && keep_all[k]) || c == math::kAboveBand;
    } else if (searched) {
      mask[idx] = c == math::kAboveBand;
    }
    code[idx] = c;
  }
}

struct Scan {
  at::Tensor ranked;        // [K] bool, device
  at::Tensor lower, upper;  // [K] opmath, device
  std::vector<int64_t> labels;
};

class Selector {
 public:
  Selector(const at::Tensor& features, const at::Tensor& protos, const at::Tensor& targets,
           const at::Tensor& keep_all, const at::Tensor& num_kept, at::ScalarType opmath, at::Tensor& mask)
      : features_(features), protos_(protos), targets_(targets), keep_all_(keep_all), num_kept_(num_kept),
        opmath_(opmath), mask_(mask), N_(features.size(0)), K_(targets.size(1)) {}

  // Step 1: bands from sample_size rows (host-generated, as on the CPU).
  void place_bands(Scan& s, int64_t sample_size, double band_z, const int64_t* n_neg, const int64_t* kept) {
    if (sample_size == 0 || s.labels.empty()) return;
    std::vector<int64_t> rows(sample_size);
    for (int64_t r = 0; r < sample_size; ++r) rows[r] = band_sample_row(static_cast<uint64_t>(r), N_);
    std::sort(rows.begin(), rows.end());
    const at::Tensor idx = at::tensor(rows, at::TensorOptions().dtype(at::kLong)).to(features_.device());
    const at::Tensor feat = features_.index_select(0, idx).to(opmath_);
    const at::Tensor inv = at::linalg_vector_norm(feat, 2, {1}).clamp_min_(math::kNormEps).reciprocal_();
    const at::Tensor valid = targets_.index_select(0, idx).eq(0).logical_and_(s.ranked.unsqueeze(0));
    const at::Tensor scores = at::mm(feat, protos_.t()).mul_(inv.unsqueeze(1))
                                  .masked_fill_(valid.logical_not(), -std::numeric_limits<double>::infinity());
    const at::Tensor sorted = std::get<0>(scores.sort(/*stable=*/false, /*dim=*/0, /*descending=*/true));
    const at::Tensor n_valid = valid.sum(0).cpu();
    const int64_t* n_a = n_valid.data_ptr<int64_t>();
    std::vector<int64_t> j_hi(K_, 0), j_lo(K_, 0);
    std::vector<uint8_t> has_hi(K_, 0), has_lo(K_, 0);
    for (int64_t k : s.labels) {
      const int64_t n = n_a[k];
      if (n == 0) continue;
      const BandRanks r = band_ranks(kept[k], n_neg[k], n, band_z);
      if (r.hi >= 0 && r.hi < n) { j_hi[k] = r.hi; has_hi[k] = 1; }
      if (r.lo >= 0 && r.lo < n) { j_lo[k] = r.lo; has_lo[k] = 1; }
    }
    const auto dev = features_.device();
    auto pick = [&](const std::vector<int64_t>& j, const std::vector<uint8_t>& has, const at::Tensor& fallback) {
      const at::Tensor jj = at::tensor(j, at::TensorOptions().dtype(at::kLong)).to(dev).unsqueeze(0);
      const at::Tensor hh = at::tensor(std::vector<int64_t>(has.begin(), has.end()),
                                       at::TensorOptions().dtype(at::kLong)).to(dev).ne(0);
      return at::where(hh, sorted.gather(0, jj).squeeze(0), fallback);
    };
    s.upper = pick(j_hi, has_hi, s.upper);
    s.lower = pick(j_lo, has_lo, s.lower);
  }

  // Steps 2-3. Returns the failed labels with the side (+1 above the band, -1 below).
  std::vector<std::pair<int64_t, int>> scan(const Scan& s, bool init_mask) {
    const int64_t K = K_;
    const bool any_ranked = !s.labels.empty();
    const auto dev = features_.device();
    const int64_t rows = std::clamp<int64_t>((int64_t(1) << 26) / std::max<int64_t>(K, 1), 1024,
                                             std::max<int64_t>(N_, 1));  // tile <= 256 MiB (fp32)
    at::Tensor above = at::zeros({K}, targets_.options().dtype(at::kLong));
    at::Tensor bad_feature = at::zeros({}, targets_.options().dtype(at::kBool));
    std::vector<at::Tensor> cand_label, cand_row, cand_score;
    const auto stream = c10::cuda::getCurrentCUDAStream();
    for (int64_t r0 = 0; r0 < N_; r0 += rows) {
      const int64_t n = std::min(rows, N_ - r0);
      at::Tensor dots, inv;
      if (any_ranked) {
        const at::Tensor feat = features_.narrow(0, r0, n).to(opmath_);
        dots = at::mm(feat, protos_.t()).contiguous();  // cuBLAS, [n, K]
        const at::Tensor norm = at::linalg_vector_norm(feat, 2, {1});
        bad_feature.logical_or_(norm.isfinite().logical_not().any());
        inv = norm.clamp_min(math::kNormEps).reciprocal_();
      } else {
        dots = at::zeros({n, K}, features_.options().dtype(opmath_));
        inv = at::ones({n}, features_.options().dtype(opmath_));
      }
      at::Tensor code = at::empty({n, K}, targets_.options());
      const int64_t grid = cuda::grid_for(n * K, dev.index());
      AT_DISPATCH_FLOATING_TYPES(dots.scalar_type(), "negative_select_cuda", [&] {
        auto launch = [&](auto init) {
          select_tile_kernel<scalar_t, decltype(init)::value><<<grid, cuda::kThreads, 0, stream>>>(
              dots.data_ptr<scalar_t>(), inv.data_ptr<scalar_t>(), targets_.data_ptr<int8_t>() + r0 * K,
              keep_all_.data_ptr<bool>(), s.ranked.data_ptr<bool>(), s.lower.data_ptr<scalar_t>(),
              s.upper.data_ptr<scalar_t>(), mask_.data_ptr<bool>() + r0 * K, code.data_ptr<int8_t>(), n, K);
        };
        if (init_mask) launch(std::true_type{}); else launch(std::false_type{});
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
      if (!any_ranked) continue;
      above.add_(code.eq(math::kAboveBand).sum(0));
      const at::Tensor nz = code.eq(math::kInBand).nonzero();  // [c, 2] (row, label), row-major order
      if (nz.size(0) == 0) continue;
      const at::Tensor r = nz.select(1, 0), k = nz.select(1, 1);
      cand_label.push_back(k);
      cand_row.push_back(r + r0);
      cand_score.push_back(dots.view(-1).index_select(0, r * K + k));
    }
    TORCH_CHECK(!bad_feature.item<bool>(), kOp,
                ": argument 'features' must be finite (found NaN or Inf, or a row whose norm overflows)");
    if (!any_ranked) return {};

    // Step 3: per label, the top (num_kept - above) candidates by (cosine desc, row asc).
    const auto long_opts = targets_.options().dtype(at::kLong);
    const at::Tensor labels = cand_label.empty() ? at::empty({0}, long_opts) : at::cat(cand_label);
    const at::Tensor cand_rows = cand_row.empty() ? at::empty({0}, long_opts) : at::cat(cand_row);
    const at::Tensor scores = cand_score.empty() ? at::empty({0}, features_.options().dtype(opmath_))
                                                 : at::cat(cand_score);
    const at::Tensor n_cand = at::bincount(labels, {}, K);
    const at::Tensor need = num_kept_ - above;
    const at::Tensor need_cpu = need.cpu(), n_cand_cpu = n_cand.cpu();
    const int64_t* need_h = need_cpu.data_ptr<int64_t>();
    const int64_t* n_cand_h = n_cand_cpu.data_ptr<int64_t>();
    std::vector<std::pair<int64_t, int>> failed;
    std::vector<int64_t> ok(K, 0);
    for (int64_t k : s.labels) {
      if (need_h[k] < 0) failed.emplace_back(k, +1);
      else if (need_h[k] > n_cand_h[k]) failed.emplace_back(k, -1);
      else ok[k] = 1;
    }
    if (scores.numel() > 0) {
      // candidates are in increasing row order: both sorts are stable
      const at::Tensor by_score = std::get<1>(scores.sort(/*stable=*/true, 0, /*descending=*/true));
      const at::Tensor by_label =
          by_score.index_select(0, std::get<1>(labels.index_select(0, by_score).sort(/*stable=*/true, 0, false)));
      const at::Tensor lab = labels.index_select(0, by_label);
      const at::Tensor start = n_cand.cumsum(0).sub_(n_cand);  // first position of each label
      const at::Tensor rank = at::arange(lab.numel(), long_opts).sub_(start.index_select(0, lab));
      const at::Tensor ok_dev = at::tensor(ok, at::TensorOptions().dtype(at::kLong)).to(features_.device()).ne(0);
      const at::Tensor take = rank.lt(need.index_select(0, lab)).logical_and_(ok_dev.index_select(0, lab));
      mask_.index_put_({cand_rows.index_select(0, by_label).masked_select(take), lab.masked_select(take)},
                       at::scalar_tensor(true, mask_.options()));
    }
    return failed;
  }

 private:
  const at::Tensor& features_;
  const at::Tensor& protos_;
  const at::Tensor& targets_;
  const at::Tensor& keep_all_;
  const at::Tensor& num_kept_;
  const at::ScalarType opmath_;
  at::Tensor& mask_;
  const int64_t N_, K_;
};

at::Tensor negative_select_cuda(const at::Tensor& features, const at::Tensor& prototypes, const at::Tensor& targets,
                                const at::Tensor& num_kept, int64_t sample_size, double band_z) {
  check_negative_select_inputs(kOp, features, prototypes, targets, num_kept, sample_size, band_z);
  const c10::cuda::CUDAGuard guard(features.device());
  const at::Tensor targets_c = targets.contiguous();
  const at::Tensor counts = count_labels_cuda(kOp, targets_c).cpu();  // also validates the values
  const at::Tensor kept = num_kept.contiguous();
  const at::Tensor kept_cpu = kept.cpu();
  check_num_kept(kOp, kept_cpu, counts);
  const int64_t N = features.size(0), K = targets.size(1);
  const auto opmath = opmath_type(features.scalar_type());
  const int64_t* m = kept_cpu.data_ptr<int64_t>();
  const int64_t* n_neg = counts.data_ptr<int64_t>();
  std::vector<int64_t> keep(K), ranked(K), labels;
  for (int64_t k = 0; k < K; ++k) {
    keep[k] = m[k] == n_neg[k];
    ranked[k] = !keep[k] && m[k] > 0;
    if (ranked[k]) labels.push_back(k);
  }
  const auto dev = features.device();
  const auto to_bool = [&](const std::vector<int64_t>& v) {
    return at::tensor(v, at::TensorOptions().dtype(at::kLong)).to(dev).ne(0);
  };
  const at::Tensor keep_all = to_bool(keep);
  at::Tensor protos = at::zeros({K, features.size(1)}, features.options().dtype(opmath));
  if (!labels.empty()) {
    const at::Tensor idx = at::tensor(labels, at::TensorOptions().dtype(at::kLong)).to(dev);
    at::Tensor p = prototypes.index_select(0, idx).to(opmath);
    TORCH_CHECK(p.isfinite().all().item<bool>(), kOp,
                ": argument 'prototypes' must be finite for every label with 0 < num_kept < negatives");
    p = p / at::linalg_vector_norm(p, 2, {1}, /*keepdim=*/true).clamp_min(math::kNormEps);
    protos.index_copy_(0, idx, p);
  }
  at::Tensor mask = at::empty({N, K}, features.options().dtype(at::kBool));
  const double inf = std::numeric_limits<double>::infinity();
  Scan search;
  search.labels = labels;
  search.ranked = to_bool(ranked);
  search.lower = at::full({K}, -inf, features.options().dtype(opmath));
  search.upper = at::full({K}, inf, features.options().dtype(opmath));
  Selector selector(features, protos, targets_c, keep_all, kept, opmath, mask);
  selector.place_bands(search, sample_size, band_z, n_neg, m);
  const auto failed = selector.scan(search, /*init_mask=*/true);
  if (!failed.empty()) {
    // Step 4: open the failing side of each band; the rescan then cannot fail.
    Scan retry;
    std::vector<int64_t> flag(K, 0), open_lo(K, 0), open_hi(K, 0);
    for (auto [k, side] : failed) {
      retry.labels.push_back(k);
      flag[k] = 1;
      (side < 0 ? open_lo : open_hi)[k] = 1;
    }
    retry.ranked = to_bool(flag);
    retry.lower = search.lower.masked_fill(to_bool(open_lo), -inf);
    retry.upper = search.upper.masked_fill(to_bool(open_hi), inf);
    const auto again = selector.scan(retry, /*init_mask=*/false);
    TORCH_CHECK(again.empty(), kOp, ": internal error: a rescan with an opened band failed");
  }
  return mask;
}

}  // namespace

TORCH_LIBRARY_IMPL(bbam, CUDA, m) { m.impl("negative_select", &negative_select_cuda); }

}  // namespace bbam
