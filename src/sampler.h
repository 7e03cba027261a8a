// Sampling parameters copied from JS before a generation is queued, and the Sampler built from them on the thread
// that generates (the context's own thread, or a ParallelContext's loop): llama.cpp's sampler chain, the
// grammar, the logit bias and the logprobs of each sampled token. Both generation loops sample only through it.
#pragma once
#include <napi.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "grammar.h"
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
  std::vector<llama_logit_bias> logit_bias;  // -INFINITY bans the token
  GrammarRef grammar;                        // null: unconstrained
  int32_t top_logprobs = -1;                 // < 0: no logprobs; else how many alternatives (0-20)
  bool post_sampling_probs = false;          // logprobs after the whole chain, not of the raw logits

  // The sampling keys of a params object (lib/generation.ts checked them for users; token ids are checked again).
  static SamplerParams FromJs(Napi::Env env, Napi::Object o, int32_t n_vocab);
};

struct SamplerDeleter {
  void operator()(llama_sampler *s) const { llama_sampler_free(s); }
};
using SamplerPtr = std::unique_ptr<llama_sampler, SamplerDeleter>;

// One sampled token's logprob and its most likely alternatives (lib/generation.ts TokenLogprob).
struct TokenLogprob {
  llama_token token = -1;
  float logprob = 0.0f;
  std::vector<std::pair<llama_token, float>> top;
};

// Main thread: [{ token, text, bytes, logprob, top: [{ token, text, bytes, logprob }] }].
Napi::Array LogprobsToJs(Napi::Env env, const llama_vocab *vocab, const std::vector<TokenLogprob> &entries);

class Sampler {
 public:
  // `history` (the prompt's tail) primes the repetition penalties. `eog_ends`: an end-of-generation token ends
  // the generation (stopAtEog); when it does not, a finished grammar has nothing left to allow.
  Sampler(const SamplerParams &p, const llama_vocab *vocab, int32_t n_vocab, const std::vector<llama_token> &history,
          bool eog_ends);

  // Draws the next token from a row of logits (a context's, or a prompt's kept ones) and accepts it; with
  // logprobs asked, appends its entry to `logprobs`. Throws CodedError(kGrammar) when the grammar allows no token.
  llama_token Sample(const float *logits);

  // Entries of the tokens sampled since the caller last took them.
  std::vector<TokenLogprob> logprobs;

 private:
  void Fill(const float *logits);
  bool GrammarAllows(llama_token token);
  void RecordRaw(const float *logits, llama_token token);
  void RecordPost(const llama_token_data_array &arr, llama_token token);

  const llama_vocab *vocab_;
  int32_t n_vocab_;
  SamplerPtr chain_;
  GrammarInstance grammar_;
  bool plain_greedy_;
  bool greedy_;
  bool eog_ends_;
  int32_t top_logprobs_;
  bool post_;
  std::vector<llama_token_data> cur_;
};

}  // namespace huozi
