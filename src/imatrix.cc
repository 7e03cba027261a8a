#include "imatrix.h"

#include <cmath>
#include <cstring>

#include "ggml-backend.h"

namespace huozi {
namespace {

// "blk.0.ffn_up_exps.weight" out of names such as "CUDA0#blk.0.ffn_up_exps.weight#0".
std::string WeightName(const char *name) {
  const char *p = std::strchr(name, '#');
  if (p == nullptr) return name;
  ++p;
  const char *q = std::strchr(p, '#');
  return q ? std::string(p, q - p) : std::string(p);
}

}  // namespace

bool ImatrixCollector::Callback(ggml_tensor *t, bool ask, void *user_data) {
  return static_cast<ImatrixCollector *>(user_data)->Collect(t, ask);
}

bool ImatrixCollector::Collect(ggml_tensor *t, bool ask) {
  const ggml_tensor *src0 = t->src[0];
  const ggml_tensor *src1 = t->src[1];
  if (ask) {
    if (t->op == GGML_OP_MUL_MAT_ID) return true;
    if (t->op != GGML_OP_MUL_MAT) return false;
    // As tools/imatrix: skip small batches and anything but the layers' weights.
    if (src1->ne[1] < 16 || src1->type != GGML_TYPE_F32) return false;
    return WeightName(src0->name).rfind("blk.", 0) == 0;
  }
  if (!error_.empty() || src1->type != GGML_TYPE_F32 || src1->nb[0] != sizeof(float)) return true;
  const std::string name = WeightName(src0->name);
  const bool is_host = src1->buffer == nullptr || ggml_backend_buffer_is_host(src1->buffer);
  if (!is_host) {
    src1_.resize(ggml_nbytes(src1));
    ggml_backend_tensor_get(src1, src1_.data(), 0, src1_.size());
  }
  const char *data = is_host ? static_cast<const char *>(src1->data) : src1_.data();
  const int64_t ne0 = src1->ne[0];
  ImatrixEntry &e = stats_[name];

  if (t->op == GGML_OP_MUL_MAT_ID) {
    const ggml_tensor *ids = t->src[2];
    const int64_t n_as = src0->ne[2];
    const int64_t n_ids = ids->ne[0];
    const int64_t n_tokens = src1->ne[2];
    if (ids->ne[1] != n_tokens || ggml_nrows(src1) != src1->ne[1] * src1->ne[2]) {
      error_ = "unexpected MUL_MAT_ID shapes for " + name;
      return true;
    }
    ids_.resize(ggml_nbytes(ids));
    ggml_backend_tensor_get(ids, ids_.data(), 0, ids_.size());
    if (e.values.empty()) {
      e.values.assign(static_cast<size_t>(ne0 * n_as), 0.0);
      e.counts.assign(static_cast<size_t>(n_as), 0);
    } else if (e.values.size() != static_cast<size_t>(ne0 * n_as)) {
      error_ = "inconsistent sizes for " + name;
      return true;
    }
    for (int64_t idx = 0; idx < n_ids; ++idx) {
      for (int64_t row = 0; row < n_tokens; ++row) {
        const int32_t ex = *reinterpret_cast<const int32_t *>(ids_.data() + row * ids->nb[1] + idx * ids->nb[0]);
        if (ex < 0 || ex >= n_as) continue;
        const int64_t i11 = idx % src1->ne[1];
        const float *x = reinterpret_cast<const float *>(data + i11 * src1->nb[1] + row * src1->nb[2]);
        double *acc = e.values.data() + ex * ne0;
        e.counts[ex]++;
        for (int64_t j = 0; j < ne0; ++j) acc[j] += static_cast<double>(x[j]) * x[j];
      }
    }
  } else {
    const int64_t n_mat = src0->ne[2] * src0->ne[3];
    if (e.values.empty()) {
      e.values.assign(static_cast<size_t>(ne0 * n_mat), 0.0);
      e.counts.assign(1, 0);
    } else if (e.values.size() != static_cast<size_t>(ne0 * n_mat)) {
      error_ = "inconsistent sizes for " + name;
      return true;
    }
    for (int64_t i3 = 0; i3 < src1->ne[3]; ++i3) {
      for (int64_t i2 = 0; i2 < src1->ne[2]; ++i2) {
        const int64_t mat = (i3 % src0->ne[3]) * src0->ne[2] + (i2 % src0->ne[2]);
        double *acc = e.values.data() + mat * ne0;
        for (int64_t row = 0; row < src1->ne[1]; ++row) {
          const float *x = reinterpret_cast<const float *>(data + row * src1->nb[1] + i2 * src1->nb[2] + i3 * src1->nb[3]);
          for (int64_t j = 0; j < ne0; ++j) acc[j] += static_cast<double>(x[j]) * x[j];
        }
      }
    }
    e.counts[0] += ggml_nrows(src1) / n_mat;
  }
  return true;
}

}  // namespace huozi
