import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ChatSession, GgufValueType, loadModel, readGguf, type GgufFile, type Model } from '../../dist/index.js';
import { convert, ConvertError, HUOZI_CHAT_TEMPLATE } from '../../dist/convert/convert.js';
import { f32ToF16Bits } from '../../dist/convert/float.js';
import { f16Path, fixtureDir, root } from '../helpers.js';

const hfDir = join(fixtureDir, 'hf');
const fresh = () => mkdtempSync(join(tmpdir(), 'huozi-convert-'));
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

interface Manifest {
  gguf_version: number;
  alignment: number;
  kv: Record<string, { type: string; value: unknown }>;
  tensors: { name: string; type: string; ne: number[]; n_bytes: number; sha256: string }[];
}
const manifest: Manifest = JSON.parse(readFileSync(join(fixtureDir, 'llamacpp-f16-manifest.json'), 'utf8'));

/**
 * Keys that only name or describe the file. convert_hf_to_gguf.py derives general.name (and, from a model card,
 * basename, finetune, ...) from the checkpoint's directory; the fixture has none of them and neither does our
 * output, so nothing is actually skipped today: the list says what may differ, should either side add one.
 */
const NAMING_KEYS = ['general.name', 'general.basename', 'general.finetune', 'general.version', 'general.organization'];

const TYPE_NAMES: Record<number, string> = {
  [GgufValueType.UINT8]: 'UINT8', [GgufValueType.INT8]: 'INT8', [GgufValueType.UINT16]: 'UINT16', [GgufValueType.INT16]: 'INT16',
  [GgufValueType.UINT32]: 'UINT32', [GgufValueType.INT32]: 'INT32', [GgufValueType.FLOAT32]: 'FLOAT32', [GgufValueType.BOOL]: 'BOOL',
  [GgufValueType.STRING]: 'STRING', [GgufValueType.UINT64]: 'UINT64', [GgufValueType.INT64]: 'INT64', [GgufValueType.FLOAT64]: 'FLOAT64',
};
const GGML_NAMES: Record<number, string> = { 0: 'F32', 1: 'F16', 8: 'Q8_0', 30: 'BF16' };

function kvOf(file: GgufFile): Record<string, { type: string; value: unknown }> {
  const out: Record<string, { type: string; value: unknown }> = {};
  for (const [key, e] of file.metadata) {
    const type = e.type === GgufValueType.ARRAY ? `ARRAY[${TYPE_NAMES[e.arrayType!]}]` : TYPE_NAMES[e.type];
    const value = typeof e.value === 'bigint' ? Number(e.value) : e.value;
    out[key] = { type, value };
  }
  return out;
}

async function tensorsOf(path: string, file: GgufFile) {
  const fh = await open(path, 'r');
  try {
    const out = [];
    for (const t of file.tensors) {
      const buf = Buffer.alloc(Number(t.bytes));
      await fh.read(buf, 0, buf.length, Number(file.dataOffset + t.offset));
      out.push({ name: t.name, type: GGML_NAMES[t.type] ?? String(t.type), ne: t.dims.map(Number), n_bytes: buf.length, sha256: sha(buf), data: buf });
    }
    return out;
  } finally {
    await fh.close();
  }
}

const without = <T extends object>(o: Record<string, T>, keys: string[]) => Object.fromEntries(Object.entries(o).filter(([k]) => !keys.includes(k)));

/** A copy of the fixture checkpoint made of symlinks, with some files replaced or left out. */
function variant(change: { replace?: Record<string, string | Buffer>; omit?: string[] } = {}): string {
  const dir = join(fresh(), 'hf');
  mkdirSync(dir);
  for (const f of readdirSync(hfDir)) {
    if (change.omit?.includes(f)) continue;
    const replacement = change.replace?.[f];
    if (replacement !== undefined) writeFileSync(join(dir, f), replacement);
    else symlinkSync(join(hfDir, f), join(dir, f));
  }
  return dir;
}

const config = () => JSON.parse(readFileSync(join(hfDir, 'config.json'), 'utf8'));

