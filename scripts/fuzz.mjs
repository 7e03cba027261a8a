#!/usr/bin/env node
// npm run fuzz: seeded mutations of the demo model, each loaded in a worker process through the public API.
// Every case must end in one of three clean outcomes: rejected by us (GgufError from our reader/validator),
// rejected by llama.cpp (ModelLoadError: its loader refused the file), or loaded and generated. Anything else is
// a failure: a worker killed (a signal: llama.cpp's abort()) or hanging, and an unexpected error (a TypeError
// of our own, any other error class, or an error while creating a context or generating from a model that
// loaded). Prints and optionally writes the tally.
//
//   node scripts/fuzz.mjs [--cases 20000] [--seed 1] [--timeout 20000] [--base models/huozi-tiny-q4_0.gguf]
//                         [--out docs/robustness.md] [--keep-failures dir]
import { spawn } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { fieldsOf, mutate, semanticMutate } from './fuzz/mutate.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const { values } = parseArgs({
  options: {
    cases: { type: 'string', default: '20000' },
    seed: { type: 'string', default: '1' },
    timeout: { type: 'string', default: '20000' },
    base: { type: 'string', default: join(root, 'models', 'huozi-tiny-q4_0.gguf') },
    out: { type: 'string' },
    'keep-failures': { type: 'string' },
    json: { type: 'boolean', default: false },
    // Without our reader and validator (llama.cpp alone), to see what they prevent.
    raw: { type: 'boolean', default: false },
  },
});
const cases = Number(values.cases);
const seed0 = Number(values.seed);
const timeoutMs = Number(values.timeout);
const base = readFileSync(values.base);
const info = fieldsOf(base);
const work = mkdtempSync(join(tmpdir(), 'huozi-fuzz-'));

class Worker {
  constructor() {
    this.proc = spawn(process.execPath, [join(root, 'scripts/fuzz/child.mjs')], {
      stdio: ['pipe', 'pipe', 'ignore'],
      env: { ...process.env, HUOZI_FUZZ_RAW: values.raw ? '1' : '0' },
    });
    this.lines = createInterface({ input: this.proc.stdout })[Symbol.asyncIterator]();
    this.exit = new Promise((r) => this.proc.once('exit', (code, signal) => r({ code, signal })));
  }
  async run(path) {
    this.proc.stdin.write(`${path}\n`);
    let timer;
    const timeout = new Promise((r) => (timer = setTimeout(() => r({ timeout: true }), timeoutMs)));
    const line = this.lines.next().then((x) => (x.done ? null : { line: x.value }));
    const r = await Promise.race([line, this.exit.then((e) => ({ exit: e })), timeout]);
    clearTimeout(timer);
    if (r?.line) return JSON.parse(r.line);
    if (r?.timeout) {
      this.proc.kill('SIGKILL');
      return { result: 'timeout' };
    }
    const e = r?.exit ?? (await this.exit);
    return { result: e.signal ? 'signal' : 'exit', signal: e.signal, code: e.code };
  }
  close() {
    this.proc.stdin.end();
  }
}

