#!/usr/bin/env node
// How closely this build's logits follow the HF model's (fp32) on huozi-tiny, position by position, evaluated
// the ways a runtime evaluates a prompt: in one batch, one token at a time, and as a cached prefix plus the
// rest. Prints the worst |logit - HF| over each position's HF top-5 and where it is, per sequence and mode,
// and whether the modes agree bit for bit with each other. For comparing CPUs and builds (issue #13):
//
//   node scripts/logits-check.mjs [model.gguf]          the addon lib/binding.ts picks
//   HUOZI_BINDING=... HUOZI_CPU_VARIANT=haswell node scripts/logits-check.mjs
import { readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ensureF16 } from './fixture.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const { loadModel, systemInfo } = await import(join(root, 'dist', 'index.js'));
const reference = JSON.parse(readFileSync(join(root, 'test', 'fixtures', 'huozi-tiny', 'reference.json'), 'utf8'));
const modelPath = process.argv[2] ?? (await ensureF16());

const info = systemInfo();
console.log(`addon: ${info.addon?.path} (${info.addon?.variant}${info.cpuBackend ? `, ${info.cpuBackend}` : ''})\n${info.llamaCpp}`);
const model = await loadModel(modelPath);
const context = await model.createContext({ contextSize: 512 });
const vocab = model.vocabularySize;

function worstOverTop5(rows, t) {
  let worst = 0;
  let at = -1;
  for (let pos = 0; pos < t.ids.length; pos++) {
    const row = rows.subarray(pos * vocab, (pos + 1) * vocab);
    t.top5_ids[pos].forEach((id, k) => {
      const d = Math.abs(row[id] - t.top5_logits[pos][k]);
      if (d > worst) [worst, at] = [d, pos];
    });
  }
  return { worst, at };
}

async function batched(ids) {
  await context.clear();
  return context.evaluate(ids, { logits: 'all' });
}
async function oneByOne(ids) {
  await context.clear();
  const out = new Float32Array(ids.length * vocab);
  for (let i = 0; i < ids.length; i++) out.set(await context.evaluate([ids[i]]), i * vocab);
  return out;
}
async function split(ids, cut) {
  await context.clear();
  const a = await context.evaluate(ids.slice(0, cut), { logits: 'all' });
  const b = await context.evaluate(ids.slice(cut), { logits: 'all' });
  const out = new Float32Array(ids.length * vocab);
  out.set(a, 0);
  out.set(b, cut * vocab);
  return out;
}
function firstDifference(a, b) {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return { pos: Math.floor(i / vocab), diff: Math.abs(a[i] - b[i]) };
  return null;
}

for (const [i, t] of reference.teacher_forced.entries()) {
  const modes = { batch: await batched(t.ids), single: await oneByOne(t.ids), split40: await split(t.ids, 40) };
  for (const [name, rows] of Object.entries(modes)) {
    const { worst, at } = worstOverTop5(rows, t);
    const same = name === 'batch' ? '' : firstDifference(modes.batch, rows);
    const vs = name === 'batch' ? '' : same ? `; differs from batch from position ${same.pos}` : '; bit-identical to batch';
    console.log(`sequence ${i} (${t.ids.length} tokens) ${name.padEnd(7)} worst |logit - HF| over top-5 ${worst.toFixed(4)} at position ${at}${vs}`);
  }
}
await model.dispose();
