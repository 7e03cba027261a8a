// Model: owns a llama_model. Loaded off the main thread by workers/load_model.cc; tokenization is synchronous
// (tokenize) or on the libuv pool (tokenizeAsync, for text of any size: the worker holds the ModelHandle). The llama_model lives in a shared ModelHandle that every context (and a context
// being created) also holds, so it is freed after the last of them, whatever order GC or process teardown
// finalizes the JS objects in; dispose() refuses while others hold it (lib/model.ts disposes contexts first).
#pragma once
#include <napi.h>

#include <memory>

#include "llama.h"

namespace huozi {

struct ModelHandle {
  explicit ModelHandle(llama_model *m) : model(m) {}
  ~ModelHandle() { llama_model_free(model); }
  ModelHandle(const ModelHandle &) = delete;
  ModelHandle &operator=(const ModelHandle &) = delete;
  llama_model *const model;
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
  Napi::Value Dispose(const Napi::CallbackInfo &info);
  Napi::Value Disposed(const Napi::CallbackInfo &info);
  std::shared_ptr<ModelHandle> handle_;
  llama_model *model_ = nullptr;  // handle_->model while not disposed
  const llama_vocab *vocab_ = nullptr;
  int32_t n_vocab_ = 0;
  int64_t external_bytes_ = 0;
};

}  // namespace huozi
