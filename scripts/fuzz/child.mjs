// A fuzz worker: reads one file path per line on stdin, loads it through the public API (validation, then
// llama.cpp), and if it loads, creates a small context, tokenizes and generates two tokens. Writes one JSON
// line per case: its outcome (scripts/fuzz/outcome.mjs says which errors are clean refusals and which are
// failures). If llama.cpp kills this process, the parent sees which case did it.
import { createInterface } from 'node:readline';
import { binding } from '../../dist/binding.js';
import { loadModel } from '../../dist/index.js';
import { classify } from './outcome.mjs';

// HUOZI_FUZZ_RAW=1 skips our TypeScript reader and validator and calls the addon directly: what llama.cpp
// alone does with the same files (for docs/robustness.md's comparison; never how the package loads files).
async function raw(path) {
  const native = binding();
  let model;
  try {
    model = await native.loadModel(path, {}).promise;
  } catch (error) {
    return classify(error, 'load', { raw: true });
  }
  try {
    const context = await model.createContext({ contextSize: 64, batchSize: 64, threads: 1 });
    const tokens = model.tokenize('请背诵《春晓》 hello', true, false).slice(0, 32);
    await context.generate(tokens, { temperature: 0, maxTokens: 2, stopAtEog: false });
    context.dispose();
    return { result: 'loaded' };
  } catch (error) {
    return classify(error, 'run', { raw: true });
  } finally {
    try { model.dispose(); } catch {}
  }
}

async function viaPackage(path) {
  let model;
  try {
    model = await loadModel(path, { useMmap: true });
  } catch (error) {
    return classify(error, 'load');
  }
  try {
    const context = await model.createContext({ contextSize: 64, batchSize: 64, threads: 1 });
    const tokens = model.tokenize('请背诵《春晓》 hello', { addBos: true });
    await context.generate(tokens.slice(0, 32), { temperature: 0, maxTokens: 2, stopAtEog: false }).result;
    return { result: 'loaded' };
  } catch (error) {
    return classify(error, 'run');
  } finally {
    await model.dispose();
  }
}

const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const path of lines) {
  const outcome = process.env.HUOZI_FUZZ_RAW === '1' ? await raw(path) : await viaPackage(path);
  process.stdout.write(`${JSON.stringify(outcome)}\n`);
}
