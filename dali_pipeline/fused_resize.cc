// lmdb_dali_train__ResizeFlipNormalize: the CPU train graph's resize, flip and normalize in one DALI operator.
//
// Why: on the CPU, DALI's fn.resize (antialiased bilinear) plus fn.crop_mirror_normalize cost about as much as
// decoding (1.2 ms of 2.4 ms per ImageNet-sized image on one core). This operator computes torchvision's
// antialiased bilinear resize (PIL's triangle filter, widened by the scale when shrinking: the same weights
// as torchvision.transforms.v2.functional.resize(antialias=True) on float input) in two separable passes,
// and writes each output row already flipped, normalized and in the requested layout: one pass over the
// output instead of three, no intermediate images. Built by dali_pipeline/fused_resize.py against the
// installed DALI's headers (DALI 1.34 and 2.x); nothing here depends on a GPU.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "dali/core/float16.h"
#include "dali/pipeline/operator/operator.h"

namespace lmdb_dali_train {

using dali::CPUBackend;
using dali::Workspace;

// Filter taps of one axis: output i reads in[start[i] .. start[i] + count) with weights w[i * count ..].
// A fixed count per axis (zero-padded) keeps the inner loops branch-free.
struct Taps {
  int count = 0;
  std::vector<int> start;
  std::vector<float> w;
  std::vector<double> raw;  // unnormalised weights of one output, reused across samples
};

// PIL's precompute_coeffs for the bilinear (triangle) filter, as torchvision's antialiased resize uses it.
static void MakeTaps(int in, int out, Taps &t) {
  const double scale = static_cast<double>(in) / out;
  const double fscale = std::max(scale, 1.0);
  const double support = fscale;  // the triangle's support is 1, widened by the scale when shrinking
  const int count = std::min(static_cast<int>(std::ceil(support)) * 2 + 1, in);
  t.count = count;
  t.start.assign(out, 0);
  t.w.assign(static_cast<size_t>(out) * count, 0.f);
  t.raw.resize(count);
  std::vector<double> &ww = t.raw;
  for (int i = 0; i < out; i++) {
    const double center = (i + 0.5) * scale;
    const int lo = std::max(static_cast<int>(center - support + 0.5), 0);
    const int hi = std::min(static_cast<int>(center + support + 0.5), in);
    const int n = std::min(hi - lo, count);
    double total = 0;
    for (int j = 0; j < n; j++) {
      ww[j] = std::max(0.0, 1.0 - std::fabs((j + lo - center + 0.5) / fscale));
      total += ww[j];
    }
    const int s = std::min(lo, in - count);  // keep start + count inside the input
    t.start[i] = s;
    for (int j = 0; j < n; j++)
      t.w[static_cast<size_t>(i) * count + (lo - s) + j] = total > 0 ? static_cast<float>(ww[j] / total) : 0.f;
  }
}

// One output row of the vertical pass over interleaved rows (row_len = width * 3), vectorised: uint8 rows
// of the input, or float rows when the horizontal pass ran first.
template <typename In>
__attribute__((target_clones("avx2", "default")))
static void VerticalRow(const In *in, int row_len, const Taps &t, int y, float *dst) {
  const int count = t.count;
  const float *w = &t.w[static_cast<size_t>(y) * count];
  const In *base = in + static_cast<size_t>(t.start[y]) * row_len;
  std::fill(dst, dst + row_len, 0.f);
  for (int k = 0; k < count; k++) {
    const float wk = w[k];
    if (wk == 0.f) continue;
    const In *r = base + static_cast<size_t>(k) * row_len;
    for (int i = 0; i < row_len; i++) dst[i] += wk * static_cast<float>(r[i]);
  }
}

// uint8 row to float, for the horizontal pass done first
__attribute__((target_clones("avx2", "default")))
static void ToFloat(const uint8_t *in, int n, float *dst) {
  for (int i = 0; i < n; i++) dst[i] = static_cast<float>(in[i]);
}

// Pixels as 4-float vectors (R, G, B and one float of the next pixel, whose weight is never stored): GCC's
// portable vector extension, SSE on x86-64, NEON on aarch64. Rows carry one float of padding for it.
typedef float Pixel __attribute__((vector_size(16)));

static inline Pixel LoadPixel(const float *p) {
  Pixel v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <int kCount>
static void HorizontalRowFixed(const float *row, const Taps &t, int out_w, float *dst) {
  const int count = kCount > 0 ? kCount : t.count;
  for (int x = 0; x < out_w; x++) {
    const float *p = row + t.start[x] * 3;
    const float *w = &t.w[static_cast<size_t>(x) * count];
    Pixel acc = {0.f, 0.f, 0.f, 0.f};
    for (int k = 0; k < count; k++) acc += w[k] * LoadPixel(p + 3 * k);
    std::memcpy(dst + 3 * x, &acc, sizeof(acc));  // the 4th float is overwritten by the next pixel or padding
  }
}

static void HorizontalRow(const float *row, const Taps &t, int out_w, float *dst) {
  switch (t.count) {
    case 1: return HorizontalRowFixed<1>(row, t, out_w, dst);
    case 2: return HorizontalRowFixed<2>(row, t, out_w, dst);
    case 3: return HorizontalRowFixed<3>(row, t, out_w, dst);
    case 4: return HorizontalRowFixed<4>(row, t, out_w, dst);
    case 5: return HorizontalRowFixed<5>(row, t, out_w, dst);
    case 7: return HorizontalRowFixed<7>(row, t, out_w, dst);
    case 9: return HorizontalRowFixed<9>(row, t, out_w, dst);
    default: return HorizontalRowFixed<0>(row, t, out_w, dst);
  }
}

class ResizeFlipNormalize : public dali::Operator<CPUBackend> {
 public:
  explicit ResizeFlipNormalize(const dali::OpSpec &spec) : dali::Operator<CPUBackend>(spec) {
    auto mean = spec.GetRepeatedArgument<float>("mean");
    auto stddev = spec.GetRepeatedArgument<float>("std");
    DALI_ENFORCE(mean.size() == 3 && stddev.size() == 3, "mean and std need 3 values each (R, G, B)");
    for (int c = 0; c < 3; c++) {
      DALI_ENFORCE(stddev[c] != 0.f, "std must not be 0");
      mean_[c] = mean[c];
      inv_std_[c] = 1.f / stddev[c];
    }
    const std::string layout = spec.GetArgument<std::string>("output_layout");
    DALI_ENFORCE(layout == "CHW" || layout == "HWC", "output_layout must be CHW or HWC, got " + layout);
    chw_ = layout == "CHW";
    dtype_ = spec.GetArgument<dali::DALIDataType>("dtype");
    DALI_ENFORCE(dtype_ == dali::type2id<float>::value || dtype_ == dali::type2id<dali::float16>::value,
                 "dtype must be FLOAT or FLOAT16");
  }

  // DALI 1.x asks (a virtual there); 2.x no longer declares it
  bool CanInferOutputs() const { return true; }

 protected:
  bool SetupImpl(std::vector<dali::OutputDesc> &out, const Workspace &ws) override {
    const auto &in = ws.Input<CPUBackend>(0);
    const int n = in.num_samples();
    sizes_.resize(n);
    mirror_.resize(n);
    dali::TensorListShape<3> shape(n);
    for (int i = 0; i < n; i++) {
      auto sample = in.tensor_shape(i);
      DALI_ENFORCE(sample.size() == 3 && sample[2] == 3,
                   "lmdb_dali_train resize_flip_normalize takes HWC RGB images (3 channels)");
      const int s = static_cast<int>(std::lround(spec_.GetArgument<float>("size", &ws, i)));
      DALI_ENFORCE(s > 0, "size must be positive");
      sizes_[i] = s;
      mirror_[i] = spec_.GetArgument<int>("mirror", &ws, i);
      if (chw_)
        shape.set_tensor_shape(i, {3, s, s});
      else
        shape.set_tensor_shape(i, {s, s, 3});
    }
    out.resize(1);
    out[0] = {shape, dtype_};
    return true;
  }

  void RunImpl(Workspace &ws) override {
    const auto &in = ws.Input<CPUBackend>(0);
    auto &out = ws.Output<CPUBackend>(0);
    out.SetLayout(chw_ ? "CHW" : "HWC");
    auto &pool = ws.GetThreadPool();
    if (scratch_.size() < static_cast<size_t>(pool.NumThreads())) scratch_.resize(pool.NumThreads());
    const int n = in.num_samples();
    for (int i = 0; i < n; i++) {
      pool.AddWork([&, i](int tid) {
        auto shape = in.tensor_shape(i);
        const uint8_t *src = in.tensor<uint8_t>(i);
        if (dtype_ == dali::type2id<float>::value)
          Sample(src, shape[0], shape[1], i, out.mutable_tensor<float>(i), scratch_[tid]);
        else
          Sample(src, shape[0], shape[1], i, out.mutable_tensor<dali::float16>(i), scratch_[tid]);
      }, -i);  // FIFO, as DALI's own per-sample operators queue
    }
    pool.RunAll();
  }

 private:
  struct Scratch {
    Taps v, h;
    std::vector<float> row_v, row_h, rows;
  };

  template <typename Out>
  void Sample(const uint8_t *src, int H, int W, int i, Out *dst, Scratch &sc) {
    const int S = sizes_[i];
    const bool mirror = mirror_[i] != 0;
    MakeTaps(H, S, sc.v);
    MakeTaps(W, S, sc.h);
    sc.row_v.resize(static_cast<size_t>(W) * 3 + 1);  // + 1: the 4-float pixel loads and stores
    sc.row_h.resize(static_cast<size_t>(S) * 3 + 1);
    const size_t plane = static_cast<size_t>(S) * S;
    // the horizontal pass is the scalar one: run it over the fewer rows, the input's or the output's
    const bool h_first = H < S;
    if (h_first) {
      sc.rows.resize(static_cast<size_t>(H) * S * 3 + 1);
      for (int y = 0; y < H; y++) {
        ToFloat(src + static_cast<size_t>(y) * W * 3, W * 3, sc.row_v.data());
        HorizontalRow(sc.row_v.data(), sc.h, S, sc.rows.data() + static_cast<size_t>(y) * S * 3);
      }
    }
    for (int y = 0; y < S; y++) {
      if (h_first) {
        VerticalRow(sc.rows.data(), S * 3, sc.v, y, sc.row_h.data());
      } else {
        VerticalRow(src, W * 3, sc.v, y, sc.row_v.data());
        HorizontalRow(sc.row_v.data(), sc.h, S, sc.row_h.data());
      }
      const float *r = sc.row_h.data();
      if (chw_) {
        Out *o = dst + static_cast<size_t>(y) * S;
        for (int c = 0; c < 3; c++, o += plane) {
          const float m = mean_[c], k = inv_std_[c];
          for (int x = 0; x < S; x++) o[mirror ? S - 1 - x : x] = static_cast<Out>((r[3 * x + c] - m) * k);
        }
      } else {
        Out *o = dst + static_cast<size_t>(y) * S * 3;
        for (int x = 0; x < S; x++) {
          Out *p = o + 3 * (mirror ? S - 1 - x : x);
          for (int c = 0; c < 3; c++) p[c] = static_cast<Out>((r[3 * x + c] - mean_[c]) * inv_std_[c]);
        }
      }
    }
  }

  float mean_[3] = {0, 0, 0}, inv_std_[3] = {1, 1, 1};
  bool chw_ = true;
  dali::DALIDataType dtype_;
  std::vector<int> sizes_, mirror_;
  std::vector<Scratch> scratch_;
};

}  // namespace lmdb_dali_train

namespace dali {

DALI_REGISTER_OPERATOR(lmdb_dali_train__ResizeFlipNormalize, ::lmdb_dali_train::ResizeFlipNormalize, CPU);

DALI_SCHEMA(lmdb_dali_train__ResizeFlipNormalize)
    .DocStr("Resize an HWC uint8 RGB image to size x size with torchvision's antialiased bilinear filter, "
            "flip it horizontally where mirror is set, and normalize: (x - mean) / std, in one pass.")
    .NumInput(1)
    .NumOutput(1)
    .AddArg("size", "side of the square output", type2id<float>::value, true)
    .AddOptionalArg("mirror", "flip horizontally where nonzero", 0, true)
    .AddOptionalArg("mean", "per channel (R, G, B), on the input's 0-255 scale", std::vector<float>{0.f, 0.f, 0.f})
    .AddOptionalArg("std", "per channel (R, G, B), on the input's 0-255 scale", std::vector<float>{1.f, 1.f, 1.f})
    .AddOptionalArg("output_layout", "CHW or HWC", "CHW")
    .AddOptionalTypeArg("dtype", "FLOAT or FLOAT16", type2id<float>::value);

}  // namespace dali
