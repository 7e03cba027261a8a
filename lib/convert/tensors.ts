// Which GGUF tensors a checkpoint becomes, in which order and type, as LlamaModel.modify_tensors and
// ModelBase.prepare_tensors decide: names through gguf-py's tensor map for the llama architecture, q_proj and
// k_proj rows permuted (LlamaModel.permute), Mixtral's per-expert w1/w2/w3 stacked into one 3-D tensor each
// (emitted where the layer's last expert tensor is met), norms, biases and the MoE router in f32. Everything
// is planned and checked (names, shapes, completeness) before a byte is written; the data is then produced
// one source tensor, and within it a bounded run of rows, at a time.
import { ConvertError } from './error.js';
import { convertElements, Q8_0_BLOCK_BYTES, SOURCE_DTYPE_BYTES, type OutElement } from './float.js';
import type { PartReader, SafetensorsTensor } from './safetensors.js';

export const GGML_TYPE_ID: Record<OutElement, number> = { f32: 0, f16: 1, bf16: 30, q8_0: 8 };

export interface SourceSlice {
  tensor: SafetensorsTensor;
  /** Permute rows within this many equal groups (heads), as LlamaModel.permute does. */
  permuteHeads?: number;
}

export interface PlannedTensor {
  name: string;
  /** ggml ne (innermost first). */
  dims: number[];
  type: OutElement;
  /** Stacked along the outermost dimension, in order (one, except for merged experts). */
  sources: SourceSlice[];
  bytes: number;
}

export interface ModelShape {
  blocks: number;
  vocab: number;
  hidden: number;
  ff: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  /** 0 for a dense model. */
  experts: number;
  /** The file type: the type of every 2-D weight that may take it. */
  outType: OutElement;
  /** Where shapes come from, for messages. */
  configFile: string;
}

const SKIP_SUFFIXES = ['.attention.masked_bias', '.attention.bias', '.rotary_emb.inv_freq'];

/** gguf-py's tensor map for the llama architecture, the names Llama, Mistral and Mixtral checkpoints use. */
const GLOBAL_NAMES: Record<string, string> = {
  'model.embed_tokens': 'token_embd',
  'lm_head': 'output',
  'model.norm': 'output_norm',
};

const BLOCK_NAMES: Record<string, string> = {
  'input_layernorm': 'attn_norm',
  'post_attention_layernorm': 'ffn_norm',
  'self_attn.q_proj': 'attn_q',
  'self_attn.k_proj': 'attn_k',
  'self_attn.v_proj': 'attn_v',
  'self_attn.o_proj': 'attn_output',
  'mlp.gate_proj': 'ffn_gate',
  'mlp.up_proj': 'ffn_up',
  'mlp.down_proj': 'ffn_down',
  'block_sparse_moe.gate': 'ffn_gate_inp',
};

/** LlamaModel merges experts.E.w1/w2/w3 into layers.N.feed_forward.experts.wK, which maps to these. */
export const EXPERT_NAMES: Record<string, string> = { w1: 'ffn_gate_exps', w2: 'ffn_down_exps', w3: 'ffn_up_exps' };

/** map_tensor_name: the GGUF name, trying the name as it is and then without .weight / .bias. */
export function mapName(name: string): string | undefined {
  for (const suffix of ['', '.weight', '.bias']) {
    if (suffix && !name.endsWith(suffix)) continue;
    const base = suffix ? name.slice(0, -suffix.length) : name;
    if (GLOBAL_NAMES[base]) return GLOBAL_NAMES[base] + suffix;
    const m = /^model\.layers\.(\d+)\.(.+)$/.exec(base);
    if (m && BLOCK_NAMES[m[2]] && String(Number(m[1])) === m[1]) return `blk.${m[1]}.${BLOCK_NAMES[m[2]]}${suffix}`;
  }
  return undefined;
}

/** The block id: the first all-digit part of the name (prepare_tensors). */
export function blockId(name: string): number | undefined {
  const part = name.split('.').find((p) => /^\d+$/.test(p));
  return part === undefined ? undefined : Number(part);
}

