#!/usr/bin/env node
// What llama.cpp alone does with adapters that validateLoraForModel refuses: each case edits the fixture adapter
// (converted to f16 for the f16 fixture model), loads it with the addon directly (no TypeScript check), applies it
// and generates two tokens, in a child process, and reports how that ended (an abort, a crash, a silent load);
// then what validateLoraForModel says about the same file. Prints a Markdown table (docs/robustness.md).
//
//   node scripts/lora-raw.mjs [--model test/fixtures/.generated/huozi-tiny-f16.gguf]
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const self = fileURLToPath(import.meta.url);

/** Each case: what it changes, and the edit of the parsed adapter (metadata map, tensor list). */
const CASES = {
  'unchanged': () => {},
  'adapter.lora.alpha stored as f64': (meta) => meta.set('adapter.lora.alpha', { type: 12, value: 16 }),
  'general.type stored as u32': (meta) => meta.set('general.type', { type: 4, value: 1 }),
  'ffn_up_exps pair stacks 4 of the 8 experts': (meta, ts) => edit(ts, 'blk.1.ffn_up_exps.', (t) => { t.dims[2] = 4n; }),
  'attn_output pair 3-D on a matrix': (meta, ts) => edit(ts, 'blk.0.attn_output.', (t) => { t.dims.push(2n); }),
  'token_embd pair with ranks 8 and 4': (meta, ts) => ts.push(
    { name: 'token_embd.weight.lora_a', dims: [8n, 2050n], type: 0, bytes: null }, { name: 'token_embd.weight.lora_b', dims: [4n, 256n], type: 0, bytes: null }),
  'lora_a of type i32': (meta, ts) => edit(ts, 'blk.0.attn_q.weight.lora_a', (t) => { t.type = 26; }),
  'a pair on attn_norm (a vector)': (meta, ts) => ts.push(
    { name: 'blk.0.attn_norm.weight.lora_a', dims: [256n, 8n], type: 0, bytes: null }, { name: 'blk.0.attn_norm.weight.lora_b', dims: [8n, 1n], type: 0, bytes: null }),
  'adapter.lora.alpha NaN': (meta) => meta.set('adapter.lora.alpha', { type: 6, value: Number.NaN }),
};

function edit(ts, prefix, f) {
  for (const t of ts) {
    if (!t.name.startsWith(prefix)) continue;
    f(t);
    t.bytes = null;
  }
}

async function writeCase(adapterPath, name, out) {
  const { parseGguf } = await import('../dist/gguf/reader.js');
  const { encodeGgufHeader } = await import('../dist/gguf/writer.js');
  const base = readFileSync(adapterPath);
  const file = parseGguf(base);
  const meta = new Map([...file.metadata].map(([k, e]) => [k, e.type === 9 ? { type: 9, arrayType: e.arrayType, value: [...e.value] } : { type: e.type, value: e.value }]));
  const tensors = file.tensors.map((t) => ({
    name: t.name, dims: [...t.dims], type: t.type, bytes: base.subarray(Number(file.dataOffset + t.offset), Number(file.dataOffset + t.offset + t.bytes)),
  }));
  CASES[name](meta, tensors);
  const { header, sizes, alignment } = encodeGgufHeader(meta, tensors.map((t) => ({ name: t.name, dims: t.dims, type: t.type, data: () => [] })));
  const parts = [header];
  tensors.forEach((t, i) => {
    const n = Number(sizes[i]);
    parts.push(t.bytes && t.bytes.length === n ? t.bytes : Buffer.alloc(n, 0x11), Buffer.alloc((alignment - (n % alignment)) % alignment));
  });
  writeFileSync(out, Buffer.concat(parts));
}

const { values } = parseArgs({ options: { model: { type: 'string', default: join(root, 'test', 'fixtures', '.generated', 'huozi-tiny-f16.gguf') }, child: { type: 'string' } } });

if (values.child) {
  // In the child: the addon directly, as llama.cpp alone would take the file.
  const { binding } = await import('../dist/binding.js');
  const native = binding();
  const model = await native.loadModel(values.model, {}).promise;
  let lora;
  try {
    lora = await model.loadLora(values.child);
  } catch (error) {
    console.log(`llama.cpp refuses it: ${String(error.message).split('\n')[0].slice(0, 120)}`);
    process.exit(0);
  }
  const ctx = await model.createContext({ contextSize: 64, batchSize: 64, threads: 1 });
  ctx.setLoras([{ adapter: lora, scale: 1 }]);
  await ctx.generate(model.tokenize('请背诵《春晓》', true, false), { temperature: 0, maxTokens: 2, stopAtEog: false });
  console.log('loads and generates');
  process.exit(0);
}

const { convertLora, validateLoraFile, LoraError } = await import('../dist/index.js');
const work = mkdtempSync(join(tmpdir(), 'huozi-lora-raw-'));
const adapter = join(work, 'adapter.gguf');
await convertLora(join(root, 'test', 'fixtures', 'huozi-tiny-lora'), { base: values.model, output: adapter, outType: 'f16' });
console.log('| adapter | llama.cpp alone (the addon, no check) | `validateLoraForModel` |\n| --- | --- | --- |');
for (const name of Object.keys(CASES)) {
  const file = join(work, `case-${Object.keys(CASES).indexOf(name)}.gguf`);
  await writeCase(adapter, name, file);
  const r = spawnSync(process.execPath, [self, '--model', values.model, '--child', file], { encoding: 'utf8', timeout: 60_000 });
  const assert = /GGML_ASSERT\([^)]*\)+ failed|GGML_ABORT[^\n]*/.exec(r.stderr ?? '')?.[0];
  const raw = r.signal ? `**${r.signal}**${assert ? `: \`${assert}\`` : ''}` : (r.stdout.trim() || `exit ${r.status}`);
  let ours;
  try {
    await validateLoraFile(file, values.model);
    ours = 'accepted';
  } catch (error) {
    ours = error instanceof LoraError ? `LoraError (${error.reason}): ${error.message.replace(`${file}: `, '')}` : `${error.name}: ${error.message}`;
  }
  console.log(`| ${name} | ${raw.replace(/\|/g, '\\|')} | ${ours.replace(/\|/g, '\\|')} |`);
}
