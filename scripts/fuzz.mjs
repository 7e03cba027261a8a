#!/usr/bin/env node
// npm run fuzz: seeded cases from fuzz targets (scripts/fuzz/targets/<name>.mjs), each run in a worker process
// through the public API. A target's runCase says whether a case ended cleanly (and in which class: e.g.
// 'rejected: GgufError', 'loaded') or unexpectedly; the parent adds the failures a worker cannot report itself:
// killed by a signal (llama.cpp's abort(), V8 out of memory), hanging past --timeout, exiting, or going over
// --max-rss-mb (its peak RSS, VmHWM, is read after each case and reset, and its RSS is watched during a case).
// Prints the tally per target and optionally writes docs/robustness.md (a section per target; other targets'
// sections and the "Residual risks" section of an existing file are kept).
//
//   node scripts/fuzz.mjs [--target gguf|all|a,b] [--cases 20000 | --cases gguf=20000,arrays=5000] [--seed 1]
//                         [--timeout 20000] [--max-rss-mb 1024] [--base models/huozi-tiny-q4_0.gguf]
//                         [--out docs/robustness.md] [--keep-failures dir] [--json] [--raw]
//
// A target module exports: title (one line), optional description (a paragraph for the docs) and classes
// ({ class: what the user gets }), setup(workDir, options) -> state (once, in this process),
// makeCase(state, seed, index) -> { path, kinds } (writes the case, deterministic from the seed) and
// runCase(path) -> outcome (in the worker; see scripts/fuzz/outcome.mjs).
import { spawn } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { basename, dirname, join, relative, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const { values } = parseArgs({
  options: {
    // Where the target modules are (the framework's own test points it at a folder of its own).
    'target-dir': { type: 'string', default: join(root, 'scripts', 'fuzz', 'targets') },
    target: { type: 'string', default: 'gguf' },
    cases: { type: 'string', default: '20000' },
    seed: { type: 'string', default: '1' },
    timeout: { type: 'string', default: '20000' },
    'max-rss-mb': { type: 'string', default: '1024' },
    base: { type: 'string' },
    out: { type: 'string' },
    'keep-failures': { type: 'string' },
    json: { type: 'boolean', default: false },
    // gguf target: without our reader and validator (llama.cpp alone), to see what they prevent.
    raw: { type: 'boolean', default: false },
  },
});

const targetsDir = resolve(values['target-dir']);

function fail(message) {
  process.stderr.write(`fuzz: ${message}\n`);
  process.exit(2);
}

const available = readdirSync(targetsDir).filter((f) => f.endsWith('.mjs')).map((f) => basename(f, '.mjs')).sort();
const targetNames = values.target === 'all' ? available : values.target.split(',').map((s) => s.trim()).filter(Boolean);
for (const t of targetNames) if (!available.includes(t)) fail(`unknown target "${t}" (known: ${available.join(', ')})`);
if (values.raw && targetNames.some((t) => t !== 'gguf')) fail('--raw applies to the gguf target only');

const positive = (name, text) => {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 0) fail(`--${name} must be a whole number, not "${text}"`);
  return n;
};
const caseCounts = new Map();
let defaultCases;
for (const part of values.cases.split(',')) {
  const [k, n] = part.includes('=') ? part.split('=') : [undefined, part];
  if (k === undefined) defaultCases = positive('cases', n);
  else if (!available.includes(k.trim())) fail(`--cases names the unknown target "${k}"`);
  else caseCounts.set(k.trim(), positive('cases', n));
}
const casesOf = (t) => caseCounts.get(t) ?? defaultCases ?? 20000;
const seed0 = positive('seed', values.seed);
const timeoutMs = positive('timeout', values.timeout);
const maxRssMb = positive('max-rss-mb', values['max-rss-mb']);

const procStatus = (pid, field) => {
  try {
    const m = new RegExp(`${field}:\\s+(\\d+) kB`).exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : undefined;
  } catch {
    return undefined; // not Linux, or the process is gone
  }
};

