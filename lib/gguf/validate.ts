// What llama.cpp does not reject cleanly. The reader (reader.ts) already refuses what gguf.cpp refuses;
// this module refuses the well-formed files that would make llama.cpp abort() (GGML_ASSERT) or crash while
// loading, creating a context or decoding, found by reading the pinned tree (llama-model.cpp load_hparams,
// llama-vocab.cpp load, ggml-cpu kernels) and by fuzzing (docs/robustness.md). Every refusal is a GgufError
// with the byte offset of the offending entry or tensor.
import { GgufError } from '../errors.js';
import type { GgufFile, GgufMetadataEntry, GgufScalar } from './reader.js';
import { GGUF_LIMITS } from './reader.js';
import { GgufValueType, ggmlType } from './types.js';

const MAX_LAYERS = 512; // LLAMA_MAX_LAYERS
const MAX_EXPERTS = 1024; // LLAMA_MAX_EXPERTS

/** Tokenizers whose load path was audited; others bring asserts of their own (rwkv, test, none, ...). */
const TOKENIZERS = new Set(['llama', 'gpt2', 'bert', 't5', 'gemma4']);
const ROPE_SCALING = new Set(['none', 'linear', 'yarn', 'longrope']);
/** ggml types with a CPU matmul kernel: anything else as a weight crashes at the first decode. */
const MATMUL_TYPES = new Set([
  'f32', 'f16', 'bf16', 'q1_0', 'q2_0', 'q4_0', 'q4_1', 'q5_0', 'q5_1', 'q8_0', 'mxfp4', 'nvfp4', 'q2_K', 'q3_K',
  'q4_K', 'q5_K', 'q6_K', 'iq2_xxs', 'iq2_xs', 'iq2_s', 'iq3_xxs', 'iq3_s', 'iq1_s', 'iq1_m', 'iq4_nl', 'iq4_xs',
  'tq1_0', 'tq2_0',
]);
const TOKEN_TYPE_BYTE = 6;
/**
 * Largest vocabulary checked (2^21 tokens; the largest real ones have about 262k). Checking a vocabulary keeps a
 * map of every token's text, and llama.cpp builds its own: a file claiming millions of tokens is refused here
 * instead of costing gigabytes in both.
 */
export const MAX_VOCABULARY = 1 << 21;

function fail(message: string, at: GgufMetadataEntry | { infoOffset: number } | number): never {
  const offset = typeof at === 'number' ? at : 'infoOffset' in at ? at.infoOffset : at.offset;
  throw new GgufError(message, offset);
}

const INTEGER_TYPES = new Set([
  GgufValueType.UINT8, GgufValueType.INT8, GgufValueType.UINT16, GgufValueType.INT16, GgufValueType.UINT32,
  GgufValueType.INT32, GgufValueType.UINT64, GgufValueType.INT64,
]);

/** An integer key, or a per-layer array of integers (as llama.cpp's get_key_or_arr accepts). */
function integers(e: GgufMetadataEntry): number[] {
  if (e.array) {
    if (!INTEGER_TYPES.has(e.arrayType!)) fail(`"${e.key}" must hold integers`, e);
    // Per-layer values: one per layer at most (the layer count is checked against the block count).
    if (e.array.length > MAX_LAYERS) fail(`"${e.key}" has ${e.array.length} values, more than llama.cpp's ${MAX_LAYERS} layers`, e);
    return e.array.toArray().map(Number);
  }
  if (!INTEGER_TYPES.has(e.type)) fail(`"${e.key}" must be an integer`, e);
  return [Number(e.value)];
}

/** A scalar entry's value; an array's is never decoded here (undefined). */
function scalar(e: GgufMetadataEntry): GgufScalar | undefined {
  return e.array ? undefined : (e.value as GgufScalar);
}

/** An entry's value for a message: a scalar, or an array's type and length. */
function shown(e: GgufMetadataEntry): string {
  return e.array ? `an array of ${e.array.length} elements` : String(e.value);
}

