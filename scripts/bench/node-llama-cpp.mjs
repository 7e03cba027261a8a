// One measurement of node-llama-cpp (the dev dependency, its own prebuilt CPU binary), in its own process:
// prints {pp, tgWall, threads} as JSON (t/s, and the threads its context used), measured as
// scripts/bench/addon.mjs measures ours: pp around the awaited evaluation of llama-bench's prompt batch; tgWall
// by the wall clock from calling sequence.evaluate() on a one-token prompt to the end of the `for await` loop
// that takes `gen` + 1 tokens (the first from the prompt's decode). Its loop yields token ids, not text. It has
// no clock of its own for a generation, so there is no native figure.
//
//   node scripts/bench/node-llama-cpp.mjs model.gguf <threads|default> <prompt> <gen>
// `default`: no thread settings at all, as a user who sets none (getLlama's maxThreads then defaults to
// max(4, the machine's cores), and a context uses that many).
import { getLlama, LlamaLogLevel } from 'node-llama-cpp';
import { llamaBenchPrompts } from './prompt-tokens.mjs';

const [modelPath, threadsArg, promptArg, genArg] = process.argv.slice(2);
const byDefault = threadsArg === 'default';
const threads = Number(threadsArg);
const prompt = Number(promptArg);
const gen = Number(genArg);
const llama = await getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error, ...(byDefault ? {} : { maxThreads: threads }) });
const model = await llama.loadModel({ modelPath });
const threadOptions = byDefault ? {} : { threads: { ideal: threads, min: threads } };
// llama-bench's own prompt batches, as scripts/bench/addon.mjs.
const vocabularySize = model.fileInfo.metadata?.tokenizer?.ggml?.tokens?.length;
if (!vocabularySize) throw new Error(`${modelPath}: no tokenizer.ggml.tokens in its metadata`);
const promptBatch = llamaBenchPrompts(vocabularySize, model.tokens.shouldPrependBosToken ? model.tokens.bos : null);

const out = {};
{
  const context = await model.createContext({ contextSize: prompt, batchSize: prompt, ...threadOptions });
  out.threads = context.idealThreads;
  const sequence = context.getSequence();
  await sequence.evaluateWithoutGeneratingNewTokens(promptBatch(prompt));
  await sequence.clearHistory();
  const tokens = promptBatch(prompt);
  const t0 = process.hrtime.bigint();
  await sequence.evaluateWithoutGeneratingNewTokens(tokens);
  out.pp = prompt / (Number(process.hrtime.bigint() - t0) / 1e9);
  await context.dispose();
}
{
  const context = await model.createContext({ contextSize: 256, batchSize: 256, ...threadOptions });
  const sequence = context.getSequence();
  // `n` tokens from a one-token prompt: n decodes (the prompt's and n - 1 more), timed around the loop.
  const run = async (n) => {
    let count = 0;
    const t0 = process.hrtime.bigint();
    for await (const _ of sequence.evaluate([1], { temperature: 0 })) {
      if (++count === n) break;
    }
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    if (count !== n) throw new Error(`got ${count} tokens, not ${n}`);
    return n / seconds;
  };
  await run(2); // warm-up
  await sequence.clearHistory();
  out.tgWall = await run(gen + 1);
  await context.dispose();
}
await model.dispose();
console.log(JSON.stringify(out));
