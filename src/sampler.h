// Sampling parameters copied from JS before a generation is queued, and the llama_sampler chain built
// from them on the thread that generates (the context's own thread, or a ParallelContext's loop).
#pragma once
#include <napi.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "llama.h"

namespace huozi {

struct SamplerParams {
  float temperature = 0.8f;  // <= 0: greedy
  int32_t top_k = 40;        // <= 0: off
  float top_p = 0.95f;       // >= 1: off
  float min_p = 0.05f;       // <= 0: off
  float repeat_penalty = 1.0f;
  int32_t repeat_last_n = 64;  // 0: no penalties
  float frequency_penalty = 0.0f;
  float presence_penalty = 0.0f;
  uint32_t seed = LLAMA_DEFAULT_SEED;
  // The caller gave a seed: it expects the same tokens for the same request whatever the cache holds, so the
  // generation evaluates its prompt as a cold context would (Context::canonical()).
  bool seeded = false;

  static SamplerParams FromJs(Napi::Object o);
};

struct SamplerDeleter {
  void operator()(llama_sampler *s) const { llama_sampler_free(s); }
};
using SamplerPtr = std::unique_ptr<llama_sampler, SamplerDeleter>;

// The same order as llama.cpp's common sampler: penalties, top-k, top-p, min-p, temperature, then draw.
// `history` (the prompt's tail) primes the repetition penalties.
SamplerPtr BuildSampler(const SamplerParams &p, int32_t n_vocab, const std::vector<llama_token> &history);

// Greedy with no penalties: the chain would only copy every logit into a candidate array (0.77 MB for a 64k
// vocabulary, ~0.15 ms a token, 4% of tg128 on an H200) to take the largest. Sample() then reads the logits
// directly; the token is the same (the first largest, as llama.cpp's greedy sampler).
bool IsPlainGreedy(const SamplerParams &p);
llama_token Sample(llama_sampler *chain, bool plain_greedy, llama_context *ctx, int32_t idx, int32_t n_vocab);
// The same from logits kept elsewhere (a prompt's kept logits, Context::PromptLogits).
llama_token SampleLogits(llama_sampler *chain, bool plain_greedy, const float *logits, int32_t n_vocab);

}  // namespace huozi
