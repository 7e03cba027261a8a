// Registration only; each class lives in its own file.
#include <napi.h>

#include "addon_data.h"
#include "context.h"
#include "llama.h"
#include "log.h"
#include "model.h"

namespace huozi {
namespace {

Napi::Value SystemInfo(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  Napi::Object out = Napi::Object::New(env);
  out.Set("backend", HUOZI_BACKEND);
  out.Set("llamaCpp", llama_print_system_info());
  out.Set("gpuOffload", llama_supports_gpu_offload());
  out.Set("mmap", llama_supports_mmap());
  out.Set("mlock", llama_supports_mlock());
  out.Set("maxDevices", Napi::Number::New(env, static_cast<double>(llama_max_devices())));
  return out;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  static bool backend_ready = false;
  if (!backend_ready) {
    // Process-wide and not reference counted in llama.cpp: once, never freed (workers share it).
    InstallLogHandler();
    llama_backend_init();
    backend_ready = true;
  }
  auto *data = new AddonData();
  data->model_ctor = Napi::Persistent(Model::Init(env));
  data->context_ctor = Napi::Persistent(Context::Init(env));
  env.SetInstanceData(data);
  exports.Set("loadModel", Napi::Function::New(env, Model::Load));
  exports.Set("systemInfo", Napi::Function::New(env, SystemInfo));
  return exports;
}

}  // namespace
}  // namespace huozi

static Napi::Object InitModule(Napi::Env env, Napi::Object exports) { return huozi::Init(env, exports); }
NODE_API_MODULE(huozi_gguf, InitModule)
