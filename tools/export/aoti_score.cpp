// Score image files with a model exported by `ear-stream export --format aoti`: libtorch and the
// AOTInductor package loader only, no Python. Built by the top-level CMakeLists.txt (target aoti_score).
//
//   aoti_score EXPORT_DIR IMAGE...
//
// Prints `score<TAB>verdict<TAB>path` per image (verdict: score > the threshold in export.json), in batches of
// 16; the package and the manifest are checked against their sha256 in export.json first. Images are
// decoded with stb_image, converted to RGB in [0, 1] and resized as export.json's input.resize says
// (bilinear with antialias); the package's extension kernels (ear::excise, ear::msgms) come from the
// ear_ops library this program links.
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/torch.h>

#define STB_IMAGE_IMPLEMENTATION
#include <stb/stb_image.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iomanip>
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

// SHA-256 (FIPS 180-4) of a file, as hex: export.json lists the hash of every file, and a package is native
// code, so it is checked before it is loaded.
std::string sha256_file(const std::string& path) {
  static const std::array<uint32_t, 64> k = {
      0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
      0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
      0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
      0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
      0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
      0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
      0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
      0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};
  std::array<uint32_t, 8> h = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                               0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  auto rotr = [](uint32_t x, int n) { return (x >> n) | (x << (32 - n)); };
  auto block = [&](const unsigned char* p) {
    uint32_t w[64];
    for (int i = 0; i < 16; ++i)
      w[i] = (uint32_t(p[4 * i]) << 24) | (uint32_t(p[4 * i + 1]) << 16) | (uint32_t(p[4 * i + 2]) << 8) | p[4 * i + 3];
    for (int i = 16; i < 64; ++i) {
      const uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      const uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (int i = 0; i < 64; ++i) {
      const uint32_t t1 = hh + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + k[i] + w[i];
      const uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
      hh = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
    }
    h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e, h[5] += f, h[6] += g, h[7] += hh;
  };
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::vector<unsigned char> buf(1 << 16);
  uint64_t total = 0;
  size_t held = 0;  // bytes of an incomplete block at the front of buf
  while (in) {
    in.read(reinterpret_cast<char*>(buf.data() + held), static_cast<std::streamsize>(buf.size() - held));
    const size_t got = static_cast<size_t>(in.gcount());
    total += got;
    held += got;
    size_t off = 0;
    for (; off + 64 <= held; off += 64) block(buf.data() + off);
    if (off) std::memmove(buf.data(), buf.data() + off, held - off);
    held -= off;
  }
  std::vector<unsigned char> tail(buf.begin(), buf.begin() + held);
  tail.push_back(0x80);
  while (tail.size() % 64 != 56) tail.push_back(0);
  for (int i = 7; i >= 0; --i) tail.push_back(static_cast<unsigned char>((total * 8) >> (8 * i)));
  for (size_t off = 0; off < tail.size(); off += 64) block(tail.data() + off);
  std::ostringstream hex;
  for (uint32_t v : h) hex << std::hex << std::setw(8) << std::setfill('0') << v;
  return hex.str();
}

// The hash export.json lists for `name` ("files": {"name": "hex", ...}), checked against the file.
void verify(const std::string& dir, const std::string& json, const std::string& name) {
  std::smatch m;
  std::regex re("\"" + name + "\"\\s*:\\s*\"([0-9a-f]{64})\"");
  if (!std::regex_search(json, m, re)) throw std::runtime_error("export.json lists no hash for " + name);
  if (sha256_file(dir + "/" + name) != m[1].str())
    throw std::runtime_error(dir + "/" + name + " does not match its hash in export.json (corrupt or replaced)");
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
    if (!std::regex_search(json, std::regex("\"format\"\\s*:\\s*\"aoti\"")))
      throw std::runtime_error(dir + " holds no aoti export");
    const double size_read = json_number(json, "image_size");
    const double threshold = json_number(json, "threshold");
    if (!(size_read >= 1 && size_read <= 8192) || !std::isfinite(threshold))
      throw std::runtime_error("export.json: image_size or threshold out of range");
    const auto size = static_cast<int64_t>(size_read);
    verify(dir, json, "model.pt2");
    verify(dir, json, "manifest.json");
    torch::NoGradGuard no_grad;
    torch::inductor::AOTIModelPackageLoader loader(dir + "/model.pt2");
    constexpr int kBatch = 16;  // the package takes any batch from 1 to 4096; a bounded one bounds memory
    for (int first = 2; first < argc; first += kBatch) {
      std::vector<torch::Tensor> images;
      std::vector<std::string> paths;
      for (int i = first; i < argc && i < first + kBatch; ++i) {
        images.push_back(load_image(argv[i], size));
        paths.emplace_back(argv[i]);
      }
      auto outputs = loader.run({torch::cat(images).contiguous()});
      auto scores = outputs.at(0).to(torch::kFloat32).contiguous();
      for (size_t i = 0; i < paths.size(); ++i) {
        const float s = scores[static_cast<int64_t>(i)].item<float>();
        std::printf("%.6f\t%s\t%s\n", s, s > threshold ? "anomaly" : "ok", paths[i].c_str());
      }
    }
  } catch (const std::exception& exc) {
    std::cerr << "aoti_score: " << exc.what() << "\n";
    return 1;
  }
  return 0;
}
