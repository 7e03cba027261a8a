#include "sampler.h"

#include <limits>
#include <stdexcept>
#include <vector>

namespace huozi {

SamplerParams SamplerParams::FromJs(Napi::Object o) {
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
  return p;
}

SamplerPtr BuildSampler(const SamplerParams &p, int32_t n_vocab, const std::vector<llama_token> &history) {
  llama_sampler_chain_params cp = llama_sampler_chain_default_params();
  cp.no_perf = true;
  SamplerPtr chain(llama_sampler_chain_init(cp));
  const bool penalties = p.repeat_penalty != 1.0f || p.frequency_penalty != 0.0f || p.presence_penalty != 0.0f;
  if (penalties && p.repeat_last_n > 0) {
    llama_sampler_chain_add(chain.get(), llama_sampler_init_penalties(n_vocab, p.repeat_last_n, p.repeat_penalty,
                                                                      p.frequency_penalty, p.presence_penalty));
  }
  if (p.temperature <= 0.0f) {
    llama_sampler_chain_add(chain.get(), llama_sampler_init_greedy());
  } else {
    if (p.top_k > 0) llama_sampler_chain_add(chain.get(), llama_sampler_init_top_k(p.top_k));
    if (p.top_p < 1.0f) llama_sampler_chain_add(chain.get(), llama_sampler_init_top_p(p.top_p, 1));
    if (p.min_p > 0.0f) llama_sampler_chain_add(chain.get(), llama_sampler_init_min_p(p.min_p, 1));
    llama_sampler_chain_add(chain.get(), llama_sampler_init_temp(p.temperature));
    llama_sampler_chain_add(chain.get(), llama_sampler_init_dist(p.seed));
  }
  if (penalties && p.repeat_last_n > 0) {
    size_t window = static_cast<size_t>(p.repeat_last_n);
    size_t from = history.size() > window ? history.size() - window : 0;
    for (size_t i = from; i < history.size(); ++i) llama_sampler_accept(chain.get(), history[i]);
  }
  return chain;
}

bool IsPlainGreedy(const SamplerParams &p) {
  const bool penalties = p.repeat_penalty != 1.0f || p.frequency_penalty != 0.0f || p.presence_penalty != 0.0f;
  return p.temperature <= 0.0f && !(penalties && p.repeat_last_n > 0);
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

}  // namespace

llama_token Sample(llama_sampler *chain, bool plain_greedy, llama_context *ctx, int32_t idx, int32_t n_vocab) {
  if (!plain_greedy) return llama_sampler_sample(chain, ctx, idx);
  return Argmax(llama_get_logits_ith(ctx, idx), n_vocab);
}

llama_token SampleLogits(llama_sampler *chain, bool plain_greedy, const float *logits, int32_t n_vocab) {
  if (plain_greedy) return Argmax(logits, n_vocab);
  // What llama_sampler_sample does with a context's logits (no backend sampler here).
  std::vector<llama_token_data> cur(static_cast<size_t>(n_vocab));
  for (llama_token id = 0; id < n_vocab; ++id) cur[id] = llama_token_data{id, logits[id], 0.0f};
  llama_token_data_array arr = {cur.data(), cur.size(), -1, false};
  llama_sampler_apply(chain, &arr);
  if (arr.selected < 0 || arr.selected >= static_cast<int64_t>(arr.size)) {
    throw std::runtime_error("the sampler selected no token");
  }
  const llama_token token = arr.data[arr.selected].id;
  llama_sampler_accept(chain, token);
  return token;
}

}  // namespace huozi
