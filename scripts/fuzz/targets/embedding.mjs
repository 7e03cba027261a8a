// Fuzz target "embedding": EmbeddingContext's inputs and options, and the GGUF's pooling_type it reads. Each case is
// a JSON file: options (pooling, normalize, contextSize, batchSize, some of them wrong), inputs (texts of any
// UTF-16, token-id lists with ids out of range, negative, fractional, huge, empty, typed arrays, nested junk), and
// one case in four a demo model whose `llama.pooling_type` is set to any value of any GGUF type (or removed).
import { writeFileSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { demoModelPath, loadModel } from '../../../dist/index.js';
import { prng } from '../mutate.mjs';
import { classify, clean, unexpected } from '../outcome.mjs';
import { withMetadata } from './arrays.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');

export const title = 'embeddings: EmbeddingContext inputs and options, hostile pooling_type';

export const description = `Each case creates an embedding context on the demo model (one case in four on a copy whose
\`llama.pooling_type\` is a random value of a random GGUF type: u32 0-5, 99, 2^32-1, i32 -1, a string, a float, a
bool, or no key) with random options (pooling among the five and invalid names, normalize, contextSize 1-300 and
invalid ones, batchSize below, at and above it), then calls \`embed\` or \`embedWithUsage\` with 0-12 random inputs:
texts (empty, long, lone surrogates, NUL, special-token text), token-id lists (in range, negative, fractional, at and
past the vocabulary, 2^31, empty, longer than contextSize), typed arrays, and values that are no input at all.
Clean outcomes: embeddings of the right count, dimension and length (unit length when normalized), a \`RangeError\` or
\`TypeError\` naming what was wrong, or, for a copy with a hostile pooling_type, the GgufError/ModelLoadError of loading.`;

export const classes = {
  embedded: 'one embedding per input (one row per token with pooling none), each of `dimension` finite values',
  'rejected: RangeError': 'an argument error (`ERR_OUT_OF_RANGE`) naming the option or input',
  'rejected: TypeError': 'an argument error (`ERR_INVALID_ARG_TYPE`) naming the option or input',
  'rejected: GgufError': 'loading the copy: our reader/validator refused the file',
  'rejected: ModelLoadError': "loading the copy: llama.cpp's loader refused it",
};

const u32 = (n) => { const b = Buffer.alloc(4); b.writeUInt32LE(n >>> 0); return b; };
const u64 = (n) => { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(n)); return b; };
const str = (s) => { const b = Buffer.from(s, 'utf8'); return Buffer.concat([u64(b.length), b]); };

export async function setup(workDir) {
  return { workDir, base: readFileSync(demoModelPath) };
}

function poolingEntry(rand) {
  const key = str('llama.pooling_type');
  const r = Math.floor(rand() * 10);
  if (r < 6) return Buffer.concat([key, u32(4), u32([0, 1, 2, 3, 4, 5, 99, 0xffffffff][Math.floor(rand() * 8)])]);
  if (r === 6) { const b = Buffer.alloc(4); b.writeInt32LE(-1); return Buffer.concat([key, u32(5), b]); }
  if (r === 7) return Buffer.concat([key, u32(8), str(['mean', '1', ''][Math.floor(rand() * 3)])]);
  if (r === 8) { const b = Buffer.alloc(4); b.writeFloatLE(1.5); return Buffer.concat([key, u32(6), b]); }
  return Buffer.concat([key, u32(7), Buffer.from([1])]);
}

function randomText(rand) {
  const pick = (a) => a[Math.floor(rand() * a.length)];
  const n = Math.floor(rand() * 40);
  let s = '';
  for (let i = 0; i < n; i++) s += pick(['a', ' ', '中', '床前明月光', '\uD800', '\uDFFF', '\0', '😀', '<|endofutterance|>', '<s>', '\n', 'word ']);
  if (rand() < 0.05) s = 'word '.repeat(400);
  return s;
}

function randomIds(rand) {
  const n = rand() < 0.1 ? 0 : rand() < 0.05 ? 400 : 1 + Math.floor(rand() * 30);
  return Array.from({ length: n }, () => {
    const r = rand();
    if (r < 0.85) return Math.floor(rand() * 2050);
    return [-1, 2050, 2051, 1.5, 2 ** 31, -(2 ** 31), 2 ** 53, 'x', null][Math.floor(rand() * 9)];
  });
}

