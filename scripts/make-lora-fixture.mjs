#!/usr/bin/env node
// Writes test/fixtures/huozi-tiny-lora/: a deterministic PEFT LoRA adapter for test/fixtures/huozi-tiny/hf, as
// PEFT's save_pretrained lays one out (adapter_config.json, adapter_model.safetensors with PEFT's key names
// base_model.model.model.layers.N.<module>.lora_A.weight / lora_B.weight). Rank 8, lora_alpha 16, on q/k/v/o
// and every expert's w1/w2/w3 in all 4 layers; f16 weights from our own PRNG (mulberry32, fixed seed), so the same
// bytes come out everywhere. PEFT starts B at zero (an adapter that changes nothing); here B is random too, sized
// so that alpha/r·B·A is about a fifth of each weight's RMS: enough to change greedy answers, not enough to turn
// the model into noise (test/native/convert-lora.test.ts checks both through the merged model).
//
//   node scripts/make-lora-fixture.mjs [--out test/fixtures/huozi-tiny-lora]
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { f32ToF16Bits } from '../dist/convert/float.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const { values } = parseArgs({ options: { out: { type: 'string', default: join(root, 'test', 'fixtures', 'huozi-tiny-lora') } } });

/** mulberry32: a small, well-mixed 32-bit PRNG; uniform in [0, 1). */
export function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const SEED = 20240518;
const R = 8;
const ALPHA = 16;
const [HIDDEN, HEADS, KV_HEADS, FF, LAYERS, EXPERTS] = [256, 4, 2, 192, 4, 8];
const HEAD_DIM = HIDDEN / HEADS;
/** Half-widths of the uniform draws: σ_A ≈ 0.05, σ_B ≈ 0.06, so alpha/r·B·A has an RMS of about 0.017 (weights: ~0.085). */
const A_RANGE = 0.0866;
const B_RANGE = 0.104;

/** Every adapted module with its [out, in], in the order of the names sorted (as safetensors stores and reads them). */
function modules() {
  const list = [];
  for (let l = 0; l < LAYERS; l++) {
    const p = `model.layers.${l}`;
    list.push([`${p}.self_attn.q_proj`, [HEADS * HEAD_DIM, HIDDEN]], [`${p}.self_attn.k_proj`, [KV_HEADS * HEAD_DIM, HIDDEN]],
      [`${p}.self_attn.v_proj`, [KV_HEADS * HEAD_DIM, HIDDEN]], [`${p}.self_attn.o_proj`, [HIDDEN, HEADS * HEAD_DIM]]);
    for (let e = 0; e < EXPERTS; e++) {
      const x = `${p}.block_sparse_moe.experts.${e}`;
      list.push([`${x}.w1`, [FF, HIDDEN]], [`${x}.w2`, [HIDDEN, FF]], [`${x}.w3`, [FF, HIDDEN]]);
    }
  }
  return list;
}

export function makeAdapter() {
  const rand = mulberry32(SEED);
  const uniform = (range) => (rand() * 2 - 1) * range;
  const tensors = [];
  // Drawn in a fixed module order (layers, attention, experts), then stored sorted by name.
  for (const [module, [outDim, inDim]] of modules()) {
    const a = new Uint16Array(R * inDim).map(() => f32ToF16Bits(uniform(A_RANGE)));
    const b = new Uint16Array(outDim * R).map(() => f32ToF16Bits(uniform(B_RANGE)));
    tensors.push({ name: `base_model.model.${module}.lora_A.weight`, shape: [R, inDim], data: a });
    tensors.push({ name: `base_model.model.${module}.lora_B.weight`, shape: [outDim, R], data: b });
  }
  tensors.sort((x, y) => (x.name < y.name ? -1 : x.name > y.name ? 1 : 0));
  const header = { __metadata__: { format: 'pt' } };
  let at = 0;
  for (const t of tensors) {
    header[t.name] = { dtype: 'F16', shape: t.shape, data_offsets: [at, at + t.data.byteLength] };
    at += t.data.byteLength;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8); // safetensors pads the header to 8 bytes
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  const safetensors = Buffer.concat([len, Buffer.from(json), ...tensors.map((t) => Buffer.from(t.data.buffer))]);
  const config = {
    alpha_pattern: {}, auto_mapping: null, base_model_name_or_path: 'huozi-tiny', bias: 'none', fan_in_fan_out: false,
    inference_mode: true, init_lora_weights: true, layer_replication: null, layers_pattern: null, layers_to_transform: null,
    loftq_config: {}, lora_alpha: ALPHA, lora_dropout: 0.0, megatron_config: null, megatron_core: 'megatron.core',
    modules_to_save: null, peft_type: 'LORA', r: R, rank_pattern: {}, revision: null,
    target_modules: ['k_proj', 'o_proj', 'q_proj', 'v_proj', 'w1', 'w2', 'w3'], task_type: 'CAUSAL_LM', use_dora: false,
    use_rslora: false,
  };
  return { safetensors, config: `${JSON.stringify(config, null, 2)}\n` };
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const { safetensors, config } = makeAdapter();
  mkdirSync(values.out, { recursive: true });
  writeFileSync(join(values.out, 'adapter_config.json'), config);
  writeFileSync(join(values.out, 'adapter_model.safetensors'), safetensors);
  console.log(`${values.out}: adapter_model.safetensors ${safetensors.length} bytes`);
}
