// adapt_pte: few-shot adaptation ON the device with a metaprune ExecuTorch program.
//
//   adapt_pte MODEL.pte SUPPORT_X.f32 SUPPORT_Y.i64 QUERIES.f32 [STEPS]
//
// Loads the program written by `metaprune export-executorch`, runs STEPS (default: the
// stored rule's) SGD steps of its training method `adapt_loss` on the support set, then
// predicts the queries with its `predict` method, printing one class index per query.
// The .f32/.i64 files are raw little-endian arrays (make_inputs.py writes them from an
// episode folder): support images (N, C, H, W) float32 in [0, 1], their labels int64, and
// the query images (Q, C, H, W) float32.
//
// The program already scales each gradient by lr * mask (pruned weights get 0 and stay 0),
// so the optimiser is plain SGD with the learning rate in its metadata ("sgd_lr" = 1).

#include <executorch/extension/data_loader/file_data_loader.h>
#include <executorch/extension/tensor/tensor.h>
#include <executorch/extension/training/module/training_module.h>
#include <executorch/extension/training/optimizer/sgd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

using executorch::extension::FileDataLoader;
using executorch::extension::make_tensor_ptr;
using executorch::extension::training::TrainingModule;
using executorch::extension::training::optimizer::SGD;
using executorch::extension::training::optimizer::SGDOptions;
using executorch::runtime::EValue;
using executorch::runtime::Error;

namespace {

template <typename T>
std::vector<T> read_raw(const char* path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) {
    std::fprintf(stderr, "cannot read '%s'\n", path);
    std::exit(1);
  }
  std::vector<char> bytes((std::istreambuf_iterator<char>(f)), {});
  if (bytes.size() % sizeof(T) != 0) {
    std::fprintf(stderr, "'%s': %zu bytes is not a whole number of %zu-byte values\n", path,
                 bytes.size(), sizeof(T));
    std::exit(1);
  }
  std::vector<T> out(bytes.size() / sizeof(T));
  std::memcpy(out.data(), bytes.data(), bytes.size());
  return out;
}

// A number after "key": in the program's metadata JSON (flat enough for a string search).
double json_number(const std::string& json, const std::string& key) {
  const auto at = json.find("\"" + key + "\":");
  if (at == std::string::npos) {
    std::fprintf(stderr, "metadata has no '%s'\n", key.c_str());
    std::exit(1);
  }
  return std::strtod(json.c_str() + at + key.size() + 3, nullptr);
}

void check(Error err, const char* what) {
  if (err != Error::Ok) {
    std::fprintf(stderr, "%s failed (ExecuTorch error 0x%x)\n", what,
                 static_cast<unsigned>(err));
    std::exit(1);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 5 || argc > 6) {
    std::fprintf(stderr,
                 "usage: %s MODEL.pte SUPPORT_X.f32 SUPPORT_Y.i64 QUERIES.f32 [STEPS]\n",
                 argv[0]);
    return 2;
  }
  auto loader = FileDataLoader::from(argv[1]);
  check(loader.error(), "opening the program");
  TrainingModule mod(std::make_unique<FileDataLoader>(std::move(loader.get())));

  // metadata: UTF-8 JSON in a uint8 tensor
  auto meta_out = mod.execute("metaprune_meta");
  check(meta_out.error(), "reading the metadata (not a metaprune program?)");
  const auto& meta_t = meta_out.get()[0].toTensor();
  const std::string meta(meta_t.const_data_ptr<char>(), meta_t.numel());
  const int steps = argc == 6 ? std::atoi(argv[5])
                              : static_cast<int>(json_number(meta, "steps"));
  const double sgd_lr = json_number(meta, "sgd_lr");

  // the support set's static shape is the predict method's first input
  auto pm = mod.method_meta("predict");
  check(pm.error(), "reading predict's signature");
  auto in0 = pm->input_tensor_meta(0);
  check(in0.error(), "reading predict's first input");
  const auto sz = in0->sizes();
  const int64_t n = sz[0], c = sz[1], h = sz[2], w = sz[3];

  auto sx_data = read_raw<float>(argv[2]);
  auto sy_data = read_raw<int64_t>(argv[3]);
  auto qx_data = read_raw<float>(argv[4]);
  if (static_cast<int64_t>(sx_data.size()) != n * c * h * w ||
      static_cast<int64_t>(sy_data.size()) != n || qx_data.size() % (c * h * w) != 0) {
    std::fprintf(stderr, "the program takes %lld support images of %lldx%lldx%lld and as "
                 "many labels; queries of the same image shape\n", (long long)n,
                 (long long)c, (long long)h, (long long)w);
    return 1;
  }
  const int64_t q = qx_data.size() / (c * h * w);
  auto sx = make_tensor_ptr({static_cast<int32_t>(n), static_cast<int32_t>(c),
                             static_cast<int32_t>(h), static_cast<int32_t>(w)},
                            std::move(sx_data));
  auto sy = make_tensor_ptr({static_cast<int32_t>(n)}, std::move(sy_data));
  auto qx = make_tensor_ptr({static_cast<int32_t>(q), static_cast<int32_t>(c),
                             static_cast<int32_t>(h), static_cast<int32_t>(w)},
                            std::move(qx_data));

  // adaptation: `adapt_loss` exists unless the rule adapts nothing (ProtoNet)
  std::vector<EValue> adapted;
  auto names = mod.method_names();
  check(names.error(), "listing the methods");
  if (names->count("adapt_loss")) {
    auto params = mod.named_parameters("adapt_loss");
    check(params.error(), "getting the trainable parameters");
    SGD sgd(params.get(), SGDOptions{sgd_lr});
    for (int s = 0; s < steps; ++s) {
      auto out = mod.execute_forward_backward("adapt_loss", {*sx, *sy});
      check(out.error(), "adapt_loss (forward + backward)");
      std::printf("step %d: support loss %.6f\n", s + 1,
                  out.get()[0].toTensor().const_data_ptr<float>()[0]);
      auto grads = mod.named_gradients("adapt_loss");
      check(grads.error(), "getting the gradients");
      check(sgd.step(grads.get()), "SGD step");
    }
    // predict takes them in the order p0, p1, ... (std::map sorts p10 before p2)
    std::map<int, executorch::aten::Tensor> by_index;
    for (const auto& [name, tensor] : params.get()) {
      by_index.emplace(std::atoi(std::string(name.substr(1)).c_str()), tensor);
    }
    for (const auto& [i, tensor] : by_index) {
      adapted.emplace_back(tensor);
    }
  }

  std::vector<EValue> inputs{*sx, *sy, *qx};
  inputs.insert(inputs.end(), adapted.begin(), adapted.end());
  auto out = mod.execute("predict", inputs);
  check(out.error(), "predict (query count above the program's max_queries?)");
  const auto& logits = out.get()[0].toTensor();
  const int64_t ways = logits.size(1);
  const float* l = logits.const_data_ptr<float>();
  for (int64_t i = 0; i < q; ++i) {
    int64_t best = 0;
    for (int64_t k = 1; k < ways; ++k) {
      if (l[i * ways + k] > l[i * ways + best]) best = k;
    }
    std::printf("query %lld: class %lld\n", (long long)i, (long long)best);
  }
  return 0;
}
