// llama-bench's pp prompts, token for token (tools/llama-bench/llama-bench.cpp, test_prompt): BOS first when the
// model adds one, then std::rand() % n_vocab with glibc's rand() unseeded, a fresh batch for every run (the
// warm-up included). The draw matters for MoE models: which experts a batch routes to, and how evenly, depends
// on its tokens, so every runtime measured here gets the batches llama-bench evaluates.

/** glibc's rand() (the TYPE_3 additive feedback generator behind srand/rand), seeded as by srand(seed). */
export function glibcRand(seed = 1) {
  const r = new Uint32Array(34);
  r[0] = seed;
  for (let i = 1; i < 31; i++) r[i] = Number((16807n * BigInt(r[i - 1])) % 2147483647n);
  for (let i = 31; i < 34; i++) r[i] = r[i - 31];
  let k = 0; // r[k] is the value 34 draws back; r[(k + 3) % 34] the one 31 back
  const step = () => {
    const v = (r[(k + 3) % 34] + r[(k + 31) % 34]) >>> 0;
    r[k] = v;
    k = (k + 1) % 34;
    return v;
  };
  for (let i = 34; i < 344; i++) step();
  return () => step() >>> 1;
}

/** A function returning llama-bench's next prompt batch of n tokens. `bos`: the BOS id if the model adds one. */
export function llamaBenchPrompts(vocabularySize, bos) {
  const rand = glibcRand();
  return (n) => Array.from({ length: n }, (_, i) => (i === 0 && bos !== null ? bos : rand() % vocabularySize));
}
