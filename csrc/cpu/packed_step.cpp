// PackedStep (rnn/packed_step.h): register-tiled float32 GEMM over packed weight panels, with the LSTM gate
// math as an optional epilogue. Written on at::vec::Vectorized<float>, so it follows the build's CPU ISA.
#include "rnn/packed_step.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu/lstm_math.h"

namespace seqops {

namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kW = Vec::size();
constexpr int kVecs = 4;  // vectors per panel: 4 x W output columns (one unit block's 4 LSTM gates)
// A register tile is kRows rows x kTileVecs of a panel's vectors. AVX-512's 32 registers hold 6 x 4 accumulators
// + 4 weight vectors + 1 broadcast. AVX2 and narrower have 16: a panel goes in two halves of 6 x 2 (12 + 2 + 1),
// the 6 x 16 shape of BLIS's Haswell/Zen kernels. The earlier 2 x 4 tile loaded 4 weight vectors per 8 FMAs and
// kept only 8 dependent FMA chains in flight, under the 10 that Zen 2's 2 pipes x 5 cycles need: it ran LSTM
// steps at about half of oneDNN's speed there.
constexpr int kTileVecs = kW >= 16 ? 4 : 2;
constexpr int kRows = 6;
static_assert(kTileVecs == kVecs || 2 * kTileVecs == kVecs, "a panel is one tile wide or two");
// K per block: the weight chunk and rows stay in L1, and a block's sum is one chain of at most kKBlock FMAs,
// added to the earlier blocks' sum after it (blocked summation). One chain over all of K = 256, as at first,
// put an LSTM's output with proj_size 8 at 1.8-2.5x torch.nn's fp32 error (its [8, 256] projection; at::mm:
// 1.0-1.35x; blocks of 128: 1.2-1.8x, 4 seeds). 128 ran as fast as 256; 64 was ~10% slower.
constexpr int64_t kKBlock = 128;
constexpr int64_t kMaxRows = 512;   // beyond, a step is a large GEMM: oneDNN's territory
constexpr int64_t kTaskMacs = 1 << 15;  // multiply-adds per parallel task, so tiny steps stay on one thread

// Panel j's vectors in the output: the column of vector v, and how many of its W lanes are real. A weight whose
// rows do not fill the last panel is padded with zero rows; their lanes are computed but never loaded from or
// stored to the output, whose rows hold only the real columns.
struct PanelCols {
  int64_t col[kVecs];
  int width[kVecs];  // 0..W
};

// Where panels land: column of (panel j, vector v) = j * panel_step + v * vec_step. extent: the real columns
// that the panels step through: H per gate with the LSTM gate packing (vector v of panel j is gate v's units
// [jW, jW + W)), or all G of a plain packing.
struct Layout {
  int64_t panel_step, vec_step, extent;
  bool gates;

  static Layout lstm(int64_t H) { return {kW, H, H, true}; }
  static Layout plain(int64_t G) { return {kVecs * kW, kW, G, false}; }