/** Checks `file` for what would make llama.cpp abort. Throws GgufError; returns nothing when the file is fine. */
export function validateForLlama(file: GgufFile): void {
  const m = file.metadata;
  for (const e of m.values()) {
    // gguf_find_key compares C strings: "llama.block_count\0x" would shadow the real key.
    if (e.key.includes('\0')) fail(`the metadata key "${e.key.replace(/\0/g, '\\0')}" contains a NUL byte`, e);
  }
  for (const t of file.tensors) {
    // A zero-sized dimension passes gguf.cpp and divides by zero in ggml_can_mul_mat.
    if (t.dims.some((d) => d === 0n)) fail(`"${t.name}" has a dimension of size 0`, t);
  }

  const archEntry = m.get('general.architecture');
  if (!archEntry) fail('general.architecture is missing', 0);
  if (archEntry.type !== GgufValueType.STRING) fail('general.architecture must be a string', archEntry);
  const arch = scalar(archEntry) as string;
  const key = (k: string) => m.get(`${arch}.${k}`);

  const split = m.get('split.count');
  if (split && Number(scalar(split)) > 1) {
    fail(`this is part of a ${shown(split)}-file split GGUF; merge it with llama-gguf-split first`, split);
  }

  // load_hparams (llama-model.cpp)
  const blocks = key('block_count');
  let layers = 0;
  if (blocks) {
    layers = integers(blocks)[0];
    if (blocks.type === GgufValueType.ARRAY || layers < 1 || layers > MAX_LAYERS) {
      fail(`${blocks.key} is ${shown(blocks)}; llama.cpp needs a single value from 1 to ${MAX_LAYERS}`, blocks);
    }
  }
  const perLayer = (e: GgufMetadataEntry) => {
    const xs = integers(e);
    if (e.type === GgufValueType.ARRAY && layers && xs.length !== layers) {
      fail(`"${e.key}" has ${xs.length} values for ${layers} layers`, e);
    }
    return xs;
  };
  const nextn = key('nextn_predict_layers');
  if (nextn && layers && integers(nextn)[0] >= layers) fail(`${nextn.key} must be smaller than the block count`, nextn);

  const expertsEntry = key('expert_count');
  const usedEntry = key('expert_used_count');
  const experts = expertsEntry ? integers(expertsEntry)[0] : 0;
  const used = usedEntry ? Math.max(...perLayer(usedEntry)) : 0;
  if (experts > MAX_EXPERTS) fail(`${expertsEntry!.key} is ${experts}, more than llama.cpp's ${MAX_EXPERTS}`, expertsEntry!);
  if (used > experts) fail(`${usedEntry!.key} (${used}) is larger than the expert count (${experts})`, usedEntry!);
  if (experts > 0 && used < 1) fail(`the model has ${experts} experts but uses none per token`, usedEntry ?? expertsEntry!);
  const groups = key('expert_group_count');
  const groupsUsed = key('expert_group_used_count');
  if (groups || groupsUsed) {
    const g = groups ? integers(groups)[0] : 0;
    const gu = groupsUsed ? integers(groupsUsed)[0] : 0;
    const ok = g === 0 ? experts > 0 && gu === 0 : experts > 0 && g < experts && experts % g === 0 && gu > 0 && gu < g;
    if (!ok) fail(`expert groups (${g}, ${gu} used) do not fit ${experts} experts`, (groups ?? groupsUsed)!);
  }

  const scaling = key('rope.scaling.type');
  if (scaling && !ROPE_SCALING.has(String(scaling.array ? '' : scaling.value))) {
    fail(`${scaling.key} is "${shown(scaling)}"; llama.cpp knows none, linear, yarn and longrope`, scaling);
  }
  const pooling = key('pooling_type');
  if (pooling && (integers(pooling)[0] < 0 || integers(pooling)[0] > 4)) fail(`${pooling.key} is not a known pooling type`, pooling);

  // Attention shapes (context creation and the first decode).
  const embd = key('embedding_length');
  const heads = key('attention.head_count');
  const headsKv = key('attention.head_count_kv');
  const nEmbd = embd ? integers(embd)[0] : 0;
  const nHead = heads ? perLayer(heads) : [];
  const nHeadKv = headsKv ? perLayer(headsKv) : nHead;
  nHead.forEach((h, i) => {
    const kv = nHeadKv[Math.min(i, nHeadKv.length - 1)];
    if (h < 1) fail(`${heads!.key} must be at least 1`, heads!);
    if (kv < 1) fail(`${(headsKv ?? heads)!.key} must be at least 1`, (headsKv ?? heads)!);
    if (h % kv !== 0) fail(`${h} attention heads cannot share ${kv} KV heads evenly`, (headsKv ?? heads)!);
  });
  const keyLength = key('attention.key_length');
  const valueLength = key('attention.value_length');
  if (keyLength && valueLength && integers(keyLength)[0] !== integers(valueLength)[0]) {
    fail(`${keyLength.key} and ${valueLength.key} differ; llama.cpp's graph needs them equal`, valueLength);
  }
  if (nEmbd && nHead.length && !keyLength && nEmbd % Math.max(...nHead) !== 0) {
    fail(`the embedding size ${nEmbd} is not a multiple of the head count ${Math.max(...nHead)}`, heads!);
  }
  const ropeDims = key('rope.dimension_count');
  const nRot = ropeDims ? integers(ropeDims)[0] : keyLength ? integers(keyLength)[0] : nHead.length ? nEmbd / Math.max(...nHead) : 2;
  if (nRot < 2 || nRot % 2 !== 0) fail(`the rotary dimension count ${nRot} must be even`, ropeDims ?? keyLength ?? heads ?? 0);
  // ggml_rms_norm / ggml_norm GGML_ASSERT(eps >= 0.0f) in the CPU kernels (found by scripts/fuzz.mjs).
  for (const k of ['attention.layer_norm_rms_epsilon', 'attention.layer_norm_epsilon']) {
    const e = key(k);
    if (e && !(Number(scalar(e)) >= 0 && Number.isFinite(Number(scalar(e))))) fail(`${e.key} is ${shown(e)}; it must be a finite number >= 0`, e);
  }
  for (const k of ['rope.freq_base', 'rope.scaling.factor', 'rope.scale_linear']) {
    const e = key(k);
    if (e && !Number.isFinite(Number(scalar(e)))) fail(`${e.key} is ${shown(e)}; it must be a finite number`, e);
  }
  const ctx = key('context_length');
  if (ctx && integers(ctx)[0] < 1) fail(`${ctx.key} must be at least 1`, ctx);

  validateVocabulary(file);

  for (const t of file.tensors) {
    const type = ggmlType(t.type)!.name;
    const name = t.name;
    if (/norm\.weight$|\.bias$|rope_freqs\.weight$|rope_factors_(long|short)\.weight$/.test(name)) {
      if (type !== 'f32') fail(`"${name}" is ${type}; llama.cpp's CPU kernels need it in f32`, t);
    } else if (name.endsWith('.weight') && !MATMUL_TYPES.has(type)) {
      fail(`"${name}" is ${type}, which ggml cannot multiply with (it would crash at the first decode)`, t);
    }
  }
}

