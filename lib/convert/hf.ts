// The JSON files of a Hugging Face checkpoint, read as convert_hf_to_gguf.py (with the transformers 4.57.6
// its requirements pin) reads them: config.json through the model's config class, so that keys a 4.x
// config.json leaves out get the class's defaults; rope settings from transformers 5.x's rope_parameters or
// 4.x's top-level rope_theta and rope_scaling; generation_config.json's sampling settings; the tokenizer files
// for the vocabulary (vocab.ts).
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { ConvertError } from './error.js';

export type Json = Record<string, unknown>;

/** The architectures this converter handles, all written as llama.cpp's "llama". */
export const SUPPORTED_ARCHITECTURES = ['LlamaForCausalLM', 'MistralForCausalLM', 'MixtralForCausalLM'] as const;
export type SupportedArchitecture = (typeof SUPPORTED_ARCHITECTURES)[number];

export async function isFile(path: string): Promise<boolean> {
  return stat(path).then((s) => s.isFile(), () => false);
}

/** Parses a JSON object file; undefined when it does not exist and `optional`. */
export async function readJsonFile(path: string, optional: true): Promise<Json | undefined>;
export async function readJsonFile(path: string, optional?: false): Promise<Json>;
export async function readJsonFile(path: string, optional = false): Promise<Json | undefined> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    if (optional && (error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new ConvertError(`cannot read ${path}: ${(error as Error).message}`, path, { cause: error });
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new ConvertError(`${path} is not valid JSON: ${(error as Error).message}`, path, { cause: error });
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new ConvertError(`${path} does not hold a JSON object`, path);
  }
  return value as Json;
}

/**
 * What transformers 4.57's LlamaConfig, MistralConfig and MixtralConfig set for keys a config.json leaves
 * out (AutoConfig(...).to_dict() is what the Python converter reads). Only keys that reach the GGUF.
 * head_dim: Llama and Mistral compute it, which makes the Python converter write key/value lengths; Mixtral
 * keeps None, which is why the huozi-tiny GGUF has none.
 */
const CONFIG_DEFAULTS: Record<SupportedArchitecture, Json> = {
  LlamaForCausalLM: {
    vocab_size: 32000, hidden_size: 4096, intermediate_size: 11008, num_hidden_layers: 32, num_attention_heads: 32,
    max_position_embeddings: 2048, rms_norm_eps: 1e-6, rope_theta: 10000.0, tie_word_embeddings: false,
  },
  MistralForCausalLM: {
    vocab_size: 32000, hidden_size: 4096, intermediate_size: 14336, num_hidden_layers: 32, num_attention_heads: 32,
    num_key_value_heads: 8, max_position_embeddings: 4096 * 32, rms_norm_eps: 1e-6, rope_theta: 10000.0,
    tie_word_embeddings: false,
  },
  MixtralForCausalLM: {
    vocab_size: 32000, hidden_size: 4096, intermediate_size: 14336, num_hidden_layers: 32, num_attention_heads: 32,
    num_key_value_heads: 8, max_position_embeddings: 4096 * 32, rms_norm_eps: 1e-5, rope_theta: 1e6,
    num_experts_per_tok: 2, num_local_experts: 8, tie_word_embeddings: false,
  },
};

export interface HfConfig {
  file: string;
  /** config.json as it is. */
  raw: Json;
  architecture: SupportedArchitecture;
  /** config.json with the config class's defaults filled in (and text_config merged), as the converter sees it. */
  hparams: Json;
  /** rope_parameters (5.x) or rope_scaling (4.x), with rope_theta and rope_type mirrored in (TextModel.__init__). */
  rope: Json;
}

/** The first of `keys` that the config has (find_hparam). */
export function findHparam(h: Json, keys: readonly string[]): unknown {
  for (const k of keys) if (k in h) return h[k];
  return undefined;
}

