#include "parallel.h"

#include <algorithm>

#include "addon_data.h"
#include "context.h"
#include "errors.h"
#include "log.h"
#include "model.h"
#include "tokens.h"
#include "promise_worker.h"

namespace huozi {

namespace {

using Clock = std::chrono::steady_clock;

// Without a unified cache, copying another slot's cells moves its whole buffer: worth it from this many tokens.
constexpr size_t kMinSharedTokens = 16;

double MsBetween(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double, std::milli>(b - a).count(); }

uint32_t U32(Napi::Object o, const char *key, uint32_t fallback) {
  Napi::Value v = o.Get(key);
  return v.IsNumber() ? v.As<Napi::Number>().Uint32Value() : fallback;
}

}  // namespace

// A request being served by a slot.
struct ParallelContext::Active {
  explicit Active(std::unique_ptr<Request> r) : req(std::move(r)), stream(req->stops.stop_strings) {}
  std::unique_ptr<Request> req;
  std::unique_ptr<Sampler> sampler;
  TextStream stream;
  size_t prompt_pos = 0;    // next prompt token to evaluate
  // A seed was given: this request's rows are decoded in batches of their own, its prompt in ubatches aligned to
  // position 0, and only the slot's canonical prefix is reused, so its tokens do not depend on the cache or on
  // the other requests (Context::canonical() says why).
  bool alone = false;
  bool exact = false;             // the prompt is being evaluated as a cold context would
  bool from_kept_logits = false;  // the very same prompt as the slot's last: sample from its kept logits
  bool has_next = false;    // `next` was sampled and waits to be decoded
  llama_token next = -1;
  int32_t logits_index = -1;  // this step: the batch row holding this slot's logits
  size_t batch_from = 0, batch_count = 0;  // this step: rows holding this slot's tokens
  Clock::time_point submitted, started, first_token;
  std::unique_ptr<Result> result = std::make_unique<Result>();
};

Napi::Function ParallelContext::Init(Napi::Env env) {
  return DefineClass(env, "NativeParallelContext",
                     {
                         InstanceMethod<&ParallelContext::Info>("info"),
                         InstanceMethod<&ParallelContext::Submit>("submit"),
                         InstanceMethod<&ParallelContext::Cancel>("cancel"),
                         InstanceMethod<&ParallelContext::Stats>("stats"),
                         InstanceMethod<&ParallelContext::Memory>("memory"),
                         InstanceMethod<&ParallelContext::Dispose>("dispose"),
                         InstanceAccessor<&ParallelContext::Disposed>("disposed"),
                     });
}

Napi::Value ParallelContext::Create(Napi::Env env, std::shared_ptr<ModelHandle> model, Napi::Object o,
                                    Napi::Function on_events) {
  llama_context_params cp = ContextParamsFromJs(env, o);
  const uint32_t n_seq = U32(o, "parallel", 1);
  // lib/parallel.ts checks these for users first; here they guard llama.cpp's asserts.
  if (n_seq < 1 || n_seq > 256) Throw(env, code::kOutOfRange, "parallel must be between 1 and 256");  // llama.cpp's LLAMA_MAX_SEQ
  if (cp.n_ctx < n_seq) Throw(env, code::kOutOfRange, "contextSize must be at least parallel");
  if (!on_events.IsFunction()) Throw(env, code::kInvalidArgument, "createParallelContext needs an event callback");
  cp.n_seq_max = n_seq;
  cp.kv_unified = o.Get("unifiedCache").ToBoolean();
  cp.n_batch = std::max(cp.n_batch, n_seq);  // every generating slot adds one token per step

  auto callback = std::make_shared<Napi::FunctionReference>(Napi::Persistent(on_events));
  return PromiseWorker<llama_context *>::Start(
      env, Napi::Object::New(env), code::kContextCreate,
      [model, cp]() { return InitContext(model->model, cp); },
      [model, callback, cp](Napi::Env env, llama_context *&ctx) -> Napi::Value {
        Napi::Object object = Data(env).parallel_ctor.New({Napi::External<llama_context>::New(env, ctx)});
        ParallelContext *self = ParallelContext::Unwrap(object);
        ctx = nullptr;
        // llama.cpp rounds each sequence's cells up to a multiple of 256; the context holds what was asked for.
        self->n_ctx_ = std::min(self->n_ctx_, cp.n_ctx);
        self->n_ctx_seq_ = std::min(self->n_ctx_seq_, cp.kv_unified ? cp.n_ctx : cp.n_ctx / cp.n_seq_max);
        self->model_ = model;
        self->vocab_ = llama_model_get_vocab(model->model);
        self->n_vocab_ = llama_vocab_n_tokens(self->vocab_);
        self->can_share_ = !llama_model_is_recurrent(model->model) && !llama_model_is_hybrid(model->model);
        self->on_events_ = std::move(*callback);
        // The wrapper stays alive until the outbox is closed and its last wake has run (after dispose), so
        // that no queued delivery can reach a collected object.
        self->Ref();
        self->outbox_.Open(env, self->on_events_.Value(), "huozi-gguf:parallel", [self](Napi::Env env) { self->Deliver(env); },
                           [self] { self->Unref(); });
        self->outbox_.Unref(env);  // idle: do not keep the process alive
        self->cleanup_ = env.AddCleanupHook(std::function<void()>([self] { self->StopThread(); }));
        self->has_cleanup_ = true;
        self->thread_ = std::thread([self] { self->Loop(); });
        return object;
      });
}

ParallelContext::ParallelContext(const Napi::CallbackInfo &info) : Napi::ObjectWrap<ParallelContext>(info) {
  Napi::Env env = info.Env();
  if (info.Length() != 1 || !info[0].IsExternal()) {
    Throw(env, code::kInvalidArgument, "NativeParallelContext cannot be constructed directly; use model.createParallelContext()");
  }
  ctx_ = info[0].As<Napi::External<llama_context>>().Data();
  n_ctx_ = llama_n_ctx(ctx_);
  n_ctx_seq_ = llama_n_ctx_seq(ctx_);
  n_batch_ = llama_n_batch(ctx_);
  n_ubatch_ = llama_n_ubatch(ctx_);
  batch_ = llama_batch_init(static_cast<int32_t>(n_batch_), 0, 1);
  const uint32_t n_seq = llama_n_seq_max(ctx_);
  slots_.resize(n_seq);
  for (uint32_t i = 0; i < n_seq; ++i) slots_[i].seq = static_cast<llama_seq_id>(i);
  llama_set_abort_callback(ctx_, &ParallelContext::AbortCallback, this);
}

ParallelContext::~ParallelContext() {
  StopThread();
  if (ctx_ != nullptr) llama_free(ctx_);
  if (batch_.token != nullptr) llama_batch_free(batch_);
}

bool ParallelContext::AbortCallback(void *data) {
  return static_cast<ParallelContext *>(data)->abort_.load(std::memory_order_relaxed);
}

void ParallelContext::StopThread() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  abort_.store(true);
  cv_.notify_one();
  if (thread_.joinable()) thread_.join();
}

