// A fuzz worker: reads one file path per line on stdin, loads it through the public API (validation, then
// llama.cpp), and if it loads, creates a small context, tokenizes and generates two tokens. Writes one JSON
// line per case. If llama.cpp kills this process, the parent sees which case did it.
import { createInterface } from 'node:readline';
import { binding } from '../../dist/binding.js';
import { loadModel } from '../../dist/index.js';

// HUOZI_FUZZ_RAW=1 skips our TypeScript reader and validator and calls the addon directly: what llama.cpp
// alone does with the same files (for docs/robustness.md's comparison; never how the package loads files).
async function raw(path) {
  const native = binding();
  let model;
  try {
    model = await native.loadModel(path, {}).promise;
  } catch (error) {
    return { result: 'rejected-by-llama', code: error.code, message: String(error.message).slice(0, 200) };
  }
  try {
    const context = await model.createContext({ contextSize: 64, batchSize: 64, threads: 1 });
    const tokens = model.tokenize('请背诵《春晓》 hello', true, false).slice(0, 32);
    await context.generate(tokens, { temperature: 0, maxTokens: 2, stopAtEog: false });
    context.dispose();
    return { result: 'loaded' };
  } catch (error) {
    return { result: 'rejected-by-llama', code: error.code, message: String(error.message).slice(0, 200), stage: 'run' };
  } finally {
    try { model.dispose(); } catch {}
  }
}

const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const path of lines) {
  if (process.env.HUOZI_FUZZ_RAW === '1') {
    process.stdout.write(`${JSON.stringify(await raw(path))}\n`);
    continue;
  }
  let outcome;
  try {
    const model = await loadModel(path, { useMmap: true });
    try {
      const context = await model.createContext({ contextSize: 64, batchSize: 64, threads: 1 });
      const tokens = model.tokenize('请背诵《春晓》 hello', { addBos: true });
      await context.generate(tokens.slice(0, 32), { temperature: 0, maxTokens: 2, stopAtEog: false }).result;
      outcome = { result: 'loaded' };
    } catch (error) {
      outcome = { result: 'rejected-by-llama', code: error.code, message: String(error.message).slice(0, 200), stage: 'run' };
    } finally {
      await model.dispose();
    }
  } catch (error) {
    const byUs = error.code === 'ERR_HUOZI_GGUF' || error.code === 'ERR_INVALID_ARG_TYPE' || error.code === 'ERR_OUT_OF_RANGE';
    outcome = { result: byUs ? 'rejected-by-us' : 'rejected-by-llama', code: error.code, message: String(error.message).slice(0, 200) };
  }
  process.stdout.write(`${JSON.stringify(outcome)}\n`);
}
