// Fuzz target "lora": GGUF LoRA adapters for the demo model, mutated, seeded, through validateLoraForModel (our
// reader, then the adapter checked against the model); where the model has loadLora (the runtime half of #18), the
// adapters the check accepts are loaded into llama.cpp and applied to a generation of two tokens, to find what
// the check lets through that llama.cpp would abort on.
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { convertLora, GgufError, GGML_TYPES, LoraError, loadModel, readGguf, validateLoraForModel } from '../../../dist/index.js';
import { parseGguf } from '../../../dist/gguf/reader.js';
import { encodeWithData, fieldsOf, mutate, prng } from '../mutate.mjs';
import { clean, unexpected } from '../outcome.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');

export const title = 'LoRA adapters: the fixture adapter mutated, checked against the demo model, loaded and applied';

export const description = `Each case is test/fixtures/huozi-tiny-lora converted to a GGUF adapter (f16) for the demo model,
mutated, seeded. Even cases break the structure with 1-3 mutations (byte flips, field rewrites with boundary values,
splices, truncations and cuts). Odd cases make one or two meaningful changes to a well-formed adapter: a tensor's
shape (rank, the model's dimensions, the 3rd dimension n_expert, added or dropped dimensions, zero), type (any ggml
type whose blocks fit), name (another layer such as blk.99, another model tensor such as a norm, the output or the
token embeddings, a wrong or doubled suffix), a dropped tensor, an added token-embedding pair of random shape,
metadata (general.type, general.architecture, adapter.type, adapter.lora.alpha of other types and non-finite
values, aLoRA invocation tokens of other types and out-of-range ids, large arrays). Each goes through
\`readGguf\` and \`validateLoraForModel\` against the demo model in a worker process; when the model has
\`loadLora\`, an adapter the check accepts is loaded with it, applied with scale 1 to a context and two tokens are
generated. Clean outcomes: a \`GgufError\` from the reader, a \`LoraError\` from the check, or an adapter that
the check accepts (and that llama.cpp loads and applies). Any other error, or llama.cpp refusing or aborting on an
adapter the check accepted, is a failure.`;

export const classes = {
  'rejected: GgufError': '`GgufError` (`ERR_HUOZI_GGUF`, with the byte offset): a malformed file, data past its end',
  'rejected: LoraError': '`LoraError` (`ERR_HUOZI_LORA`, with `reason` and the tensor or key) from `validateLoraForModel`, before llama.cpp sees the file',
  accepted: 'the check accepts it (this build has no `model.loadLora` to go further)',
  'loaded, applied, generated': 'the check accepts it; `model.loadLora` loads it and a context generates two tokens with it applied',
  'aLoRA refused at run time': 'the check accepts an activated LoRA (invocation tokens), which `loadLora` refuses with `LoraError`: the runtime does not implement aLoRA',
};

export async function setup(workDir, options = {}) {
  const base = resolve(options.base ?? join(root, 'models', 'huozi-tiny-q4_0.gguf'));
  const adapterPath = join(workDir, 'adapter.gguf');
  await convertLora(join(root, 'test', 'fixtures', 'huozi-tiny-lora'), { base, output: adapterPath, outType: 'f16' });
  writeFileSync(join(workDir, 'base.txt'), base);
  const adapter = readFileSync(adapterPath);
  return { adapter, info: fieldsOf(adapter), workDir, modelTensors: (await readGguf(base)).tensors.map((t) => ({ name: t.name, dims: t.dims })) };
}

const SIZES = [0n, 1n, 2n, 3n, 4n, 7n, 8n, 9n, 16n, 32n, 128n, 192n, 255n, 256n, 257n, 512n, 2050n];
const NAMES = ['blk.99.attn_q.weight', 'blk.4.attn_q.weight', 'blk.0.attn_norm.weight', 'output_norm.weight', 'output.weight', 'token_embd.weight',
  'blk.0.ffn_gate_inp.weight', 'blk.1.ffn_up_exps.weight', 'blk.2.attn_k.weight', 'rope_freqs.weight', 'blk.0.attn_q.weight.lora_a', ''];
