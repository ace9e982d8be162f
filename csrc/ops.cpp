// Every ldeq operator schema, declared in one place (torchvision style).
// Backends register kernels in csrc/<op>/<op>_cpu.cpp and csrc/<op>/<op>_cuda.cu with
// TORCH_LIBRARY_IMPL(ldeq, CPU/CUDA, m); Python adds fake kernels and autograd in ldeq/ops/.
#include <torch/extension.h>

TORCH_LIBRARY(ldeq, m) {
  // ---- heatmap (csrc/heatmap/heatmap.h) -------------------------------------------------
  m.def("heatmap_softargmax(Tensor logits, Tensor beta) -> Tensor");
  m.def("heatmap_softargmax_backward(Tensor grad_heatmaps, Tensor logits, Tensor beta, "
        "Tensor heatmaps) -> (Tensor, Tensor)");
  m.def("heatmap_decode(Tensor heatmaps, bool official_std=False) -> (Tensor, Tensor)");
  m.def("heatmap_decode_backward(Tensor grad_coords, Tensor grad_std, Tensor heatmaps, "
        "Tensor coords, Tensor std, bool official_std=False) -> Tensor");

  // ---- solvers (csrc/anderson, csrc/broyden) --------------------------------------------
  // (schemas for the solver kernels go here)
}

namespace {
bool cuda_built() {
#ifdef LDEQ_WITH_CUDA
  return true;
#else
  return false;
#endif
}
}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "ldeq C++/CUDA kernels; the operators live in torch.ops.ldeq";
  m.def("cuda_built", &cuda_built, "True when the CUDA kernels were compiled into this build");
}
