// loadModel(path, params, onProgress?) -> { promise, cancel }
// The worker is queued on the libuv pool and loads on a thread of its own (Execute says why). llama.cpp reports
// progress through progress_callback on that thread; we forward it to JS through a thread-safe function (at
// most once per percent) and return false from the callback to stop the load when cancel() was called
// (llama_model_load_from_file then returns NULL).
#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "ggml-backend.h"

#include "../addon_data.h"
#include "../errors.h"
#include "../log.h"
#include "../model.h"
#include "../placement.h"

namespace huozi {
namespace {

struct LoadParams {
  std::string path;
  int32_t gpu_layers = -1;
  int32_t main_gpu = 0;
  int32_t split_mode = LLAMA_SPLIT_MODE_LAYER;
  std::vector<float> tensor_split;
  std::vector<std::pair<std::string, std::string>> overrides;  // tensor name pattern -> buffer type name
  int use_mmap = -1;  // -1: llama.cpp's default (AUTO: mmap unless a device cannot use it), 0: no, 1: yes
  bool use_mlock = false;
  bool vocab_only = false;
  bool check_tensors = false;
  std::vector<std::string> rpc_servers;  // "address:port", checked and reachable (lib/rpc.ts)
};

class LoadModelWorker final : public Napi::AsyncWorker {
 public:
  LoadModelWorker(Napi::Env env, LoadParams params, Napi::Function on_progress)
      : Napi::AsyncWorker(env, "huozi-gguf:load"),
        deferred_(Napi::Promise::Deferred::New(env)),
        params_(std::move(params)),
        cancelled_(std::make_shared<std::atomic<bool>>(false)) {
    if (!on_progress.IsEmpty()) {
      progress_ = Napi::ThreadSafeFunction::New(env, on_progress, "huozi-gguf:load-progress", 0, 1);
      has_progress_ = true;
    }
  }

  ~LoadModelWorker() override {
    if (has_progress_) progress_.Release();
  }

  Napi::Promise Promise() { return deferred_.Promise(); }
  std::shared_ptr<std::atomic<bool>> cancelled() { return cancelled_; }

 private:
  static bool OnProgress(float p, void *user_data) {
    auto *self = static_cast<LoadModelWorker *>(user_data);
    if (self->cancelled_->load()) return false;
    int percent = static_cast<int>(p * 100.0f);
    if (self->has_progress_ && percent > self->last_percent_) {
      self->last_percent_ = percent;
      float *value = new float(p);
      napi_status status = self->progress_.NonBlockingCall(value, [](Napi::Env env, Napi::Function fn, float *v) {
        double progress = *v;
        delete v;
        if (env != nullptr) fn.Call({Napi::Number::New(env, progress)});
      });
      if (status != napi_ok) delete value;
    }
    return true;
  }

  void Execute() override {
    llama_model_params mp = llama_model_default_params();
    std::vector<ggml_backend_dev_t> devices;
    if (!params_.rpc_servers.empty()) {
      const std::string error = RpcDevices(params_.rpc_servers, devices);
      if (!error.empty()) {
        SetError(error);
        return;
      }
      mp.devices = devices.data();
    }
    mp.n_gpu_layers = params_.gpu_layers;
    mp.main_gpu = params_.main_gpu;
    mp.split_mode = static_cast<llama_split_mode>(params_.split_mode);
    std::vector<float> split(llama_max_devices(), 0.0f);
    if (!params_.tensor_split.empty()) {
      std::copy_n(params_.tensor_split.begin(), std::min(split.size(), params_.tensor_split.size()), split.begin());
      mp.tensor_split = split.data();
    }
    // The load's RPC devices can be named too (they are not registered with ggml).
    ResolvedOverrides overrides = ResolveOverrides(params_.overrides, devices);
    if (!overrides.error.empty()) {
      SetError(overrides.error);
      return;
    }
    if (!overrides.list.empty()) mp.tensor_buft_overrides = overrides.list.data();
    if (params_.use_mmap < 0 && !params_.use_mlock) {
      mp.load_mode = LLAMA_LOAD_MODE_AUTO;  // what llama.cpp and llama-bench use by default
    } else {
      const bool mmap = params_.use_mmap != 0;
      mp.load_mode = mmap ? (params_.use_mlock ? LLAMA_LOAD_MODE_MMAP_MLOCK : LLAMA_LOAD_MODE_MMAP)
                          : (params_.use_mlock ? LLAMA_LOAD_MODE_MLOCK : LLAMA_LOAD_MODE_NONE);
    }
    mp.vocab_only = params_.vocab_only;
    mp.check_tensors = params_.check_tensors;
    mp.progress_callback = &LoadModelWorker::OnProgress;
    mp.progress_callback_user_data = this;
    // The load runs on a thread of its own that ends with it. ggml converts weights for its extra buffer types
    // (AMX, repacking) inside `#pragma omp parallel` on the calling thread, and libgomp keeps that thread's team
    // of workers as long as the thread lives: a libuv pool thread lives forever, and with more OpenMP threads
    // alive than cores libgomp throttles the spin-waits of every team, the decoding one included (q4_0 on an AMX
    // CPU, 2 threads: generation at 0.37x llama-bench). A thread that exits takes its team with it.
    std::string why;
    std::thread loader([&] {
      try {
        TakeThreadErrors();
        model_ = llama_model_load_from_file(params_.path.c_str(), mp);
        if (model_ == nullptr) why = TakeThreadErrors();
      } catch (...) {
        why = CurrentExceptionMessage();
      }
    });
    loader.join();
    if (model_ == nullptr) {
      if (cancelled_->load()) {
        code_ = code::kAborted;
        SetError("model loading was aborted");
        return;
      }
      SetError("failed to load model from " + params_.path + (why.empty() ? "" : ": " + why));
    }
  }