function randomInput(rand) {
  const r = rand();
  if (r < 0.45) return randomText(rand);
  if (r < 0.85) return randomIds(rand);
  if (r < 0.92) return { typed: 'Int32Array', values: randomIds(rand).map((x) => (typeof x === 'number' ? x : 0)) };
  return [null, 5, true, {}, [[1]]][Math.floor(rand() * 5)];
}

export function makeCase(state, seed, index) {
  const rand = prng(seed);
  const pick = (a) => a[Math.floor(rand() * a.length)];
  let model = null;
  const kinds = [];
  if (rand() < 0.25) {
    model = join(state.workDir, `case-${index}.gguf`);
    const drop = ['llama.pooling_type'];
    const entry = rand() < 0.15 ? [] : [poolingEntry(rand)];
    writeFileSync(model, withMetadata(state.base, entry, drop));
    kinds.push(entry.length ? 'hostile pooling_type' : 'no pooling_type');
  }
  const contextSize = rand() < 0.9 ? 1 + Math.floor(rand() * 300) : pick([0, -1, 1.5, '8', 2 ** 25]);
  const options = {
    pooling: pick([undefined, 'model', 'mean', 'cls', 'last', 'none', 'rank', 'max', 3]),
    normalize: pick([undefined, true, false, 'yes']),
    contextSize,
    batchSize: rand() < 0.6 ? undefined : typeof contextSize === 'number' ? contextSize + pick([-1, 0, 1, 100]) : 16,
    threads: 1,
  };
  if (rand() < 0.03) options.unknownOption = 1;
  const many = rand() < 0.7;
  const inputs = many ? Array.from({ length: Math.floor(rand() * 13) }, () => randomInput(rand)) : randomInput(rand);
  const path = join(state.workDir, `case-${index}.json`);
  writeFileSync(path, JSON.stringify({ model, options, inputs, many, usage: rand() < 0.3 }));
  kinds.push(many ? 'a list of inputs' : 'one input');
  return { path, kinds };
}

const revive = (x) => (x && typeof x === 'object' && !Array.isArray(x) && x.typed === 'Int32Array' ? Int32Array.from(x.values) : x);
let demo;

export async function runCase(path) {
  const c = JSON.parse(readFileSync(path, 'utf8'));
  let model;
  try {
    model = c.model ? await loadModel(c.model) : (demo ??= await loadModel(demoModelPath));
  } catch (error) {
    return classify(error, 'load');
  }
  const options = Object.fromEntries(Object.entries(c.options).filter(([, v]) => v !== undefined));
  let context;
  try {
    context = await model.createEmbeddingContext(options);
    const inputs = c.many ? c.inputs.map(revive) : revive(c.inputs);
    const out = c.usage && c.many ? (await context.embedWithUsage(inputs)).embeddings : await context.embed(inputs);
    const list = c.many ? out : [out];
    const expected = c.many ? inputs.length : 1;
    if (list.length !== expected) return unexpected(new Error(`${list.length} embeddings for ${expected} inputs`), 'run');
    for (const e of list) {
      for (const row of Array.isArray(e) ? e : [e]) {
        if (row.length !== context.dimension || !row.every(Number.isFinite)) return unexpected(new Error('an embedding of the wrong size or not finite'), 'run');
        if (context.normalize && Math.abs(Math.hypot(...row) - 1) > 1e-3 && Math.hypot(...row) !== 0) {
          return unexpected(new Error(`a normalized embedding of length ${Math.hypot(...row)}`), 'run');
        }
      }
    }
    return clean('embedded');
  } catch (error) {
    if (error instanceof RangeError && error.code === 'ERR_OUT_OF_RANGE') return clean('rejected: RangeError', error.message);
    if (error instanceof TypeError && error.code === 'ERR_INVALID_ARG_TYPE') return clean('rejected: TypeError', error.message);
    return unexpected(error, 'run');
  } finally {
    await context?.dispose();
    if (c.model) await model.dispose();
  }
}