function same(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** The PyTorch shape each GGUF tensor (base name, without blk.N.) must have. */
function expectedShape(base: string, suffix: string, s: ModelShape): number[] | undefined {
  const q = s.heads * s.headDim;
  const kv = s.kvHeads * s.headDim;
  const weight: Record<string, number[]> = {
    token_embd: [s.vocab, s.hidden], output: [s.vocab, s.hidden], output_norm: [s.hidden], attn_norm: [s.hidden],
    ffn_norm: [s.hidden], attn_q: [q, s.hidden], attn_k: [kv, s.hidden], attn_v: [kv, s.hidden], attn_output: [s.hidden, q],
    ffn_gate: [s.ff, s.hidden], ffn_up: [s.ff, s.hidden], ffn_down: [s.hidden, s.ff], ffn_gate_inp: [s.experts, s.hidden],
  };
  const shape = weight[base];
  if (!shape) return undefined;
  return suffix === '.bias' ? [shape[0]] : shape;
}

function bytesOf(type: OutElement, dims: readonly number[]): number {
  const elements = dims.reduce((a, d) => a * d, 1);
  switch (type) {
    case 'f32': return elements * 4;
    case 'f16': case 'bf16': return elements * 2;
    case 'q8_0': return (elements / 32) * Q8_0_BLOCK_BYTES;
  }
}

/** prepare_tensors' type rules for the llama architecture. */
function chooseType(name: string, numpyShape: readonly number[], s: ModelShape): OutElement {
  if (numpyShape.length <= 1 || name.endsWith('_norm.weight')) return 'f32';
  if (/^blk\.\d+\.ffn_gate_inp\.weight$/.test(name) || !name.endsWith('.weight')) return 'f32';
  // gguf-py's Q8_0 refuses rows that are not whole blocks; the converter then falls back to f16.
  if (s.outType === 'q8_0' && numpyShape[numpyShape.length - 1] % 32 !== 0) return 'f16';
  return s.outType;
}

function plan(name: string, numpyShape: number[], sources: SourceSlice[], s: ModelShape): PlannedTensor {
  const type = chooseType(name, numpyShape, s);
  const dims = [...numpyShape].reverse();
  return { name, dims, type, sources, bytes: bytesOf(type, dims) };
}

/** Plans every output tensor and checks the checkpoint against config.json; throws ConvertError on any problem. */
export function planTensors(tensors: readonly SafetensorsTensor[], s: ModelShape): PlannedTensor[] {
  const out: PlannedTensor[] = [];
  const fail = (message: string, t?: SafetensorsTensor): never => {
    throw new ConvertError(message, t?.file);
  };
  const experts = new Map<number, Map<string, SafetensorsTensor>>();
  const hfNameOf = new Map<string, string>();

  for (const t of tensors) {
    const name = t.name;
    if (SKIP_SUFFIXES.some((x) => name.endsWith(x))) continue;
    const bid = blockId(name);
    if (bid !== undefined && name.startsWith('model.layers.') && bid >= s.blocks) {
      fail(`"${name}" belongs to layer ${bid}, but ${s.configFile} says num_hidden_layers is ${s.blocks}`, t);
    }

    if (name.includes('block_sparse_moe.experts')) {
      if (s.experts === 0) fail(`"${name}" is a Mixtral expert tensor, but ${s.configFile} has no num_local_experts`, t);
      if (bid === undefined) fail(`cannot tell the layer of "${name}"`, t);
      let layer = experts.get(bid!);
      if (!layer) experts.set(bid!, (layer = new Map()));
      layer.set(name, t);
      if (layer.size < s.experts * 3) continue;
      // All of this layer's experts are in: one stacked tensor per projection, w1 (gate), w2 (down), w3 (up).
      for (const wid of ['w1', 'w2', 'w3'] as const) {
        const sources: SourceSlice[] = [];
        const want = wid === 'w2' ? [s.hidden, s.ff] : [s.ff, s.hidden];
        for (let x = 0; x < s.experts; x++) {
          const ename = `model.layers.${bid}.block_sparse_moe.experts.${x}.${wid}.weight`;
          const et = layer.get(ename);
          if (!et) fail(`the checkpoint lacks "${ename}" (layer ${bid} has ${layer.size} expert tensors; expected experts 0..${s.experts - 1})`, t);
          if (!same(et!.shape, want)) {
            fail(`shape mismatch: "${ename}" is [${et!.shape.join(', ')}] but ${s.configFile} implies [${want.join(', ')}]`, et);
          }
          layer.delete(ename);
          sources.push({ tensor: et! });
        }
        const gguf = `blk.${bid}.${EXPERT_NAMES[wid]}.weight`;
        hfNameOf.set(gguf, `model.layers.${bid}.block_sparse_moe.experts.*.${wid}.weight`);
        out.push(plan(gguf, [s.experts, ...want], sources, s));
      }
      continue;
    }

    const gguf = mapName(name);
    if (!gguf) {
      const hint = /\.mlp\.experts\.(gate_up_proj|down_proj)/.test(name)
        ? ' (fused expert tensors as transformers 5 saves them; the pinned llama.cpp converter reads the per-expert w1/w2/w3 layout)'
        : '';
      fail(`cannot map the tensor "${name}" to a llama.cpp tensor${hint}`, t);
    }
    const m = /^(?:blk\.\d+\.)?([a-z_]+)(\.weight|\.bias)$/.exec(gguf!)!;
    const want = expectedShape(m[1], m[2], s);
    if (want && !same(t.shape, want)) {
      fail(`shape mismatch: "${name}" is [${t.shape.join(', ')}] but ${s.configFile} implies [${want.join(', ')}]`, t);
    }
    let permuteHeads: number | undefined;
    if (/\.q_proj\.(weight|bias)$/.test(name)) permuteHeads = s.heads;
    else if (/\.k_proj\.(weight|bias)$/.test(name)) permuteHeads = s.kvHeads;
    if (permuteHeads !== undefined && (t.shape[0] % (permuteHeads * 2) !== 0)) {
      fail(`shape mismatch: "${name}" has ${t.shape[0]} rows, which do not split into ${permuteHeads} heads of an even size`, t);
    }
    if (hfNameOf.has(gguf!)) fail(`"${name}" and "${hfNameOf.get(gguf!)}" both map to ${gguf}`, t);
    hfNameOf.set(gguf!, name);
    out.push(plan(gguf!, [...t.shape], [{ tensor: t, permuteHeads }], s));
  }

  const left = [...experts.values()].flatMap((layer) => [...layer.keys()]);
  if (left.length) fail(`unprocessed expert tensors (a layer lacks some of its ${s.experts * 3}): ${left.slice(0, 4).join(', ')}${left.length > 4 ? ', ...' : ''}`);

  // Every layer needs all of its tensors, or llama.cpp refuses the file (the Python converter writes it anyway).
  const need = ['token_embd.weight', 'output_norm.weight'];
  const layerNeeds = ['attn_norm', 'ffn_norm', 'attn_q', 'attn_k', 'attn_v', 'attn_output',
    ...(s.experts > 0 ? ['ffn_gate_inp', 'ffn_gate_exps', 'ffn_down_exps', 'ffn_up_exps'] : ['ffn_gate', 'ffn_up', 'ffn_down'])];
  for (let b = 0; b < s.blocks; b++) for (const n of layerNeeds) need.push(`blk.${b}.${n}.weight`);
  const missing = need.filter((n) => !hfNameOf.has(n));
  if (missing.length) {
    fail(`the checkpoint lacks ${missing.length} tensor${missing.length > 1 ? 's' : ''} a ${s.blocks}-layer model needs: ` +
      `${missing.slice(0, 4).join(', ')}${missing.length > 4 ? ', ...' : ''}`);
  }
  return out;
}

/** Input bytes read per step: bounded, so memory does not grow with the tensor. */
const CHUNK_BYTES = 16 * 2 ** 20;

/** LlamaModel.permute on whole heads of rows: row (h, j, i) moves to (h, i, j), with j in {0, 1}. */
export function permuteRows(src: Buffer, rowBytes: number, rowsPerHead: number): Buffer {
  const out = Buffer.allocUnsafeSlow(src.length);
  const half = rowsPerHead / 2;
  const heads = src.length / rowBytes / rowsPerHead;
  for (let h = 0; h < heads; h++) {
    const base = h * rowsPerHead;
    for (let i = 0; i < half; i++) {
      for (let j = 0; j < 2; j++) {
        const from = (base + j * half + i) * rowBytes;
        src.copy(out, (base + i * 2 + j) * rowBytes, from, from + rowBytes);
      }
    }
  }
  return out;
}

interface Chunk {
  tensor: SafetensorsTensor;
  offset: number;
  bytes: number;
  rowBytes: number;
  /** Rows per head when the rows are permuted. */
  group?: number;
}

/** The runs of whole rows (whole heads, when permuted) the tensor is read in, each at most about CHUNK_BYTES. */
function chunksOf(t: PlannedTensor): Chunk[] {
  const chunks: Chunk[] = [];
  for (const { tensor, permuteHeads } of t.sources) {
    const shape = tensor.shape;
    const elementBytes = SOURCE_DTYPE_BYTES[tensor.dtype];
    // Rows are the unit of conversion (q8_0 blocks never cross one); a permuted 1-D bias has one-element rows.
    const cols = permuteHeads !== undefined && shape.length === 1 ? 1 : shape[shape.length - 1] ?? 1;
    const rowBytes = cols * elementBytes;
    if (tensor.bytes === 0 || rowBytes === 0) continue;
    const rows = tensor.bytes / rowBytes;
    const group = permuteHeads !== undefined ? rows / permuteHeads : 1;
    const step = Math.max(1, Math.floor(CHUNK_BYTES / rowBytes / group)) * group;
    for (let row = 0; row < rows; row += step) {
      chunks.push({
        tensor, offset: tensor.offset + row * rowBytes, bytes: Math.min(step, rows - row) * rowBytes, rowBytes,
        group: permuteHeads !== undefined ? group : undefined,
      });
    }
  }
  return chunks;
}

/**
 * The tensor's data as the GGUF holds it, a bounded run of rows at a time. The next run is read while this one
 * is converted and written (reads and writes run on libuv's threads), so at most two runs are in memory.
 */
export async function* tensorData(
  t: PlannedTensor,
  reader: PartReader,
  check: () => void,
): AsyncGenerator<Uint8Array> {
  const chunks = chunksOf(t);
  const read = (c: Chunk) => {
    const p = reader.read(c.tensor.file, c.offset, c.bytes);
    p.catch(() => undefined); // a read still in flight when the conversion stops must not be an unhandled rejection
    return p;
  };
  let next = chunks.length ? read(chunks[0]) : undefined;
  for (let i = 0; i < chunks.length; i++) {
    check();
    const c = chunks[i];
    let raw = await next!;
    next = i + 1 < chunks.length ? read(chunks[i + 1]) : undefined;
    if (c.group !== undefined) raw = permuteRows(raw, c.rowBytes, c.group);
    yield convertElements(raw, c.tensor.dtype, t.type);
  }
}
