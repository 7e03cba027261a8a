#!/usr/bin/env node
// npm run bench: prompt processing (pp512) and generation (tg128) speed of our addon, of llama.cpp's own
// llama-bench built from the same vendor tree (scripts/native-tools.mjs), and of node-llama-cpp@3.21.1,
// side by side in one run. Each measurement runs in a fresh process; the three are interleaved, rotating
// their order every round, and each figure is the median of the rounds. Writes docs/benchmarks.md.
//
//   npm run bench -- --gpu: the GPU tables instead (scripts/gpu-check.mjs, on a CUDA build)
//   npm run bench -- --server: the server benchmark instead (scripts/bench/server.mjs)
//   npm run bench [-- --rounds 5 --threads 1,2 --models a.gguf,b.gguf --no-node-llama-cpp --out docs/benchmarks.md]
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
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
const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '9' },
    threads: { type: 'string', default: '1,2' },
    models: { type: 'string' },
    prompt: { type: 'string', default: '512' },
    gen: { type: 'string', default: '128' },
    'no-node-llama-cpp': { type: 'boolean', default: false },
    out: { type: 'string', default: join(root, 'docs', 'benchmarks.md') },
  },
});
const rounds = Number(values.rounds);
const threadCounts = values.threads.split(',').map(Number);
const prompt = Number(values.prompt);
const gen = Number(values.gen);
const models = values.models
  ? values.models.split(',').map((m) => resolve(m))
  : [join(root, 'models', 'huozi-tiny-q4_0.gguf'), await ensureF16()];

buildNativeTools(['llama-bench']);
if (!existsSync(join(root, 'dist', 'index.js'))) execFileSync('npx', ['tsc', '-p', 'tsconfig.json'], { cwd: root, stdio: 'inherit' });

const runners = {
  'huozi-gguf': (model, threads) =>
    JSON.parse(execFileSync(process.execPath, [join(root, 'scripts/bench/addon.mjs'), model, threads, prompt, gen], { encoding: 'utf8' })),
  'llama-bench': (model, threads) => {
    const json = JSON.parse(
      execFileSync(nativeTool('llama-bench'), ['-m', model, '-t', String(threads), '-p', String(prompt), '-n', String(gen), '-r', '1', '-o', 'json'], {
        encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'],
      }),
    );
    return { pp: json.find((r) => r.n_prompt > 0).avg_ts, tg: json.find((r) => r.n_gen > 0).avg_ts };
  },
};
if (!values['no-node-llama-cpp']) {
  runners['node-llama-cpp 3.21.1'] = (model, threads) =>
    JSON.parse(execFileSync(process.execPath, [join(root, 'scripts/bench/node-llama-cpp.mjs'), model, threads, prompt, gen], {
      encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'],
    }));
}
const names = Object.keys(runners);
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

const rows = [];
for (const model of models) {
  for (const threads of threadCounts) {
    const samples = Object.fromEntries(names.map((n) => [n, { pp: [], tg: [] }]));
    for (let round = 0; round < rounds; round++) {
      const order = names.map((_, i) => names[(i + round) % names.length]);
      for (const name of order) {
        const r = runners[name](model, threads);
        samples[name].pp.push(r.pp);
        samples[name].tg.push(r.tg);
      }
    }
    const native = samples['llama-bench'];
    for (const name of names) {
      const pp = median(samples[name].pp);
      const tg = median(samples[name].tg);
      // Ratios pair each round's measurement with llama-bench's from the same round (seconds apart), then take
      // the median: the machine's speed drifts by ±30% over minutes, far more than within a round.
      const ppRatio = median(samples[name].pp.map((x, i) => x / native.pp[i]));
      const tgRatio = median(samples[name].tg.map((x, i) => x / native.tg[i]));
      rows.push({ model: basename(model), threads, name, pp, tg, ppRatio, tgRatio });
      process.stdout.write(`${basename(model)} t=${threads} ${name}: pp${prompt} ${pp.toFixed(0)} t/s (${ppRatio.toFixed(2)}x), tg${gen} ${tg.toFixed(0)} t/s (${tgRatio.toFixed(2)}x)\n`);
    }
  }
}

const commit = (() => {
  try {
    return execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: root, encoding: 'utf8' }).trim();
  } catch {
    return 'unknown';
  }
})();
const table = [
  `| model | threads | runtime | pp${prompt} t/s | vs native | tg${gen} t/s | vs native |`,
  '| --- | ---: | --- | ---: | ---: | ---: | ---: |',
  ...rows.map((r) => `| ${r.model} | ${r.threads} | ${r.name} | ${r.pp.toFixed(0)} | ${r.ppRatio.toFixed(2)}x | ${r.tg.toFixed(0)} | ${r.tgRatio.toFixed(2)}x |`),
].join('\n');
const argv = process.argv.slice(2).join(' ');
const doc = `# Benchmarks

Produced by \`npm run bench${argv ? ` -- ${argv}` : ''}\` (scripts/bench.mjs) on ${new Date().toISOString().slice(0, 10)}, commit ${commit}:
${cpus().length} × ${cpus()[0]?.model ?? 'unknown CPU'}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}, CPU build.

In each of ${rounds} rounds every runtime runs once, in a fresh process, in rotating order. t/s figures are
medians over the rounds; "vs native" is the median over rounds of the ratio to llama.cpp's own
\`llama-bench\` *in the same round* (built from the same pinned tree with the same flags,
\`scripts/native-tools.mjs\`), which cancels most of this machine's drift.
pp: ${prompt} prompt tokens into an empty context in one batch, the very batches llama-bench draws (glibc's
\`rand()\` reproduced, scripts/bench/prompt-tokens.mjs); tg: ${gen} tokens decoded one at a time. Our tg
includes sampling and detokenizing every token and streaming the text to a JS \`for await\` loop;
llama-bench's does neither.

${table}
`;
writeFileSync(values.out, doc);
console.log(`\n${table}\n\nwrote ${relative(root, values.out)}`);