  PanelCols at(int64_t j) const {
    PanelCols p;
    for (int v = 0; v < kVecs; ++v) {
      p.col[v] = j * panel_step + v * vec_step;
      const int64_t first = gates ? j * panel_step : p.col[v];  // the lane-0 position along extent
      p.width[v] = static_cast<int>(std::clamp<int64_t>(extent - first, 0, kW));
    }
    return p;
  }
};

// The first `width` lanes at base + offset (the rest zero), and their store: a full vector where all are real.
// A vector with no real lanes touches nothing, nor forms its address (past the end of the buffer).
inline Vec load(const float* base, int64_t offset, int width) {
  if (width == kW) return Vec::loadu(base + offset);
  return width > 0 ? Vec::loadu(base + offset, width) : Vec(0.0f);
}
inline void store(const Vec& x, float* base, int64_t offset, int width) {
  if (width == kW)
    x.store(base + offset);
  else if (width > 0)
    x.store(base + offset, width);
}

Layout layout_of(int64_t G, bool lstm_gates) { return lstm_gates ? Layout::lstm(G / 4) : Layout::plain(G); }

enum class Init { kZero, kBias, kOut };

// Rows [r0, r0 + R) of out at panel j's columns of vectors [V0, V0 + kTileVecs) += a[r0.., k0:k0+kn] x
// panel[k0:k0+kn]. Each K block sums from zero, then adds the init (first block) or the partial sums that the
// earlier blocks left in out. The last block of the panel's last vectors hands all 4 accumulators of each row
// to finish(r, acc) instead of storing them, the earlier vectors' sums read back from out (where their own
// last block left them).
template <int R, int V0, typename Finish>
inline void tile(const float* panel, int64_t k0, int64_t kn, bool first, bool last, const float* a, int64_t lda,
                 float* out, int64_t ldo, const PanelCols& pc, Init init, const float* bias, const Finish& finish) {
  constexpr int NV = kTileVecs;
  Vec acc[R][NV];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = Vec(0.0f);
  const float* w = panel + (k0 * kVecs + V0) * kW;
  const float* ak = a + k0;
  for (int64_t k = 0; k < kn; ++k, w += kVecs * kW) {
    Vec wv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) wv[v] = Vec::loadu(w + v * kW);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const Vec x(ak[r * lda + k]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = at::vec::fmadd(x, wv[v], acc[r][v]);
    }
  }
  // Blocked summation (see kKBlock): the block's sum joins the init or the earlier blocks' sum only now.
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const int64_t col = pc.col[V0 + v];
      const int width = pc.width[V0 + v];
      if (!first || init == Init::kOut)
        acc[r][v] = acc[r][v] + load(out, r * ldo + col, width);
      else if (init == Init::kBias)
        acc[r][v] = acc[r][v] + load(bias, col, width);
    }
  if (last && V0 + NV == kVecs) {
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      Vec all[kVecs];
#pragma GCC unroll 4
      for (int v = 0; v < V0; ++v) all[v] = load(out, r * ldo + pc.col[v], pc.width[v]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) all[V0 + v] = acc[r][v];
      finish(r, all);
    }
    return;
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) store(acc[r][v], out, r * ldo + pc.col[V0 + v], pc.width[V0 + v]);
}

// One panel's vectors [V0, V0 + kTileVecs) over all K blocks and row tiles.
template <int V0, typename MakeFinish>
void panel_part(int64_t j, const float* panel, int64_t K, const PanelCols& pc, int64_t b, const float* a,
                int64_t lda, float* out, int64_t ldo, Init init, const float* bias, const MakeFinish& make_finish) {
  // Rows split evenly over the fewest tiles (16 = 6 + 5 + 5, not 6 + 6 + 4; 13 = 5 + 4 + 4, not 6 + 6 + 1): a
  // short tile has too few independent FMA chains to hide the FMA latency and takes a full tile's time.
  if (b <= 0) return;
  const int64_t n_tiles = (b + kRows - 1) / kRows, base = b / n_tiles, longer = b % n_tiles;
  for (int64_t k0 = 0; k0 < K; k0 += kKBlock) {
    const int64_t kn = std::min(kKBlock, K - k0);
    const bool first = k0 == 0, last = k0 + kn == K;
    for (int64_t t = 0, r0 = 0; t < n_tiles; r0 += base + (t < longer), ++t) {
      const float* ar = a + r0 * lda;
      float* outr = out + r0 * ldo;
      const auto finish = make_finish(r0, j, pc);
      switch (base + (t < longer)) {
        case 6: tile<6, V0>(panel, k0, kn, first, last, ar, lda, outr, ldo, pc, init, bias, finish); break;
        case 5: tile<5, V0>(panel, k0, kn, first, last, ar, lda, outr, ldo, pc, init, bias, finish); break;
        case 4: tile<4, V0>(panel, k0, kn, first, last, ar, lda, outr, ldo, pc, init, bias, finish); break;
        case 3: tile<3, V0>(panel, k0, kn, first, last, ar, lda, outr, ldo, pc, init, bias, finish); break;
        case 2: tile<2, V0>(panel, k0, kn, first, last, ar, lda, outr, ldo, pc, init, bias, finish); break;
        default: tile<1, V0>(panel, k0, kn, first, last, ar, lda, outr, ldo, pc, init, bias, finish); break;
      }
    }
  }
}

