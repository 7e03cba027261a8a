import { resolve } from 'node:path';
import * as v from '../validate.js';
import { probeTemplateSource, type ChatTemplateProbe } from '../chat/detect.js';
import { LLAMA_FTYPES } from './ftype.js';
import { readGguf, type GgufFile, type GgufMetadataEntry } from './reader.js';
import { ggmlType, GGUF_VALUE_TYPE_NAMES, GgufValueType } from './types.js';

/** Most special tokens {@link GgufInspection} lists by text (`vocabulary.specialCount` counts them all). */
export const INSPECT_MAX_SPECIAL = 10_000;

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
    /**
     * Control and user-defined tokens by text, e.g. `<|endofutterance|>` → 2049: the first
     * {@link INSPECT_MAX_SPECIAL} (10,000) of them; `specialCount` counts them all.
     */
    special: Record<string, number>;
    /** How many control and user-defined tokens the vocabulary has. */
    specialCount: number;
    addBos: boolean | null;
  };
  chatTemplate: {
    present: boolean;
    length: number;
    /**
     * What rendering a probe conversation with it did (see `checkChatTemplate`), when the file has a template and
     * the check was not turned off: `ok` with `systemRole` (whether it takes a system message), or the failure.
     */
    check?: ChatTemplateProbe;
  };
  /** Every metadata array, summarized (key, element type, element count): the elements are not decoded. */
  arrays: { key: string; type: string; length: number }[];
  /** Parameters (tensor elements). */
  parameters: number;
  tensorBytes: number;
  bitsPerWeight: number;
  /** Tensors and bytes per ggml type, largest first. */
  quantization: { type: string; tensors: number; parameters: number; bytes: number }[];
  tensors: { name: string; type: string; dims: number[]; bytes: number; offset: number }[];
}

function num(entry: GgufMetadataEntry | undefined): number | null {
  // Per-layer arrays: the first layer's value (the only element decoded).
  const value = entry?.array ? (entry.array.length > 0 ? entry.array.at(0) : undefined) : entry?.value;
  // f32 values (rms eps 1e-5 is stored as 9.99999974738e-06) print as the number they were meant to be.
  if (typeof value === 'number') return Number.isInteger(value) ? value : Number(value.toPrecision(7));
  if (typeof value === 'bigint') return Number(value);
  return null;
}

/** Options of {@link inspect}. */
export interface InspectOptions {
  /**
   * Render a probe conversation with the file's `tokenizer.chat_template` (in the template renderer process, under
   * the default limits) and report the outcome as `chatTemplate.check`. Default: `true`.
   */
  checkChatTemplate?: boolean;
}

/**
 * The facts of a GGUF file, read from its header only (no weights are loaded). Throws {@link GgufError} for a
 * malformed file. It does not check what llama.cpp would refuse; {@link loadModel} does.
 */
export async function inspect(path: string, options?: InspectOptions): Promise<GgufInspection> {
  v.string('path', path, { allowEmpty: false });
  const o = v.options<InspectOptions>('options', options, ['checkChatTemplate']);
  const checkTemplate = o.checkChatTemplate === undefined ? true : v.boolean('checkChatTemplate', o.checkChatTemplate);
  const full = resolve(path);
  const file = await readGguf(full);
  const info = describe(full, file, Number(file.fileSize));
  const template = file.metadata.get('tokenizer.chat_template')?.value;
  if (checkTemplate && typeof template === 'string') {
    const text = (id: number | null) => Object.entries(info.vocabulary.special).find(([, i]) => i === id)?.[0] ?? '';
    info.chatTemplate.check = await probeTemplateSource(template, {
      label: `tokenizer.chat_template of ${full}`,
      variables: { bos_token: text(info.vocabulary.bos), eos_token: text(info.vocabulary.eos) },
    });
  }
  return info;
}

export function describe(path: string, file: GgufFile, fileSize: number): GgufInspection {
  // Only scalars and the elements used below are decoded: a metadata array is read element by element.
  const entry = (key: string) => file.metadata.get(key);
  const meta = (key: string) => {
    const e = entry(key);
    return e && !e.array ? e.value : undefined;
  };
  const str = (key: string) => {
    const x = meta(key);
    return typeof x === 'string' ? x : null;
  };
  const arch = str('general.architecture');
  const a = (key: string) => num(entry(`${arch}.${key}`));
  const tokens = entry('tokenizer.ggml.tokens')?.array;
  const tokenTypes = entry('tokenizer.ggml.token_type')?.array;
  const special: Record<string, number> = {};
  let specialCount = 0;
  if (tokens?.type === GgufValueType.STRING && tokenTypes && tokenTypes.type !== GgufValueType.STRING) {
    const n = Math.min(tokens.length, tokenTypes.length);
    let i = 0;
    for (const t of tokenTypes) {
      if (i >= n) break;
      if (t === 3 || t === 4) {
        // CONTROL, USER_DEFINED
        if (specialCount < INSPECT_MAX_SPECIAL) special[tokens.at(i) as string] = i;
        specialCount++;
      }
      i++;
    }
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
  const ftype = num(entry('general.file_type'));
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
      size: tokens ? tokens.length : null,
      bos: num(entry('tokenizer.ggml.bos_token_id')),
      eos: num(entry('tokenizer.ggml.eos_token_id')),
      special,
      specialCount,
      addBos: typeof addBos === 'boolean' ? addBos : null,
    },
    chatTemplate: { present: typeof template === 'string', length: typeof template === 'string' ? template.length : 0 },
    arrays: [...file.metadata.values()]
      .filter((e) => e.array)
      .map((e) => ({ key: e.key, type: GGUF_VALUE_TYPE_NAMES[e.arrayType!] ?? String(e.arrayType), length: e.array!.length })),
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