function validateVocabulary(file: GgufFile): void {
  const m = file.metadata;
  const modelEntry = m.get('tokenizer.ggml.model');
  if (!modelEntry) return; // llama.cpp refuses the file cleanly
  const model = String(modelEntry.array ? `an array of ${modelEntry.array.length} elements` : modelEntry.value);
  if (!TOKENIZERS.has(model)) {
    fail(`tokenizer.ggml.model "${model}" is not supported (known: ${[...TOKENIZERS].join(', ')})`, modelEntry);
  }
  const tokensEntry = m.get('tokenizer.ggml.tokens');
  if (!tokensEntry) return;
  if (tokensEntry.type !== GgufValueType.ARRAY || tokensEntry.arrayType !== GgufValueType.STRING) {
    fail('tokenizer.ggml.tokens must be an array of strings', tokensEntry);
  }
  const tokenArray = tokensEntry.array!;
  const nTokens = tokenArray.length;
  if (nTokens === 0) fail('tokenizer.ggml.tokens is empty', tokensEntry);
  if (nTokens > MAX_VOCABULARY) fail(`tokenizer.ggml.tokens has ${nTokens} tokens, more than the ${MAX_VOCABULARY} checked`, tokensEntry);
  // llama.cpp reads tokens as C strings and renames empty ones "[EMPTY_<i>]": either can make two ids map to
  // one text, which GGML_ASSERT(id_to_token.size() == token_to_id.size()) turns into an abort.
  const seen = new Map<string, number>();
  let i = 0;
  for (const token of tokenArray) {
    const t = token as string;
    if (t.includes('\0')) fail(`token ${i} contains a NUL byte`, tokensEntry);
    const text = t.length === 0 ? `[EMPTY_${i}]` : t;
    const other = seen.get(text);
    if (other !== undefined) fail(`tokens ${other} and ${i} are both "${text}"`, tokensEntry);
    seen.set(text, i);
    i++;
  }
  seen.clear();
  const types = m.get('tokenizer.ggml.token_type');
  if (types) {
    if (types.type !== GgufValueType.ARRAY || types.arrayType !== GgufValueType.INT32) {
      fail('tokenizer.ggml.token_type must be an array of i32', types);
    }
    const values = types.array!;
    if (values.length < nTokens) fail(`tokenizer.ggml.token_type has ${values.length} entries for ${nTokens} tokens`, types);
    for (let i = 0; i < nTokens; i++) {
      if (values.at(i) !== TOKEN_TYPE_BYTE) continue;
      // WPM has no byte tokens: token_to_byte GGML_ABORTs while the piece cache is built.
      if (model === 'bert') fail(`token ${i} is a byte token, which a WordPiece (bert) vocabulary cannot have`, types);
      const text = tokenArray.at(i) as string;
      if (!/^<0x[0-9A-Fa-f]{2}>$/.test(text)) fail(`byte token ${i} is "${text}", not <0xHH>`, types);
    }
  }
  const scores = m.get('tokenizer.ggml.scores');
  if (scores && (!scores.array || scores.array.length < nTokens)) {
    fail(`tokenizer.ggml.scores must be an array with a score for each of the ${nTokens} tokens`, scores);
  }
  if (model === 'gpt2') {
    const merges = m.get('tokenizer.ggml.merges');
    if (!merges || merges.type !== GgufValueType.ARRAY || merges.arrayType !== GgufValueType.STRING) {
      fail('a gpt2 (BPE) vocabulary needs tokenizer.ggml.merges as an array of strings', merges ?? modelEntry);
    }
  }
  // Special ids: with add_bos/add_eos in effect, llama_tokenize GGML_ASSERTs that the token exists.
  const id = (k: string) => {
    const e = m.get(`tokenizer.ggml.${k}`);
    return e ? { e, v: Number(integers(e)[0]) } : undefined;
  };
  for (const k of ['bos_token_id', 'eos_token_id']) {
    const x = id(k);
    if (x && (x.v < 0 || x.v >= nTokens)) fail(`tokenizer.ggml.${k} is ${x.v}, outside the ${nTokens} tokens`, x.e);
  }
  const flag = (k: string, dflt: boolean) => {
    const e = m.get(`tokenizer.ggml.${k}`);
    return e ? scalar(e) === true : dflt;
  };
  const defaultBos = model === 'llama' ? 1 : model === 'bert' ? 101 : model === 'gpt2' ? 11 : -1;
  const bos = id('bos_token_id')?.v ?? defaultBos;
  if (flag('add_bos_token', model === 'llama' || model === 'bert') && (bos < 0 || bos >= nTokens)) {
    fail('the vocabulary adds a BOS token it does not have', m.get('tokenizer.ggml.add_bos_token') ?? tokensEntry);
  }
  const defaultEos = model === 'llama' ? 2 : model === 'gpt2' ? 11 : model === 't5' ? 1 : -1;
  const eos = id('eos_token_id')?.v ?? defaultEos;
  if (flag('add_eos_token', model === 't5') && (eos < 0 || eos >= nTokens)) {
    fail('the vocabulary adds an EOS token it does not have', m.get('tokenizer.ggml.add_eos_token') ?? tokensEntry);
  }
}
