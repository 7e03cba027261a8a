// quantize(input, output, params) -> undefined, synchronous. Called only by lib/quantize/child.ts, in a child
// process of its own: llama_model_quantize runs for minutes, can abort on a bad file, and has no progress
// callback, so the parent watches the child instead of running it in its own process.
#include <napi.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "errors.h"
#include "llama.h"
#include "log.h"

namespace huozi {
namespace {

struct Progress {
  int fd;
  double quant_mib = -1;
  bool requires_imatrix = false;
};

// llama-quant.cpp logs "[  12/ 291]   blk.0.attn_k.weight - ..." before each tensor, and after a dry run
// "quant size  = ... MiB" and, when the type needs one, a warning naming the imatrix.
void OnQuantizeLog(const char *text, void *data) {
  auto *p = static_cast<Progress *>(data);
  int i = 0, n = 0;
  double mib = 0;
  if (std::sscanf(text, "[%d/%d]", &i, &n) == 2) {
    if (p->fd < 0) return;
    char line[64];
    const int len = std::snprintf(line, sizeof line, "{\"tensor\":%d,\"of\":%d}\n", i, n);
    if (len > 0) (void)!write(p->fd, line, static_cast<size_t>(len));
  } else if (const char *q = std::strstr(text, "quant size  ="); q && std::sscanf(q, "quant size  = %lf", &mib) == 1) {
    p->quant_mib = mib;
  } else if (std::strstr(text, "will require an imatrix") != nullptr) {
    p->requires_imatrix = true;
  }
}

ggml_type TypeArg(Napi::Object o, const char *key) {
  Napi::Value v = o.Get(key);
  return v.IsNumber() ? static_cast<ggml_type>(v.As<Napi::Number>().Int32Value()) : GGML_TYPE_COUNT;
}

}  // namespace

Napi::Value Quantize(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsString() || !info[1].IsString() || !info[2].IsObject()) {
    Throw(env, code::kInvalidArgument, "quantize(input, output, params)");
  }
  const std::string input = info[0].As<Napi::String>().Utf8Value();
  const std::string output = info[1].As<Napi::String>().Utf8Value();
  Napi::Object o = info[2].As<Napi::Object>();

  llama_model_quantize_params qp = llama_model_quantize_default_params();
  qp.ftype = static_cast<llama_ftype>(o.Get("ftype").As<Napi::Number>().Int32Value());
  if (o.Get("threads").IsNumber()) qp.nthread = o.Get("threads").As<Napi::Number>().Int32Value();
  qp.allow_requantize = o.Get("allowRequantize").ToBoolean();
  qp.quantize_output_tensor = !o.Get("leaveOutputTensor").ToBoolean();
  qp.only_copy = o.Get("onlyCopy").ToBoolean();
  qp.pure = o.Get("pure").ToBoolean();
  qp.output_tensor_type = TypeArg(o, "outputTensorType");
  qp.token_embedding_type = TypeArg(o, "tokenEmbeddingType");
  qp.dry_run = o.Get("dryRun").ToBoolean();

