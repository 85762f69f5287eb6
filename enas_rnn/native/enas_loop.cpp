// The cells' time loops (forward, and the backward's reverse loop) in C++, for float32 on the CPU.
//
// enas space: same algorithm as enas_rnn/spaces/enas.py (_loop_forward / _reverse_loop): per step
// and parent group ONE GEMM and ONE fused elementwise pass (sigmoid, the activation, the highway
// lerp) instead of ~9 PyTorch kernels each called from Python (~8 us per call; at H = 256 a window
// ran ~3,000 of them). Layout for backward: per step and group the pre-activation buffer P[t] is
// overwritten in place with (g | f) and the parents' states are kept node-major (S [N, T, B, H]);
// the reverse loop turns P into the pre-activations' gradients, ready for the weights'
// one-GEMM-per-window gradient.
// lstm space: the plan's straight-line register program (enas_rnn/spaces/lstm.py::run_lstm), every
// step's registers kept for the reverse program.
//
// The GEMMs go straight to the BLAS torch links (sgemm_), so a step has no dispatcher call either.
// The activations use ATen's vectorised kernels (at::vec::Vectorized, SLEEF), so values agree with
// the PyTorch loops, which stay the reference and the path for every other dtype and device, to
// float rounding (tests/test_native.py).
//
// Also the LM loss's row softmax / cross-entropy (softmax_xent_, in place; xent_rows, read-only).
//
// Registered as torch.ops.enas_rnn_native.{loop_forward, loop_backward, lstm_forward, lstm_backward,
// softmax_xent_, xent_rows};
// built on first use by
// enas_rnn/native/__init__.py (torch.utils.cpp_extension.load).

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
#define CPU_CAPABILITY_AVX512 1
#elif defined(__AVX2__) && defined(__FMA__)
#define CPU_CAPABILITY_AVX2 1
#endif

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

// Fortran BLAS sgemm from the BLAS torch links (MKL in the x86 wheels): the loop's ~20 GEMMs per
// step then cost no dispatcher call and no Tensor per operand. Weak: when this torch exports no
// sgemm_, the loop calls at::addmm_out instead (same kernels behind it).
extern "C" void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                       const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
                       const float* beta, float* c, const int* ldc) __attribute__((weak));

