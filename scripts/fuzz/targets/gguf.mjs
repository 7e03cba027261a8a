// Fuzz target "gguf": the demo model mutated, seeded, and loaded through the public API (loadModel: our
// reader and validator, then llama.cpp), then a 64-token context, tokenization and two generated tokens.
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { binding } from '../../../dist/binding.js';
import { loadModel } from '../../../dist/index.js';
import { fieldsOf, mutate, semanticMutate } from '../mutate.mjs';
import { classify, clean } from '../outcome.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');

export const title = 'GGUF loading: the demo model mutated, loaded and run';

export const description = `Each case is the demo model (\`models/huozi-tiny-q4_0.gguf\`, or \`--base\`) mutated, seeded. Even
cases break the structure with 1-3 mutations (byte flips, mostly in the header; rewrites of metadata and
tensor-info fields with boundary values; splices; truncations and cuts). Odd cases make one meaningful change to
a well-formed file (a metadata value or its type, a token, a removed or added key, a tensor's type or shape, a
removed tensor). Each is loaded through the public API in a worker process: \`loadModel\` (our TypeScript reader
and validator, then llama.cpp), then a 64-token context, tokenization and two generated tokens. Only three
outcomes are clean: a \`GgufError\` from our reader and validator, llama.cpp's loader refusing the file
(\`ModelLoadError\`), or a model that loads and generates. Any other error (a bug of our own such as a
\`TypeError\`, another error class, or an error creating a context or generating from a model that loaded) is
a failure.`;

/** What the user gets for each clean class. */
export const classes = {
  'rejected: GgufError': '`GgufError` (`ERR_HUOZI_GGUF`, with the byte offset) from `loadModel`, before llama.cpp sees the file',
  'rejected: ModelLoadError': "`ModelLoadError` (`ERR_HUOZI_MODEL_LOAD`): llama.cpp's loader refused the file",
  loaded: 'the model loads, and a context tokenizes and generates',
};

export async function setup(workDir, options = {}) {
  const base = readFileSync(options.base ?? join(root, 'models', 'huozi-tiny-q4_0.gguf'));
  return { base, info: fieldsOf(base), workDir };
}

export function makeCase(state, seed, index) {
  // Half the cases break the structure (bytes, fields, splices); half make one meaningful change.
  const { buf, kinds } = index % 2 === 0 ? mutate(state.base, state.info, seed) : semanticMutate(state.base, seed);
  const path = join(state.workDir, `case-${index % 2}.gguf`);
  writeFileSync(path, buf);
  return { path, kinds };
}

// HUOZI_FUZZ_RAW=1 (fuzz.mjs --raw) skips our TypeScript reader and validator and calls the addon directly:
// what llama.cpp alone does with the same files (for docs/robustness-raw.md; never how the package loads files).
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
    return clean('loaded');
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
    return clean('loaded');
  } catch (error) {
    return classify(error, 'run');
  } finally {
    await model.dispose();
  }
}

export async function runCase(path) {
  return process.env.HUOZI_FUZZ_RAW === '1' ? raw(path) : viaPackage(path);
}