// ---------------------------------------------------------------------------------------------------------
// Main thread

Napi::Value ParallelContext::Info(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  Napi::Object out = Napi::Object::New(env);
  out.Set("contextSize", n_ctx_);
  out.Set("slotContextSize", n_ctx_seq_);
  out.Set("parallel", static_cast<uint32_t>(slots_.size()));
  out.Set("batchSize", n_batch_);
  if (ctx_ != nullptr && !disposed_) {
    out.Set("ubatchSize", llama_n_ubatch(ctx_));
    out.Set("threads", llama_n_threads(ctx_));
    out.Set("batchThreads", llama_n_threads_batch(ctx_));
  }
  return out;
}

// submit(id: number, prompt: Int32Array, params, group?: number) -> void. The outcome comes as a done or error
// event. Requests of one group with the same prompt evaluate it once (Request::group).
Napi::Value ParallelContext::Submit(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (disposed_) Throw(env, code::kDisposed, "the parallel context has been disposed");
  if (info.Length() < 3 || !info[0].IsNumber() || !info[2].IsObject()) {
    Throw(env, code::kInvalidArgument, "submit(id, prompt, params)");
  }
  auto request = std::make_unique<Request>();
  request->id = info[0].As<Napi::Number>().Int64Value();
  request->submitted = std::chrono::steady_clock::now();
  request->prompt = TokenIds(env, info[1], n_vocab_, "prompt");
  if (request->prompt.empty()) Throw(env, code::kInvalidArgument, "the prompt must contain at least one token");
  if (request->prompt.size() > n_ctx_seq_) {
    Throw(env, code::kContextOverflow, "the prompt has " + std::to_string(request->prompt.size()) +
                                           " tokens, more than a slot's context size of " + std::to_string(n_ctx_seq_));
  }
  Napi::Object p = info[2].As<Napi::Object>();
  request->sampling = SamplerParams::FromJs(env, p, n_vocab_);
  request->stops = StopRules::FromJs(env, p, n_vocab_);
  if (p.Has("reuseCache")) request->reuse_cache = p.Get("reuseCache").ToBoolean();
  if (info.Length() > 3 && info[3].IsNumber()) request->group = info[3].As<Napi::Number>().Int64Value();
  request->stream_interval = StreamIntervalFromJs(p);
  request->loras = LorasFromJs(env, p.Get("loras"), model_.get());
  if (outstanding_++ == 0) outbox_.Ref(env);
  {
    std::lock_guard<std::mutex> lock(mu_);
    inbox_.push_back(std::move(request));
  }
  cv_.notify_one();
  return env.Undefined();
}

