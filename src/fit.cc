// Devices, memory estimates and automatic fitting, through llama.cpp's own common/fit.cpp: it loads the model
// with no_alloc (metadata only, nothing allocated) and measures what each device would hold.
//   devices() -> [{ index, name, description, type, free, total }]
//   estimateMemory(path, params) -> Promise<[{ name, free, total, model, context, compute }]> (last: host)
//   fitParams(path, params) -> Promise<{ status, gpuLayers, contextSize, tensorSplit, overrides: [{ pattern, buffer }] }>
#include <napi.h>

#include <algorithm>
#include <mutex>
#include <string>
#include <vector>

#include "errors.h"
#include "fit.h"
#include "ggml-backend.h"
#include "llama.h"
#include "log.h"
#include "placement.h"
#include "promise_worker.h"

namespace huozi {
namespace {

// common_fit_params replaces llama.cpp's global logger while it runs and is not thread-safe.
std::mutex fit_mutex;

const char *DeviceType(ggml_backend_dev_t dev) {
  switch (ggml_backend_dev_type(dev)) {
    case GGML_BACKEND_DEVICE_TYPE_CPU: return "cpu";
    case GGML_BACKEND_DEVICE_TYPE_GPU: return "gpu";
    case GGML_BACKEND_DEVICE_TYPE_IGPU: return "igpu";
    default: return "accel";
  }
}

struct FitArgs {
  std::string path;
  int32_t gpu_layers = -1;  // -1: let the fit choose (llama_model_default_params' value)
  uint32_t n_ctx = 0;
  uint32_t n_batch = 512;
  uint32_t n_ubatch = 512;
  int32_t flash_attention = -1;
  int64_t margin = 1024ll * 1024 * 1024;
  uint32_t n_ctx_min = 0;
  // The most a plan may use per GPU: for every GPU (-1: no cap), and per device name.
  int64_t budget = -1;
  std::vector<std::pair<std::string, int64_t>> budgets;
  std::vector<std::pair<std::string, std::string>> overrides;  // tensor pattern -> device or buffer name
  std::vector<std::string> rpc_servers;  // "host:port", checked reachable (lib/rpc.ts); estimateMemory only
};

FitArgs ParseFitArgs(Napi::Env env, const Napi::CallbackInfo &info) {
  if (info.Length() < 2 || !info[0].IsString() || !info[1].IsObject()) Throw(env, code::kInvalidArgument, "(path, params)");
  FitArgs a;
  a.path = info[0].As<Napi::String>().Utf8Value();
  Napi::Object o = info[1].As<Napi::Object>();
  auto num = [&](const char *k) { return o.Get(k).IsNumber() ? o.Get(k).As<Napi::Number>().Int64Value() : INT64_MIN; };
  if (num("gpuLayers") != INT64_MIN) a.gpu_layers = static_cast<int32_t>(num("gpuLayers"));
  if (num("contextSize") != INT64_MIN) a.n_ctx = static_cast<uint32_t>(num("contextSize"));
  if (num("batchSize") != INT64_MIN) a.n_batch = static_cast<uint32_t>(num("batchSize"));
  if (num("ubatchSize") != INT64_MIN) a.n_ubatch = static_cast<uint32_t>(num("ubatchSize"));
  if (num("flashAttention") != INT64_MIN) a.flash_attention = static_cast<int32_t>(num("flashAttention"));
  if (num("marginBytes") != INT64_MIN) a.margin = num("marginBytes");
  if (num("minContextSize") != INT64_MIN) a.n_ctx_min = static_cast<uint32_t>(num("minContextSize"));
  if (num("budgetBytes") != INT64_MIN) a.budget = num("budgetBytes");
  if (o.Get("budgets").IsObject()) {
    Napi::Object b = o.Get("budgets").As<Napi::Object>();
    Napi::Array names = b.GetPropertyNames();
    for (uint32_t i = 0; i < names.Length(); ++i) {
      const std::string name = names.Get(i).ToString().Utf8Value();
      a.budgets.emplace_back(name, b.Get(name).As<Napi::Number>().Int64Value());
    }
  }
  if (o.Get("rpcServers").IsArray()) {
    Napi::Array list = o.Get("rpcServers").As<Napi::Array>();
    for (uint32_t i = 0; i < list.Length(); ++i) a.rpc_servers.push_back(list.Get(i).ToString().Utf8Value());
  }
  if (o.Get("overrides").IsArray()) {
    Napi::Array list = o.Get("overrides").As<Napi::Array>();
    for (uint32_t i = 0; i < list.Length(); ++i) {
      Napi::Object e = list.Get(i).As<Napi::Object>();
      a.overrides.emplace_back(e.Get("pattern").ToString().Utf8Value(), e.Get("buffer").ToString().Utf8Value());
    }
  }
  return a;
}

// The free memory each device must keep: the margin, or more where a budget caps what the plan may use
// (free - budget). A budget naming no device is an error (lib/gpu.ts checks the names first).
std::vector<size_t> Margins(const FitArgs &a) {
  std::vector<size_t> margins(llama_max_devices(), static_cast<size_t>(a.margin));
  const std::vector<ggml_backend_dev_t> devs = LocalModelDevices();  // common_fit_params reads one margin per device in it
  for (size_t i = 0; i < devs.size() && i < margins.size(); ++i) {
    int64_t budget = a.budget;
    for (const auto &[name, bytes] : a.budgets) {
      if (name == ggml_backend_dev_name(devs[i])) budget = bytes;
    }
    if (budget < 0) continue;
    size_t free = 0, total = 0;
    ggml_backend_dev_memory(devs[i], &free, &total);
    const int64_t keep = static_cast<int64_t>(free) - budget;
    margins[i] = static_cast<size_t>(std::max<int64_t>(a.margin, keep));
  }
  return margins;
}

struct LlamaParams {
  llama_model_params mp;
  llama_context_params cp;
  ResolvedOverrides overrides;  // mp.tensor_buft_overrides points into it
  std::vector<ggml_backend_dev_t> devices;  // with RPC servers: mp.devices points into it
};

LlamaParams Params(const FitArgs &a) {
  LlamaParams p{llama_model_default_params(), llama_context_default_params(), {}, {}};
  llama_model_params &mp = p.mp;
  llama_context_params &cp = p.cp;
  if (a.gpu_layers >= 0) mp.n_gpu_layers = a.gpu_layers;
  cp.n_ctx = a.n_ctx;
  cp.n_batch = a.n_batch;
  cp.n_ubatch = a.n_ubatch;
  cp.flash_attn_type = static_cast<llama_flash_attn_type>(a.flash_attention);
  return p;
}

// The RPC devices and tensor overrides of `a` into `p` (after `p` has its final place: the parameters point into it).
void BindOverrides(const FitArgs &a, LlamaParams &p) {
  if (!a.rpc_servers.empty()) {
    const std::string error = RpcDevices(a.rpc_servers, p.devices);
    if (!error.empty()) throw CodedError(code::kModelLoad, error);
    p.mp.devices = p.devices.data();
  }
  p.overrides = ResolveOverrides(a.overrides, p.devices);
  if (!p.overrides.error.empty()) throw CodedError(code::kModelLoad, p.overrides.error);
  p.mp.tensor_buft_overrides = p.overrides.list.empty() ? nullptr : p.overrides.list.data();
}

Napi::Value Devices(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  Napi::Array out = Napi::Array::New(env);
  for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
    ggml_backend_dev_t dev = ggml_backend_dev_get(i);
    size_t free = 0, total = 0;
    ggml_backend_dev_memory(dev, &free, &total);
    Napi::Object d = Napi::Object::New(env);
    d.Set("index", static_cast<double>(i));
    d.Set("name", ggml_backend_dev_name(dev));
    d.Set("description", ggml_backend_dev_description(dev));
    d.Set("type", DeviceType(dev));
    d.Set("free", static_cast<double>(free));
    d.Set("total", static_cast<double>(total));
    out.Set(static_cast<uint32_t>(i), d);
  }
  return out;
}

struct Estimate {
  std::vector<std::string> names;
  common_device_memory_data_vec data;
  uint32_t layers = 0, n_ctx_train = 0, experts = 0;
};

Napi::Value EstimateMemory(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  FitArgs a = ParseFitArgs(env, info);
  return PromiseWorker<Estimate>::Start(
      env, Napi::Object::New(env), code::kModelLoad,
      [a]() {
        std::lock_guard<std::mutex> lock(fit_mutex);
        LlamaParams p = Params(a);
        BindOverrides(a, p);
        Estimate e;
        std::vector<ggml_backend_dev_t> devs;
        e.data = common_get_device_memory_data(a.path.c_str(), &p.mp, &p.cp, devs, e.layers, e.n_ctx_train, e.experts, GGML_LOG_LEVEL_ERROR);
        InstallLogHandler();
        for (ggml_backend_dev_t d : devs) e.names.push_back(ggml_backend_dev_name(d));
        e.names.push_back("host");
        if (e.data.empty()) throw CodedError(code::kModelLoad, "llama.cpp could not estimate the memory for " + a.path);
        return e;
      },
      [](Napi::Env env, Estimate &e) -> Napi::Value {
        Napi::Array out = Napi::Array::New(env);
        for (size_t i = 0; i < e.data.size(); ++i) {
          Napi::Object d = Napi::Object::New(env);
          d.Set("name", i < e.names.size() ? e.names[i] : std::string("device ") + std::to_string(i));
          d.Set("free", static_cast<double>(e.data[i].free));
          d.Set("total", static_cast<double>(e.data[i].total));
          d.Set("model", static_cast<double>(e.data[i].model));
          d.Set("context", static_cast<double>(e.data[i].context));
          d.Set("compute", static_cast<double>(e.data[i].compute));
          out.Set(static_cast<uint32_t>(i), d);
        }
        return out;
      });
}

struct Fitted {
  int status = 0;
  int32_t gpu_layers = 0;
  uint32_t n_ctx = 0;
  std::vector<float> split;
  std::vector<std::pair<std::string, std::string>> overrides;
};

Napi::Value FitParams(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  FitArgs a = ParseFitArgs(env, info);
  return PromiseWorker<Fitted>::Start(
      env, Napi::Object::New(env), code::kModelLoad,
      [a]() {
        std::lock_guard<std::mutex> lock(fit_mutex);
        LlamaParams p = Params(a);
        llama_model_params &mp = p.mp;
        llama_context_params &cp = p.cp;
        std::vector<float> split(llama_max_devices(), 0.0f);
        std::vector<llama_model_tensor_buft_override> overrides(llama_max_tensor_buft_overrides(), {nullptr, nullptr});
        std::vector<size_t> margins = Margins(a);
        Fitted f;
        f.status = common_fit_params(a.path.c_str(), &mp, &cp, split.data(), overrides.data(), margins.data(), a.n_ctx_min,
                                     nullptr, GGML_LOG_LEVEL_ERROR);
        InstallLogHandler();
        f.gpu_layers = mp.n_gpu_layers;
        f.n_ctx = cp.n_ctx;
        f.split = split;
        for (const auto &o : overrides) {
          if (o.pattern == nullptr) break;
          f.overrides.emplace_back(o.pattern, o.buft ? ggml_backend_buft_name(o.buft) : "");
        }
        return f;
      },
      [](Napi::Env env, Fitted &f) -> Napi::Value {
        Napi::Object out = Napi::Object::New(env);
        out.Set("status", f.status == COMMON_PARAMS_FIT_STATUS_SUCCESS ? "fits" : f.status == COMMON_PARAMS_FIT_STATUS_FAILURE ? "doesNotFit" : "error");
        out.Set("gpuLayers", f.gpu_layers);
        out.Set("contextSize", f.n_ctx);
        Napi::Array split = Napi::Array::New(env, f.split.size());
        for (size_t i = 0; i < f.split.size(); ++i) split.Set(static_cast<uint32_t>(i), f.split[i]);
        out.Set("tensorSplit", split);
        Napi::Array ov = Napi::Array::New(env, f.overrides.size());
        for (size_t i = 0; i < f.overrides.size(); ++i) {
          Napi::Object o = Napi::Object::New(env);
          o.Set("pattern", f.overrides[i].first);
          o.Set("buffer", f.overrides[i].second);
          ov.Set(static_cast<uint32_t>(i), o);
        }
        out.Set("overrides", ov);
        return out;
      });
}

}  // namespace

void RegisterFit(Napi::Env env, Napi::Object exports) {
  exports.Set("devices", Napi::Function::New(env, Devices));
  exports.Set("estimateMemory", Napi::Function::New(env, EstimateMemory));
  exports.Set("fitParams", Napi::Function::New(env, FitParams));
}

}  // namespace huozi
