// convertLora(): a Hugging Face PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors) to a GGUF
// LoRA adapter, as the pinned llama.cpp's convert_lora_to_gguf.py writes it: general.type "adapter",
// adapter.type "lora", adapter.lora.alpha; for each targeted weight X of the base, X.lora_a (PEFT's lora_A
// [r, in] as it is: ggml ne [in, r]) and X.lora_b (lora_B [out, r]: ne [r, out]), named as the model converter
// names X (tensors.ts), in the same order the script writes them. LoraTorchTensor's rules are followed: Llama's
// q/k rope permutation applies to lora_B's rows only (A is untouched), and Mixtral's per-expert w1/w2/w3 are
// stacked into ffn_{gate,down,up}_exps: lora_a [n_expert, r, in], lora_b [n_expert, out, r]. Everything is read
// and checked (config, pairs, ranks, shapes against the base's config and tensors) before anything is written;
// the data then streams one source tensor at a time. Where PEFT computes something llama.cpp cannot (DoRA, biases,
// modules_to_save, per-module alphas), the conversion is refused with a LoraError. PEFT's embedding adapters
// (lora_embedding_A/B) are written as the script writes them: token_embd.weight.lora_a is A transposed.
import { endianness } from 'node:os';
import { stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { AbortError, LoraError } from '../errors.js';
import { GgufValueType } from '../gguf/types.js';
import { encodeGgufHeader, writeGgufTo, type WriterTensor, type WriterValue } from '../gguf/writer.js';
import { openOutput } from '../util/output.js';
import * as v from '../validate.js';
import { ConvertError } from './error.js';
import { convertElements, SOURCE_DTYPE_BYTES } from './float.js';
import { isFile } from './hf.js';
import { readLoraBase, readPeftConfig, type LoraBase, type PeftLoraConfig } from './lora-inputs.js';
import { PartReader, readSafetensorsHeader, type SafetensorsTensor } from './safetensors.js';
import { EXPERT_NAMES, GGML_TYPE_ID, mapName, permuteRows } from './tensors.js';

/** The types convertLora writes (llama.cpp's LoRA path takes these; quantized adapters are not written). */
export type LoraOutType = 'f32' | 'f16' | 'bf16';
const OUT_TYPES = ['f32', 'f16', 'bf16'] as const;

/** Options of {@link convertLora}. */
export interface ConvertLoraOptions {
  /** The base model: its Hugging Face directory (config.json and safetensors headers are read, not the weights) or its GGUF. */
  base: string;
  /** The GGUF adapter to write. */
  output: string;
  /** Type of lora_a and lora_b, as convert_lora_to_gguf.py's --outtype: `f32` (its default), `f16` or `bf16`. */
  outType?: LoraOutType;
  /** Called as the data is written, with output bytes done and the total; reaches done === total once, at the end. */
  onProgress?: (done: number, total: number) => void;
  /** Stops the conversion; the promise rejects with {@link AbortError} and nothing is left at the output path. */
  signal?: AbortSignal;
}
const OPTIONS = ['base', 'output', 'outType', 'onProgress', 'signal'] as const;

/** What {@link convertLora} resolves to. */
export interface ConvertLoraResult {
  output: string;
  outType: LoraOutType;
  /** general.architecture (always `llama`: Llama, Mistral, Mixtral). */
  architecture: string;
  /** The base weights adapted (GGUF names, e.g. `blk.0.attn_q.weight`), in file order; each has a .lora_a and a .lora_b. */
  targets: string[];
  /** GGUF tensors written (twice the targets). */
  tensors: number;
  /** The ranks found (one value unless adapter_config.json has a rank_pattern). */
  ranks: number[];
  /** adapter.lora.alpha as written: lora_alpha, or lora_alpha·√r for a rank-stabilized (use_rslora) adapter. */
  alpha: number;
  bytes: number;
  seconds: number;
}

const S = (value: string): WriterValue => ({ type: GgufValueType.STRING, value });

interface Pair {
  module: string;
  a?: SafetensorsTensor;
  b?: SafetensorsTensor;
}

/** One GGUF target: its .lora_a and .lora_b, each made of one source tensor, or one per expert stacked. */
interface LoraTarget {
  name: string;
  rank: number;
  aDims: number[];
  bDims: number[];
  a: SafetensorsTensor[];
  b: SafetensorsTensor[];
  /** Rows per head of lora_B when its rows are permuted (q_proj, k_proj). */
  bGroup?: number;
  /** lora_A is written transposed (the token embeddings: llama.cpp takes A as [n_vocab, r] rows to look up). */
  transposeA?: boolean;
}

const PEFT_KEY = /^base_model\.model\.(.+)\.lora_([AB])\.weight$/;
/** PEFT's embedding adapters: lora_embedding_A [r, n_vocab] and lora_embedding_B [n_embd, r], no .weight. */
const PEFT_EMBEDDING_KEY = /^base_model\.model\.(.+)\.lora_embedding_([AB])$/;
const EXPERT = /^model\.layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.(w[123])$/;
/** The PEFT module names (last component) each GGUF weight answers to, for checking target_modules against a base. */
const COMPONENT_OF: Record<string, string> = {
  attn_q: 'q_proj', attn_k: 'k_proj', attn_v: 'v_proj', attn_output: 'o_proj', ffn_gate: 'gate_proj', ffn_up: 'up_proj',
  ffn_down: 'down_proj', ffn_gate_inp: 'gate', ffn_gate_exps: 'w1', ffn_down_exps: 'w2', ffn_up_exps: 'w3', output: 'lm_head',
  token_embd: 'embed_tokens',
};

/** Pairs the adapter's tensors and plans the GGUF tensors, in convert_lora_to_gguf.py's order; throws LoraError on any problem. */
export function planLora(tensors: readonly SafetensorsTensor[], config: PeftLoraConfig, base: LoraBase, file: string): LoraTarget[] {
  const fail = (message: string, reason: string, tensor?: string): never => {
    throw new LoraError(message, { reason, tensor, file });
  };
  const pairs = new Map<string, Pair>();
  for (const t of tensors) {
    const m = PEFT_KEY.exec(t.name) ?? PEFT_EMBEDDING_KEY.exec(t.name);
    if (!m) {
      if (t.name.endsWith('.base_layer.weight')) continue; // as the script: a copy of the base weight, not part of the adapter
      if (/lora_magnitude_vector/.test(t.name)) fail(`"${t.name}" is a DoRA magnitude; DoRA is not supported`, 'unsupported', t.name);
      fail(`"${t.name}" is not a LoRA weight (PEFT names them base_model.model.<module>.lora_A.weight / lora_B.weight)`, 'name', t.name);
    }
    const module = m![1];
    const pair = pairs.get(module) ?? { module };
    pairs.set(module, pair);
    pair[m![2] === 'A' ? 'a' : 'b'] = t;
  }
  if (pairs.size === 0) fail(`${file} holds no LoRA weights`, 'empty');

  const ranks = new Set<number>();
  const checkPair = (p: Pair): number => {
    if (!p.a || !p.b) fail(`"${p.module}" has lora_${p.a ? 'A' : 'B'} but no lora_${p.a ? 'B' : 'A'}`, 'pair', p.module);
    const [a, b] = [p.a!, p.b!];
    if (a.shape.length !== 2 || b.shape.length !== 2) fail(`"${p.module}": lora_A is [${a.shape}] and lora_B [${b.shape}]; both must be matrices`, 'shape', p.module);
    if (a.shape[0] !== b.shape[1]) fail(`"${p.module}": lora_A has rank ${a.shape[0]} but lora_B ${b.shape[1]}`, 'rank', p.module);
    const r = a.shape[0];
    if (r < 1) fail(`"${p.module}" has rank 0`, 'rank', p.module);
    if (!config.rankPattern && r !== config.r) fail(`"${p.module}" has rank ${r} but adapter_config.json's r is ${config.r}`, 'rank', p.module);
    ranks.add(r);
    return r;
  };
  const baseDims = (name: string, module: string): number[] => {
    const dims = base.tensors.get(name);
    if (!dims) {
      const tied = name === 'output.weight' && base.tensors.has('token_embd.weight');
      fail(`"${module}" adapts ${name}, which the base ${base.file} does not have${tied ? ' (its lm_head is tied to the embeddings)' : ''}`, 'not-in-model', module);
    }
    return dims!;
  };

  const list = [...pairs.values()];
  const lastExpertOf = new Map<number, number>();
  list.forEach((p, i) => {
    const m = EXPERT.exec(p.module);
    if (m) lastExpertOf.set(Number(m[1]), i);
  });
  const experts = new Map<number, Map<string, Pair>>();
  const out: LoraTarget[] = [];
  list.forEach((p, i) => {
    const r = checkPair(p);
    const [a, b] = [p.a!, p.b!];
    const em = EXPERT.exec(p.module);
    if (em) {
      const bid = Number(em[1]);
      let layer = experts.get(bid);
      if (!layer) experts.set(bid, (layer = new Map()));
      layer.set(p.module, p);
      if (lastExpertOf.get(bid) !== i) return;
      // The layer's last expert module: one stacked tensor per projection this adapter targets (w1, w2, w3).
      for (const wid of ['w1', 'w2', 'w3']) {
        const members = [...layer.values()].filter((x) => x.module.endsWith(`.${wid}`));
        if (members.length === 0) continue;
        const name = `blk.${bid}.${EXPERT_NAMES[wid]}.weight`;
        const dims = baseDims(name, members[0].module);
        if (dims.length !== 3) fail(`${name} of the base is not a stack of experts`, 'shape', members[0].module);
        const [inDim, outDim, n] = dims;
        const as: SafetensorsTensor[] = [];
        const bs: SafetensorsTensor[] = [];
        let rank = -1;
        for (let x = 0; x < n; x++) {
          const module = `model.layers.${bid}.block_sparse_moe.experts.${x}.${wid}`;
          const e = layer.get(module);
          if (!e) {
            fail(`the adapter targets ${wid} of some experts of layer ${bid} but not "${module}"; ` +
              'convert_lora_to_gguf.py refuses such adapters too (llama.cpp stacks all experts into one tensor)', 'pair', module);
          }
          const er = e!.a!.shape[0];
          if (rank >= 0 && er !== rank) fail(`"${module}" has rank ${er}, the other experts of ${name} ${rank}`, 'rank', module);
          rank = er;
          if (e!.a!.shape[1] !== inDim || e!.b!.shape[0] !== outDim) {
            fail(`"${module}": lora_B·lora_A is [${e!.b!.shape[0]}, ${e!.a!.shape[1]}] but the base's expert weight is [${outDim}, ${inDim}]`, 'shape', module);
          }
          as.push(e!.a!);
          bs.push(e!.b!);
          layer.delete(module);
        }
        if (members.length !== n) {
          const extra = members.find((x) => layer!.has(x.module))!;
          fail(`"${extra.module}" is an expert the base (${n} experts) does not have`, 'not-in-model', extra.module);
        }
        out.push({ name, rank, aDims: [inDim, rank, n], bDims: [rank, outDim, n], a: as, b: bs });
      }
      return;
    }
    const name = mapName(`${p.module}.weight`);
    if (!name) fail(`"${p.module}" is not a module of a Llama/Mistral/Mixtral model llama.cpp knows`, 'not-in-model', p.module);
    const embedding = PEFT_EMBEDDING_KEY.test(a.name);
    if (embedding !== (name === 'token_embd.weight') || embedding !== PEFT_EMBEDDING_KEY.test(b.name)) {
      fail(`"${p.module}": the token embeddings take lora_embedding_A/B, other modules lora_A/B.weight`, 'name', p.module);
    }
    const dims = baseDims(name!, p.module);
    if (dims.length !== 2) fail(`"${p.module}" adapts ${name}, which is not a matrix in the base`, 'shape', p.module);
    if (embedding) {
      // PEFT: embedding(x, A.T) @ B.T; llama.cpp: get_rows(lora_a, x) then lora_b (build_inp_embd), so lora_a is A.T.
      const [embd, vocab] = dims;
      if (!base.tensors.has('output.weight')) {
        fail(`"${p.module}": the base ties its output projection to the token embeddings, where llama.cpp would apply this adapter too and abort`, 'unsupported', p.module);
      }
      if (a.shape[1] !== vocab || b.shape[0] !== embd) {
        fail(`"${p.module}": lora_embedding_A is [${a.shape}] and lora_embedding_B [${b.shape}], but the base's embeddings are [${vocab}, ${embd}]`, 'shape', p.module);
      }
      out.push({ name: name!, rank: r, aDims: [r, vocab], bDims: [r, embd], a: [a], b: [b], transposeA: true });
      return;
    }
    const [inDim, outDim] = dims;
    if (a.shape[1] !== inDim || b.shape[0] !== outDim) {
      fail(`"${p.module}": lora_B·lora_A is [${b.shape[0]}, ${a.shape[1]}] but ${name} of the base is [${outDim}, ${inDim}]`, 'shape', p.module);
    }
    let bGroup: number | undefined;
    const heads = p.module.endsWith('.q_proj') ? base.heads : p.module.endsWith('.k_proj') ? base.kvHeads : undefined;
    if (heads !== undefined) {
      if (outDim % (heads * 2) !== 0) fail(`"${p.module}": ${outDim} rows do not split into ${heads} heads of an even size`, 'shape', p.module);
      bGroup = outDim / heads;
    }
    out.push({ name: name!, rank: r, aDims: [inDim, r], bDims: [r, outDim], a: [a], b: [b], bGroup });
  });
  if (config.rslora && ranks.size > 1) {
    fail(`the adapter is rank-stabilized (use_rslora) with ranks ${[...ranks].join(', ')}; one GGUF alpha can express alpha/√r for one rank only`, 'unsupported');
  }

  // target_modules as a list: each must be a module of the base, and the adapter must hold weights for it.
  if (Array.isArray(config.targetModules)) {
    const inBase = new Set([...base.tensors.keys()].map((n) => COMPONENT_OF[/^(?:blk\.\d+\.)?([a-z_]+)\.weight$/.exec(n)?.[1] ?? '']).filter(Boolean));
    const adapted = new Set(list.map((p) => p.module.split('.').at(-1)!));
    for (const t of config.targetModules) {
      const last = t.split('.').at(-1)!;
      if (!inBase.has(last)) fail(`adapter_config.json targets "${t}", which the base ${base.file} does not have`, 'not-in-model', t);
      if (!adapted.has(last)) fail(`adapter_config.json targets "${t}", but the adapter holds no weights for it`, 'pair', t);
    }
  }
  return out;
}

/** A row-major [rows, cols] matrix of `size`-byte elements, transposed. */
function transposed(src: Buffer, rows: number, cols: number, size: number): Buffer {
  const out = Buffer.allocUnsafeSlow(src.length);
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < cols; j++) src.copy(out, (j * rows + i) * size, (i * cols + j) * size, (i * cols + j + 1) * size);
  }
  return out;
}