const SUFFIXES = ['.lora_a', '.lora_b', '.lora_c', '', '_norm.weight', '.lora_a.lora_b', '.LORA_A'];
const STRINGS = ['adapter', 'model', 'lora', 'llama', 'qwen2', 'control_vector', '', 'lora\0x', 'mixtral'];
const NUMBERS = [0, 1, -1, 8, 16, 0.5, 1e30, -1e30, Number.NaN, Infinity, -Infinity, 2049, 2050, 2 ** 31, 2 ** 32 - 1];
const SCALAR_TYPES = [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12];

function fit(type, v) {
  if (type === 7) return Boolean(v);
  if (type === 8) return String(v);
  if (type === 10 || type === 11) return BigInt(Math.trunc(Number.isFinite(v) ? Math.abs(v) : 1));
  if (type === 6 || type === 12) return v;
  const ranges = { 0: [0, 255], 1: [-128, 127], 2: [0, 65535], 3: [-32768, 32767], 4: [0, 2 ** 32 - 1], 5: [-(2 ** 31), 2 ** 31 - 1] };
  const [lo, hi] = ranges[type] ?? [0, 0];
  return Math.min(hi, Math.max(lo, Math.trunc(Number.isFinite(v) ? v : 0)));
}

/** One or two meaningful changes to the well-formed adapter, re-encoded with our writer. */
function semantic(state, seed) {
  const rand = prng(seed ^ 0x5bd1e995);
  const pick = (xs) => xs[Math.floor(rand() * xs.length)];
  const base = state.adapter;
  const file = parseGguf(base);
  const meta = new Map([...file.metadata].map(([k, e]) => [k, e.type === 9 ? { type: 9, arrayType: e.arrayType, value: [...e.value] } : { type: e.type, value: e.value }]));
  const tensors = file.tensors.map((t) => ({
    name: t.name, dims: [...t.dims], type: t.type,
    bytes: base.subarray(Number(file.dataOffset + t.offset), Number(file.dataOffset + t.offset + t.bytes)),
  }));
  const kinds = [];
  for (let n = rand() < 0.7 ? 1 : 2; n > 0; n--) {
    const r = rand();
    const t = tensors.length ? tensors[Math.floor(rand() * tensors.length)] : undefined;
    if (r < 0.25 && t) {
      const d = Math.floor(rand() * (t.dims.length + 1));
      if (d === t.dims.length && t.dims.length < 4) t.dims.push(pick([2n, 8n, 4n, 1n]));
      else if (rand() < 0.15 && t.dims.length > 1) t.dims.pop();
      else t.dims[Math.min(d, t.dims.length - 1)] = pick(SIZES);
      t.bytes = null;
      kinds.push(`shape of ${t.name}`);
    } else if (r < 0.4 && t) {
      const gt = pick(GGML_TYPES);
      if (Number(t.dims[0]) % gt.blockSize === 0) {
        t.type = gt.id;
        t.bytes = null;
      }
      kinds.push(`type of ${t.name}: ${gt.name}`);
    } else if (r < 0.55 && t) {
      // rename the pair (or one half) onto another target, or break a suffix
      const target = rand() < 0.7 ? pick(NAMES) : pick(state.modelTensors).name;
      const both = rand() < 0.7;
      const old = t.name.replace(/\.lora_[ab]$/, '');
      for (const x of tensors) if (x === t || (both && x.name.replace(/\.lora_[ab]$/, '') === old)) x.name = rand() < 0.85 ? target + x.name.slice(old.length) : target + pick(SUFFIXES);
      kinds.push(`renamed ${old}`);
    } else if (r < 0.62 && t) {
      tensors.splice(tensors.indexOf(t), 1);
      kinds.push('dropped a tensor');
    } else if (r < 0.7) {
      // A token-embedding pair (llama.cpp flips A and B for it) of a random, sometimes right, shape.
      const rank = pick([1n, 4n, 8n]);
      const a = [pick([rank, rank, 8n, 256n]), pick([2050n, 2050n, 256n, 1n])];
      const b = [pick([rank, rank, 4n]), pick([256n, 256n, 2050n])];
      tensors.push({ name: 'token_embd.weight.lora_a', dims: a, type: pick([0, 1, 30]), bytes: null }, { name: 'token_embd.weight.lora_b', dims: b, type: pick([0, 1, 30]), bytes: null });
      kinds.push('token embedding pair');
    } else {
      const key = pick(['general.type', 'general.architecture', 'adapter.type', 'adapter.lora.alpha', 'adapter.lora.alpha', 'adapter.alora_invocation_tokens', 'general.tags']);
      const m = rand();
      if (m < 0.15) meta.delete(key);
      else if (key === 'adapter.alora_invocation_tokens' || key === 'general.tags') {
        const arrayType = pick([4, 4, 4, 5, 8, 10, 0]);
        const length = pick([0, 1, 3, 70000]);
        meta.set(key, { type: 9, arrayType, value: Array.from({ length }, () => fit(arrayType, pick(NUMBERS))) });
      } else if (m < 0.5) {
        const type = pick(SCALAR_TYPES);
        meta.set(key, { type, value: fit(type, key.includes('alpha') ? pick(NUMBERS) : 1) });
      } else {
        meta.set(key, key.includes('alpha') ? { type: 6, value: pick(NUMBERS) } : { type: 8, value: pick(STRINGS) });
      }
      kinds.push(`metadata ${key}`);
    }
  }
  const elements = (t) => t.dims.reduce((a, d) => a * d, 1n);
  if (tensors.some((t) => elements(t) > 1n << 24n)) return { buf: Buffer.from(base), kinds: ['semantic-skipped (too large)'] };
  try {
    // Tensors without bytes: zeros, or small nonzero values for f16 (an adapter of zeros would change nothing).
    const fill = (size, t) => {
      const data = Buffer.alloc(size);
      if (!t.bytes && t.type === 1) for (let j = 0; j + 1 < size; j += 2) data.writeUInt16LE(0x2000 + ((j * 7919) & 0x3ff), j);
      return data;
    };
    return { buf: encodeWithData(meta, tensors, fill), kinds: [`semantic: ${kinds.join('; ')}`] };
  } catch {
    return { buf: Buffer.from(base), kinds: ['semantic-skipped'] };
  }
}

