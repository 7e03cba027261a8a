#!/usr/bin/env node
// Run on the GPU machine (see docs/gpu.md): Huozi's VRAM table and the speed table, ours against llama.cpp's
// own llama-bench built from the same libraries, in one run. Needs a CUDA build with --native-tools.
//
//   node scripts/gpu-check.mjs prepare <dir>        synth Huozi-3.5-shaped q4_0 and q2_k
//   node scripts/gpu-check.mjs placement <dir> <out.jsonl> [threads]   issue #17's budgets and recipe
//   node scripts/gpu-check.mjs runtime <dir> <out.jsonl>   one placement, both runtimes, HUOZI_RUNTIME_THREADS
//   node scripts/gpu-check.mjs measure <dir> <out.md>
import { execFileSync, spawn } from 'node:child_process';
import { appendFileSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { devices, estimateMemory, loadModel, synth } from '../dist/index.js';
import { readGguf } from '../dist/gguf/reader.js';
import { layerCount } from '../dist/placement.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const [command, dir, out, threadsArg] = process.argv.slice(2);
// The same CPU thread count for both runtimes (llama-bench defaults to the physical cores, we to all cores).
const threads = threadsArg ?? '8';
const rounds = Number(process.env.HUOZI_GPU_ROUNDS ?? 3);
const reps = Number(process.env.HUOZI_GPU_REPS ?? 5);
const q4 = join(dir, 'huozi35-q4_0.gguf');
const q2 = join(dir, 'huozi35-q2_k.gguf');
// llama-bench from the same libraries: the dev CUDA build's (build.mjs --native-tools) or HUOZI_LLAMA_BENCH (e.g. the
// CUDA prebuild's, prebuild.mjs --native-tools, with HUOZI_BINDING pointing at that prebuild's addon).
const bench = process.env.HUOZI_LLAMA_BENCH ?? join(root, '.build/cmake/bin/llama-bench');
const MiB = 2 ** 20;
// The measured rows; HUOZI_GPU_CONFIGS=0 or 1,2 keeps only those (to split a measurement over two device calls,
// and so that prepare makes only the files they need).
const only = process.env.HUOZI_GPU_CONFIGS?.split(',').map(Number);
const configs = [
  { name: 'q4_0, all layers', file: q4, ngl: 99, huozi: '28 GB' },
  { name: 'q2_k, all layers', file: q2, ngl: 99, huozi: '18 GB' },
  { name: 'q2_k, 16 layers', file: q2, ngl: 16, huozi: '9.6 GB' },
].filter((_, index) => !only || only.includes(index));

function vramUsedMiB() {
  return execFileSync('nvidia-smi', ['--query-gpu=memory.used', '--format=csv,noheader,nounits'], { encoding: 'utf8' })
    .trim().split('\n').map(Number);
}

/** Runs a command while sampling GPU 0's used memory; returns its output and the peak above the baseline. */
async function withPeak(cmd, args) {
  const base = vramUsedMiB()[0];
  let peak = base;
  const timer = setInterval(() => (peak = Math.max(peak, vramUsedMiB()[0])), 50);
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => (stderr += d));
  const code = await new Promise((r) => child.on('close', r));
  clearInterval(timer);
  if (code !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${code}): ${stderr.slice(-2000)}`);
  return { stdout, peak: peak - base };
}

if (command === 'prepare') {
  mkdirSync(dir, { recursive: true });
  const t0 = Date.now();
  if (!existsSync(q4)) await synth(q4, { shape: 'huozi3.5', type: 'q4_0' });
  console.log(`synth q4_0: ${((Date.now() - t0) / 1000).toFixed(0)} s`);
  const t1 = Date.now();
  if (!configs.some((c) => c.file === q2)) process.exit(0);
  // synth writes q2_k with the per-tensor types llama-quantize picks (test/native/gguf-validate.test.ts checks it):
  // seconds instead of the 235 s requantizing took.
  if (!existsSync(q2)) await synth(q2, { shape: 'huozi3.5', type: 'q2_k' });
  console.log(`synth q2_k: ${((Date.now() - t1) / 1000).toFixed(0)} s`);
} else if (command === 'measure') {
  console.log(JSON.stringify(devices()));
  const rows = [];
  for (const c of configs) {
    // Speed: rounds alternating native and ours, each a fresh process doing a warm-up and `reps` repetitions
    // averaged (llama-bench -r); the figure is the median over rounds. The first native run also gives VRAM.
    const nativeRuns = [];
    const ourRuns = [];
    let nativePeak = 0;
    for (let round = 0; round < rounds; round++) {
      const runNative = async () => {
        const native = await withPeak(bench, ['-m', c.file, '-ngl', String(c.ngl), '-fa', '1', '-t', threads, '-p', '512', '-n', '128', '-r', String(reps), '-o', 'json']);
        const json = JSON.parse(native.stdout);
        nativePeak = Math.max(nativePeak, native.peak);
        nativeRuns.push({ pp: json.find((r) => r.n_prompt > 0).avg_ts, tg: json.find((r) => r.n_gen > 0).avg_ts });
      };
      const runOurs = () =>
        ourRuns.push(JSON.parse(execFileSync(process.execPath, [join(root, 'scripts/bench/addon.mjs'), c.file, threads, '512', '128', String(c.ngl), '1', String(reps)], { encoding: 'utf8' })));
      if (round % 2 === 0) { await runNative(); runOurs(); } else { runOurs(); await runNative(); }
      // Each round as it ends: a run cut short by the machine's time limit still leaves its figures.
      console.log(JSON.stringify({ name: c.name, round, native: nativeRuns.at(-1), ours: ourRuns.at(-1) }));
    }
    const med = (xs) => { const s = [...xs].sort((a, b) => a - b); return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2; };
    const nativePp = med(nativeRuns.map((r) => r.pp));
    const nativeTg = med(nativeRuns.map((r) => r.tg));
    const ourPp = med(ourRuns.map((r) => r.pp));
    const ourTg = med(ourRuns.map((r) => r.tg));
    const native = { peak: nativePeak };
    console.log(JSON.stringify({ name: c.name, nativeRuns, ourRuns }));
    // Ours: a 2048-token context, as Huozi's README.
    const vram = await withPeak(process.execPath, [join(root, 'scripts/gpu-vram.mjs'), c.file, String(c.ngl), '2048']);
    const est = await estimateMemory(c.file, { gpuLayers: c.ngl, contextSize: 2048, flashAttention: true });
    const estGpu = est.filter((d) => d.name !== 'host').reduce((a, d) => a + d.total, 0) / MiB;
    rows.push({ ...c, nativeVram: native.peak, ourVram: vram.peak, estimate: estGpu, nativePp, nativeTg, ourPp, ourTg });
    console.log(JSON.stringify(rows.at(-1)));
  }
  const card = execFileSync('nvidia-smi', ['--query-gpu=name,memory.total', '--format=csv,noheader'], { encoding: 'utf8' }).trim();
  const md = [
    `Card: ${card}. Command: \`node scripts/gpu-check.mjs measure <dir> <out> ${threads}\` (after \`prepare\`), ${new Date().toISOString().slice(0, 16)}Z; flash attention on, ${threads} CPU threads for both; speed: median of ${rounds} alternating rounds, each a warm-up + ${reps} repetitions averaged.`,
    '',
    '| setting | Huozi README | native llama-bench peak (MiB) | ours, contextSize 2048 (MiB) | ours / native | estimate (MiB) | estimate / ours |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: |',
    ...rows.map((r) => `| ${r.name} | ${r.huozi} | ${r.nativeVram} | ${r.ourVram} | ${(r.ourVram / r.nativeVram).toFixed(3)} | ${r.estimate.toFixed(0)} | ${(r.estimate / r.ourVram).toFixed(3)} |`),
    '',
    '| setting | native pp512 t/s | ours pp512 | ratio | native tg128 t/s | ours tg128 | ratio |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: |',
    ...rows.map((r) => `| ${r.name} | ${r.nativePp.toFixed(0)} | ${r.ourPp.toFixed(0)} | ${(r.ourPp / r.nativePp).toFixed(3)} | ${r.nativeTg.toFixed(1)} | ${r.ourTg.toFixed(1)} | ${(r.ourTg / r.nativeTg).toFixed(3)} |`),
  ].join('\n');
  writeFileSync(out, `${md}\n`);
  console.log(md);
} else if (command === 'auto') {
  // Other processes hold the card until about HUOZI_AUTO_FREE_MIB (default 20000) MiB are left: less than the
  // q4_0 model's 25.7 GB of weights, so 'auto' must keep part of it (experts first) on the CPU. Holders are
  // copies of the model itself: all layers while much is left, then as many layers as the rest allows.
  const target = Number(process.env.HUOZI_AUTO_FREE_MIB ?? 20000);
  const holders = [];
  const gpuFree = () => Math.round(devices().find((d) => d.type === 'gpu').free / MiB);
  for (let i = 0; i < 12; i++) {
    const spare = gpuFree() - target;
    if (spare < 27_000) break;
    const h = spawn(process.execPath, [join(root, 'scripts/gpu-vram.mjs'), q4, '99', '512', 'hold'], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise((r) => h.stdout.once('data', r));
    holders.push(h);
    // Seen on the H200: past three copies a fourth added almost nothing; the KV cache below fills the rest.
    if (gpuFree() - target > spare - 5000) break;
  }
  // The rest: llama-bench generating into a context sized to leave `target` free (0.125 MiB a token here).
  const rest = gpuFree() - target - 25_700;
  if (rest > 1000) {
    const h = spawn(bench, ['-m', q4, '-ngl', '99', '-fa', '1', '-p', '0', '-n', String(rest * 8), '-r', '1'], { stdio: 'ignore' });
    holders.push(h);
    for (let i = 0; i < 120 && gpuFree() > target + 4000; i++) await new Promise((r) => setTimeout(r, 1000));
  }
  console.log(`free before: ${JSON.stringify(devices().map((d) => [d.name, Math.round(d.free / MiB)]))}`);
  const t0 = Date.now();
  const model = await loadModel(q4, { gpuLayers: 'auto', fit: { contextSize: 32768 } });
  const context = await model.createContext({ contextSize: 32768, flashAttention: true });
  const r = await context.generate([1, 500, 600], { temperature: 0, maxTokens: 16, stopAtEog: false }).result;
  console.log(JSON.stringify({ plan: model.gpuPlan, seconds: (Date.now() - t0) / 1000, generated: r.tokens.length, tgps: r.timings.tokensPerSecond }));
  console.log(`free after: ${JSON.stringify(devices().map((d) => [d.name, Math.round(d.free / MiB)]))}`);
  await model.dispose();
  for (const h of holders) h.kill();
} else if (command === 'placement' || command === 'runtime') {
  // Issue #17: at each VRAM budget, ours ('auto' with fit.budgetMiB) against llama-bench's best placement that
  // fits the same budget, in each family (-ngl L; -ngl 99 -ncmoe N), searched by llama.cpp's own accounting and
  // checked by the measured peak; then Huozi README's recipe (q2_k -ngl 16) against our plan at its VRAM.
  // HUOZI_PLACEMENT_FILES=q4,q2 and HUOZI_BUDGETS=8192,12288 choose the rows (to split over device calls).
  const budgets = (process.env.HUOZI_BUDGETS ?? '8192,12288').split(',').map(Number);
  const files = (process.env.HUOZI_PLACEMENT_FILES ?? 'q4,q2').split(',').map((f) => ({ q4, q2 })[f]);
  const benchReps = process.env.HUOZI_GPU_REPS ?? '2';
  const gen = process.env.HUOZI_PLACEMENT_GEN ?? '64';
  const results = [];
  const overhead = 768; // lib/gpu.ts GPU_OVERHEAD_MIB: CUDA context and slack beyond llama.cpp's buffers
  const estimateGpu = async (file, options) => {
    const rows = await estimateMemory(file, { contextSize: 512, flashAttention: true, ...options });
    return rows.filter((d) => d.name !== 'host').reduce((a, d) => a + d.total, 0) / MiB + overhead;
  };
  const native = async (file, args, threadArgs = ['-t', threads]) => {
    const run = await withPeak(bench, ['-m', file, ...args, '-fa', '1', ...threadArgs, '-p', '512', '-n', gen, '-r', benchReps, '-o', 'json']);
    const json = JSON.parse(run.stdout);
    return { pp: json.find((r) => r.n_prompt > 0).avg_ts, tg: json.find((r) => r.n_gen > 0).avg_ts, peak: run.peak };
  };
  // The search's checks only need the peak: the pp512 compute buffer and one generated token, one repetition.
  const nativePeak = async (file, args) =>
    (await withPeak(bench, ['-m', file, ...args, '-fa', '1', '-t', threads, '-p', '512', '-n', '1', '-r', '1', '-o', 'json'])).peak;
  const ours = async (file, options, t = threads) => {
    const run = await withPeak(process.execPath, [join(root, 'scripts/bench/addon.mjs'), file, t, '512', gen, JSON.stringify(options), '1', benchReps]);
    return { ...JSON.parse(run.stdout.trim().split('\n').at(-1)), peak: run.peak };
  };
  // Every row is appended as it comes: a call cut short by the machine's time limit still leaves its figures.
  if (out) writeFileSync(out, '');
  const log = (row) => { results.push(row); console.log(JSON.stringify(row)); if (out) appendFileSync(out, `${JSON.stringify(row)}\n`); };
  // This machine's speed drifts by up to 2x over minutes: each budget's runs alternate in rounds (forward, then
  // backward), and the figures are medians over rounds.
  const placementRounds = Number(process.env.HUOZI_GPU_ROUNDS ?? 2);
  const median = (xs) => { const s = [...xs].sort((a, b) => a - b); return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2; };
  const alternate = async (file, budget, runners) => {
    const runs = new Map(runners.map((r) => [r.placement, []]));
    for (let round = 0; round < placementRounds; round++) {
      for (const r of round % 2 === 0 ? runners : [...runners].reverse()) {
        const m = await r.run();
        runs.get(r.placement).push(m);
        const row = { file, budget, round, who: r.who, placement: r.placement, ...m };
        console.log(JSON.stringify(row));
        if (out) appendFileSync(out, `${JSON.stringify(row)}\n`);
      }
    }
    for (const r of runners) {
      const ms = runs.get(r.placement);
      log({ file, budget, who: r.who, placement: r.placement, rounds: ms.length, pp: median(ms.map((m) => m.pp)), tg: median(ms.map((m) => m.tg)), peak: Math.max(...ms.map((m) => m.peak)), plan: ms[0].plan, perRound: ms.map((m) => [Math.round(m.pp), +m.tg.toFixed(2)]) });
    }
  };
  if (command === 'runtime') {
    // One placement (q4_0, the experts of HUOZI_RUNTIME_CPUMOE layers in host memory, no mmap) in both runtimes at
    // each of HUOZI_RUNTIME_THREADS: the runtime alone, with the plan held fixed.
    const n = process.env.HUOZI_RUNTIME_CPUMOE ?? '25';
    const runners = [];
    for (const t of (process.env.HUOZI_RUNTIME_THREADS ?? '16,15').split(',')) {
      runners.push({ who: 'native', placement: `-ngl 99 -ncmoe ${n} -lm none -t ${t}`, run: () => native(q4, ['-ngl', '99', '-ncmoe', n, '-lm', 'none'], ['-t', t]) });
      runners.push({ who: 'ours', placement: `cpuMoe ${n}, useMmap false, threads ${t}`, run: () => ours(q4, { gpuLayers: 'max', cpuMoe: Number(n), useMmap: false }, t) });
    }
    await alternate(q4, 0, runners);
    process.exit(0);
  }
  for (const file of files) {
    const layers = layerCount((await readGguf(file)).tensors);
    for (const budget of budgets) {
      // -ngl: the most layers whose estimate fits; a measured peak over the budget steps back one.
      let ngl = 0;
      for (let l = layers + 1; l >= 0; l--) if ((await estimateGpu(file, { gpuLayers: l })) <= budget) { ngl = l; break; }
      while (ngl > 0 && (await nativePeak(file, ['-ngl', String(ngl), '-lm', 'none'])) > budget) ngl--;
      // -ncmoe: the fewest layers' experts in host memory whose estimate fits.
      let ncmoe = layers;
      for (let n = 0; n <= layers; n++) if ((await estimateGpu(file, { gpuLayers: 'max', cpuMoe: n })) <= budget) { ncmoe = n; break; }
      while (ncmoe < layers && (await nativePeak(file, ['-ngl', '99', '-ncmoe', String(ncmoe), '-lm', 'none'])) > budget) ncmoe++;
      await alternate(file, budget, [
        // Native's best in each family: weights in host memory next to a GPU load without mmap (-lm none, pinned
        // host buffers: pp 3-5x and tg a few % over mmap in every earlier measurement, docs/gpu.md).
        { who: 'native', placement: `-ngl ${ngl} -lm none`, run: () => native(file, ['-ngl', String(ngl), '-lm', 'none']) },
        { who: 'native', placement: `-ngl 99 -ncmoe ${ncmoe} -lm none`, run: () => native(file, ['-ngl', '99', '-ncmoe', String(ncmoe), '-lm', 'none']) },
        { who: 'ours', placement: `auto, budgetMiB ${budget}`, run: () => ours(file, { gpuLayers: 'auto', fit: { budgetMiB: budget, contextSize: 512 } }) },
      ]);
    }
    if (file === q2) {
      // Huozi's README: -ngl 16, llama.cpp's default threads (llama-bench: the physical cores), against ours at
      // the recipe's measured peak.
      const recipePeak = (await withPeak(bench, ['-m', q2, '-ngl', '16', '-fa', '1', '-p', '512', '-n', '1', '-r', '1', '-o', 'json'])).peak;
      await alternate(q2, recipePeak, [
        { who: 'native', placement: '-ngl 16 (README), default threads', run: () => native(q2, ['-ngl', '16'], []) },
        { who: 'native', placement: `-ngl 16 (README), -t ${threads}`, run: () => native(q2, ['-ngl', '16']) },
        { who: 'ours', placement: `auto, budgetMiB ${recipePeak} (the recipe's peak)`, run: () => ours(q2, { gpuLayers: 'auto', fit: { budgetMiB: recipePeak, contextSize: 512 } }) },
      ]);
    }
  }
} else if (command === 'split') {
  // Two GPUs (or more): the q4_0 model split by layer across all of them; each device's measured share.
  const mib = (b) => Math.round(b / MiB);
  console.log(`devices: ${JSON.stringify(devices().map((d) => [d.name, d.description, mib(d.free), mib(d.total)]))}`);
  for (const splitMode of ['layer', 'row']) {
    const t0 = Date.now();
    const model = await loadModel(q4, { gpuLayers: 'max', splitMode });
    const context = await model.createContext({ contextSize: 4096, flashAttention: true });
    const r = await context.generate([1, 500, 600], { temperature: 0, maxTokens: 64, stopAtEog: false }).result;
    const memory = context.memory().map((d) => ({ device: d.device, weightsMiB: mib(d.model), kvMiB: mib(d.context), computeMiB: mib(d.compute) }));
    console.log(JSON.stringify({ splitMode, seconds: (Date.now() - t0) / 1000, generated: r.tokens.length, tgps: Math.round(r.timings.tokensPerSecond), memory }));
    console.log(`free while loaded: ${JSON.stringify(devices().map((d) => [d.name, mib(d.free)]))}`);
    await model.dispose();
  }
}
