#include "model.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "addon_data.h"
#include "context.h"
#include "lora.h"
#include "parallel.h"
#include "errors.h"
#include "tokens.h"
#include "promise_worker.h"

namespace huozi {

namespace {

// Queues llama_model_free(model) on the libuv pool; false when N-API refuses (the caller frees it then). Called
// on the environment's JS thread, also from finalizers: nothing here runs JavaScript.
bool FreeOnPool(napi_env env, llama_model *model) {
  struct Job {
    llama_model *model;
    napi_async_work work = nullptr;
  };
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return false;
  auto *job = new Job{model};
  napi_value name;
  bool queued = napi_create_string_utf8(env, "huozi-gguf:free-model", NAPI_AUTO_LENGTH, &name) == napi_ok &&
                napi_create_async_work(
                    env, nullptr, name, [](napi_env, void *data) { llama_model_free(static_cast<Job *>(data)->model); },
                    [](napi_env env, napi_status, void *data) {
                      auto *job = static_cast<Job *>(data);
                      napi_delete_async_work(env, job->work);
                      delete job;
                    },
                    job, &job->work) == napi_ok &&
                napi_queue_async_work(env, job->work) == napi_ok;
  if (!queued) {
    if (job->work != nullptr) napi_delete_async_work(env, job->work);
    delete job;
  }
  napi_close_handle_scope(env, scope);
  return queued;
}

}  // namespace

ModelHandle::~ModelHandle() {
  if (life_ != nullptr && !life_->closing.load() && std::this_thread::get_id() == life_->js_thread &&
      FreeOnPool(life_->env, model)) {
    return;
  }
  llama_model_free(model);
}

Napi::Function Model::Init(Napi::Env env) {
  return DefineClass(env, "NativeModel",
                     {
                         InstanceMethod<&Model::Info>("info"),
                         InstanceMethod<&Model::Tokenize>("tokenize"),
                         InstanceMethod<&Model::TokenizeAsync>("tokenizeAsync"),
                         InstanceMethod<&Model::TokenizerLimits>("tokenizerLimits"),
                         InstanceMethod<&Model::Detokenize>("detokenize"),
                         InstanceMethod<&Model::TokenPieces>("tokenPieces"),
                         InstanceMethod<&Model::IsEog>("isEog"),
                         InstanceMethod<&Model::SpecialTokens>("specialTokens"),
                         InstanceMethod<&Model::CreateContext>("createContext"),
                         InstanceMethod<&Model::CreateParallelContext>("createParallelContext"),
                         InstanceMethod<&Model::LoadLora>("loadLora"),
                         InstanceMethod<&Model::Dispose>("dispose"),
                         InstanceAccessor<&Model::Disposed>("disposed"),
                     });
}

// Constructed only by the load worker, with an External holding the loaded llama_model.
Model::Model(const Napi::CallbackInfo &info) : Napi::ObjectWrap<Model>(info) {
  Napi::Env env = info.Env();
  if (info.Length() != 1 || !info[0].IsExternal()) {
    Throw(env, code::kInvalidArgument, "NativeModel cannot be constructed directly; use loadModel()");
  }
  model_ = info[0].As<Napi::External<llama_model>>().Data();
  handle_ = std::make_shared<ModelHandle>(model_, Data(env).life);
  vocab_ = llama_model_get_vocab(model_);
  n_vocab_ = llama_vocab_n_tokens(vocab_);
  // Tell V8 about the weights we hold, so that it weighs collecting an undisposed model correctly.
  external_bytes_ = static_cast<int64_t>(llama_model_size(model_));
  Napi::MemoryManagement::AdjustExternalMemory(env, external_bytes_);
}

Model::~Model() = default;

void Model::CheckAlive(Napi::Env env) const {
  if (model_ == nullptr) Throw(env, code::kDisposed, "the model has been disposed");
}

Napi::Value Model::Disposed(const Napi::CallbackInfo &info) { return Napi::Boolean::New(info.Env(), model_ == nullptr); }

// dispose() -> Promise<void>: the model is disposed at once (or this throws ERR_HUOZI_BUSY while contexts hold
// it); the promise resolves once the weights are freed, on the libuv pool (ModelHandle says why).
Napi::Value Model::Dispose(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (handle_ == nullptr) {
    auto done = Napi::Promise::Deferred::New(env);
    done.Resolve(env.Undefined());
    return done.Promise();
  }
  if (handle_.use_count() > 1) {
    Throw(env, code::kBusy, "the model still has " + std::to_string(handle_.use_count() - 1) +
                                " live context(s); dispose them first");
  }
  model_ = nullptr;
  vocab_ = nullptr;
  Napi::MemoryManagement::AdjustExternalMemory(env, -external_bytes_);
  external_bytes_ = 0;
  // The last reference is dropped on a pool thread, where ~ModelHandle frees the weights itself.
  return PromiseWorker<bool>::Start(
      env, Napi::Object::New(env), code::kDecode,
      [handle = std::move(handle_)]() mutable {
        handle.reset();
        return true;
      },
      [](Napi::Env env, bool &) -> Napi::Value { return env.Undefined(); });
}

namespace {

std::string MetaString(int32_t (*get)(const llama_model *, int32_t, char *, size_t), const llama_model *m, int32_t i) {
  std::vector<char> buf(256);
  int32_t n = get(m, i, buf.data(), buf.size());
  if (n < 0) return std::string();
  if (static_cast<size_t>(n) >= buf.size()) {
    buf.resize(static_cast<size_t>(n) + 1);
    n = get(m, i, buf.data(), buf.size());
  }
  return std::string(buf.data(), static_cast<size_t>(n));
}

Napi::Value TokenOrNull(Napi::Env env, llama_token t) {
  if (t < 0) return env.Null();
  return Napi::Number::New(env, t);
}

}  // namespace

Napi::Value Model::Info(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  CheckAlive(env);
  Napi::Object out = Napi::Object::New(env);
  char desc[256];
  llama_model_desc(model_, desc, sizeof desc);
  out.Set("description", desc);
  out.Set("size", Napi::Number::New(env, static_cast<double>(llama_model_size(model_))));
  out.Set("parameters", Napi::Number::New(env, static_cast<double>(llama_model_n_params(model_))));
  out.Set("trainContextSize", llama_model_n_ctx_train(model_));
  out.Set("embeddingSize", llama_model_n_embd(model_));
  // A vocabOnly model has no layers, and llama_hparams::n_head(0) GGML_ABORTs when there are none.
  const int32_t layers = llama_model_n_layer(model_);
  out.Set("layers", layers);
  out.Set("heads", layers > 0 ? llama_model_n_head(model_) : 0);
  out.Set("kvHeads", layers > 0 ? llama_model_n_head_kv(model_) : 0);
  out.Set("vocabularySize", n_vocab_);
  out.Set("fileType", llama_ftype_name(llama_model_ftype(model_)));
  const char *tmpl = llama_model_chat_template(model_, nullptr);
  out.Set("chatTemplate", tmpl ? Napi::Value(Napi::String::New(env, tmpl)) : env.Null());

  Napi::Object tokens = Napi::Object::New(env);
  tokens.Set("bos", TokenOrNull(env, llama_vocab_bos(vocab_)));
  tokens.Set("eos", TokenOrNull(env, llama_vocab_eos(vocab_)));
  tokens.Set("eot", TokenOrNull(env, llama_vocab_eot(vocab_)));
  tokens.Set("nl", TokenOrNull(env, llama_vocab_nl(vocab_)));
  tokens.Set("addBos", llama_vocab_get_add_bos(vocab_));
  tokens.Set("addEos", llama_vocab_get_add_eos(vocab_));
  out.Set("tokens", tokens);

  Napi::Object meta = Napi::Object::New(env);
  int32_t n_meta = llama_model_meta_count(model_);
  for (int32_t i = 0; i < n_meta; ++i) {
    meta.Set(MetaString(llama_model_meta_key_by_index, model_, i),
             MetaString(llama_model_meta_val_str_by_index, model_, i));
  }
  out.Set("metadata", meta);
  return out;
}

namespace {

// llama_tokenize on any thread; throws CodedError. Tokenization is linear in the text's length (with
// scripts/patches/0001: the SPM byte fallback was quadratic), so this is bounded work.
std::vector<llama_token> TokenizeText(const llama_vocab *vocab, const std::string &text, bool add_special,
                                      bool parse_special) {
  if (text.size() > static_cast<size_t>(INT32_MAX / 2)) throw CodedError(code::kOutOfRange, "text is too long to tokenize");
  const int32_t len = static_cast<int32_t>(text.size());
  std::vector<llama_token> out(text.size() + 4);
  int32_t n = llama_tokenize(vocab, text.data(), len, out.data(), static_cast<int32_t>(out.size()), add_special, parse_special);
  if (n < 0) {
    if (n == INT32_MIN) throw CodedError(code::kOutOfRange, "tokenization result is too large");
    out.resize(static_cast<size_t>(-n));
    n = llama_tokenize(vocab, text.data(), len, out.data(), static_cast<int32_t>(out.size()), add_special, parse_special);
    if (n < 0) throw CodedError(code::kInvalidArgument, "tokenization failed");
  }
  out.resize(static_cast<size_t>(n));
  return out;
}

Napi::Int32Array ToInt32Array(Napi::Env env, const std::vector<llama_token> &ids) {
  Napi::Int32Array result = Napi::Int32Array::New(env, ids.size());
  std::copy(ids.begin(), ids.end(), result.Data());
  return result;
}

}  // namespace

// tokenize(text: string, addSpecial: boolean, parseSpecial: boolean) -> Int32Array
Napi::Value Model::Tokenize(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  CheckAlive(env);
  if (info.Length() < 3 || !info[0].IsString()) Throw(env, code::kInvalidArgument, "tokenize(text, addSpecial, parseSpecial)");
  std::string text = info[0].As<Napi::String>().Utf8Value();
  std::vector<llama_token> ids;
  try {
    ids = TokenizeText(vocab_, text, info[1].ToBoolean(), info[2].ToBoolean());
  } catch (const CodedError &e) {
    Throw(env, e.code(), e.what());
  } catch (const std::exception &e) {
    Throw(env, code::kInvalidArgument, std::string("tokenization failed: ") + e.what());
  }
  return ToInt32Array(env, ids);
}

// tokenizeAsync(text: string, addSpecial: boolean, parseSpecial: boolean) -> Promise<Int32Array>, on the libuv
// pool. The worker holds the model (dispose() refuses while it runs; lib/model.ts waits for it first).
Napi::Value Model::TokenizeAsync(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  CheckAlive(env);
  if (info.Length() < 3 || !info[0].IsString()) Throw(env, code::kInvalidArgument, "tokenizeAsync(text, addSpecial, parseSpecial)");
  auto text = std::make_shared<std::string>(info[0].As<Napi::String>().Utf8Value());
  const bool add_special = info[1].ToBoolean();
  const bool parse_special = info[2].ToBoolean();
  std::shared_ptr<ModelHandle> handle = handle_;
  const llama_vocab *vocab = vocab_;
  return PromiseWorker<std::vector<llama_token>>::Start(
      env, Napi::Object::New(env), code::kInvalidArgument,
      [handle, vocab, text, add_special, parse_special]() { return TokenizeText(vocab, *text, add_special, parse_special); },
      [](Napi::Env env, std::vector<llama_token> &ids) -> Napi::Value { return ToInt32Array(env, ids); });
}

// tokenizerLimits() -> { type: 'spm' | 'bpe' | ..., maxTokenBytes }: the vocabulary's type and the longest token
// text in bytes (an upper bound on the text one token covers for SPM and BPE vocabularies, whose tokenizers
// never shrink the text: lib/context.ts refuses a prompt that cannot fit before tokenizing it).
Napi::Value Model::TokenizerLimits(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  CheckAlive(env);
  size_t longest = 0;
  for (int32_t id = 0; id < n_vocab_; ++id) {
    const char *text = llama_vocab_get_text(vocab_, id);
    if (text != nullptr) longest = std::max(longest, std::strlen(text));
  }
  const char *type = "other";
  switch (llama_vocab_type(vocab_)) {
    case LLAMA_VOCAB_TYPE_SPM: type = "spm"; break;
    case LLAMA_VOCAB_TYPE_BPE: type = "bpe"; break;
    case LLAMA_VOCAB_TYPE_WPM: type = "wpm"; break;
    case LLAMA_VOCAB_TYPE_UGM: type = "ugm"; break;
    case LLAMA_VOCAB_TYPE_RWKV: type = "rwkv"; break;
    default: break;
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("type", type);
  out.Set("maxTokenBytes", Napi::Number::New(env, static_cast<double>(longest)));
  return out;
}

// detokenize(tokens: Int32Array, removeSpecial: boolean, unparseSpecial: boolean) -> string
Napi::Value Model::Detokenize(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  CheckAlive(env);
  std::vector<llama_token> tokens = TokenIds(env, info[0], n_vocab_, "tokens");
  bool remove_special = info[1].ToBoolean();
  bool unparse_special = info[2].ToBoolean();
  if (tokens.size() > static_cast<size_t>(INT32_MAX / 64)) Throw(env, code::kOutOfRange, "too many tokens");
  std::vector<char> buf(tokens.size() * 8 + 16);
  int32_t n = llama_detokenize(vocab_, tokens.data(), static_cast<int32_t>(tokens.size()), buf.data(),
                               static_cast<int32_t>(buf.size()), remove_special, unparse_special);
  if (n < 0) {
    buf.resize(static_cast<size_t>(-n));
    n = llama_detokenize(vocab_, tokens.data(), static_cast<int32_t>(tokens.size()), buf.data(),
                         static_cast<int32_t>(buf.size()), remove_special, unparse_special);
    if (n < 0) Throw(env, code::kInvalidArgument, "detokenization failed");
  }
  return Napi::String::New(env, buf.data(), static_cast<size_t>(n));
}

// tokenPieces(tokens: Int32Array, special: boolean) -> Buffer[] (raw bytes: a piece may be part of a character)
Napi::Value Model::TokenPieces(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  CheckAlive(env);
  std::vector<llama_token> tokens = TokenIds(env, info[0], n_vocab_, "tokens");
  bool special = info[1].ToBoolean();
  Napi::Array out = Napi::Array::New(env, tokens.size());
  std::vector<char> buf(64);
  for (size_t i = 0; i < tokens.size(); ++i) {
    int32_t n = llama_token_to_piece(vocab_, tokens[i], buf.data(), static_cast<int32_t>(buf.size()), 0, special);
    if (n < 0) {
      buf.resize(static_cast<size_t>(-n));
      n = llama_token_to_piece(vocab_, tokens[i], buf.data(), static_cast<int32_t>(buf.size()), 0, special);
    }
    out.Set(static_cast<uint32_t>(i), Napi::Buffer<char>::Copy(env, buf.data(), static_cast<size_t>(n < 0 ? 0 : n)));
  }
  return out;
}

Napi::Value Model::IsEog(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  CheckAlive(env);
  int32_t t = info[0].As<Napi::Number>().Int32Value();
  if (t < 0 || t >= n_vocab_) return Napi::Boolean::New(env, false);
  return Napi::Boolean::New(env, llama_vocab_is_eog(vocab_, t));
}

// specialTokens() -> { ids: Int32Array, texts: string[] }: the control and user-defined tokens, whose text
// the tokenizer turns into the token when special-token parsing is on.
Napi::Value Model::SpecialTokens(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  CheckAlive(env);
  std::vector<int32_t> ids;
  for (int32_t id = 0; id < n_vocab_; ++id) {
    const llama_token_attr attr = llama_vocab_get_attr(vocab_, id);
    if (attr & (LLAMA_TOKEN_ATTR_CONTROL | LLAMA_TOKEN_ATTR_USER_DEFINED)) ids.push_back(id);
  }
  Napi::Int32Array out_ids = Napi::Int32Array::New(env, ids.size());
  Napi::Array texts = Napi::Array::New(env, ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    out_ids[i] = ids[i];
    const char *text = llama_vocab_get_text(vocab_, ids[i]);
    texts.Set(static_cast<uint32_t>(i), Napi::String::New(env, text ? text : ""));
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("ids", out_ids);
  out.Set("texts", texts);
  return out;
}

Napi::Value Model::CreateContext(const Napi::CallbackInfo &info) {
  CheckAlive(info.Env());
  if (llama_model_n_layer(model_) == 0) {
    Throw(info.Env(), code::kInvalidArgument, "this model was loaded with vocabOnly: it has no weights to run a context on");
  }
  return Context::Create(info.Env(), handle_, info[0].As<Napi::Object>());
}

// createParallelContext(params, onEvents) -> Promise<NativeParallelContext>
Napi::Value Model::CreateParallelContext(const Napi::CallbackInfo &info) {
  CheckAlive(info.Env());
  if (llama_model_n_layer(model_) == 0) {
    Throw(info.Env(), code::kInvalidArgument, "this model was loaded with vocabOnly: it has no weights to run a context on");
  }
  if (!info[0].IsObject() || !info[1].IsFunction()) Throw(info.Env(), code::kInvalidArgument, "createParallelContext(params, onEvents)");
  return ParallelContext::Create(info.Env(), handle_, info[0].As<Napi::Object>(), info[1].As<Napi::Function>());
}

// loadLora(path) -> Promise<NativeLora> (lib/lora.ts checked the file against this model first).
Napi::Value Model::LoadLora(const Napi::CallbackInfo &info) {
  CheckAlive(info.Env());
  if (llama_model_n_layer(model_) == 0) {
    Throw(info.Env(), code::kInvalidArgument, "this model was loaded with vocabOnly: it has no weights to adapt");
  }
  if (!info[0].IsString()) Throw(info.Env(), code::kInvalidArgument, "loadLora(path)");
  return Lora::Load(info.Env(), handle_, info[0].As<Napi::String>().Utf8Value());
}

}  // namespace huozi
