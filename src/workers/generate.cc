// Context::Generate: prefill the prompt (reusing the cached prefix), then sample, check stops, detokenize and
// decode one token at a time. The worker is queued on the libuv pool, but its body runs on the context's own
// thread (Context::RunOnThread, executor.h says why). Text goes to JS through the outbox (outbox.h): joined
// into one chunk per streamIntervalMs, or with 0 every token's text a chunk of its own.
#include <chrono>
#include <string>
#include <vector>

#include "../context.h"
#include "../errors.h"
#include "../sampler.h"
#include "../generation.h"
#include "../outbox.h"
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
    result_.has_logprobs = params_.sampling.top_logprobs >= 0;
    if (!on_text.IsEmpty()) {
      on_text_ = Napi::Persistent(on_text);
      // A wake still queued when the generation ends is dispatched after OnOK, and calls Deliver: the worker
      // lives until the outbox is closed as well as until its work is complete (Destroy).
      ++holds_;
      outbox_.Open(env, on_text, "huozi-gguf:text", [this](Napi::Env env) { Deliver(env); }, [this] { Destroy(); });
    }
  }

  // Main thread: called once the work is complete, and once the outbox is closed; the last deletes.
  void Destroy() override {
    if (--holds_ == 0) delete this;
  }

  Napi::Promise Promise() { return deferred_.Promise(); }

 private:
  // Worker thread: keep the text (and the logprob entries of the tokens sampled since the last call) for the
  // result and queue them for JS.
  void Emit(const std::string &text, std::vector<TokenLogprob> &&entries) {
    if (text.empty() && entries.empty()) return;
    result_.text += text;
    result_.logprobs.insert(result_.logprobs.end(), entries.begin(), entries.end());
    const std::chrono::milliseconds interval = params_.stream_interval;
    outbox_.Put(interval, [&](std::vector<Chunk> &chunks) { JoinChunk(chunks, text, std::move(entries), result_.has_logprobs, interval);
    });
  }

  // Main thread: hand all queued chunks to JS (one, or one per token with streamIntervalMs 0): onText(text,
  // logprobs?).
  void Deliver(Napi::Env env) {
    std::vector<Chunk> chunks = outbox_.Take();
    if (on_text_.IsEmpty()) return;
    for (const Chunk &chunk : chunks) {
      if (chunk.has_logprobs) {
        on_text_.Call({Napi::String::New(env, chunk.text), LogprobsToJs(env, context_->vocab(), chunk.logprobs)});
      } else {
        on_text_.Call({Napi::String::New(env, chunk.text)});
      }
    }
  }

  // Main thread, once Execute is over: the text still queued goes out before the outcome, then no more wakes.
  void Flush(Napi::Env env) {
    Deliver(env);
    outbox_.Close();
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

    const llama_vocab *vocab = ctx.vocab();
    Sampler sampler(params_.sampling, vocab, ctx.n_vocab(), prompt, params_.stops.stop_at_eog);
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
      const llama_token token = sampler.Sample(first && kept != nullptr ? kept->data() : llama_get_logits_ith(ctx.handle(), -1));
      result_.tokens.push_back(token);
      TokenVerdict verdict = JudgeToken(vocab, token, result_.tokens.size(), cache.size() < ctx.n_ctx(), params_.stops, stream_, piece);
      Emit(verdict.text, std::move(sampler.logprobs));
      sampler.logprobs.clear();
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
    Emit(stream_.Finish(), {});
    result_.generate_ms = MsSince(gen_start);
  }

  void OnOK() override {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    context_->End();
    Flush(env);
    deferred_.Resolve(result_.ToJs(env, context_->vocab()));
  }

  void OnError(const Napi::Error &error) override {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    context_->End();
    Flush(env);
    Napi::Error e = MakeError(env, code_, error.Message());
    // A grammar that allows nothing more ends the generation with what it produced, as a stop does.
    if (code_ == code::kGrammar) {
      result_.stop_reason = "abort";
      e.Set("result", result_.ToJs(env, context_->vocab()));
    }
    deferred_.Reject(e.Value());
  }

  Napi::Promise::Deferred deferred_;
  Napi::ObjectReference keep_;
  Context *context_;
  GenerateParams params_;
  TextStream stream_;
  GenerationResult result_;
  const char *code_ = code::kDecode;

  Napi::FunctionReference on_text_;
  Outbox<std::vector<Chunk>> outbox_;  // open only with an onText callback
  int holds_ = 1;                             // the work, and the outbox while open (Destroy)
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
  params.sampling = SamplerParams::FromJs(env, p, n_vocab_);
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