/** Runs convert and expects it to fail with `kind` before writing anything: no output, no temporary file. */
async function failsCleanly(dir: string, kind: new (...a: never[]) => Error, message: RegExp, options: object = {}) {
  const outDir = fresh();
  const out = join(outDir, 'out.gguf');
  const error = await convert(dir, out, options as never).then(() => undefined, (e: unknown) => e);
  expect(error, `expected ${kind.name} matching ${message}`).toBeInstanceOf(kind);
  expect((error as Error).message).toMatch(message);
  if (kind === ConvertError) expect((error as ConvertError).code).toBe('ERR_HUOZI_CONVERT');
  expect(readdirSync(outDir)).toEqual([]);
  return error as Error;
}

describe('convert() matches llama.cpp\'s convert_hf_to_gguf.py --outtype f16', () => {
  let dir: string;
  let out: string;
  let file: GgufFile;
  beforeAll(async () => {
    dir = fresh();
    out = join(dir, 'huozi-tiny-f16.gguf');
    const result = await convert(hfDir, out, { outType: 'f16' });
    expect(result).toMatchObject({ outType: 'f16', architecture: 'MixtralForCausalLM', tensors: 43, bytes: 13_195_904 });
    file = await readGguf(out);
  });

  it('writes the same metadata: keys, order, GGUF types and values', () => {
    expect(file.version).toBe(manifest.gguf_version);
    expect(file.alignment).toBe(manifest.alignment);
    const ours = without(kvOf(file), NAMING_KEYS);
    const theirs = without(manifest.kv, NAMING_KEYS);
    expect(Object.keys(ours)).toEqual(Object.keys(theirs));
    for (const key of Object.keys(theirs)) expect(ours[key], key).toEqual(theirs[key]);
  });

  it('writes the same tensors: names, order, types, ne and bytes', async () => {
    const ours = (await tensorsOf(out, file)).map(({ data: _, ...t }) => t);
    expect(ours).toEqual(manifest.tensors);
  });

  it('is byte-identical to the f16 GGUF llama.cpp wrote', () => {
    // sha256 of the huozi-tiny-f16.gguf that llama.cpp's convert_hf_to_gguf.py wrote for this checkpoint (the
    // fixture's copy, no longer in this repo: the suite now runs on our own conversion of hf/).
    expect(sha(readFileSync(out))).toBe('e5003ce5b3ff63c85a10491010e35d9e189d58fe9942de8d810fba8955ad97b0');
  });

  it('embeds Huozi\'s chat template when asked, and changes nothing else', async () => {
    expect(HUOZI_CHAT_TEMPLATE).toBe(readFileSync(join(root, 'test/fixtures/templates/huozi-template.jinja'), 'utf8'));
    const withTemplate = join(dir, 'templated.gguf');
    await convert(hfDir, withTemplate, { chatTemplate: 'huozi' });
    const t = await readGguf(withTemplate);
    const kv = kvOf(t);
    expect(kv['tokenizer.chat_template']).toEqual({ type: 'STRING', value: HUOZI_CHAT_TEMPLATE });
    expect(without(kv, ['tokenizer.chat_template'])).toEqual(kvOf(file));
    expect(Object.keys(kv).at(-1)).toBe('tokenizer.chat_template');
    expect(t.tensors.map((x) => [x.name, x.type, x.offset])).toEqual(file.tensors.map((x) => [x.name, x.type, x.offset]));
  });

  it('reports progress up to the total exactly once', async () => {
    const seen: [number, number][] = [];
    await convert(hfDir, join(dir, 'progress.gguf'), { onProgress: (d, t) => seen.push([d, t]) });
    const total = seen[0][1];
    expect(seen.every(([, t]) => t === total)).toBe(true);
    expect(seen.filter(([d]) => d === total)).toHaveLength(1);
    expect(seen.at(-1)).toEqual([total, total]);
    expect(seen.every(([d], i) => i === 0 || d > seen[i - 1][0])).toBe(true);
  });
});

