// convert(): a Hugging Face checkpoint (Llama, Mistral, Mixtral; safetensors; SentencePiece vocabulary) to a
// GGUF file, in TypeScript, equal to what the pinned llama.cpp's `convert_hf_to_gguf.py --outtype <type>` writes:
// the same metadata keys in the same order with the same GGUF types, the same tensors in the same order with
// the same types and bytes. Everything is read and checked before anything is written; then the tensors stream
// through lib/gguf/writer.ts (temporary file, fsync, rename), a bounded run of rows at a time, so memory stays
// far below the size of the model (and of its largest tensor).
import { endianness } from 'node:os';
import { readdir, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { AbortError } from '../errors.js';
import { GgufValueType } from '../gguf/types.js';
import { encodeGgufHeader, writeGgufTo, type WriterTensor, type WriterValue } from '../gguf/writer.js';
import { openOutput, type OutputFile } from '../util/output.js';
import * as v from '../validate.js';
import { ConvertError } from './error.js';
import type { OutElement } from './float.js';
import { findHparam, intParam, numberParam, readConfig, readGenerationConfig, type HfConfig, type Json } from './hf.js';
import { indexSafetensors, PartReader } from './safetensors.js';
import { GGML_TYPE_ID, planTensors, tensorData, type ModelShape, type PlannedTensor } from './tensors.js';
import { HUOZI_CHAT_TEMPLATE } from './templates.js';
import { readVocabulary, type SpecialVocab, type Vocabulary } from './vocab.js';

export { ConvertError } from './error.js';
export { HUOZI_CHAT_TEMPLATE } from './templates.js';

/** The output types convert writes: `'f32' | 'f16' | 'bf16' | 'q8_0'`. */
export type ConvertOutType = OutElement;

/** Options of {@link convert}. */
export interface ConvertOptions {
  /** Type of the 2-D weights, as convert_hf_to_gguf.py's --outtype: `f32`, `f16` (default), `bf16` or `q8_0`. */
  outType?: ConvertOutType;
  /** `'huozi'`: store Huozi 3.5's chat template as tokenizer.chat_template (replacing the checkpoint's, if any). */
  chatTemplate?: 'huozi';
  /**
   * general.name. convert_hf_to_gguf.py derives one from the model card or the directory name; by default this
   * converter writes none (llama.cpp does not need it), which keeps the file independent of where the checkpoint is.
   * Default: none.
   */
  name?: string;
  /** Called as the data is written, with output bytes done and the total; reaches done === total once, at the end. */
  onProgress?: (done: number, total: number) => void;
  /** Stops the conversion; the promise rejects with {@link AbortError} and nothing is left at the output path. */
  signal?: AbortSignal;
}

const OPTIONS = ['outType', 'chatTemplate', 'name', 'onProgress', 'signal'] as const;
const OUT_TYPES = ['f32', 'f16', 'bf16', 'q8_0'] as const;

/** What {@link convert} resolves to. */
export interface ConvertResult {
  /** Absolute path of the written file (the file a symlink pointed to, when the output was one). */
  output: string;
  outType: ConvertOutType;
  architecture: string;
  tensors: number;
  parameters: number;
  /** Size of the written file. */
  bytes: number;
  /** The largest tensor's data, the unit the converter's memory is compared against. */
  largestTensorBytes: number;
  seconds: number;
}

/** general.file_type for each output type (LlamaFileType). */
const FILE_TYPE: Record<ConvertOutType, number> = { f32: 0, f16: 1, bf16: 32, q8_0: 7 };

const S = (value: string): WriterValue => ({ type: GgufValueType.STRING, value });
const U32 = (value: number): WriterValue => ({ type: GgufValueType.UINT32, value });
const I32 = (value: number): WriterValue => ({ type: GgufValueType.INT32, value });
const F32 = (value: number): WriterValue => ({ type: GgufValueType.FLOAT32, value });
const B = (value: boolean): WriterValue => ({ type: GgufValueType.BOOL, value });

/** Python's round() to an integer: ties to even. */
function pyRound(x: number): number {
  const f = Math.floor(x);
  const d = x - f;
  return d > 0.5 ? f + 1 : d < 0.5 ? f : f % 2 === 0 ? f : f + 1;
}

/** Python's f'{x:.{digits}f}': the exact binary value rounded half to even (toFixed rounds ties up). */
function pyFixed(x: number, digits: number): string {
  const [int, frac] = Math.abs(x).toFixed(100).split('.');
  const kept = BigInt(int + frac.slice(0, digits));
  const rest = frac.slice(digits).replace(/0+$/, '');
  const up = rest > '5' || (rest === '5' && kept % 2n === 1n);
  const s = (up ? kept + 1n : kept).toString().padStart(digits + 1, '0');
  const text = digits ? `${s.slice(0, -digits)}.${s.slice(-digits)}` : s;
  return x < 0 ? `-${text}` : text;
}

/** gguf-py's model_weight_count_rounded_notation. */
function roundedNotation(count: number, minDigits = 2): string {
  const [scaled, suffix] =
    count > 1e12 ? [count * 1e-12, 'T'] : count > 1e9 ? [count * 1e-9, 'B'] : count > 1e6 ? [count * 1e-6, 'M'] : [count * 1e-3, 'K'];
  const fix = Math.max(minDigits - String(pyRound(scaled)).replace(/^0+/, '').length, 0);
  return `${pyFixed(scaled, fix)}${suffix}`;
}

/** GGUFWriter.get_total_parameter_count and gguf-py's size_label, over the planned tensors. */
export function sizeLabel(tensors: readonly Pick<PlannedTensor, 'name' | 'dims'>[]): { label: string; parameters: number } {
  let total = 0;
  let shared = 0;
  let expertParams = 0;
  let expertSum = 0;
  let expertTensors = 0;
  for (const t of tensors) {
    const size = t.dims.reduce((a, d) => a * d, 1);
    if (t.name.includes('_exps.') && t.dims.length >= 3) {
      const count = t.name.includes('.bias') ? t.dims[1] : t.dims[2]; // numpy shape[-2] / shape[-3]
      expertParams += Math.floor(size / count);
      expertSum += count;
      expertTensors++;
    } else {
      shared += size;
    }
    total += size;
  }
  const expertCount = expertTensors > 0 ? Math.floor(expertSum / expertTensors) : 0;
  const label = expertCount > 0 ? `${expertCount}x${roundedNotation(shared + expertParams)}` : roundedNotation(total);
  return { label, parameters: total };
}

function setSpecialVocab(md: Map<string, WriterValue>, sv: SpecialVocab): void {
  // Only the types GGUFWriter has add_<type>_token_id / add_add_<type>_token methods for.
  const idKeys: Record<string, string> = {
    bos: 'bos_token_id', eos: 'eos_token_id', unk: 'unknown_token_id', sep: 'seperator_token_id', pad: 'padding_token_id',
    mask: 'mask_token_id', eot: 'eot_token_id', eom: 'eom_token_id',
  };
  for (const [typ, id] of sv.ids) if (idKeys[typ]) md.set(`tokenizer.ggml.${idKeys[typ]}`, U32(id));
  for (const [typ, value] of sv.add) if (['bos', 'eos', 'sep'].includes(typ)) md.set(`tokenizer.ggml.add_${typ}_token`, B(value));
  const template = sv.chatTemplate;
  if (typeof template === 'string') md.set('tokenizer.chat_template', S(template));
  else if (Array.isArray(template)) {
    let fallback: string | undefined;
    const names = new Set<string>();
    for (const choice of template) {
      const name = String(choice?.name ?? '').replace(/[^A-Za-z0-9]/g, '_');
      if (!name || typeof choice.template !== 'string') continue;
      if (name === 'default') fallback = choice.template;
      else {
        names.add(name);
        md.set(`tokenizer.chat_template.${name}`, S(choice.template));
      }
    }
    if (names.size) md.set('tokenizer.chat_templates', { type: GgufValueType.ARRAY, arrayType: GgufValueType.STRING, value: [...names] });
    if (fallback !== undefined) md.set('tokenizer.chat_template', S(fallback));
  }
  if (sv.normalizerLowercase !== undefined) md.set('tokenizer.ggml.normalizer.lowercase', B(Boolean(sv.normalizerLowercase)));
  if (sv.normalizerStripAccents !== undefined) md.set('tokenizer.ggml.normalizer.strip_accents', B(Boolean(sv.normalizerStripAccents)));
}

/** The metadata, key by key in the order convert_hf_to_gguf.py adds them (GGUFWriter keeps insertion order). */
function buildMetadata(
  config: HfConfig, shape: ModelShape, vocab: Vocabulary, generation: Json, sizeLabelText: string,
  outType: ConvertOutType, name: string | undefined, chatTemplate: string | undefined,
): Map<string, WriterValue> {
  const h = config.hparams;
  const md = new Map<string, WriterValue>();
  const fail = (message: string): never => {
    throw new ConvertError(`${config.file}: ${message}`, config.file);
  };
  md.set('general.architecture', S('llama'));
  md.set('general.type', S('model'));

  // Metadata.set_gguf_meta_model: sampling settings from generation_config.json, then the name and size label.
  const num = (k: string) => (typeof generation[k] === 'number' && Number.isFinite(generation[k]) ? (generation[k] as number) : undefined);
  const int = (k: string) => (Number.isInteger(generation[k]) ? (generation[k] as number) : undefined);
  if (typeof generation.sequence === 'string') md.set('general.sampling.sequence', S(generation.sequence));
  const sampling: [string, number | undefined, (n: number) => WriterValue][] = [
    ['top_k', int('top_k'), I32], ['top_p', num('top_p'), F32], ['min_p', num('min_p'), F32],
    ['xtc_probability', num('xtc_probability'), F32], ['xtc_threshold', num('xtc_threshold'), F32],
    ['temp', num('temperature'), F32], ['penalty_last_n', int('penalty_last_n'), I32],
    ['penalty_repeat', 'penalty_repeat' in generation ? num('penalty_repeat') : num('repetition_penalty'), F32],
    ['mirostat', int('mirostat'), I32], ['mirostat_tau', num('mirostat_tau'), F32], ['mirostat_eta', num('mirostat_eta'), F32],
  ];
  for (const [key, value, make] of sampling) if (value !== undefined) md.set(`general.sampling.${key}`, make(value));
  if (name !== undefined) md.set('general.name', S(name));
  md.set('general.size_label', S(sizeLabelText));

  // TextModel.set_gguf_parameters
  const optionalInt = (keys: string[], key: string) => {
    const value = findHparam(h, keys);
    if (value === undefined || value === null) return;
    if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) fail(`${keys[0]} is ${JSON.stringify(value)}, not a count`);
    md.set(key, U32(value as number));
  };
  md.set('llama.block_count', U32(shape.blocks));
  optionalInt(['max_position_embeddings', 'n_ctx', 'n_positions', 'max_length', 'max_sequence_length', 'model_max_length'], 'llama.context_length');
  optionalInt(['hidden_size', 'n_embd', 'dim'], 'llama.embedding_length');
  optionalInt(['prefix_dense_intermediate_size', 'dense_intermediate_size', 'intermediate_size', 'n_inner', 'hidden_dim'], 'llama.feed_forward_length');
  optionalInt(['num_attention_heads', 'n_head', 'n_heads'], 'llama.attention.head_count');
  optionalInt(['num_key_value_heads', 'n_kv_heads'], 'llama.attention.head_count_kv');
  if (h.is_causal === false) md.set('llama.attention.causal', B(false));

  const rope = (config.rope.full_attention ?? config.rope) as Json;
  const ropeType = rope.rope_type;
  if (ropeType !== undefined && ropeType !== null) {
    const factor = rope.factor;
    const f = (k: string) => {
      const value = rope[k];
      if (typeof value !== 'number') fail(`rope ${k} is ${JSON.stringify(value)}, not a number`);
      return value as number;
    };
    if (ropeType === 'linear' && factor != null) {
      md.set('llama.rope.scaling.type', S('linear'));
      md.set('llama.rope.scaling.factor', F32(f('factor')));
    } else if (ropeType === 'yarn' && factor != null) {
      md.set('llama.rope.scaling.type', S('yarn'));
      md.set('llama.rope.scaling.factor', F32(f('factor')));
      md.set('llama.rope.scaling.original_context_length', U32(f('original_max_position_embeddings')));
      if (rope.extrapolation_factor != null) md.set('llama.rope.scaling.yarn_ext_factor', F32(f('extrapolation_factor')));
      const attn = rope.attention_factor != null ? 'attention_factor' : rope.attn_factor != null ? 'attn_factor' : undefined;
      if (attn) md.set('llama.rope.scaling.yarn_attn_factor', F32(f(attn)));
      if (rope.beta_fast != null) md.set('llama.rope.scaling.yarn_beta_fast', F32(f('beta_fast')));
      if (rope.beta_slow != null) md.set('llama.rope.scaling.yarn_beta_slow', F32(f('beta_slow')));
    } else if (ropeType === 'su' || ropeType === 'longrope') {
      md.set('llama.rope.scaling.type', S('longrope'));
    } else if (String(ropeType).toLowerCase() === 'llama3') {
      // The Python converter adds a rope_freqs tensor for these (Llama 3.1+); this one does not.
      fail('rope_type "llama3" (Llama 3.1 and later) is not supported by this converter');
    }
    // "default", "dynamic" and unknown types add nothing (the Python converter at most warns).
  }
  const theta = rope.rope_theta;
  if (theta !== undefined && theta !== null) {
    if (typeof theta !== 'number') fail(`rope_theta is ${JSON.stringify(theta)}, not a number`);
    md.set('llama.rope.freq_base', F32(theta as number));
  }
  const swa = (config.rope.sliding_attention as Json | undefined)?.rope_theta;
  if (typeof swa === 'number') md.set('llama.rope.freq_base_swa', F32(swa));
  const rms = numberParam(config, ['rms_norm_eps', 'norm_eps']);
  if (rms !== undefined) md.set('llama.attention.layer_norm_rms_epsilon', F32(rms));
  const lnEps = numberParam(config, ['layer_norm_eps', 'layer_norm_epsilon', 'norm_epsilon']);
  if (lnEps !== undefined) md.set('llama.attention.layer_norm_epsilon', F32(lnEps));
  optionalInt(['num_local_experts', 'num_experts', 'n_routed_experts'], 'llama.expert_count');
  optionalInt(['num_experts_per_tok', 'num_experts_per_token', 'top_k_experts'], 'llama.expert_used_count');
  if (h.head_dim !== undefined && h.head_dim !== null) {
    md.set('llama.attention.key_length', U32(shape.headDim));
    md.set('llama.attention.value_length', U32(shape.headDim));
  }
  md.set('general.file_type', U32(FILE_TYPE[outType]));

  // LlamaModel.set_gguf_parameters
  md.set('llama.vocab_size', U32(shape.vocab));
  md.set('llama.rope.dimension_count', U32(shape.headDim));
  md.set('general.quantization_version', U32(2));

  // LlamaModel.set_vocab → _set_vocab_sentencepiece
  if (vocab.addSpacePrefix !== undefined) md.set('tokenizer.ggml.add_space_prefix', B(vocab.addSpacePrefix));
  md.set('tokenizer.ggml.model', S('llama'));
  md.set('tokenizer.ggml.pre', S('default'));
  md.set('tokenizer.ggml.tokens', { type: GgufValueType.ARRAY, arrayType: GgufValueType.STRING, value: vocab.tokens });
  md.set('tokenizer.ggml.scores', { type: GgufValueType.ARRAY, arrayType: GgufValueType.FLOAT32, value: vocab.scores });
  md.set('tokenizer.ggml.token_type', { type: GgufValueType.ARRAY, arrayType: GgufValueType.INT32, value: vocab.types });
  setSpecialVocab(md, vocab.special);
  if (vocab.codeLlama) setSpecialVocab(md, vocab.codeLlama);
  if (vocab.forceAddBosFalse) md.set('tokenizer.ggml.add_bos_token', B(false));
  if (chatTemplate !== undefined) md.set('tokenizer.chat_template', S(chatTemplate));
  return md;
}

