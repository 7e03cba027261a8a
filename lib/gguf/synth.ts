// Random-weight GGUF models with a real model's exact shape and llama-quantize's per-tensor types, written
// as a stream: for speed and memory measurements, where the values do not change the work done.
import { randomBytes } from 'node:crypto';
import * as v from '../validate.js';
import { GgufValueType, ggmlTypeByName, type GgmlType } from './types.js';
import { writeGguf, writerTensorBytes, type WriterTensor, type WriterValue } from './writer.js';

/** A model's shape: what {@link synth} needs to write a model of that size. */
export interface SynthShape {
  layers: number;
  embeddingSize: number;
  heads: number;
  kvHeads: number;
  /** Feed-forward size of one expert (or of the dense FFN when experts is 0). */
  feedForwardSize: number;
  experts: number;
  expertsUsed: number;
  vocabularySize: number;
  contextLength: number;
  ropeFreqBase: number;
  rmsNormEpsilon: number;
  /** Special tokens added at the end of the vocabulary. */
  specialTokens?: string[];
  name?: string;
}

/** Built-in shapes: `huozi3.5` (Mixtral-8x7B with Huozi's vocabulary) and `tiny` (the test fixture's). */
export const SYNTH_SHAPES: Record<string, SynthShape> = {
  /** Huozi 3.5 / Mixtral-8x7B. */
  'huozi3.5': {
    name: 'huozi3.5-synthetic', layers: 32, embeddingSize: 4096, heads: 32, kvHeads: 8, feedForwardSize: 14336,
    experts: 8, expertsUsed: 2, vocabularySize: 57002, contextLength: 32768, ropeFreqBase: 1e6, rmsNormEpsilon: 1e-5,
    specialTokens: ['<|beginofutterance|>', '<|endofutterance|>'],
  },
  /** huozi-tiny, the test fixture's shape. */
  tiny: {
    name: 'huozi-tiny-synthetic', layers: 4, embeddingSize: 256, heads: 4, kvHeads: 2, feedForwardSize: 192,
    experts: 8, expertsUsed: 2, vocabularySize: 2050, contextLength: 32768, ropeFreqBase: 1e6, rmsNormEpsilon: 1e-5,
    specialTokens: ['<|beginofutterance|>', '<|endofutterance|>'],
  },
};

/** The file types synth writes (per-tensor types as llama-quantize picks them for that file type). */
export type SynthType = 'q4_0' | 'q8_0' | 'q6_k' | 'q2_k' | 'f16';
const FTYPE: Record<SynthType, number> = { f16: 1, q4_0: 2, q8_0: 7, q6_k: 18, q2_k: 10 };

/** Options of {@link synth}. */
export interface SynthOptions {
  /** A name from {@link SYNTH_SHAPES} (`'huozi3.5'`, `'tiny'`) or a shape. Required. */
  shape: keyof typeof SYNTH_SHAPES | SynthShape;
  /** File type. Required. */
  type: SynthType;
  /** Keep only the first N layers (a smaller model with the same per-layer shape). Default: all. */
  layers?: number;
  /** Seed of the random weights (the same seed writes the same file). Default: 42. */
  seed?: number;
  /** Called after each tensor with the bytes of tensor data written and the total. */
  onProgress?: (written: bigint, total: bigint) => void;
  /** Stops writing; nothing is left at the output path. */
  signal?: AbortSignal;
}

export interface TensorPlan {
  name: string;
  dims: number[];
  type: GgmlType;
  role: 'norm' | 'router' | 'weight';
}

/**
 * The tensor types llama-quantize picks for this ftype (src/llama-quant.cpp, llama_tensor_get_type): 1-D
 * tensors and the MoE router stay f32; with 8 experts attn_k and attn_v become q8_0; output becomes q6_K
 * unless the ftype is q8_0.
 */
