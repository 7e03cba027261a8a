#!/usr/bin/env node
// Peak memory of convert(): writes a synthetic bf16 Mixtral-shaped checkpoint (~2 GB, sharded safetensors with an
// index, huozi-tiny's tokenizer) to a temporary directory, converts it in a child process, and reports the child's
// peak RSS (VmHWM) against the bound 1.5 × largest tensor + 200 MiB, and the throughput. The checkpoint's largest
// tensor is a stacked experts tensor (experts × ff × hidden), the one a whole-tensor converter must hold.
//
//   node scripts/convert-rss.mjs [--hidden 2048] [--ff 10240] [--experts 8] [--layers 2] [--shards 3]
//                                [--outtype f16] [--keep]
// Needs `npx tsc -p tsconfig.json` first (it runs dist/).
import { spawn } from 'node:child_process';
import { closeSync, copyFileSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const { values } = parseArgs({
  options: {
    hidden: { type: 'string', default: '2048' },
    ff: { type: 'string', default: '10240' },
    experts: { type: 'string', default: '8' },
    layers: { type: 'string', default: '2' },
    shards: { type: 'string', default: '3' },
    outtype: { type: 'string', default: 'f16' },
    keep: { type: 'boolean', default: false },
  },
});
const hidden = Number(values.hidden);
const ff = Number(values.ff);
const experts = Number(values.experts);
const layers = Number(values.layers);
const shardCount = Number(values.shards);
const heads = 16;
const kvHeads = 4;
const vocab = 2050; // huozi-tiny's tokenizer: 2048 pieces + 2 added tokens
const MiB = 2 ** 20;
const fixtureHf = join(root, 'test/fixtures/huozi-tiny/hf');
const work = mkdtempSync(join(tmpdir(), 'huozi-convert-rss-'));
const hfDir = join(work, 'hf');
const out = join(work, 'out.gguf');

// The checkpoint's tensors, in the shape transformers 4.x saves Mixtral (per-expert w1/w2/w3).
const headDim = hidden / heads;
const tensors = [['lm_head.weight', [vocab, hidden]], ['model.embed_tokens.weight', [vocab, hidden]], ['model.norm.weight', [hidden]]];
for (let b = 0; b < layers; b++) {
  const p = `model.layers.${b}`;
  tensors.push([`${p}.input_layernorm.weight`, [hidden]], [`${p}.post_attention_layernorm.weight`, [hidden]],
    [`${p}.self_attn.q_proj.weight`, [heads * headDim, hidden]], [`${p}.self_attn.k_proj.weight`, [kvHeads * headDim, hidden]],
    [`${p}.self_attn.v_proj.weight`, [kvHeads * headDim, hidden]], [`${p}.self_attn.o_proj.weight`, [hidden, heads * headDim]],
    [`${p}.block_sparse_moe.gate.weight`, [experts, hidden]]);
  for (let e = 0; e < experts; e++) {
    for (const w of ['w1', 'w2', 'w3']) tensors.push([`${p}.block_sparse_moe.experts.${e}.${w}.weight`, w === 'w2' ? [hidden, ff] : [ff, hidden]]);
  }
}
const bytesOf = (shape) => shape.reduce((a, d) => a * d, 1) * 2;
const total = tensors.reduce((a, [, s]) => a + bytesOf(s), 0);
const largest = Math.max(experts * ff * hidden * 2, ...tensors.map(([, s]) => bytesOf(s)));

// A pool of plausible bf16 weights (normal, sd 0.02), repeated through every tensor.
const pool = Buffer.alloc(8 * MiB);
{
  let seed = 1;
  const rand = () => ((seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) + 0.5) / 2 ** 32;
  const f = new Float32Array(1);
  const u = new Uint32Array(f.buffer);
  for (let i = 0; i < pool.length / 2; i++) {
    f[0] = Math.sqrt(-2 * Math.log(rand())) * Math.cos(2 * Math.PI * rand()) * 0.02;
    pool.writeUInt16LE(u[0] >>> 16, i * 2);
  }
}

function writeCheckpoint() {
  const started = Date.now();
  mkdirSync(hfDir, { recursive: true });
  // the fixture's tokenizer files, and a config for the shape above
  for (const f of ['tokenizer.model', 'tokenizer_config.json', 'added_tokens.json', 'special_tokens_map.json', 'generation_config.json']) {
    copyFileSync(join(fixtureHf, f), join(hfDir, f));
  }
  const config = JSON.parse(readFileSync(join(fixtureHf, 'config.json'), 'utf8'));
  Object.assign(config, {
    hidden_size: hidden, intermediate_size: ff, num_attention_heads: heads, num_key_value_heads: kvHeads,
    num_hidden_layers: layers, num_local_experts: experts, vocab_size: vocab,
  });
  writeFileSync(join(hfDir, 'config.json'), JSON.stringify(config, null, 2));
  // Shards of about equal size, in model order, as save_pretrained splits them.
  const perShard = Math.ceil(total / shardCount);
  const shards = [];
  let current = [];
  let size = 0;
  for (const t of tensors) {
    if (size > 0 && size + bytesOf(t[1]) > perShard && shards.length < shardCount - 1) {
      shards.push(current);
      current = [];
      size = 0;
    }
    current.push(t);
    size += bytesOf(t[1]);
  }
  shards.push(current);
  const weightMap = {};
  shards.forEach((list, i) => {
    const name = `model-${String(i + 1).padStart(5, '0')}-of-${String(shards.length).padStart(5, '0')}.safetensors`;
    const header = { __metadata__: { format: 'pt' } };
    let at = 0;
    for (const [n, shape] of list) {
      header[n] = { dtype: 'BF16', shape, data_offsets: [at, at + bytesOf(shape)] };
      at += bytesOf(shape);
      weightMap[n] = name;
    }
    const json = Buffer.from(JSON.stringify(header));
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(json.length));
    const fd = openSync(join(hfDir, name), 'w');
    writeSync(fd, len);
    writeSync(fd, json);
    let offset = 0;
    for (const [, shape] of list) {
      let left = bytesOf(shape);
      while (left > 0) {
        const n = Math.min(left, pool.length - (offset % pool.length));
        writeSync(fd, pool, offset % pool.length, n);
        offset += n;
        left -= n;
      }
    }
    closeSync(fd);
  });
  writeFileSync(join(hfDir, 'model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2));
  return { seconds: (Date.now() - started) / 1000, shards: shards.length };
}

function vmHWM(pid) {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

// The child converts and reports its own VmHWM just before it exits (the exact peak); the parent also polls.
const childSource = `
import { readFileSync } from 'node:fs';
import { convert } from ${JSON.stringify(join(root, 'dist/convert/convert.js'))};
const started = performance.now();
const result = await convert(process.argv[1], process.argv[2], { outType: process.argv[3] });
const seconds = (performance.now() - started) / 1000;
const hwm = Number(/VmHWM:\\s+(\\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'))[1]) * 1024;
process.stdout.write(JSON.stringify({ result, seconds, hwm }) + '\\n');
`;

async function convertInChild() {
  const child = spawn(process.execPath, ['--input-type=module', '-e', childSource, hfDir, out, values.outtype], { stdio: ['ignore', 'pipe', 'inherit'] });
  let polled = 0;
  const timer = setInterval(() => (polled = Math.max(polled, vmHWM(child.pid))), 50);
  let stdout = '';
  child.stdout.on('data', (d) => (stdout += d));
  const code = await new Promise((r) => child.on('close', r));
  clearInterval(timer);
  if (code !== 0) throw new Error(`the conversion exited with code ${code}`);
  return { ...JSON.parse(stdout.trim().split('\n').at(-1)), polled };
}

const fmt = (b) => `${(b / MiB).toFixed(1)} MiB`;
try {
  const made = writeCheckpoint();
  console.log(`checkpoint: ${layers} layers, hidden ${hidden}, ff ${ff}, ${experts} experts, ${tensors.length} bf16 tensors in ${made.shards} shards, ` +
    `${fmt(total)} (written in ${made.seconds.toFixed(1)} s)`);
  const { result, seconds, hwm, polled } = await convertInChild();
  const bound = 1.5 * largest + 200 * MiB;
  const outBytes = statSync(out).size;
  console.log(`converted to ${values.outtype}: ${result.tensors} tensors, ${fmt(outBytes)} in ${seconds.toFixed(1)} s`);
  console.log(`largest tensor:      ${fmt(largest)} (stacked experts, ${experts} × ${ff} × ${hidden} bf16)`);
  console.log(`peak RSS (VmHWM):    ${fmt(hwm)}${polled ? ` (polled from outside: ${fmt(polled)})` : ''}`);
  console.log(`bound:               ${fmt(bound)} = 1.5 × largest + 200 MiB  -> ${hwm <= bound ? 'within' : 'EXCEEDED'}`);
  console.log(`throughput:          ${(total / MiB / seconds).toFixed(0)} MiB/s read, ${(outBytes / MiB / seconds).toFixed(0)} MiB/s written ` +
    '(the checkpoint was just written, so it is read from the page cache)');
  if (hwm > bound) process.exitCode = 1;
} finally {
  if (values.keep) console.log(`kept ${work}`);
  else rmSync(work, { recursive: true, force: true });
}
