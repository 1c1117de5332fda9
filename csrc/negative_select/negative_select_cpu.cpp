// negative_select on CPU (contract and algorithm in negative_select.h).
// Scans are tiled over rows (cpu::rows_times_protos of a tile with all K normalised
// prototypes, zero for labels not ranked, into a [tile, K] block, then the vectorised
// kernel negative_select_cpu_kernel.h classifies the tile and the rare in-band entries
// are appended to per-label candidate lists); tiles are
// grouped into at most 64 groups (independent of the thread count), each group runs on
// one thread with its own candidate lists, and lists are read back in group order.
// Extra memory: O(K*D + threads * tile * K + candidates + sample * (K + D)). The GEMM
// covers all K columns so that the kernel reads targets and writes the mask row by row
// without gathers; when few labels are ranked that is K/A times the necessary products.
#include "negative_select.h"

#include "../bbam_math.h"
#include "../cpu/gemm.h"
#include "../cpu/host_utils.h"
#include "../label_counts/label_counts.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

namespace bbam {
namespace {

constexpr const char* kOp = "negative_select";
constexpr int64_t kMaxGroups = 64;

int64_t tile_rows(int64_t num_labels) {
  return std::clamp<int64_t>(65536 / std::max<int64_t>(num_labels, 1), 64, 1024);
}

template <typename op_t>
struct Candidate {
  op_t score;
  int64_t row;
};

// The selection order: larger cosine first, then the lower row.
template <typename op_t>
bool ranks_before(const Candidate<op_t>& x, const Candidate<op_t>& y) {
  return x.score > y.score || (x.score == y.score && x.row < y.row);
}

// The labels ranked by one scan and their bands (all [K]: columns not ranked are ignored).
template <typename op_t>
struct Search {
  std::vector<int64_t> labels;       // the ranked columns, increasing
  at::Tensor ranked;                 // [K] bool
  std::vector<op_t> lower, upper;    // [K]
};

template <typename op_t>
class Selector {
 public:
  // protos_hat: [K, D] normalised prototypes (contiguous), zero for the labels never ranked.
  Selector(const at::Tensor& features, const at::Tensor& protos_hat, const at::Tensor& targets,
           const at::Tensor& keep_all, const int64_t* num_kept, at::ScalarType opmath, at::Tensor& mask)
      : features_(features), protos_hat_(protos_hat), N_(features.size(0)), K_(targets.size(1)),
        opmath_(opmath), targets_(targets.data_ptr<int8_t>()), keep_all_(keep_all.data_ptr<bool>()),
        num_kept_(num_kept), mask_(mask.data_ptr<bool>()) {}

  // Band of each ranked label from a sample of rows (negative_select.h, step 1).
  void place_bands(Search<op_t>& s, int64_t sample_size, double band_z, const int64_t* n_neg) {
    s.lower.assign(K_, -std::numeric_limits<op_t>::infinity());
    s.upper.assign(K_, std::numeric_limits<op_t>::infinity());
    if (sample_size == 0 || s.labels.empty()) return;
    std::vector<int64_t> rows(sample_size);
    for (int64_t r = 0; r < sample_size; ++r) rows[r] = band_sample_row(static_cast<uint64_t>(r), N_);
    std::sort(rows.begin(), rows.end());
    const at::Tensor idx = at::from_blob(rows.data(), {sample_size}, at::TensorOptions().dtype(at::kLong));
    const at::Tensor feat = features_.index_select(0, idx).to(opmath_);
    const at::Tensor dots = cpu::rows_times_protos(feat, protos_hat_).contiguous();  // [S, K]
    const at::Tensor inv_norm = at::linalg_vector_norm(feat, 2, {1}).clamp_min_(math::kNormEps).reciprocal_();
    const op_t* d = dots.data_ptr<op_t>();
    const op_t* inv = inv_norm.data_ptr<op_t>();
    const bool* ranked = s.ranked.template data_ptr<bool>();
    std::vector<std::vector<op_t>> v(K_);
    for (int64_t j = 0; j < sample_size; ++j) {  // row-major: cache friendly
      const int8_t* t = targets_ + rows[j] * K_;
      for (int64_t k = 0; k < K_; ++k) {
        if (ranked[k] && t[k] == 0) v[k].push_back(d[j * K_ + k] * inv[j]);
      }
    }
    const int64_t A = static_cast<int64_t>(s.labels.size());
    at::parallel_for(0, A, 1, [&](int64_t a0, int64_t a1) {
      for (int64_t a = a0; a < a1; ++a) {
        const int64_t k = s.labels[a];
        auto& vk = v[k];
        const int64_t n = static_cast<int64_t>(vk.size());
        if (n == 0) continue;
        const BandRanks r = band_ranks(num_kept_[k], n_neg[k], n, band_z);
        auto desc = [](op_t x, op_t y) { return x > y; };
        if (r.hi >= 0 && r.hi < n) {
          std::nth_element(vk.begin(), vk.begin() + r.hi, vk.end(), desc);
          s.upper[k] = vk[r.hi];
        }
        if (r.lo >= 0 && r.lo < n) {
          std::nth_element(vk.begin(), vk.begin() + r.lo, vk.end(), desc);
          s.lower[k] = vk[r.lo];
        }
      }
    });
  }