function typeFor(name: string, dims: number[], type: SynthType, experts: number, gqa: number): GgmlType {
  const t = (n: string) => ggmlTypeByName(n)!;
  if (dims.length === 1 || name.includes('ffn_gate_inp')) return t('f32');
  if (type === 'f16') return t('f16');
  const base = t(type === 'q6_k' ? 'q6_K' : type === 'q2_k' ? 'q2_K' : type);
  let chosen = base;
  if (name === 'output.weight') chosen = type === 'q8_0' ? base : t('q6_K');
  else if (experts === 8 && /attn_[kv]\.weight$/.test(name)) chosen = t('q8_0');
  else if (type === 'q2_k' && /attn_v\.weight$/.test(name)) chosen = t(gqa >= 4 ? 'q4_K' : 'q3_K');
  // Q2_K: ffn_down (experts' too) in q3_K, attn_output in q5_K with 8 experts (else q3_K).
  else if (type === 'q2_k' && /ffn_down/.test(name)) chosen = t('q3_K');
  else if (type === 'q2_k' && /attn_output\.weight$/.test(name)) chosen = t(experts === 8 ? 'q5_K' : 'q3_K');
  // Rows that are not whole blocks fall back as in llama-quant.cpp (convert_incompatible_tensor).
  if (dims[0] % chosen.blockSize !== 0) {
    const fallback: Record<string, string> = { q6_K: 'q8_0', q5_K: 'q5_1', q4_K: 'q5_0', q3_K: 'q4_0', q2_K: 'q4_0' };
    chosen = t(fallback[chosen.name] ?? 'f16');
    if (dims[0] % chosen.blockSize !== 0) chosen = t('f16');
  }
  return chosen;
}

export function synthPlan(shape: SynthShape, type: SynthType): TensorPlan[] {
  const e = shape.embeddingSize;
  const headDim = e / shape.heads;
  const kv = headDim * shape.kvHeads;
  const ff = shape.feedForwardSize;
  const plan: TensorPlan[] = [];
  const add = (name: string, dims: number[], role: TensorPlan['role'] = 'weight') =>
    plan.push({ name, dims, role, type: typeFor(name, dims, type, shape.experts, shape.heads / shape.kvHeads) });
  add('output.weight', [e, shape.vocabularySize]);
  add('token_embd.weight', [e, shape.vocabularySize]);
  for (let i = 0; i < shape.layers; i++) {
    if (shape.experts > 0) {
      add(`blk.${i}.ffn_gate_exps.weight`, [e, ff, shape.experts]);
      add(`blk.${i}.ffn_down_exps.weight`, [ff, e, shape.experts]);
      add(`blk.${i}.ffn_up_exps.weight`, [e, ff, shape.experts]);
      add(`blk.${i}.ffn_gate_inp.weight`, [e, shape.experts], 'router');
    } else {
      add(`blk.${i}.ffn_gate.weight`, [e, ff]);
      add(`blk.${i}.ffn_down.weight`, [ff, e]);
      add(`blk.${i}.ffn_up.weight`, [e, ff]);
    }
    add(`blk.${i}.attn_norm.weight`, [e], 'norm');
    add(`blk.${i}.ffn_norm.weight`, [e], 'norm');
    add(`blk.${i}.attn_k.weight`, [e, kv]);
    add(`blk.${i}.attn_output.weight`, [e, e]);
    add(`blk.${i}.attn_q.weight`, [e, e]);
    add(`blk.${i}.attn_v.weight`, [e, kv]);
  }
  add('output_norm.weight', [e], 'norm');
  return plan;
}

function toHalf(f: number): number {
  const buf = new DataView(new ArrayBuffer(4));
  buf.setFloat32(0, f);
  const x = buf.getUint32(0);
  const sign = (x >>> 16) & 0x8000;
  const exp = ((x >>> 23) & 0xff) - 127 + 15;
  const mant = (x >>> 13) & 0x3ff;
  if (exp <= 0) return sign;
  if (exp >= 31) return sign | 0x7c00;
  return sign | (exp << 10) | mant;
}

/** A deterministic PRNG (mulberry32), so that a seed reproduces a file. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const POOL_BYTES = 1 << 22;

/**
 * A pool of valid random blocks of a type: random quants with small, finite scales (random bytes would put
 * NaN and inf in the f16 scales). Tensors repeat their type's pool.
 */
