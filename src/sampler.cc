#include "sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <vector>

#include "errors.h"
#include "llama-grammar.h"

namespace huozi {

SamplerParams SamplerParams::FromJs(Napi::Env env, Napi::Object o, int32_t n_vocab) {
  SamplerParams p;
  auto num = [&](const char *key, double fallback) {
    Napi::Value v = o.Get(key);
    return v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : fallback;
  };
  p.temperature = static_cast<float>(num("temperature", p.temperature));
  p.top_k = static_cast<int32_t>(num("topK", p.top_k));
  p.top_p = static_cast<float>(num("topP", p.top_p));
  p.min_p = static_cast<float>(num("minP", p.min_p));
  p.repeat_penalty = static_cast<float>(num("repeatPenalty", p.repeat_penalty));
  p.repeat_last_n = static_cast<int32_t>(num("repeatLastN", p.repeat_last_n));
  p.frequency_penalty = static_cast<float>(num("frequencyPenalty", p.frequency_penalty));
  p.presence_penalty = static_cast<float>(num("presencePenalty", p.presence_penalty));
  // lib/ allows 0 .. 2^32-2: LLAMA_DEFAULT_SEED (2^32-1) would mean "a random seed" to llama.cpp.
  p.seeded = o.Get("seed").IsNumber();
  p.seed = static_cast<uint32_t>(num("seed", p.seed));
  // logitBias: { tokens: Int32Array, biases: Float32Array } (lib/generation.ts: -100 became -Infinity).
  Napi::Value bias = o.Get("logitBias");
  if (bias.IsObject()) {
    Napi::Value tokens = bias.As<Napi::Object>().Get("tokens");
    Napi::Value biases = bias.As<Napi::Object>().Get("biases");
    if (!tokens.IsTypedArray() || tokens.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array ||
        !biases.IsTypedArray() || biases.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array ||
        tokens.As<Napi::Int32Array>().ElementLength() != biases.As<Napi::Float32Array>().ElementLength()) {
      Throw(env, code::kInvalidArgument, "logitBias must be { tokens: Int32Array, biases: Float32Array } of one length");
    }
    Napi::Int32Array ids = tokens.As<Napi::Int32Array>();
    Napi::Float32Array values = biases.As<Napi::Float32Array>();
    for (size_t i = 0; i < ids.ElementLength(); ++i) {
      if (ids[i] < 0 || ids[i] >= n_vocab) Throw(env, code::kOutOfRange, "logitBias names a token outside the vocabulary");
      if (std::isnan(values[i]) || values[i] == std::numeric_limits<float>::infinity()) {
        Throw(env, code::kOutOfRange, "a logitBias value must be a number or -Infinity");
      }
      p.logit_bias.push_back(llama_logit_bias{ids[i], values[i]});
    }
  }
  p.grammar = GrammarFromJs(env, o.Get("grammar"));
  Napi::Value top = o.Get("topLogprobs");
  if (top.IsNumber()) p.top_logprobs = std::clamp(top.As<Napi::Number>().Int32Value(), 0, 20);
  p.post_sampling_probs = o.Get("postSamplingProbs").ToBoolean();
  return p;
}

namespace {

// The index of the first largest of n values, in two passes that the compiler turns into SIMD: the maximum over
// 8 independent lanes (a single running maximum is a serial dependency chain with a branch per element), then
// the first index holding it. The first of equal maxima, as llama.cpp's greedy sampler; NaN is never chosen;
// 0 when nothing compares.
int32_t Argmax(const float *logits, int32_t n) {
  constexpr int32_t kLanes = 8;
  float lanes[kLanes];
  for (float &l : lanes) l = -std::numeric_limits<float>::infinity();
  int32_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int32_t j = 0; j < kLanes; ++j) lanes[j] = logits[i + j] > lanes[j] ? logits[i + j] : lanes[j];
  }
  float best = lanes[0];
  for (int32_t j = 1; j < kLanes; ++j) best = lanes[j] > best ? lanes[j] : best;
  for (; i < n; ++i) best = logits[i] > best ? logits[i] : best;
  for (int32_t k = 0; k < n; ++k) {
    if (logits[k] == best) return k;
  }
  return 0;
}

// The k largest of `value(i)` for i in [0, n), largest first (ties: the lower index first): one pass keeping a
// sorted list of k, which costs O(n) when, as with logits, few values enter it.
template <typename Value>
std::vector<std::pair<int32_t, float>> TopK(int32_t n, int32_t k, Value value) {
  std::vector<std::pair<int32_t, float>> top;
  if (k <= 0) return top;
  top.reserve(static_cast<size_t>(k) + 1);
  for (int32_t i = 0; i < n; ++i) {
    const float v = value(i);
    if (static_cast<int32_t>(top.size()) == k && !(v > top.back().second)) continue;
    auto at = std::upper_bound(top.begin(), top.end(), v, [](float x, const std::pair<int32_t, float> &e) { return x > e.second; });
    top.insert(at, {i, v});
    if (static_cast<int32_t>(top.size()) > k) top.pop_back();
  }
  return top;
}

