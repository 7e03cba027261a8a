// Model: owns a llama_model. Loaded off the main thread by workers/load_model.cc; tokenization is synchronous
// (tokenize) or on the libuv pool (tokenizeAsync, for text of any size: the worker holds the ModelHandle). The
// llama_model lives in a shared ModelHandle that every context (and a context being created) also holds, so it
// is freed after the last of them, whatever order GC or process teardown finalizes the JS objects in; dispose()
// refuses while others hold it (lib/model.ts disposes contexts first).
#pragma once
#include <napi.h>

#include <memory>

#include "addon_data.h"
#include "llama.h"

namespace huozi {

// The last reference frees the weights, never on the JS thread while its event loop runs: llama_model_free
// unmaps the file or frees host and device buffers, which for a 26 GB model blocks for seconds. Dropped on the
// JS thread, the handle queues the free on the libuv pool (the pending work keeps the process alive until it
// is done); dropped on any other thread, or while the environment is being torn down (its loop will not run
// the work), it frees there and then.
struct ModelHandle {
  ModelHandle(llama_model *m, std::shared_ptr<EnvLife> life) : model(m), life_(std::move(life)) {}
  ~ModelHandle();
  ModelHandle(const ModelHandle &) = delete;
  ModelHandle &operator=(const ModelHandle &) = delete;
  llama_model *const model;

 private:
  std::shared_ptr<EnvLife> life_;
};

class Model final : public Napi::ObjectWrap<Model> {
 public:
  static Napi::Function Init(Napi::Env env);
  // loadModel(path, params, onProgress?) -> { promise: Promise<Model>, cancel(): void }
  static Napi::Value Load(const Napi::CallbackInfo &info);

  explicit Model(const Napi::CallbackInfo &info);
  ~Model() override;

  const std::shared_ptr<ModelHandle> &shared() const { return handle_; }
  // Throws a DisposedError into JS when the model was disposed.
  void CheckAlive(Napi::Env env) const;

 private:
  Napi::Value Info(const Napi::CallbackInfo &info);
  Napi::Value Tokenize(const Napi::CallbackInfo &info);
  Napi::Value TokenizeAsync(const Napi::CallbackInfo &info);
  Napi::Value TokenizerLimits(const Napi::CallbackInfo &info);
  Napi::Value Detokenize(const Napi::CallbackInfo &info);
  Napi::Value TokenPieces(const Napi::CallbackInfo &info);
  Napi::Value IsEog(const Napi::CallbackInfo &info);
  Napi::Value SpecialTokens(const Napi::CallbackInfo &info);
  Napi::Value CreateContext(const Napi::CallbackInfo &info);
  Napi::Value CreateParallelContext(const Napi::CallbackInfo &info);
  Napi::Value LoadLora(const Napi::CallbackInfo &info);
  Napi::Value Dispose(const Napi::CallbackInfo &info);
  Napi::Value Disposed(const Napi::CallbackInfo &info);
  std::shared_ptr<ModelHandle> handle_;
  llama_model *model_ = nullptr;  // handle_->model while not disposed
  const llama_vocab *vocab_ = nullptr;
  int32_t n_vocab_ = 0;
  int64_t external_bytes_ = 0;
};

}  // namespace huozi