function blockPool(type: GgmlType, role: TensorPlan['role'], rand: () => number): Buffer {
  const blocks = Math.max(1, Math.floor(POOL_BYTES / type.typeSize));
  const pool = Buffer.alloc(blocks * type.typeSize);
  const gauss = () => (rand() + rand() + rand() - 1.5) * 0.02;
  switch (type.name) {
    case 'f32':
      for (let i = 0; i < pool.length / 4; i++) pool.writeFloatLE(role === 'norm' ? 1 + gauss() : gauss(), i * 4);
      return pool;
    case 'f16':
      for (let i = 0; i < pool.length / 2; i++) pool.writeUInt16LE(toHalf(gauss()), i * 2);
      return pool;
  }
  randomBytes(pool.length).copy(pool);
  for (let b = 0; b < blocks; b++) {
    const at = b * type.typeSize;
    const scale = toHalf(0.0005 + rand() * 0.002);
    // Where each block keeps its f16 scale d (and the K-quants' min scale dmin): ggml-common.h's block layouts.
    const d = { q6_K: type.typeSize - 2, q2_K: 80, q3_K: 108 }[type.name] ?? 0; // q4_0, q8_0, q5_K, q4_K, iq4_nl: d first
    pool.writeUInt16LE(scale, at + d);
    const dmin = { q2_K: 82, q4_K: 2, q5_K: 2 }[type.name];
    if (dmin !== undefined) pool.writeUInt16LE(toHalf(0.0005 + rand() * 0.002), at + dmin);
  }
  return pool;
}

function* repeat(pool: Buffer, bytes: bigint): Generator<Uint8Array> {
  let left = bytes;
  while (left > 0n) {
    const n = left > BigInt(pool.length) ? pool.length : Number(left);
    yield pool.subarray(0, n);
    left -= BigInt(n);
  }
}

