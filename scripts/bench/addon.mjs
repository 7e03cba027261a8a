// One measurement of our addon, in its own process: prints {pp, tg} in tokens/s as JSON.
// pp: evaluate `prompt` tokens into an empty context (batch 512, like llama-bench's pp512);
// tg: generate `gen` tokens one at a time from an empty context, greedy, eog ignored; the rate counts the
//     `gen` decodes over the whole native loop (sampling and detokenizing included), as llama-bench counts
//     its decodes.
import { loadModel } from '../../dist/index.js';
import { llamaBenchPrompts } from './prompt-tokens.mjs';

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
// llama-bench's own prompt batches (MoE routing depends on the tokens).
const promptBatch = llamaBenchPrompts(model.vocabularySize, model.tokens.addBos ? model.tokens.bos : null);

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