/**
 * Converts the PEFT LoRA adapter in `peftDir` into a GGUF adapter for llama.cpp, as the pinned llama.cpp's
 * convert_lora_to_gguf.py would (without general.name, which the script derives from directory names).
 *
 * @throws `TypeError` / `RangeError` for bad options.
 * @throws {@link LoraError} for an adapter that cannot be converted or does not fit the base (found before anything is written).
 * @throws {@link OutputPathError} for an output path that cannot be written safely.
 * @throws {@link AbortError} when `signal` aborts.
 */
export async function convertLora(peftDir: string, options: ConvertLoraOptions): Promise<ConvertLoraResult> {
  v.string('peftDir', peftDir, { allowEmpty: false });
  if (options === undefined || options === null) throw v.typeError('an object with base and output', 'options', options);
  const o = v.options<ConvertLoraOptions>('options', options, OPTIONS);
  const base = v.string('base', o.base, { allowEmpty: false });
  const output = v.string('output', o.output, { allowEmpty: false });
  const outType = o.outType === undefined ? 'f32' : v.oneOf('outType', o.outType, OUT_TYPES);
  const onProgress = o.onProgress === undefined ? undefined : v.func<(d: number, t: number) => void>('onProgress', o.onProgress);
  const signal = o.signal === undefined ? undefined : v.signal('signal', o.signal);
  if (endianness() !== 'LE') throw new LoraError('converting needs a little-endian machine', { reason: 'unsupported' });
  const started = Date.now();
  const adapterDir = resolve(peftDir);
  const st = await stat(adapterDir).catch(() => undefined);
  if (!st?.isDirectory()) throw new LoraError(`${adapterDir} ${st ? 'is not a directory' : 'does not exist'}`, { reason: 'config', file: adapterDir });

  const config = await readPeftConfig(adapterDir);
  const weights = join(adapterDir, 'adapter_model.safetensors');
  if (!(await isFile(weights))) {
    const bin = await isFile(join(adapterDir, 'adapter_model.bin'));
    throw new LoraError(
      bin ? `${adapterDir} holds adapter_model.bin (a PyTorch pickle); convertLora reads safetensors only (save it with save_pretrained(safe_serialization=True))`
        : `${adapterDir} has no adapter_model.safetensors`,
      { reason: 'file', file: bin ? join(adapterDir, 'adapter_model.bin') : weights },
    );
  }
  let tensors: SafetensorsTensor[];
  try {
    tensors = await readSafetensorsHeader(weights);
  } catch (error) {
    if (error instanceof ConvertError) throw new LoraError(error.message, { reason: 'file', file: weights }, { cause: error });
    throw error;
  }
  const baseInfo = await readLoraBase(base);
  if (config.invocationTokens && baseInfo.vocab !== undefined) {
    const badToken = config.invocationTokens.find((t) => t >= baseInfo.vocab!);
    if (badToken !== undefined) {
      throw new LoraError(`${config.file}: alora_invocation_tokens holds ${badToken}, outside the base's ${baseInfo.vocab} tokens`, { reason: 'config', key: 'alora_invocation_tokens', file: config.file });
    }
  }
  const targets = planLora(tensors, config, baseInfo, weights);
  const ranks = [...new Set(targets.map((t) => t.rank))].sort((x, y) => x - y);
  // llama.cpp scales by alpha / rank; a rank-stabilized adapter means alpha / √rank, which is (alpha·√rank) / rank.
  const alpha = config.rslora ? config.alpha * Math.sqrt(ranks[0]) : config.alpha;

  const metadata = new Map<string, WriterValue>([
    ['general.architecture', S(baseInfo.architecture)],
    ['general.type', S('adapter')],
    ['adapter.type', S('lora')],
    ['adapter.lora.alpha', { type: GgufValueType.FLOAT32, value: alpha }],
  ]);
  if (config.invocationTokens?.length) {
    metadata.set('adapter.alora_invocation_tokens', { type: GgufValueType.ARRAY, arrayType: GgufValueType.UINT32, value: config.invocationTokens });
  }
  metadata.set('general.quantization_version', { type: GgufValueType.UINT32, value: 2 });

  const outBytes = outType === 'f32' ? 4 : 2;
  const sizeOf = (dims: number[]) => dims.reduce((a, d) => a * d, 1) * outBytes;
  const total = targets.reduce((a, t) => a + sizeOf(t.aDims) + sizeOf(t.bDims), 0);
  const reader = new PartReader();
  let done = 0;
  const produce = (sources: SafetensorsTensor[], group?: number, transpose = false) => async function* () {
    for (const s of sources) {
      if (signal?.aborted) throw new AbortError('conversion was aborted');
      let raw = await reader.read(s.file, s.offset, s.bytes);
      if (group !== undefined) raw = permuteRows(raw, s.shape[1] * SOURCE_DTYPE_BYTES[s.dtype], group);
      if (transpose) raw = transposed(raw, s.shape[0], s.shape[1], SOURCE_DTYPE_BYTES[s.dtype]);
      const chunk = convertElements(raw, s.dtype, outType);
      yield chunk;
      done += chunk.length;
      if (done < total) onProgress?.(done, total);
    }
  };
  const writerTensors: WriterTensor[] = targets.flatMap((t) => [
    { name: `${t.name}.lora_a`, dims: t.aDims, type: GGML_TYPE_ID[outType], data: produce(t.a, undefined, t.transposeA) },
    { name: `${t.name}.lora_b`, dims: t.bDims, type: GGML_TYPE_ID[outType], data: produce(t.b, t.bGroup) },
  ]);
  const { header, sizes, alignment } = encodeGgufHeader(metadata, writerTensors);
  if (signal?.aborted) throw new AbortError('conversion was aborted');
  const out = await openOutput(output, { inputs: [config.file, weights, baseInfo.file] });
  try {
    await writeGgufTo(out, header, sizes, alignment, writerTensors);
  } catch (error) {
    await out.discard();
    throw error;
  } finally {
    await reader.close();
  }
  onProgress?.(total, total);
  return {
    output: out.path, outType, architecture: baseInfo.architecture, targets: targets.map((t) => t.name),
    tensors: writerTensors.length, ranks, alpha, bytes: (await stat(out.path)).size, seconds: (Date.now() - started) / 1000,
  };
}
