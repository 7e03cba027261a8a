#include "embedding.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "addon_data.h"
#include "context.h"
#include "errors.h"
#include "log.h"
#include "model.h"
#include "promise_worker.h"
#include "tokens.h"

namespace huozi {

namespace {

// The constructor of this environment's NativeEmbeddingContext, held by createEmbeddingContext's function data
// (so that registering takes one line in addon.cc and nothing in AddonData); freed by the environment's cleanup.
struct EmbeddingData {
  Napi::FunctionReference ctor;
};

// The most floats one embed() call may return: 1 GiB (lib/embedding.ts refuses larger calls first, naming the
// inputs; this guards the allocation against anything that gets past it).
constexpr size_t kMaxOutputFloats = size_t{1} << 28;

int32_t I32(Napi::Object o, const char *key, int32_t fallback) {
  Napi::Value v = o.Get(key);
  return v.IsNumber() ? v.As<Napi::Number>().Int32Value() : fallback;
}

// createEmbeddingContext(model: NativeModel, params) -> Promise<NativeEmbeddingContext>
// params: NativeContextParams (contextSize, batchSize = ubatchSize, threads, batchThreads, flashAttention) and
// pooling: -1 (the model's) | 0 none | 1 mean | 2 cls | 3 last.
Napi::Value Create(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  auto *data = static_cast<EmbeddingData *>(info.Data());
  if (info.Length() < 2 || !info[0].IsObject() || !info[1].IsObject() ||
      !info[0].As<Napi::Object>().InstanceOf(Data(env).model_ctor.Value())) {
    Throw(env, code::kInvalidArgument, "createEmbeddingContext(model, params) needs a NativeModel and a params object");
  }
  Model *model = Model::Unwrap(info[0].As<Napi::Object>());
  model->CheckAlive(env);
  std::shared_ptr<ModelHandle> handle = model->shared();
  llama_model *m = handle->model;
  if (llama_model_n_layer(m) == 0) {
    Throw(env, code::kInvalidArgument, "this model was loaded with vocabOnly: it has no weights to run a context on");
  }
  if (llama_model_has_encoder(m) && llama_model_has_decoder(m)) {
    Throw(env, code::kInvalidArgument, "embeddings from encoder-decoder models are not supported (as in llama-embedding)");
  }
  Napi::Object o = info[1].As<Napi::Object>();
  llama_context_params cp = ContextParamsFromJs(env, o);
  // One decode is one ubatch (llama-server's rule for embeddings): a pooled sequence split across ubatches would
  // be pooled over its last part only, and a non-causal model asserts n_ubatch >= n_tokens.
  cp.n_ubatch = cp.n_batch;
  if (cp.n_batch > cp.n_ctx) Throw(env, code::kOutOfRange, "batchSize must not exceed contextSize");
  const int32_t pooling = I32(o, "pooling", -1);
  if (pooling < -1 || pooling > 3) Throw(env, code::kOutOfRange, "pooling must be -1 (the model's), 0 none, 1 mean, 2 cls or 3 last");
  cp.embeddings = true;
  cp.pooling_type = static_cast<enum llama_pooling_type>(pooling);
  // As llama-embedding: a unified cache, as many sequences per batch as llama.cpp allows.
  cp.kv_unified = true;
  const uint32_t max_seq = static_cast<uint32_t>(llama_max_parallel_sequences());
  cp.n_seq_max = std::min(max_seq, cp.n_batch);
  // llama.cpp reserves its compute graph for n_ubatch tokens spread over n_seq_max sequences, n_ubatch / n_seq_max
  // tokens each (integer division): when n_seq_max does not divide n_ubatch, the reserved mean-pooling graph has
  // fewer tokens than outputs and ggml_mul_mat asserts (llama-embedding -c 300 -b 300 -ub 300 --pooling mean aborts
  // too). So the physical batch is rounded up to a multiple of n_seq_max; inputs are still packed up to the
  // requested batch size (`pack`), which is what lib/ and the results know.
  const uint32_t pack = cp.n_batch;
  const uint32_t physical = (cp.n_batch + cp.n_seq_max - 1) / cp.n_seq_max * cp.n_seq_max;
  cp.n_batch = cp.n_ubatch = physical;
  cp.n_ctx = std::max(cp.n_ctx, physical);
  const uint32_t n_ctx = cp.n_ctx;
  return PromiseWorker<llama_context *>::Start(
      env, Napi::Object::New(env), code::kContextCreate,
      [handle, cp]() {
        llama_context *ctx = InitContext(handle->model, cp);
        const enum llama_pooling_type type = llama_pooling_type(ctx);
        if (type == LLAMA_POOLING_TYPE_RANK || type < LLAMA_POOLING_TYPE_NONE || type > LLAMA_POOLING_TYPE_LAST) {
          llama_free(ctx);
          throw CodedError(code::kInvalidArgument, "the model's pooling type (" + std::to_string(static_cast<int>(type)) +
                                                       ") is not one for embeddings (rank: a reranker); choose a pooling");
        }
        return ctx;
      },
      [data, handle, n_ctx, pack](Napi::Env env, llama_context *&ctx) -> Napi::Value {
        Napi::Object object = data->ctor.New({Napi::External<llama_context>::New(env, ctx)});
        EmbeddingContext::Unwrap(object)->Adopt(handle, n_ctx, pack);
        ctx = nullptr;
        return object;
      });
}

}  // namespace

void RegisterEmbedding(Napi::Env env, Napi::Object exports) {
  auto *data = new EmbeddingData();
  data->ctor = Napi::Persistent(EmbeddingContext::Init(env));
  env.AddCleanupHook([data] { delete data; });
  exports.Set("createEmbeddingContext", Napi::Function::New(env, Create, "createEmbeddingContext", data));
}

Napi::Function EmbeddingContext::Init(Napi::Env env) {
  return DefineClass(env, "NativeEmbeddingContext",
                     {
                         InstanceMethod<&EmbeddingContext::Info>("info"),
                         InstanceMethod<&EmbeddingContext::Embed>("embed"),
                         InstanceMethod<&EmbeddingContext::Memory>("memory"),
                         InstanceMethod<&EmbeddingContext::Abort>("abort"),
                         InstanceMethod<&EmbeddingContext::Dispose>("dispose"),
                         InstanceAccessor<&EmbeddingContext::Disposed>("disposed"),
                     });
}

EmbeddingContext::EmbeddingContext(const Napi::CallbackInfo &info) : Napi::ObjectWrap<EmbeddingContext>(info) {
  Napi::Env env = info.Env();
  if (info.Length() != 1 || !info[0].IsExternal()) {
    Throw(env, code::kInvalidArgument, "NativeEmbeddingContext cannot be constructed directly; use model.createEmbeddingContext()");
  }
  ctx_ = info[0].As<Napi::External<llama_context>>().Data();
  n_batch_ = llama_n_batch(ctx_);
  n_seq_max_ = llama_n_seq_max(ctx_);
  pooling_ = llama_pooling_type(ctx_);
  llama_set_abort_callback(ctx_, &EmbeddingContext::AbortCallback, this);
  executor_ = ExecutorPool::Acquire();
}

void EmbeddingContext::Adopt(std::shared_ptr<ModelHandle> model, uint32_t n_ctx, uint32_t n_batch) {
  model_ = std::move(model);
  n_batch_ = n_batch;
  // llama.cpp rounds the cells up to a multiple of 256; the context takes what was asked for.
  n_ctx_ = std::min(llama_n_ctx(ctx_), n_ctx);
  n_vocab_ = llama_vocab_n_tokens(llama_model_get_vocab(model_->model));
  n_embd_ = llama_model_n_embd_out(model_->model);
}

EmbeddingContext::~EmbeddingContext() {
  if (ctx_ != nullptr) llama_free(ctx_);  // before model_ (a member) releases the model
  ExecutorPool::Release(std::move(executor_));
}

void EmbeddingContext::Free() {
  if (ctx_ == nullptr) return;
  ExecutorPool::Release(std::move(executor_));
  llama_free(ctx_);
  ctx_ = nullptr;
  model_.reset();
}

bool EmbeddingContext::AbortCallback(void *data) {
  return static_cast<EmbeddingContext *>(data)->abort_.load(std::memory_order_relaxed);
}

Napi::Value EmbeddingContext::Info(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (ctx_ == nullptr) Throw(env, code::kDisposed, "the embedding context has been disposed");
  Napi::Object out = Napi::Object::New(env);
  out.Set("contextSize", n_ctx_);
  out.Set("batchSize", n_batch_);
  out.Set("threads", llama_n_threads_batch(ctx_));
  out.Set("maxSequences", n_seq_max_);
  out.Set("pooling", static_cast<int32_t>(pooling_));
  out.Set("dimension", n_embd_);
  return out;
}

std::vector<std::vector<float>> EmbeddingContext::Run(const std::vector<std::vector<llama_token>> &inputs, int embd_norm) {
  const bool token_level = pooling_ == LLAMA_POOLING_TYPE_NONE;
  const size_t n_embd = static_cast<size_t>(n_embd_);
  std::vector<std::vector<float>> out(inputs.size());
  llama_batch batch = llama_batch_init(static_cast<int32_t>(n_batch_), 0, 1);
  struct BatchGuard {
    llama_batch &b;
    ~BatchGuard() { llama_batch_free(b); }
  } guard{batch};
  llama_memory_t mem = llama_get_memory(ctx_);
  // common_embd_normalize, as llama-embedding applies it to each embedding it reads.
  auto store = [&](const float *embd, float *dst) {
    double sum = 0.0;
    if (embd_norm == 2) {
      for (size_t i = 0; i < n_embd; ++i) sum += embd[i] * embd[i];
      sum = std::sqrt(sum);
    } else {
      sum = 1.0;
    }
    const float norm = sum > 0.0 ? 1.0 / sum : 0.0f;
    for (size_t i = 0; i < n_embd; ++i) dst[i] = embd[i] * norm;
  };
  size_t next = 0;
  while (next < inputs.size()) {
    // Pack as llama-embedding does: inputs in order, until the next would pass n_batch tokens or n_seq_max sequences.
    const size_t first = next;
    batch.n_tokens = 0;
    while (next < inputs.size() && next - first < n_seq_max_ &&
           static_cast<size_t>(batch.n_tokens) + inputs[next].size() <= n_batch_) {
      const std::vector<llama_token> &in = inputs[next];
      const llama_seq_id seq = static_cast<llama_seq_id>(next - first);
      for (size_t i = 0; i < in.size(); ++i) {
        const int32_t at = batch.n_tokens++;
        batch.token[at] = in[i];
        batch.pos[at] = static_cast<llama_pos>(i);
        batch.n_seq_id[at] = 1;
        batch.seq_id[at][0] = seq;
        batch.logits[at] = true;
      }
      ++next;
    }
    if (next == first) {
      // Unreachable: embed() refuses empty inputs and inputs longer than the batch before this runs.
      throw CodedError(code::kOutOfRange, "input " + std::to_string(first) + " does not fit one batch of " + std::to_string(n_batch_) + " tokens");
    }
    if (abort_.load()) throw CodedError(code::kAborted, "embedding was aborted");
    llama_memory_clear(mem, true);
    TakeThreadErrors();
    const int32_t ret = llama_decode(ctx_, batch);
    if (ret != 0) {
      if (ret == 2 || abort_.load()) throw CodedError(code::kAborted, "embedding was aborted");
      std::string why = TakeThreadErrors();
      throw CodedError(code::kDecode, "llama_decode failed with status " + std::to_string(ret) + (why.empty() ? "" : ": " + why));
    }
    int32_t row = 0;
    for (size_t k = first; k < next; ++k) {
      std::vector<float> &dst = out[k];
      if (token_level) {
        dst.resize(inputs[k].size() * n_embd);
        for (size_t i = 0; i < inputs[k].size(); ++i, ++row) {
          const float *embd = llama_get_embeddings_ith(ctx_, row);
          if (embd == nullptr) throw CodedError(code::kDecode, "llama.cpp returned no token embeddings");
          store(embd, dst.data() + i * n_embd);
        }
      } else {
        const float *embd = llama_get_embeddings_seq(ctx_, static_cast<llama_seq_id>(k - first));
        if (embd == nullptr) throw CodedError(code::kDecode, "llama.cpp returned no sequence embedding");
        dst.resize(n_embd);
        store(embd, dst.data());
      }
    }
  }
  llama_memory_clear(mem, true);
  return out;
}

// embed(inputs: Int32Array[], normalize: -1 | 2) -> Promise<Float32Array[]>: one Float32Array per input, n_embd
// values (pooled) or n_embd per token (pooling none).
Napi::Value EmbeddingContext::Embed(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (ctx_ == nullptr || dispose_pending_) Throw(env, code::kDisposed, "the embedding context has been disposed");
  if (busy_) Throw(env, code::kBusy, "the embedding context is busy with another operation");
  if (!info[0].IsArray()) Throw(env, code::kInvalidArgument, "inputs must be an array of Int32Array");
  const int32_t norm = info[1].IsNumber() ? info[1].As<Napi::Number>().Int32Value() : 2;
  if (norm != -1 && norm != 2) Throw(env, code::kOutOfRange, "normalize must be -1 (none) or 2 (L2)");
  Napi::Array arr = info[0].As<Napi::Array>();
  std::vector<std::vector<llama_token>> inputs(arr.Length());
  size_t floats = 0;
  for (uint32_t i = 0; i < arr.Length(); ++i) {
    const std::string what = "inputs[" + std::to_string(i) + "]";
    inputs[i] = TokenIds(env, arr.Get(i), n_vocab_, what.c_str());
    if (inputs[i].empty()) Throw(env, code::kOutOfRange, what + " is empty: an embedding needs at least one token");
    if (inputs[i].size() > n_batch_) {
      Throw(env, code::kOutOfRange, what + " has " + std::to_string(inputs[i].size()) + " tokens, more than the batch size (" +
                                        std::to_string(n_batch_) + ")");
    }
    floats += (pooling_ == LLAMA_POOLING_TYPE_NONE ? inputs[i].size() : 1) * static_cast<size_t>(n_embd_);
  }
  if (floats > kMaxOutputFloats) Throw(env, code::kOutOfRange, "the embeddings of these inputs would take more than 1 GiB");
  busy_ = true;
  abort_.store(false);
  struct Out {
    std::vector<std::vector<float>> embeddings;
  };
  return PromiseWorker<Out>::Start(
      env, Value(), code::kDecode,
      [this, inputs = std::move(inputs), norm]() {
        Out out;
        executor_->Run([&] { out.embeddings = Run(inputs, norm); });
        return out;
      },
      [](Napi::Env env, Out &out) -> Napi::Value {
        Napi::Array result = Napi::Array::New(env, out.embeddings.size());
        for (size_t i = 0; i < out.embeddings.size(); ++i) {
          std::vector<float> &e = out.embeddings[i];
          Napi::Float32Array a = Napi::Float32Array::New(env, e.size());
          std::copy(e.begin(), e.end(), a.Data());
          std::vector<float>().swap(e);
          result.Set(static_cast<uint32_t>(i), a);
        }
        return result;
      },
      [this]() {
        busy_ = false;
        if (dispose_pending_) Free();
      });
}

Napi::Value EmbeddingContext::Memory(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (ctx_ == nullptr || dispose_pending_) Throw(env, code::kDisposed, "the embedding context has been disposed");
  return Context::MemoryOf(env, ctx_);
}

Napi::Value EmbeddingContext::Abort(const Napi::CallbackInfo &info) {
  abort_.store(true);
  return info.Env().Undefined();
}

Napi::Value EmbeddingContext::Dispose(const Napi::CallbackInfo &info) {
  if (busy_) {
    // The running worker still uses ctx_: stop it and free when it ends.
    dispose_pending_ = true;
    abort_.store(true);
  } else {
    Free();
  }
  return info.Env().Undefined();
}

Napi::Value EmbeddingContext::Disposed(const Napi::CallbackInfo &info) {
  return Napi::Boolean::New(info.Env(), ctx_ == nullptr || dispose_pending_);
}

}  // namespace huozi