  // One pass over all rows (step 2) and the per-label completion (step 3). When
  // init_mask, every mask row is written (positives, keep_all negatives, selections);
  // otherwise only the ranked columns' negatives are rewritten. Returns the labels whose
  // m-th score fell outside the band, with the side: +1 above the band (too many
  // above), -1 below it (too few inside).
  std::vector<std::pair<int64_t, int>> scan(const Search<op_t>& s, bool init_mask) {
    const int64_t K = K_;
    const bool any_ranked = !s.labels.empty();
    const int64_t rows = tile_rows(K);
    const int64_t num_tiles = cpu::ceil_div(N_, rows);
    const int64_t tiles_per_group = std::max<int64_t>(1, cpu::ceil_div(num_tiles, kMaxGroups));
    const int64_t num_groups = cpu::ceil_div(num_tiles, tiles_per_group);
    // [group][label] candidates and above-band counts
    std::vector<std::vector<std::vector<Candidate<op_t>>>> cands(num_groups);
    std::vector<std::vector<int64_t>> above(num_groups);
    std::atomic<bool> bad_feature{false};
    const auto& kernels = cpu::kernels();

    at::parallel_for(0, num_groups, 1, [&](int64_t g0, int64_t g1) {
      const auto opts = at::TensorOptions().dtype(opmath_);
      at::Tensor zeros = at::zeros({rows, K}, opts);
      at::Tensor ones = at::ones({rows}, opts);
      std::vector<uint8_t> scratch(K);
      std::vector<int32_t> tile_above(K);
      std::vector<int64_t> band_index(any_ranked ? rows * K : 0);
      for (int64_t g = g0; g < g1; ++g) {
        cands[g].resize(K);
        above[g].assign(K, 0);
        for (int64_t t = g * tiles_per_group; t < std::min(num_tiles, (g + 1) * tiles_per_group); ++t) {
          const int64_t r0 = t * rows, n = std::min(rows, N_ - r0);
          at::Tensor out = zeros.narrow(0, 0, n);  // no label ranked: no products needed
          at::Tensor inv_norm = ones;
          if (any_ranked) {
            const at::Tensor feat = features_.narrow(0, r0, n).to(opmath_);
            out = cpu::rows_times_protos(feat, protos_hat_);  // [n, K]
            inv_norm = at::linalg_vector_norm(feat, 2, {1});
            const op_t* norm = inv_norm.data_ptr<op_t>();
            for (int64_t i = 0; i < n; ++i) {
              if (!std::isfinite(norm[i])) bad_feature = true;
            }
            inv_norm.clamp_min_(math::kNormEps).reciprocal_();
          }
          cpu::SelectTileArgs args;
          args.rows = n;
          args.num_labels = K;
          args.dots = out.data_ptr();
          args.inv_norm = inv_norm.data_ptr();
          args.targets = targets_ + r0 * K;
          args.keep_all = keep_all_;
          args.ranked = s.ranked.template data_ptr<bool>();
          args.lower = s.lower.data();
          args.upper = s.upper.data();
          args.init_mask = init_mask;
          args.mask = mask_ + r0 * K;
          std::fill(tile_above.begin(), tile_above.end(), 0);
          args.above = tile_above.data();
          args.scratch = scratch.data();
          args.band_index = band_index.data();
          const int64_t count = kernels.negative_select_tile(std::is_same_v<op_t, double>, args);
          for (int64_t k = 0; k < K; ++k) above[g][k] += tile_above[k];
          const op_t* score = static_cast<const op_t*>(args.dots);
          for (int64_t j = 0; j < count; ++j) {
            const int64_t flat = band_index[j];
            cands[g][flat % K].push_back({score[flat], r0 + flat / K});
          }
        }
      }
    });
    TORCH_CHECK(!bad_feature, kOp,
                ": argument 'features' must be finite (found NaN or Inf, or a row whose norm overflows)");

    // Step 3, per label: its candidates in row order, then the top (num_kept - above).
    const int64_t A = static_cast<int64_t>(s.labels.size());
    std::vector<int> status(A, 0);
    at::parallel_for(0, A, 1, [&](int64_t a0, int64_t a1) {
      std::vector<Candidate<op_t>> c;
      for (int64_t a = a0; a < a1; ++a) {
        const int64_t k = s.labels[a];
        int64_t n_above = 0;
        c.clear();
        for (int64_t g = 0; g < num_groups; ++g) {
          n_above += above[g][k];
          c.insert(c.end(), cands[g][k].begin(), cands[g][k].end());
        }
        const int64_t need = num_kept_[k] - n_above;
        if (need < 0) { status[a] = +1; continue; }
        if (need > static_cast<int64_t>(c.size())) { status[a] = -1; continue; }
        if (need == 0) continue;
        if (need < static_cast<int64_t>(c.size())) {
          std::nth_element(c.begin(), c.begin() + (need - 1), c.end(), ranks_before<op_t>);
        }
        for (int64_t j = 0; j < need; ++j) mask_[c[j].row * K + k] = true;
      }
    });
    std::vector<std::pair<int64_t, int>> failed;
    for (int64_t a = 0; a < A; ++a) {
      if (status[a] != 0) failed.emplace_back(s.labels[a], status[a]);
    }
    return failed;
  }

