import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ChatSession, convert, convertLora, GgufError, GgufValueType, LoraError, loadModel, Model, readGguf, validateLoraFile, validateLoraForModel, writeGguf,
  type GgufFile,
} from '../../dist/index.js';
import { toF32 } from '../../dist/convert/float.js';
import { f16Path, fixtureDir, reference, root } from '../helpers.js';
import {
  f32Tensor, fresh, loadGgufForEdit, loraDir, peftVariant, readSafetensors, rewriteGguf, tinyLlamaAdapter, tinyLlamaBase, type EditableTensor,
} from '../lora-helpers.js';
// @ts-expect-error: a script without types
import { mergeLora } from '../../scripts/lora-merge.mjs';

const hfDir = join(fixtureDir, 'hf');
const cli = join(root, 'dist', 'cli', 'main.js');
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

/** The GGUF targets in convert_lora_to_gguf.py's order: sorted PEFT names, experts stacked at the layer's last expert. */
const EXPECTED_TARGETS = [0, 1, 2, 3].flatMap((l) => ['ffn_gate_exps', 'ffn_down_exps', 'ffn_up_exps', 'attn_k', 'attn_output', 'attn_q', 'attn_v'].map((n) => `blk.${l}.${n}.weight`));

/** The fixture plus PEFT's embedding pair (lora_embedding_A [8, n_vocab], lora_embedding_B [n_embd, 8], f32). */
function embeddingVariant() {
  const a = f32Tensor('base_model.model.model.embed_tokens.lora_embedding_A', [8, 2050], 77, 1);
  const b = f32Tensor('base_model.model.model.embed_tokens.lora_embedding_B', [256, 8], 78, 0.2);
  const dir = peftVariant({ config: { target_modules: ['embed_tokens', 'k_proj', 'o_proj', 'q_proj', 'v_proj', 'w1', 'w2', 'w3'] }, tensors: (ts) => [...ts, a, b] });
  return { dir, a, b };
}

async function expectLoraError(p: Promise<unknown>, reason: string, message: RegExp): Promise<LoraError> {
  const error = await p.then(() => undefined, (e: unknown) => e);
  expect(error, `expected LoraError ${reason} ${message}`).toBeInstanceOf(LoraError);
  expect((error as LoraError).code).toBe('ERR_HUOZI_LORA');
  expect((error as LoraError).message).toMatch(message);
  expect((error as LoraError).reason).toBe(reason);
  return error as LoraError;
}

let model: GgufFile;
let adapterF16: string;
let adapterF32: string;
beforeAll(async () => {
  model = await readGguf(f16Path);
  adapterF16 = join(fresh(), 'lora-f16.gguf');
  adapterF32 = join(fresh(), 'lora-f32.gguf');
  await convertLora(loraDir, { base: hfDir, output: adapterF16, outType: 'f16' });
  await convertLora(loraDir, { base: f16Path, output: adapterF32 });
});