Napi::Object PieceToJs(Napi::Env env, const llama_vocab *vocab, llama_token token, float logprob, std::string &buf) {
  if (buf.size() < 64) buf.resize(64);
  int32_t n = llama_token_to_piece(vocab, token, buf.data(), static_cast<int32_t>(buf.size()), 0, true);
  if (n < 0) {
    buf.resize(static_cast<size_t>(-n));
    n = llama_token_to_piece(vocab, token, buf.data(), static_cast<int32_t>(buf.size()), 0, true);
  }
  const size_t len = static_cast<size_t>(std::max(n, 0));
  Napi::Object o = Napi::Object::New(env);
  o.Set("token", Napi::Number::New(env, token));
  o.Set("text", Napi::String::New(env, buf.data(), len));
  Napi::Array bytes = Napi::Array::New(env, len);
  for (size_t i = 0; i < len; ++i) bytes.Set(static_cast<uint32_t>(i), Napi::Number::New(env, static_cast<uint8_t>(buf[i])));
  o.Set("bytes", bytes);
  o.Set("logprob", Napi::Number::New(env, logprob));
  return o;
}

}  // namespace

Napi::Array LogprobsToJs(Napi::Env env, const llama_vocab *vocab, const std::vector<TokenLogprob> &entries) {
  Napi::Array out = Napi::Array::New(env, entries.size());
  std::string buf(64, '\0');
  for (size_t i = 0; i < entries.size(); ++i) {
    const TokenLogprob &e = entries[i];
    Napi::Object o = PieceToJs(env, vocab, e.token, e.logprob, buf);
    Napi::Array top = Napi::Array::New(env, e.top.size());
    for (size_t j = 0; j < e.top.size(); ++j) top.Set(static_cast<uint32_t>(j), PieceToJs(env, vocab, e.top[j].first, e.top[j].second, buf));
    o.Set("top", top);
    out.Set(static_cast<uint32_t>(i), o);
  }
  return out;
}

// The same order as llama.cpp's common sampler: logit bias, penalties, top-k, top-p, min-p, temperature, then draw.
Sampler::Sampler(const SamplerParams &p, const llama_vocab *vocab, int32_t n_vocab, const std::vector<llama_token> &history,
                 bool eog_ends)
    : vocab_(vocab), n_vocab_(n_vocab), eog_ends_(eog_ends), top_logprobs_(p.top_logprobs), post_(p.post_sampling_probs) {
  llama_sampler_chain_params cp = llama_sampler_chain_default_params();
  cp.no_perf = true;
  chain_.reset(llama_sampler_chain_init(cp));
  if (!p.logit_bias.empty()) {
    llama_sampler_chain_add(chain_.get(), llama_sampler_init_logit_bias(n_vocab, static_cast<int32_t>(p.logit_bias.size()), p.logit_bias.data()));
  }
  const bool penalties = (p.repeat_penalty != 1.0f || p.frequency_penalty != 0.0f || p.presence_penalty != 0.0f) && p.repeat_last_n > 0;
  if (penalties) {
    llama_sampler_chain_add(chain_.get(), llama_sampler_init_penalties(n_vocab, p.repeat_last_n, p.repeat_penalty,
                                                                       p.frequency_penalty, p.presence_penalty));
  }
  greedy_ = p.temperature <= 0.0f;
  if (greedy_) {
    llama_sampler_chain_add(chain_.get(), llama_sampler_init_greedy());
  } else {
    if (p.top_k > 0) llama_sampler_chain_add(chain_.get(), llama_sampler_init_top_k(p.top_k));
    if (p.top_p < 1.0f) llama_sampler_chain_add(chain_.get(), llama_sampler_init_top_p(p.top_p, 1));
    if (p.min_p > 0.0f) llama_sampler_chain_add(chain_.get(), llama_sampler_init_min_p(p.min_p, 1));
    llama_sampler_chain_add(chain_.get(), llama_sampler_init_temp(p.temperature));
    llama_sampler_chain_add(chain_.get(), llama_sampler_init_dist(p.seed));
  }
  if (penalties) {
    size_t window = static_cast<size_t>(p.repeat_last_n);
    size_t from = history.size() > window ? history.size() - window : 0;
    for (size_t i = from; i < history.size(); ++i) llama_sampler_accept(chain_.get(), history[i]);
  }
  if (p.grammar) grammar_ = InstantiateGrammar(*p.grammar, vocab);
  // Greedy with no penalties and no bias: the chain would only copy every logit into a candidate array (0.77 MB
  // for a 64k vocabulary, ~0.15 ms a token, 4% of tg128 on an H200) to take the largest. Sample() then reads
  // the logits directly; the token is the same (the first largest, as llama.cpp's greedy sampler).
  plain_greedy_ = greedy_ && !penalties && p.logit_bias.empty() && !grammar_;
}

void Sampler::Fill(const float *logits) {
  cur_.resize(static_cast<size_t>(n_vocab_));
  for (llama_token id = 0; id < n_vocab_; ++id) cur_[id] = llama_token_data{id, logits[id], 0.0f};
}