namespace {

using Vec = at::vec::Vectorized<float>;

// Row-major C [m, n] = A [m, k] x B [k, n] + beta C (A, B, C contiguous rows with strides lda, ldb, ldc).
void gemm(int64_t m, int64_t n, int64_t k, const float* A, int64_t lda, const float* B, int64_t ldb, float beta,
          float* C, int64_t ldc) {
  if (sgemm_ != nullptr) {
    // Column-major view of the same memory: C^T [n, m] = B^T [n, k] x A^T [k, m].
    const int mi = static_cast<int>(n), ni = static_cast<int>(m), ki = static_cast<int>(k);
    const int la = static_cast<int>(ldb), lb = static_cast<int>(lda), lc = static_cast<int>(ldc);
    const float one = 1.0f;
    sgemm_("N", "N", &mi, &ni, &ki, &one, B, &la, A, &lb, &beta, C, &lc);
    return;
  }
  auto opts = at::TensorOptions().dtype(at::kFloat);
  at::Tensor a = at::from_blob(const_cast<float*>(A), {m, k}, {lda, 1}, opts);
  at::Tensor b = at::from_blob(const_cast<float*>(B), {k, n}, {ldb, 1}, opts);
  at::Tensor c = at::from_blob(C, {m, n}, {ldc, 1}, opts);
  if (beta == 0.0f) {
    at::mm_out(c, a, b);
  } else {
    c.addmm_(a, b);
  }
}

// y = a * b elementwise over n floats.
void mul(const float* a, const float* b, float* y, int64_t n) {
  const int64_t W = Vec::size();
  for (int64_t i = 0; i < n; i += W) {
    const int64_t m = std::min(W, n - i);
    (Vec::loadu(a + i, m) * Vec::loadu(b + i, m)).store(y + i, m);
  }
}

// The elementwise passes of a time step run over batch rows split across torch's intra-op threads
// (at::parallel_for) once a pass has at least this many floats: below it the fork costs more than it
// saves (H = 256, B = 32: a node's pass is 8,192 floats and stays on the calling thread). Every float
// is computed by the same vector code whichever thread runs its row, and a row's own order (e.g. the
// children's sum into their parent's gradient) is kept, so results are identical for any thread
// count and split; only the GEMMs between the passes were threaded before (by the BLAS).
constexpr int64_t kParallelFloats = 16384;

// f(b0, b1) over the rows [0, B) of a pass with row_floats floats per row.
template <typename F>
inline void over_rows(int64_t B, int64_t row_floats, const F& f) {
  const int64_t grain = std::max<int64_t>(1, (kParallelFloats + row_floats - 1) / std::max<int64_t>(row_floats, 1));
  at::parallel_for(0, B, grain, f);
}

// Activation codes; keep in sync with enas_rnn/native/__init__.py::ACT_CODES.
enum Act : int64_t { IDENTITY = 0, TANH = 1, SIGMOID = 2, RELU = 3, RELU_CLIP = 4, CLIP = 5 };

struct Group {
  int64_t parent_slot, first, k;
  std::vector<int64_t> acts;  // one code per child, in slot order
};

// meta = [G, then per group: parent_slot, first, k, act_0 .. act_{k-1}]
std::vector<Group> parse_groups(const std::vector<int64_t>& meta) {
  TORCH_CHECK(!meta.empty(), "enas_rnn_native: empty plan");
  std::vector<Group> groups;
  size_t p = 1;
  for (int64_t g = 0; g < meta[0]; ++g) {
    TORCH_CHECK(p + 3 <= meta.size(), "enas_rnn_native: truncated plan");
    Group grp{meta[p], meta[p + 1], meta[p + 2], {}};
    p += 3;
    TORCH_CHECK(p + grp.k <= meta.size(), "enas_rnn_native: truncated plan");
    grp.acts.assign(meta.begin() + p, meta.begin() + p + grp.k);
    p += grp.k;
    groups.push_back(std::move(grp));
  }
  return groups;
}

inline Vec sigmoid(const Vec& x) {  // as ATen's vectorised sigmoid: 1 / (1 + exp(-x))
  return (Vec(1.0f) + x.neg().exp()).reciprocal();
}

template <int64_t A>
inline Vec act_fwd(const Vec& v, float clip) {
  if constexpr (A == TANH) return v.tanh();
  if constexpr (A == SIGMOID) return sigmoid(v);
  if constexpr (A == RELU) return at::vec::maximum(v, Vec(0.0f));
  if constexpr (A == RELU_CLIP) return at::vec::clamp(v, Vec(0.0f), Vec(clip));
  if constexpr (A == CLIP) return at::vec::clamp(v, Vec(-clip), Vec(clip));
  return v;
}

// dL/dv = g * act'(v) from the op's output y = act(v), as ATen's *_backward kernels.
template <int64_t A>
inline Vec act_grad(const Vec& g, const Vec& y, float clip) {
  const Vec zero(0.0f), one(1.0f);
  if constexpr (A == TANH) return g * (one - y * y);
  if constexpr (A == SIGMOID) return g * (one - y) * y;
  if constexpr (A == RELU) return Vec::blendv(zero, g, y > zero);
  if constexpr (A == RELU_CLIP) return Vec::blendv(zero, g, (y > zero) & (y < Vec(clip)));
  if constexpr (A == CLIP) return Vec::blendv(zero, g, (y > Vec(-clip)) & (y < Vec(clip)));
  return g;
}

// Forward of one node over n contiguous floats. c, v: the node's pre-activations (gate, candidate),
// overwritten in place with g = sigmoid(c) and f = act(v) when keep (the backward's inputs; the GEMM
// wrote them into this step's slice of P, so no separate coefficient buffer is written);
// s = lerp(sp, f, g) with ATen's lerp formula.
template <int64_t A>
void node_fwd(float* c, float* v, const float* sp, float* s, int64_t n, float clip, bool keep) {
  const Vec one(1.0f), half(0.5f);
  const int64_t W = Vec::size();
  for (int64_t i = 0; i < n; i += W) {
    const int64_t m = std::min(W, n - i);
    const Vec g = sigmoid(Vec::loadu(c + i, m));
    const Vec f = act_fwd<A>(Vec::loadu(v + i, m), clip);
    const Vec start = Vec::loadu(sp + i, m);
    const Vec diff = f - start;
    // ATen lerp: |w| < 0.5 ? start + w (end - start) : end - (end - start) (1 - w)
    Vec::blendv(f - diff * (one - g), start + g * diff, g.abs() < half).store(s + i, m);
    if (keep) {
      g.store(c + i, m);
      f.store(v + i, m);
    }
  }
}

// Backward of one node over n floats from the forward's g (in c) and f (in v), the parent's state sp
// and ds = dL/ds: c <- dL/dc = ds (f - sp) g (1 - g), v <- dL/dh~ = ds g act'(h~), and
// acc (=, or += when accumulate) ds (1 - g), the gradient reaching the parent through the lerp's start.
template <int64_t A>
void node_bwd(float* c, float* v, const float* sp, const float* ds, float* acc, int64_t n, float clip, bool accumulate) {
  const Vec one(1.0f);
  const int64_t W = Vec::size();
  for (int64_t i = 0; i < n; i += W) {
    const int64_t m = std::min(W, n - i);
    const Vec d = Vec::loadu(ds + i, m);
    const Vec g = Vec::loadu(c + i, m);
    const Vec f = Vec::loadu(v + i, m);
    const Vec one_g = one - g;
    (d * (f - Vec::loadu(sp + i, m)) * g * one_g).store(c + i, m);
    act_grad<A>(d * g, f, clip).store(v + i, m);
    Vec direct = d * one_g;
    if (accumulate) direct = direct + Vec::loadu(acc + i, m);
    direct.store(acc + i, m);
  }
}

struct NodeFns {
  void (*fwd)(float*, float*, const float*, float*, int64_t, float, bool);
  void (*bwd)(float*, float*, const float*, const float*, float*, int64_t, float, bool);
};

template <int64_t A>
NodeFns fns_of() { return {node_fwd<A>, node_bwd<A>}; }

NodeFns node_fns(int64_t act) {
  switch (act) {
    case IDENTITY: return fns_of<IDENTITY>();
    case TANH: return fns_of<TANH>();
    case SIGMOID: return fns_of<SIGMOID>();
    case RELU: return fns_of<RELU>();
    case RELU_CLIP: return fns_of<RELU_CLIP>();
    case CLIP: return fns_of<CLIP>();
  }
  TORCH_CHECK(false, "enas_rnn_native: unknown activation code ", act);
}

void check_f32_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous(), "enas_rnn_native: ", name,
              " must be a contiguous float32 CPU tensor");
}

void check_buffer(const at::Tensor& t, at::IntArrayRef shape, const char* name) {
  check_f32_cpu(t, name);
  TORCH_CHECK(t.sizes() == shape, "enas_rnn_native: ", name, " has shape ", t.sizes(), ", expected ", shape);
}

void check_operands(const std::vector<Group>& groups, const at::Tensor& w1, at::TensorList ws,
                    const c10::optional<at::Tensor>& mask, int64_t B, int64_t H) {
  TORCH_CHECK(w1.device().is_cpu() && w1.scalar_type() == at::kFloat && w1.sizes() == at::IntArrayRef({H, 2 * H}),
              "enas_rnn_native: w1 must be float32 [H, 2H]");
  for (size_t gi = 0; gi < groups.size(); ++gi)
    TORCH_CHECK(ws[gi].device().is_cpu() && ws[gi].scalar_type() == at::kFloat &&
                    ws[gi].sizes() == at::IntArrayRef({H, 2 * groups[gi].k * H}),
                "enas_rnn_native: the weight of group ", gi, " must be float32 [H, 2kH]");
  TORCH_CHECK(!mask.has_value() || (mask->device().is_cpu() && mask->scalar_type() == at::kFloat &&
                                    mask->sizes() == at::IntArrayRef({B, H})),
              "enas_rnn_native: mask must be float32 [B, H]");
}