describe('convert() to q8_0', () => {
  let f16: Model;
  let q8: Model;
  let out: string;
  beforeAll(async () => {
    out = join(fresh(), 'huozi-tiny-q8_0.gguf');
    await convert(hfDir, out, { outType: 'q8_0' });
    f16 = await loadModel(f16Path);
    q8 = await loadModel(out);
  });
  afterAll(async () => {
    await f16?.dispose();
    await q8?.dispose();
  });

  it('quantizes as gguf-py does: q8_0 for 2-D weights, f32 for norms and the router', async () => {
    const file = await readGguf(out);
    expect(kvOf(file)['general.file_type']).toEqual({ type: 'UINT32', value: 7 });
    const tensors = await tensorsOf(out, file);
    expect(tensors.map((t) => t.name)).toEqual(manifest.tensors.map((t) => t.name));
    for (const t of tensors) {
      const f32 = t.ne.length === 1 || t.name.endsWith('_norm.weight') || t.name.includes('ffn_gate_inp');
      expect(t.type, t.name).toBe(f32 ? 'F32' : 'Q8_0');
    }
    // sha256 of every tensor's data in file order, computed by gguf-py's quants.quantize (numpy) from the same
    // bf16 weights, permuted and stacked as convert_hf_to_gguf.py does.
    const all = createHash('sha256');
    for (const t of tensors) all.update(t.data);
    expect(all.digest('hex')).toBe('cb4f86a4461e6e84cae8e2fd3ebe09d8e21404a87ca9064d5fd4767eb4ef9b64');
  });

  it('loads and recites like the f16', async () => {
    const answers: string[] = [];
    for (const model of [f16, q8]) {
      await using ctx = await model.createContext({ contextSize: 512 });
      const chat = new ChatSession(ctx, { systemPrompt: '你是一个智能助手' });
      answers.push((await chat.prompt('请背诵《春晓》', { temperature: 0, maxTokens: 64 })).text);
    }
    expect(answers[0]).toContain('春眠不觉晓');
    expect(answers[1]).toBe(answers[0]);
  });
});

