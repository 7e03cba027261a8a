// What llama.cpp's LoRA loader (llama-adapter.cpp, llama_adapter_lora_init_impl) and the graphs that apply an
// adapter (llama-graph.cpp build_lora_mm, build_lora_mm_id, build_inp_embd) would refuse, abort on, or compute
// garbage with, checked in TypeScript on the adapter's and the model's headers (lib/gguf/reader.ts has already
// refused malformed files, tensor data past the end of the file included). Besides what the loader checks
// (general.type, general.architecture, adapter.type, tensor suffixes, pairs, tensors in the model, ne[0]/ne[1]):
// metadata of the wrong GGUF type (gguf_get_val_str/f32 GGML_ASSERT on it), the 3rd dimension (n_expert: a short
// stack makes ggml_mul_mat_id read past it; a 3-D adapter on a matrix fails ggml_can_mul_mat's assert), rank
// agreement of the token-embedding pair (not checked by the loader; ggml_mul_mat asserts), a token-embedding pair on a
// model whose output projection is the embeddings (tied: applied there too, flipped, and ggml_mul_mat asserts), zero sizes, tensor types
// the LoRA matmuls take, non-finite alpha, aLoRA invocation tokens, adapters on weights llama.cpp never adapts
// (norms, biases: loaded and silently unused), and metadata arrays the loader would print in full.
import { LoraError } from '../errors.js';
import type { GgufFile, GgufMetadataEntry, GgufTensorInfo } from './reader.js';
import { readGguf } from './reader.js';
import { ggmlType, GgufValueType } from './types.js';

/** Tensor types llama.cpp's LoRA matmuls (ggml_mul_mat, ggml_mul_mat_id, ggml_get_rows) are checked with here. */
export const LORA_TENSOR_TYPES = ['f32', 'f16', 'bf16'] as const;

/** Most elements all metadata arrays of an adapter may hold together (llama.cpp prints every one while loading). */
export const MAX_ADAPTER_ARRAY_ELEMENTS = 1 << 16;

/** What {@link validateLoraForModel} found in an adapter that fits the model. */
export interface LoraCheck {
  architecture: string;
  /** adapter.lora.alpha; 0 when absent (llama.cpp then scales by the user's scale only, not by alpha / rank). */
  alpha: number;
  /** The model weights adapted, in file order, with each pair's rank. */
  targets: { name: string; rank: number }[];
  /** aLoRA invocation tokens, when the adapter has them. */
  invocationTokens?: number[];
  /** Tensors llama.cpp skips (`*_norm.weight`: mergekit's full norm weights). */
  skipped: string[];
}

/**
 * Checks a GGUF LoRA adapter against the model it is to be applied to, both as {@link readGguf} read them. Throws
 * {@link LoraError} naming the tensor (`tensor`), key (`key`) and `reason` for anything llama.cpp would refuse,
 * abort on or compute garbage with; returns what it found otherwise. `adapterPath` only goes into messages.
 */
