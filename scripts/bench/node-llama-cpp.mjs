// One measurement of node-llama-cpp (the dev dependency, its own prebuilt CPU binary), in its own process:
// prints {pp, tg} in tokens/s as JSON, measured like scripts/bench/addon.mjs.
import { getLlama, LlamaLogLevel } from 'node-llama-cpp';
import { llamaBenchPrompts } from './prompt-tokens.mjs';

const [modelPath, threadsArg, promptArg, genArg] = process.argv.slice(2);
const threads = Number(threadsArg);
const prompt = Number(promptArg);
const gen = Number(genArg);
const llama = await getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error, maxThreads: threads });
const model = await llama.loadModel({ modelPath });
// llama-bench's own prompt batches, as scripts/bench/addon.mjs.
const vocabularySize = model.fileInfo.metadata?.tokenizer?.ggml?.tokens?.length;
if (!vocabularySize) throw new Error(`${modelPath}: no tokenizer.ggml.tokens in its metadata`);
const promptBatch = llamaBenchPrompts(vocabularySize, model.tokens.shouldPrependBosToken ? model.tokens.bos : null);

const out = {};
{
  const context = await model.createContext({ contextSize: prompt, batchSize: prompt, threads: { ideal: threads, min: threads } });
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
  const context = await model.createContext({ contextSize: 256, batchSize: 256, threads: { ideal: threads, min: threads } });
  const sequence = context.getSequence();
  const run = async (n) => {
    let count = 0;
    let t0;
    for await (const _ of sequence.evaluate([1], { temperature: 0 })) {
      // The first token comes from evaluating the prompt; time the `n` single-token decodes after it.
      if (count === 0) t0 = process.hrtime.bigint();
      if (++count > n) break;
    }
    return n / (Number(process.hrtime.bigint() - t0) / 1e9);
  };
  await run(2);
  await sequence.clearHistory();
  out.tg = await run(gen);
  await context.dispose();
}
await model.dispose();
console.log(JSON.stringify(out));