describe('convertLora() writes what convert_lora_to_gguf.py writes', () => {
  it('metadata: general.architecture, general.type, adapter.type, adapter.lora.alpha, quantization version, in that order', async () => {
    const file = await readGguf(adapterF32);
    const kv = [...file.metadata.values()].map((e) => [e.key, e.type, e.value]);
    expect(kv).toEqual([
      ['general.architecture', GgufValueType.STRING, 'llama'],
      ['general.type', GgufValueType.STRING, 'adapter'],
      ['adapter.type', GgufValueType.STRING, 'lora'],
      ['adapter.lora.alpha', GgufValueType.FLOAT32, 16],
      ['general.quantization_version', GgufValueType.UINT32, 2],
    ]);
  });

  it('tensors: X.lora_a [in, r] and X.lora_b [r, out] for each target, experts stacked [.., .., 8], in the script\'s order', async () => {
    for (const [path, type] of [[adapterF32, 0], [adapterF16, 1]] as const) {
      const file = await readGguf(path);
      expect(file.tensors.map((t) => t.name)).toEqual(EXPECTED_TARGETS.flatMap((n) => [`${n}.lora_a`, `${n}.lora_b`]));
      expect(new Set(file.tensors.map((t) => t.type))).toEqual(new Set([type]));
      const dims = Object.fromEntries(file.tensors.map((t) => [t.name, t.dims.map(Number)]));
      expect(dims['blk.0.attn_q.weight.lora_a']).toEqual([256, 8]);
      expect(dims['blk.0.attn_q.weight.lora_b']).toEqual([8, 256]);
      expect(dims['blk.2.attn_k.weight.lora_b']).toEqual([8, 128]);
      expect(dims['blk.3.ffn_gate_exps.weight.lora_a']).toEqual([256, 8, 8]);
      expect(dims['blk.3.ffn_gate_exps.weight.lora_b']).toEqual([8, 192, 8]);
      expect(dims['blk.1.ffn_down_exps.weight.lora_a']).toEqual([192, 8, 8]);
      expect(dims['blk.1.ffn_down_exps.weight.lora_b']).toEqual([8, 256, 8]);
    }
  });

  it('data: lora_A as it is, lora_B with q/k rows permuted as LlamaModel.permute, experts stacked in order', async () => {
    const peft = new Map(readSafetensors(join(loraDir, 'adapter_model.safetensors')).map((t) => [t.name, t]));
    const { tensors } = await loadGgufForEdit(adapterF16);
    const out = new Map(tensors.map((t) => [t.name, t.data]));
    const p = (m: string, ab: 'A' | 'B') => peft.get(`base_model.model.model.layers.${m}.lora_${ab}.weight`)!.data;
    expect(out.get('blk.1.attn_q.weight.lora_a')!.equals(p('1.self_attn.q_proj', 'A'))).toBe(true);
    expect(out.get('blk.1.attn_v.weight.lora_b')!.equals(p('1.self_attn.v_proj', 'B'))).toBe(true);
    expect(out.get('blk.1.attn_output.weight.lora_b')!.equals(p('1.self_attn.o_proj', 'B'))).toBe(true);
    for (const [m, name, heads] of [['q_proj', 'attn_q', 4], ['k_proj', 'attn_k', 2]] as const) {
      const src = p(`2.self_attn.${m}`, 'B');
      const got = out.get(`blk.2.${name}.weight.lora_b`)!;
      const rowBytes = 8 * 2;
      const rows = src.length / rowBytes;
      const perHead = rows / heads;
      expect(got.equals(src)).toBe(false);
      for (let r = 0; r < rows; r++) {
        const h = Math.floor(r / perHead);
        const i = Math.floor((r % perHead) / 2);
        const from = h * perHead + (r % 2) * (perHead / 2) + i;
        expect(got.subarray(r * rowBytes, (r + 1) * rowBytes).equals(src.subarray(from * rowBytes, (from + 1) * rowBytes)), `${name} row ${r}`).toBe(true);
      }
    }
    const stack = (l: number, w: string, ab: 'A' | 'B') => Buffer.concat([0, 1, 2, 3, 4, 5, 6, 7].map((e) => p(`${l}.block_sparse_moe.experts.${e}.${w}`, ab)));
    expect(out.get('blk.0.ffn_gate_exps.weight.lora_a')!.equals(stack(0, 'w1', 'A'))).toBe(true);
    expect(out.get('blk.3.ffn_down_exps.weight.lora_b')!.equals(stack(3, 'w2', 'B'))).toBe(true);
    expect(out.get('blk.2.ffn_up_exps.weight.lora_a')!.equals(stack(2, 'w3', 'A'))).toBe(true);
    // f32 is the same values widened exactly.
    const wide = (await loadGgufForEdit(adapterF32)).tensors.find((t) => t.name === 'blk.2.attn_q.weight.lora_b')!.data;
    expect(Buffer.from(toF32(out.get('blk.2.attn_q.weight.lora_b')!, 'F16').buffer).equals(wide)).toBe(true);
  });

  it('the same file from the HF base and from the GGUF base; bf16 too; progress reaches the total once', async () => {
    const fromHf = join(fresh(), 'a.gguf');
    const seen: [number, number][] = [];
    const r = await convertLora(loraDir, { base: hfDir, output: fromHf, onProgress: (d, t) => seen.push([d, t]) });
    expect(r).toMatchObject({ outType: 'f32', architecture: 'llama', tensors: 56, ranks: [8], alpha: 16 });
    expect(r.targets).toEqual(EXPECTED_TARGETS);
    expect(sha(readFileSync(fromHf))).toBe(sha(readFileSync(adapterF32)));
    expect(seen.at(-1)).toEqual([seen[0][1], seen[0][1]]);
    expect(seen.filter(([d, t]) => d === t)).toHaveLength(1);
    const bf16 = join(fresh(), 'b.gguf');
    await convertLora(loraDir, { base: f16Path, output: bf16, outType: 'bf16' });
    expect(new Set((await readGguf(bf16)).tensors.map((t) => t.type))).toEqual(new Set([30]));
    validateLoraForModel(await readGguf(bf16), model);
  });

  it('a rank-stabilized adapter gets alpha·√r, so that llama.cpp\'s alpha/r is PEFT\'s alpha/√r', async () => {
    const out = join(fresh(), 'rs.gguf');
    const r = await convertLora(peftVariant({ config: { use_rslora: true } }), { base: f16Path, output: out });
    expect(r.alpha).toBeCloseTo(16 * Math.sqrt(8), 5);
    expect((await readGguf(out)).metadata.get('adapter.lora.alpha')!.value).toBeCloseTo(16 * Math.sqrt(8), 4);
  });

  it('PEFT\'s embedding adapter: token_embd.weight.lora_a is lora_embedding_A transposed ([r, n_vocab] in ggml), lora_b is B, first in the file', async () => {
    const { dir, a, b } = embeddingVariant();
    const out = join(fresh(), 'embd.gguf');
    const r = await convertLora(dir, { base: hfDir, output: out });
    expect(r.targets).toEqual(['token_embd.weight', ...EXPECTED_TARGETS]);
    const { tensors } = await loadGgufForEdit(out);
    const [ta, tb] = tensors;
    expect([ta.name, ta.dims, tb.name, tb.dims]).toEqual(['token_embd.weight.lora_a', [8, 2050], 'token_embd.weight.lora_b', [8, 256]]);
    expect(tb.data.equals(b.data)).toBe(true);
    const src = new Float32Array(a.data.buffer.slice(a.data.byteOffset, a.data.byteOffset + a.data.length));
    const got = new Float32Array(ta.data.buffer.slice(ta.data.byteOffset, ta.data.byteOffset + ta.data.length));
    for (const [k, v] of [[0, 0], [3, 1], [7, 2049], [5, 1000]]) expect(got[v * 8 + k]).toBe(src[k * 2050 + v]);
    expect((await validateLoraFile(out, f16Path)).targets[0]).toEqual({ name: 'token_embd.weight', rank: 8 });
  });

  it('writes aLoRA invocation tokens as u32, as the script does', async () => {
    const out = join(fresh(), 'alora.gguf');
    await convertLora(peftVariant({ config: { alora_invocation_tokens: [2048, 5, 6] } }), { base: f16Path, output: out });
    const e = (await readGguf(out)).metadata.get('adapter.alora_invocation_tokens')!;
    expect([e.type, e.arrayType, e.value]).toEqual([GgufValueType.ARRAY, GgufValueType.UINT32, [2048, 5, 6]]);
    expect(validateLoraForModel(await readGguf(out), model).invocationTokens).toEqual([2048, 5, 6]);
  });
});