const CLEAN = ['rejected-by-us', 'rejected-by-llama', 'loaded'];
const tally = { 'rejected-by-us': 0, 'rejected-by-llama': 0, loaded: 0, unexpected: 0, signal: 0, timeout: 0, exit: 0 };
const failures = [];
const reasons = new Map();
let worker = new Worker();
const started = Date.now();
for (let i = 0; i < cases; i++) {
  const seed = seed0 * 1_000_003 + i;
  // Half the cases break the structure (bytes, fields, splices); half make one meaningful change.
  const { buf, kinds } = i % 2 === 0 ? mutate(base, info, seed) : semanticMutate(base, seed);
  const path = join(work, `case-${i % 2}.gguf`);
  writeFileSync(path, buf);
  const outcome = await worker.run(path);
  tally[outcome.result] = (tally[outcome.result] ?? 0) + 1;
  if (outcome.result !== 'loaded') {
    const reason = `${outcome.result}: ${String(outcome.message).replace(/\d+/g, 'N').replace(/"[^"]*"/g, '"…"').slice(0, 90)}`;
    reasons.set(reason, (reasons.get(reason) ?? 0) + 1);
  }
  if (!CLEAN.includes(outcome.result)) {
    failures.push({ case: i, seed, kinds, ...outcome });
    if (values['keep-failures']) {
      mkdirSync(values['keep-failures'], { recursive: true });
      copyFileSync(path, join(values['keep-failures'], `case-${i}-seed-${seed}.gguf`));
    }
    // A worker that reported an unexpected error is still alive; one that died or hung is replaced.
    if (outcome.result !== 'unexpected') worker = new Worker();
  }
  if ((i + 1) % 1000 === 0 && !values.json) {
    process.stderr.write(`${i + 1}/${cases} cases, ${((Date.now() - started) / 1000).toFixed(0)} s: ${JSON.stringify(tally)}\n`);
  }
}
worker.close();
rmSync(work, { recursive: true, force: true });
const seconds = (Date.now() - started) / 1000;
const summary = { cases, seed: seed0, seconds, tally, failures, cpu: cpus()[0]?.model };
if (values.json) {
  console.log(JSON.stringify(summary));
} else {
  console.log(JSON.stringify(tally));
  for (const f of failures) console.log('FAILURE', JSON.stringify(f));
}
if (values.out) {
  const top = [...reasons].sort((a, b) => b[1] - a[1]).slice(0, 25);
  const rel = relative(root, resolve(values.out));
  const rawNote = values.raw
    ? `**This run skipped huozi-gguf's reader and validator** (\`--raw\`): every file went straight to llama.cpp
through the addon, to show what they prevent. The package never loads files this way.\n\n`
    : `The same seeds without our reader and validator: \`node scripts/fuzz.mjs --raw --cases 2000 --seed ${seed0}
--out docs/robustness-raw.md\` ([robustness-raw.md](robustness-raw.md)).\n\n`;
  writeFileSync(
    values.out,
    `# Robustness: fuzzing GGUF loading${values.raw ? ' (llama.cpp alone, for comparison)' : ''}

${rawNote}Produced by \`node scripts/fuzz.mjs --cases ${cases} --seed ${seed0}${values.raw ? ' --raw' : ''} --out ${rel}\` on
${new Date().toISOString().slice(0, 10)}, ${cpus().length} × ${cpus()[0]?.model}, in ${seconds.toFixed(0)} s.

Each case is the demo model (\`models/huozi-tiny-q4_0.gguf\`) mutated, seeded. Even cases break the structure
with 1-3 mutations (byte flips, mostly in the header; rewrites of metadata and tensor-info fields with boundary
values; splices; truncations and cuts). Odd cases make one meaningful change to a well-formed file (a metadata
value or its type, a token, a removed or added key, a tensor's type or shape, a removed tensor),
loaded through the public API in a worker process: \`loadModel\` (our TypeScript reader and validator, then
llama.cpp), then a 64-token context, tokenization and two generated tokens. Only three outcomes are clean: a
\`GgufError\` from our reader and validator, llama.cpp's loader refusing the file (\`ModelLoadError\`), or a model
that loads and generates. Anything else is a failure: a worker killed by a signal (llama.cpp's \`abort()\`) or
hanging past ${timeoutMs / 1000} s, and any other error (a bug of our own such as a \`TypeError\`, another error
class, or an error creating a context or generating from a model that loaded).

| outcome | cases |
| --- | ---: |
| rejected by huozi-gguf (GgufError before llama.cpp saw the file) | ${tally['rejected-by-us']} |
| rejected by llama.cpp's loader (ModelLoadError) | ${tally['rejected-by-llama']} |
| loaded and generated | ${tally.loaded} |
| **any other error** | **${tally.unexpected}** |
| **killed by a signal** | **${tally.signal}** |
| **timed out / hung** | **${tally.timeout}** |
| exited otherwise | ${tally.exit} |
${failures.length ? `\nThe mutations behind the failures, most frequent first: ${[...failures.reduce((m, f) => m.set(f.kinds[0], (m.get(f.kinds[0]) ?? 0) + 1), new Map())].sort((a, b) => b[1] - a[1]).slice(0, 10).map(([k, n]) => `${k} (${n})`).join('; ')}.\n` : ''}
Most frequent reasons (numbers and quoted names folded):

| reason | cases |
| --- | ---: |
${top.map(([r, n]) => `| ${r.replace(/\|/g, '\\|')} | ${n} |`).join('\n')}
`,
  );
}
process.exitCode = failures.length ? 1 : 0;
