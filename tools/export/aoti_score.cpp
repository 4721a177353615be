// Score image files with a model exported by `ear-stream export --format aoti`: libtorch and the
// AOTInductor package loader only, no Python. Built by the top-level CMakeLists.txt (target aoti_score).
//
//   aoti_score EXPORT_DIR IMAGE...
//
// Prints `score<TAB>verdict<TAB>path` per image (verdict: score > the threshold in export.json). Images are
// decoded with stb_image, converted to RGB in [0, 1] and resized as export.json's input.resize says
// (bilinear with antialias); the package's extension kernels (ear::excise, ear::msgms) come from the
// ear_ops library this program links.
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/torch.h>

#define STB_IMAGE_IMPLEMENTATION
#include <stb/stb_image.h>

#include <fstream>
#include <iostream>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

namespace {

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// export.json is written by ear-stream: a number field is `"name": value`. No JSON library is needed for
// the two numbers read here (a consumer that needs more uses a JSON parser).
double json_number(const std::string& json, const std::string& key) {
  std::smatch m;
  std::regex re("\"" + key + "\"\\s*:\\s*(-?[0-9.eE+-]+)");
  if (!std::regex_search(json, m, re)) throw std::runtime_error("export.json has no number " + key);
  return std::stod(m[1].str());
}

torch::Tensor load_image(const std::string& path, int64_t size) {
  int w = 0, h = 0, c = 0;
  unsigned char* data = stbi_load(path.c_str(), &w, &h, &c, 3);
  if (data == nullptr) throw std::runtime_error("cannot decode " + path + ": " + stbi_failure_reason());
  auto img = torch::from_blob(data, {h, w, 3}, torch::kUInt8).clone();
  stbi_image_free(data);
  auto t = img.permute({2, 0, 1}).unsqueeze(0).to(torch::kFloat32).div_(255.0);
  if (h != size || w != size) {
    namespace F = torch::nn::functional;
    t = F::interpolate(t, F::InterpolateFuncOptions()
                              .size(std::vector<int64_t>{size, size})
                              .mode(torch::kBilinear)
                              .align_corners(false)
                              .antialias(true));
  }
  return t.clamp_(0.0, 1.0);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: " << argv[0] << " EXPORT_DIR IMAGE...\n";
    return 2;
  }
  try {
    const std::string dir = argv[1];
    const std::string json = read_file(dir + "/export.json");
    if (json.find("\"format\": \"aoti\"") == std::string::npos)
      throw std::runtime_error(dir + " holds no aoti export");
    const auto size = static_cast<int64_t>(json_number(json, "image_size"));
    const double threshold = json_number(json, "threshold");
    torch::NoGradGuard no_grad;
    torch::inductor::AOTIModelPackageLoader loader(dir + "/model.pt2");
    std::vector<torch::Tensor> images;
    std::vector<std::string> paths;
    for (int i = 2; i < argc; ++i) {
      images.push_back(load_image(argv[i], size));
      paths.emplace_back(argv[i]);
    }
    auto outputs = loader.run({torch::cat(images).contiguous()});
    auto scores = outputs.at(0).to(torch::kFloat32).contiguous();
    for (size_t i = 0; i < paths.size(); ++i) {
      const float s = scores[static_cast<int64_t>(i)].item<float>();
      std::printf("%.6f\t%s\t%s\n", s, s > threshold ? "anomaly" : "ok", paths[i].c_str());
    }
  } catch (const std::exception& exc) {
    std::cerr << "aoti_score: " << exc.what() << "\n";
    return 1;
  }
  return 0;
}
