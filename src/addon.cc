// Registration only; each class lives in its own file.
#include <napi.h>

#include "addon_data.h"
#include "context.h"
#include "ggml-backend.h"
#include "ggml.h"
#include "llama.h"
#include "log.h"
#include "lora.h"
#include "model.h"
#include "parallel.h"

#ifdef HUOZI_BACKEND_DL
#include <dlfcn.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#endif

namespace huozi {

Napi::Value Quantize(const Napi::CallbackInfo &info);
void RegisterFit(Napi::Env env, Napi::Object exports);
void RegisterRpc(Napi::Env env, Napi::Object exports);
void RegisterGrammar(Napi::Env env, Napi::Object exports);
void RegisterEmbedding(Napi::Env env, Napi::Object exports);

namespace {

#ifdef HUOZI_BACKEND_DL
// Prebuilt binaries (CMakeLists.txt, HUOZI_BACKEND_DL): ggml's backends (libggml-cpu-<level>.so, -cuda, -rpc)
// are modules next to this .node. ggml_backend_load_all() would look next to node's executable and in the
// working directory, so they are loaded from this file's own folder, once, before llama.cpp is used.
std::string backends_dir;
std::string backend_error;

void LoadBackends() {
  Dl_info self{};
  if (dladdr(reinterpret_cast<void *>(&LoadBackends), &self) == 0 || self.dli_fname == nullptr) {
    backend_error = "cannot find the addon's own folder (dladdr failed)";
    return;
  }
  backends_dir = self.dli_fname;
  backends_dir.erase(backends_dir.find_last_of('/'));
  ggml_backend_load_all_from_path(backends_dir.c_str());
  // HUOZI_CPU_VARIANT=<level> (libggml-cpu-<level>.so in this folder: x64, haswell, skylakex, icelake, zen4, ...)
  // replaces the CPU backend ggml picked, to run another kernel set on this machine: CI runs the numeric tests
  // on the AVX2 baseline as well as on the best variant. A level this CPU lacks is refused by its own score
  // function (no SIGILL): then no CPU backend loads and the error says why.
  const char *variant = getenv("HUOZI_CPU_VARIANT");
  if (variant != nullptr && *variant != '\0') {
    const std::string name = variant;
    const std::string path = backends_dir + "/libggml-cpu-" + name + ".so";
    if (name.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789_.") != std::string::npos || access(path.c_str(), R_OK) != 0) {
      backend_error = "HUOZI_CPU_VARIANT=" + name + ": no " + path;
    } else {
      if (ggml_backend_reg_t best = ggml_backend_reg_by_name("CPU")) ggml_backend_unload(best);
      if (ggml_backend_load(path.c_str()) == nullptr) {
        backend_error = "HUOZI_CPU_VARIANT=" + name + ": " + path + " did not load (this CPU lacks its instructions?)";
      }
    }
  }
  // ggml skips a backend that does not load without saying why; for CUDA the reason matters to the user
  // (no driver, libcudart/libcublas missing), so ask dlopen once.
  const std::string cuda = backends_dir + "/libggml-cuda.so";
  ggml_backend_reg_t reg = ggml_backend_reg_by_name("CUDA");
  if (access(cuda.c_str(), F_OK) == 0 && (reg == nullptr || ggml_backend_reg_dev_count(reg) == 0)) {
    void *h = dlopen(cuda.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (h == nullptr) {
      const char *e = dlerror();
      backend_error = std::string("libggml-cuda.so did not load: ") + (e ? e : "unknown error");
    } else {
      dlclose(h);
      backend_error = "libggml-cuda.so loaded but found no CUDA device";
    }
  }
  if (ggml_backend_reg_by_name("CPU") == nullptr) {
    // Say why, usually libgomp.so.1 missing: dlopen the x86-64 baseline variant, which any CPU here runs.
    std::string why = "no CPU backend loaded from " + backends_dir;
    for (const char *name : {"libggml-cpu-x64.so", "libggml-cpu.so"}) {
      const std::string path = backends_dir + "/" + name;
      if (access(path.c_str(), F_OK) != 0) continue;
      void *h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
      const char *e = h == nullptr ? dlerror() : nullptr;
      if (h != nullptr) dlclose(h);
      if (e != nullptr) why += std::string(": ") + e;
      break;
    }
    backend_error += (backend_error.empty() ? "" : "; ") + why;
  }
}

// The file of the CPU backend in use (libggml-cpu-<level>.so): which kernel set ggml picked for this CPU.
std::string CpuBackendFile() {
  ggml_backend_reg_t reg = ggml_backend_reg_by_name("CPU");
  void *fn = reg != nullptr ? ggml_backend_reg_get_proc_address(reg, "ggml_backend_get_features") : nullptr;
  Dl_info where{};
  if (fn == nullptr || dladdr(fn, &where) == 0 || where.dli_fname == nullptr) return "";
  std::string file = where.dli_fname;
  return file.substr(file.find_last_of('/') + 1);
}

const char *Backend() {
  ggml_backend_reg_t reg = ggml_backend_reg_by_name("CUDA");
  return reg != nullptr && ggml_backend_reg_dev_count(reg) > 0 ? "cuda" : "cpu";
}
#else
const char *Backend() { return HUOZI_BACKEND; }
#endif

Napi::Value SystemInfo(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  Napi::Object out = Napi::Object::New(env);
  out.Set("backend", Backend());
#ifdef HUOZI_BACKEND_DL
  out.Set("backendsDir", backends_dir);
  out.Set("cpuBackend", CpuBackendFile());
  if (!backend_error.empty()) out.Set("backendError", backend_error);
#endif
  out.Set("llamaCpp", llama_print_system_info());
  // A local GPU: llama_supports_gpu_offload() also says yes for the RPC backend, which every build has.
  out.Set("gpuOffload", ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_GPU) != nullptr ||
                            ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_IGPU) != nullptr);
  out.Set("rpc", llama_supports_rpc());
  out.Set("mmap", llama_supports_mmap());
  out.Set("mlock", llama_supports_mlock());
  out.Set("maxDevices", Napi::Number::New(env, static_cast<double>(llama_max_devices())));
  return out;
}

// ggmlTypes() -> [{ id, name, blockSize, typeSize }] for every ggml type id: lib/gguf/types.ts keeps the same
// table in TypeScript (the GGUF reader must not need the addon), and a test checks the two agree.
Napi::Value GgmlTypes(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  Napi::Array out = Napi::Array::New(env);
  for (int t = 0; t < GGML_TYPE_COUNT; ++t) {
    const auto type = static_cast<ggml_type>(t);
    Napi::Object o = Napi::Object::New(env);
    o.Set("id", t);
    const char *name = ggml_type_name(type);
    o.Set("name", name ? name : "");
    o.Set("blockSize", Napi::Number::New(env, static_cast<double>(ggml_blck_size(type))));
    o.Set("typeSize", Napi::Number::New(env, static_cast<double>(ggml_type_size(type))));
    out.Set(static_cast<uint32_t>(t), o);
  }
  return out;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  static bool backend_ready = false;
  if (!backend_ready) {
    // Process-wide and not reference counted in llama.cpp: once, never freed (workers share it).
    InstallLogHandler();
#ifdef HUOZI_BACKEND_DL
    LoadBackends();
#endif
    llama_backend_init();
    backend_ready = true;
  }
  auto *data = new AddonData();
  data->model_ctor = Napi::Persistent(Model::Init(env));
  data->context_ctor = Napi::Persistent(Context::Init(env));
  data->parallel_ctor = Napi::Persistent(ParallelContext::Init(env));
  data->lora_ctor = Napi::Persistent(Lora::Init(env));
  data->life = std::make_shared<EnvLife>();
  data->life->env = env;
  data->life->js_thread = std::this_thread::get_id();
  // At teardown N-API finalizes the objects still wrapped after the addon's cleanup hooks have run (Node's own
  // test_cleanup_hook checks that order): a model collected then is freed there and then (model.cc), not
  // queued on a loop that no longer runs.
  env.AddCleanupHook([life = data->life] { life->closing.store(true); });
  env.SetInstanceData(data);
  exports.Set("loadModel", Napi::Function::New(env, Model::Load));
  exports.Set("systemInfo", Napi::Function::New(env, SystemInfo));
  exports.Set("ggmlTypes", Napi::Function::New(env, GgmlTypes));
  exports.Set("quantize", Napi::Function::New(env, Quantize));
  RegisterFit(env, exports);
  RegisterRpc(env, exports);
  RegisterGrammar(env, exports);
  RegisterEmbedding(env, exports);
  return exports;
}

}  // namespace
}  // namespace huozi

static Napi::Object InitModule(Napi::Env env, Napi::Object exports) { return huozi::Init(env, exports); }
NODE_API_MODULE(huozi_gguf, InitModule)