/** Reads config.json and checks that the architecture is one this converter writes correctly. */
export async function readConfig(dir: string): Promise<HfConfig> {
  const file = join(dir, 'config.json');
  if (!(await isFile(file))) throw new ConvertError(`${dir} has no config.json`, file);
  const raw = await readJsonFile(file);
  const textConfig = (raw.text_config ?? {}) as Json;
  const arches = (Array.isArray(textConfig.architectures) ? textConfig.architectures : raw.architectures) as unknown;
  const arch = Array.isArray(arches) && arches.length > 0 ? arches[0] : undefined;
  if (typeof arch !== 'string') throw new ConvertError(`${file} has no "architectures" list, so the model type is unknown`, file);
  if (!(SUPPORTED_ARCHITECTURES as readonly string[]).includes(arch)) {
    throw new ConvertError(
      `unsupported architecture ${arch} in ${file}; this converter handles ${SUPPORTED_ARCHITECTURES.join(', ')} ` +
        '(use llama.cpp\'s convert_hf_to_gguf.py for others)',
      file,
    );
  }
  const architecture = arch as SupportedArchitecture;
  const hparams: Json = { ...CONFIG_DEFAULTS[architecture], ...raw, ...textConfig };
  if (hparams.num_key_value_heads === undefined || hparams.num_key_value_heads === null) hparams.num_key_value_heads = hparams.num_attention_heads;
  if ((hparams.head_dim === undefined || hparams.head_dim === null) && architecture !== 'MixtralForCausalLM' &&
      typeof hparams.hidden_size === 'number' && typeof hparams.num_attention_heads === 'number') {
    hparams.head_dim = Math.floor(hparams.hidden_size / hparams.num_attention_heads);
  }
  if (hparams.head_dim === null) delete hparams.head_dim;

  // TextModel.__init__: rope settings in one dict, whichever transformers wrote the file.
  const ropeSource = (raw.rope_parameters ?? textConfig.rope_parameters ?? hparams.rope_scaling ?? {}) as Json;
  const rope: Json = { ...ropeSource };
  if (!('full_attention' in rope) && !('sliding_attention' in rope)) {
    const local = findHparam(hparams, ['local_rope_theta', 'rope_local_theta', 'rope_theta_local', 'swa_rope_theta', 'rope_local_base_freq']);
    if (local !== undefined && local !== null) rope.sliding_attention = { rope_theta: local };
    const theta = findHparam(hparams, ['global_rope_theta', 'rope_global_theta', 'rope_theta_global', 'rope_theta', 'rotary_emb_base']);
    if (!('rope_theta' in rope) && theta !== undefined && theta !== null) rope.rope_theta = theta;
    if (!('rope_type' in rope) && rope.type !== undefined && rope.type !== null) rope.rope_type = rope.type;
    const orig = findHparam(hparams, ['original_max_position_embeddings']);
    if (!('original_max_position_embeddings' in rope) && orig !== undefined && orig !== null) rope.original_max_position_embeddings = orig;
  }
  return { file, raw, architecture, hparams, rope };
}

/** A positive integer hyperparameter, or a ConvertError that names it. */
export function intParam(config: HfConfig, keys: readonly string[], min = 1): number {
  const v = findHparam(config.hparams, keys);
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) {
    throw new ConvertError(
      `${config.file}: ${keys[0]} is ${v === undefined ? 'missing' : JSON.stringify(v)}; expected an integer of at least ${min}`,
      config.file,
    );
  }
  return v;
}

export function numberParam(config: HfConfig, keys: readonly string[]): number | undefined {
  const v = findHparam(config.hparams, keys);
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new ConvertError(`${config.file}: ${keys[0]} is ${JSON.stringify(v)}, not a number`, config.file);
  return v;
}

/** generation_config.json's sampling settings, as gguf-py's Metadata.load reads them (an unreadable file counts as none). */
export async function readGenerationConfig(dir: string): Promise<Json> {
  try {
    return (await readJsonFile(join(dir, 'generation_config.json'), true)) ?? {};
  } catch {
    return {};
  }
}
