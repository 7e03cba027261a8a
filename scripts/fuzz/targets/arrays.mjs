// Fuzz target "arrays": metadata arrays of boundary element counts and types added to (or replacing an array
// of) the demo model: every element type (u8 ... f64, bool, strings), nested arrays, counts that the file
// cannot hold, and huge but truthful arrays (files up to ~64 MiB). Each file goes through inspect() and then
// loadModel() (then a context and two generated tokens when it loads).
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { inspect, loadModel, parseGguf } from '../../../dist/index.js';
import { prng } from '../mutate.mjs';
import { classify, clean } from '../outcome.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');

const u32 = (n) => { const b = Buffer.alloc(4); b.writeUInt32LE(n >>> 0); return b; };
const u64 = (n) => { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt.asUintN(64, BigInt(n))); return b; };
const str = (s) => { const b = Buffer.from(s, 'utf8'); return Buffer.concat([u64(b.length), b]); };

/** Bytes of one element of each fixed-size GGUF type. */
const SIZE = { 0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8 };

/**
 * The header of a metadata entry `key` holding an array of `count` elements of `type` (GGUF value type ids),
 * without its elements: the caller appends `body` bytes (which may hold fewer elements than claimed).
 */
export function arrayEntryHead(key, type, count) {
  return Buffer.concat([str(key), u32(9), u32(type), u64(count)]);
}

/**
 * `base` (a GGUF file) with `entries` (encoded metadata entries: Buffers, or { head, bodyBytes, fill } for a
 * large body of `bodyBytes` bytes of the byte `fill`) added after its metadata, and `drop` (keys) removed.
 * The tensor data is moved to stay aligned.
 */
export function withMetadata(base, entries, drop = []) {
  const file = parseGguf(base);
  const metas = [...file.metadata.values()];
  const kvStart = 24;
  const tensorsStart = file.tensors.length ? file.tensors[0].infoOffset : Number(file.dataOffset);
  const last = file.tensors.at(-1);
  const tensorsEnd = last ? last.infoOffset + 8 + Buffer.byteLength(last.name) + 4 + 8 * last.dims.length + 4 + 8 : tensorsStart;
  const kept = [];
  metas.forEach((e, i) => {
    if (drop.includes(e.key)) return;
    const end = i + 1 < metas.length ? metas[i + 1].offset : tensorsStart;
    kept.push(base.subarray(e.offset, end));
  });
  const parts = [base.subarray(0, 8), u64(file.tensors.length), u64(kept.length + entries.length), ...kept];
  for (const e of entries) {
    if (Buffer.isBuffer(e)) parts.push(e);
    else parts.push(e.head, Buffer.alloc(e.bodyBytes, e.fill ?? 0));
  }
  parts.push(base.subarray(tensorsStart, tensorsEnd));
  const headerLength = parts.reduce((n, p) => n + p.length, 0);
  const pad = (file.alignment - (headerLength % file.alignment)) % file.alignment;
  parts.push(Buffer.alloc(pad), base.subarray(Number(file.dataOffset)));
  return Buffer.concat(parts);
}

export const title = 'metadata arrays: boundary counts and types, counts beyond the file, huge truthful arrays';

export const description = `Each case is the demo model with one to three metadata arrays added (or one of its vocabulary
arrays replaced), seeded: every element type (u8 to f64, bool, strings, nested arrays and unknown types),
element counts at the boundaries (0, 1, 2^8, 2^16, 2^26 - 1, 2^26, 2^32, 2^62, 2^64 - 1), counts the file cannot
hold, strings with lengths beyond the file, and one case in 100 a huge but truthful array (up to 2^26 u8
elements or about 2^22 strings, at the reader's limit: files up to ~64 MiB). Each file goes through \`inspect()\` and then \`loadModel()\`
(then a context and two generated tokens when it loads). Clean outcomes: \`GgufError\` from \`inspect\` (the
same file is then refused by \`loadModel\` too) or from \`loadModel\`'s validation, llama.cpp's \`ModelLoadError\`,
or a model that loads and generates.`;

export const classes = {
  'rejected: GgufError': '`GgufError` (`ERR_HUOZI_GGUF`, with the byte offset) from `inspect` and from `loadModel`',
  'inspected, rejected: GgufError': "`inspect` describes the file; `loadModel`'s validation refuses it with `GgufError` (what llama.cpp would abort on)",
  'inspected, rejected: ModelLoadError': "`inspect` describes the file; llama.cpp's loader refuses it (`ModelLoadError`)",
  'inspected, loaded': '`inspect` describes the file; the model loads, and a context tokenizes and generates',
};

export async function setup(workDir, options = {}) {
  const base = readFileSync(options.base ?? join(root, 'models', 'huozi-tiny-q4_0.gguf'));
  return { base, workDir };
}

const COUNTS = [0n, 1n, 2n, 255n, 256n, 65535n, 65536n, (1n << 26n) - 1n, 1n << 26n, (1n << 26n) + 1n, 1n << 32n, 1n << 62n, (1n << 64n) - 1n];
const TYPES = [0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 12, 8];
const VOCAB = ['tokenizer.ggml.tokens', 'tokenizer.ggml.scores', 'tokenizer.ggml.token_type', 'tokenizer.ggml.merges'];
const KEYS = ['fuzz.array', 'general.tags', 'llama.block_count', 'llama.attention.head_count', 'tokenizer.ggml.added_tokens', ...VOCAB];