 private:
  const at::Tensor& features_;
  const at::Tensor& protos_hat_;
  const int64_t N_, K_;
  const at::ScalarType opmath_;
  const int8_t* targets_;
  const bool* keep_all_;
  const int64_t* num_kept_;
  bool* mask_;
};

template <typename op_t>
at::Tensor select(const at::Tensor& features, const at::Tensor& prototypes, const at::Tensor& targets,
                  const at::Tensor& num_kept, const at::Tensor& counts, int64_t sample_size, double band_z,
                  at::ScalarType opmath) {
  const int64_t N = features.size(0), K = targets.size(1);
  const int64_t* m = num_kept.data_ptr<int64_t>();
  const int64_t* n_neg = counts.data_ptr<int64_t>();
  const auto bool_opts = at::TensorOptions().dtype(at::kBool);
  at::Tensor keep_all = at::empty({K}, bool_opts);
  Search<op_t> search;
  search.ranked = at::zeros({K}, bool_opts);
  bool* keep = keep_all.data_ptr<bool>();
  bool* ranked = search.ranked.template data_ptr<bool>();
  for (int64_t k = 0; k < K; ++k) {
    keep[k] = m[k] == n_neg[k];  // also labels without negatives
    ranked[k] = !keep[k] && m[k] > 0;
    if (ranked[k]) search.labels.push_back(k);
  }
  // Normalised prototypes of the ranked labels, zero rows for the others (never read).
  at::Tensor protos = at::zeros({K, features.size(1)}, at::TensorOptions().dtype(opmath));
  if (!search.labels.empty()) {
    const at::Tensor idx = at::from_blob(search.labels.data(), {static_cast<int64_t>(search.labels.size())},
                                         at::TensorOptions().dtype(at::kLong));
    at::Tensor p = prototypes.index_select(0, idx).to(opmath);
    TORCH_CHECK(at::isfinite(p).all().item<bool>(), kOp,
                ": argument 'prototypes' must be finite for every label with 0 < num_kept < negatives");
    p = p / at::linalg_vector_norm(p, 2, {1}, /*keepdim=*/true).clamp_min(math::kNormEps);
    protos.index_copy_(0, idx, p);
  }
  at::Tensor mask = at::empty({N, K}, bool_opts);
  Selector<op_t> selector(features, protos, targets, keep_all, m, opmath, mask);
  selector.place_bands(search, sample_size, band_z, n_neg);
  const auto failed = selector.scan(search, /*init_mask=*/true);
  if (!failed.empty()) {
    // Step 4: open the failing side of each band; the rescan then cannot fail.
    Search<op_t> retry;
    retry.ranked = at::zeros({K}, bool_opts);
    retry.lower = search.lower;
    retry.upper = search.upper;
    for (auto [k, side] : failed) {
      retry.labels.push_back(k);
      retry.ranked.template data_ptr<bool>()[k] = true;
      if (side < 0) retry.lower[k] = -std::numeric_limits<op_t>::infinity();
      if (side > 0) retry.upper[k] = std::numeric_limits<op_t>::infinity();
    }
    const auto again = selector.scan(retry, /*init_mask=*/false);
    TORCH_CHECK(again.empty(), kOp, ": internal error: a rescan with an opened band failed");
  }
  return mask;
}

at::Tensor negative_select_cpu(const at::Tensor& features, const at::Tensor& prototypes, const at::Tensor& targets,
                               const at::Tensor& num_kept, int64_t sample_size, double band_z) {
  check_negative_select_inputs(kOp, features, prototypes, targets, num_kept, sample_size, band_z);
  const at::Tensor targets_c = targets.contiguous();
  const at::Tensor counts = count_labels_cpu(kOp, targets_c);  // also validates the values
  const at::Tensor kept = num_kept.contiguous();
  check_num_kept(kOp, kept, counts);
  const auto opmath = opmath_type(features.scalar_type());
  if (opmath == at::kDouble) {
    return select<double>(features, prototypes, targets_c, kept, counts, sample_size, band_z, opmath);
  }
  return select<float>(features, prototypes, targets_c, kept, counts, sample_size, band_z, opmath);
}

}  // namespace

TORCH_LIBRARY_IMPL(bbam, CPU, m) { m.impl("negative_select", &negative_select_cpu); }

}  // namespace bbam