// Panels [j0, j1) of a: [b, K] (row stride lda) x panels -> out [b, G] (row stride ldo), on this thread.
// make_finish(r0, j, pc) returns the last-block handler of the tile whose first row is r0 in panel j.
template <typename MakeFinish>
void panel_range(int64_t j0, int64_t j1, const float* panels, int64_t K, Layout layout, int64_t b, const float* a,
                 int64_t lda, float* out, int64_t ldo, Init init, const float* bias, const MakeFinish& make_finish) {
  for (int64_t j = j0; j < j1; ++j) {
    const float* panel = panels + j * K * kVecs * kW;
    const PanelCols pc = layout.at(j);
    panel_part<0>(j, panel, K, pc, b, a, lda, out, ldo, init, bias, make_finish);
    if constexpr (kTileVecs < kVecs)
      panel_part<kTileVecs>(j, panel, K, pc, b, a, lda, out, ldo, init, bias, make_finish);
  }
}

// Threads worth using for a step of b rows: enough work per thread to outweigh the synchronisation.
int64_t threads_for(int64_t n_panels, int64_t b, int64_t K) {
  if (at::in_parallel_region()) return 1;
  const int64_t by_work = std::max<int64_t>(1, n_panels * b * K * kVecs * kW / kTaskMacs);
  return std::min({static_cast<int64_t>(at::get_num_threads()), n_panels, by_work});
}

// One step over all panels, split over threads.
template <typename MakeFinish>
void run_panels(const float* panels, int64_t n_panels, int64_t K, Layout layout, int64_t b, const float* a,
                int64_t lda, float* out, int64_t ldo, Init init, const float* bias, const MakeFinish& make_finish) {
  const int64_t threads = threads_for(n_panels, b, K);
  at::parallel_for(0, n_panels, (n_panels + threads - 1) / threads, [&](int64_t j0, int64_t j1) {
    panel_range(j0, j1, panels, K, layout, b, a, lda, out, ldo, init, bias, make_finish);
  });
}

// The LSTM epilogue of panel j (units [jW, jW + W), fewer in a padded last panel) for rows from r0: gate
// activations, cell update.
struct LstmFinish {
  float* gates;
  const float* c_prev;
  float* c_new;
  float* h_new;
  int64_t ldg, ldcp, ldcn, ldh;

  auto operator()(int64_t r0, int64_t j, const PanelCols& pc) const {
    return [=, *this](int r, const Vec(&acc)[kVecs]) {
      const int64_t row = r0 + r, unit = j * kW;
      const int width = pc.width[0];  // the same units of each gate
      const auto y = cpu::lstm_forward_math(acc[0], acc[1], acc[2], acc[3], load(c_prev, row * ldcp + unit, width));
      float* gr = gates + row * ldg;
      store(y.i, gr, pc.col[0], width);
      store(y.f, gr, pc.col[1], width);
      store(y.g, gr, pc.col[2], width);
      store(y.o, gr, pc.col[3], width);
      store(y.c, c_new, row * ldcn + unit, width);
      store(y.h, h_new, row * ldh + unit, width);
    };
  }
};

bool enabled() {
  static const bool on = [] {
    const char* env = std::getenv("SEQOPS_PACKED_STEP");
    return env == nullptr || std::strcmp(env, "0") != 0;
  }();
  return on;
}

}  // namespace