  // llama.cpp opens the output with std::ofstream: it would write into a device, block on a FIFO, or follow a
  // symlink. The caller (lib/quantize/quantize.ts, through lib/util/output.ts) creates the output as an empty
  // temporary file, so anything but an existing regular file that is not a symlink is refused here. A dry run
  // writes nothing and does not look at the output.
  if (!qp.dry_run) {
    struct stat st {};
    if (lstat(output.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
      Throw(env, code::kInvalidArgument,
            "quantize: the output " + output + " is not a regular file (it must exist, created by the caller; not a symlink)");
    }
  }

  // Per-tensor type overrides: [{ pattern, type }], terminated by a null pattern.
  std::vector<std::string> patterns;
  std::vector<llama_model_tensor_override> overrides;
  if (o.Get("tensorTypes").IsArray()) {
    Napi::Array arr = o.Get("tensorTypes").As<Napi::Array>();
    patterns.reserve(arr.Length());
    for (uint32_t i = 0; i < arr.Length(); ++i) {
      Napi::Object item = arr.Get(i).As<Napi::Object>();
      patterns.push_back(item.Get("pattern").ToString().Utf8Value());
    }
    for (uint32_t i = 0; i < arr.Length(); ++i) {
      const auto type = static_cast<ggml_type>(arr.Get(i).As<Napi::Object>().Get("type").As<Napi::Number>().Int32Value());
      overrides.push_back({patterns[i].c_str(), type});
    }
    overrides.push_back({nullptr, GGML_TYPE_COUNT});
    qp.tt_overrides = overrides.data();
  }

  // Importance matrix: [{ name, data: Float32Array }], terminated by a null name.
  std::vector<std::string> names;
  std::vector<std::vector<float>> values;
  std::vector<llama_model_imatrix_data> imatrix;
  if (o.Get("imatrix").IsArray()) {
    Napi::Array arr = o.Get("imatrix").As<Napi::Array>();
    for (uint32_t i = 0; i < arr.Length(); ++i) {
      Napi::Object item = arr.Get(i).As<Napi::Object>();
      names.push_back(item.Get("name").ToString().Utf8Value());
      Napi::Float32Array data = item.Get("data").As<Napi::Float32Array>();
      values.emplace_back(data.Data(), data.Data() + data.ElementLength());
    }
    for (size_t i = 0; i < names.size(); ++i) imatrix.push_back({names[i].c_str(), values[i].data(), values[i].size()});
    imatrix.push_back({nullptr, nullptr, 0});
    qp.imatrix = imatrix.data();
  }

  // Metadata to add to the output (the imatrix's provenance, as llama-quantize records it).
  std::vector<llama_model_kv_override> kv;
  if (o.Get("metadata").IsArray()) {
    Napi::Array arr = o.Get("metadata").As<Napi::Array>();
    for (uint32_t i = 0; i < arr.Length(); ++i) {
      Napi::Object item = arr.Get(i).As<Napi::Object>();
      llama_model_kv_override ov{};
      const std::string key = item.Get("key").ToString().Utf8Value();
      if (key.size() >= sizeof ov.key) Throw(env, code::kOutOfRange, "metadata key too long: " + key);
      std::strncpy(ov.key, key.c_str(), sizeof ov.key - 1);
      Napi::Value value = item.Get("value");
      if (value.IsString()) {
        const std::string s = value.As<Napi::String>().Utf8Value();
        if (s.size() >= sizeof ov.val_str) Throw(env, code::kOutOfRange, "metadata value too long for " + key);
        ov.tag = LLAMA_KV_OVERRIDE_TYPE_STR;
        std::strncpy(ov.val_str, s.c_str(), sizeof ov.val_str - 1);
      } else {
        ov.tag = LLAMA_KV_OVERRIDE_TYPE_INT;
        ov.val_i64 = value.As<Napi::Number>().Int64Value();
      }
      kv.push_back(ov);
    }
    kv.emplace_back();
    kv.back().key[0] = 0;
    qp.kv_overrides = kv.data();
  }

  Progress progress{o.Get("progressFd").IsNumber() ? o.Get("progressFd").As<Napi::Number>().Int32Value() : -1};
  SetThreadLogHook(&OnQuantizeLog, &progress);
  TakeThreadErrors();
  const uint32_t status = llama_model_quantize(input.c_str(), output.c_str(), &qp);
  SetThreadLogHook(nullptr, nullptr);
  if (status != 0) {
    const std::string why = TakeThreadErrors();
    Throw(env, code::kQuantize, "llama_model_quantize failed" + (why.empty() ? std::string() : ": " + why));
  }
  Napi::Object result = Napi::Object::New(env);
  result.Set("quantMiB", progress.quant_mib);
  result.Set("requiresImatrix", progress.requires_imatrix);
  return result;
}

}  // namespace huozi