function vocabulary(shape: SynthShape): { tokens: string[]; scores: number[]; types: number[] } {
  const special = shape.specialTokens ?? [];
  const tokens = ['<unk>', '<s>', '</s>'];
  const types = [2, 3, 3]; // UNKNOWN, CONTROL, CONTROL
  for (let b = 0; b < 256; b++) {
    tokens.push(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`);
    types.push(6); // BYTE
  }
  const normal = shape.vocabularySize - tokens.length - special.length;
  if (normal < 0) throw new RangeError(`vocabularySize ${shape.vocabularySize} is too small for the byte and special tokens`);
  for (let i = 0; i < normal; i++) {
    tokens.push(`▁t${i}`);
    types.push(1); // NORMAL
  }
  for (const s of special) {
    tokens.push(s);
    types.push(3);
  }
  return { tokens, scores: tokens.map((_, i) => (types[i] === 1 ? -i : 0)), types };
}

/** The metadata and tensor plan of a synthetic model (what `synth` writes, without the data). */
export function synthModel(options: Pick<SynthOptions, 'shape' | 'type' | 'layers'>): {
  shape: SynthShape;
  metadata: Map<string, WriterValue>;
  plan: TensorPlan[];
} {
  const base = typeof options.shape === 'string' ? SYNTH_SHAPES[options.shape] : options.shape;
  if (!base) {
    throw v.rangeError(`one of ${Object.keys(SYNTH_SHAPES).map((s) => `"${s}"`).join(', ')} or a shape object`, 'shape', options.shape);
  }
  const shape = { ...base, layers: options.layers ?? base.layers };
  v.integer('layers', shape.layers, 1, 512);
  if (shape.embeddingSize % shape.heads !== 0 || shape.heads % shape.kvHeads !== 0) {
    throw v.rangeError('heads dividing embeddingSize and kvHeads dividing heads', 'shape', JSON.stringify(shape));
  }
  const type = v.oneOf('type', options.type, ['q4_0', 'q8_0', 'q6_k', 'q2_k', 'f16'] as const);
  const vocab = vocabulary(shape);
  const S = (value: string): WriterValue => ({ type: GgufValueType.STRING, value });
  const U = (value: number): WriterValue => ({ type: GgufValueType.UINT32, value });
  const F = (value: number): WriterValue => ({ type: GgufValueType.FLOAT32, value });
  const metadata = new Map<string, WriterValue>([
    ['general.architecture', S('llama')],
    ['general.type', S('model')],
    ['general.name', S(shape.name ?? 'synthetic')],
    ['llama.block_count', U(shape.layers)],
    ['llama.context_length', U(shape.contextLength)],
    ['llama.embedding_length', U(shape.embeddingSize)],
    ['llama.feed_forward_length', U(shape.feedForwardSize)],
    ['llama.attention.head_count', U(shape.heads)],
    ['llama.attention.head_count_kv', U(shape.kvHeads)],
    ['llama.rope.freq_base', F(shape.ropeFreqBase)],
    ['llama.attention.layer_norm_rms_epsilon', F(shape.rmsNormEpsilon)],
    ...(shape.experts > 0
      ? ([['llama.expert_count', U(shape.experts)], ['llama.expert_used_count', U(shape.expertsUsed)]] as const)
      : []),
    ['general.file_type', U(FTYPE[type])],
    ['llama.vocab_size', U(shape.vocabularySize)],
    ['llama.rope.dimension_count', U(shape.embeddingSize / shape.heads)],
    ['general.quantization_version', U(2)],
    ['tokenizer.ggml.model', S('llama')],
    ['tokenizer.ggml.pre', S('default')],
    ['tokenizer.ggml.tokens', { type: GgufValueType.ARRAY, arrayType: GgufValueType.STRING, value: vocab.tokens }],
    ['tokenizer.ggml.scores', { type: GgufValueType.ARRAY, arrayType: GgufValueType.FLOAT32, value: vocab.scores }],
    ['tokenizer.ggml.token_type', { type: GgufValueType.ARRAY, arrayType: GgufValueType.INT32, value: vocab.types }],
    ['tokenizer.ggml.bos_token_id', U(1)],
    ['tokenizer.ggml.eos_token_id', U(2)],
    ['tokenizer.ggml.add_bos_token', { type: GgufValueType.BOOL, value: true }],
    ['tokenizer.ggml.add_eos_token', { type: GgufValueType.BOOL, value: false }],
  ] as [string, WriterValue][]);
  return { shape, metadata, plan: synthPlan(shape, type) };
}

/**
 * Writes a synthetic model to `output` (through a temporary file, as {@link writeGguf}).
 *
 * @throws {@link OutputPathError} for an output that exists and is not a regular file, or whose directory is
 * missing or not writable: nothing is written.
 */
export async function synth(output: string, options: SynthOptions): Promise<{ bytes: bigint; tensors: number }> {
  v.string('output', output, { allowEmpty: false });
  v.options<SynthOptions>('options', options, ['shape', 'type', 'layers', 'seed', 'onProgress', 'signal']);
  if (options.seed !== undefined) v.integer('seed', options.seed, 0, 2 ** 32 - 1);
  const { metadata, plan } = synthModel(options);
  const rand = prng(options.seed ?? 42);
  const pools = new Map<string, Buffer>();
  const poolFor = (p: TensorPlan) => {
    const key = `${p.type.name}:${p.role}`;
    let pool = pools.get(key);
    if (!pool) pools.set(key, (pool = blockPool(p.type, p.role, rand)));
    return pool;
  };
  const tensors: WriterTensor[] = plan.map((p) => ({
    name: p.name,
    dims: p.dims,
    type: p.type.id,
    data: () => repeat(poolFor(p), writerTensorBytes({ name: p.name, dims: p.dims, type: p.type.id })),
  }));
  let total = 0n;
  await writeGguf(output, metadata, tensors, {
    signal: options.signal,
    onProgress: (written, all) => {
      total = all;
      options.onProgress?.(written, all);
    },
  });
  return { bytes: total, tensors: tensors.length };
}