bool PackedStep::supported(const Tensor& weight, int64_t rows, bool lstm_gates) {
  if (!enabled() || !weight.device().is_cpu() || weight.scalar_type() != at::kFloat || weight.dim() != 2 ||
      weight.numel() == 0 || rows > kMaxRows)
    return false;
  return !lstm_gates || weight.size(0) % 4 == 0;
}

// weight [G, K] -> panels [ceil(G / 4W), K, 4, W] (LSTM gates: [ceil(H / W), K, 4, W]), padded with zero rows
PackedStep::PackedStep(const Tensor& weight, bool lstm_gates)
    : G_(weight.size(0)), K_(weight.size(1)), lstm_gates_(lstm_gates) {
  const Layout layout = layout_of(G_, lstm_gates);
  const int64_t n_panels = (layout.extent + layout.panel_step - 1) / layout.panel_step, K = K_;
  const Tensor wt = weight.t();
  if (!lstm_gates && wt.is_contiguous() && G_ % (kVecs * kW) == 0) {  // the backward's W^T: one copy
    panels_ = wt.view({K_, n_panels, kVecs, kW}).permute({1, 0, 2, 3}).contiguous();
    return;
  }
  // panels[j][k][v][w] = weight[j * panel_step + v * vec_step + w][k], a transpose of W-row blocks, copied in
  // 16-column tiles so reads and writes both stay in cache lines (a strided permute copy was 6-20x slower:
  // 171 us vs ~30 us for a [1024, 256] weight). Lanes past the real rows stay zero.
  const Tensor w = weight.contiguous();
  const bool padded = layout.extent % layout.panel_step != 0;
  const std::vector<int64_t> shape{n_panels, K, kVecs, kW};
  panels_ = padded ? at::zeros(shape, w.options()) : at::empty(shape, w.options());
  const float* src = w.const_data_ptr<float>();
  float* dst = panels_.data_ptr<float>();
  at::parallel_for(0, n_panels * kVecs, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t j = blk / kVecs, v = blk % kVecs;
      const PanelCols pc = layout.at(j);
      if (pc.width[v] == 0) continue;  // all padding: stays zero
      const float* rows = src + pc.col[v] * K;
      for (int64_t k0 = 0; k0 < K; k0 += 16) {
        const int64_t k1 = std::min(K, k0 + 16);
        for (int64_t l = 0; l < pc.width[v]; ++l)
          for (int64_t k = k0; k < k1; ++k) dst[((j * K + k) * kVecs + v) * kW + l] = rows[l * K + k];
      }
    }
  });
}

// h: [b, K] -> [b, G]
Tensor PackedStep::operator()(const Tensor& h, const std::optional<Tensor>& bias) const {
  TORCH_CHECK(h.dim() == 2 && h.size(1) == K_ && h.scalar_type() == at::kFloat, "PackedStep: bad input ", h.sizes());
  const Tensor a = h.contiguous();
  const int64_t b = a.size(0);
  Tensor out = at::empty({b, G_}, a.options());
  if (b == 0) return out;
  const Tensor bias_c = bias.has_value() ? bias->contiguous() : Tensor();
  float* o = out.data_ptr<float>();
  const int64_t ldo = G_;
  run_panels(panels_.const_data_ptr<float>(), panels_.size(0), K_, layout_of(G_, lstm_gates_), b,
             a.const_data_ptr<float>(), K_, o, ldo, bias_c.defined() ? Init::kBias : Init::kZero,
             bias_c.defined() ? bias_c.const_data_ptr<float>() : nullptr,
             [&](int64_t r0, int64_t, const PanelCols& pc) {
               return [=](int r, const Vec(&acc)[kVecs]) {
                 for (int v = 0; v < kVecs; ++v) store(acc[v], o, (r0 + r) * ldo + pc.col[v], pc.width[v]);
               };
             });
  return out;
}