/**
 * The files of a checkpoint this converter reads besides its safetensors parts (hf.ts, vocab.ts, safetensors.ts),
 * and the folder of extra chat templates: the output may be none of them.
 */
export const CHECKPOINT_FILES = [
  'config.json', 'generation_config.json', 'tokenizer.model', 'tokenizer.json', 'tokenizer_config.json', 'added_tokens.json',
  'chat_template.jinja', 'chat_template.json', 'tekken.json', 'model.safetensors.index.json',
] as const;
const EXTRA_TEMPLATES = 'additional_chat_templates';

/** Every file of the checkpoint in `dir` that a conversion reads: the fixed names, the parts and the extra templates. */
async function checkpointInputs(dir: string, parts: readonly string[]): Promise<string[]> {
  const extras = await readdir(join(dir, EXTRA_TEMPLATES)).catch(() => [] as string[]);
  return [
    ...CHECKPOINT_FILES.map((f) => join(dir, f)),
    ...parts,
    ...extras.filter((f) => f.endsWith('.jinja')).map((f) => join(dir, EXTRA_TEMPLATES, f)),
  ];
}

async function kindOf(path: string): Promise<'file' | 'dir' | 'other' | undefined> {
  try {
    const s = await stat(path);
    return s.isFile() ? 'file' : s.isDirectory() ? 'dir' : 'other';
  } catch {
    return undefined;
  }
}

