import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConvertError, sizeLabel } from '../../dist/convert/convert.js';
import { indexSafetensors, readSafetensorsHeader } from '../../dist/convert/safetensors.js';
import { planTensors } from '../../dist/convert/tensors.js';

const fresh = () => mkdtempSync(join(tmpdir(), 'huozi-convert-unit-'));

interface Entry { name: string; dtype: string; shape: number[]; bytes?: number }

/** A safetensors file: header (8-byte length + JSON), then each tensor's bytes, laid out in order. */
function safetensors(entries: Entry[], { truncate = 0, offsets }: { truncate?: number; offsets?: Record<string, [number, number]> } = {}): Buffer {
  const size: Record<string, number> = { F32: 4, F16: 2, BF16: 2, F64: 8, I8: 1, I64: 8 };
  const header: Record<string, unknown> = { __metadata__: { format: 'pt' } };
  let at = 0;
  for (const e of entries) {
    const bytes = e.bytes ?? e.shape.reduce((a, d) => a * d, 1) * size[e.dtype];
    header[e.name] = { dtype: e.dtype, shape: e.shape, data_offsets: offsets?.[e.name] ?? [at, at + bytes] };
    at += bytes;
  }
  const json = Buffer.from(JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  const file = Buffer.concat([len, json, Buffer.alloc(at)]);
  return file.subarray(0, file.length - truncate);
}

async function rejects(promise: Promise<unknown> | (() => unknown), message: RegExp): Promise<ConvertError> {
  let error: unknown;
  try {
    await (typeof promise === 'function' ? promise() : promise);
  } catch (e) {
    error = e;
  }
  expect(error, `expected a ConvertError matching ${message}`).toBeInstanceOf(ConvertError);
  expect((error as Error).message).toMatch(message);
  return error as ConvertError;
}

describe('safetensors headers', () => {
  it('lists tensors sorted by name with absolute offsets', async () => {
    const file = join(fresh(), 'model.safetensors');
    const buf = safetensors([{ name: 'b', dtype: 'F32', shape: [2, 3] }, { name: 'a', dtype: 'BF16', shape: [4] }]);
    writeFileSync(file, buf);
    const dataStart = 8 + Number(buf.readBigUInt64LE(0));
    expect(await readSafetensorsHeader(file)).toEqual([
      { name: 'a', dtype: 'BF16', shape: [4], file, offset: dataStart + 24, bytes: 8 },
      { name: 'b', dtype: 'F32', shape: [2, 3], file, offset: dataStart, bytes: 24 },
    ]);
  });

  it('rejects truncated files, inconsistent offsets and non-float dtypes before any data is read', async () => {
    const dir = fresh();
    const write = (name: string, buf: Buffer) => {
      writeFileSync(join(dir, name), buf);
      return join(dir, name);
    };
    const two = [{ name: 'x', dtype: 'F16', shape: [8, 8] }, { name: 'y', dtype: 'F16', shape: [8] }];
    await rejects(readSafetensorsHeader(write('t1', safetensors(two, { truncate: 1 }))), /t1 is truncated: "y" needs bytes \d+\.\.\d+ but the file has/);
    await rejects(readSafetensorsHeader(write('t2', Buffer.from([1, 2, 3]))), /too short for a safetensors header/);
    const huge = Buffer.alloc(16);
    huge.writeBigUInt64LE(1n << 40n);
    await rejects(readSafetensorsHeader(write('t3', huge)), /claims a 1099511627776-byte header/);
    const short = Buffer.alloc(16);
    short.writeBigUInt64LE(100n);
    await rejects(readSafetensorsHeader(write('t4', short)), /t4 is truncated: its header needs 108 bytes but the file has 16/);
    await rejects(readSafetensorsHeader(write('t5', safetensors(two, { offsets: { x: [0, 100] } }))), /"x" is \[8,8\] F16 \(128 bytes\) but its data_offsets span 100 bytes/);
    await rejects(readSafetensorsHeader(write('t6', safetensors([{ name: 'q', dtype: 'I8', shape: [4] }]))), /"q" is I8; only F32, F16, BF16 and F64/);
    await rejects(readSafetensorsHeader(write('t7', safetensors([{ name: 'q', dtype: 'Q4', shape: [4], bytes: 2 }]))), /unknown dtype Q4/);
    const bad = Buffer.concat([Buffer.from([5, 0, 0, 0, 0, 0, 0, 0]), Buffer.from('{nope')]);
    await rejects(readSafetensorsHeader(write('t8', bad)), /header that is not JSON/);
  });

  it('finds the parts, with or without an index, and says what a directory lacks', async () => {
    const dir = fresh();
    await rejects(indexSafetensors(dir), /has no model\*\.safetensors file/);
    writeFileSync(join(dir, 'pytorch_model.bin'), 'x');
    await rejects(indexSafetensors(dir), /PyTorch \.bin checkpoint; only safetensors/);
    writeFileSync(join(dir, 'model-2.safetensors'), safetensors([{ name: 'b', dtype: 'F32', shape: [1] }]));
    writeFileSync(join(dir, 'model-1.safetensors'), safetensors([{ name: 'c', dtype: 'F32', shape: [1] }, { name: 'a', dtype: 'F32', shape: [1] }]));
    expect((await indexSafetensors(dir)).tensors.map((t) => t.name)).toEqual(['a', 'c', 'b']); // parts sorted, then names
    writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ weight_map: { a: 'model-1.safetensors', c: 'model-1.safetensors', b: 'model-3.safetensors' } }));
    await rejects(indexSafetensors(dir), /lacks the part model-3\.safetensors named in model\.safetensors\.index\.json/);
    writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ weight_map: { a: 'model-1.safetensors', c: 'model-1.safetensors' } }));
    expect((await indexSafetensors(dir)).files.map((f) => f.slice(dir.length + 1))).toEqual(['model-1.safetensors']);
    writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ weight_map: { a: 'model-1.safetensors', c: 'model-1.safetensors', b: 'model-2.safetensors', d: 'model-2.safetensors' } }));
    await rejects(indexSafetensors(dir), /missing or incomplete checkpoint parts model-2\.safetensors: 1 tensors named in the index are not in them \(d\)/);
    writeFileSync(join(dir, 'model-2.safetensors'), safetensors([{ name: 'a', dtype: 'F32', shape: [1] }]));
    writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ weight_map: { a: 'model-2.safetensors', c: 'model-1.safetensors' } }));
    await rejects(indexSafetensors(dir), /the tensor "a" is in both/);
  });
});