export function makeCase(state, seed, index) {
  const rand = prng(seed ^ 0x5bd1e995);
  const pick = (n) => Math.floor(rand() * n);
  const entries = [];
  const drop = [];
  const kinds = [];
  // A huge case costs seconds (a 64-72 MiB file written, inspected and parsed by llama.cpp): one in a hundred.
  const huge = index % 100 === 99;
  const n = huge ? 1 + pick(3) : 1 + pick(3);
  const used = new Set();
  for (let i = 0; i < n; i++) {
    let key = KEYS[pick(KEYS.length)];
    if (key === 'fuzz.array' || used.has(key)) key = `fuzz.array.${i}`;
    used.add(key);
    if (state.base.includes(Buffer.from(key)) && !key.startsWith('fuzz.')) drop.push(key);
    const r = rand();
    const type = r < 0.04 ? 9 : r < 0.07 ? 13 + pick(1000) : TYPES[pick(TYPES.length)];
    if (huge) {
      // A truthful array as large as the reader's limit allows (u8: 2^26 elements, 64 MiB; strings: about 2^22
      // empty or one-byte strings), or just under.
      if (type === 8 || type === 9 || type > 12) {
        // At the reader's limit on metadata strings (GGUF_LIMITS.maxMetadataStrings, with the vocabulary's own
        // strings dropped or counted: one over is refused), or one over it.
        const count = (1 << 22) - 4096 + pick(2) * 8192;
        const oneByte = rand() < 0.5;
        const body = Buffer.alloc(count * (oneByte ? 9 : 8));
        if (oneByte) for (let j = 0; j < count; j++) body[j * 9] = 1, body[j * 9 + 8] = 0x61 + (j % 26);
        entries.push(Buffer.concat([arrayEntryHead(key, 8, count), body]));
        kinds.push(`huge ${count} strings${oneByte ? ' of one byte' : ' (empty)'} as ${key}`);
      } else {
        const count = Math.floor((1 << 26) / (n * SIZE[type])) - pick(2);
        entries.push({ head: arrayEntryHead(key, type, count), bodyBytes: count * SIZE[type], fill: pick(256) });
        kinds.push(`huge ${count} × type ${type} as ${key}`);
      }
      continue;
    }
    let count = COUNTS[pick(COUNTS.length)];
    const truthful = rand() < 0.6 && count <= 1n << 16n;
    const elemSize = SIZE[type] ?? 8;
    let body;
    if (type === 9) {
      // Nested: an array of arrays of u8.
      body = Buffer.concat(Array.from({ length: Number(count > 4n ? 4n : count) }, () => Buffer.concat([u32(0), u64(1), Buffer.from([7])])));
    } else if (type === 8) {
      const strings = [];
      const m = Number(count > 1024n ? 1024n : count);
      for (let j = 0; j < m; j++) {
        const s = rand();
        if (s < 0.05) strings.push(Buffer.concat([u64(COUNTS[pick(COUNTS.length)]), Buffer.from('xy')]));
        else strings.push(str(s < 0.1 ? '' : s < 0.15 ? 'a\0b' : `t${j % 50}`));
      }
      body = Buffer.concat(strings);
      if (truthful && count > 1024n) count = BigInt(m);
    } else {
      const claimed = truthful ? Number(count) : Math.min(Number(count > 4096n ? 4096n : count), 4096);
      body = Buffer.alloc(claimed * elemSize);
      for (let j = 0; j < body.length; j++) body[j] = rand() < 0.5 ? 0 : pick(256);
      if (type === 7) for (let j = 0; j < body.length; j++) body[j] = rand() < 0.98 ? body[j] & 1 : 2;
      if (rand() < 0.3 && body.length > 0) body = body.subarray(0, pick(body.length));
    }
    entries.push(Buffer.concat([arrayEntryHead(key, type, count), body]));
    kinds.push(`${key}: type ${type} × ${count}${truthful ? '' : ' (claimed)'}`);
  }
  const buf = withMetadata(state.base, entries, drop);
  const path = join(state.workDir, `case-${index % 2}.gguf`);
  writeFileSync(path, buf);
  return { path, kinds };
}

export async function runCase(path) {
  let inspected = false;
  try {
    const info = await inspect(path);
    if (typeof info.fileSize !== 'number' || !Array.isArray(info.tensors)) throw new TypeError('inspect returned no description');
    JSON.stringify(info); // what `inspect --json` prints
    inspected = true;
  } catch (error) {
    const outcome = classify(error, 'load');
    if (outcome.result !== 'clean') return outcome;
    // A file inspect refuses must be refused by loadModel too.
    try {
      const model = await loadModel(path);
      await model.dispose();
      return { result: 'unexpected', stage: 'load', message: `inspect refused the file (${error.message}) but loadModel loaded it` };
    } catch (second) {
      const again = classify(second, 'load');
      return again.result === 'clean' && again.class === outcome.class ? clean(outcome.class, outcome.message) : again;
    }
  }
  let model;
  try {
    model = await loadModel(path);
  } catch (error) {
    const outcome = classify(error, 'load');
    return outcome.result === 'clean' ? clean(`inspected, ${outcome.class}`, outcome.message) : outcome;
  }
  try {
    const context = await model.createContext({ contextSize: 64, batchSize: 64, threads: 1 });
    const tokens = model.tokenize('请背诵《春晓》 hello', { addBos: true });
    await context.generate(tokens.slice(0, 32), { temperature: 0, maxTokens: 2, stopAtEog: false }).result;
    return clean(inspected ? 'inspected, loaded' : 'loaded');
  } catch (error) {
    return classify(error, 'run');
  } finally {
    await model.dispose();
  }
}
