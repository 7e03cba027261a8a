// One measurement of our addon, in its own process: prints {pp, tg, tgWall} in tokens/s as JSON.
// pp:     evaluate `prompt` tokens into an empty context (batch 512, like llama-bench's pp512), timed around the
//         awaited evaluate() call;
// tgWall: generate from a one-token prompt in an empty context, greedy, eog ignored, `gen` + 1 tokens (the
//         first from the prompt's decode, so `gen` + 1 decodes of one token each), timed as a user sees it: the
//         wall clock from calling generate() to the end of the `for await` loop that takes the streamed text;
//         tokens / that time;
// tg:     the same generation by the native worker's clock (result.timings.generateMs: from the first sample
//         to the last token, sampling and detokenizing included): the `gen` decodes after the prompt's, as
//         llama-bench counts its decodes. gpu-check.mjs reads this one.
import { loadModel } from '../../dist/index.js';
import { llamaBenchPrompts } from './prompt-tokens.mjs';

const [modelPath, threadsArg, promptArg, genArg, gpuLayersArg, faArg, repsArg] = process.argv.slice(2);
// Optional: repetitions averaged after the warm-up (llama-bench -r); default 1.
const reps = repsArg === undefined ? 1 : Number(repsArg);
const threads = Number(threadsArg);
const prompt = Number(promptArg);
const gen = Number(genArg);
// Optional: layers on the GPU (a number or max; default 0 as on the CPU build), or loadModel's options as JSON
// ({"gpuLayers":"auto","fit":{"budgetMiB":8192}}, {"gpuLayers":"max","cpuMoe":20}), and flash attention (1/0).
const loadOptions = gpuLayersArg === undefined ? {} : gpuLayersArg.startsWith('{') ? JSON.parse(gpuLayersArg)
  : { gpuLayers: gpuLayersArg === 'max' ? 'max' : Number(gpuLayersArg) };
const flashAttention = faArg === undefined ? 'auto' : faArg === '1';
const model = await loadModel(modelPath, loadOptions);
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
  let sumWall = 0;
  for (let r = 0; r < reps; r++) {
    const t0 = process.hrtime.bigint();
    const generation = context.generate([1], opts);
    for await (const _ of generation); // consume the stream as an application would
    const wall = Number(process.hrtime.bigint() - t0) / 1e9;
    const result = await generation.result;
    if (result.tokens.length !== gen + 1) throw new Error(`generated ${result.tokens.length} tokens, not ${gen + 1}`);
    sumWall += (gen + 1) / wall;
    sum += gen / (result.timings.generateMs / 1000);
  }
  out.tg = sum / reps;
  out.tgWall = sumWall / reps;
  await context.dispose();
}
if (model.gpuPlan) out.plan = { gpuLayers: model.gpuPlan.gpuLayers, overrides: model.gpuPlan.overrides.length, hostBytesPerToken: model.gpuPlan.cost.hostBytesPerToken };
await model.dispose();
console.log(JSON.stringify(out));
