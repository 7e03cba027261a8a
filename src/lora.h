// LoRA adapters (issue #18). A Lora (NativeLora in JS) owns one llama_adapter_lora through a shared LoraHandle:
// the JS object, and every context that has the adapter set, hold the handle, so the adapter is freed after the
// last of them (llama.cpp's contexts keep raw pointers to the adapters they apply). The handle holds the model,
// which must outlive its adapters. model.loadLora in lib/lora.ts checks the file in TypeScript first.
#pragma once
#include <napi.h>

#include <memory>
#include <string>
#include <vector>

#include "llama.h"

namespace huozi {

struct ModelHandle;

struct LoraHandle {
  LoraHandle(std::shared_ptr<ModelHandle> m, llama_adapter_lora *a) : model(std::move(m)), adapter(a) {}
  ~LoraHandle();
  LoraHandle(const LoraHandle &) = delete;
  LoraHandle &operator=(const LoraHandle &) = delete;
  std::shared_ptr<ModelHandle> model;  // destroyed after the adapter is freed
  llama_adapter_lora *const adapter;
};

// Adapters with their scales as a context applies them: zero scales dropped, ordered by adapter (so that two
// lists of the same adapters and scales compare equal).
struct LoraSetting {
  std::shared_ptr<LoraHandle> lora;
  float scale = 1.0f;
};
using LoraSet = std::vector<LoraSetting>;

// Reads [{ adapter: NativeLora, scale: number }] (checked by lib/lora.ts; here again against what would trip
// llama.cpp: an adapter of another model, a disposed one, the same one twice, a scale that is not finite).
LoraSet LorasFromJs(Napi::Env env, Napi::Value value, const ModelHandle *model);
bool SameLoras(const LoraSet &a, const LoraSet &b);
// llama_set_adapters_lora with the set (the context's thread).
void ApplyLoras(llama_context *ctx, const LoraSet &set);

class Lora final : public Napi::ObjectWrap<Lora> {
 public:
  static Napi::Function Init(Napi::Env env);
  // loadLora(path) on the libuv pool; resolves to a NativeLora.
  static Napi::Value Load(Napi::Env env, std::shared_ptr<ModelHandle> model, const std::string &path);

  explicit Lora(const Napi::CallbackInfo &info);
  const std::shared_ptr<LoraHandle> &handle() const { return handle_; }

 private:
  Napi::Value Info(const Napi::CallbackInfo &info);
  Napi::Value Dispose(const Napi::CallbackInfo &info);
  Napi::Value Disposed(const Napi::CallbackInfo &info);
  std::shared_ptr<LoraHandle> handle_;
  std::string path_;
};

}  // namespace huozi