class Worker {
  constructor(targetPath) {
    this.proc = spawn(process.execPath, [join(root, 'scripts/fuzz/child.mjs'), targetPath], {
      stdio: ['pipe', 'pipe', 'ignore'],
      env: { ...process.env, HUOZI_FUZZ_RAW: values.raw ? '1' : '0' },
    });
    this.lines = createInterface({ input: this.proc.stdout })[Symbol.asyncIterator]();
    this.exit = new Promise((r) => this.proc.once('exit', (code, signal) => r({ code, signal })));
  }
  /** The worker's peak RSS in MiB since the last reset (VmHWM), then resets it so the next case starts afresh. */
  peakMb() {
    const peak = procStatus(this.proc.pid, 'VmHWM');
    try {
      writeFileSync(`/proc/${this.proc.pid}/clear_refs`, '5');
    } catch {}
    return peak;
  }
  async run(path) {
    this.proc.stdin.write(`${path}\n`);
    let timer;
    let watch;
    const timeout = new Promise((r) => (timer = setTimeout(() => r({ timeout: true }), timeoutMs)));
    // Watch the RSS during a long case, so that a runaway one is stopped before it takes the machine down.
    const overRss = new Promise((r) => {
      watch = setInterval(() => {
        const rss = procStatus(this.proc.pid, 'VmRSS');
        if (rss !== undefined && rss > maxRssMb) r({ rss });
      }, 100);
    });
    const line = this.lines.next().then((x) => (x.done ? null : { line: x.value }));
    const r = await Promise.race([line, this.exit.then((e) => ({ exit: e })), timeout, overRss]);
    clearTimeout(timer);
    clearInterval(watch);
    if (r?.line) {
      const outcome = JSON.parse(r.line);
      outcome.peakRssMb = this.peakMb();
      if (outcome.peakRssMb !== undefined && outcome.peakRssMb > maxRssMb) {
        return { ...outcome, result: 'rss', class: undefined, message: `peak RSS ${outcome.peakRssMb.toFixed(0)} MiB over --max-rss-mb ${maxRssMb} (${outcome.class ?? outcome.message})` };
      }
      return outcome;
    }
    if (r?.timeout || r?.rss) {
      const peakRssMb = procStatus(this.proc.pid, 'VmHWM');
      this.proc.kill('SIGKILL');
      await this.exit;
      return r.timeout
        ? { result: 'timeout', peakRssMb, message: `no outcome after ${timeoutMs} ms` }
        : { result: 'rss', peakRssMb, message: `RSS ${r.rss.toFixed(0)} MiB over --max-rss-mb ${maxRssMb} during the case` };
    }
    const e = r?.exit ?? (await this.exit);
    return { result: e.signal ? 'signal' : 'exit', signal: e.signal, code: e.code, message: e.signal ? `killed by ${e.signal}` : `exited with ${e.code}` };
  }
  close() {
    this.proc.stdin.end();
  }
  /** Ends a worker that is replaced: one that reported a case over the RSS bound is still alive, waiting for input. */
  retire() {
    if (this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill('SIGKILL');
  }
}

const FAILURES = ['unexpected', 'signal', 'timeout', 'exit', 'rss'];
const fold = (s) => String(s ?? '').replace(/\/tmp\/[^\s:'"]+/g, '<case>').replace(/\d+/g, 'N').replace(/"[^"]*"/g, '"…"').slice(0, 90);

async function runTarget(name) {
  const targetPath = join(targetsDir, `${name}.mjs`);
  const target = await import(pathToFileURL(targetPath).href);
  const cases = casesOf(name);
  const work = mkdtempSync(join(tmpdir(), `huozi-fuzz-${name}-`));
  const state = await target.setup(work, { base: values.base, raw: values.raw });
  const tally = {};
  const failures = [];
  const reasons = new Map();
  let peakRssMb = 0;
  let worker = new Worker(targetPath);
  const started = Date.now();
  for (let i = 0; i < cases; i++) {
    const seed = seed0 * 1_000_003 + i;
    const { path, kinds } = await target.makeCase(state, seed, i);
    const outcome = await worker.run(path);
    peakRssMb = Math.max(peakRssMb, outcome.peakRssMb ?? 0);
    const key = outcome.result === 'clean' ? outcome.class : outcome.result;
    tally[key] = (tally[key] ?? 0) + 1;
    if (outcome.result !== 'clean' || outcome.message !== undefined) {
      const reason = `${key}: ${fold(outcome.message)}`;
      reasons.set(reason, (reasons.get(reason) ?? 0) + 1);
    }
    if (outcome.result !== 'clean') {
      failures.push({ case: i, seed, kinds, ...outcome });
      if (values['keep-failures']) {
        mkdirSync(values['keep-failures'], { recursive: true });
        copyFileSync(path, join(values['keep-failures'], `${name}-case-${i}-seed-${seed}${path.match(/\.[a-z]+$/)?.[0] ?? ''}`));
      }
      // A worker that reported an unexpected error is still alive; one that died, hung or grew is replaced.
      // (A case can finish before the RSS watch sees its peak: the worker then answered, is alive, and must be ended
      // here, or its open pipes keep this process from exiting.)
      if (outcome.result !== 'unexpected') {
        worker.retire();
        worker = new Worker(targetPath);
      }
    }
    if ((i + 1) % 1000 === 0 && !values.json) {
      process.stderr.write(`${name}: ${i + 1}/${cases} cases, ${((Date.now() - started) / 1000).toFixed(0)} s, peak RSS ${peakRssMb.toFixed(0)} MiB: ${JSON.stringify(tally)}\n`);
    }
  }
  worker.close();
  await worker.exit;
  if (typeof target.teardown === 'function') await target.teardown(state);
  rmSync(work, { recursive: true, force: true });
  const seconds = (Date.now() - started) / 1000;
  return { target: name, title: target.title, description: target.description, classes: target.classes ?? {}, cases, seconds, tally, failures, reasons, peakRssMb };
}

const results = [];
for (const name of targetNames) results.push(await runTarget(name));
const failed = results.some((r) => r.failures.length > 0);

if (values.json) {
  console.log(JSON.stringify({
    seed: seed0, maxRssMb, cpu: cpus()[0]?.model,
    targets: results.map(({ description, classes, reasons, ...r }) => r),
  }));
} else {
  for (const r of results) {
    console.log(`${r.target}: ${r.cases} cases in ${r.seconds.toFixed(0)} s, peak RSS ${r.peakRssMb.toFixed(0)} MiB: ${JSON.stringify(r.tally)}`);
    for (const f of r.failures) console.log('FAILURE', r.target, JSON.stringify(f));
  }
}

function section(r) {
  const clean = Object.entries(r.tally).filter(([k]) => !FAILURES.includes(k)).sort((a, b) => b[1] - a[1]);
  const top = [...r.reasons].sort((a, b) => b[1] - a[1]).slice(0, 25);
  const byKind = [...r.failures.reduce((m, f) => m.set(f.kinds?.[0], (m.get(f.kinds?.[0]) ?? 0) + 1), new Map())].sort((a, b) => b[1] - a[1]);
  return `<!-- fuzz-target:${r.target} -->
## Target \`${r.target}\`: ${r.title}

${r.description ?? ''}

\`node scripts/fuzz.mjs --target ${r.target} --cases ${r.cases} --seed ${seed0}${values.raw ? ' --raw' : ''}\` on ${new Date().toISOString().slice(0, 10)},
${cpus().length} × ${cpus()[0]?.model}: ${r.cases} cases in ${r.seconds.toFixed(0)} s. Peak RSS of a worker during any one case:
**${r.peakRssMb.toFixed(0)} MiB** (the bound, \`--max-rss-mb\`, is ${maxRssMb} MiB).

| outcome | what the user gets | cases |
| --- | --- | ---: |
${clean.map(([k, n]) => `| ${k} | ${r.classes[k] ?? ''} | ${n} |`).join('\n')}
| **any other error** | a failure: an error of the wrong class, or a bug of our own | **${r.tally.unexpected ?? 0}** |
| **killed by a signal** | a failure: the process dies (llama.cpp's \`abort()\`, V8 out of memory) | **${r.tally.signal ?? 0}** |
| **timed out / hung** | a failure: no outcome within ${timeoutMs / 1000} s | **${r.tally.timeout ?? 0}** |
| **over the RSS bound** | a failure: a worker above ${maxRssMb} MiB | **${r.tally.rss ?? 0}** |
| exited otherwise | a failure | ${r.tally.exit ?? 0} |
${byKind.length ? `\nThe mutations behind the failures, most frequent first: ${byKind.slice(0, 10).map(([k, n]) => `${k} (${n})`).join('; ')}.\n` : ''}
Most frequent reasons (numbers and quoted names folded):

| reason | cases |
| --- | ---: |
${top.map(([reason, n]) => `| ${reason.replace(/\|/g, '\\|')} | ${n} |`).join('\n')}
<!-- /fuzz-target:${r.target} -->
`;
}

if (values.out) {
  const out = resolve(values.out);
  const rel = relative(root, out);
  const RESIDUAL = '## Residual risks';
  let text;
  const existing = existsSync(out) ? readFileSync(out, 'utf8') : '';
  if (existing.includes('<!-- fuzz-target:') || (existing.includes(RESIDUAL) && !values.raw)) {
    text = existing;
  } else {
    const rawNote = values.raw
      ? `**This run skipped huozi-gguf's reader and validator** (\`--raw\`): every file went straight to llama.cpp
through the addon, to show what they prevent. The package never loads files this way.`
      : `The GGUF target's seeds without our reader and validator: \`node scripts/fuzz.mjs --raw --cases 2000 --seed ${seed0}
--out docs/robustness-raw.md\` ([robustness-raw.md](robustness-raw.md)).`;
    text = `# Robustness: fuzzing${values.raw ? ' GGUF loading with llama.cpp alone, for comparison' : ''}

${rawNote}

\`npm run fuzz\` (\`node scripts/fuzz.mjs --target all --out ${rel}\`) runs every target in scripts/fuzz/targets/, each
case in a worker process through the public API; the sections below are each target's last run (a run of some
targets replaces their sections only). A case is clean when it ends in one of its target's classes below;
anything else fails the run: an error of another class, a worker killed by a signal, hanging, or over the RSS
bound. test/native/fuzz.test.ts runs 2,000 cases of each target in CI.
${values.raw ? '' : `
${RESIDUAL}

What the fuzzing and the tests do not cover, and what a user should know:

<!-- residual-risks -->
`}`;
  }
  for (const r of results) {
    const start = `<!-- fuzz-target:${r.target} -->`;
    const end = `<!-- /fuzz-target:${r.target} -->\n`;
    const a = text.indexOf(start);
    const b = text.indexOf(end);
    if (a >= 0 && b > a) {
      text = text.slice(0, a) + section(r) + text.slice(b + end.length);
    } else {
      const at = text.indexOf(RESIDUAL);
      text = at >= 0 ? `${text.slice(0, at)}${section(r)}\n${text.slice(at)}` : `${text.trimEnd()}\n\n${section(r)}`;
    }
  }
  writeFileSync(out, text);
}
process.exitCode = failed ? 1 : 0;