// gates: [b, 4H] (i, f, g, o); h_prev: [b, K]; c_prev, c_new, h_new: [b, H]
void PackedStep::lstm_step(const Tensor& gates, const Tensor& h_prev, const Tensor& c_prev, const Tensor& c_new,
                           const Tensor& h_new) const {
  TORCH_CHECK(lstm_gates_, "PackedStep::lstm_step needs the LSTM gate packing");
  const int64_t b = gates.size(0);
  if (b == 0) return;
  const LstmFinish finish{gates.data_ptr<float>(), c_prev.const_data_ptr<float>(), c_new.data_ptr<float>(),
                          h_new.data_ptr<float>(),  gates.stride(0),                c_prev.stride(0),
                          c_new.stride(0),          h_new.stride(0)};
  run_panels(panels_.const_data_ptr<float>(), panels_.size(0), K_, Layout::lstm(G_ / 4), b,
             h_prev.const_data_ptr<float>(), h_prev.stride(0), finish.gates, finish.ldg, Init::kOut, nullptr, finish);
}

// gates: [T*B, 4H] step-major; h0: [B, K] (K = H); c0: [B, H]; out, cells: [T*B, H]
void PackedStep::lstm_sequence(const Tensor& gates, const Tensor& h0, const Tensor& c0, const Tensor& out,
                               const Tensor& cells, bool reverse) const {
  TORCH_CHECK(lstm_gates_ && K_ == G_ / 4, "PackedStep::lstm_sequence needs the LSTM gate packing, no projection");
  const int64_t B = h0.size(0), H = G_ / 4, T = B > 0 ? gates.size(0) / B : 0;
  if (T == 0 || B == 0) return;
  const Tensor h0c = h0.contiguous(), c0c = c0.contiguous();
  const float* panels = panels_.const_data_ptr<float>();
  const int64_t n_panels = panels_.size(0);
  float* g = gates.data_ptr<float>();
  float* o = out.data_ptr<float>();
  float* cl = cells.data_ptr<float>();
  // Steps are sequential, so the threads stay in one parallel region for the whole sequence, each on the same
  // panels every step (they stay in its cache), with a barrier between steps instead of a fork/join per step.
  const auto steps = [&](int64_t j0, int64_t j1, const std::function<void()>& barrier) {
    for (int64_t i = 0; i < T; ++i) {
      const int64_t t = reverse ? T - 1 - i : i, prev = reverse ? t + 1 : t - 1;
      const bool first = i == 0;
      const LstmFinish finish{g + t * B * G_, first ? c0c.const_data_ptr<float>() : cl + prev * B * H, cl + t * B * H,
                              o + t * B * H,  G_,                                                      H,
                              H,              H};
      const float* h_prev = first ? h0c.const_data_ptr<float>() : o + prev * B * H;
      panel_range(j0, j1, panels, K_, Layout::lstm(H), B, h_prev, K_, finish.gates, G_, Init::kOut, nullptr, finish);
      barrier();
    }
  };
  const int64_t threads = threads_for(n_panels, B, K_);
#ifdef _OPENMP
  if (threads > 1) {
#pragma omp parallel num_threads(threads)
    {
      const int64_t tid = omp_get_thread_num(), nt = omp_get_num_threads();
      const int64_t per = (n_panels + nt - 1) / nt;
      steps(std::min(n_panels, tid * per), std::min(n_panels, (tid + 1) * per), [] {
#pragma omp barrier
      });
    }
    return;
  }
#endif
  steps(0, n_panels, [] {});
}

