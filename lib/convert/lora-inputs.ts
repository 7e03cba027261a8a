// The inputs of convertLora (lora.ts): the PEFT adapter's adapter_config.json, read so that every setting that would
// change PEFT's result and that llama.cpp's LoRA path cannot reproduce is refused, and the base model as far as an
// adapter needs it (tensor shapes and head counts), from its HF directory or its GGUF.
import { stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { LoraError } from '../errors.js';
import { readGguf, type GgufFile } from '../gguf/reader.js';
import { GgufValueType } from '../gguf/types.js';
import { modelShape } from './convert.js';
import { ConvertError } from './error.js';
import { isFile, readConfig, readJsonFile, type Json } from './hf.js';
import { indexSafetensors } from './safetensors.js';
import { planTensors } from './tensors.js';

/** The base model as far as an adapter needs it: tensor shapes (ggml ne) by GGUF name, and the head counts. */
export interface LoraBase {
  file: string;
  architecture: string;
  tensors: Map<string, number[]>;
  heads: number;
  kvHeads: number;
  experts: number;
  /** Vocabulary size, when known (to check aLoRA invocation tokens). */
  vocab?: number;
}

function rethrow(error: unknown, file: string): never {
  if (error instanceof ConvertError) throw new LoraError(error.message, { reason: 'base', file: error.file ?? file }, { cause: error });
  throw error;
}

/** Reads the base: an HF directory (config.json, safetensors headers; planTensors checks them) or a GGUF's tensor infos. */
export async function readLoraBase(base: string): Promise<LoraBase> {
  const path = resolve(base);
  const st = await stat(path).catch(() => undefined);
  if (!st) throw new LoraError(`the base model ${path} does not exist`, { reason: 'base', file: path });
  if (st.isDirectory()) {
    try {
      const config = await readConfig(path);
      const shape = modelShape(config, 'f32');
      const checkpoint = await indexSafetensors(path);
      const planned = planTensors(checkpoint.tensors, shape);
      return {
        file: path, architecture: 'llama', tensors: new Map(planned.map((t) => [t.name, t.dims])),
        heads: shape.heads, kvHeads: shape.kvHeads, experts: shape.experts, vocab: shape.vocab,
      };
    } catch (error) {
      rethrow(error, path);
    }
  }
  const file: GgufFile = await readGguf(path);
  const m = file.metadata;
  const str = (k: string) => (m.get(k)?.type === GgufValueType.STRING ? String(m.get(k)!.value) : undefined);
  const int = (k: string) => {
    const e = m.get(k);
    return e && !e.array && typeof e.value !== 'string' && typeof e.value !== 'boolean' ? Number(e.value) : undefined;
  };
  const arch = str('general.architecture');
  if (arch !== 'llama') {
    throw new LoraError(`the base ${path} is a "${arch ?? 'unknown'}" model; convertLora handles llama (Llama, Mistral, Mixtral)`, { reason: 'architecture', file: path });
  }
  const type = str('general.type');
  if (type !== undefined && type !== 'model') throw new LoraError(`the base ${path} is a GGUF of type "${type}", not a model`, { reason: 'base', file: path });
  const heads = int('llama.attention.head_count');
  if (heads === undefined || heads < 1) throw new LoraError(`the base ${path} has no llama.attention.head_count`, { reason: 'base', file: path });
  const tokens = m.get('tokenizer.ggml.tokens')?.array?.length;
  return {
    file: path, architecture: arch, tensors: new Map(file.tensors.map((t) => [t.name, t.dims.map(Number)])),
    heads, kvHeads: int('llama.attention.head_count_kv') ?? heads, experts: int('llama.expert_count') ?? 0, vocab: tokens ?? int('llama.vocab_size'),
  };
}

/** adapter_config.json as far as the conversion goes; everything that would change PEFT's result and that llama.cpp cannot do is refused. */
export interface PeftLoraConfig {
  file: string;
  r: number;
  alpha: number;
  rslora: boolean;
  /** Ranks may differ by module. */
  rankPattern: boolean;
  targetModules: string[] | string | undefined;
  invocationTokens?: number[];
}

export async function readPeftConfig(adapterDir: string): Promise<PeftLoraConfig> {
  const file = join(adapterDir, 'adapter_config.json');
  if (!(await isFile(file))) throw new LoraError(`${adapterDir} has no adapter_config.json (is it a PEFT adapter directory?)`, { reason: 'config', file });
  let c: Json;
  try {
    c = await readJsonFile(file);
  } catch (error) {
    throw new LoraError((error as Error).message, { reason: 'config', file }, { cause: error });
  }
  const bad = (key: string, message: string, reason = 'config'): never => {
    throw new LoraError(`${file}: ${key} ${message}`, { reason, key, file });
  };
  const present = (k: string) => c[k] !== undefined && c[k] !== null;
  if (present('peft_type') && c.peft_type !== 'LORA') bad('peft_type', `is ${JSON.stringify(c.peft_type)}; only LORA adapters can be converted`, 'unsupported');
  const r = c.r;
  if (!Number.isSafeInteger(r) || (r as number) < 1) bad('r', `is ${JSON.stringify(r)}; expected a rank of at least 1`);
  if (!present('lora_alpha')) bad('lora_alpha', 'is missing (convert_lora_to_gguf.py needs it too)');
  const alpha = c.lora_alpha;
  if (typeof alpha !== 'number' || !Number.isFinite(alpha)) bad('lora_alpha', `is ${JSON.stringify(alpha)}, not a finite number`);
  const truthy = (k: string) => present(k) && c[k] !== false;
  if (truthy('use_dora')) bad('use_dora', 'is set: DoRA rescales each weight by its own norm, which llama.cpp\'s LoRA path does not do', 'unsupported');
  if (present('bias') && c.bias !== 'none') bad('bias', `is ${JSON.stringify(c.bias)}: llama.cpp's LoRA path applies no biases (only "none" can be converted)`, 'unsupported');
  if (truthy('lora_bias')) bad('lora_bias', 'is set: llama.cpp\'s LoRA path has no lora_B bias', 'unsupported');
  const listed = (k: string) => present(k) && !(Array.isArray(c[k]) && (c[k] as unknown[]).length === 0) && !(typeof c[k] === 'object' && !Array.isArray(c[k]) && Object.keys(c[k] as object).length === 0);
  if (listed('modules_to_save')) bad('modules_to_save', `is ${JSON.stringify(c.modules_to_save)}: fully trained modules are not LoRA weights, and a GGUF adapter cannot carry them`, 'unsupported');
  if (listed('trainable_token_indices')) bad('trainable_token_indices', 'is set: trained token embeddings are not LoRA weights', 'unsupported');
  if (listed('layer_replication')) bad('layer_replication', 'is set: the adapted model has layers the base lacks', 'unsupported');
  if (listed('target_parameters')) bad('target_parameters', 'is set: LoRA on raw parameters is not supported', 'unsupported');
  if (truthy('fan_in_fan_out')) {
    bad('fan_in_fan_out', 'is set: that is for Conv1D (GPT-2 style) bases; Llama/Mistral/Mixtral projections are nn.Linear, so this adapter was not made for such a base', 'unsupported');
  }
  if (listed('alpha_pattern')) {
    const same = Object.values(c.alpha_pattern as object).every((x) => x === alpha);
    if (!same) bad('alpha_pattern', 'gives modules their own lora_alpha; a GGUF adapter has one alpha for all', 'unsupported');
  }
  const rslora = truthy('use_rslora');
  const rankPattern = listed('rank_pattern');
  const tm = c.target_modules;
  if (present('target_modules') && typeof tm !== 'string' && !(Array.isArray(tm) && tm.every((x) => typeof x === 'string'))) {
    bad('target_modules', `is ${JSON.stringify(tm)}, not a list of module names or a pattern`);
  }
  let invocationTokens: number[] | undefined;
  if (present('alora_invocation_tokens')) {
    const t = c.alora_invocation_tokens;
    if (!Array.isArray(t) || !t.every((x) => Number.isSafeInteger(x) && x >= 0 && x < 2 ** 31)) bad('alora_invocation_tokens', 'must be a list of token ids');
    invocationTokens = t as number[];
  } else if (present('invocation_string')) {
    bad('invocation_string', 'is set without alora_invocation_tokens; tokenize it with the base\'s tokenizer and set alora_invocation_tokens', 'unsupported');
  }
  return { file, r: r as number, alpha: alpha as number, rslora, rankPattern, targetModules: tm as string[] | string | undefined, invocationTokens };
}
