#include "lora.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "addon_data.h"
#include "errors.h"
#include "log.h"
#include "model.h"
#include "promise_worker.h"

namespace huozi {

namespace code {
constexpr const char *kLora = "ERR_HUOZI_LORA";
}

LoraHandle::~LoraHandle() { llama_adapter_lora_free(adapter); }

Napi::Function Lora::Init(Napi::Env env) {
  return DefineClass(env, "NativeLora",
                     {
                         InstanceMethod<&Lora::Info>("info"),
                         InstanceMethod<&Lora::Dispose>("dispose"),
                         InstanceAccessor<&Lora::Disposed>("disposed"),
                     });
}

Napi::Value Lora::Load(Napi::Env env, std::shared_ptr<ModelHandle> model, const std::string &path) {
  struct Loaded {
    std::shared_ptr<LoraHandle> handle;
  };
  return PromiseWorker<Loaded>::Start(
      env, Napi::Object::New(env), code::kLora,
      [model, path]() {
        TakeThreadErrors();
        llama_adapter_lora *adapter = llama_adapter_lora_init(model->model, path.c_str());
        if (adapter == nullptr) {
          std::string why = TakeThreadErrors();
          throw CodedError(code::kLora, "failed to load the LoRA adapter " + path + (why.empty() ? "" : ": " + why));
        }
        // An activated LoRA (aLoRA) applies only after its invocation tokens: llama-server's per-request logic
        // that we do not have. Refused rather than applied everywhere.
        if (llama_adapter_get_alora_n_invocation_tokens(adapter) > 0) {
          llama_adapter_lora_free(adapter);
          throw CodedError(code::kLora, "activated LoRA adapters (adapter.alora.invocation_tokens) are not supported: " + path);
        }
        return Loaded{std::make_shared<LoraHandle>(model, adapter)};
      },
      [path](Napi::Env env, Loaded &loaded) -> Napi::Value {
        Napi::Object object = Data(env).lora_ctor.New({});
        Lora *lora = Lora::Unwrap(object);
        lora->handle_ = std::move(loaded.handle);
        lora->path_ = path;
        return object;
      });
}

Lora::Lora(const Napi::CallbackInfo &info) : Napi::ObjectWrap<Lora>(info) {}

// info() -> { alpha, metadata: { key: value } }
Napi::Value Lora::Info(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (handle_ == nullptr) Throw(env, code::kDisposed, "This LoRA adapter has been disposed");
  const llama_adapter_lora *a = handle_->adapter;
  Napi::Object out = Napi::Object::New(env);
  Napi::Object meta = Napi::Object::New(env);
  std::vector<char> key(512), value(4096);
  const int32_t n = llama_adapter_meta_count(a);
  for (int32_t i = 0; i < n; ++i) {
    if (llama_adapter_meta_key_by_index(a, i, key.data(), key.size()) < 0) continue;
    int32_t len = llama_adapter_meta_val_str_by_index(a, i, value.data(), value.size());
    if (len < 0) continue;
    if (static_cast<size_t>(len) >= value.size()) {
      value.resize(static_cast<size_t>(len) + 1);
      llama_adapter_meta_val_str_by_index(a, i, value.data(), value.size());
    }
    meta.Set(key.data(), Napi::String::New(env, value.data()));
  }
  out.Set("metadata", meta);
  out.Set("path", path_);
  return out;
}

Napi::Value Lora::Dispose(const Napi::CallbackInfo &info) {
  handle_.reset();  // contexts that apply it keep it until they change their adapters or are freed
  return info.Env().Undefined();
}

Napi::Value Lora::Disposed(const Napi::CallbackInfo &info) { return Napi::Boolean::New(info.Env(), handle_ == nullptr); }

LoraSet LorasFromJs(Napi::Env env, Napi::Value value, const ModelHandle *model) {
  LoraSet set;
  if (value.IsUndefined() || value.IsNull()) return set;
  if (!value.IsArray()) Throw(env, code::kInvalidArgument, "loras must be an array of { adapter, scale }");
  Napi::Array list = value.As<Napi::Array>();
  if (list.Length() > 64) Throw(env, code::kOutOfRange, "at most 64 LoRA adapters at once");
  Napi::Function ctor = Data(env).lora_ctor.Value();
  for (uint32_t i = 0; i < list.Length(); ++i) {
    Napi::Value entry = list.Get(i);
    if (!entry.IsObject()) Throw(env, code::kInvalidArgument, "loras[" + std::to_string(i) + "] must be { adapter, scale }");
    Napi::Value adapter = entry.As<Napi::Object>().Get("adapter");
    Napi::Value scale = entry.As<Napi::Object>().Get("scale");
    if (!adapter.IsObject() || !adapter.As<Napi::Object>().InstanceOf(ctor)) {
      Throw(env, code::kInvalidArgument, "loras[" + std::to_string(i) + "].adapter must be a LoRA adapter");
    }
    Lora *lora = Lora::Unwrap(adapter.As<Napi::Object>());
    if (lora->handle() == nullptr) Throw(env, code::kDisposed, "loras[" + std::to_string(i) + "].adapter has been disposed");
    if (lora->handle()->model.get() != model) {
      Throw(env, code::kInvalidArgument, "loras[" + std::to_string(i) + "].adapter was loaded for another model");
    }
    const double s = scale.IsNumber() ? scale.As<Napi::Number>().DoubleValue() : NAN;
    if (!std::isfinite(s) || std::fabs(s) > 1e6) Throw(env, code::kOutOfRange, "loras[" + std::to_string(i) + "].scale must be a finite number");
    for (const LoraSetting &other : set) {
      if (other.lora == lora->handle()) Throw(env, code::kInvalidArgument, "loras[" + std::to_string(i) + "]: the same adapter twice");
    }
    if (s != 0) set.push_back({lora->handle(), static_cast<float>(s)});
  }
  std::sort(set.begin(), set.end(), [](const LoraSetting &a, const LoraSetting &b) { return a.lora.get() < b.lora.get(); });
  return set;
}

bool SameLoras(const LoraSet &a, const LoraSet &b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].lora != b[i].lora || a[i].scale != b[i].scale) return false;
  }
  return true;
}

void ApplyLoras(llama_context *ctx, const LoraSet &set) {
  std::vector<llama_adapter_lora *> adapters;
  std::vector<float> scales;
  for (const LoraSetting &s : set) {
    adapters.push_back(s.lora->adapter);
    scales.push_back(s.scale);
  }
  llama_set_adapters_lora(ctx, adapters.empty() ? nullptr : adapters.data(), adapters.size(), scales.empty() ? nullptr : scales.data());
}

}  // namespace huozi