struct Plan {
  std::vector<Group> groups;
  std::vector<NodeFns> fns;  // per slot
  std::vector<bool> parent;  // per slot: is some group's parent (its states are kept for backward)
  int64_t N;
};

Plan make_plan(const std::vector<int64_t>& meta, int64_t act1) {
  Plan p{parse_groups(meta), {node_fns(act1)}, {}, 1};
  for (const auto& g : p.groups) {
    for (auto a : g.acts) p.fns.push_back(node_fns(a));
    p.N += g.k;
  }
  p.parent.assign(p.N, false);
  for (const auto& g : p.groups) {
    TORCH_CHECK(g.parent_slot >= 0 && g.parent_slot < p.N && g.first >= 1 && g.first + g.k <= p.N,
                "enas_rnn_native: bad plan");
    p.parent[g.parent_slot] = true;
  }
  return p;
}

// The time loop. Fills out [T, B, H]; with S given (training) also S [N, T, B, H] (the states of
// the parent nodes, node-major so that a parent's states are one [T*B, H] matrix for its weight's
// gradient; loose ends' rows are left unwritten), P1 [T, B, 2H] and Ps[g] [T, B, 2kH] = (g | f) per
// step (see node_fwd). Buffers come from the caller (enas_rnn.kernels.POOL: no fresh mmap, and no
// page faults, per call for large windows).
void loop_forward(const at::Tensor& xp, const at::Tensor& h0, const c10::optional<at::Tensor>& mask,
                  const at::Tensor& w1, at::TensorList ws, std::vector<int64_t> meta, int64_t act1,
                  std::vector<int64_t> loose, double clip_d, const c10::optional<at::Tensor>& S_opt,
                  const c10::optional<at::Tensor>& P1_opt, at::TensorList Ps, const at::Tensor& out) {
  check_f32_cpu(xp, "xp");
  check_f32_cpu(h0, "h0");
  const int64_t T = xp.size(0), B = xp.size(1), H = h0.size(-1), BH = B * H;
  const Plan plan = make_plan(meta, act1);
  const auto& groups = plan.groups;
  TORCH_CHECK(ws.size() == groups.size(), "enas_rnn_native: one weight per group");
  TORCH_CHECK(!loose.empty(), "enas_rnn_native: no loose end");
  TORCH_CHECK(xp.sizes() == at::IntArrayRef({T, B, 2 * H}) && h0.sizes() == at::IntArrayRef({B, H}),
              "enas_rnn_native: xp must be [T, B, 2H] and h0 [B, H]");
  check_operands(groups, w1, ws, mask, B, H);
  const bool keep = S_opt.has_value();
  TORCH_CHECK(keep == P1_opt.has_value() && (!keep || Ps.size() == groups.size()),
              "enas_rnn_native: S, P1 and Ps come together");
  check_buffer(out, {T, B, H}, "out");
  if (keep) {
    check_buffer(*S_opt, {plan.N, T, B, H}, "S");
    check_buffer(*P1_opt, {T, B, 2 * H}, "P1");
    for (size_t gi = 0; gi < groups.size(); ++gi) check_buffer(Ps[gi], {T, B, 2 * groups[gi].k * H}, "P");
  }
  const float clip = static_cast<float>(clip_d);
  auto opts = xp.options();
  at::Tensor scratch = at::empty({plan.N, B, H}, opts);  // this step's states of nodes not kept in S
  std::vector<at::Tensor> Gs;  // GEMM outputs: this step's slice of P (keep), else a reused scratch
  for (const auto& g : groups) Gs.push_back(keep ? at::Tensor() : at::empty({B, 2 * g.k * H}, opts));
  at::Tensor G1 = keep ? at::Tensor() : at::empty({B, 2 * H}, opts);
  // Raw pointers for the loop (every operand is contiguous float32).
  const at::Tensor maskc = mask.has_value() ? mask->contiguous() : at::Tensor();
  const at::Tensor w1c = w1.contiguous();
  std::vector<at::Tensor> wsc;
  std::vector<const float*> wp;
  for (const auto& w : ws) {
    wsc.push_back(w.contiguous());
    wp.push_back(wsc.back().data_ptr<float>());
  }
  at::Tensor hm_t = at::empty({B, H}, opts);
  float* hm = hm_t.data_ptr<float>();
  const float* mp = mask.has_value() ? maskc.data_ptr<float>() : nullptr;
  const float* w1p = w1c.data_ptr<float>();
  const float* xpp = xp.data_ptr<float>();
  const float* h0p = h0.data_ptr<float>();
  float* p1 = keep ? P1_opt->data_ptr<float>() : nullptr;
  float* sk = keep ? S_opt->data_ptr<float>() : nullptr;
  float* sc = scratch.data_ptr<float>();
  auto state = [&](int64_t slot, int64_t t) -> float* {
    return keep && plan.parent[slot] ? sk + (slot * T + t) * BH : sc + slot * BH;
  };
  const float inv_loose = 1.0f / static_cast<float>(loose.size());
  float* o = out.data_ptr<float>();
  const int64_t W = Vec::size();
  for (int64_t t = 0; t < T; ++t) {
    // Node 1: [B, 2H] = xp_t + (h * mask) @ w1, gate | candidate.
    const float* hp = t > 0 ? o + (t - 1) * BH : h0p;
    const float* h_in = mp != nullptr ? hm : hp;
    float* g1 = keep ? p1 + t * B * 2 * H : G1.data_ptr<float>();
    over_rows(B, 3 * H, [&](int64_t b0, int64_t b1) {
      if (mp != nullptr) mul(hp + b0 * H, mp + b0 * H, hm + b0 * H, (b1 - b0) * H);
      std::memcpy(g1 + b0 * 2 * H, xpp + (t * B + b0) * 2 * H, sizeof(float) * (b1 - b0) * 2 * H);
    });
    gemm(B, 2 * H, H, h_in, H, w1p, 2 * H, 1.0f, g1, 2 * H);
    {
      float* s = state(0, t);
      over_rows(B, 2 * H, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b)
          plan.fns[0].fwd(g1 + b * 2 * H, g1 + b * 2 * H + H, hp + b * H, s + b * H, H, clip, keep);
      });
    }
    for (size_t gi = 0; gi < groups.size(); ++gi) {
      const Group& grp = groups[gi];
      const int64_t k = grp.k;
      float* gp = keep ? Ps[gi].data_ptr<float>() + t * B * 2 * k * H : Gs[gi].data_ptr<float>();
      const float* sp = state(grp.parent_slot, t);
      // [B, H] x [H, 2kH] -> [B, 2, k, H]: gates of the k children | their candidates
      gemm(B, 2 * k * H, H, sp, H, wp[gi], 2 * k * H, 0.0f, gp, 2 * k * H);
      over_rows(B, 2 * k * H, [&](int64_t b0, int64_t b1) {
        for (int64_t j = 0; j < k; ++j) {
          float* s = state(grp.first + j, t);
          const auto fwd = plan.fns[grp.first + j].fwd;
          for (int64_t b = b0; b < b1; ++b)
            fwd(gp + (b * 2 * k + j) * H, gp + (b * 2 * k + k + j) * H, sp + b * H, s + b * H, H, clip, keep);
        }
      });
    }
    // h_t = mean of the loose ends (Pham et al. 2018, Sec. 2.1), summed in node order.
    float* ot = o + t * BH;
    std::vector<const float*> ls;
    for (auto l : loose) ls.push_back(state(l, t));
    over_rows(B, static_cast<int64_t>(loose.size()) * H, [&](int64_t b0, int64_t b1) {
      for (int64_t i = b0 * H; i < b1 * H; i += W) {
        const int64_t m = std::min(W, b1 * H - i);
        Vec acc = Vec::loadu(ls[0] + i, m);
        for (size_t l = 1; l < ls.size(); ++l) acc = acc + Vec::loadu(ls[l] + i, m);
        if (ls.size() > 1) acc = acc * Vec(inv_loose);
        acc.store(ot + i, m);
      }
    });
  }
}

