#include "context.h"

#include <algorithm>
#include <map>
#include <string>

#include "addon_data.h"
#include "errors.h"
#include "llama-ext.h"
#include "log.h"
#include "model.h"
#include "session_state.h"
#include "tokens.h"
#include "promise_worker.h"

namespace huozi {

Napi::Function Context::Init(Napi::Env env) {
  return DefineClass(env, "NativeContext",
                     {
                         InstanceMethod<&Context::Info>("info"),
                         InstanceMethod<&Context::Tokens>("tokens"),
                         InstanceMethod<&Context::Evaluate>("evaluate"),
                         InstanceMethod<&Context::Generate>("generate"),
                         InstanceMethod<&Context::EraseFrom>("eraseFrom"),
                         InstanceMethod<&Context::SaveState>("saveState"),
                         InstanceMethod<&Context::Imatrix>("imatrix"),
                         InstanceMethod<&Context::Memory>("memory"),
                         InstanceMethod<&Context::LoadState>("loadState"),
                         InstanceMethod<&Context::Abort>("abort"),
                         InstanceMethod<&Context::SetThreads>("setThreads"),
                         InstanceMethod<&Context::SetLoras>("setLoras"),
                         InstanceMethod<&Context::Dispose>("dispose"),
                         InstanceAccessor<&Context::Disposed>("disposed"),
                     });
}

namespace {

uint32_t U32(Napi::Object o, const char *key, uint32_t fallback) {
  Napi::Value v = o.Get(key);
  return v.IsNumber() ? v.As<Napi::Number>().Uint32Value() : fallback;
}

}  // namespace

llama_context_params ContextParamsFromJs(Napi::Env env, Napi::Object o) {
  llama_context_params cp = llama_context_default_params();
  cp.n_ctx = U32(o, "contextSize", 4096);
  cp.n_batch = U32(o, "batchSize", 512);
  cp.n_ubatch = U32(o, "ubatchSize", std::min(cp.n_batch, 512u));
  cp.n_threads = static_cast<int32_t>(U32(o, "threads", 1));
  cp.n_threads_batch = static_cast<int32_t>(U32(o, "batchThreads", static_cast<uint32_t>(cp.n_threads)));
  Napi::Value fa = o.Get("flashAttention");
  cp.flash_attn_type = static_cast<llama_flash_attn_type>(fa.IsNumber() ? fa.As<Napi::Number>().Int32Value() : -1);
  // The KV cache's types, one of common/arg.cpp's kv_cache_types (lib/context-options.ts checked the names).
  const uint32_t type_k = U32(o, "typeK", GGML_TYPE_F16);
  const uint32_t type_v = U32(o, "typeV", GGML_TYPE_F16);
  for (uint32_t t : {type_k, type_v}) {
    switch (static_cast<ggml_type>(t)) {
      case GGML_TYPE_F32: case GGML_TYPE_F16: case GGML_TYPE_BF16: case GGML_TYPE_Q8_0: case GGML_TYPE_Q4_0:
      case GGML_TYPE_Q4_1: case GGML_TYPE_IQ4_NL: case GGML_TYPE_Q5_0: case GGML_TYPE_Q5_1:
        break;
      default:
        Throw(env, code::kOutOfRange, "the KV cache type must be one of f32, f16, bf16, q8_0, q4_0, q4_1, iq4_nl, q5_0, q5_1");
    }
  }
  cp.type_k = static_cast<ggml_type>(type_k);
  cp.type_v = static_cast<ggml_type>(type_v);
  cp.n_seq_max = 1;
  cp.no_perf = true;
  if (cp.n_ctx == 0 || cp.n_batch == 0 || cp.n_ubatch == 0 || cp.n_ubatch > cp.n_batch) {
    Throw(env, code::kOutOfRange, "contextSize, batchSize and ubatchSize must be positive with ubatchSize <= batchSize");
  }
  if (cp.n_threads < 1 || cp.n_threads > 512 || cp.n_threads_batch < 1 || cp.n_threads_batch > 512) {
    Throw(env, code::kOutOfRange, "threads must be between 1 and 512");
  }
  return cp;
}

llama_context *InitContext(llama_model *model, const llama_context_params &cp) {
  TakeThreadErrors();
  llama_context *ctx = llama_init_from_model(model, cp);
  if (ctx == nullptr) {
    std::string why = TakeThreadErrors();
    throw CodedError(code::kContextCreate, "failed to create the context" + (why.empty() ? "" : ": " + why));
  }
  return ctx;
}

Napi::Value Context::Create(Napi::Env env, std::shared_ptr<ModelHandle> model, Napi::Object o) {
  const llama_context_params base = ContextParamsFromJs(env, o);
  const bool collect_imatrix = o.Get("collectImatrix").ToBoolean();
  struct Created {
    llama_context *ctx = nullptr;
    std::shared_ptr<ModelHandle> model;
    std::shared_ptr<ImatrixCollector> imatrix;
  };
  return PromiseWorker<Created>::Start(
      env, Napi::Object::New(env), code::kContextCreate,
      [model, base, collect_imatrix]() {
        llama_context_params cp = base;
        std::shared_ptr<ImatrixCollector> imatrix;
        if (collect_imatrix) {
          imatrix = std::make_shared<ImatrixCollector>();
          cp.cb_eval = &ImatrixCollector::Callback;
          cp.cb_eval_user_data = imatrix.get();
        }
        llama_context *ctx = InitContext(model->model, cp);
        return Created{ctx, model, imatrix};
      },
      [base](Napi::Env env, Created &created) -> Napi::Value {
        Napi::Object object = Data(env).context_ctor.New({Napi::External<llama_context>::New(env, created.ctx)});
        Context *context = Context::Unwrap(object);
        // llama.cpp rounds the cells up to a multiple of 256 (contextSize 1 gave 256): the context holds exactly
        // the tokens that were asked for, the rest of the allocation stays unused.
        context->n_ctx_ = std::min(context->n_ctx_, base.n_ctx);
        context->model_ = std::move(created.model);
        context->vocab_ = llama_model_get_vocab(context->model_->model);
        context->n_vocab_ = llama_vocab_n_tokens(context->vocab_);
        context->imatrix_ = std::move(created.imatrix);
        created.ctx = nullptr;
        return object;
      });
}

Context::Context(const Napi::CallbackInfo &info) : Napi::ObjectWrap<Context>(info) {
  Napi::Env env = info.Env();
  if (info.Length() != 1 || !info[0].IsExternal()) {
    Throw(env, code::kInvalidArgument, "NativeContext cannot be constructed directly; use model.createContext()");
  }
  ctx_ = info[0].As<Napi::External<llama_context>>().Data();
  n_ctx_ = llama_n_ctx(ctx_);
  n_batch_ = llama_n_batch(ctx_);
  n_ubatch_ = llama_n_ubatch(ctx_);
  llama_set_abort_callback(ctx_, &Context::AbortCallback, this);
  executor_ = ExecutorPool::Acquire();
}

Context::~Context() {
  // Reached by GC or environment teardown. A worker still running holds a reference to this object, so
  // none is; the executor is idle.
  if (ctx_ != nullptr) llama_free(ctx_);  // before model_ (a member) releases the model
  ExecutorPool::Release(std::move(executor_));
}

void Context::Free() {
  if (ctx_ == nullptr) return;
  ExecutorPool::Release(std::move(executor_));
  llama_free(ctx_);
  ctx_ = nullptr;
  loras_.clear();  // after llama_free: the context held their pointers
  tokens_.clear();
  model_.reset();  // if this was the model's last holder, its weights are freed on the pool (model.h)
}

bool Context::AbortCallback(void *data) { return static_cast<Context *>(data)->abort_.load(std::memory_order_relaxed); }

void Context::Begin(Napi::Env env) {
  if (ctx_ == nullptr || dispose_pending_) Throw(env, code::kDisposed, "the context has been disposed");
  if (busy_) Throw(env, code::kBusy, "the context is busy with another operation");
  busy_ = true;
  abort_.store(false);
}

void Context::End() {
  busy_ = false;
  if (dispose_pending_) Free();
}

void Context::CheckIdle(Napi::Env env) {
  if (ctx_ == nullptr || dispose_pending_) Throw(env, code::kDisposed, "the context has been disposed");
  if (busy_) Throw(env, code::kBusy, "the context is busy with another operation");
}

bool Context::Truncate(size_t keep) {
  if (keep >= tokens_.size()) return true;
  llama_memory_t mem = llama_get_memory(ctx_);
  const bool cut = llama_memory_seq_rm(mem, 0, static_cast<llama_pos>(keep), -1);
  if (!cut) llama_memory_clear(mem, true);
  tokens_.resize(cut ? keep : 0);
  has_logits_ = false;
  Forget();
  return cut || keep == 0;
}

void Context::Forget() {
  canonical_ = std::min(canonical_, tokens_.size() / n_ubatch_ * n_ubatch_);
  if (prompt_logits_at_ > tokens_.size()) prompt_logits_.clear();
}

void Context::KeepPromptLogits(bool exact) {
  const float *row = llama_get_logits_ith(ctx_, -1);
  prompt_logits_.assign(row, row + n_vocab_);
  prompt_logits_at_ = tokens_.size();
  prompt_logits_exact_ = exact;
}

const std::vector<float> *Context::PromptLogits(const std::vector<llama_token> &prompt, bool need_exact) const {
  if (prompt_logits_.empty() || prompt_logits_at_ != prompt.size() || tokens_.size() < prompt.size()) return nullptr;
  if (need_exact && !prompt_logits_exact_) return nullptr;
  if (!std::equal(prompt.begin(), prompt.end(), tokens_.begin())) return nullptr;
  return &prompt_logits_;
}

void Context::Decode(const llama_token *tokens, size_t n, LogitsMode mode, std::vector<float> *all_logits) {
  if (n == 0) return;
  if (tokens_.size() + n > n_ctx_) {
    throw CodedError(code::kContextOverflow, "evaluating " + std::to_string(n) + " tokens after " +
                                                 std::to_string(tokens_.size()) + " would exceed the context size of " +
                                                 std::to_string(n_ctx_));
  }
  if (mode == LogitsMode::kAll && all_logits != nullptr) all_logits->reserve(n * static_cast<size_t>(n_vocab_));
  has_logits_ = false;
  TakeThreadErrors();  // drop lines left over from an earlier call
  // One token (every step of generation): llama_batch_get_one, no allocation. It puts the token at the next
  // position of sequence 0 and asks for its logits, which is what kLast wants.
  llama_batch one = llama_batch_get_one(const_cast<llama_token *>(tokens), 1);
  llama_batch batch = n == 1 && mode == LogitsMode::kLast
                          ? one
                          : llama_batch_init(static_cast<int32_t>(std::min<size_t>(n, n_batch_)), 0, 1);
  struct BatchGuard {
    llama_batch &b;
    bool owned;
    ~BatchGuard() {
      if (owned) llama_batch_free(b);
    }
  } guard{batch, batch.pos != nullptr};
  // Chunks end at multiples of the ubatch size counted from position 0 (llama.cpp then splits each chunk into
  // whole ubatches), so that a prompt evaluated after a cached prefix of whole ubatches is batched exactly as in
  // a cold evaluation (see canonical()).
  const size_t ub = n_ubatch_;
  const size_t step = std::max<size_t>(ub, n_batch_ / ub * ub);
  size_t count = 0;
  for (size_t start = 0; start < n; start += count) {
    const size_t base = tokens_.size();
    count = std::min<size_t>(n - start, base % ub == 0 ? step : ub - base % ub);
    if (guard.owned) {
      batch.n_tokens = static_cast<int32_t>(count);
      for (size_t i = 0; i < count; ++i) {
        batch.token[i] = tokens[start + i];
        batch.pos[i] = static_cast<llama_pos>(base + i);
        batch.n_seq_id[i] = 1;
        batch.seq_id[i][0] = 0;
        const bool last = start + i == n - 1;
        batch.logits[i] = mode == LogitsMode::kAll || mode == LogitsMode::kComputeAll || (mode == LogitsMode::kLast && last);
      }
    }
    const int32_t ret = llama_decode(ctx_, batch);
    if (ret != 0) {
      // Keep tokens_ equal to what the memory holds: some ubatches may have been kept (abort, fatal error).
      const llama_pos pos_max = llama_memory_seq_pos_max(llama_get_memory(ctx_), 0);
      const size_t kept = pos_max < 0 ? 0 : static_cast<size_t>(pos_max) + 1;
      if (kept < base) {
        tokens_.resize(kept);
        Forget();
      } else {
        tokens_.insert(tokens_.end(), tokens + start, tokens + start + std::min(count, kept - base));
      }
      if (ret == 2 || abort_.load()) throw CodedError(code::kAborted, "evaluation was aborted");
      if (ret == 1) throw CodedError(code::kContextOverflow, "no room left in the context memory for this batch");
      std::string why = TakeThreadErrors();
      throw CodedError(code::kDecode, "llama_decode failed with status " + std::to_string(ret) + (why.empty() ? "" : ": " + why));
    }
    tokens_.insert(tokens_.end(), tokens + start, tokens + start + count);
    if (base == canonical_) canonical_ = base + count / ub * ub;
    if (mode == LogitsMode::kAll && all_logits != nullptr) {
      for (size_t i = 0; i < count; ++i) {
        const float *row = llama_get_logits_ith(ctx_, static_cast<int32_t>(i));
        all_logits->insert(all_logits->end(), row, row + n_vocab_);
      }
    }
  }
  has_logits_ = mode != LogitsMode::kNone;
}

Napi::Value Context::Info(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (ctx_ == nullptr) Throw(env, code::kDisposed, "the context has been disposed");
  Napi::Object out = Napi::Object::New(env);
  out.Set("contextSize", n_ctx_);
  out.Set("batchSize", n_batch_);
  out.Set("ubatchSize", llama_n_ubatch(ctx_));
  out.Set("threads", llama_n_threads(ctx_));
  out.Set("batchThreads", llama_n_threads_batch(ctx_));
  return out;
}

Napi::Value Context::Tokens(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  CheckIdle(env);  // the executor thread may be appending to tokens_
  Napi::Int32Array out = Napi::Int32Array::New(env, tokens_.size());
  std::copy(tokens_.begin(), tokens_.end(), out.Data());
  return out;
}


// evaluate(tokens: Int32Array, logits: 0 none | 1 last | 2 all) -> Promise<Float32Array | undefined>
Napi::Value Context::Evaluate(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  CheckIdle(env);
  std::vector<llama_token> tokens = TokenIds(env, info[0], n_vocab_, "tokens");
  if (tokens.empty()) Throw(env, code::kInvalidArgument, "evaluate() needs at least one token");
  const int32_t mode_arg = info[1].IsNumber() ? info[1].As<Napi::Number>().Int32Value() : 1;
  const LogitsMode mode = mode_arg == 2   ? LogitsMode::kAll
                          : mode_arg == 3 ? LogitsMode::kComputeAll
                          : mode_arg == 0 ? LogitsMode::kNone
                                          : LogitsMode::kLast;
  if (tokens_.size() + tokens.size() > n_ctx_) {
    Throw(env, code::kContextOverflow, "evaluating " + std::to_string(tokens.size()) + " tokens after " +
                                           std::to_string(tokens_.size()) + " would exceed the context size of " +
                                           std::to_string(n_ctx_));
  }
  Begin(env);
  struct Out {
    std::vector<float> logits;
  };
  return PromiseWorker<Out>::Start(
      env, Value(), code::kDecode,
      [this, tokens = std::move(tokens), mode]() {
        Out out;
        RunOnThread([&] {
          Decode(tokens.data(), tokens.size(), mode, &out.logits);
          if (mode == LogitsMode::kLast) {
            const float *row = llama_get_logits_ith(ctx_, -1);
            out.logits.assign(row, row + n_vocab_);
          }
        });
        return out;
      },
      [](Napi::Env env, Out &out) -> Napi::Value {
        if (out.logits.empty()) return env.Undefined();
        Napi::Float32Array arr = Napi::Float32Array::New(env, out.logits.size());
        std::copy(out.logits.begin(), out.logits.end(), arr.Data());
        return arr;
      },
      [this]() { End(); });
}

// eraseFrom(position): forget cached tokens from `position` on.
Napi::Value Context::EraseFrom(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  CheckIdle(env);
  const int64_t pos = info[0].As<Napi::Number>().Int64Value();
  if (pos < 0) Throw(env, code::kOutOfRange, "position must be >= 0");
  Truncate(static_cast<size_t>(pos));
  return env.Undefined();
}

// saveState() -> Promise<{ data: Buffer, tokens: Int32Array }>: sequence 0's KV cache and its tokens.
Napi::Value Context::SaveState(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  Begin(env);
  struct Saved {
    std::vector<uint8_t> data;
    std::vector<llama_token> tokens;
  };
  return PromiseWorker<Saved>::Start(
      env, Value(), code::kDecode,
      [this]() {
        Saved saved;
        RunOnThread([&] {
          // A state that load could not check before llama.cpp reads it is refused when saving already.
          const std::string unsupported = SeqStateSupport(ctx_);
          if (!unsupported.empty()) throw CodedError(kSessionFileCode, unsupported);
          saved.data.resize(llama_state_seq_get_size(ctx_, 0));
          const size_t n = llama_state_seq_get_data(ctx_, saved.data.data(), saved.data.size(), 0);
          if (n == 0 && !tokens_.empty()) throw CodedError(code::kDecode, "llama_state_seq_get_data failed");
          saved.data.resize(n);
          saved.tokens = tokens_;
        });
        return saved;
      },
      [](Napi::Env env, Saved &saved) -> Napi::Value {
        Napi::Object out = Napi::Object::New(env);
        out.Set("data", Napi::Buffer<uint8_t>::Copy(env, saved.data.data(), saved.data.size()));
        Napi::Int32Array tokens = Napi::Int32Array::New(env, saved.tokens.size());
        std::copy(saved.tokens.begin(), saved.tokens.end(), tokens.Data());
        out.Set("tokens", tokens);
        return out;
      },
      [this]() { End(); });
}

// loadState(data: Buffer, tokens: Int32Array) -> Promise<void>. The whole state is checked against this context
// (session_state.h) before anything changes; a state that fails the check rejects with ERR_HUOZI_SESSION_FILE
// and leaves the context as it was. Should llama.cpp still refuse a checked state, the context's previous
// contents are put back from a snapshot (and the rejection is ERR_HUOZI_SESSION_FILE too).
Napi::Value Context::LoadState(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  CheckIdle(env);
  if (!info[0].IsBuffer()) Throw(env, code::kInvalidArgument, "state must be a Buffer");
  Napi::Buffer<uint8_t> buffer = info[0].As<Napi::Buffer<uint8_t>>();
  std::vector<uint8_t> data(buffer.Data(), buffer.Data() + buffer.Length());
  std::vector<llama_token> tokens = TokenIds(env, info[1], n_vocab_, "tokens");
  if (tokens.size() > n_ctx_) {
    Throw(env, kSessionFileCode,
          "the saved state holds " + std::to_string(tokens.size()) + " tokens, more than this context's " + std::to_string(n_ctx_));
  }
  Begin(env);
  return PromiseWorker<bool>::Start(
      env, Value(), code::kDecode,
      [this, data = std::move(data), tokens = std::move(tokens)]() {
        RunOnThread([&] {
          const std::string bad = CheckSeqState(ctx_, data.data(), data.size(), tokens.size(), n_vocab_);
          if (!bad.empty()) throw CodedError(kSessionFileCode, bad);
          // What the context holds now, to put back if llama.cpp refuses the state after all.
          std::vector<uint8_t> before(tokens_.empty() ? 0 : llama_state_seq_get_size(ctx_, 0));
          if (!before.empty()) before.resize(llama_state_seq_get_data(ctx_, before.data(), before.size(), 0));
          const std::vector<llama_token> before_tokens = tokens_;
          const size_t before_canonical = canonical_;
          std::vector<float> before_logits = prompt_logits_;
          const size_t before_logits_at = prompt_logits_at_;
          const bool before_logits_exact = prompt_logits_exact_;

          llama_memory_t mem = llama_get_memory(ctx_);
          Truncate(0);
          bool ok = llama_state_seq_set_data(ctx_, data.data(), data.size(), 0) == data.size();
          ok = ok && static_cast<size_t>(llama_memory_seq_pos_max(mem, 0) + 1) == tokens.size();
          if (ok) {
            tokens_ = tokens;
            return;
          }
          llama_memory_seq_rm(mem, 0, -1, -1);
          const bool restored =
              !before.empty() && llama_state_seq_set_data(ctx_, before.data(), before.size(), 0) == before.size();
          if (restored) {
            tokens_ = before_tokens;
            canonical_ = before_canonical;
            prompt_logits_ = std::move(before_logits);
            prompt_logits_at_ = before_logits_at;
            prompt_logits_exact_ = before_logits_exact;
          } else if (!before.empty()) {
            llama_memory_seq_rm(mem, 0, -1, -1);
          }
          throw CodedError(kSessionFileCode, std::string("llama.cpp could not load the saved state into this context") +
                                                 (restored || before.empty() ? "" : " (and its previous contents were lost)"));
        });
        return true;
      },
      [](Napi::Env env, bool &) -> Napi::Value { return env.Undefined(); }, [this]() { End(); });
}

// imatrix() -> [{ name, values: Float32Array, counts: Float32Array }] collected so far (collectImatrix only).
Napi::Value Context::Imatrix(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  CheckIdle(env);
  if (!imatrix_) Throw(env, code::kInvalidArgument, "this context was not created with collectImatrix");
  if (imatrix_->failed()) Throw(env, code::kDecode, "importance matrix collection failed: " + imatrix_->error());
  Napi::Array out = Napi::Array::New(env);
  uint32_t i = 0;
  for (const auto &[name, e] : imatrix_->stats()) {
    Napi::Object item = Napi::Object::New(env);
    item.Set("name", name);
    Napi::Float32Array values = Napi::Float32Array::New(env, e.values.size());
    for (size_t j = 0; j < e.values.size(); ++j) values[j] = static_cast<float>(e.values[j]);
    Napi::Float32Array counts = Napi::Float32Array::New(env, e.counts.size());
    for (size_t j = 0; j < e.counts.size(); ++j) counts[j] = static_cast<float>(e.counts[j]);
    item.Set("values", values);
    item.Set("counts", counts);
    out.Set(i++, item);
  }
  return out;
}

Napi::Value Context::MemoryOf(Napi::Env env, const llama_context *ctx) {
  struct Sums {
    size_t model = 0, context = 0, compute = 0;
  };
  std::map<std::string, Sums> by_device;
  for (const auto &[buft, mb] : llama_get_memory_breakdown(ctx)) {
    std::string name = "host";
    if (!ggml_backend_buft_is_host(buft)) {
      ggml_backend_dev_t dev = ggml_backend_buft_get_device(buft);
      name = dev != nullptr ? ggml_backend_dev_name(dev) : ggml_backend_buft_name(buft);
    }
    Sums &s = by_device[name];
    s.model += mb.model;
    s.context += mb.context;
    s.compute += mb.compute;
  }
  Napi::Array out = Napi::Array::New(env);
  uint32_t i = 0;
  for (const auto &[name, s] : by_device) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("device", name);
    o.Set("model", Napi::Number::New(env, static_cast<double>(s.model)));
    o.Set("context", Napi::Number::New(env, static_cast<double>(s.context)));
    o.Set("compute", Napi::Number::New(env, static_cast<double>(s.compute)));
    out.Set(i++, o);
  }
  return out;
}