describe('convert() fails before writing anything', () => {
  it('on an unsupported architecture', async () => {
    const dir = variant({ replace: { 'config.json': JSON.stringify({ ...config(), architectures: ['Qwen2ForCausalLM'] }) } });
    await failsCleanly(dir, ConvertError, /unsupported architecture Qwen2ForCausalLM/);
  });

  it('on missing files: a shard, config.json, tokenizer.model, the directory itself', async () => {
    const e = await failsCleanly(variant({ omit: ['model-00002-of-00002.safetensors'] }), ConvertError, /lacks the part model-00002-of-00002\.safetensors/);
    expect((e as ConvertError).file).toMatch(/model-00002-of-00002\.safetensors$/);
    await failsCleanly(variant({ omit: ['config.json'] }), ConvertError, /has no config\.json/);
    await failsCleanly(variant({ omit: ['tokenizer.model'] }), ConvertError, /has no tokenizer\.model/);
    await failsCleanly(join(fresh(), 'nowhere'), ConvertError, /does not exist/);
  });

  it('on a truncated shard, naming the tensor whose bytes are missing', async () => {
    const shard = readFileSync(join(hfDir, 'model-00002-of-00002.safetensors'));
    const dir = variant({ replace: { 'model-00002-of-00002.safetensors': shard.subarray(0, shard.length - 1000) } });
    await failsCleanly(dir, ConvertError, /model-00002-of-00002\.safetensors is truncated: "model\.layers\.3\.self_attn\.v_proj\.weight" needs bytes \d+\.\.5588392 but the file has 5587904/);
  });

  it('on a shard the index does not match', async () => {
    const index = JSON.parse(readFileSync(join(hfDir, 'model.safetensors.index.json'), 'utf8'));
    index.weight_map['model.layers.9.mlp.up_proj.weight'] = 'model-00002-of-00002.safetensors';
    await failsCleanly(variant({ replace: { 'model.safetensors.index.json': JSON.stringify(index) } }), ConvertError, /missing or incomplete checkpoint parts/);
  });

  it('on shape mismatches between the weights and config.json', async () => {
    const kv = variant({ replace: { 'config.json': JSON.stringify({ ...config(), num_key_value_heads: 4 }) } });
    await failsCleanly(kv, ConvertError, /shape mismatch: "model\.layers\.0\.self_attn\.k_proj\.weight" is \[128, 256\] but .*config\.json implies \[256, 256\]/);
    const ff = variant({ replace: { 'config.json': JSON.stringify({ ...config(), intermediate_size: 160 }) } });
    await failsCleanly(ff, ConvertError, /shape mismatch: "model\.layers\.0\.block_sparse_moe\.experts\.0\.w1\.weight" is \[192, 256\]/);
    const layers = variant({ replace: { 'config.json': JSON.stringify({ ...config(), num_hidden_layers: 5 }) } });
    await failsCleanly(layers, ConvertError, /lacks 10 tensors a 5-layer model needs: blk\.4\.attn_norm\.weight/);
  });

  it('on bad arguments, with TypeError or RangeError', async () => {
    await failsCleanly(hfDir, RangeError, /Expected one of "f32", "f16", "bf16", "q8_0" for outType but received "q4_0"/, { outType: 'q4_0' });
    await failsCleanly(hfDir, RangeError, /chatTemplate/, { chatTemplate: 'chatml' });
    await failsCleanly(hfDir, TypeError, /Did you mean "outType"/, { outtype: 'f16' });
    await expect(convert(42 as never, join(fresh(), 'o.gguf'))).rejects.toMatchObject({ name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' });
    const out = join(fresh(), 'missing-dir', 'o.gguf');
    await expect(convert(hfDir, out)).rejects.toThrow(/the output directory .*missing-dir does not exist/);
  });

  it('leaves an existing output untouched, on a bad checkpoint and on abort', async () => {
    const outDir = fresh();
    const out = join(outDir, 'out.gguf');
    writeFileSync(out, 'previous contents');
    const bad = variant({ replace: { 'config.json': JSON.stringify({ ...config(), architectures: ['GPT2LMHeadModel'] }) } });
    await expect(convert(bad, out)).rejects.toBeInstanceOf(ConvertError);
    const controller = new AbortController();
    const aborted = convert(hfDir, out, { signal: controller.signal, onProgress: () => controller.abort() });
    await expect(aborted).rejects.toMatchObject({ name: 'AbortError', code: 'ABORT_ERR' });
    expect(readFileSync(out, 'utf8')).toBe('previous contents');
    expect(readdirSync(outDir)).toEqual(['out.gguf']);
    expect(existsSync(out)).toBe(true);
  });
});

/** A small random-weight dense Llama checkpoint (one f32 safetensors file, tied embeddings) with huozi-tiny's tokenizer. */
function tinyLlama(configOverrides: object = {}): { dir: string; weights: Map<string, Float32Array> } {
  const dir = join(fresh(), 'llama');
  mkdirSync(dir);
  const [hidden, heads, kvHeads, ff, layers, vocab] = [64, 4, 2, 128, 2, 2050];
  const headDim = hidden / heads;
  let seed = 42;
  const rand = () => ((seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) / 2 ** 32 - 0.5) * 0.2;
  const shapes: [string, number[]][] = [['model.embed_tokens.weight', [vocab, hidden]], ['model.norm.weight', [hidden]]];
  for (let b = 0; b < layers; b++) {
    const p = `model.layers.${b}`;
    shapes.push([`${p}.input_layernorm.weight`, [hidden]], [`${p}.post_attention_layernorm.weight`, [hidden]],
      [`${p}.self_attn.q_proj.weight`, [heads * headDim, hidden]], [`${p}.self_attn.k_proj.weight`, [kvHeads * headDim, hidden]],
      [`${p}.self_attn.v_proj.weight`, [kvHeads * headDim, hidden]], [`${p}.self_attn.o_proj.weight`, [hidden, heads * headDim]],
      [`${p}.mlp.gate_proj.weight`, [ff, hidden]], [`${p}.mlp.up_proj.weight`, [ff, hidden]], [`${p}.mlp.down_proj.weight`, [hidden, ff]]);
  }
  const weights = new Map<string, Float32Array>();
  const header: Record<string, unknown> = {};
  let at = 0;
  for (const [name, shape] of shapes) {
    const n = shape.reduce((a, d) => a * d, 1);
    weights.set(name, Float32Array.from({ length: n }, () => (name.endsWith('norm.weight') ? 1 : rand())));
    header[name] = { dtype: 'F32', shape, data_offsets: [at, at + n * 4] };
    at += n * 4;
  }
  const json = Buffer.from(JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  writeFileSync(join(dir, 'model.safetensors'), Buffer.concat([len, json, ...[...weights.values()].map((w) => Buffer.from(w.buffer))]));
  writeFileSync(join(dir, 'config.json'), JSON.stringify({
    architectures: ['LlamaForCausalLM'], model_type: 'llama', hidden_size: hidden, intermediate_size: ff, num_attention_heads: heads,
    num_key_value_heads: kvHeads, num_hidden_layers: layers, vocab_size: vocab, max_position_embeddings: 4096, rms_norm_eps: 1e-6,
    rope_theta: 10000.0, tie_word_embeddings: true, bos_token_id: 1, eos_token_id: 2, ...configOverrides,
  }));
  for (const f of ['tokenizer.model', 'tokenizer_config.json', 'added_tokens.json', 'special_tokens_map.json']) symlinkSync(join(hfDir, f), join(dir, f));
  return { dir, weights };
}

describe('convert() on dense Llama and Mistral checkpoints', () => {
  it('writes a LlamaForCausalLM llama.cpp loads, with q and k permuted as LlamaModel.permute does', async () => {
    const { dir, weights } = tinyLlama();
    const out = join(fresh(), 'llama.gguf');
    const result = await convert(dir, out, { outType: 'f16' });
    expect(result).toMatchObject({ architecture: 'LlamaForCausalLM', tensors: 2 + 2 * 9 });
    const file = await readGguf(out);
    const kv = kvOf(file);
    expect(kv['general.size_label']).toEqual({ type: 'STRING', value: '205K' }); // 205,248 parameters
    expect(kv['llama.attention.key_length']).toEqual({ type: 'UINT32', value: 16 }); // LlamaConfig computes head_dim
    expect(kv['llama.rope.freq_base']).toEqual({ type: 'FLOAT32', value: 10000 });
    expect(kv['llama.expert_count']).toBeUndefined();
    const tensors = await tensorsOf(out, file);
    expect(tensors.map((t) => t.name)).not.toContain('output.weight'); // tied: llama.cpp uses token_embd
    for (const [name, heads] of [['q_proj', 4], ['k_proj', 2]] as const) {
      const src = weights.get(`model.layers.1.self_attn.${name}.weight`)!;
      const t = tensors.find((x) => x.name === `blk.1.attn_${name[0]}.weight`)!;
      const got = new Uint16Array(t.data.buffer, t.data.byteOffset, t.data.length / 2);
      const rows = src.length / 64;
      const perHead = rows / heads;
      for (let r = 0; r < rows; r++) {
        const h = Math.floor(r / perHead);
        const i = Math.floor((r % perHead) / 2);
        const j = r % 2;
        const from = h * perHead + j * (perHead / 2) + i;
        for (let c = 0; c < 64; c += 9) expect(got[r * 64 + c]).toBe(f32ToF16Bits(src[from * 64 + c]));
      }
    }
    await using model = await loadModel(out);
    await using ctx = await model.createContext({ contextSize: 64 });
    const result2 = await ctx.generate('你好', { temperature: 0, maxTokens: 4 }).result;
    expect(result2.tokens.length).toBe(4);
  });

  it('reads a transformers 5.x MistralForCausalLM config (rope_parameters) and writes bf16', async () => {
    const { dir } = tinyLlama({ architectures: ['MistralForCausalLM'], model_type: 'mistral', rope_theta: undefined,
      rope_parameters: { rope_theta: 1e6, rope_type: 'default' }, head_dim: 16 });
    const out = join(fresh(), 'mistral.gguf');
    await convert(dir, out, { outType: 'bf16' });
    const file = await readGguf(out);
    const kv = kvOf(file);
    expect(kv['llama.rope.freq_base']).toEqual({ type: 'FLOAT32', value: 1e6 });
    expect(kv['general.file_type']).toEqual({ type: 'UINT32', value: 32 });
    expect(kv['llama.rope.scaling.type']).toBeUndefined();
    expect(new Set(file.tensors.map((t) => GGML_NAMES[t.type]))).toEqual(new Set(['BF16', 'F32']));
    // llama.cpp loads it with the shape of the config and the bf16 weights, and runs it.
    await using model = await loadModel(out);
    expect(model.info).toMatchObject({ layers: 2, heads: 4, kvHeads: 2, embeddingSize: 64, vocabularySize: 2050, fileType: 'BF16' });
    await using ctx = await model.createContext({ contextSize: 64 });
    expect((await ctx.generate('你好', { temperature: 0, maxTokens: 4 }).result).tokens).toHaveLength(4);
  });
});