// The reverse loop over the forward's S, P1, Ps (see loop_forward). Turns P1 and Ps in place into
// dL/d(pre-activations) per step - the hoisted GEMM's and the weights' gradients are then one GEMM
// each over the window (done by the caller) - and returns dL/dh0.
at::Tensor loop_backward(const at::Tensor& d_out_in, const at::Tensor& h0, const c10::optional<at::Tensor>& mask,
                         const at::Tensor& w1, at::TensorList ws, std::vector<int64_t> meta, int64_t act1,
                         std::vector<int64_t> loose, double clip_d, const at::Tensor& S, const at::Tensor& out,
                         const at::Tensor& P1, at::TensorList Ps) {
  const at::Tensor d_out = d_out_in.contiguous();
  check_f32_cpu(d_out, "d_out");
  check_f32_cpu(h0, "h0");
  const int64_t T = out.size(0), B = out.size(1), H = out.size(2), BH = B * H;
  const Plan plan = make_plan(meta, act1);
  const auto& groups = plan.groups;
  TORCH_CHECK(ws.size() == groups.size() && Ps.size() == groups.size(), "enas_rnn_native: one weight per group");
  check_buffer(S, {plan.N, T, B, H}, "S");
  check_buffer(out, {T, B, H}, "out");
  check_buffer(P1, {T, B, 2 * H}, "P1");
  for (size_t gi = 0; gi < groups.size(); ++gi) check_buffer(Ps[gi], {T, B, 2 * groups[gi].k * H}, "P");
  check_operands(groups, w1, ws, mask, B, H);
  check_buffer(h0, {B, H}, "h0");
  check_buffer(d_out, {T, B, H}, "d_out");
  const float clip = static_cast<float>(clip_d);
  auto opts = S.options();
  std::vector<at::Tensor> wts;  // W^T [2kH, H] contiguous: the per-step GEMM runs ~30 % faster on it than on the view
  std::vector<const float*> wtp;
  for (const auto& w : ws) {
    wts.push_back(w.t().contiguous());
    wtp.push_back(wts.back().data_ptr<float>());
  }
  const at::Tensor w1t = w1.t().contiguous();
  const float* w1tp = w1t.data_ptr<float>();
  const at::Tensor maskc = mask.has_value() ? mask->contiguous() : at::Tensor();
  const float* mp = mask.has_value() ? maskc.data_ptr<float>() : nullptr;
  at::Tensor dS = at::empty({plan.N, B, H}, opts);  // one step's dL/ds; every slot is written before it is read
  float* ds = dS.data_ptr<float>();
  at::Tensor d_h_t = at::zeros({B, H}, opts), d_next_t = at::empty({B, H}, opts), tmp_t = at::empty({B, H}, opts);
  float* d_h = d_h_t.data_ptr<float>();  // dL/dh_t from step t+1
  float* d_next = d_next_t.data_ptr<float>();
  float* tmp = tmp_t.data_ptr<float>();
  const float* s = S.data_ptr<float>();
  const float* o = out.data_ptr<float>();
  const float* dop = d_out.data_ptr<float>();
  const float* h0p = h0.data_ptr<float>();
  float* p1 = P1.data_ptr<float>();
  std::vector<float*> pp;
  for (const auto& P : Ps) pp.push_back(P.data_ptr<float>());
  const int64_t W = Vec::size();
  const float inv_loose = 1.0f / static_cast<float>(loose.size());
  for (int64_t t = T - 1; t >= 0; --t) {
    over_rows(B, static_cast<int64_t>(1 + loose.size()) * H, [&](int64_t b0, int64_t b1) {
      for (int64_t i = b0 * H; i < b1 * H; i += W) {  // dL/dh_t; every loose end gets it / (number of loose ends)
        const int64_t m = std::min(W, b1 * H - i);
        Vec v = Vec::loadu(d_h + i, m) + Vec::loadu(dop + t * BH + i, m);
        if (loose.size() > 1) v = v * Vec(inv_loose);
        for (auto l : loose) v.store(ds + l * BH + i, m);
      }
    });
    for (int64_t gi = static_cast<int64_t>(groups.size()) - 1; gi >= 0; --gi) {  // children before parents
      const Group& grp = groups[gi];
      const int64_t k = grp.k;
      float* gp = pp[gi] + t * B * 2 * k * H;  // [B, 2kH] = [B, 2, k, H]
      const float* sp = s + (grp.parent_slot * T + t) * BH;
      float* dp = ds + grp.parent_slot * BH;
      over_rows(B, 2 * k * H, [&](int64_t b0, int64_t b1) {
        for (int64_t j = 0; j < k; ++j) {  // j ascending on every row: the children's sum keeps its order
          const auto bwd = plan.fns[grp.first + j].bwd;
          const float* dc = ds + (grp.first + j) * BH;
          for (int64_t b = b0; b < b1; ++b)
            bwd(gp + (b * 2 * k + j) * H, gp + (b * 2 * k + k + j) * H, sp + b * H, dc + b * H, dp + b * H, H, clip, j > 0);
        }
      });
      // dL/ds_p += [dc | dh~] @ W^T: [B, 2kH] x [2kH, H]
      gemm(B, H, 2 * k * H, gp, 2 * k * H, wtp[gi], H, 1.0f, dp, H);
    }
    float* gp = p1 + t * B * 2 * H;  // [B, 2H]
    const float* hp = t > 0 ? o + (t - 1) * BH : h0p;  // node 1's parent: h_{t-1}
    over_rows(B, 2 * H, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b)
        plan.fns[0].bwd(gp + b * 2 * H, gp + b * 2 * H + H, hp + b * H, ds + b * H, d_next + b * H, H, clip, false);
    });
    if (mp != nullptr) {  // h_in = h * mask: dL/dh += (dPre @ w1^T) * mask
      gemm(B, H, 2 * H, gp, 2 * H, w1tp, H, 0.0f, tmp, H);
      over_rows(B, 3 * H, [&](int64_t b0, int64_t b1) {
        for (int64_t i = b0 * H; i < b1 * H; i += W) {
          const int64_t m = std::min(W, b1 * H - i);
          (Vec::loadu(d_next + i, m) + Vec::loadu(tmp + i, m) * Vec::loadu(mp + i, m)).store(d_next + i, m);
        }
      });
    } else {
      gemm(B, H, 2 * H, gp, 2 * H, w1tp, H, 1.0f, d_next, H);
    }
    std::swap(d_h, d_next);
    std::swap(d_h_t, d_next_t);
  }
  return d_h_t;
}


