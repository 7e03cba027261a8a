#!/usr/bin/env node
// npm run bench: prompt processing (pp512) and generation (tg128) speed of our addon, of llama.cpp's own
// llama-bench linked to the same compiled libraries as the addon being measured (scripts/native-tools.mjs
// finds the tree that built it), and of node-llama-cpp@3.21.1, side by side in one run. Each measurement runs in
// a fresh process; the three are interleaved, rotating their order every round, and each figure is the median
// of the rounds. node-llama-cpp is also measured with no thread settings at all (its default), in fewer rounds.
// Writes docs/benchmarks.md, all of it, from what this run measured.
//
//   npm run bench -- --gpu: the GPU tables instead (scripts/gpu-check.mjs, on a CUDA build)
//   npm run bench -- --server: the server benchmark instead (scripts/bench/server.mjs)
//   npm run bench -- --constrained: generation under a JSON Schema against llama-server (scripts/bench/constrained.mjs)
//   npm run bench -- --embeddings: embedding throughput against llama-embedding (scripts/bench/embeddings.mjs)
//   npm run bench [-- --rounds 5 --threads 1,2 --models a.gguf,b.gguf --no-node-llama-cpp --nlc-default-rounds 3
//                     --out docs/benchmarks.md]
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, totalmem } from 'node:os';
import { basename, dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { ensureF16 } from './fixture.mjs';
import { buildNativeTools, nativeTool } from './native-tools.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
if (process.argv.includes('--gpu')) {
  // On a CUDA build (scripts/build.mjs --gpu cuda --native-tools): the Huozi-3.5-shaped VRAM and speed tables
  // against llama-bench (scripts/gpu-check.mjs; models in .build/gpuwork, output in .build/gpuwork/gpu.md).
  const { spawnSync } = await import('node:child_process');
  const work = join(root, '.build', 'gpuwork');
  for (const args of [['prepare', work], ['measure', work, join(work, 'gpu.md'), '8']]) {
    const r = spawnSync(process.execPath, [join(root, 'scripts', 'gpu-check.mjs'), ...args], { stdio: 'inherit' });
    if (r.status !== 0) process.exit(r.status ?? 1);
  }
  process.exit(0);
}
if (process.argv.includes('--server')) {
  // The server benchmark (huozi-gguf serve vs llama-server) has its own options: scripts/bench/server.mjs.
  await import('./bench/server.mjs');
  process.exit(0);
}
if (process.argv.includes('--embeddings')) {
  // Embedding throughput against llama-embedding: scripts/bench/embeddings.mjs, with its own options; it writes its
  // own section of docs/benchmarks.md.
  await import('./bench/embeddings.mjs');
  process.exit(0);
}
if (process.argv.includes('--constrained')) {
  // Constrained generation (huozi-gguf serve vs llama-server under one JSON Schema) and the grammar compile time:
  // scripts/bench/constrained.mjs, with its own options.
  await import('./bench/constrained.mjs');
  process.exit(0);
}
const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '9' },
    threads: { type: 'string', default: '1,2' },
    models: { type: 'string' },
    prompt: { type: 'string', default: '512' },
    gen: { type: 'string', default: '128' },
    'no-node-llama-cpp': { type: 'boolean', default: false },
    // Rounds of node-llama-cpp with its default threads (max(4, cores): slow on a small machine); 0: none.
    'nlc-default-rounds': { type: 'string', default: '3' },
    // ... and the tokens it generates then (each takes ~0.6 s on 2 cores).
    'nlc-default-gen': { type: 'string', default: '16' },
    out: { type: 'string', default: join(root, 'docs', 'benchmarks.md') },
  },
});
const rounds = Number(values.rounds);
const threadCounts = values.threads.split(',').map(Number);
const prompt = Number(values.prompt);
const gen = Number(values.gen);
const withNlc = !values['no-node-llama-cpp'];
const nlcDefaultRounds = withNlc ? Number(values['nlc-default-rounds']) : 0;
const nlcDefaultGen = Number(values['nlc-default-gen']);
const models = values.models
  ? values.models.split(',').map((m) => resolve(m))
  : [join(root, 'models', 'huozi-tiny-q4_0.gguf'), await ensureF16()];

execFileSync('npx', ['tsc', '-p', 'tsconfig.json'], { cwd: root, stdio: 'inherit' });
// llama-bench from the tree that built the addon this run loads (or, failing that, .build/native: then the
// page says so).
const tools = buildNativeTools(['llama-bench']);
const llamaBench = nativeTool('llama-bench');
const { systemInfo } = await import(join(root, 'dist', 'index.js'));
const addonInfo = systemInfo();