// cancel(id): ends the request at the next step; its done event has stopReason 'abort' and what was
// generated so far.
Napi::Value ParallelContext::Cancel(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (disposed_) return env.Undefined();
  {
    std::lock_guard<std::mutex> lock(mu_);
    cancels_.insert(info[0].As<Napi::Number>().Int64Value());
  }
  cv_.notify_one();
  return env.Undefined();
}

Napi::Value ParallelContext::Memory(const Napi::CallbackInfo &info) {
  if (disposed_ || ctx_ == nullptr) Throw(info.Env(), code::kDisposed, "the parallel context has been disposed");
  return Context::MemoryOf(info.Env(), ctx_);
}

Napi::Value ParallelContext::Stats(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  Napi::Object out = Napi::Object::New(env);
  auto set = [&](const char *key, const std::atomic<int64_t> &v) { out.Set(key, Napi::Number::New(env, static_cast<double>(v.load()))); };
  set("busySlots", busy_slots_);
  set("waiting", waiting_count_);
  set("promptTokens", prompt_tokens_);
  set("generatedTokens", generated_tokens_);
  set("reusedTokens", reused_tokens_);
  set("sharedTokens", shared_tokens_);
  set("decodeCalls", decode_calls_);
  set("completed", completed_);
  set("cancelled", cancelled_);
  set("failed", failed_);
  out.Set("outstanding", Napi::Number::New(env, static_cast<double>(outstanding_)));
  return out;
}

