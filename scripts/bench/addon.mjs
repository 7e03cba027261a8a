// One measurement of our addon, in its own process: prints {pp, tg} in tokens/s as JSON.
// pp: evaluate `prompt` tokens into an empty context (batch 512, like llama-bench's pp512);
// tg: generate `gen` tokens one at a time from an empty context, greedy, eog ignored; the rate counts the
//     `gen` decodes over the whole native loop (sampling and detokenizing included), as llama-bench counts
//     its decodes.
import { loadModel } from '../../dist/index.js';

const [modelPath, threadsArg, promptArg, genArg, gpuLayersArg, faArg, repsArg] = process.argv.slice(2);
// Optional: repetitions averaged after the warm-up (llama-bench -r); default 1.
const reps = repsArg === undefined ? 1 : Number(repsArg);
const threads = Number(threadsArg);
const prompt = Number(promptArg);
const gen = Number(genArg);
// Optional: layers on the GPU (a number or max; default 0 as on the CPU build) and flash attention (1/0).
const gpuLayers = gpuLayersArg === undefined ? undefined : gpuLayersArg === 'max' ? 'max' : Number(gpuLayersArg);
const flashAttention = faArg === undefined ? 'auto' : faArg === '1';
const model = await loadModel(modelPath, gpuLayers === undefined ? {} : { gpuLayers });
// llama-bench's prompts, token for token: BOS first (when the model adds one), then std::rand() % n_vocab, glibc's
// rand() unseeded, a fresh batch per run (warm-up included). The draw matters for MoE models: which experts a
// batch routes to, and how evenly, depends on its tokens, so both runtimes get the same batches.
const rand = glibcRand();
const promptBatch = (n) => Array.from({ length: n }, (_, i) =>
  i === 0 && model.tokens.addBos && model.tokens.bos !== null ? model.tokens.bos : rand() % model.vocabularySize);

/** glibc's rand() (the TYPE_3 additive feedback generator behind srand/rand), seeded as by srand(seed). */
function glibcRand(seed = 1) {
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

const out = {};
{
  const context = await model.createContext({ contextSize: prompt, batchSize: prompt, ubatchSize: Math.min(512, prompt), threads, flashAttention });
  await context.evaluate(promptBatch(prompt), { logits: 'last' }); // warm-up, as llama-bench does
  let sum = 0;
  for (let r = 0; r < reps; r++) {
    await context.clear();
    const tokens = promptBatch(prompt);
    const t0 = process.hrtime.bigint();
    await context.evaluate(tokens, { logits: 'last' });
    sum += prompt / (Number(process.hrtime.bigint() - t0) / 1e9);
  }
  out.pp = sum / reps; // llama-bench's avg_ts: the mean of the per-repetition rates
  await context.dispose();
}
{
  const context = await model.createContext({ contextSize: gen + 2, batchSize: gen + 2, threads, flashAttention });
  const opts = { temperature: 0, maxTokens: gen + 1, stopAtEog: false, reuseCache: false };
  await context.generate([1], { ...opts, maxTokens: 2 }).result; // warm-up
  let sum = 0;
  for (let r = 0; r < reps; r++) {
    const generation = context.generate([1], opts);
    for await (const _ of generation); // consume the stream as an application would
    const result = await generation.result;
    sum += gen / (result.timings.generateMs / 1000);
  }
  out.tg = sum / reps;
  await context.dispose();
}
await model.dispose();
console.log(JSON.stringify(out));