// What llama-bench said about itself (its JSON) and which CPU backend ggml loaded for it (stderr, prebuilt
// libraries only), from its first run.
let benchSelf;
const runners = {
  'huozi-gguf': (model, threads) => {
    const r = JSON.parse(execFileSync(process.execPath, [join(root, 'scripts/bench/addon.mjs'), model, threads, prompt, gen], { encoding: 'utf8' }));
    return { pp: r.pp, tg: r.tgWall, tgNative: r.tg };
  },
  'llama-bench': (model, threads) => {
    const r = spawnSync(llamaBench, ['-m', model, '-t', String(threads), '-p', String(prompt), '-n', String(gen), '-r', '1', '-o', 'json'], {
      encoding: 'utf8', maxBuffer: 64 << 20,
    });
    if (r.status !== 0) throw new Error(`${llamaBench} failed (${r.status}): ${r.stderr.slice(-2000)}`);
    const json = JSON.parse(r.stdout);
    const loaded = /loaded CPU backend from (\S+)/.exec(r.stderr)?.[1];
    benchSelf ??= { ...json[0], cpuBackend: loaded ? basename(loaded) : undefined };
    const tg = json.find((x) => x.n_gen > 0).avg_ts;
    return { pp: json.find((x) => x.n_prompt > 0).avg_ts, tg, tgNative: tg };
  },
};
const nlc = (model, threads, tokens = gen) => {
  const r = JSON.parse(execFileSync(process.execPath, [join(root, 'scripts/bench/node-llama-cpp.mjs'), model, String(threads), prompt, tokens], {
    encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'],
  }));
  return { pp: r.pp, tg: r.tgWall, tgNative: null, threads: r.threads };
};
if (withNlc) runners['node-llama-cpp 3.21.1'] = nlc;
const names = Object.keys(runners);
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

const rows = [];
const defaults = [];
const KEYS = ['pp', 'tg', 'tgNative'];
for (const model of models) {
  for (const threads of threadCounts) {
    const samples = Object.fromEntries(names.map((n) => [n, { pp: [], tg: [], tgNative: [] }]));
    for (let round = 0; round < rounds; round++) {
      const order = names.map((_, i) => names[(i + round) % names.length]);
      for (const name of order) {
        const r = runners[name](model, threads);
        for (const k of KEYS) samples[name][k].push(r[k]);
      }
    }
    const native = samples['llama-bench'];
    for (const name of names) {
      const row = { model: basename(model), threads, name };
      for (const k of KEYS) {
        if (samples[name][k][0] === null) continue;
        row[k] = median(samples[name][k]);
        // Ratios pair each round's measurement with llama-bench's from the same round (seconds apart), then take
        // the median: the machine's speed drifts by ±30% over minutes, far more than within a round.
        row[`${k}Ratio`] = median(samples[name][k].map((x, i) => x / native[k === 'pp' ? 'pp' : 'tg'][i]));
      }
      rows.push(row);
      process.stdout.write(`${row.model} t=${threads} ${name}: pp${prompt} ${row.pp.toFixed(0)} t/s (${row.ppRatio.toFixed(2)}x), ` +
        `tg${gen} ${row.tg.toFixed(0)} t/s (${row.tgRatio.toFixed(2)}x)` +
        (row.tgNative === undefined ? '' : `, native clock ${row.tgNative.toFixed(0)} t/s (${row.tgNativeRatio.toFixed(2)}x)`) + '\n');
    }
  }
  // node-llama-cpp as a user gets it without thread settings.
  if (nlcDefaultRounds > 0) {
    const runs = [];
    for (let round = 0; round < nlcDefaultRounds; round++) {
      runs.push(nlc(model, 'default', nlcDefaultGen));
      process.stdout.write(`${basename(model)} node-llama-cpp default threads (${runs.at(-1).threads}): ` +
        `pp${prompt} ${runs.at(-1).pp.toFixed(1)} t/s, tg${nlcDefaultGen} ${runs.at(-1).tg.toFixed(2)} t/s\n`);
    }
    defaults.push({
      model: basename(model), threads: [...new Set(runs.map((r) => r.threads))].join('/'),
      pp: median(runs.map((r) => r.pp)), tg: median(runs.map((r) => r.tg)), n: runs.length,
    });
  }
}

const commit = (() => {
  try {
    return execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: root, encoding: 'utf8' }).trim();
  } catch {
    return 'unknown';
  }
})();
const fmt = (x) => (x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2));
const cell = (row, k) => (row[k] === undefined ? '—' : fmt(row[k]));
const ratio = (row, k) => (row[`${k}Ratio`] === undefined ? '—' : `${row[`${k}Ratio`].toFixed(2)}x`);
const table = [
  `| model | threads | runtime | pp${prompt} t/s | vs llama-bench | tg${gen} t/s, as a user sees it | vs llama-bench | tg${gen} t/s, native clock | vs llama-bench |`,
  '| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |',
  ...rows.map((r) => `| ${r.model} | ${r.threads} | ${r.name} | ${cell(r, 'pp')} | ${ratio(r, 'pp')} | ${cell(r, 'tg')} | ${ratio(r, 'tg')} | ${cell(r, 'tgNative')} | ${ratio(r, 'tgNative')} |`),
].join('\n');