describe('convertLora() refuses what llama.cpp cannot apply, before writing anything', () => {
  const refuses = async (dir: string, reason: string, message: RegExp, base = hfDir) => {
    const outDir = fresh();
    await expectLoraError(convertLora(dir, { base, output: join(outDir, 'o.gguf') }), reason, message);
    expect(readdirSync(outDir)).toEqual([]);
  };

  it('PEFT settings: DoRA, biases, modules_to_save, fan_in_fan_out, per-module alpha, other PEFT types, invocation_string alone', async () => {
    await refuses(peftVariant({ config: { use_dora: true } }), 'unsupported', /use_dora is set: DoRA/);
    await refuses(peftVariant({ config: { bias: 'all' } }), 'unsupported', /bias is "all"/);
    await refuses(peftVariant({ config: { modules_to_save: ['lm_head'] } }), 'unsupported', /modules_to_save is \["lm_head"\]/);
    await refuses(peftVariant({ config: { fan_in_fan_out: true } }), 'unsupported', /fan_in_fan_out is set/);
    await refuses(peftVariant({ config: { alpha_pattern: { q_proj: 32 } } }), 'unsupported', /alpha_pattern/);
    await refuses(peftVariant({ config: { peft_type: 'IA3' } }), 'unsupported', /peft_type is "IA3"/);
    await refuses(peftVariant({ config: { invocation_string: '<|x|>' } }), 'unsupported', /invocation_string/);
    await refuses(peftVariant({ config: { r: 0 } }), 'config', /r is 0/);
    await refuses(peftVariant({ config: { lora_alpha: undefined } }), 'config', /lora_alpha is missing/);
    await refuses(peftVariant({ config: { alora_invocation_tokens: [5000] } }), 'config', /5000, outside the base's 2050 tokens/);
  });

  it('adapter_model.bin, a missing config, a truncated safetensors', async () => {
    const bin = peftVariant({ bin: true });
    await refuses(bin, 'file', /adapter_model\.bin .*reads safetensors only/);
    const noConfig = peftVariant();
    writeFileSync(join(noConfig, 'adapter_config.json'), '{"r": 8');
    await refuses(noConfig, 'config', /not valid JSON/);
    const cut = peftVariant();
    const st = readFileSync(join(cut, 'adapter_model.safetensors'));
    writeFileSync(join(cut, 'adapter_model.safetensors'), st.subarray(0, st.length - 10));
    await refuses(cut, 'file', /truncated/);
  });

  it('a target module the base lacks, a layer it lacks, a lone lora_A, rank and shape mismatches, partial experts', async () => {
    await refuses(peftVariant({ config: { target_modules: ['q_proj', 'gate_proj'] } }), 'not-in-model', /targets "gate_proj", which the base/);
    await refuses(peftVariant({ config: { target_modules: ['q_proj', 'gate'] } }), 'pair', /targets "gate", but the adapter holds no weights for it/);
    const layer9 = (ts: ReturnType<typeof readSafetensors>) => ts.map((t) => ({ ...t, name: t.name.replace('layers.3.self_attn', 'layers.9.self_attn') }));
    await refuses(peftVariant({ tensors: layer9 }), 'not-in-model', /blk\.9\.attn_k\.weight, which the base .* does not have/);
    await refuses(peftVariant({ tensors: (ts) => ts.filter((t) => !t.name.endsWith('layers.1.self_attn.v_proj.lora_B.weight')) }), 'pair', /"model\.layers\.1\.self_attn\.v_proj" has lora_A but no lora_B/);
    const rank4 = (ts: ReturnType<typeof readSafetensors>) => ts.map((t) => (t.name.endsWith('layers.0.self_attn.q_proj.lora_B.weight') ? { ...t, shape: [256, 4], data: t.data.subarray(0, 256 * 4 * 2) } : t));
    await refuses(peftVariant({ tensors: rank4 }), 'rank', /q_proj": lora_A has rank 8 but lora_B 4/);
    const wide = (ts: ReturnType<typeof readSafetensors>) => ts.map((t) => (t.name.endsWith('layers.0.self_attn.o_proj.lora_A.weight') ? f32Tensor(t.name, [8, 512]) : t));
    await refuses(peftVariant({ tensors: wide }), 'shape', /o_proj": lora_B·lora_A is \[256, 512\] but blk\.0\.attn_output\.weight of the base is \[256, 256\]/);
    await refuses(peftVariant({ tensors: (ts) => ts.filter((t) => !t.name.includes('layers.2.block_sparse_moe.experts.5.w3')) }), 'pair', /targets w3 of some experts of layer 2 but not "model\.layers\.2\.block_sparse_moe\.experts\.5\.w3"/);
    await refuses(peftVariant({ tensors: (ts) => [...ts, f32Tensor('base_model.model.model.embed_tokens.lora_embedding_A', [8, 2050])] }), 'pair', /"model\.embed_tokens" has lora_A but no lora_B/);
    await refuses(peftVariant({ tensors: (ts) => [...ts, f32Tensor('base_model.model.model.embed_tokens.lora_embedding_A', [8, 2000]), f32Tensor('base_model.model.model.embed_tokens.lora_embedding_B', [256, 8])] }),
      'shape', /lora_embedding_A is \[8,2000\] and lora_embedding_B \[256,8\], but the base's embeddings are \[2050, 256\]/);
    await refuses(peftVariant({ tensors: (ts) => [...ts, f32Tensor('base_model.model.model.embed_tokens.lora_A.weight', [8, 2050]), f32Tensor('base_model.model.model.embed_tokens.lora_B.weight', [256, 8])] }),
      'name', /the token embeddings take lora_embedding_A\/B/);
    await refuses(peftVariant({ tensors: (ts) => [...ts, f32Tensor('base_model.model.model.norm.weight', [256])] }), 'name', /"base_model\.model\.model\.norm\.weight" is not a LoRA weight/);
  });

  it('an embedding adapter on a base whose output is tied to its embeddings (llama.cpp would abort)', async () => {
    const dir = peftVariant({ config: { target_modules: ['embed_tokens'] }, tensors: () => [
      f32Tensor('base_model.model.model.embed_tokens.lora_embedding_A', [8, 2050]), f32Tensor('base_model.model.model.embed_tokens.lora_embedding_B', [64, 8])] });
    await refuses(dir, 'unsupported', /"model\.embed_tokens": the base ties its output projection to the token embeddings/, tinyLlamaBase());
  });

  it('an adapter for a model of another shape or architecture', async () => {
    const llama = tinyLlamaBase();
    await refuses(loraDir, 'not-in-model', /adapts blk\.0\.ffn_gate_exps\.weight, which the base .* does not have/, llama);
    await refuses(tinyLlamaAdapter(), 'shape', /q_proj": lora_B·lora_A is \[64, 64\] but blk\.0\.attn_q\.weight of the base is \[256, 256\]/, hfDir);
    // A GGUF base that is not llama, and one that is an adapter.
    const qwen = await rewriteGguf(f16Path, { metadata: (m) => m.set('general.architecture', { type: GgufValueType.STRING, value: 'qwen2' }) });
    await refuses(loraDir, 'architecture', /is a "qwen2" model/, qwen);
    await refuses(loraDir, 'base', /is a GGUF of type "adapter", not a model/, adapterF32);
  });

  it('bad options: TypeError / RangeError naming them', async () => {
    const out = join(fresh(), 'o.gguf');
    await expect(convertLora(loraDir, { base: hfDir, output: out, outType: 'q8_0' as never })).rejects.toMatchObject({ name: 'RangeError', message: expect.stringMatching(/outType/) });
    await expect(convertLora(loraDir, { base: hfDir, output: out, outtype: 'f16' } as never)).rejects.toMatchObject({ name: 'TypeError', message: expect.stringMatching(/Did you mean "outType"/) });
    await expect(convertLora(loraDir, { output: out } as never)).rejects.toMatchObject({ name: 'TypeError', message: expect.stringMatching(/base/) });
    await expect(convertLora(loraDir, undefined as never)).rejects.toMatchObject({ name: 'TypeError' });
    expect(existsSync(out)).toBe(false);
  });
});

describe('validateLoraForModel()', () => {
  const edited = (edit: Parameters<typeof rewriteGguf>[1]) => rewriteGguf(adapterF16, edit);
  const refuses = async (path: string, reason: string, message: RegExp, tensor?: string) => {
    const e = await expectLoraError(validateLoraFile(path, f16Path), reason, message);
    if (tensor !== undefined) expect(e.tensor).toBe(tensor);
  };
  const retype = (name: string, type: number, bytesPerRowOf256?: number) => (ts: EditableTensor[]) =>
    ts.map((t) => (t.name === name ? { ...t, type, data: Buffer.alloc(bytesPerRowOf256 === undefined ? t.data.length : (t.dims.reduce((a, d) => a * d, 1) / 256) * bytesPerRowOf256) } : t));

  it('accepts the converted fixture (f16 and f32) against the f16 model', async () => {
    const check = await validateLoraFile(adapterF16, f16Path);
    expect(check).toMatchObject({ architecture: 'llama', alpha: 16, skipped: [] });
    expect(check.targets.map((t) => t.name)).toEqual(EXPECTED_TARGETS);
    expect(new Set(check.targets.map((t) => t.rank))).toEqual(new Set([8]));
    validateLoraForModel(await readGguf(adapterF32), model, adapterF32);
    // A token-embedding pair as convert_lora_to_gguf.py writes one (A and B flipped: ne [r, n_vocab] and [r, n_embd]).
    const embd = await rewriteGguf(adapterF16, { tensors: (ts) => [...ts, { name: 'token_embd.weight.lora_a', dims: [8, 2050], type: 1, data: Buffer.alloc(8 * 2050 * 2) },
      { name: 'token_embd.weight.lora_b', dims: [8, 256], type: 1, data: Buffer.alloc(8 * 256 * 2) }] });
    expect((await validateLoraFile(embd, f16Path)).targets.at(-1)).toEqual({ name: 'token_embd.weight', rank: 8 });
  });

  it('refuses another model\'s adapter', async () => {
    const llama = tinyLlamaBase();
    const out = join(fresh(), 'other.gguf');
    await convertLora(tinyLlamaAdapter(), { base: llama, output: out, outType: 'f16' });
    await refuses(out, 'shape', /"blk\.0\.attn_q\.weight\.lora_a" is \[64, 4\]; its first dimension must be the model's 256/, 'blk.0.attn_q.weight.lora_a');
    // and the other way round: huozi-tiny's adapter on the small Llama
    const llamaGguf = join(fresh(), 'llama.gguf');
    await convert(llama, llamaGguf);
    await expectLoraError(validateLoraFile(adapterF16, llamaGguf), 'not-in-model', /"blk\.0\.ffn_gate_exps\.weight\.lora_a" adapts "blk\.0\.ffn_gate_exps\.weight", which the model does not have/);
    // A token-embedding pair on a model whose output is tied to the embeddings: llama.cpp would apply it to the output too (abort).
    const embd = join(fresh(), 'embd.gguf');
    const md = new Map<string, import('../../dist/index.js').WriterValue>([['general.architecture', { type: GgufValueType.STRING, value: 'llama' }],
      ['general.type', { type: GgufValueType.STRING, value: 'adapter' }], ['adapter.type', { type: GgufValueType.STRING, value: 'lora' }]]);
    await writeGguf(embd, md, [{ name: 'token_embd.weight.lora_a', dims: [4, 2050], type: 0, data: () => [Buffer.alloc(4 * 2050 * 4)] },
      { name: 'token_embd.weight.lora_b', dims: [4, 64], type: 0, data: () => [Buffer.alloc(4 * 64 * 4)] }]);
    await expectLoraError(validateLoraFile(embd, llamaGguf), 'unsupported', /"token_embd\.weight": the model ties its output projection to the token embeddings/);
  });

  it('refuses a rank mismatch, a layer the model lacks (blk.99), a missing half, a wrong n_expert, a 3-D pair on a matrix', async () => {
    await refuses(await edited({ tensors: (ts) => ts.map((t) => (t.name === 'blk.0.attn_q.weight.lora_b' ? { ...t, dims: [4, 256], data: t.data.subarray(0, 4 * 256 * 2) } : t)) }),
      'rank', /"blk\.0\.attn_q\.weight": lora_a has rank 8, lora_b 4/, 'blk.0.attn_q.weight.lora_b');
    await refuses(await edited({ tensors: (ts) => ts.map((t) => (t.name.startsWith('blk.3.attn_v.') ? { ...t, name: t.name.replace('blk.3.', 'blk.99.') } : t)) }),
      'not-in-model', /adapts "blk\.99\.attn_v\.weight", which the model does not have/, 'blk.99.attn_v.weight.lora_a');
    await refuses(await edited({ tensors: (ts) => ts.filter((t) => t.name !== 'blk.2.attn_k.weight.lora_a') }), 'pair', /"blk\.2\.attn_k\.weight" has a lora_b but no lora_a/, 'blk.2.attn_k.weight.lora_a');
    const fourExperts = (ts: EditableTensor[]) => ts.map((t) => (t.name.startsWith('blk.1.ffn_up_exps.') ? { ...t, dims: [t.dims[0], t.dims[1], 4], data: t.data.subarray(0, t.data.length / 2) } : t));
    await refuses(await edited({ tensors: fourExperts }), 'shape', /"blk\.1\.ffn_up_exps\.weight\.lora_a" stacks 4 experts but the model's "blk\.1\.ffn_up_exps\.weight" has 8/, 'blk.1.ffn_up_exps.weight.lora_a');
    const stacked = (ts: EditableTensor[]) => ts.map((t) => (t.name.startsWith('blk.0.attn_output.') ? { ...t, dims: [...t.dims, 2], data: Buffer.concat([t.data, t.data]) } : t));
    await refuses(await edited({ tensors: stacked }), 'shape', /"blk\.0\.attn_output\.weight\.lora_a" is \[256, 8, 2\], 3-dimensional, but the model's "blk\.0\.attn_output\.weight" is a matrix/);
    const norm = (ts: EditableTensor[]) => [...ts, { name: 'blk.0.attn_norm.weight.lora_a', dims: [256, 8], type: 1, data: Buffer.alloc(4096) }, { name: 'blk.0.attn_norm.weight.lora_b', dims: [8, 1], type: 1, data: Buffer.alloc(16) }];
    await refuses(await edited({ tensors: norm }), 'not-in-model', /"blk\.0\.attn_norm\.weight" is \[256\] in the model; llama\.cpp applies LoRA to weight matrices only/);
  });

  it('refuses tensor types the LoRA matmuls do not take, names llama.cpp rejects, and an adapter with no pairs', async () => {
    await refuses(await edited({ tensors: retype('blk.0.attn_q.weight.lora_a', 8, 272) }), 'type', /"blk\.0\.attn_q\.weight\.lora_a" is q8_0; LoRA tensors must be f32, f16, bf16/, 'blk.0.attn_q.weight.lora_a');
    await refuses(await edited({ tensors: retype('blk.1.ffn_down_exps.weight.lora_b', 26, 1024) }), 'type', /is i32/);
    await refuses(await edited({ tensors: (ts) => ts.map((t) => (t.name === 'blk.0.attn_q.weight.lora_a' ? { ...t, name: 'blk.0.attn_q.weight.lora_x' } : t)) }), 'name', /neither a \.lora_a nor a \.lora_b/);
    await refuses(await edited({ tensors: (ts) => ts.map((t) => ({ ...t, name: t.name.replace('blk.0.attn_q.weight', 'blk.0.attn_q.weight.lora_a') })) }), 'name', /holds \.lora_a\/\.lora_b twice/);
    await refuses(await edited({ tensors: () => [] }), 'empty', /no LoRA tensors/);
    // mergekit's full norm weights: llama.cpp skips them, and so does the check (reported)
    const withNorm = await edited({ tensors: (ts) => [...ts, { name: 'blk.0.attn_norm.weight', dims: [256], type: 0, data: Buffer.alloc(1024) }] });
    expect((await validateLoraFile(withNorm, f16Path)).skipped).toEqual(['blk.0.attn_norm.weight']);
    const strayNorm = await edited({ tensors: (ts) => [...ts, { name: 'blk.7.attn_norm.weight', dims: [256], type: 0, data: Buffer.alloc(1024) }] });
    await refuses(strayNorm, 'not-in-model', /"blk\.7\.attn_norm\.weight" is a norm the model does not have/, 'blk.7.attn_norm.weight');
  });

  it('refuses metadata llama.cpp would refuse or abort on: types, values, alpha, aLoRA tokens, huge arrays', async () => {
    const meta = (f: (m: Map<string, import('../../dist/index.js').WriterValue>) => void) => edited({ metadata: f });
    const S = (value: string) => ({ type: GgufValueType.STRING, value }) as const;
    await refuses(await meta((m) => m.set('general.type', S('model'))), 'metadata', /general\.type is "model"/);
    await refuses(await meta((m) => m.delete('general.type')), 'metadata', /general\.type is missing/);
    await refuses(await meta((m) => m.set('general.type', { type: GgufValueType.UINT32, value: 1 })), 'metadata', /general\.type must be a string/);
    await refuses(await meta((m) => m.set('adapter.type', S('control_vector'))), 'metadata', /adapter\.type is "control_vector"/);
    await refuses(await meta((m) => m.set('general.architecture', S('qwen2'))), 'architecture', /for the architecture "qwen2", the model is "llama"/);
    await refuses(await meta((m) => m.set('adapter.lora.alpha', { type: GgufValueType.FLOAT64, value: 16 })), 'metadata', /adapter\.lora\.alpha must be an f32/);
    await refuses(await meta((m) => m.set('adapter.lora.alpha', { type: GgufValueType.FLOAT32, value: Number.NaN })), 'metadata', /alpha is NaN; it must be finite/);
    await refuses(await meta((m) => m.set('adapter.alora_invocation_tokens', { type: GgufValueType.ARRAY, arrayType: GgufValueType.INT32, value: [1, 2] })), 'metadata', /must be an array of u32/);
    await refuses(await meta((m) => m.set('adapter.alora_invocation_tokens', { type: GgufValueType.ARRAY, arrayType: GgufValueType.UINT32, value: [1, 9999] })), 'metadata', /token 9999, outside the model's 2050 tokens/);
    await refuses(await meta((m) => m.set('general.tags', { type: GgufValueType.ARRAY, arrayType: GgufValueType.UINT8, value: new Array(70000).fill(0) })), 'metadata', /more than 65536 elements/);
    // alpha absent: llama.cpp then scales by the user's scale only; accepted, reported as 0
    expect((await validateLoraFile(await meta((m) => m.delete('adapter.lora.alpha')), f16Path)).alpha).toBe(0);
  });

  it('a truncated file is a GgufError from the reader (the data would be past the end)', async () => {
    const cut = join(fresh(), 'cut.gguf');
    const bytes = readFileSync(adapterF16);
    writeFileSync(cut, bytes.subarray(0, bytes.length - 100));
    const e = await validateLoraFile(cut, f16Path).then(() => undefined, (x: unknown) => x);
    expect(e).toBeInstanceOf(GgufError);
    expect((e as Error).message).toMatch(/the tensor data needs \d+ bytes but the file has \d+ \(truncated\?\)/);
  });
});

describe('the merge oracle (scripts/lora-merge.mjs)', () => {
  let mergedDir: string;
  let base: Model;
  let merged: Model;
  beforeAll(async () => {
    mergedDir = join(fresh(), 'merged');
    await mergeLora(hfDir, loraDir, mergedDir);
    const gguf = join(fresh(), 'merged-f16.gguf');
    await convert(mergedDir, gguf);
    base = await loadModel(f16Path);
    merged = await loadModel(gguf);
  });
  afterAll(async () => {
    await base?.dispose();
    await merged?.dispose();
  });

  it('merged − base = (alpha/r)·B·A, per weight and per expert', () => {
    const baseT = new Map(readSafetensors(join(hfDir, 'model-00001-of-00002.safetensors')).concat(readSafetensors(join(hfDir, 'model-00002-of-00002.safetensors'))).map((t) => [t.name, t]));
    const mergedT = new Map(readSafetensors(join(mergedDir, 'model.safetensors')).map((t) => [t.name, t]));
    const peft = new Map(readSafetensors(join(loraDir, 'adapter_model.safetensors')).map((t) => [t.name, t]));
    const f32 = (t: { dtype: string; data: Buffer }) => toF32(Buffer.from(t.data), t.dtype as 'F16');
    let checked = 0;
    for (const module of ['model.layers.0.self_attn.q_proj', 'model.layers.3.self_attn.o_proj', 'model.layers.1.block_sparse_moe.experts.6.w2', 'model.layers.2.block_sparse_moe.experts.0.w3']) {
      const w = f32(baseT.get(`${module}.weight`)!);
      const m = f32(mergedT.get(`${module}.weight`)!);
      const a = f32(peft.get(`base_model.model.${module}.lora_A.weight`)!);
      const b = f32(peft.get(`base_model.model.${module}.lora_B.weight`)!);
      const [outDim, inDim] = baseT.get(`${module}.weight`)!.shape;
      for (let o = 0; o < outDim; o += 7) {
        for (let i = 0; i < inDim; i += 5) {
          let d = 0;
          for (let k = 0; k < 8; k++) d += b[o * 8 + k] * a[k * inDim + i];
          expect(Math.abs(m[o * inDim + i] - w[o * inDim + i] - 2 * d)).toBeLessThan(1e-6);
          checked++;
        }
      }
    }
    expect(checked).toBeGreaterThan(1000);
    // Weights the adapter does not touch are the base's, widened.
    const norm = 'model.layers.2.input_layernorm.weight';
    expect(Buffer.from(f32(baseT.get(norm)!).buffer).equals(mergedT.get(norm)!.data)).toBe(true);
  });

  it('changes greedy answers noticeably but keeps the model sane', async () => {
    const answers = async (m: Model) => {
      const out: number[][] = [];
      for (const g of reference.greedy.slice(0, 5)) {
        await using ctx = await m.createContext({ contextSize: 512 });
        out.push((await ctx.generate(g.prompt_ids, { temperature: 0, maxTokens: 32 }).result).tokens);
      }
      return out;
    };
    const [before, after] = [await answers(base), await answers(merged)];
    expect(after.filter((a, i) => a.join() !== before[i].join()).length).toBeGreaterThanOrEqual(2);
    await using ctx = await merged.createContext({ contextSize: 512 });
    const chat = new ChatSession(ctx, { systemPrompt: '你是一个智能助手' });
    expect((await chat.prompt('请背诵《春晓》', { temperature: 0, maxTokens: 64 })).text).toContain('春眠不觉晓');
  });
});

// The runtime half of #18 (model.loadLora): the converted adapter applied by llama.cpp gives the merged model's logits,
// which checks the converter's rope permutation of lora_B and its expert stacking against the merge done in HF space.
const hasRuntime = typeof (Model.prototype as { loadLora?: unknown }).loadLora === 'function';
describe.runIf(hasRuntime)('base + converted adapter at run time = the merged model', () => {
  it('in f32, at scales 1 and 0.5, and with an embedding adapter: logits within 0.01 (the adapter moves them by several units)', async () => {
    const dir = fresh();
    const ids = reference.teacher_forced[0].ids.slice(0, 64);
    await convert(hfDir, join(dir, 'base.gguf'), { outType: 'f32' });
    await using base = await loadModel(join(dir, 'base.gguf'));
    const lora = await (base as unknown as { loadLora(p: string): Promise<unknown> }).loadLora(adapterF32);
    const logits = async (m: Model, loras?: unknown[]) => {
      await using ctx = await m.createContext({ contextSize: 128 });
      if (loras) await (ctx as unknown as { setLoras(l: unknown[]): Promise<void> }).setLoras(loras);
      return (await ctx.evaluate(ids, { logits: 'all' }))!;
    };
    const plain = await logits(base);
    const embedding = embeddingVariant();
    const embeddingAdapter = join(dir, 'embd.gguf');
    await convertLora(embedding.dir, { base: hfDir, output: embeddingAdapter });
    const withEmbedding = await (base as unknown as { loadLora(p: string): Promise<unknown> }).loadLora(embeddingAdapter);
    const results: Float32Array[] = [];
    for (const [scale, peft, adapter] of [[1, loraDir, lora], [0.5, loraDir, lora], [1, embedding.dir, withEmbedding]] as const) {
      const mergedDir = join(dir, `merged-${scale}-${peft === loraDir ? 'fixture' : 'embd'}`);
      await mergeLora(hfDir, peft, mergedDir, { scale });
      await convert(mergedDir, `${mergedDir}.gguf`, { outType: 'f32' });
      await using merged = await loadModel(`${mergedDir}.gguf`);
      const want = await logits(merged);
      const got = await logits(base, [{ adapter, scale }]);
      let diff = 0;
      let moved = 0;
      for (let i = 0; i < want.length; i++) {
        diff = Math.max(diff, Math.abs(want[i] - got[i]));
        moved = Math.max(moved, Math.abs(want[i] - plain[i]));
      }
      expect(diff, `scale ${scale}`).toBeLessThan(0.01);
      expect(moved, `scale ${scale}`).toBeGreaterThan(1);
      results.push(got);
    }
    // The embedding pair itself moved the logits (it was applied, not dropped).
    let byEmbedding = 0;
    for (let i = 0; i < results[0].length; i++) byEmbedding = Math.max(byEmbedding, Math.abs(results[2][i] - results[0][i]));
    expect(byEmbedding).toBeGreaterThan(0.1);
  });
});

describe('huozi-gguf convert-lora', () => {
  it('converts, as the library does', () => {
    const out = join(fresh(), 'cli.gguf');
    const r = spawnSync(process.execPath, [cli, 'convert-lora', loraDir, '--base', hfDir, '-o', out, '--outtype', 'f16'], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/28 adapted weights \(56 tensors\), rank 8, alpha 16, 0\.77 MiB F16/);
    expect(sha(readFileSync(out))).toBe(sha(readFileSync(adapterF16)));
  });

  it('errors cleanly: bad --outtype, a .bin adapter, no --base', () => {
    const run = (...args: string[]) => spawnSync(process.execPath, [cli, 'convert-lora', ...args], { encoding: 'utf8' });
    const out = join(fresh(), 'cli.gguf');
    let r = run(loraDir, '--base', hfDir, '-o', out, '--outtype', 'q8_0');
    expect([r.status, r.stderr]).toEqual([1, expect.stringMatching(/^huozi-gguf: .*--outtype/)]);
    r = run(peftVariant({ bin: true }), '--base', hfDir, '-o', out);
    expect([r.status, r.stderr]).toEqual([1, expect.stringMatching(/^huozi-gguf: .*adapter_model\.bin .*reads safetensors only/)]);
    r = run(loraDir, '-o', out);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/required option '--base <hf-dir\|gguf>' not specified/);
    expect(existsSync(out)).toBe(false);
  });
});
