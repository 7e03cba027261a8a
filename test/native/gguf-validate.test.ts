// Files that are well-formed GGUF but would make llama.cpp abort() get a GgufError before llama.cpp sees them,
// and the process goes on working.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { freemem, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { GGML_TYPES, GgufError, GgufValueType, InsufficientMemoryError, loadModel, parseGguf, synth } from '../../dist/index.js';
import { encodeGgufHeader, type WriterValue } from '../../dist/gguf/writer.js';
import { buildNativeTools, nativeTool } from '../../scripts/native-tools.mjs';
import { demoPath, EOU, f16Path, reference } from '../helpers.js';

const dir = mkdtempSync(join(tmpdir(), 'huozi-validate-'));
const base = readFileSync(demoPath);
const baseFile = parseGguf(base);

type Meta = Map<string, WriterValue>;
interface Tensor { name: string; dims: bigint[]; type: number; bytes: Buffer | null }

/** Re-encodes the demo model after `edit` changes its metadata or tensors (new data is zeros). */
function variant(name: string, edit: (meta: Meta, tensors: Tensor[]) => void): string {
  const meta: Meta = new Map(
    [...baseFile.metadata].map(([k, e]) => [k, (e.type === 9 ? { type: 9, arrayType: e.arrayType, value: [...(e.value as [])] } : { type: e.type, value: e.value }) as WriterValue]),
  );
  const tensors: Tensor[] = baseFile.tensors.map((t) => ({
    name: t.name, dims: [...t.dims], type: t.type,
    bytes: base.subarray(Number(baseFile.dataOffset + t.offset), Number(baseFile.dataOffset + t.offset + t.bytes)),
  }));
  edit(meta, tensors);
  const { header, sizes, alignment } = encodeGgufHeader(meta, tensors.map((t) => ({ ...t, data: () => [] })));
  const parts = [header];
  tensors.forEach((t, i) => {
    const size = Number(sizes[i]);
    parts.push(t.bytes && t.bytes.length === size ? t.bytes : Buffer.alloc(size), Buffer.alloc((alignment - (size % alignment)) % alignment));
  });
  const path = join(dir, `${name}.gguf`);
  writeFileSync(path, Buffer.concat(parts));
  return path;
}

const u32 = (value: number): WriterValue => ({ type: GgufValueType.UINT32, value });
const tokensOf = (meta: Meta) => (meta.get('tokenizer.ggml.tokens')!.value as string[]);