/**
 * Converts the checkpoint in `hfDir` (config.json, *.safetensors, tokenizer.model) into the GGUF file `outFile`,
 * as the pinned llama.cpp's convert_hf_to_gguf.py would.
 *
 * @throws `TypeError` / `RangeError` for bad options.
 * @throws {@link OutputPathError} for an output that exists and is not a regular file, that is one of the
 * checkpoint's files (by device and inode), or whose directory is missing or not writable.
 * @throws {@link ConvertError} for an unsupported architecture, a missing or truncated file, a shape mismatch (all
 * found before anything is written).
 * @throws {@link AbortError} when `signal` aborts.
 */
export async function convert(hfDir: string, outFile: string, options?: ConvertOptions): Promise<ConvertResult> {
  v.string('hfDir', hfDir, { allowEmpty: false });
  v.string('outFile', outFile, { allowEmpty: false });
  const o = v.options<ConvertOptions>('options', options, OPTIONS);
  const outType = o.outType === undefined ? 'f16' : v.oneOf('outType', o.outType, OUT_TYPES);
  const chatTemplate = o.chatTemplate === undefined ? undefined : v.oneOf('chatTemplate', o.chatTemplate, ['huozi'] as const);
  const name = o.name === undefined ? undefined : v.string('name', o.name, { allowEmpty: false });
  const onProgress = o.onProgress === undefined ? undefined : v.func<(d: number, t: number) => void>('onProgress', o.onProgress);
  const signal = o.signal === undefined ? undefined : v.signal('signal', o.signal);
  if (endianness() !== 'LE') throw new ConvertError('converting needs a little-endian machine (GGUF and safetensors are little-endian)');

  const started = Date.now();
  const dir = resolve(hfDir);
  const dirKind = await kindOf(dir);
  if (dirKind !== 'dir') throw new ConvertError(`${dir} ${dirKind ? 'is not a directory' : 'does not exist'}`, dir);
  // The output's path is checked first (its temporary file created); the checkpoint's files are compared with it
  // once the parts are known.
  const output = await openOutput(outFile, { inputs: CHECKPOINT_FILES.map((f) => join(dir, f)) });
  try {
    return await convertInto(dir, output, outType, chatTemplate, name, onProgress, signal, started);
  } catch (error) {
    await output.discard();
    throw error;
  }
}