export function makeCase(state, seed, index) {
  const { buf, kinds } = index % 2 === 0 ? mutate(state.adapter, state.info, seed) : semantic(state, seed);
  const path = join(state.workDir, `case-${index % 2}.gguf`);
  writeFileSync(path, buf);
  return { path, kinds };
}

// In the worker: the model's header and, when loadLora exists, the model and one context, kept across cases.
let worker;
async function workerState(dir) {
  if (worker) return worker;
  const basePath = readFileSync(join(dir, 'base.txt'), 'utf8');
  const file = await readGguf(basePath);
  const model = await loadModel(basePath);
  const canLoad = typeof model.loadLora === 'function';
  const context = canLoad ? await model.createContext({ contextSize: 64, batchSize: 64, threads: 1 }) : undefined;
  worker = { file, model, canLoad, context, tokens: model.tokenize('请背诵《春晓》', { addBos: true }) };
  return worker;
}

export async function runCase(path) {
  const w = await workerState(dirname(path));
  let check;
  try {
    const adapter = await readGguf(path);
    check = validateLoraForModel(adapter, w.file, path);
  } catch (error) {
    if (error instanceof GgufError) return clean('rejected: GgufError', error.message);
    if (error instanceof LoraError) return clean('rejected: LoraError', error.message);
    return unexpected(error, 'check');
  }
  if (!w.canLoad) return clean('accepted');
  let lora;
  try {
    lora = await w.model.loadLora(path);
  } catch (error) {
    if (check.invocationTokens?.length && error instanceof LoraError && /activated LoRA/.test(error.message)) return clean('aLoRA refused at run time', error.message);
    return unexpected(error, 'loadLora after the check accepted');
  }
  try {
    await w.context.setLoras([{ adapter: lora, scale: 1 }]);
    await w.context.clear();
    await w.context.generate(w.tokens, { temperature: 0, maxTokens: 2, stopAtEog: false }).result;
    await w.context.setLoras([]);
    return clean('loaded, applied, generated');
  } catch (error) {
    return unexpected(error, 'generate with the adapter');
  } finally {
    await lora.dispose();
  }
}