// ============================================================================ the lstm space
// Straight-line register programs (enas_rnn/spaces/lstm.py::LSTMPlan): registers 0 = c_{t-1},
// 1..k = the activated xh operands (slot order), then one per program row (SSA). Program rows are
// (op, dst, a, b) with op an activation code (unary, b < 0) or ADD / MUL.
enum BinOp : int64_t { ADD = 10, MUL = 11 };

template <int64_t A>
void act_loop(const float* v, float* y, int64_t n, float clip) {
  const int64_t W = Vec::size();
  for (int64_t i = 0; i < n; i += W) {
    const int64_t m = std::min(W, n - i);
    act_fwd<A>(Vec::loadu(v + i, m), clip).store(y + i, m);
  }
}

// out (=, or += when accumulate) g * act'(v), from y = act(v).
template <int64_t A>
void act_grad_loop(const float* g, const float* y, float* out, int64_t n, float clip, bool accumulate) {
  const int64_t W = Vec::size();
  for (int64_t i = 0; i < n; i += W) {
    const int64_t m = std::min(W, n - i);
    Vec d = act_grad<A>(Vec::loadu(g + i, m), Vec::loadu(y + i, m), clip);
    if (accumulate) d = d + Vec::loadu(out + i, m);
    d.store(out + i, m);
  }
}

void act_any(int64_t code, const float* v, float* y, int64_t n, float clip) {
  switch (code) {
    case IDENTITY: if (v != y) std::memcpy(y, v, sizeof(float) * n); return;
    case TANH: return act_loop<TANH>(v, y, n, clip);
    case SIGMOID: return act_loop<SIGMOID>(v, y, n, clip);
    case RELU: return act_loop<RELU>(v, y, n, clip);
    case RELU_CLIP: return act_loop<RELU_CLIP>(v, y, n, clip);
    case CLIP: return act_loop<CLIP>(v, y, n, clip);
  }
  TORCH_CHECK(false, "enas_rnn_native: unknown activation code ", code);
}

void act_grad_any(int64_t code, const float* g, const float* y, float* out, int64_t n, float clip, bool accumulate) {
  switch (code) {
    case IDENTITY: return act_grad_loop<IDENTITY>(g, y, out, n, clip, accumulate);
    case TANH: return act_grad_loop<TANH>(g, y, out, n, clip, accumulate);
    case SIGMOID: return act_grad_loop<SIGMOID>(g, y, out, n, clip, accumulate);
    case RELU: return act_grad_loop<RELU>(g, y, out, n, clip, accumulate);
    case RELU_CLIP: return act_grad_loop<RELU_CLIP>(g, y, out, n, clip, accumulate);
    case CLIP: return act_grad_loop<CLIP>(g, y, out, n, clip, accumulate);
  }
  TORCH_CHECK(false, "enas_rnn_native: unknown activation code ", code);
}

struct Row {
  int64_t op, dst, a, b;
};

std::vector<Row> parse_program(const std::vector<int64_t>& prog, int64_t num_regs, int64_t k) {
  TORCH_CHECK(prog.size() % 4 == 0, "enas_rnn_native: truncated program");
  std::vector<Row> rows;
  for (size_t i = 0; i < prog.size(); i += 4) {
    Row r{prog[i], prog[i + 1], prog[i + 2], prog[i + 3]};
    const bool binary = r.op == ADD || r.op == MUL;
    TORCH_CHECK(r.dst > k && r.dst < num_regs && r.a >= 0 && r.a < r.dst && (binary ? (r.b >= 0 && r.b < r.dst) : r.b < 0),
                "enas_rnn_native: bad program row ", i / 4);
    rows.push_back(r);
  }
  return rows;
}

