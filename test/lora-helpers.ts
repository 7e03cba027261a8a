// Helpers of the LoRA tests: PEFT adapter directories changed from the fixture, GGUF adapters rewritten with one
// change, a small dense Llama base of another shape, and reading tensors back.
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GgufValueType, readGguf, writeGguf, type GgufFile, type WriterValue } from '../dist/index.js';
import { root } from './helpers.js';

export const loraDir = join(root, 'test', 'fixtures', 'huozi-tiny-lora');
export const fresh = () => mkdtempSync(join(tmpdir(), 'huozi-lora-'));

export interface StTensor {
  name: string;
  dtype: string;
  shape: number[];
  data: Buffer;
}

/** The tensors of a safetensors file, in file order. */
export function readSafetensors(file: string): StTensor[] {
  const buf = readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  return Object.entries(header)
    .filter(([k]) => k !== '__metadata__')
    .map(([name, m]) => ({ name, dtype: m.dtype, shape: m.shape, data: buf.subarray(8 + n + m.data_offsets[0], 8 + n + m.data_offsets[1]) }))
    .sort((a, b) => a.data.byteOffset - b.data.byteOffset);
}

export function writeSafetensors(file: string, tensors: readonly StTensor[]): void {
  const header: Record<string, unknown> = { __metadata__: { format: 'pt' } };
  let at = 0;
  for (const t of tensors) {
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [at, at + t.data.length] };
    at += t.data.length;
  }
  const json = Buffer.from(JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  writeFileSync(file, Buffer.concat([len, json, ...tensors.map((t) => t.data)]));
}

/** A copy of the fixture adapter with its config changed and its tensors edited. */
export function peftVariant(change: { config?: Record<string, unknown>; tensors?: (ts: StTensor[]) => StTensor[]; bin?: boolean } = {}): string {
  const dir = join(fresh(), 'adapter');
  mkdirSync(dir);
  const config = { ...JSON.parse(readFileSync(join(loraDir, 'adapter_config.json'), 'utf8')), ...change.config };
  writeFileSync(join(dir, 'adapter_config.json'), JSON.stringify(config));
  let tensors = readSafetensors(join(loraDir, 'adapter_model.safetensors'));
  if (change.tensors) tensors = change.tensors(tensors);
  if (change.bin) writeFileSync(join(dir, 'adapter_model.bin'), 'not a pickle');
  else writeSafetensors(join(dir, 'adapter_model.safetensors'), tensors);
  return dir;
}

/** An f32 tensor of the given shape filled from a small LCG. */
export function f32Tensor(name: string, shape: number[], seed = 1, scale = 0.1): StTensor {
  const n = shape.reduce((a, d) => a * d, 1);
  let s = seed >>> 0;
  const values = Float32Array.from({ length: n }, () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32 - 0.5) * scale);
  return { name, dtype: 'F32', shape, data: Buffer.from(values.buffer) };
}

export interface EditableTensor {
  name: string;
  dims: number[];
  type: number;
  data: Buffer;
}

/** A GGUF's metadata (as writer values, in order) and tensors (with their data). */
export async function loadGgufForEdit(path: string): Promise<{ file: GgufFile; metadata: Map<string, WriterValue>; tensors: EditableTensor[] }> {
  const file = await readGguf(path);
  const metadata = new Map<string, WriterValue>();
  for (const [key, e] of file.metadata) {
    metadata.set(key, e.type === GgufValueType.ARRAY
      ? { type: GgufValueType.ARRAY, arrayType: e.arrayType!, value: e.array!.toArray() } as WriterValue
      : { type: e.type, value: e.value } as WriterValue);
  }
  const fh = await open(path, 'r');
  try {
    const tensors: EditableTensor[] = [];
    for (const t of file.tensors) {
      const data = Buffer.alloc(Number(t.bytes));
      await fh.read(data, 0, data.length, Number(file.dataOffset + t.offset));
      tensors.push({ name: t.name, dims: t.dims.map(Number), type: t.type, data });
    }
    return { file, metadata, tensors };
  } finally {
    await fh.close();
  }
}

