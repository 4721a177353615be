// C++ checks of the ear:: operators through the dispatcher (run by ctest).
#include <torch/torch.h>

#include <ATen/core/dispatch/Dispatcher.h>
#include <cstdio>
#include <cstdlib>

namespace {

int failures = 0;

void expect(bool ok, const char* what) {
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what);
  if (!ok) ++failures;
}

// the EAR paper's GMS constant (GMS_C in ear_stream/model/config.py, which Python passes to the op)
constexpr double kGmsC = 0.0026;

std::tuple<at::Tensor, at::Tensor> msgms(const at::Tensor& a, const at::Tensor& b, int64_t scales, bool want_map) {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("ear::msgms", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, int64_t,
                                                                 double, bool, int64_t, bool)>();
  return op.call(a, b, scales, kGmsC, true, 21, want_map);
}

std::tuple<at::Tensor, at::Tensor> excise(const at::Tensor& x, const c10::optional<at::Tensor>& att, int64_t m) {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("ear::excise", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const c10::optional<at::Tensor>&,
                                                                 int64_t, bool)>();
  return op.call(x, att, m, true);
}

}  // namespace

int main() {
  torch::manual_seed(0);
  {
    auto x = torch::full({2, 3, 40, 40}, 0.3f);
    auto [score, map] = msgms(x, x.clone(), 3, true);
    expect(score.abs().max().item<float>() < 1e-6f, "constant images score 0");
    expect(map.sizes() == at::IntArrayRef({2, 1, 40, 40}), "map has the image size");
  }
  {
    auto x = torch::rand({1, 3, 33, 47});
    auto y = torch::rand({1, 3, 33, 47});
    auto [score, map] = msgms(x, y, 3, false);
    expect(score.item<float>() > 0.f && map.numel() == 0, "different images score > 0, no map unless asked");
  }
  {
    auto x = torch::arange(25, torch::kFloat).view({1, 1, 5, 5});
    auto [comp, ratio] = excise(x, c10::nullopt, 2);
    expect(std::abs(comp[0][0][0][0].item<float>() - 3.f) < 1e-6f, "tile mean of (0,1,5,6) is 3");
    expect(std::abs(comp[0][0][4][4].item<float>() - 24.f) < 1e-6f, "partial corner tile is its own pixel");
    expect(ratio.item<float>() == 1.f, "no attention masks every pixel");
  }
  {
    bool threw = false;
    try {
      excise(torch::rand({3, 8, 8}), c10::nullopt, 2);
    } catch (const c10::Error&) {
      threw = true;
    }
    expect(threw, "rank-3 images raise c10::Error");
  }
  std::printf("%d failure(s)\n", failures);
  return failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