// The grammar's verdict on one token alone: far cheaper than applying it to the whole vocabulary.
bool Sampler::GrammarAllows(llama_token token) {
  if (!eog_ends_ && llama_vocab_is_eog(vocab_, token)) return false;
  llama_token_data one{token, 1.0f, 0.0f};
  llama_token_data_array arr{&one, 1, -1, false};
  llama_grammar_apply_impl(*grammar_, &arr);
  return std::isfinite(arr.data[0].logit);
}

llama_token Sampler::Sample(const float *logits) {
  llama_token token;
  if (plain_greedy_) {
    token = Argmax(logits, n_vocab_);
    if (top_logprobs_ >= 0) {
      if (post_) {
        logprobs.push_back(TokenLogprob{token, 0.0f, {}});
        if (top_logprobs_ > 0) logprobs.back().top.push_back({token, 0.0f});
      } else {
        RecordRaw(logits, token);
      }
    }
    return token;
  }
  // As common_sampler_sample: the chain first, then the grammar's verdict on the token it drew; only a rejected
  // token makes the grammar mask the whole vocabulary before the chain draws again. With a seed both draws
  // come from the same generator, so the tokens stay reproducible.
  Fill(logits);
  llama_token_data_array arr{cur_.data(), cur_.size(), -1, false};
  llama_sampler_apply(chain_.get(), &arr);
  if (arr.selected < 0 || arr.selected >= static_cast<int64_t>(arr.size)) throw std::runtime_error("the sampler selected no token");
  token = arr.data[arr.selected].id;
  if (grammar_ && !GrammarAllows(token)) {
    Fill(logits);
    arr = llama_token_data_array{cur_.data(), cur_.size(), -1, false};
    llama_grammar_apply_impl(*grammar_, &arr);
    bool any = false;
    for (size_t i = 0; i < arr.size; ++i) {
      if (!eog_ends_ && llama_vocab_is_eog(vocab_, arr.data[i].id)) arr.data[i].logit = -INFINITY;
      any = any || std::isfinite(arr.data[i].logit);
    }
    if (!any) {
      throw CodedError(code::kGrammar, GrammarComplete(*grammar_)
                                           ? "the grammar is complete and allows only an end-of-generation token, which stopAtEog: false does not take"
                                           : "the grammar allows no token of this vocabulary here");
    }
    llama_sampler_apply(chain_.get(), &arr);
    if (arr.selected < 0 || arr.selected >= static_cast<int64_t>(arr.size) || !std::isfinite(arr.data[arr.selected].logit)) {
      throw CodedError(code::kGrammar, "the sampler drew a token the grammar does not allow");
    }
    token = arr.data[arr.selected].id;
  }
  if (grammar_) {
    try {
      llama_grammar_accept_impl(*grammar_, token);
    } catch (const std::exception &e) {
      // Its stacks past the limit (kMaxStacks): this generation fails, not the others in its batch.
      throw CodedError(code::kGrammar, e.what());
    }
  }
  llama_sampler_accept(chain_.get(), token);
  if (top_logprobs_ >= 0) {
    if (post_) {
      RecordPost(arr, token);
    } else {
      RecordRaw(logits, token);
    }
  }
  return token;
}

// Log-softmax of the model's raw logits, before the logit bias, penalties, temperature, truncation and the
// grammar: what vLLM reports by default (logprobs_mode "raw_logprobs": logits processors, logit_bias among
// them, come after) and what evaluate() returns, so the two agree.
void Sampler::RecordRaw(const float *logits, llama_token token) {
  float max = -INFINITY;
  for (int32_t i = 0; i < n_vocab_; ++i) max = std::max(max, logits[i]);
  double sum = 0.0;
  for (int32_t i = 0; i < n_vocab_; ++i) sum += std::exp(static_cast<double>(logits[i]) - max);
  const double lse = max + std::log(sum);
  TokenLogprob e;
  e.token = token;
  e.logprob = static_cast<float>(logits[token] - lse);
  for (const auto &[id, logit] : TopK(n_vocab_, top_logprobs_, [&](int32_t i) { return logits[i]; })) {
    e.top.push_back({id, static_cast<float>(logit - lse)});
  }
  logprobs.push_back(std::move(e));
}

// Probabilities after the whole chain (llama-server's post_sampling_probs): over the candidates the draw chose
// among. Greedy draws the one token for sure.
void Sampler::RecordPost(const llama_token_data_array &arr, llama_token token) {
  TokenLogprob e;
  e.token = token;
  if (greedy_) {
    e.logprob = 0.0f;
    if (top_logprobs_ > 0) e.top.push_back({token, 0.0f});
  } else {
    e.logprob = -INFINITY;
    for (size_t i = 0; i < arr.size; ++i) {
      if (arr.data[i].id == token) e.logprob = std::log(arr.data[i].p);
    }
    // Candidates the grammar masked out have probability 0: they are not alternatives.
    for (const auto &[at, p] : TopK(static_cast<int32_t>(arr.size), top_logprobs_, [&](int32_t i) { return arr.data[i].p; })) {
      if (p > 0.0f) e.top.push_back({arr.data[at].id, std::log(p)});
    }
  }
  logprobs.push_back(std::move(e));
}

}  // namespace huozi