// LSTM backward over an unpacked sequence, with this PackedStep holding W_hh^T ([H, 4H], plain packing).
// gates [T*B, 4H] activations; cells [T*B, H]; c0 [B, H]; grad_out [T*B, H]; dh [B, H] in: dL/dh_n, out: dL/dh0;
// dc [B, H] likewise for c; grad_gates [T*B, 4H] out.
void PackedStep::lstm_backward_sequence(const Tensor& gates, const Tensor& cells, const Tensor& c0,
                                        const Tensor& grad_out, const Tensor& dh, const Tensor& dc,
                                        const Tensor& grad_gates, bool reverse) const {
  TORCH_CHECK(!lstm_gates_ && K_ == 4 * G_, "PackedStep::lstm_backward_sequence needs W_hh^T, plain packing");
  const int64_t B = dh.size(0), H = G_, T = B > 0 ? gates.size(0) / B : 0;
  if (T == 0 || B == 0) return;
  const float* g = gates.const_data_ptr<float>();
  const float* cl = cells.const_data_ptr<float>();
  const float* c0p = c0.const_data_ptr<float>();
  const float* go = grad_out.const_data_ptr<float>();
  float* dhp = dh.data_ptr<float>();
  float* dcp = dc.data_ptr<float>();
  float* dg = grad_gates.data_ptr<float>();
  const float* panels = panels_.const_data_ptr<float>();
  const int64_t n_panels = panels_.size(0), n_blocks = (H + kW - 1) / kW;  // the last block may be partial
  // Step t: the gate gradients of unit blocks [u0, u1) of every row; dh (from the later step) and dc in place.
  const auto pointwise = [&](int64_t t, int64_t prev, int64_t u0, int64_t u1) {
    for (int64_t r = 0; r < B; ++r) {
      const int64_t row = t * B + r;
      const float* gr = g + row * 4 * H;
      float* dgr = dg + row * 4 * H;
      const float* cp = prev < 0 ? c0p + r * H : cl + (prev * B + r) * H;
      for (int64_t u = u0 * kW; u < std::min(H, u1 * kW); u += kW) {
        const int w = static_cast<int>(std::min<int64_t>(kW, H - u));
        const auto d = cpu::lstm_backward_math(
            load(gr, u, w), load(gr, H + u, w), load(gr, 2 * H + u, w), load(gr, 3 * H + u, w), load(cp, u, w),
            load(cl, row * H + u, w), load(dhp, r * H + u, w) + load(go, row * H + u, w), load(dcp, r * H + u, w));
        store(d.d_i, dgr, u, w);
        store(d.d_f, dgr, H + u, w);
        store(d.d_g, dgr, 2 * H + u, w);
        store(d.d_o, dgr, 3 * H + u, w);
        store(d.d_c_prev, dcp, r * H + u, w);
      }
    }
  };
  const auto store_dh = [&](int64_t r0, int64_t, const PanelCols& pc) {
    return [=](int r, const Vec(&acc)[kVecs]) {
      for (int v = 0; v < kVecs; ++v) store(acc[v], dhp, (r0 + r) * H + pc.col[v], pc.width[v]);
    };
  };
  // One parallel region: per step, unit blocks split for the pointwise, a barrier, panels split for
  // dh = grad_gates_t @ W_hh, a barrier.
  const auto steps = [&](int64_t tid, int64_t nt, const std::function<void()>& barrier) {
    const int64_t per_u = (n_blocks + nt - 1) / nt, per_p = (n_panels + nt - 1) / nt;
    const int64_t u0 = std::min(n_blocks, tid * per_u), u1 = std::min(n_blocks, (tid + 1) * per_u);
    const int64_t p0 = std::min(n_panels, tid * per_p), p1 = std::min(n_panels, (tid + 1) * per_p);
    for (int64_t i = T - 1; i >= 0; --i) {  // the forward's step order, backwards
      const int64_t t = reverse ? T - 1 - i : i, prev = i == 0 ? -1 : (reverse ? t + 1 : t - 1);
      pointwise(t, prev, u0, u1);
      barrier();
      panel_range(p0, p1, panels, K_, Layout::plain(H), B, dg + t * B * 4 * H, 4 * H, dhp, H, Init::kZero, nullptr,
                  store_dh);
      barrier();
    }
  };
  const int64_t threads = threads_for(n_panels, B, K_);
#ifdef _OPENMP
  if (threads > 1) {
#pragma omp parallel num_threads(threads)
    steps(omp_get_thread_num(), omp_get_num_threads(), [] {
#pragma omp barrier
    });
    return;
  }
#endif
  steps(0, 1, [] {});
}

}  // namespace seqops
