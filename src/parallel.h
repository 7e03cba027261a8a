// ParallelContext: one llama_context with N sequences ("slots") and a thread of its own that serves many
// requests at once with continuous batching, as llama-server does. Each step builds one batch from the next
// token of every generating slot plus as many prompt tokens of newly started slots as fit, decodes it, and
// samples every slot that got logits; requests join and leave between steps. A slot keeps its tokens after
// its request ends, and the next request goes to the free slot sharing the longest prefix with its prompt
// (a multi-turn chat then re-evaluates only the new turn).
//
// JS talks to it through submit()/cancel() and one event callback (text, done, error), delivered in batches
// through the outbox (outbox.h): text at most every streamIntervalMs of the request (0: every token's text as
// an event of its own, at once), done and error events at once.
#pragma once
#include <napi.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include "llama.h"
#include "sampler.h"
#include "generation.h"
#include "lora.h"
#include "outbox.h"
#include "text_stream.h"

namespace huozi {

struct ModelHandle;

class ParallelContext final : public Napi::ObjectWrap<ParallelContext> {
 public:
  static Napi::Function Init(Napi::Env env);
  // Creates the llama_context off the main thread; resolves to a NativeParallelContext.
  static Napi::Value Create(Napi::Env env, std::shared_ptr<ModelHandle> model, Napi::Object params, Napi::Function on_events);

  explicit ParallelContext(const Napi::CallbackInfo &info);
  ~ParallelContext() override;

  struct Request {
    int64_t id = 0;
    std::vector<llama_token> prompt;
    SamplerParams sampling;
    StopRules stops;
    bool reuse_cache = true;  // start from the slot's cached prefix (else evaluate the whole prompt)
    // Requests of one group (the choices of one prompt) evaluate their prompt once: the first evaluates it, the
    // others wait for it and copy its cells and logits. 0: none.
    int64_t group = 0;
    // The LoRA adapters to compute with (empty: the base model). A slot's cells serve only requests with the
    // same adapters and scales; a step decodes the rows of one set of adapters at a time.
    LoraSet loras;
    std::chrono::milliseconds stream_interval = kDefaultStreamInterval;  // 0: every token's text on its own
    std::chrono::steady_clock::time_point submitted;
  };

 private:
  struct Active;
  struct Slot {
    llama_seq_id seq = 0;
    std::vector<llama_token> cache;  // what this sequence's memory holds
    LoraSet loras;                   // ... computed with these adapters
    std::unique_ptr<Active> active;  // null when free
    uint64_t last_used = 0;
    // Reproducible evaluation, as Context's (context.h): leading positions computed in whole ubatches of this
    // sequence alone, aligned to position 0; the last prompt's last logits while the cache still holds it.
    size_t canonical = 0;
    std::vector<float> prompt_logits;
    size_t prompt_logits_at = 0;
    bool prompt_logits_exact = false;
  };
  struct Result : GenerationResult {
    double queue_ms = 0;
    int32_t slot = -1;
  };
  struct Event {
    int64_t id = 0;
    std::unique_ptr<Result> result;  // done; for an error, what it had produced (a grammar's dead end) or null
    const char *code = nullptr;      // error
    std::string message;
  };
  // What the loop thread has for JS and JS has not taken yet.
  struct Outgoing {
    std::map<int64_t, std::vector<Chunk>> text;  // per request: one chunk, or one per token
    std::vector<Event> events;
  };

  Napi::Value Info(const Napi::CallbackInfo &info);
  Napi::Value Submit(const Napi::CallbackInfo &info);
  Napi::Value Cancel(const Napi::CallbackInfo &info);
  Napi::Value Stats(const Napi::CallbackInfo &info);
  Napi::Value Memory(const Napi::CallbackInfo &info);
  Napi::Value Dispose(const Napi::CallbackInfo &info);
  Napi::Value Disposed(const Napi::CallbackInfo &info);

  // Loop thread.
  void Loop();
  void Assign(std::unique_ptr<Request> request);
  // Whether `request` waits for a request of its group that is still evaluating the same prompt.
  bool WaitsForSibling(const Request &request) const;
  void Step();
  // One llama_decode of the rows of `group` (generating slots' next tokens, then prompt chunks), then sampling.
  void DecodeGroup(const std::vector<Slot *> &group, bool alone);
  // A token sampled for the slot: the verdict, its text, and finish or queue it for decoding.
  void Consume(Slot &slot, llama_token token, std::chrono::steady_clock::time_point now);
  // The slot's cache shrank to slot.cache.size(): forget what no longer holds.
  void Forget(Slot &slot);
  void Finish(Slot &slot, const char *stop_reason);
  void FailSlot(Slot &slot, const char *code, const std::string &message);
  void Fail(int64_t id, const char *code, const std::string &message);
  void Text(const Request &request, const std::string &text, std::vector<TokenLogprob> &&entries);
  // The slot's next token from `logits`; -1 when its grammar allows none (the request then failed).
  llama_token SampleSlot(Slot &slot, const float *logits);
  void Post(Event event);
  void StopThread();
  static bool AbortCallback(void *data);

  // Main thread.
  void Deliver(Napi::Env env);

  llama_context *ctx_ = nullptr;
  std::shared_ptr<ModelHandle> model_;
  const llama_vocab *vocab_ = nullptr;
  int32_t n_vocab_ = 0;
  uint32_t n_ctx_ = 0;
  uint32_t n_ctx_seq_ = 0;
  uint32_t n_batch_ = 0;
  uint32_t n_ubatch_ = 0;
  llama_batch batch_{};
  std::vector<Slot> slots_;
  uint64_t clock_ = 0;
  // Whether one sequence's cells can be copied to another and cut at a position (not recurrent state).
  bool can_share_ = false;
  LoraSet applied_;  // the adapters llama.cpp applies now (loop thread)
  std::string piece_;  // token text scratch (loop thread)

  // Shared between the main thread and the loop thread.
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Request>> inbox_;  // submitted, not yet taken by the loop
  std::deque<std::unique_ptr<Request>> waiting_;  // taken, waiting for a free slot (loop thread only)
  std::unordered_set<int64_t> cancels_;
  bool stopping_ = false;
  std::atomic<bool> abort_{false};
  std::thread thread_;

  // Outgoing events. The outbox's wakes keep the event loop alive only while requests are outstanding.
  Outbox<Outgoing> outbox_;
  Napi::FunctionReference on_events_;
  int64_t outstanding_ = 0;  // main thread: submitted and not yet reported done/error
  bool disposed_ = false;
  Napi::Env::CleanupHook<std::function<void()>> cleanup_;
  bool has_cleanup_ = false;

  // Counters for stats() (written by the loop thread).
  std::atomic<int64_t> busy_slots_{0};
  std::atomic<int64_t> waiting_count_{0};
  std::atomic<int64_t> prompt_tokens_{0};
  std::atomic<int64_t> generated_tokens_{0};
  std::atomic<int64_t> reused_tokens_{0};
  std::atomic<int64_t> shared_tokens_{0};  // of reused_tokens_: copied from another slot's cells
  std::atomic<int64_t> decode_calls_{0};
  std::atomic<int64_t> completed_{0};
  std::atomic<int64_t> cancelled_{0};
  std::atomic<int64_t> failed_{0};
};

}  // namespace huozi
