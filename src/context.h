// Context: owns a llama_context and the list of tokens whose keys/values are in its memory (sequence 0).
// One operation at a time: lib/context.ts queues calls; the native busy flag is the last line of defence.
// Workers (evaluate, generate, save/loadState) are queued on the libuv pool, run their body on the context's
// own thread (RunOnThread) and touch the context only between Begin() and End().
#pragma once
#include <napi.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "executor.h"
#include "imatrix.h"
#include "lora.h"
#include "llama.h"

namespace huozi {

struct ModelHandle;

// kComputeAll: every position is an output (so that every layer runs on every token, as an importance matrix
// needs), but the logits are not copied out.
enum class LogitsMode { kNone, kLast, kAll, kComputeAll };

// The llama_context_params a JS params object asks for (contextSize, batchSize, ubatchSize, threads,
// batchThreads, flashAttention), checked for what would trip an assert inside llama.cpp (lib/ reports these
// to users first). Shared by Context and ParallelContext.
llama_context_params ContextParamsFromJs(Napi::Env env, Napi::Object o);
// llama_init_from_model, throwing a CodedError with llama.cpp's own log lines when it fails (worker thread).
llama_context *InitContext(llama_model *model, const llama_context_params &cp);

class Context final : public Napi::ObjectWrap<Context> {
 public:
  static Napi::Function Init(Napi::Env env);
  // Creates a context off the main thread; resolves to a NativeContext.
  static Napi::Value Create(Napi::Env env, std::shared_ptr<ModelHandle> model, Napi::Object params);

  explicit Context(const Napi::CallbackInfo &info);
  ~Context() override;

  // --- used by workers, on the context's thread (RunOnThread), while the context is marked busy ---
  llama_context *handle() const { return ctx_; }
  const llama_vocab *vocab() const { return vocab_; }
  int32_t n_vocab() const { return n_vocab_; }
  uint32_t n_ctx() const { return n_ctx_; }
  std::vector<llama_token> &tokens() { return tokens_; }
  bool has_logits() const { return has_logits_; }
  const std::atomic<bool> &abort_flag() const { return abort_; }
  // Removes cached tokens from position `keep` on. Returns false if the memory cannot be cut there (then the
  // caller must start from an empty memory).
  bool Truncate(size_t keep);
  // Decodes tokens after the cached ones, appending them to tokens(). Chunks end at multiples of the ubatch size
  // (counted from position 0, not from the first new token), at most n_batch long. Logits are kept for the last
  // token (kLast), every token (kAll, copied into *all_logits), or none. Throws CodedError; after an abort or
  // failure tokens() still matches what the memory holds.
  void Decode(const llama_token *tokens, size_t n, LogitsMode mode, std::vector<float> *all_logits);

  // --- Reproducible evaluation (issue #13) ---
  // On CPUs the kernels for one token and for a batch (and for batches of different sizes: tinyBLAS vs vec_dot,
  // MoE experts grouped by the batch) round differently, and on an MoE model a rounding difference can move a
  // router's choice. So what a prompt's keys/values and logits are depends on how it was batched. A cold
  // evaluation batches a prompt in whole ubatches from position 0; canonical() is how many leading cached
  // positions were computed exactly that way (a multiple of the ubatch size). A generation with a seed reuses
  // only those (plus, for the very same prompt, its kept logits), so it gets the tokens a cold context would.
  size_t canonical() const { return canonical_; }
  size_t n_ubatch() const { return n_ubatch_; }
  // The logits of a prompt's last position, kept by the generation that evaluated it, for as long as the cache
  // holds that prompt; `exact`: it was evaluated as a cold context would (see canonical()).
  void KeepPromptLogits(bool exact);
  const std::vector<float> *PromptLogits(const std::vector<llama_token> &prompt, bool need_exact) const;

  // [{ device, model, context, compute }] in bytes: what llama.cpp allocated for this context and its model,
  // per device ("host" for CPU-side buffers).
  static Napi::Value MemoryOf(Napi::Env env, const llama_context *ctx);

  // Runs fn on this context's own thread (see executor.h) and waits; called from libuv pool threads.
  void RunOnThread(std::function<void()> fn) { executor_->Run(std::move(fn)); }

  // --- main thread ---
  // Marks the context busy for one asynchronous operation; throws into JS if it is disposed or busy.
  void Begin(Napi::Env env);
  void End();

 private:
  Napi::Value Info(const Napi::CallbackInfo &info);
  Napi::Value Tokens(const Napi::CallbackInfo &info);
  Napi::Value Evaluate(const Napi::CallbackInfo &info);
  Napi::Value Generate(const Napi::CallbackInfo &info);
  Napi::Value EraseFrom(const Napi::CallbackInfo &info);
  Napi::Value SaveState(const Napi::CallbackInfo &info);
  Napi::Value Imatrix(const Napi::CallbackInfo &info);
  Napi::Value Memory(const Napi::CallbackInfo &info);
  Napi::Value LoadState(const Napi::CallbackInfo &info);
  Napi::Value Abort(const Napi::CallbackInfo &info);
  Napi::Value SetThreads(const Napi::CallbackInfo &info);
  Napi::Value SetLoras(const Napi::CallbackInfo &info);
  Napi::Value Dispose(const Napi::CallbackInfo &info);
  Napi::Value Disposed(const Napi::CallbackInfo &info);
  void CheckIdle(Napi::Env env);
  // After tokens_ shrank: drops what no longer holds (canonical_, the kept prompt logits).
  void Forget();
  void Free();

  static bool AbortCallback(void *data);

  llama_context *ctx_ = nullptr;
  std::shared_ptr<ModelHandle> model_;
  const llama_vocab *vocab_ = nullptr;
  std::vector<llama_token> tokens_;
  bool has_logits_ = false;
  int32_t n_vocab_ = 0;
  uint32_t n_ctx_ = 0;
  uint32_t n_batch_ = 0;
  uint32_t n_ubatch_ = 0;
  size_t canonical_ = 0;
  std::vector<float> prompt_logits_;  // empty: none kept
  size_t prompt_logits_at_ = 0;       // the prompt's length
  bool prompt_logits_exact_ = false;
  std::atomic<bool> abort_{false};
  bool busy_ = false;
  bool dispose_pending_ = false;
  std::unique_ptr<Executor> executor_;
  // When created with collectImatrix; llama.cpp holds its address as cb_eval_user_data.
  std::shared_ptr<ImatrixCollector> imatrix_;
  // The adapters applied (llama.cpp holds their pointers: these keep them alive). The cached tokens were
  // computed with them; another set empties the cache.
  LoraSet loras_;
};

}  // namespace huozi
