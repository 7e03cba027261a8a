// loadModel(path, params, onProgress?) -> { promise, cancel }
// Loads on the libuv pool. llama.cpp reports progress through progress_callback on this thread; we forward
// it to JS through a thread-safe function (at most once per percent) and return false from the callback to
// stop the load when cancel() was called (llama_model_load_from_file then returns NULL).
#include <atomic>
#include <memory>
#include <string>

#include "../addon_data.h"
#include "../errors.h"
#include "../log.h"
#include "../model.h"

namespace huozi {
namespace {

struct LoadParams {
  std::string path;
  int32_t gpu_layers = -1;
  bool use_mmap = true;
  bool use_mlock = false;
  bool vocab_only = false;
  bool check_tensors = false;
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
    mp.n_gpu_layers = params_.gpu_layers;
    mp.load_mode = params_.use_mmap ? (params_.use_mlock ? LLAMA_LOAD_MODE_MMAP_MLOCK : LLAMA_LOAD_MODE_MMAP)
                                    : (params_.use_mlock ? LLAMA_LOAD_MODE_MLOCK : LLAMA_LOAD_MODE_NONE);
    mp.vocab_only = params_.vocab_only;
    mp.check_tensors = params_.check_tensors;
    mp.progress_callback = &LoadModelWorker::OnProgress;
    mp.progress_callback_user_data = this;
    TakeThreadErrors();
    model_ = llama_model_load_from_file(params_.path.c_str(), mp);
    if (model_ == nullptr) {
      if (cancelled_->load()) {
        code_ = code::kAborted;
        SetError("model loading was aborted");
        return;
      }
      std::string why = TakeThreadErrors();
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
      llama_model_free(model_);
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
  if (p.Has("useMmap")) params.use_mmap = p.Get("useMmap").ToBoolean();
  if (p.Has("useMlock")) params.use_mlock = p.Get("useMlock").ToBoolean();
  if (p.Has("vocabOnly")) params.vocab_only = p.Get("vocabOnly").ToBoolean();
  if (p.Has("checkTensors")) params.check_tensors = p.Get("checkTensors").ToBoolean();
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