// Forward of an lstm-space plan. xp [T, B, kH]: x_t's part of the k live maps, bias folded in.
// Fills out [T, B, H] (h_t) and c_last [B, H]; with R given, every step's registers R [T, NR, B, H].
void lstm_forward(const at::Tensor& xp, const at::Tensor& h0, const at::Tensor& c0, const c10::optional<at::Tensor>& mask,
                  const at::Tensor& w_rec, std::vector<int64_t> slot_acts, std::vector<int64_t> prog, int64_t num_regs,
                  int64_t h_reg, int64_t c_reg, double clip_d, const c10::optional<at::Tensor>& R_opt,
                  const at::Tensor& out, const at::Tensor& c_last) {
  check_f32_cpu(xp, "xp");
  check_f32_cpu(h0, "h0");
  check_f32_cpu(c0, "c0");
  const int64_t T = xp.size(0), B = xp.size(1), H = h0.size(-1), BH = B * H, k = slot_acts.size();
  TORCH_CHECK(k > 0 && xp.sizes() == at::IntArrayRef({T, B, k * H}), "enas_rnn_native: xp must be [T, B, kH], k > 0");
  TORCH_CHECK(w_rec.scalar_type() == at::kFloat && w_rec.sizes() == at::IntArrayRef({H, k * H}), "enas_rnn_native: bad w_rec");
  TORCH_CHECK(!mask.has_value() || (mask->scalar_type() == at::kFloat && mask->sizes() == at::IntArrayRef({B, H})),
              "enas_rnn_native: mask must be float32 [B, H]");
  TORCH_CHECK(h_reg > k && h_reg < num_regs && c_reg > k && c_reg < num_regs, "enas_rnn_native: bad output registers");
  const auto rows = parse_program(prog, num_regs, k);
  const bool keep = R_opt.has_value();
  if (keep) check_buffer(*R_opt, {T, num_regs, B, H}, "R");
  check_buffer(out, {T, B, H}, "out");
  check_buffer(c_last, {B, H}, "c_last");
  const float clip = static_cast<float>(clip_d);
  auto opts = xp.options();
  at::Tensor scratch = at::empty({keep ? 1 : num_regs, B, H}, opts), G_t = at::empty({B, k * H}, opts);
  at::Tensor hm_t = at::empty({B, H}, opts);
  const at::Tensor maskc = mask.has_value() ? mask->contiguous() : at::Tensor();
  const at::Tensor wc = w_rec.contiguous();
  const float* mp = mask.has_value() ? maskc.data_ptr<float>() : nullptr;
  const float *xpp = xp.data_ptr<float>(), *wp = wc.data_ptr<float>(), *h0p = h0.data_ptr<float>();
  float *G = G_t.data_ptr<float>(), *hm = hm_t.data_ptr<float>(), *o = out.data_ptr<float>();
  float* rk = keep ? R_opt->data_ptr<float>() : nullptr;
  const float* c_prev = c0.data_ptr<float>();
  for (int64_t t = 0; t < T; ++t) {
    float* R = keep ? rk + t * num_regs * BH : scratch.data_ptr<float>();
    const bool load_c = R != c_prev;  // register 0 = c_{t-1}
    const float* hp = t > 0 ? o + (t - 1) * BH : h0p;
    const float* h_in = mp != nullptr ? hm : hp;
    over_rows(B, (2 + k) * H, [&](int64_t b0, int64_t b1) {
      const int64_t i0 = b0 * H, n = (b1 - b0) * H;
      if (load_c) std::memmove(R + i0, c_prev + i0, sizeof(float) * n);
      if (mp != nullptr) mul(hp + i0, mp + i0, hm + i0, n);
      std::memcpy(G + b0 * k * H, xpp + (t * B + b0) * k * H, sizeof(float) * n * k);
    });
    // [B, kH] = xp_t + h_in @ W_rec: the h_{t-1} part of all k live maps in one GEMM.
    gemm(B, k * H, H, h_in, H, wp, k * H, 1.0f, G, k * H);
    // The step's whole register program, row by row of the batch (every register is elementwise).
    over_rows(B, (k + static_cast<int64_t>(rows.size()) + 2) * H, [&](int64_t b0, int64_t b1) {
      const int64_t i0 = b0 * H, n = (b1 - b0) * H;
      for (int64_t j = 0; j < k; ++j)
        for (int64_t b = b0; b < b1; ++b) act_any(slot_acts[j], G + (b * k + j) * H, R + (1 + j) * BH + b * H, H, clip);
      for (const Row& r : rows) {
        float* d = R + r.dst * BH + i0;
        const float* a = R + r.a * BH + i0;
        if (r.op == ADD || r.op == MUL) {
          const float* bb = R + r.b * BH + i0;
          const int64_t W = Vec::size();
          for (int64_t i = 0; i < n; i += W) {
            const int64_t m = std::min(W, n - i);
            const Vec x = Vec::loadu(a + i, m), y = Vec::loadu(bb + i, m);
            (r.op == ADD ? x + y : x * y).store(d + i, m);
          }
        } else {
          act_any(r.op, a, d, n, clip);
        }
      }
      std::memcpy(o + t * BH + i0, R + h_reg * BH + i0, sizeof(float) * n);
      // without keep the next step overwrites the registers: keep c_t in register 0's place first
      if (!keep) std::memmove(R + i0, R + c_reg * BH + i0, sizeof(float) * n);
    });
    c_prev = keep ? R + c_reg * BH : R;
  }
  std::memcpy(c_last.data_ptr<float>(), c_prev, sizeof(float) * BH);
}