// dispose() -> Promise<void>: stops the loop (requests still running end with a disposed error), frees the
// context.
Napi::Value ParallelContext::Dispose(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (disposed_) {
    auto d = Napi::Promise::Deferred::New(env);
    d.Resolve(env.Undefined());
    return d.Promise();
  }
  disposed_ = true;
  if (has_cleanup_) {
    cleanup_.Remove(env);
    has_cleanup_ = false;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  abort_.store(true);
  cv_.notify_one();
  return PromiseWorker<bool>::Start(
      env, Value(), code::kDecode,
      [this]() {
        if (thread_.joinable()) thread_.join();
        llama_free(ctx_);
        ctx_ = nullptr;
        // The adapters it applied (llama.cpp held their pointers), so that the model they hold can be freed.
        applied_.clear();
        for (Slot &slot : slots_) slot.loras.clear();
        // When this context holds the model's last reference (its Model was collected undisposed), the weights
        // are freed here, off the main thread, before dispose() resolves.
        model_.reset();
        return true;
      },
      [this](Napi::Env env, bool &) -> Napi::Value {
        Deliver(env);
        outbox_.Close();
        return env.Undefined();
      });
}

Napi::Value ParallelContext::Disposed(const Napi::CallbackInfo &info) { return Napi::Boolean::New(info.Env(), disposed_); }

// Hands queued text and outcomes to JS in one call: [{ id, text }] first, then [{ id, result } | { id, code,
// message }].
void ParallelContext::Deliver(Napi::Env env) {
  Outgoing out = outbox_.Take();
  if (out.text.empty() && out.events.empty()) return;
  Napi::HandleScope scope(env);
  Napi::Array batch = Napi::Array::New(env);
  uint32_t n = 0;
  for (auto &[id, chunks] : out.text) {
    for (const Chunk &chunk : chunks) {
      Napi::Object e = Napi::Object::New(env);
      e.Set("id", Napi::Number::New(env, static_cast<double>(id)));
      e.Set("text", Napi::String::New(env, chunk.text));
      if (chunk.has_logprobs) e.Set("logprobs", LogprobsToJs(env, vocab_, chunk.logprobs));
      batch.Set(n++, e);
    }
  }
  for (Event &event : out.events) {
    Napi::Object e = Napi::Object::New(env);
    e.Set("id", Napi::Number::New(env, static_cast<double>(event.id)));
    if (event.result) {
      const Result &r = *event.result;
      Napi::Object o = r.ToJs(env, vocab_);
      o.Set("queueMs", r.queue_ms);
      o.Set("slot", r.slot);
      e.Set("result", o);
    }
    if (event.code != nullptr) {
      e.Set("code", event.code);
      e.Set("message", event.message);
    }
    batch.Set(n++, e);
    if (--outstanding_ == 0 && !disposed_) outbox_.Unref(env);
  }
  if (!on_events_.IsEmpty()) on_events_.Call({batch});
}

// ---------------------------------------------------------------------------------------------------------
// Loop thread

void ParallelContext::Text(const Request &request, const std::string &text, std::vector<TokenLogprob> &&entries) {
  if (text.empty() && entries.empty()) return;
  const std::chrono::milliseconds interval = request.stream_interval;
  const bool has_logprobs = request.sampling.top_logprobs >= 0;
  // A delivery takes every request's queued text, so a request with a longer interval can have its text go
  // sooner with another's.
  outbox_.Put(interval, [&](Outgoing &out) { JoinChunk(out.text[request.id], text, std::move(entries), has_logprobs, interval); });
}

llama_token ParallelContext::SampleSlot(Slot &slot, const float *logits) {
  try {
    return slot.active->sampler->Sample(logits);
  } catch (const CodedError &e) {
    if (e.code() != code::kGrammar) throw;
    // Only this request fails, with what it had produced; its cache holds what was decoded.
    Active &a = *slot.active;
    const std::string tail = a.stream.Finish();
    a.result->text += tail;
    Text(*a.req, tail, {});
    Event event;
    event.id = a.req->id;
    event.code = code::kGrammar;
    event.message = e.what();
    a.result->stop_reason = "abort";
    a.result->generate_ms = a.result->tokens.empty() ? 0 : MsBetween(a.first_token, Clock::now());
    event.result = std::move(a.result);
    slot.active.reset();
    busy_slots_.fetch_sub(1);
    failed_.fetch_add(1);
    Post(std::move(event));
    return -1;
  }
}

void ParallelContext::Post(Event event) {
  outbox_.Put(std::chrono::milliseconds(0), [&](Outgoing &out) { out.events.push_back(std::move(event)); });
}

void ParallelContext::Fail(int64_t id, const char *code, const std::string &message) {
  failed_.fetch_add(1);
  Event e;
  e.id = id;
  e.code = code;
  e.message = message;
  Post(std::move(e));
}

void ParallelContext::FailSlot(Slot &slot, const char *code, const std::string &message) {
  const int64_t id = slot.active->req->id;
  Text(*slot.active->req, slot.active->stream.Finish(), {});
  // The slot is free before anyone hears of the outcome (stats() read in the callback must agree).
  slot.active.reset();
  busy_slots_.fetch_sub(1);
  Fail(id, code, message);
}

void ParallelContext::Finish(Slot &slot, const char *stop_reason) {
  Active &a = *slot.active;
  const std::string tail = a.stream.Finish();
  a.result->text += tail;
  Text(*a.req, tail, {});
  const auto now = Clock::now();
  a.result->stop_reason = stop_reason;
  a.result->generate_ms = a.result->tokens.empty() ? 0 : MsBetween(a.first_token, now);
  if (a.result->tokens.empty()) a.result->prompt_ms = MsBetween(a.started, now);
  if (std::string(stop_reason) != "abort") completed_.fetch_add(1);
  Event e;
  e.id = a.req->id;
  e.result = std::move(a.result);
  slot.active.reset();
  busy_slots_.fetch_sub(1);
  Post(std::move(e));
}

bool ParallelContext::WaitsForSibling(const Request &request) const {
  if (request.group == 0 || !can_share_) return false;
  for (const Slot &slot : slots_) {
    if (!slot.active) continue;
    const Active &a = *slot.active;
    if (a.req->group == request.group && a.prompt_pos < a.req->prompt.size() && a.req->prompt == request.prompt &&
        SameLoras(a.req->loras, request.loras)) {
      return true;
    }
  }
  return false;
}

void ParallelContext::Assign(std::unique_ptr<Request> request) {
  // The free slot sharing the longest prefix with the prompt; among equals, the one unused longest.
  // A slot whose last prompt was this very prompt has its logits: nothing to evaluate.
  // First, as it can fail (a grammar naming a token this vocabulary lacks): the slots are not touched yet.
  auto sampler = std::make_unique<Sampler>(request->sampling, vocab_, n_vocab_, request->prompt, request->stops.stop_at_eog);
  const bool seeded = request->sampling.seeded;
  const std::vector<llama_token> &prompt = request->prompt;
  auto kept_for = [&](const Slot &slot) {
    return !slot.prompt_logits.empty() && slot.prompt_logits_at == prompt.size() && (!seeded || slot.prompt_logits_exact) &&
           slot.cache.size() >= prompt.size() && std::equal(prompt.begin(), prompt.end(), slot.cache.begin());
  };
  // How much of the prompt a slot's cells can serve: all of it with its kept logits, else its common prefix
  // short of the last token (whose logits are needed); for a seeded request only the slot's canonical prefix.
  auto usable = [&](const Slot &slot) -> size_t {
    if (!SameLoras(slot.loras, request->loras)) return 0;  // its cells were computed with other adapters
    if (kept_for(slot)) return prompt.size();
    size_t keep = 0;
    const size_t limit = std::min(slot.cache.size(), prompt.size() - 1);
    while (keep < limit && slot.cache[keep] == prompt[keep]) ++keep;
    return seeded ? std::min(keep, slot.canonical) / n_ubatch_ * n_ubatch_ : keep;
  };
  Slot *best = nullptr;
  size_t best_keep = 0;
  for (Slot &slot : slots_) {
    if (slot.active) continue;
    const size_t keep = request->reuse_cache ? usable(slot) : 0;
    if (best == nullptr || keep > best_keep || (keep == best_keep && slot.last_used < best->last_used)) {
      best = &slot;
      best_keep = keep;
    }
  }
  // A busy slot that can serve more of the prompt (another choice of this prompt, another request with the same
  // system prompt): its cells are copied instead of evaluated again. Without a unified cache the copy moves
  // the whole sequence's buffer, so a few tokens are not worth it; the prompt's kept logits always are.
  // `reuseCache: false` takes only its own group's cells (the same request's prompt, evaluated whole).
  Slot *donor = nullptr;
  size_t donor_keep = best_keep;
  if (can_share_) {
    for (Slot &other : slots_) {
      if (!other.active) continue;
      if (!request->reuse_cache && (request->group == 0 || other.active->req->group != request->group)) continue;
      const size_t keep = usable(other);
      if (keep > donor_keep && (keep == prompt.size() || keep >= best_keep + kMinSharedTokens)) {
        donor = &other;
        donor_keep = keep;
      }
    }
  }
  Slot &slot = *best;
  llama_memory_t mem = llama_get_memory(ctx_);
  if (donor != nullptr) {
    llama_memory_seq_rm(mem, slot.seq, -1, -1);
    llama_memory_seq_cp(mem, donor->seq, slot.seq, -1, -1);
    slot.cache.assign(donor->cache.begin(), donor->cache.end());
    slot.canonical = donor->canonical;
    slot.prompt_logits = donor->prompt_logits;
    slot.prompt_logits_at = donor->prompt_logits_at;
    slot.prompt_logits_exact = donor->prompt_logits_exact;
    best_keep = donor_keep;
  }
  if (!llama_memory_seq_rm(mem, slot.seq, static_cast<llama_pos>(best_keep), -1)) {
    llama_memory_seq_rm(mem, slot.seq, -1, -1);
    best_keep = 0;
  }
  if (donor != nullptr) shared_tokens_.fetch_add(static_cast<int64_t>(best_keep));
  slot.cache.resize(best_keep);
  slot.loras = request->loras;
  Forget(slot);
  slot.last_used = ++clock_;
  auto active = std::make_unique<Active>(std::move(request));
  active->alone = seeded;
  active->exact = seeded && best_keep == slot.canonical;
  active->from_kept_logits = best_keep == prompt.size();
  active->prompt_pos = best_keep;
  active->started = Clock::now();
  active->result->queue_ms = MsBetween(active->req->submitted, active->started);
  active->result->reused_tokens = best_keep;
  active->result->evaluated_tokens = active->req->prompt.size() - best_keep;
  active->result->slot = static_cast<int32_t>(slot.seq);
  active->sampler = std::move(sampler);
  active->result->has_logprobs = active->req->sampling.top_logprobs >= 0;
  reused_tokens_.fetch_add(static_cast<int64_t>(best_keep));
  slot.active = std::move(active);
  busy_slots_.fetch_add(1);
}

void ParallelContext::Loop() {
  for (;;) {
    std::deque<std::unique_ptr<Request>> incoming;
    std::unordered_set<int64_t> cancels;
    {
      std::unique_lock<std::mutex> lock(mu_);
      const bool idle = busy_slots_.load() == 0 && waiting_.empty();
      if (idle) cv_.wait(lock, [this] { return stopping_ || !inbox_.empty() || !cancels_.empty(); });
      if (stopping_) break;
      incoming.swap(inbox_);
      cancels.swap(cancels_);
    }
    for (auto &r : incoming) {
      r->prompt.shrink_to_fit();
      waiting_.push_back(std::move(r));
    }
    if (!cancels.empty()) {
      for (auto it = waiting_.begin(); it != waiting_.end();) {
        if (cancels.count((*it)->id)) {
          // Never started: a result with nothing in it.
          Event e;
          e.id = (*it)->id;
          e.result = std::make_unique<Result>();
          e.result->stop_reason = "abort";
          e.result->queue_ms = MsBetween((*it)->submitted, Clock::now());
          cancelled_.fetch_add(1);
          Post(std::move(e));
          it = waiting_.erase(it);
        } else {
          ++it;
        }
      }
      for (Slot &slot : slots_) {
        if (slot.active && cancels.count(slot.active->req->id)) {
          cancelled_.fetch_add(1);
          Finish(slot, "abort");
        }
      }
    }
    // In order, except that a choice whose sibling is still evaluating their prompt lets the next ones by.
    for (auto it = waiting_.begin(); it != waiting_.end() && busy_slots_.load() < static_cast<int64_t>(slots_.size());) {
      if (WaitsForSibling(**it)) {
        ++it;
        continue;
      }
      std::unique_ptr<Request> r = std::move(*it);
      it = waiting_.erase(it);
      const int64_t id = r->id;
      // An exception must not leave this thread (std::terminate would end the process): it fails the request.
      try {
        Assign(std::move(r));
      } catch (const CodedError &e) {
        Fail(id, e.code(), e.what());
      } catch (...) {
        Fail(id, code::kDecode, CurrentExceptionMessage());
      }
    }
    waiting_count_.store(static_cast<int64_t>(waiting_.size()));
    if (busy_slots_.load() == 0) continue;
    try {
      Step();
    } catch (...) {
      // What a step threw (llama.cpp's C++ exceptions, bad_alloc) fails the requests it was serving.
      const std::string message = CurrentExceptionMessage();
      for (Slot &slot : slots_) {
        if (slot.active) FailSlot(slot, code::kDecode, message);
      }
    }
  }
  // Stopping (dispose or process exit): everything still open ends with a disposed error.
  for (Slot &slot : slots_) {
    if (slot.active) FailSlot(slot, code::kDisposed, "the parallel context was disposed");
  }
  std::deque<std::unique_ptr<Request>> rest;
  {
    std::lock_guard<std::mutex> lock(mu_);
    rest.swap(inbox_);
  }
  for (auto &r : waiting_) Fail(r->id, code::kDisposed, "the parallel context was disposed");
  for (auto &r : rest) Fail(r->id, code::kDisposed, "the parallel context was disposed");
  waiting_.clear();
}

void ParallelContext::Forget(Slot &slot) {
  slot.canonical = std::min(slot.canonical, slot.cache.size() / n_ubatch_ * n_ubatch_);
  if (slot.prompt_logits_at > slot.cache.size()) slot.prompt_logits.clear();
}

void ParallelContext::Step() {
  // A prompt the slot had just evaluated: sample from its kept logits at once.
  const auto now = Clock::now();
  for (Slot &slot : slots_) {
    if (!slot.active || !slot.active->from_kept_logits) continue;
    Active &a = *slot.active;
    a.from_kept_logits = false;
    const llama_token token = SampleSlot(slot, slot.prompt_logits.data());
    if (token >= 0) Consume(slot, token, now);
  }
  // Requests without a seed share one batch per set of LoRA adapters (continuous batching); each seeded one gets
  // batches of its own.
  std::vector<std::vector<Slot *>> shared;
  for (Slot &slot : slots_) {
    if (!slot.active || slot.active->alone) continue;
    auto same = std::find_if(shared.begin(), shared.end(), [&](const std::vector<Slot *> &g) {
      return SameLoras(g.front()->active->req->loras, slot.active->req->loras);
    });
    if (same == shared.end()) shared.push_back({&slot});
    else same->push_back(&slot);
  }
  auto apply = [&](const LoraSet &loras) {
    if (SameLoras(applied_, loras)) return;
    ApplyLoras(ctx_, loras);
    applied_ = loras;
  };
  for (const std::vector<Slot *> &group : shared) {
    // A slot may have finished while an earlier group was decoded: the set is read from one still active.
    auto live = std::find_if(group.begin(), group.end(), [](const Slot *s) { return s->active != nullptr; });
    if (live == group.end()) continue;
    apply((*live)->active->req->loras);
    DecodeGroup(group, false);
  }
  for (Slot &slot : slots_) {
    if (slot.active && slot.active->alone) {
      apply(slot.active->req->loras);
      DecodeGroup({&slot}, true);
    }
  }
}

void ParallelContext::DecodeGroup(const std::vector<Slot *> &group, bool alone) {
  // 1. The batch: one token for every generating slot, then prompt tokens while there is room. A slot decoded
  // alone gets its prompt in chunks that end at multiples of the ubatch size (as Context::Decode).
  batch_.n_tokens = 0;
  auto add = [&](llama_token token, llama_pos pos, llama_seq_id seq, bool logits) {
    const int32_t i = batch_.n_tokens++;
    batch_.token[i] = token;
    batch_.pos[i] = pos;
    batch_.n_seq_id[i] = 1;
    batch_.seq_id[i][0] = seq;
    batch_.logits[i] = logits;
    return i;
  };
  const size_t ub = n_ubatch_;
  const size_t step = std::max<size_t>(ub, n_batch_ / ub * ub);
  for (Slot *slot : group) {
    if (!slot->active) continue;
    Active &a = *slot->active;
    a.logits_index = -1;
    a.batch_count = 0;
    if (!a.has_next) continue;
    a.batch_from = static_cast<size_t>(batch_.n_tokens);
    a.logits_index = add(a.next, static_cast<llama_pos>(slot->cache.size()), slot->seq, true);
    a.batch_count = 1;
  }
  for (Slot *slot : group) {
    if (!slot->active || slot->active->has_next) continue;
    Active &a = *slot->active;
    const size_t room = n_batch_ - static_cast<size_t>(batch_.n_tokens);
    if (room == 0) break;
    const size_t left = a.req->prompt.size() - a.prompt_pos;
    size_t take = std::min(room, left);
    if (alone) {
      const size_t pos = slot->cache.size();
      take = std::min(take, pos % ub == 0 ? step : ub - pos % ub);
    }
    a.batch_from = static_cast<size_t>(batch_.n_tokens);
    a.batch_count = take;
    for (size_t i = 0; i < take; ++i) {
      const size_t at = a.prompt_pos + i;
      const bool last = at == a.req->prompt.size() - 1;
      const int32_t row = add(a.req->prompt[at], static_cast<llama_pos>(slot->cache.size() + i), slot->seq, last);
      if (last) a.logits_index = row;
    }
  }
  if (batch_.n_tokens == 0) return;

  // 2. Decode.
  TakeThreadErrors();
  const int32_t ret = llama_decode(ctx_, batch_);
  decode_calls_.fetch_add(1);
  llama_memory_t mem = llama_get_memory(ctx_);
  if (ret != 0) {
    if (ret == 2 || abort_.load()) return;  // dispose: the loop ends next
    std::string why = TakeThreadErrors();
    const std::string message = "llama_decode failed with status " + std::to_string(ret) + (why.empty() ? "" : ": " + why);
    // The requests in this batch fail; each slot's token list is cut back to what its memory holds.
    for (Slot *slot : group) {
      if (!slot->active || slot->active->batch_count == 0) continue;
      const llama_pos pos_max = llama_memory_seq_pos_max(mem, slot->seq);
      const size_t kept = pos_max < 0 ? 0 : static_cast<size_t>(pos_max) + 1;
      if (kept < slot->cache.size()) slot->cache.resize(kept);
      llama_memory_seq_rm(mem, slot->seq, static_cast<llama_pos>(slot->cache.size()), -1);
      Forget(*slot);
      FailSlot(*slot, ret == 1 ? code::kContextOverflow : code::kDecode, message);
    }
    return;
  }

  // 3. Record what the memory now holds, and sample every slot that got logits.
  const auto now = Clock::now();
  for (Slot *slot : group) {
    if (!slot->active || slot->active->batch_count == 0) continue;
    Active &a = *slot->active;
    const size_t base = slot->cache.size();
    if (a.has_next) {
      slot->cache.push_back(a.next);
      a.has_next = false;
      generated_tokens_.fetch_add(1);
    } else {
      slot->cache.insert(slot->cache.end(), a.req->prompt.begin() + static_cast<std::ptrdiff_t>(a.prompt_pos),
                         a.req->prompt.begin() + static_cast<std::ptrdiff_t>(a.prompt_pos + a.batch_count));
      a.prompt_pos += a.batch_count;
      prompt_tokens_.fetch_add(static_cast<int64_t>(a.batch_count));
    }
    if (alone && base == slot->canonical) slot->canonical = base + a.batch_count / ub * ub;
    if (a.logits_index < 0) continue;
    if (a.result->tokens.empty()) {
      // The prompt's last logits, for a request that repeats this prompt (Assign).
      const float *row = llama_get_logits_ith(ctx_, a.logits_index);
      slot->prompt_logits.assign(row, row + n_vocab_);
      slot->prompt_logits_at = slot->cache.size();
      slot->prompt_logits_exact = a.exact;
    }
    const llama_token token = SampleSlot(*slot, llama_get_logits_ith(ctx_, a.logits_index));
    if (token >= 0) Consume(*slot, token, now);
  }
}

void ParallelContext::Consume(Slot &slot, llama_token token, Clock::time_point now) {
  Active &a = *slot.active;
  if (a.req->stops.max_tokens == 0) {
    // maxTokens 0: the prompt was evaluated (and cached); the sampled token is dropped, as llama-server's n_predict 0.
    Finish(slot, "maxTokens");
    return;
  }
  if (a.result->tokens.empty()) {
    a.first_token = now;
    a.result->prompt_ms = MsBetween(a.started, now);
  }
  a.result->tokens.push_back(token);
  TokenVerdict verdict = JudgeToken(vocab_, token, a.result->tokens.size(), slot.cache.size() < n_ctx_seq_, a.req->stops, a.stream, piece_);
  a.result->text += verdict.text;
  std::vector<TokenLogprob> entries = std::move(a.sampler->logprobs);
  a.sampler->logprobs.clear();
  a.result->logprobs.insert(a.result->logprobs.end(), entries.begin(), entries.end());
  Text(*a.req, verdict.text, std::move(entries));
  if (verdict.stop_reason != nullptr) {
    if (verdict.by_token) a.result->stop_token = token;
    if (a.stream.stopped()) a.result->stop_string = a.stream.matched_stop();
    Finish(slot, verdict.stop_reason);
    return;
  }
  a.next = token;
  a.has_next = true;
}

}  // namespace huozi