// node-llama-cpp: its best thread count among those measured, and its default.
const nlcLines = [];
if (withNlc) {
  for (const model of models.map((m) => basename(m))) {
    const mine = rows.filter((r) => r.model === model && r.name.startsWith('node-llama-cpp'));
    const best = mine.reduce((a, b) => (b.tg > a.tg ? b : a));
    const d = defaults.find((x) => x.model === model);
    nlcLines.push(`| ${model} | best of ${mine.map((r) => r.threads).join(', ')} threads: ${best.threads} | ${fmt(best.pp)} | ${fmt(best.tg)} (tg${gen}) |`);
    if (d) nlcLines.push(`| ${model} | default (none set; it used ${d.threads}), median of ${d.n} runs | ${fmt(d.pp)} | ${fmt(d.tg)} (tg${nlcDefaultGen}) |`);
  }
}
const nlcTable = nlcLines.length === 0 ? '' : `
node-llama-cpp by thread count: its best among the counts above, and what it does with no thread settings
(\`getLlama()\` then takes \`maxThreads\` = max(4, this machine's ${availableParallelism()} cores), and a context uses
all of them). With its default it generates only ${nlcDefaultGen} tokens per run (\`--nlc-default-gen\`), in ${nlcDefaultRounds}
runs (\`--nlc-default-rounds\`), as it can be very slow:

| model | node-llama-cpp threads | pp${prompt} t/s | tg t/s, as a user sees it |
| --- | --- | ---: | ---: |
${nlcLines.join('\n')}
`;

const rel = (p) => (p.startsWith(root) ? relative(root, p) : p);
const addonCpu = addonInfo.cpuBackend
  ? `CPU backend \`${addonInfo.cpuBackend}\`, the kernel set ggml picked for this CPU${process.env.HUOZI_CPU_VARIANT ? ` (forced: HUOZI_CPU_VARIANT=${process.env.HUOZI_CPU_VARIANT})` : ''}`
  : 'one CPU backend compiled in (static)';
const benchCpu = benchSelf?.cpuBackend
  ? `CPU backend \`${benchSelf.cpuBackend}\` (ggml's pick for this CPU, from its log)`
  : 'its CPU backend compiled in (static)';
const libraries = `- huozi-gguf: \`${rel(addonInfo.addon?.path ?? 'unknown')}\` (${addonInfo.addon?.variant ?? 'unknown'} build), ${addonCpu};
  llama.cpp reports \`${(addonInfo.llamaCpp ?? '').trim().replace(/\s*\|\s*$/, '')}\`.
- llama-bench: \`${rel(llamaBench)}\`, ${benchCpu}; ${tools.sameLibraries && tools.fallback.length === 0
    ? 'linked to the same compiled libraries as the addon'
    : '**not** linked to the addon\'s libraries'} (${tools.why.replaceAll(`${root}/`, '')}); llama.cpp build ${benchSelf?.build_commit ?? '?'}
  (${benchSelf?.build_number ?? '?'}), \`${benchSelf?.cpu_info ?? '?'}\`.
- node-llama-cpp 3.21.1: its own prebuilt llama.cpp binary (older than ours), CPU only.`;

const argv = process.argv.slice(2).join(' ');
const doc = `# Benchmarks

Produced by \`npm run bench${argv ? ` -- ${argv}` : ''}\` (scripts/bench.mjs) on ${new Date().toISOString().slice(0, 10)}, commit ${commit}:
${cpus().length} × ${cpus()[0]?.model ?? 'unknown CPU'}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}. Every figure
on this page comes from that run.

Libraries:
${libraries}

In each of ${rounds} rounds every runtime runs once, in a fresh process, in rotating order. t/s figures are
medians over the rounds; "vs llama-bench" is the median over rounds of the ratio to llama.cpp's own
\`llama-bench\` *in the same round*, which cancels most of this machine's drift.

- pp: ${prompt} prompt tokens into an empty context in one batch, the very batches llama-bench draws (glibc's
  \`rand()\` reproduced, scripts/bench/prompt-tokens.mjs), timed around the awaited call.
- tg, as a user sees it: ${gen} + 1 tokens from a one-token prompt in an empty context (${gen} + 1 decodes of one
  token, the first the prompt's), greedy, timed by the wall clock from the call that starts the generation to
  the end of the \`for await\` loop that takes it. Ours streams text (sampled, detokenized, delivered to JS every
  16 ms); node-llama-cpp's \`sequence.evaluate()\` yields token ids. llama-bench's row repeats its own figure
  (${gen} decodes by its clock, no sampling).
- tg, native clock: ours by the generation's own clock (\`result.timings.generateMs\`: the ${gen} decodes after the
  prompt's, with sampling and detokenizing, without the JS side); node-llama-cpp has no such clock.

${table}
${nlcTable}`;
// The embeddings section (npm run bench -- --embeddings) is that run's: kept as it is.
const embeddingsSection = existsSync(values.out) ? /<!-- embeddings-bench -->[\s\S]*?<!-- \/embeddings-bench -->\n?/.exec(readFileSync(values.out, 'utf8'))?.[0] : undefined;
writeFileSync(values.out, embeddingsSection ? `${doc.trimEnd()}\n\n${embeddingsSection}` : doc);
console.log(`\n${table}\n${nlcTable}\nwrote ${relative(root, values.out)}`);
