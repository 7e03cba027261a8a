// EmbeddingContext: a llama_context made for embeddings (embeddings = true, a pooling type, a unified KV cache
// of up to LLAMA_MAX_SEQ sequences), and embed(): many inputs packed into each llama_decode as llama-embedding
// packs them (examples/embedding/embedding.cpp), each its own sequence, the memory cleared before each batch.
// One operation at a time (lib/embedding.ts queues calls; the busy flag here is the last line of defence); the
// work runs on the context's own executor thread (executor.h), like Context's.
#pragma once
#include <napi.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "executor.h"
#include "llama.h"

namespace huozi {

struct ModelHandle;

// Registers createEmbeddingContext(model, params) -> Promise<NativeEmbeddingContext> on `exports`.
void RegisterEmbedding(Napi::Env env, Napi::Object exports);

class EmbeddingContext final : public Napi::ObjectWrap<EmbeddingContext> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit EmbeddingContext(const Napi::CallbackInfo &info);
  ~EmbeddingContext() override;

  // The context, its model and sizes (n_batch: the most tokens packed into one decode), set once by
  // createEmbeddingContext.
  void Adopt(std::shared_ptr<ModelHandle> model, uint32_t n_ctx, uint32_t n_batch);

 private:
  Napi::Value Info(const Napi::CallbackInfo &info);
  Napi::Value Embed(const Napi::CallbackInfo &info);
  Napi::Value Memory(const Napi::CallbackInfo &info);
  Napi::Value Abort(const Napi::CallbackInfo &info);
  Napi::Value Dispose(const Napi::CallbackInfo &info);
  Napi::Value Disposed(const Napi::CallbackInfo &info);

  // On the executor thread: every input's embedding (pooled: n_embd values; none: n_embd per token), normalized
  // as common_embd_normalize(embd_norm) does (-1: not at all, 2: L2).
  std::vector<std::vector<float>> Run(const std::vector<std::vector<llama_token>> &inputs, int embd_norm);
  void Free();
  static bool AbortCallback(void *data);

  llama_context *ctx_ = nullptr;
  std::shared_ptr<ModelHandle> model_;
  int32_t n_vocab_ = 0;
  uint32_t n_ctx_ = 0;
  uint32_t n_batch_ = 0;
  uint32_t n_seq_max_ = 0;
  int32_t n_embd_ = 0;
  enum llama_pooling_type pooling_ = LLAMA_POOLING_TYPE_NONE;
  std::atomic<bool> abort_{false};
  bool busy_ = false;
  bool dispose_pending_ = false;
  std::unique_ptr<Executor> executor_;
};

}  // namespace huozi
