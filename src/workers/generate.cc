// The hot loop: prefill the prompt (reusing the cached prefix), then sample, check stops, detokenize and
// decode one token at a time, all on the libuv pool. Text goes to JS through one thread-safe function, at most
// every streamIntervalMs (generation.h); while JS has not taken the previous text, new text joins it, so a
// fast model never queues one N-API call per token behind a slow consumer. With streamIntervalMs 0 every
// token's text stays a piece of its own, and JS gets the pieces one by one.
#include <chrono>
#include <mutex>
#include <string>
#include <vector>

#include "../context.h"
#include "../errors.h"
#include "../sampler.h"
#include "../generation.h"
#include "../text_stream.h"
#include "../tokens.h"

namespace huozi {
namespace {

using Clock = std::chrono::steady_clock;

double MsSince(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

struct GenerateParams {
  std::vector<llama_token> prompt;
  SamplerParams sampling;
  StopRules stops;
  bool reuse_cache = true;
  std::chrono::milliseconds stream_interval = kDefaultStreamInterval;  // 0: every token's text on its own
};

class GenerateWorker final : public Napi::AsyncWorker {
 public:
  GenerateWorker(Napi::Env env, Context *context, Napi::Object keep, GenerateParams params, Napi::Function on_text)
      : Napi::AsyncWorker(env, "huozi-gguf:generate"),
        deferred_(Napi::Promise::Deferred::New(env)),
        keep_(Napi::Persistent(keep)),
        context_(context),
        params_(std::move(params)),
        stream_(params_.stops.stop_strings) {
    if (!on_text.IsEmpty()) {
      on_text_ = Napi::Persistent(on_text);
      tsfn_ = Napi::ThreadSafeFunction::New(env, on_text, "huozi-gguf:text", 0, 1);
      has_tsfn_ = true;
    }
  }

  ~GenerateWorker() override {
    if (has_tsfn_) tsfn_.Release();
  }

  Napi::Promise Promise() { return deferred_.Promise(); }

 private:
  // Worker thread: queue text for JS.
  void Emit(const std::string &text) {
    if (text.empty()) return;
    result_.text += text;
    if (!has_tsfn_) return;
    std::lock_guard<std::mutex> lock(mu_);
    if (pending_.empty() || params_.stream_interval.count() == 0) {
      pending_.push_back(text);
    } else {
      pending_.back() += text;
    }
    if (call_scheduled_) return;
    // At most one wake of the main thread per interval (generation.h says why); text that is not due yet goes
    // with the next token or at the end.
    const auto now = Clock::now();
    if (now - last_delivery_ < params_.stream_interval) return;
    last_delivery_ = now;
    call_scheduled_ = true;
    tsfn_.NonBlockingCall(this, [](Napi::Env env, Napi::Function, GenerateWorker *self) {
      if (env != nullptr) self->Deliver(env);
    });
  }

  // Main thread: hand all queued text to JS (one piece, or one per token with streamIntervalMs 0).
  void Deliver(Napi::Env env) {
    std::vector<std::string> pieces;
    {
      std::lock_guard<std::mutex> lock(mu_);
      pieces.swap(pending_);
      call_scheduled_ = false;
    }
    if (on_text_.IsEmpty()) return;
    for (const std::string &text : pieces) on_text_.Call({Napi::String::New(env, text)});
  }

  void Execute() override {
    try {
      context_->RunOnThread([this] { Run(); });
    } catch (const CodedError &e) {
      if (e.code() == code::kAborted) {
        result_.stop_reason = "abort";
        return;
      }
      code_ = e.code();
      SetError(e.what());
    } catch (const std::exception &e) {
      SetError(std::string("llama.cpp: ") + e.what());
    } catch (...) {
      SetError(CurrentExceptionMessage());
    }
  }

  void Run() {
    Context &ctx = *context_;
    std::vector<llama_token> &cache = ctx.tokens();
    const std::vector<llama_token> &prompt = params_.prompt;

    // Reuse the longest common prefix of what the memory holds. The very same prompt as the last generation's
    // needs no evaluation: its last position's logits were kept. Otherwise at least the last prompt token is
    // evaluated again so that there are logits to sample from. With a seed, only what a cold context would
    // have computed the same way is reused (Context::canonical()), so the tokens do not depend on the cache.
    const bool exact = params_.sampling.seeded;
    const std::vector<float> *kept = params_.reuse_cache ? ctx.PromptLogits(prompt, exact) : nullptr;
    size_t keep = 0;
    if (kept != nullptr) {
      keep = prompt.size();
    } else if (params_.reuse_cache) {
      size_t limit = std::min(cache.size(), prompt.size() - 1);
      while (keep < limit && cache[keep] == prompt[keep]) ++keep;
      if (exact) keep = std::min(keep, ctx.canonical()) / ctx.n_ubatch() * ctx.n_ubatch();
    }
    if (!ctx.Truncate(keep)) keep = 0;
    result_.reused_tokens = keep;
    result_.evaluated_tokens = prompt.size() - keep;

    const auto prompt_start = Clock::now();
    if (kept == nullptr) {
      const bool cold_equivalent = keep == ctx.canonical();
      ctx.Decode(prompt.data() + keep, prompt.size() - keep, LogitsMode::kLast, nullptr);
      ctx.KeepPromptLogits(cold_equivalent);
    }
    // On a GPU llama_decode returns once the work is queued: wait for it, so that promptMs is the prompt's
    // time and generateMs does not carry the prompt's tail (the first sample would otherwise wait for it).
    llama_synchronize(ctx.handle());
    result_.prompt_ms = MsSince(prompt_start);

    SamplerPtr sampler = BuildSampler(params_.sampling, ctx.n_vocab(), prompt);
    const bool greedy = IsPlainGreedy(params_.sampling);
    const llama_vocab *vocab = ctx.vocab();
    const auto &abort = ctx.abort_flag();
    std::string piece(64, '\0');
    const auto gen_start = Clock::now();
    for (bool first = true;; first = false) {
      if (abort.load()) {
        result_.stop_reason = "abort";
        break;
      }
      if (params_.stops.max_tokens == 0) {
        // maxTokens 0: the prompt is evaluated (and cached), nothing is sampled, as llama-server's n_predict 0.
        result_.stop_reason = "maxTokens";
        break;
      }
      const llama_token token = first && kept != nullptr
                                    ? SampleLogits(sampler.get(), greedy, kept->data(), ctx.n_vocab())
                                    : Sample(sampler.get(), greedy, ctx.handle(), -1, ctx.n_vocab());
      result_.tokens.push_back(token);
      TokenVerdict verdict = JudgeToken(vocab, token, result_.tokens.size(), cache.size() < ctx.n_ctx(), params_.stops, stream_, piece);
      Emit(verdict.text);
      if (verdict.stop_reason != nullptr) {
        result_.stop_reason = verdict.stop_reason;
        if (verdict.by_token) result_.stop_token = token;
        if (stream_.stopped()) result_.stop_string = stream_.matched_stop();
        break;
      }
      try {
        ctx.Decode(&token, 1, LogitsMode::kLast, nullptr);
      } catch (const CodedError &e) {
        if (e.code() != code::kAborted) throw;
        result_.stop_reason = "abort";
        break;
      }
    }
    Emit(stream_.Finish());
    result_.generate_ms = MsSince(gen_start);
  }

  void OnOK() override {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    context_->End();
    Deliver(env);  // text still queued goes out before the result
    deferred_.Resolve(result_.ToJs(env));
  }

  void OnError(const Napi::Error &error) override {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    context_->End();
    Deliver(env);
    deferred_.Reject(MakeError(env, code_, error.Message()).Value());
  }

  Napi::Promise::Deferred deferred_;
  Napi::ObjectReference keep_;
  Context *context_;
  GenerateParams params_;
  TextStream stream_;
  GenerationResult result_;
  const char *code_ = code::kDecode;

  Napi::FunctionReference on_text_;
  Napi::ThreadSafeFunction tsfn_;
  bool has_tsfn_ = false;
  std::mutex mu_;
  std::vector<std::string> pending_;
  bool call_scheduled_ = false;
  Clock::time_point last_delivery_{};
};


}  // namespace

// generate(prompt: Int32Array, params, onText?) -> Promise<result>
Napi::Value Context::Generate(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  CheckIdle(env);
  if (info.Length() < 2 || !info[1].IsObject()) Throw(env, code::kInvalidArgument, "generate(prompt, params, onText?)");
  Napi::Object p = info[1].As<Napi::Object>();
  GenerateParams params;
  params.prompt = TokenIds(env, info[0], n_vocab_, "prompt");
  if (params.prompt.empty()) Throw(env, code::kInvalidArgument, "the prompt must contain at least one token");
  if (params.prompt.size() > n_ctx_) {
    Throw(env, code::kContextOverflow, "the prompt has " + std::to_string(params.prompt.size()) +
                                           " tokens, more than the context size of " + std::to_string(n_ctx_));
  }
  params.sampling = SamplerParams::FromJs(p);
  params.stops = StopRules::FromJs(env, p, n_vocab_);
  if (p.Has("reuseCache")) params.reuse_cache = p.Get("reuseCache").ToBoolean();
  params.stream_interval = StreamIntervalFromJs(p);
  Napi::Function on_text;
  if (info.Length() > 2 && info[2].IsFunction()) on_text = info[2].As<Napi::Function>();

  Begin(env);
  auto *worker = new GenerateWorker(env, this, Value(), std::move(params), on_text);
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

}  // namespace huozi
