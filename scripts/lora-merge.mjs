#!/usr/bin/env node
// The LoRA oracle: merges a PEFT LoRA adapter into a Hugging Face checkpoint, in JavaScript, as PEFT's
// merge_and_unload does: W' = W + scale · (lora_alpha / r) · B·A for each adapted Linear (alpha/√r with
// use_rslora), expert by expert for Mixtral's w1/w2/w3; W + scale · (alpha / r) · (B·A)ᵀ for the embeddings
// (lora_embedding_A/B). Writes an f32 checkpoint (one model.safetensors, the
// config and tokenizer files copied) that convert() turns into the merged model, to compare with the base model
// plus the adapter applied at run time. Sums in float64, rounded once to f32.
//
//   node scripts/lora-merge.mjs <hf-dir> <peft-dir> <out-dir> [--scale 1]
//
// As a module: mergeLora(hfDir, peftDir, outDir, { scale }) -> { merged: [HF weight names], tensors }.
import { copyFileSync, existsSync, mkdirSync, readFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { indexSafetensors, PartReader, readSafetensorsHeader } from '../dist/convert/safetensors.js';
import { toF32 } from '../dist/convert/float.js';

const COPIED = ['config.json', 'generation_config.json', 'tokenizer.model', 'tokenizer_config.json', 'added_tokens.json', 'special_tokens_map.json', 'tokenizer.json'];

/** scale · (alpha / r) · B·A as f64, [out, in] row-major, from lora_A [r, in] and lora_B [out, r] in f32. */
export function loraDelta(a, b, r, inDim, outDim, factor) {
  const delta = new Float64Array(outDim * inDim);
  for (let o = 0; o < outDim; o++) {
    for (let k = 0; k < r; k++) {
      const bk = b[o * r + k] * factor;
      if (bk === 0) continue;
      const row = k * inDim;
      const at = o * inDim;
      for (let i = 0; i < inDim; i++) delta[at + i] += bk * a[row + i];
    }
  }
  return delta;
}

export async function mergeLora(hfDir, peftDir, outDir, { scale = 1 } = {}) {
  const config = JSON.parse(readFileSync(join(peftDir, 'adapter_config.json'), 'utf8'));
  for (const [key, ok] of [['use_dora', !config.use_dora], ['bias', (config.bias ?? 'none') === 'none'], ['modules_to_save', !config.modules_to_save?.length]]) {
    if (!ok) throw new Error(`lora-merge: ${key} is not supported`);
  }
  const adapter = new Map((await readSafetensorsHeader(join(peftDir, 'adapter_model.safetensors'))).map((t) => [t.name, t]));
  const base = await indexSafetensors(hfDir);
  const reader = new PartReader();
  const readF32 = async (t) => toF32(await reader.read(t.file, t.offset, t.bytes), t.dtype);
  const used = new Set();
  const merged = [];
  const header = { __metadata__: { format: 'pt' } };
  let at = 0;
  for (const t of base.tensors) {
    const n = t.shape.reduce((x, y) => x * y, 1);
    header[t.name] = { dtype: 'F32', shape: t.shape, data_offsets: [at, at + n * 4] };
    at += n * 4;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8);
  mkdirSync(outDir, { recursive: true });
  const fh = await open(join(outDir, 'model.safetensors'), 'w');
  try {
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(json.length));
    let pos = 0;
    const write = async (buf) => {
      await fh.write(buf, 0, buf.length, pos);
      pos += buf.length;
    };
    await write(Buffer.concat([len, Buffer.from(json)]));
    for (const t of base.tensors) {
      const w = await readF32(t);
      const module = t.name.replace(/\.weight$/, '');
      const aT = adapter.get(`base_model.model.${module}.lora_A.weight`);
      const bT = adapter.get(`base_model.model.${module}.lora_B.weight`);
      const aE = adapter.get(`base_model.model.${module}.lora_embedding_A`);
      const bE = adapter.get(`base_model.model.${module}.lora_embedding_B`);
      if (aE && bE && t.name.endsWith('.weight')) {
        // PEFT's Embedding: W [n_vocab, n_embd] + scale · (B·A)ᵀ, A [r, n_vocab], B [n_embd, r].
        const r = aE.shape[0];
        const [vocab, embd] = t.shape;
        if (aE.shape[1] !== vocab || bE.shape[0] !== embd || bE.shape[1] !== r) throw new Error(`lora-merge: ${module} does not fit ${t.name}`);
        const factor = scale * (config.use_rslora ? config.lora_alpha / Math.sqrt(r) : config.lora_alpha / r);
        const delta = loraDelta(await readF32(aE), await readF32(bE), r, vocab, embd, factor); // B·A, [n_embd, n_vocab]
        for (let v = 0; v < vocab; v++) for (let h = 0; h < embd; h++) w[v * embd + h] = w[v * embd + h] + delta[h * vocab + v];
        used.add(aE.name).add(bE.name);
        merged.push(t.name);
      } else if (aT && bT && t.name.endsWith('.weight')) {
        const r = aT.shape[0];
        const [outDim, inDim] = t.shape;
        if (aT.shape[1] !== inDim || bT.shape[0] !== outDim || bT.shape[1] !== r) throw new Error(`lora-merge: ${module} does not fit ${t.name}`);
        const factor = scale * (config.use_rslora ? config.lora_alpha / Math.sqrt(r) : config.lora_alpha / r);
        const delta = loraDelta(await readF32(aT), await readF32(bT), r, inDim, outDim, factor);
        for (let i = 0; i < w.length; i++) w[i] = w[i] + delta[i];
        used.add(aT.name).add(bT.name);
        merged.push(t.name);
      }
      await write(Buffer.from(w.buffer, w.byteOffset, w.byteLength));
    }
  } finally {
    await fh.close();
    await reader.close();
  }
  const left = [...adapter.keys()].filter((k) => !used.has(k));
  if (left.length) throw new Error(`lora-merge: ${left.length} adapter tensors match no base weight (${left.slice(0, 3).join(', ')})`);
  for (const f of COPIED) if (existsSync(join(hfDir, f))) copyFileSync(join(hfDir, f), join(outDir, f));
  return { merged, tensors: base.tensors.length };
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const { values, positionals } = parseArgs({ allowPositionals: true, options: { scale: { type: 'string', default: '1' } } });
  if (positionals.length !== 3) {
    console.error('usage: node scripts/lora-merge.mjs <hf-dir> <peft-dir> <out-dir> [--scale 1]');
    process.exit(2);
  }
  const { merged, tensors } = await mergeLora(...positionals, { scale: Number(values.scale) });
  console.log(`${positionals[2]}: ${merged.length} of ${tensors} weights merged`);
}