/** Writes a copy of the GGUF at `path` with its metadata and tensors edited; returns the new path. */
export async function rewriteGguf(
  path: string,
  edit: { metadata?: (m: Map<string, WriterValue>) => void; tensors?: (ts: EditableTensor[]) => EditableTensor[] },
): Promise<string> {
  const { metadata, tensors } = await loadGgufForEdit(path);
  edit.metadata?.(metadata);
  const out = join(fresh(), 'edited.gguf');
  const list = edit.tensors ? edit.tensors(tensors) : tensors;
  await writeGguf(out, metadata, list.map((t) => ({ name: t.name, dims: t.dims, type: t.type, data: () => [t.data] })));
  return out;
}

/** A small dense Llama checkpoint (hidden 64, 2 layers, f32) with huozi-tiny's tokenizer: a base of another shape. */
export function tinyLlamaBase(): string {
  const dir = join(fresh(), 'llama');
  mkdirSync(dir);
  const [hidden, heads, kvHeads, ff, layers, vocab] = [64, 4, 2, 128, 2, 2050];
  const headDim = hidden / heads;
  const tensors: StTensor[] = [f32Tensor('model.embed_tokens.weight', [vocab, hidden]), f32Tensor('model.norm.weight', [hidden])];
  for (let b = 0; b < layers; b++) {
    const p = `model.layers.${b}`;
    tensors.push(f32Tensor(`${p}.input_layernorm.weight`, [hidden]), f32Tensor(`${p}.post_attention_layernorm.weight`, [hidden]),
      f32Tensor(`${p}.self_attn.q_proj.weight`, [heads * headDim, hidden], b + 2), f32Tensor(`${p}.self_attn.k_proj.weight`, [kvHeads * headDim, hidden], b + 3),
      f32Tensor(`${p}.self_attn.v_proj.weight`, [kvHeads * headDim, hidden], b + 4), f32Tensor(`${p}.self_attn.o_proj.weight`, [hidden, heads * headDim], b + 5),
      f32Tensor(`${p}.mlp.gate_proj.weight`, [ff, hidden], b + 6), f32Tensor(`${p}.mlp.up_proj.weight`, [ff, hidden], b + 7),
      f32Tensor(`${p}.mlp.down_proj.weight`, [hidden, ff], b + 8));
  }
  tensors.sort((a, b) => (a.name < b.name ? -1 : 1));
  writeSafetensors(join(dir, 'model.safetensors'), tensors);
  writeFileSync(join(dir, 'config.json'), JSON.stringify({
    architectures: ['LlamaForCausalLM'], model_type: 'llama', hidden_size: hidden, intermediate_size: ff, num_attention_heads: heads,
    num_key_value_heads: kvHeads, num_hidden_layers: layers, vocab_size: vocab, max_position_embeddings: 4096, rms_norm_eps: 1e-6,
    rope_theta: 10000.0, tie_word_embeddings: true, bos_token_id: 1, eos_token_id: 2,
  }));
  const hf = join(root, 'test', 'fixtures', 'huozi-tiny', 'hf');
  for (const f of ['tokenizer.model', 'tokenizer_config.json', 'added_tokens.json', 'special_tokens_map.json']) writeFileSync(join(dir, f), readFileSync(join(hf, f)));
  return dir;
}

/** A rank-4 PEFT adapter on q_proj and v_proj of {@link tinyLlamaBase}'s shape. */
export function tinyLlamaAdapter(): string {
  const dir = join(fresh(), 'adapter');
  mkdirSync(dir);
  writeFileSync(join(dir, 'adapter_config.json'), JSON.stringify({
    peft_type: 'LORA', r: 4, lora_alpha: 8, target_modules: ['q_proj', 'v_proj'], bias: 'none', use_dora: false, use_rslora: false,
    modules_to_save: null, fan_in_fan_out: false, base_model_name_or_path: 'tiny-llama',
  }));
  const tensors: StTensor[] = [];
  for (let b = 0; b < 2; b++) {
    for (const [m, out] of [['q_proj', 64], ['v_proj', 32]] as const) {
      tensors.push(f32Tensor(`base_model.model.model.layers.${b}.self_attn.${m}.lora_A.weight`, [4, 64], 10 + b),
        f32Tensor(`base_model.model.model.layers.${b}.self_attn.${m}.lora_B.weight`, [out, 4], 20 + b));
    }
  }
  writeSafetensors(join(dir, 'adapter_model.safetensors'), tensors.sort((a, b) => (a.name < b.name ? -1 : 1)));
  return dir;
}
