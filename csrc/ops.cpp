// Every ldeq operator schema, declared in one place (torchvision style).
// Backends register kernels in csrc/<op>/<op>_cpu.cpp and csrc/<op>/<op>_cuda.cu with
// TORCH_LIBRARY_IMPL(ldeq, CPU/CUDA, m); Python adds fake kernels and autograd in ldeq/ops/.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <mutex>
#include <set>
#include <string>

#include "common/cpu_alloc.h"
#include "common/cpu_dispatch.h"

TORCH_LIBRARY(ldeq, m) {
  // ---- heatmap (csrc/heatmap/heatmap.h) -------------------------------------------------
  m.def("heatmap_softargmax(Tensor logits, Tensor beta) -> Tensor");
  m.def("heatmap_softargmax_backward(Tensor grad_heatmaps, Tensor logits, Tensor beta, "
        "Tensor heatmaps) -> (Tensor, Tensor)");
  m.def("heatmap_decode(Tensor heatmaps, bool official_std=False) -> (Tensor, Tensor)");
  m.def("heatmap_decode_backward(Tensor grad_coords, Tensor grad_std, Tensor heatmaps, "
        "Tensor coords, Tensor std, bool official_std=False) -> Tensor");
  // Both in one pass per channel; the backward never materialises dL/dheatmaps.
  m.def("heatmap_softargmax_decode(Tensor logits, Tensor beta, bool official_std=False) -> (Tensor, Tensor, Tensor)");
  m.def("heatmap_softargmax_decode_backward(Tensor? grad_heatmaps, Tensor grad_coords, Tensor grad_std, "
        "Tensor logits, Tensor beta, Tensor heatmaps, Tensor coords, Tensor std, bool official_std=False) "
        "-> (Tensor, Tensor)");
  // Coordinates only: heatmaps are never stored (the backward recomputes them per channel).
  m.def("heatmap_softargmax_coords(Tensor logits, Tensor beta, bool official_std=False) -> (Tensor, Tensor)");
  m.def("heatmap_softargmax_coords_backward(Tensor grad_coords, Tensor grad_std, Tensor logits, Tensor beta, "
        "Tensor coords, Tensor std, bool official_std=False) -> (Tensor, Tensor)");

  // ---- solvers (csrc/anderson, csrc/broyden) --------------------------------------------
  // Anderson (csrc/anderson/anderson.h): history X, F, G (m, B, d), Gram H (B, m, m) float64.
  m.def("anderson_update(Tensor X, Tensor(a!) G, Tensor(b!) F, Tensor fz, Tensor(c!) H, Tensor(d!)? C, int slot, "
        "int n, Tensor active) -> (Tensor, Tensor)");
  m.def("anderson_solve(Tensor H, int n, float lam, int newest) -> (Tensor, Tensor)");
  m.def("anderson_mix(Tensor(a!) X, Tensor F, Tensor G, Tensor alpha, float beta, int slot, int n, "
        "Tensor active, Tensor(b!) z_best, Tensor best_key) -> ()");
  // Broyden (csrc/broyden/broyden.h): low-rank factors U, V (L, B, d).
  m.def("broyden_pass1(Tensor V, Tensor dx, Tensor fz, Tensor z, Tensor(a!) g_new, int n, Tensor active) -> Tensor");
  m.def("broyden_pass2(Tensor(a!) U, Tensor(b!)? V, Tensor dx, Tensor(c!) dx_next, Tensor z, Tensor(d!) z_next, "
        "Tensor g_new, Tensor g_old, Tensor coef, int slot, int n, Tensor active, Tensor(e!) z_best, "
        "Tensor best_key, int evict_key) -> Tensor");
}

namespace {
bool cuda_built() {
#ifdef LDEQ_WITH_CUDA
  return true;
#else
  return false;
#endif
}

// How many distinct threads at::parallel_for used for n one-element tasks. The kernels'
// parallel_for is an inline OpenMP region: built without -fopenmp this is always 1 (a test checks).
int64_t parallel_threads_used(int64_t n) {
  std::set<int> seen;
  std::mutex mu;
  at::parallel_for(0, n, 1, [&](int64_t, int64_t) {
    const std::lock_guard<std::mutex> lock(mu);
    seen.insert(at::get_thread_num());
  });
  return static_cast<int64_t>(seen.size());
}
std::string cpu_capability() { return ldeq::cpu::isa_name(ldeq::cpu::capability()); }
std::string max_cpu_capability() { return ldeq::cpu::isa_name(ldeq::cpu::max_capability()); }

std::string set_cpu_capability(const std::string& name) {
  ldeq::cpu::Isa isa;
  TORCH_CHECK_VALUE(ldeq::cpu::parse_isa(name, &isa),
                    "capability must be one of 'default', 'avx2', 'avx512', got '", name, "'");
  return ldeq::cpu::isa_name(ldeq::cpu::set_capability(isa));
}
}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "ldeq C++/CUDA kernels; the operators live in torch.ops.ldeq";
  m.def("cuda_built", &cuda_built, "True when the CUDA kernels were compiled into this build");
  m.def("parallel_threads_used", &parallel_threads_used,
        "Distinct threads at::parallel_for used for n one-element tasks inside ldeq._C");
  m.def("cpu_capability", &cpu_capability, "The CPU capability the kernels use now: default, avx2 or avx512");
  m.def("max_cpu_capability", &max_cpu_capability,
        "The highest CPU capability this CPU supports and this build compiled");
  m.def("huge_pages", &ldeq::huge_pages_enabled,
        "Whether large CPU kernel outputs get the transparent-huge-page hint (csrc/common/cpu_alloc.h)");
  m.def("set_huge_pages", &ldeq::set_huge_pages, "Turn the huge-page hint on or off; returns the previous setting");
  m.def("set_cpu_capability", &set_cpu_capability,
        "Force the CPU capability (capped at max_cpu_capability()); returns the one in effect");
}