/** The shape config.json gives the model (the sizes planTensors checks the weights against), checked for consistency. */
export function modelShape(config: HfConfig, outType: ConvertOutType): ModelShape {
  const hidden = intParam(config, ['hidden_size', 'n_embd', 'dim']);
  const heads = intParam(config, ['num_attention_heads', 'n_head', 'n_heads']);
  const headDim = config.hparams.head_dim !== undefined ? intParam(config, ['head_dim']) : Math.floor(hidden / heads);
  const expertCount = findHparam(config.hparams, ['num_local_experts', 'num_experts', 'n_routed_experts']);
  const shape: ModelShape = {
    blocks: intParam(config, ['n_layers', 'num_hidden_layers', 'n_layer', 'num_layers']),
    vocab: intParam(config, ['vocab_size']),
    hidden,
    ff: intParam(config, ['intermediate_size', 'n_inner', 'hidden_dim']),
    heads,
    kvHeads: intParam(config, ['num_key_value_heads', 'n_kv_heads']),
    headDim,
    experts: config.architecture === 'MixtralForCausalLM' || expertCount !== undefined ? intParam(config, ['num_local_experts', 'num_experts', 'n_routed_experts']) : 0,
    outType,
    configFile: config.file,
  };
  if (shape.experts > 0) {
    const used = intParam(config, ['num_experts_per_tok', 'num_experts_per_token', 'top_k_experts']);
    if (used > shape.experts) throw new ConvertError(`${config.file}: num_experts_per_tok (${used}) is more than num_local_experts (${shape.experts})`, config.file);
  }
  if (heads % shape.kvHeads !== 0) {
    throw new ConvertError(`${config.file}: num_attention_heads (${heads}) is not a multiple of num_key_value_heads (${shape.kvHeads})`, config.file);
  }
  return shape;
}