  void OnOK() override {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    try {
      Napi::Object model = Data(env).model_ctor.New({Napi::External<llama_model>::New(env, model_)});
      model_ = nullptr;  // owned by the JS object now
      deferred_.Resolve(model);
    } catch (const Napi::Error &e) {
      { ModelHandle unowned(model_, Data(env).life); }  // frees it off this thread
      model_ = nullptr;
      deferred_.Reject(e.Value());
    }
  }

  void OnError(const Napi::Error &error) override {
    deferred_.Reject(MakeError(Env(), code_, error.Message()).Value());
  }

  Napi::Promise::Deferred deferred_;
  LoadParams params_;
  std::shared_ptr<std::atomic<bool>> cancelled_;
  Napi::ThreadSafeFunction progress_;
  bool has_progress_ = false;
  int last_percent_ = -1;
  llama_model *model_ = nullptr;
  const char *code_ = code::kModelLoad;
};

}  // namespace

Napi::Value Model::Load(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsString() || !info[1].IsObject()) {
    Throw(env, code::kInvalidArgument, "loadModel(path, params, onProgress?)");
  }
  Napi::Object p = info[1].As<Napi::Object>();
  LoadParams params;
  params.path = info[0].As<Napi::String>().Utf8Value();
  if (params.path.find('\0') != std::string::npos) Throw(env, code::kInvalidArgument, "path contains a NUL byte");
  if (p.Has("gpuLayers")) params.gpu_layers = p.Get("gpuLayers").As<Napi::Number>().Int32Value();
  if (p.Has("useMmap")) params.use_mmap = p.Get("useMmap").ToBoolean() ? 1 : 0;
  if (p.Has("useMlock")) params.use_mlock = p.Get("useMlock").ToBoolean();
  if (p.Has("vocabOnly")) params.vocab_only = p.Get("vocabOnly").ToBoolean();
  if (p.Has("checkTensors")) params.check_tensors = p.Get("checkTensors").ToBoolean();
  if (p.Get("mainGpu").IsNumber()) params.main_gpu = p.Get("mainGpu").As<Napi::Number>().Int32Value();
  if (p.Get("splitMode").IsNumber()) params.split_mode = p.Get("splitMode").As<Napi::Number>().Int32Value();
  if (p.Get("tensorSplit").IsArray()) {
    Napi::Array a = p.Get("tensorSplit").As<Napi::Array>();
    for (uint32_t i = 0; i < a.Length(); ++i) params.tensor_split.push_back(a.Get(i).As<Napi::Number>().FloatValue());
  }
  if (p.Get("rpcServers").IsArray()) {
    Napi::Array a = p.Get("rpcServers").As<Napi::Array>();
    for (uint32_t i = 0; i < a.Length(); ++i) {
      params.rpc_servers.push_back(a.Get(i).ToString().Utf8Value());
      if (params.rpc_servers.back().find('\0') != std::string::npos) Throw(env, code::kInvalidArgument, "rpcServers entry contains a NUL byte");
    }
  }
  if (p.Get("overrides").IsArray()) {
    Napi::Array a = p.Get("overrides").As<Napi::Array>();
    for (uint32_t i = 0; i < a.Length(); ++i) {
      Napi::Object o = a.Get(i).As<Napi::Object>();
      params.overrides.emplace_back(o.Get("pattern").ToString().Utf8Value(), o.Get("buffer").ToString().Utf8Value());
    }
  }
  Napi::Function on_progress;
  if (info.Length() > 2 && info[2].IsFunction()) on_progress = info[2].As<Napi::Function>();

  auto *worker = new LoadModelWorker(env, std::move(params), on_progress);
  Napi::Object handle = Napi::Object::New(env);
  handle.Set("promise", worker->Promise());
  auto cancelled = worker->cancelled();
  handle.Set("cancel", Napi::Function::New(env, [cancelled](const Napi::CallbackInfo &) { cancelled->store(true); }));
  worker->Queue();
  return handle;
}

}  // namespace huozi