// The reverse loop over the forward's registers R. Writes dPre [T, B, kH] (the gradient of the k
// maps' pre-activations: the hoisted GEMM's and W_rec's gradients are one GEMM each over the window,
// done by the caller) and returns (dL/dh0, dL/dc0).
std::vector<at::Tensor> lstm_backward(const at::Tensor& d_out_in, const at::Tensor& d_c_in, const c10::optional<at::Tensor>& mask,
                                      const at::Tensor& w_rec, std::vector<int64_t> slot_acts, std::vector<int64_t> prog,
                                      int64_t num_regs, int64_t h_reg, int64_t c_reg, double clip_d, const at::Tensor& R,
                                      const at::Tensor& dPre) {
  const at::Tensor d_out = d_out_in.contiguous(), d_c_last = d_c_in.contiguous();
  check_f32_cpu(d_out, "d_out");
  check_f32_cpu(d_c_last, "d_c");
  const int64_t T = d_out.size(0), B = d_out.size(1), H = d_out.size(2), BH = B * H, k = slot_acts.size();
  TORCH_CHECK(k > 0 && w_rec.sizes() == at::IntArrayRef({H, k * H}), "enas_rnn_native: bad w_rec");
  TORCH_CHECK(!mask.has_value() || (mask->scalar_type() == at::kFloat && mask->sizes() == at::IntArrayRef({B, H})),
              "enas_rnn_native: mask must be float32 [B, H]");
  check_buffer(R, {T, num_regs, B, H}, "R");
  check_buffer(dPre, {T, B, k * H}, "dPre");
  TORCH_CHECK(d_c_last.sizes() == at::IntArrayRef({B, H}), "enas_rnn_native: d_c must be [B, H]");
  const auto rows = parse_program(prog, num_regs, k);
  const float clip = static_cast<float>(clip_d);
  auto opts = R.options();
  const at::Tensor wt = w_rec.t().contiguous();  // [kH, H]
  const at::Tensor maskc = mask.has_value() ? mask->contiguous() : at::Tensor();
  const float *wtp = wt.data_ptr<float>(), *mp = mask.has_value() ? maskc.data_ptr<float>() : nullptr;
  at::Tensor dR_t = at::empty({num_regs, B, H}, opts), dh_t = at::zeros({B, H}, opts), tmp_t = at::empty({B, H}, opts);
  at::Tensor dc_t = d_c_last.clone();
  float *dR = dR_t.data_ptr<float>(), *dh = dh_t.data_ptr<float>(), *dc = dc_t.data_ptr<float>(), *tmp = tmp_t.data_ptr<float>();
  const float* dop = d_out.data_ptr<float>();
  const float* rp = R.data_ptr<float>();
  float* dp = dPre.data_ptr<float>();
  const int64_t W = Vec::size();
  for (int64_t t = T - 1; t >= 0; --t) {
    const float* Rt = rp + t * num_regs * BH;
    float* dpt = dp + t * B * k * H;  // [B, kH]
    // The step's reverse program, row by row of the batch (every register is elementwise).
    over_rows(B, (2 * num_regs + k) * H, [&](int64_t b0, int64_t b1) {
      const int64_t i0 = b0 * H, n = (b1 - b0) * H;
      for (int64_t r = 0; r < num_regs; ++r)  // a register may be read by several rows
        std::memset(dR + r * BH + i0, 0, sizeof(float) * n);
      for (int64_t i = i0; i < i0 + n; i += W) {
        const int64_t m = std::min(W, i0 + n - i);
        (Vec::loadu(dh + i, m) + Vec::loadu(dop + t * BH + i, m) + Vec::loadu(dR + h_reg * BH + i, m)).store(dR + h_reg * BH + i, m);
        (Vec::loadu(dc + i, m) + Vec::loadu(dR + c_reg * BH + i, m)).store(dR + c_reg * BH + i, m);
      }
      for (auto it = rows.rbegin(); it != rows.rend(); ++it) {
        const Row& r = *it;
        const float* g = dR + r.dst * BH + i0;
        if (r.op == ADD || r.op == MUL) {
          float *da = dR + r.a * BH + i0, *db = dR + r.b * BH + i0;
          const float *a = Rt + r.a * BH + i0, *bb = Rt + r.b * BH + i0;
          for (int64_t i = 0; i < n; i += W) {  // a == b works: the two updates run one after the other
            const int64_t m = std::min(W, n - i);
            const Vec d = Vec::loadu(g + i, m);
            (Vec::loadu(da + i, m) + (r.op == ADD ? d : d * Vec::loadu(bb + i, m))).store(da + i, m);
            (Vec::loadu(db + i, m) + (r.op == ADD ? d : d * Vec::loadu(a + i, m))).store(db + i, m);
          }
        } else {
          act_grad_any(r.op, g, Rt + r.dst * BH + i0, dR + r.a * BH + i0, n, clip, true);
        }
      }
      std::memcpy(dc + i0, dR + i0, sizeof(float) * n);  // dL/dc_{t-1}
      for (int64_t j = 0; j < k; ++j)
        for (int64_t b = b0; b < b1; ++b)
          act_grad_any(slot_acts[j], dR + (1 + j) * BH + b * H, Rt + (1 + j) * BH + b * H, dpt + (b * k + j) * H, H, clip, false);
    });
    if (mp != nullptr) {  // dL/dh_{t-1} = (dPre_t @ W_rec^T) * mask
      gemm(B, H, k * H, dpt, k * H, wtp, H, 0.0f, tmp, H);
      over_rows(B, 3 * H, [&](int64_t b0, int64_t b1) { mul(tmp + b0 * H, mp + b0 * H, dh + b0 * H, (b1 - b0) * H); });
    } else {
      gemm(B, H, k * H, dpt, k * H, wtp, H, 0.0f, dh, H);
    }
  }
  return {dh_t, dc_t};
}