describe('tensor planning', () => {
  const shape = { blocks: 1, vocab: 16, hidden: 8, ff: 12, heads: 2, kvHeads: 1, headDim: 4, experts: 0, outType: 'q8_0' as const, configFile: 'config.json' };
  const t = (name: string, dims: number[], dtype = 'BF16') => ({ name, dtype: dtype as 'BF16', shape: dims, file: 'f', offset: 0, bytes: dims.reduce((a, d) => a * d, 2) });
  const dense = [
    t('lm_head.weight', [16, 8]), t('model.embed_tokens.weight', [16, 8]), t('model.layers.0.input_layernorm.weight', [8]),
    t('model.layers.0.mlp.down_proj.weight', [8, 12]), t('model.layers.0.mlp.gate_proj.weight', [12, 8]),
    t('model.layers.0.mlp.up_proj.weight', [12, 8]), t('model.layers.0.post_attention_layernorm.weight', [8]),
    t('model.layers.0.self_attn.k_proj.weight', [4, 8]), t('model.layers.0.self_attn.o_proj.weight', [8, 8]),
    t('model.layers.0.self_attn.q_proj.weight', [8, 8]), t('model.layers.0.self_attn.rotary_emb.inv_freq', [2]),
    t('model.layers.0.self_attn.v_proj.weight', [4, 8]), t('model.norm.weight', [8]),
  ];

  it('maps names, orders as the checkpoint, and picks types as convert_hf_to_gguf.py', () => {
    const plan = planTensors(dense, shape);
    expect(plan.map((p) => [p.name, p.type, p.dims.join('x')])).toEqual([
      ['output.weight', 'f16', '8x16'], // rows of 8 are not whole q8_0 blocks: gguf-py falls back to f16
      ['token_embd.weight', 'f16', '8x16'], ['blk.0.attn_norm.weight', 'f32', '8'], ['blk.0.ffn_down.weight', 'f16', '12x8'],
      ['blk.0.ffn_gate.weight', 'f16', '8x12'], ['blk.0.ffn_up.weight', 'f16', '8x12'], ['blk.0.ffn_norm.weight', 'f32', '8'],
      ['blk.0.attn_k.weight', 'f16', '8x4'], ['blk.0.attn_output.weight', 'f16', '8x8'], ['blk.0.attn_q.weight', 'f16', '8x8'],
      ['blk.0.attn_v.weight', 'f16', '8x4'], ['output_norm.weight', 'f32', '8'],
    ]);
    expect(plan.find((p) => p.name === 'blk.0.attn_q.weight')!.sources[0].permuteHeads).toBe(2);
    expect(plan.find((p) => p.name === 'blk.0.attn_k.weight')!.sources[0].permuteHeads).toBe(1);
  });

  it('says what is wrong with a checkpoint', async () => {
    await rejects(() => planTensors([...dense, t('model.layers.0.mlp.experts.gate_up_proj', [2, 24, 8])], shape), /fused expert tensors as transformers 5 saves them/);
    await rejects(() => planTensors([...dense, t('model.vision_tower.x.weight', [2])], shape), /cannot map the tensor "model\.vision_tower\.x\.weight"/);
    await rejects(() => planTensors(dense.filter((x) => !x.name.includes('v_proj')), shape), /lacks 1 tensor a 1-layer model needs: blk\.0\.attn_v\.weight/);
    await rejects(() => planTensors([...dense, t('model.layers.1.input_layernorm.weight', [8])], shape), /belongs to layer 1, but config\.json says num_hidden_layers is 1/);
    await rejects(() => planTensors(dense.map((x) => (x.name.includes('o_proj') ? t(x.name, [8, 4]) : x)), shape), /shape mismatch: "model\.layers\.0\.self_attn\.o_proj\.weight" is \[8, 4\] but config\.json implies \[8, 8\]/);
    await rejects(() => planTensors([...dense, t('model.layers.0.block_sparse_moe.experts.0.w1.weight', [12, 8])], shape), /Mixtral expert tensor, but config\.json has no num_local_experts/);
    const moe = { ...shape, experts: 2 };
    const experts = (n: number) => [...Array(n)].flatMap((_, e) => ['w1', 'w2', 'w3'].map((w) => t(`model.layers.0.block_sparse_moe.experts.${e}.${w}.weight`, w === 'w2' ? [8, 12] : [12, 8])));
    const base = dense.filter((x) => !x.name.includes('.mlp.'));
    const ok = planTensors([...base, t('model.layers.0.block_sparse_moe.gate.weight', [2, 8]), ...experts(2)], moe);
    expect(ok.filter((p) => p.name.includes('ffn')).map((p) => [p.name, p.type, p.dims.join('x'), p.sources.length])).toEqual([
      ['blk.0.ffn_norm.weight', 'f32', '8', 1], ['blk.0.ffn_gate_inp.weight', 'f32', '8x2', 1],
      ['blk.0.ffn_gate_exps.weight', 'f16', '8x12x2', 2], ['blk.0.ffn_down_exps.weight', 'f16', '12x8x2', 2], ['blk.0.ffn_up_exps.weight', 'f16', '8x12x2', 2],
    ]);
    await rejects(() => planTensors([...base, t('model.layers.0.block_sparse_moe.gate.weight', [2, 8]), ...experts(1)], moe), /unprocessed expert tensors/);
  });

  it('labels the size as gguf-py does (rounding ties to even)', () => {
    const label = (n: number) => sizeLabel([{ name: 'x.weight', dims: [n] }]).label;
    expect([6565120, 2250, 2500, 999, 1500000, 46702792704, 7241732096, 13e9, 125000, 2250000].map(label))
      .toEqual(['6.6M', '2.2K', '2.5K', '1.0K', '1.5M', '47B', '7.2B', '13B', '125K', '2.2M']);
    // Mixtral-8x7B: 1.6B shared, 5.6B per expert, eight experts
    const mixtral = sizeLabel([
      { name: 'shared.weight', dims: [1602260992] },
      { name: 'blk.0.ffn_up_exps.weight', dims: [5637144576, 1, 8] },
      { name: 'blk.0.ffn_gate_exps.weight', dims: [0, 1, 8] },
    ]);
    expect(mixtral.label).toBe('8x7.2B');
  });
});
