// cap_select on CPU (contract and algorithm in cap_select.h). On CUDA, bbam.cap selects
// with torch.topk per label block instead (fast there); this kernel exists because on
// CPU that path costs several passes over each block (measured in bench/epoch.py).
#include "cap_select.h"

#include "../cpu/host_utils.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <functional>
#include <limits>
#include <tuple>
#include <vector>

namespace bbam {
namespace {

constexpr const char* kOp = "cap_select";
constexpr int64_t kMaxBlockLabels = 64;  // one 64-byte output line per row and block

// "Among the first m of the stable descending order" for one label, in row order:
// above the m-th value, or equal to it and among the first (m - #above) equal ones.
template <typename scalar_t>
struct TopCounter {
  scalar_t value;     // the m-th largest value (unused when m == 0)
  int64_t room = 0;   // equal elements still inside: m - #above
  bool any = false;   // m > 0
  int64_t seen = 0;   // equal elements met so far

  bool inside(scalar_t s) {
    if (!any) return false;
    if (s > value) return true;
    if (s == value) return seen++ < room;
    return false;
  }
};

// Values of rank need[j] (1-based, 0: none) in the descending order of col[0, N):
// candidates are the values >= a lower bound placed from a strided sample (so that the
// deepest rank lies among them with a wide margin), selected with nested nth_element
// calls (deepest first, then inside the prefix it leaves). If the bound was too high,
// all N values are candidates. Returns the number of candidates (in buf[0, n)), -1 when
// col holds a NaN.
template <typename scalar_t>
int64_t values_at_ranks(const scalar_t* col, int64_t N, const int64_t (&need)[3], scalar_t (&value)[3],
                     std::vector<scalar_t>& buf) {
  const auto desc = std::greater<scalar_t>();
  const int64_t deepest = std::max({need[0], need[1], need[2]});
  scalar_t bound = -std::numeric_limits<scalar_t>::infinity();
  constexpr int64_t kSample = 1024;
  if (deepest > 0 && N >= 8 * kSample) {
    // the deepest rank's expected sample rank, plus 6 binomial standard deviations and 8
    const double f = static_cast<double>(deepest) / N;
    const int64_t at = static_cast<int64_t>(std::ceil(f * kSample + 6.0 * std::sqrt(kSample * f * (1 - f)) + 8));
    if (at < kSample / 2) {
      scalar_t sample[kSample];
      const int64_t stride = N / kSample;
      bool sample_nan = false;
      for (int64_t j = 0; j < kSample; ++j) {
        sample[j] = col[j * stride];
        sample_nan |= sample[j] != sample[j];
      }
      if (!sample_nan) {  // (NaN is reported below; nth_element needs a strict weak order)
        std::nth_element(sample, sample + at, sample + kSample, desc);
        bound = sample[at];
      }
    }
  }
  int64_t n = 0, nans = 0;
  for (int64_t i = 0; i < N; ++i) {  // branch-free compaction of the candidates
    const scalar_t v = col[i];
    buf[n] = v;
    n += v >= bound;
    nans += v != v;
  }
  if (nans) return -1;
  if (n < deepest) {  // the bound was too high: every value is a candidate
    std::copy(col, col + N, buf.begin());
    n = N;
  }
  int64_t order[3] = {0, 1, 2};
  std::sort(order, order + 3, [&](int64_t x, int64_t y) { return need[x] > need[y]; });
  int64_t end = n;  // the prefix [0, end) holds the largest `end` candidates
  for (int64_t j : order) {
    const int64_t m = need[j];
    if (m <= 0) continue;
    std::nth_element(buf.begin(), buf.begin() + (m - 1), buf.begin() + end, desc);
    value[j] = buf[m - 1];
    end = m;  // [0, m - 1) >= value: a shallower rank lies in this prefix
  }
  return n;
}

template <typename scalar_t>
void select_block(const scalar_t* scores_lm, int64_t N, int64_t K, int64_t k0, int64_t k1,
                  const int64_t* ranks, const int64_t* pos_keep, const int64_t* not_neg,
                  int8_t* targets, bool* mask, scalar_t* thresholds, std::vector<scalar_t>& buf,
                  std::vector<int8_t>& block_t, std::vector<uint8_t>& block_m, std::atomic<bool>& nan_found,
                  bool unknown_outside_mask) {
  const int64_t B = k1 - k0;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t k = k0 + b;
    const scalar_t* col = scores_lm + k * N;
    const int64_t need[3] = {ranks[k], pos_keep[k], not_neg[k]};
    scalar_t value[3] = {0, 0, 0};
    const int64_t candidates = values_at_ranks(col, N, need, value, buf);
    if (candidates < 0) {
      nan_found = true;
      continue;
    }
    const bool has_pos = ranks[k] > 0;
    const scalar_t thr = has_pos ? value[0] : std::numeric_limits<scalar_t>::infinity();
    thresholds[k] = thr;
    TopCounter<scalar_t> top_pos{value[1]}, top_neg{value[2]};
    top_pos.any = pos_keep[k] > 0;
    top_neg.any = not_neg[k] > 0;
    // values above a selected one are all candidates (buf[0, n), in some order)
    int64_t above_pos = 0, above_neg = 0;
    for (int64_t i = 0; i < candidates; ++i) {
      above_pos += buf[i] > top_pos.value;
      above_neg += buf[i] > top_neg.value;
    }
    top_pos.room = pos_keep[k] - above_pos;
    top_neg.room = not_neg[k] - above_neg;
    int8_t* bt = block_t.data() + b * N;
    uint8_t* bm = unknown_outside_mask ? nullptr : block_m.data() + b * N;
    for (int64_t i = 0; i < N; ++i) {
      const scalar_t s = col[i];
      const bool pos = has_pos && s >= thr;
      const bool in_pos = top_pos.inside(s), in_neg = top_neg.inside(s);  // both: counters advance
      const bool keep = pos ? in_pos : !in_neg;
      if (unknown_outside_mask) {
        bt[i] = keep ? (pos ? 1 : 0) : -1;
      } else {
        bt[i] = pos ? 1 : 0;
        bm[i] = keep;
      }
    }
  }
  // label-major block -> row-major [N, K] outputs, in 64-row tiles (the tile's output
  // lines stay in cache while each label's 64 values are read contiguously)
  constexpr int64_t kTile = 64;
  for (int64_t i0 = 0; i0 < N; i0 += kTile) {
    const int64_t i1 = std::min(N, i0 + kTile);
    for (int64_t b = 0; b < B; ++b) {
      const int8_t* bt = block_t.data() + b * N;
      for (int64_t i = i0; i < i1; ++i) targets[i * K + k0 + b] = bt[i];
      if (unknown_outside_mask) continue;
      const uint8_t* bm = block_m.data() + b * N;
      for (int64_t i = i0; i < i1; ++i) mask[i * K + k0 + b] = bm[i] != 0;
    }
  }
}

template <typename scalar_t>
void run(const at::Tensor& scores_lm, int64_t N, int64_t K, const int64_t* ranks, const int64_t* pos_keep,
         const int64_t* not_neg, at::Tensor& targets, at::Tensor& mask, at::Tensor& thresholds,
         bool unknown_outside_mask) {
  const scalar_t* s = scores_lm.data_ptr<scalar_t>();
  int8_t* t = targets.data_ptr<int8_t>();
  bool* m = unknown_outside_mask ? nullptr : mask.data_ptr<bool>();
  scalar_t* thr = thresholds.data_ptr<scalar_t>();
  // blocks: at most 64 labels, and enough blocks to keep every thread busy
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t block = std::clamp<int64_t>(cpu::ceil_div(K, 4 * threads), 1, kMaxBlockLabels);
  const int64_t num_blocks = cpu::ceil_div(K, block);
  std::atomic<bool> nan_found{false};
  at::parallel_for(0, num_blocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<scalar_t> buf(N);
    std::vector<int8_t> block_t(block * N);
    std::vector<uint8_t> block_m(unknown_outside_mask ? 0 : block * N);
    for (int64_t g = b0; g < b1; ++g) {
      const int64_t k0 = g * block, k1 = std::min(K, k0 + block);
      select_block<scalar_t>(s, N, K, k0, k1, ranks, pos_keep, not_neg, t, m, thr, buf, block_t, block_m,
                             nan_found, unknown_outside_mask);
    }
  });
  TORCH_CHECK_VALUE(!nan_found, kOp, ": argument 'scores' must not contain NaN");  // Python ValueError
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cap_select_cpu(const at::Tensor& scores, const at::Tensor& ranks,
                                                              const at::Tensor& pos_keep,
                                                              const at::Tensor& not_neg,
                                                              bool unknown_outside_mask) {
  check_cap_select_inputs(kOp, scores, ranks, pos_keep, not_neg);
  const int64_t N = scores.size(0), K = scores.size(1);
  const at::Tensor r = ranks.contiguous(), p = pos_keep.contiguous(), q = not_neg.contiguous();
  const int64_t *rp = r.data_ptr<int64_t>(), *pp = p.data_ptr<int64_t>(), *qp = q.data_ptr<int64_t>();
  for (int64_t k = 0; k < K; ++k) {
    BBAM_CHECK_ARG(rp[k] >= 0 && rp[k] <= N, kOp, "ranks", "must lie in [0, N] (N = ", N, "); label ", k,
                   " has ", rp[k]);
    BBAM_CHECK_ARG(pp[k] >= 0 && pp[k] <= rp[k], kOp, "pos_keep", "must lie in [0, ranks[k]]; label ", k,
                   " has ", pp[k], " with ranks[k] = ", rp[k]);
    BBAM_CHECK_ARG(qp[k] >= 0 && qp[k] <= N, kOp, "not_neg", "must lie in [0, N] (N = ", N, "); label ", k,
                   " has ", qp[k]);
  }
  const at::Tensor scores_lm = scores.t().contiguous();  // [K, N]: free for label-major storage
  at::Tensor targets = at::empty({N, K}, scores.options().dtype(at::kChar));
  at::Tensor mask = at::empty({unknown_outside_mask ? 0 : N, K}, scores.options().dtype(at::kBool));
  at::Tensor thresholds = at::empty({K}, scores.options());
  if (N == 0 || K == 0) {
    thresholds.fill_(std::numeric_limits<double>::infinity());
    return {targets, mask, thresholds};
  }
  if (scores.scalar_type() == at::kDouble) {
    run<double>(scores_lm, N, K, rp, pp, qp, targets, mask, thresholds, unknown_outside_mask);
  } else {
    run<float>(scores_lm, N, K, rp, pp, qp, targets, mask, thresholds, unknown_outside_mask);
  }
  return {targets, mask, thresholds};
}

}  // namespace

TORCH_LIBRARY_IMPL(bbam, CPU, m) { m.impl("cap_select", &cap_select_cpu); }

}  // namespace bbam
