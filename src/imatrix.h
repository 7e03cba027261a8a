// Importance-matrix collection: the squared activations entering each weight matrix, summed per column (and
// per expert for MoE weights), as llama.cpp's tools/imatrix collects them. Attached to a context through
// cb_eval; lib/quantize/imatrix.ts turns the sums into llama.cpp's GGUF imatrix file.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "ggml.h"

namespace huozi {

struct ImatrixEntry {
  std::vector<double> values;  // sum of x^2, [n_mat][ne0]
  std::vector<int64_t> counts; // rows seen, per matrix (expert)
};

class ImatrixCollector final {
 public:
  // ggml_backend_sched_eval_callback
  static bool Callback(ggml_tensor *t, bool ask, void *user_data);
  const std::map<std::string, ImatrixEntry> &stats() const { return stats_; }
  bool failed() const { return !error_.empty(); }
  const std::string &error() const { return error_; }

 private:
  bool Collect(ggml_tensor *t, bool ask);
  std::map<std::string, ImatrixEntry> stats_;
  std::vector<char> src1_;
  std::vector<char> ids_;
  std::string error_;
};

}  // namespace huozi