// memory() -> [{ device, model, context, compute }]
Napi::Value Context::Memory(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (ctx_ == nullptr || dispose_pending_) Throw(env, code::kDisposed, "the context has been disposed");
  return MemoryOf(env, ctx_);
}

Napi::Value Context::Abort(const Napi::CallbackInfo &info) {
  abort_.store(true);
  return info.Env().Undefined();
}

Napi::Value Context::SetThreads(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  CheckIdle(env);
  const int32_t threads = info[0].As<Napi::Number>().Int32Value();
  const int32_t batch_threads = info[1].As<Napi::Number>().Int32Value();
  if (threads < 1 || threads > 512 || batch_threads < 1 || batch_threads > 512) {
    Throw(env, code::kOutOfRange, "threads must be between 1 and 512");
  }
  llama_set_n_threads(ctx_, threads, batch_threads);
  return env.Undefined();
}

// setLoras([{ adapter, scale }]) -> boolean: applies the adapters (none: the base model); true when that changed
// what the model computes, which empties the cache (its keys and values were computed with the others).
Napi::Value Context::SetLoras(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  CheckIdle(env);
  LoraSet set = LorasFromJs(env, info[0], model_.get());
  if (SameLoras(set, loras_)) return Napi::Boolean::New(env, false);
  ApplyLoras(ctx_, set);
  loras_ = std::move(set);
  llama_memory_clear(llama_get_memory(ctx_), true);
  tokens_.clear();
  has_logits_ = false;
  Forget();
  return Napi::Boolean::New(env, true);
}

Napi::Value Context::Dispose(const Napi::CallbackInfo &info) {
  if (busy_) {
    // The running worker still uses ctx_: stop it and free when it ends (End()).
    dispose_pending_ = true;
    abort_.store(true);
  } else {
    Free();
  }
  return info.Env().Undefined();
}

Napi::Value Context::Disposed(const Napi::CallbackInfo &info) {
  return Napi::Boolean::New(info.Env(), ctx_ == nullptr || dispose_pending_);
}

}  // namespace huozi