export function validateLoraForModel(adapter: GgufFile, model: GgufFile, adapterPath?: string): LoraCheck {
  const file = adapterPath;
  const where = file ? `${file}: ` : '';
  const fail = (message: string, reason: string, d: { tensor?: string; key?: string } = {}): never => {
    throw new LoraError(`${where}${message}`, { reason, file, ...d });
  };
  const m = adapter.metadata;
  let arrayElements = 0;
  for (const e of m.values()) {
    if (e.key.includes('\0')) fail(`the metadata key "${e.key.replace(/\0/g, '\\0')}" contains a NUL byte`, 'metadata', { key: e.key });
    if (e.array) {
      arrayElements += e.array.length;
      if (arrayElements > MAX_ADAPTER_ARRAY_ELEMENTS) {
        fail(`the metadata arrays hold more than ${MAX_ADAPTER_ARRAY_ELEMENTS} elements ("${e.key}"); an adapter needs a few at most`, 'metadata', { key: e.key });
      }
    }
  }
  // gguf_get_val_str / gguf_get_val_f32 GGML_ASSERT the type: a key of another type aborts the process.
  const str = (key: string): string | undefined => {
    const e = m.get(key);
    if (!e) return undefined;
    if (e.type !== GgufValueType.STRING) fail(`${key} must be a string`, 'metadata', { key });
    const value = e.value as string;
    if (value.includes('\0')) fail(`${key} contains a NUL byte`, 'metadata', { key });
    return value;
  };
  const generalType = str('general.type');
  if (generalType !== 'adapter') {
    fail(`general.type is ${generalType === undefined ? 'missing' : `"${generalType}"`}; a LoRA adapter has "adapter" (is this a model, not an adapter?)`, 'metadata', { key: 'general.type' });
  }
  const arch = str('general.architecture');
  const modelArchEntry = model.metadata.get('general.architecture');
  const modelArch = modelArchEntry?.type === GgufValueType.STRING ? String(modelArchEntry.value) : undefined;
  if (arch === undefined || arch !== modelArch) {
    fail(`the adapter is for the architecture "${arch ?? 'none'}", the model is "${modelArch ?? 'unknown'}"`, 'architecture', { key: 'general.architecture' });
  }
  const adapterType = str('adapter.type');
  if (adapterType !== 'lora') {
    fail(`adapter.type is ${adapterType === undefined ? 'missing' : `"${adapterType}"`}; only "lora" adapters are supported`, 'metadata', { key: 'adapter.type' });
  }
  let alpha = 0;
  const alphaEntry = m.get('adapter.lora.alpha');
  if (alphaEntry) {
    if (alphaEntry.type !== GgufValueType.FLOAT32) fail('adapter.lora.alpha must be an f32', 'metadata', { key: 'adapter.lora.alpha' });
    alpha = alphaEntry.value as number;
    if (!Number.isFinite(alpha)) fail(`adapter.lora.alpha is ${alpha}; it must be finite`, 'metadata', { key: 'adapter.lora.alpha' });
  }
  let invocationTokens: number[] | undefined;
  const inv = m.get('adapter.alora_invocation_tokens');
  if (inv) {
    const key = 'adapter.alora_invocation_tokens';
    if (inv.type !== GgufValueType.ARRAY || inv.arrayType !== GgufValueType.UINT32) fail(`${key} must be an array of u32`, 'metadata', { key });
    const vocab = vocabularySize(model);
    invocationTokens = inv.array!.toArray().map(Number);
    const bad = invocationTokens.find((t) => t > 0x7fffffff || (vocab !== undefined && t >= vocab));
    if (bad !== undefined) fail(`${key} holds the token ${bad}, outside the model's ${vocab ?? 'known'} tokens`, 'metadata', { key });
  }

  const modelTensors = new Map<string, GgufTensorInfo>(model.tensors.map((t) => [t.name, t]));
  const pairs = new Map<string, { a?: GgufTensorInfo; b?: GgufTensorInfo }>();
  const skipped: string[] = [];
  for (const t of adapter.tensors) {
    const name = t.name;
    const suffix = name.endsWith('.lora_a') ? 'a' : name.endsWith('.lora_b') ? 'b' : undefined;
    if (!suffix) {
      if (name.endsWith('_norm.weight')) {
        // Skipped by llama.cpp (mergekit's full norm weights); only the model's own norms, which also bounds how many.
        if (!modelTensors.has(name)) fail(`"${name}" is a norm the model does not have`, 'not-in-model', { tensor: name });
        skipped.push(name);
        continue;
      }
      fail(`the tensor "${name}" is neither a .lora_a nor a .lora_b (llama.cpp refuses the file)`, 'name', { tensor: name });
    }
    const target = name.slice(0, -'.lora_a'.length);
    // llama.cpp pairs by replacing every ".lora_a"/".lora_b" in the name: a name holding another would pair wrongly.
    if (target.includes('.lora_a') || target.includes('.lora_b')) fail(`the tensor name "${name}" holds .lora_a/.lora_b twice`, 'name', { tensor: name });
    const pair = pairs.get(target) ?? {};
    pairs.set(target, pair);
    pair[suffix!] = t;
  }
  if (pairs.size === 0) fail('the adapter has no LoRA tensors (it would change nothing)', 'empty');

  const targets: { name: string; rank: number }[] = [];
  for (const [target, { a, b }] of pairs) {
    if (!a || !b) fail(`"${target}" has a lora_${a ? 'a' : 'b'} but no lora_${a ? 'b' : 'a'}`, 'pair', { tensor: `${target}.lora_${a ? 'b' : 'a'}` });
    for (const t of [a!, b!]) {
      const type = ggmlType(t.type)?.name ?? String(t.type);
      if (!(LORA_TENSOR_TYPES as readonly string[]).includes(type)) {
        fail(`"${t.name}" is ${type}; LoRA tensors must be ${LORA_TENSOR_TYPES.join(', ')}`, 'type', { tensor: t.name });
      }
      if (t.dims.some((d) => d === 0n)) fail(`"${t.name}" has a dimension of size 0`, 'shape', { tensor: t.name });
    }
    const w = modelTensors.get(target);
    if (!w) fail(`"${a!.name}" adapts "${target}", which the model does not have (an adapter for another model?)`, 'not-in-model', { tensor: a!.name });
    const ne = (t: GgufTensorInfo) => [0, 1, 2, 3].map((i) => Number(t.dims[i] ?? 1n));
    const [wn, an, bn] = [ne(w!), ne(a!), ne(b!)];
    const shape = (t: GgufTensorInfo) => `[${t.dims.join(', ')}]`;
    const wType = ggmlType(w!.type)?.name;
    if (!target.endsWith('.weight') || w!.dims.length < 2 || wn[1] === 1) {
      fail(`"${target}" is ${shape(w!)} in the model; llama.cpp applies LoRA to weight matrices only (it would load this pair and never use it)`, 'not-in-model', { tensor: a!.name });
    }
    if (wType === 'nvfp4') fail(`"${target}" is nvfp4 in the model; llama.cpp cannot apply LoRA to it`, 'type', { tensor: a!.name });
    let rank: number;
    if (target === 'token_embd.weight') {
      // A model without output.weight uses the embeddings as its output projection (llama.cpp duplicates the tensor
      // under the same name), so the pair would be applied there too, with A and B flipped: ggml_mul_mat asserts.
      if (!modelTensors.has('output.weight')) {
        fail(`"${target}": the model ties its output projection to the token embeddings, where llama.cpp would apply this pair too and abort`, 'unsupported', { tensor: a!.name });
      }
      // build_inp_embd: get_rows(lora_a [r, n_vocab]) then mul_mat(lora_b [r, n_embd]); A and B are flipped.
      if (wn[0] !== bn[1] || wn[1] !== an[1]) {
        fail(`"${target}": lora_a ${shape(a!)} and lora_b ${shape(b!)} do not fit the model's ${shape(w!)}`, 'shape', { tensor: a!.name });
      }
      if (an[0] !== bn[0]) fail(`"${target}": lora_a has rank ${an[0]}, lora_b ${bn[0]}`, 'rank', { tensor: b!.name });
      rank = an[0];
    } else {
      if (wn[0] !== an[0]) fail(`"${a!.name}" is ${shape(a!)}; its first dimension must be the model's ${wn[0]} (${target} is ${shape(w!)})`, 'shape', { tensor: a!.name });
      if (wn[1] !== bn[1]) fail(`"${b!.name}" is ${shape(b!)}; its second dimension must be the model's ${wn[1]} (${target} is ${shape(w!)})`, 'shape', { tensor: b!.name });
      if (an[1] !== bn[0]) fail(`"${target}": lora_a has rank ${an[1]}, lora_b ${bn[0]}`, 'rank', { tensor: b!.name });
      rank = an[1];
    }
    // The 3rd and 4th dimensions, which llama.cpp does not compare: experts must match one for one.
    for (const [t, n] of [[a!, an], [b!, bn]] as const) {
      if (n[2] !== wn[2] || n[3] !== wn[3]) {
        fail(
          wn[2] > 1
            ? `"${t.name}" stacks ${n[2]} experts but the model's "${target}" has ${wn[2]}`
            : `"${t.name}" is ${shape(t)}, ${t.dims.length}-dimensional, but the model's "${target}" is a matrix`,
          'shape', { tensor: t.name },
        );
      }
    }
    targets.push({ name: target, rank });
  }
  return { architecture: arch!, alpha, targets, ...(invocationTokens ? { invocationTokens } : {}), skipped };
}

function vocabularySize(model: GgufFile): number | undefined {
  const tokens: GgufMetadataEntry | undefined = model.metadata.get('tokenizer.ggml.tokens');
  return tokens?.array?.length;
}

/** {@link validateLoraForModel} on two paths: reads both headers (GgufError for a malformed file), then checks. */
export async function validateLoraFile(adapterPath: string, modelPath: string): Promise<LoraCheck> {
  const [adapter, model] = await Promise.all([readGguf(adapterPath), readGguf(modelPath)]);
  return validateLoraForModel(adapter, model, adapterPath);
}