async function convertInto(
  dir: string, output: OutputFile, outType: ConvertOutType, chatTemplate: 'huozi' | undefined,
  name: string | undefined, onProgress: ((done: number, total: number) => void) | undefined, signal: AbortSignal | undefined,
  started: number,
): Promise<ConvertResult> {
  // Read and check everything before writing anything.
  const config = await readConfig(dir);
  const shape = modelShape(config, outType);
  const checkpoint = await indexSafetensors(dir);
  await output.addInputs(await checkpointInputs(dir, checkpoint.files));
  const planned = planTensors(checkpoint.tensors, shape);
  const vocab = await readVocabulary(dir, shape.vocab);
  const generation = await readGenerationConfig(dir);
  const { label, parameters } = sizeLabel(planned);
  const template = chatTemplate === 'huozi' ? HUOZI_CHAT_TEMPLATE : undefined;
  const metadata = buildMetadata(config, shape, vocab, generation, label, outType, name, template);
  if (signal?.aborted) throw new AbortError('conversion was aborted');

  const total = planned.reduce((a, t) => a + t.bytes, 0);
  const reader = new PartReader();
  let done = 0;
  const check = () => {
    if (signal?.aborted) throw new AbortError('conversion was aborted');
  };
  const tensors: WriterTensor[] = planned.map((t) => ({
    name: t.name,
    dims: t.dims,
    type: GGML_TYPE_ID[t.type],
    data: async function* () {
      for await (const chunk of tensorData(t, reader, check)) {
        yield chunk;
        // The writer asks for the next chunk once this one is written.
        done += chunk.length;
        if (done < total) onProgress?.(done, total);
      }
    },
  }));
  const { header, sizes, alignment } = encodeGgufHeader(metadata, tensors);
  try {
    await writeGgufTo(output, header, sizes, alignment, tensors);
  } finally {
    await reader.close();
  }
  onProgress?.(total, total);
  const bytes = (await stat(output.path)).size;
  return {
    output: output.path,
    outType,
    architecture: config.architecture,
    tensors: planned.length,
    parameters,
    bytes,
    largestTensorBytes: planned.reduce((a, t) => Math.max(a, t.bytes), 0),
    seconds: (Date.now() - started) / 1000,
  };
}

