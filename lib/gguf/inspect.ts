import { stat } from 'node:fs/promises';
import { resolve } from 'node:path';
import * as v from '../validate.js';
import { LLAMA_FTYPES } from './ftype.js';
import { readGguf, type GgufFile, type GgufValue } from './reader.js';
import { ggmlType } from './types.js';

/** What {@link inspect} reports (and `huozi-gguf inspect --json` prints). `null` where the file does not say. */
export interface GgufInspection {
  path: string;
  fileSize: number;
  version: number;
  alignment: number;
  architecture: string | null;
  name: string | null;
  /** general.file_type as llama-quantize names it (e.g. Q4_0), or null. */
  fileType: string | null;
  shape: {
    layers: number | null;
    embeddingSize: number | null;
    feedForwardSize: number | null;
    expertFeedForwardSize: number | null;
    heads: number | null;
    kvHeads: number | null;
    headSize: number | null;
    experts: number | null;
    expertsUsed: number | null;
    contextLength: number | null;
    ropeFreqBase: number | null;
    ropeDimensions: number | null;
    rmsNormEpsilon: number | null;
  };
  vocabulary: {
    model: string | null;
    size: number | null;
    bos: number | null;
    eos: number | null;
    /** Control tokens by text, e.g. `<|endofutterance|>` → 2049. */
    special: Record<string, number>;
    addBos: boolean | null;
  };
  chatTemplate: { present: boolean; length: number };
  /** Parameters (tensor elements). */
  parameters: number;
  tensorBytes: number;
  bitsPerWeight: number;
  /** Tensors and bytes per ggml type, largest first. */
  quantization: { type: string; tensors: number; parameters: number; bytes: number }[];
  tensors: { name: string; type: string; dims: number[]; bytes: number; offset: number }[];
}

function num(value: GgufValue | undefined): number | null {
  // f32 values (rms eps 1e-5 is stored as 9.99999974738e-06) print as the number they were meant to be.
  if (typeof value === 'number') return Number.isInteger(value) ? value : Number(value.toPrecision(7));
  if (typeof value === 'bigint') return Number(value);
  if (Array.isArray(value) && value.length > 0 && (typeof value[0] === 'number' || typeof value[0] === 'bigint')) {
    return Number(value[0]); // per-layer arrays: the first layer's value
  }
  return null;
}

/**
 * The facts of a GGUF file, read from its header only (no weights are loaded). Throws {@link GgufError} for a
 * malformed file. It does not check what llama.cpp would refuse; {@link loadModel} does.
 */
export async function inspect(path: string): Promise<GgufInspection> {
  v.string('path', path, { allowEmpty: false });
  const full = resolve(path);
  const file = await readGguf(full);
  return describe(full, file, (await stat(full)).size);
}

export function describe(path: string, file: GgufFile, fileSize: number): GgufInspection {
  const meta = (key: string) => file.metadata.get(key)?.value;
  const str = (key: string) => {
    const x = meta(key);
    return typeof x === 'string' ? x : null;
  };
  const arch = str('general.architecture');
  const a = (key: string) => num(meta(`${arch}.${key}`));
  const tokens = meta('tokenizer.ggml.tokens');
  const tokenTypes = meta('tokenizer.ggml.token_type');
  const special: Record<string, number> = {};
  if (Array.isArray(tokens) && Array.isArray(tokenTypes)) {
    tokenTypes.forEach((t, i) => {
      if ((t === 3 || t === 4) && typeof tokens[i] === 'string') special[tokens[i] as string] = i; // CONTROL, USER_DEFINED
    });
  }
  const template = meta('tokenizer.chat_template');
  const heads = a('attention.head_count');
  const embedding = a('embedding_length');
  const byType = new Map<string, { type: string; tensors: number; parameters: number; bytes: number }>();
  let parameters = 0;
  let bytes = 0;
  for (const t of file.tensors) {
    const name = ggmlType(t.type)!.name;
    const row = byType.get(name) ?? { type: name, tensors: 0, parameters: 0, bytes: 0 };
    row.tensors++;
    row.parameters += Number(t.elements);
    row.bytes += Number(t.bytes);
    byType.set(name, row);
    parameters += Number(t.elements);
    bytes += Number(t.bytes);
  }
  const ftype = num(meta('general.file_type'));
  const addBos = meta('tokenizer.ggml.add_bos_token');
  return {
    path,
    fileSize,
    version: file.version,
    alignment: file.alignment,
    architecture: arch,
    name: str('general.name'),
    fileType: ftype === null ? null : (LLAMA_FTYPES.get(ftype) ?? `unknown (${ftype})`),
    shape: {
      layers: a('block_count'),
      embeddingSize: embedding,
      feedForwardSize: a('feed_forward_length'),
      expertFeedForwardSize: a('expert_feed_forward_length'),
      heads,
      kvHeads: a('attention.head_count_kv') ?? heads,
      headSize: a('attention.key_length') ?? (heads && embedding ? embedding / heads : null),
      experts: a('expert_count'),
      expertsUsed: a('expert_used_count'),
      contextLength: a('context_length'),
      ropeFreqBase: a('rope.freq_base'),
      ropeDimensions: a('rope.dimension_count'),
      rmsNormEpsilon: a('attention.layer_norm_rms_epsilon'),
    },
    vocabulary: {
      model: str('tokenizer.ggml.model'),
      size: Array.isArray(tokens) ? tokens.length : null,
      bos: num(meta('tokenizer.ggml.bos_token_id')),
      eos: num(meta('tokenizer.ggml.eos_token_id')),
      special,
      addBos: typeof addBos === 'boolean' ? addBos : null,
    },
    chatTemplate: { present: typeof template === 'string', length: typeof template === 'string' ? template.length : 0 },
    parameters,
    tensorBytes: bytes,
    bitsPerWeight: parameters ? (bytes * 8) / parameters : 0,
    quantization: [...byType.values()].sort((x, y) => y.bytes - x.bytes),
    tensors: file.tensors.map((t) => ({
      name: t.name,
      type: ggmlType(t.type)!.name,
      dims: t.dims.map(Number),
      bytes: Number(t.bytes),
      offset: Number(file.dataOffset + t.offset),
    })),
  };
}