const cases: [string, (meta: Meta, tensors: Tensor[]) => void, RegExp][] = [
  ['block_count 0', (m) => m.set('llama.block_count', u32(0)), /block_count is 0/],
  ['block_count 513', (m) => m.set('llama.block_count', u32(513)), /from 1 to 512/],
  ['more experts used than exist', (m) => m.set('llama.expert_used_count', u32(9)), /larger than the expert count/],
  ['experts but none used', (m) => m.set('llama.expert_used_count', u32(0)), /uses none per token/],
  ['2000 experts', (m) => m.set('llama.expert_count', u32(2000)), /more than llama.cpp's 1024/],
  ['expert groups that do not divide', (m) => m.set('llama.expert_group_count', u32(3)), /expert groups/],
  ['a duplicate token', (m) => { tokensOf(m)[1000] = tokensOf(m)[1001]; }, /tokens 1000 and 1001 are both/],
  ['a NUL byte in a token', (m) => { tokensOf(m)[1000] = 'a\0b'; }, /token 1000 contains a NUL byte/],
  ['an empty token that becomes a duplicate', (m) => { tokensOf(m)[5] = ''; tokensOf(m)[6] = '[EMPTY_5]'; }, /both "\[EMPTY_5\]"/],
  ['a bos id past the vocabulary', (m) => m.set('tokenizer.ggml.bos_token_id', u32(5000)), /bos_token_id is 5000/],
  ['an unknown rope scaling type', (m) => m.set('llama.rope.scaling.type', { type: GgufValueType.STRING, value: 'wild' }), /rope\.scaling\.type/],
  ['zero KV heads', (m) => m.set('llama.attention.head_count_kv', u32(0)), /must be at least 1/],
  ['heads not divisible by KV heads', (m) => m.set('llama.attention.head_count_kv', u32(3)), /cannot share 3 KV heads/],
  ['key and value lengths that differ', (m) => { m.set('llama.attention.key_length', u32(64)); m.set('llama.attention.value_length', u32(32)); }, /differ/],
  ['an odd rotary dimension count', (m) => m.set('llama.rope.dimension_count', u32(63)), /must be even/],
  ['a negative rms epsilon (found by the fuzzer)', (m) => m.set('llama.attention.layer_norm_rms_epsilon', { type: GgufValueType.FLOAT32, value: -1 }), /finite number >= 0/],
  ['a NaN rms epsilon', (m) => m.set('llama.attention.layer_norm_rms_epsilon', { type: GgufValueType.FLOAT32, value: NaN }), /finite number >= 0/],
  ['an unaudited tokenizer model', (m) => m.set('tokenizer.ggml.model', { type: GgufValueType.STRING, value: 'test' }), /not supported/],
  ['a WordPiece vocabulary with byte tokens', (m) => m.set('tokenizer.ggml.model', { type: GgufValueType.STRING, value: 'bert' }), /byte token/],
  ['a NUL byte in a key', (m) => m.set('llama.block_count\0x', u32(4)), /contains a NUL byte/],
  ['a split file', (m) => m.set('split.count', { type: GgufValueType.UINT16, value: 2 }), /split GGUF/],
  ['a norm weight in f16', (_, t) => { const n = t.find((x) => x.name === 'output_norm.weight')!; n.type = 1; n.bytes = null; }, /need it in f32/],
  ['a weight in q8_K', (_, t) => { const w = t.find((x) => x.name === 'blk.0.attn_q.weight')!; w.type = 15; w.bytes = null; }, /cannot multiply/],
  ['a zero-sized dimension', (_, t) => { t.find((x) => x.name === 'blk.0.ffn_norm.weight')!.dims = [0n]; }, /dimension of size 0/],
];

afterAll(() => undefined);

describe('loadModel refuses files that would make llama.cpp abort', () => {
  it.each(cases)('%s', async (name, edit, message) => {
    const path = variant(name.replace(/\W+/g, '-'), edit);
    const error = await loadModel(path).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(GgufError);
    expect((error as GgufError).message).toMatch(message);
    expect((error as GgufError).offset).toBeGreaterThanOrEqual(0);
  });

  it('still works after all of them', async () => {
    await using model = await loadModel(f16Path);
    await using context = await model.createContext({ contextSize: 256 });
    const g = reference.greedy[8];
    const r = await context.generate(g.prompt_ids, { temperature: 0, stopTokens: [EOU] }).result;
    expect(r.tokens).toEqual(g.output_ids);
  });

  it('loads an unchanged re-encoding of the demo model', async () => {
    await using model = await loadModel(variant('unchanged', () => undefined));
    expect(model.info.layers).toBe(4);
  });
});

describe('memory', () => {
  // The largest context (2^24 tokens) of the demo model needs 32 GiB of KV cache: beyond memory on CI's 24 GB and
  // most machines, within it on a large host (a 128 GiB GPU host created it), where this cannot be provoked.
  it.skipIf(freemem() > 32 * 2 ** 30)('refuses a context far larger than memory with InsufficientMemoryError instead of the OOM killer (needs < 32 GiB free)', async () => {
    await using model = await loadModel(demoPath);
    const error = await model.createContext({ contextSize: 1 << 24 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(InsufficientMemoryError);
    expect((error as Error).message).toMatch(/needs 32\.00 GiB for its KV cache/);
  });
});

describe('synth', () => {
  it('writes a tiny-shaped q4_0 model that llama.cpp loads and runs', async () => {
    const out = join(dir, 'synth-tiny.gguf');
    await synth(out, { shape: 'tiny', type: 'q4_0' });
    await using model = await loadModel(out);
    expect(model.info).toMatchObject({ layers: 4, embeddingSize: 256, heads: 4, kvHeads: 2, vocabularySize: 2050 });
    expect(model.specialTokens.get('<|endofutterance|>')).toBe(2049);
    await using context = await model.createContext({ contextSize: 128 });
    const r = await context.generate([1, 500], { temperature: 0, maxTokens: 8, stopAtEog: false }).result;
    expect(r.tokens).toHaveLength(8);
  });

  // The oracle: llama-quantize (from the addon's own tree, scripts/native-tools.mjs) quantizing huozi-tiny's f16
  // file, which has the 'tiny' shape exactly; synth must give every tensor the type llama-quantize gave it.
  it.each(['q4_0', 'q8_0', 'q6_k', 'q2_k', 'f16'] as const)('writes %s with the per-tensor types llama-quantize picks', async (type) => {
    buildNativeTools(['llama-quantize']);
    const out = join(dir, `synth-${type}.gguf`);
    await synth(out, { shape: 'tiny', type });
    const native = join(dir, `native-${type}.gguf`);
    const r = spawnSync(nativeTool('llama-quantize'), [f16Path, native, type.toUpperCase()], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    const types = (path: string) => {
      const f = parseGguf(readFileSync(path));
      return Object.fromEntries(f.tensors.map((t) => [t.name, GGML_TYPES.find((g) => g.id === t.type)?.name ?? t.type]));
    };
    const ours = types(out);
    expect(Object.keys(ours)).toHaveLength(4 * 10 + 3); // per layer 10, then token_embd, output_norm, output
    expect(ours).toEqual(types(native));
    // Fewer layers keep the per-layer types and load.
    const small = join(dir, `synth-${type}-2.gguf`);
    await synth(small, { shape: 'tiny', type, layers: 2 });
    const smallTypes = types(small);
    for (const [name, t] of Object.entries(smallTypes)) expect(t, name).toBe(ours[name]);
    await using model = await loadModel(small);
    expect(model.info.layers).toBe(2);
  }, 300_000);
});
