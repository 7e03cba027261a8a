// What the two generation loops (workers/generate.cc for one sequence, parallel.cc for the slots) share:
// the stop rules and reading them from JS, when a sampled token ends the generation and what text it adds,
// and the result they report.
#pragma once
#include <napi.h>

#include <algorithm>
#include <chrono>
#include <string>
#include <vector>

#include "llama.h"
#include "sampler.h"
#include "text_stream.h"
#include "tokens.h"

namespace huozi {

struct StopRules {
  int32_t max_tokens = -1;  // < 0: until the context is full
  bool stop_at_eog = true;
  std::vector<llama_token> stop_tokens;
  std::vector<std::string> stop_strings;

  // maxTokens, stopAtEog, stopTokens (Int32Array) and stopStrings of a params object (lib/context.ts checked
  // them for users; token ids are checked again here).
  static StopRules FromJs(Napi::Env env, Napi::Object p, int32_t n_vocab) {
    StopRules r;
    if (p.Get("maxTokens").IsNumber()) r.max_tokens = p.Get("maxTokens").As<Napi::Number>().Int32Value();
    if (p.Has("stopAtEog")) r.stop_at_eog = p.Get("stopAtEog").ToBoolean();
    r.stop_tokens = TokenIds(env, p.Get("stopTokens"), n_vocab, "stopTokens", true);
    Napi::Value stops = p.Get("stopStrings");
    if (stops.IsArray()) {
      Napi::Array arr = stops.As<Napi::Array>();
      for (uint32_t i = 0; i < arr.Length(); ++i) {
        std::string s = arr.Get(i).ToString().Utf8Value();
        if (!s.empty()) r.stop_strings.push_back(std::move(s));
      }
    }
    return r;
  }
};

// How often a generation hands its text to JS: the `streamIntervalMs` generate option (lib/context.ts checks
// it for users). Each delivery wakes the main thread, which then competes with the compute threads for the
// cores: on 2 cores with 2 threads, delivering every 5 ms cost 5-10% of tg128; every 16 ms (~60 a second, still
// smooth on screen, the default) costs nothing measurable. Text generated in between joins one chunk; 0 makes
// every token's text a chunk of its own, handed over at once (one SSE event per token, as llama-server).
constexpr std::chrono::milliseconds kDefaultStreamInterval{16};

inline std::chrono::milliseconds StreamIntervalFromJs(Napi::Object p) {
  Napi::Value v = p.Get("streamIntervalMs");
  if (!v.IsNumber()) return kDefaultStreamInterval;
  const double ms = v.As<Napi::Number>().DoubleValue();
  return std::chrono::milliseconds(ms > 0 ? static_cast<int64_t>(std::min(ms, 3600e3)) : 0);
}

// What a generation produced; lib/binding.ts's NativeGenerateResult.
struct GenerationResult {
  std::vector<llama_token> tokens;
  std::string text;
  const char *stop_reason = "maxTokens";
  llama_token stop_token = -1;
  std::string stop_string;
  size_t reused_tokens = 0;
  size_t evaluated_tokens = 0;
  double prompt_ms = 0;
  double generate_ms = 0;
  bool has_logprobs = false;          // the caller asked for logprobs
  std::vector<TokenLogprob> logprobs;  // one per token in `tokens`

  Napi::Object ToJs(Napi::Env env, const llama_vocab *vocab) const {
    Napi::Object out = Napi::Object::New(env);
    Napi::Int32Array ids = Napi::Int32Array::New(env, tokens.size());
    std::copy(tokens.begin(), tokens.end(), ids.Data());
    out.Set("tokens", ids);
    out.Set("text", Napi::String::New(env, text));
    out.Set("stopReason", stop_reason);
    out.Set("stopToken", stop_token >= 0 ? Napi::Value(Napi::Number::New(env, stop_token)) : env.Null());
    out.Set("stopString", stop_string.empty() ? env.Null() : Napi::Value(Napi::String::New(env, stop_string)));
    out.Set("reusedTokens", Napi::Number::New(env, static_cast<double>(reused_tokens)));
    out.Set("evaluatedTokens", Napi::Number::New(env, static_cast<double>(evaluated_tokens)));
    out.Set("promptMs", prompt_ms);
    out.Set("generateMs", generate_ms);
    if (has_logprobs) out.Set("logprobs", LogprobsToJs(env, vocab, logprobs));
    return out;
  }
};

struct TokenVerdict {
  const char *stop_reason = nullptr;  // null: go on
  bool by_token = false;              // stopped by the token itself (stopToken, eog): it is not text
  std::string text;                   // text that became final with this token
};

// `token` was just sampled and is the `generated`-th token; `room`: the context can hold one more token.
// `piece` is a scratch buffer kept by the caller between tokens.
inline TokenVerdict JudgeToken(const llama_vocab *vocab, llama_token token, size_t generated, bool room,
                               const StopRules &rules, TextStream &stream, std::string &piece) {
  TokenVerdict v;
  if (std::find(rules.stop_tokens.begin(), rules.stop_tokens.end(), token) != rules.stop_tokens.end()) {
    v.stop_reason = "stopToken";
    v.by_token = true;
    return v;
  }
  if (rules.stop_at_eog && llama_vocab_is_eog(vocab, token)) {
    v.stop_reason = "eog";
    v.by_token = true;
    return v;
  }
  if (piece.size() < 64) piece.resize(64);
  int32_t n = llama_token_to_piece(vocab, token, piece.data(), static_cast<int32_t>(piece.size()), 0, false);
  if (n < 0) {
    piece.resize(static_cast<size_t>(-n));
    n = llama_token_to_piece(vocab, token, piece.data(), static_cast<int32_t>(piece.size()), 0, false);
  }
  v.text = stream.Push(std::string(piece.data(), static_cast<size_t>(std::max(n, 0))));
  if (stream.stopped()) {
    v.stop_reason = "stopString";
  } else if (rules.max_tokens >= 0 && generated >= static_cast<size_t>(rules.max_tokens)) {
    v.stop_reason = "maxTokens";
  } else if (!room) {
    v.stop_reason = "contextFull";
  }
  return v;
}

}  // namespace huozi