// Per-row cross-entropy of logits [N, V] against target [N]: loss_i = logsumexp(row_i) - row_i[target_i].
// WRITE: the rows are overwritten with exp(row - max), divided by the row's sum when normalize (the
// backward's softmax: enas_rnn.model._LinearCrossEntropy); otherwise the logits are only read
// (enas_rnn.model.token_nll). A row (40 KB at V = 10k) stays in L2 across its passes, so the [N, V]
// matrix is read from memory once and no [N, V] temporary exists (ATen's log_softmax writes one).
template <bool WRITE>
at::Tensor xent_rows_impl(const at::Tensor& logits, const at::Tensor& target, bool normalize) {
  TORCH_CHECK(logits.device().is_cpu() && logits.scalar_type() == at::kFloat && logits.dim() == 2 &&
                  logits.stride(1) == 1 && logits.stride(0) >= logits.size(1),
              "enas_rnn_native: logits must be a float32 CPU [N, V] tensor with contiguous rows");
  const int64_t N = logits.size(0), V = logits.size(1), ld = logits.stride(0);
  TORCH_CHECK(V > 0, "enas_rnn_native: empty vocabulary");
  TORCH_CHECK(target.device().is_cpu() && target.scalar_type() == at::kLong && target.is_contiguous() &&
                  target.dim() == 1 && target.size(0) == N,
              "enas_rnn_native: target must be a contiguous int64 [N] CPU tensor");
  at::Tensor loss = at::empty({N}, logits.options());
  float* lp = loss.data_ptr<float>();
  float* xp = logits.data_ptr<float>();
  const int64_t* tp = target.data_ptr<int64_t>();
  for (int64_t r = 0; r < N; ++r)
    TORCH_CHECK(tp[r] >= 0 && tp[r] < V, "enas_rnn_native: target ", tp[r], " out of range for ", V, " classes");
  const int64_t W = Vec::size(), Vfull = V - V % W;
  // Rows are independent: split them over torch's intra-op threads (as ATen's log_softmax does).
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    alignas(64) float lanes[64];
    for (int64_t r = begin; r < end; ++r) {
      float* x = xp + r * ld;
      const float picked = x[tp[r]];
      Vec vmax(-std::numeric_limits<float>::infinity());
      for (int64_t i = 0; i < Vfull; i += W) vmax = at::vec::maximum(vmax, Vec::loadu(x + i));
      vmax.store(lanes);
      float mx = lanes[0];
      for (int64_t l = 1; l < W; ++l) mx = std::max(mx, lanes[l]);
      for (int64_t i = Vfull; i < V; ++i) mx = std::max(mx, x[i]);
      // A NaN or +inf logit makes the row's loss non-finite (inf or NaN; ATen's is NaN): the training
      // step is skipped and an MRS error counts it as its cap either way.
      const Vec vm(mx);
      Vec vsum(0.0f);
      for (int64_t i = 0; i < Vfull; i += W) {
        // exp_u20: ATen's faster exp (error <= 20 ULP; the loss agrees with log_softmax's to ~2e-7,
        // tests/test_native.py) - the exps are what this loop's time is.
        const Vec e = (Vec::loadu(x + i) - vm).exp_u20();
        if constexpr (WRITE) e.store(x + i);
        vsum = vsum + e;
      }
      vsum.store(lanes);
      double total = 0.0;
      for (int64_t l = 0; l < W; ++l) total += lanes[l];
      for (int64_t i = Vfull; i < V; ++i) {
        const float e = std::exp(x[i] - mx);
        if constexpr (WRITE) x[i] = e;
        total += e;
      }
      const float sum = static_cast<float>(total);
      lp[r] = std::log(sum) + mx - picked;
      if (WRITE && normalize) {
        const Vec inv(1.0f / sum);
        for (int64_t i = 0; i < Vfull; i += W) (Vec::loadu(x + i) * inv).store(x + i);
        for (int64_t i = Vfull; i < V; ++i) x[i] *= 1.0f / sum;
      }
    }
  });
  return loss;
}

at::Tensor softmax_xent_(const at::Tensor& logits, const at::Tensor& target, bool normalize) {
  return xent_rows_impl<true>(logits, target, normalize);
}

at::Tensor xent_rows(const at::Tensor& logits, const at::Tensor& target) {
  return xent_rows_impl<false>(logits, target, false);
}

}  // namespace

TORCH_LIBRARY(enas_rnn_native, m) {
  m.def("loop_forward(Tensor xp, Tensor h0, Tensor? mask, Tensor w1, Tensor[] ws, int[] meta, int act1, "
        "int[] loose, float clip, Tensor(a!)? S, Tensor(b!)? P1, Tensor(c!)[] Ps, Tensor(d!) out) -> ()");
  m.def("loop_backward(Tensor d_out, Tensor h0, Tensor? mask, Tensor w1, Tensor[] ws, int[] meta, int act1, "
        "int[] loose, float clip, Tensor S, Tensor out, Tensor(a!) P1, Tensor(b!)[] Ps) -> Tensor");
  m.def("lstm_forward(Tensor xp, Tensor h0, Tensor c0, Tensor? mask, Tensor w_rec, int[] slot_acts, int[] prog, "
        "int num_regs, int h_reg, int c_reg, float clip, Tensor(a!)? R, Tensor(b!) out, Tensor(c!) c_last) -> ()");
  m.def("lstm_backward(Tensor d_out, Tensor d_c, Tensor? mask, Tensor w_rec, int[] slot_acts, int[] prog, "
        "int num_regs, int h_reg, int c_reg, float clip, Tensor R, Tensor(a!) dPre) -> Tensor[]");
  m.def("softmax_xent_(Tensor(a!) logits, Tensor target, bool normalize) -> Tensor");
  m.def("xent_rows(Tensor logits, Tensor target) -> Tensor");
  m.impl("loop_forward", c10::DispatchKey::CPU, TORCH_FN(loop_forward));
  m.impl("softmax_xent_", c10::DispatchKey::CPU, TORCH_FN(softmax_xent_));
  m.impl("xent_rows", c10::DispatchKey::CPU, TORCH_FN(xent_rows));
  m.impl("lstm_forward", c10::DispatchKey::CPU, TORCH_FN(lstm_forward));
  m.impl("lstm_backward", c10::DispatchKey::CPU, TORCH_FN(lstm_backward));
  m.impl("loop_backward", c10::DispatchKey::CPU, TORCH_FN(loop_backward));
}
