#!/usr/bin/env node
// npm run quality: what each quantization costs on huozi-tiny. Quantizes the f16 fixture to q8_0, q6_k,
// q5_k_m, q4_k_m, q4_0, q3_k_m, q2_k and q2_k with an importance matrix, and measures for each: file size,
// perplexity on the held-out English and Chinese text (llama-perplexity -c 256's chunking: BOS first in every
// chunk, the second half of each chunk scored), exact recitation of the 403 poems, and generation speed. For
// f16, q4_0 and q2_k it also runs llama.cpp's own llama-perplexity (from the addon's tree: scripts/native-tools.mjs)
// on the same files and texts, and puts the two side by side. Writes docs/quality.md and docs/quality.svg.
//
//   npm run quality [-- --out docs --threads 2 --poems 403]
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { ChatSession, computeImatrix, loadModel, perplexity, quantize } from '../dist/index.js';
import { ensureF16 } from './fixture.mjs';
import { buildNativeTools, nativePerplexity } from './native-tools.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const { values } = parseArgs({
  options: {
    out: { type: 'string', default: join(root, 'docs') },
    threads: { type: 'string', default: String(Math.min(2, cpus().length)) },
    poems: { type: 'string' },
  },
});
const threads = Number(values.threads);
const fixture = join(root, 'test/fixtures/huozi-tiny');
const f16 = await ensureF16(); // our conversion of hf/, byte-identical to llama.cpp's
const poems = JSON.parse(readFileSync(join(fixture, 'eval/recite.json'), 'utf8')).slice(0, values.poems ? Number(values.poems) : undefined);
const heldoutFile = { en: join(fixture, 'eval/heldout-en.txt'), zh: join(fixture, 'eval/heldout-zh.txt') };
const heldout = { en: readFileSync(heldoutFile.en, 'utf8'), zh: readFileSync(heldoutFile.zh, 'utf8') };
// The native reference: llama-perplexity from the same compiled llama.cpp as the addon.
const tools = buildNativeTools(['llama-perplexity']);
console.error(`llama-perplexity: ${tools.why}`);
const imatrixText = join(root, 'test/fixtures/text/imatrix-recitations.txt');
const EOU = '<|endofutterance|>';

/** llama-perplexity's figure for `text` with -c 256 (lib/eval/perplexity.ts). */
async function ppl(model, text) {
  return (await perplexity(model, text, { contextSize: 256, threads })).perplexity;
}

/** Poems recited exactly (greedy, system prompt 你是一个智能助手, up to 200 tokens), and generation speed. */
async function recitation(model) {
  const context = await model.createContext({ contextSize: 512, threads });
  let exact = 0;
  let tokens = 0;
  let ms = 0;
  for (const p of poems) {
    const session = new ChatSession(context, { systemPrompt: '你是一个智能助手', template: 'huozi' });
    const answer = await session.prompt(`请背诵《${p.title}》`, { temperature: 0, maxTokens: 200 });
    if (answer.text.trim() === `《${p.title}》\n${p.author}\n${p.body}`.trim()) exact++;
    tokens += answer.generation.tokens.length;
    ms += answer.generation.timings.generateMs;
  }
  await context.dispose();
  return { exact, tokensPerSecond: (tokens * 1000) / ms };
}

const work = mkdtempSync(join(tmpdir(), 'huozi-quality-'));
const rows = [];
// Recitation with native llama.cpp is the fixture README's figure (same prompts, pinned tree); it is not
// re-measured here. Its perplexity columns are (llama-perplexity above).
const nativeRecited = { f16: 338, q4_0: 317, q2_k: 1 };
try {
  const imatrix = join(work, 'imatrix.gguf');
  {
    const model = await loadModel(f16);
    const r = await computeImatrix(model, imatrixText, imatrix, { contextSize: 256, parseSpecial: true, threads });
    await model.dispose();
    console.error(`imatrix: ${r.chunks} chunks of 256 tokens from ${imatrixText}`);
  }
  const variants = [
    { name: 'f16', path: f16 },
    ...['q8_0', 'q6_k', 'q5_k_m', 'q4_k_m', 'q4_0', 'q3_k_m', 'q2_k'].map((t) => ({ name: t, type: t })),
    { name: 'q2_k + imatrix', type: 'q2_k', imatrix },
  ];
  for (const v of variants) {
    const path = v.path ?? join(work, `${v.name.replace(/\W+/g, '-')}.gguf`);
    if (v.type) await quantize(f16, path, { type: v.type, imatrix: v.imatrix });
    const model = await loadModel(path);
    const en = await ppl(model, heldout.en);
    const zh = await ppl(model, heldout.zh);
    const rec = await recitation(model);
    await model.dispose();
    const row = { name: v.name, bytes: statSync(path).size, en, zh, exact: rec.exact, tps: rec.tokensPerSecond };
    if (v.name in nativeRecited) {
      row.native = {
        en: nativePerplexity(path, heldoutFile.en, { contextSize: 256, threads }).perplexity,
        zh: nativePerplexity(path, heldoutFile.zh, { contextSize: 256, threads }).perplexity,
      };
    }
    rows.push(row);
    console.error(`${v.name}: ${(row.bytes / 2 ** 20).toFixed(2)} MiB, ppl en ${row.en.toFixed(2)} zh ${row.zh.toFixed(1)}, recited ${row.exact}/${poems.length}, ${row.tps.toFixed(0)} t/s`);
  }
} finally {
  rmSync(work, { recursive: true, force: true });
}


function svg() {
  const W = 760, H = 300, pad = 50, panel = (W - pad * 3) / 2;
  const maxBytes = Math.max(...rows.map((r) => r.bytes)) * 1.05;
  const x = (b, left) => left + (b / maxBytes) * panel;
  const logMin = Math.log(Math.min(...rows.map((r) => r.en)) * 0.9);
  const logMax = Math.log(Math.max(...rows.map((r) => r.en)) * 1.1);
  const yPpl = (p) => H - pad - ((Math.log(p) - logMin) / (logMax - logMin)) * (H - pad * 2);
  const yRec = (n) => H - pad - (n / poems.length) * (H - pad * 2);
  const left2 = pad * 2 + panel;
  const dots = (y, left, value) =>
    rows.map((r) => `<circle cx="${x(r.bytes, left).toFixed(1)}" cy="${y(value(r)).toFixed(1)}" r="4" fill="${r.name.includes('imatrix') ? '#d62728' : '#1f77b4'}"><title>${r.name}</title></circle>` +
      `<text x="${(x(r.bytes, left) + 6).toFixed(1)}" y="${(y(value(r)) - 6).toFixed(1)}" font-size="10">${r.name}</text>`).join('');
  const axes = (left, title, ylabel) =>
    `<line x1="${left}" y1="${H - pad}" x2="${left + panel}" y2="${H - pad}" stroke="#333"/><line x1="${left}" y1="${pad}" x2="${left}" y2="${H - pad}" stroke="#333"/>` +
    `<text x="${left + panel / 2}" y="${pad - 20}" text-anchor="middle" font-size="13">${title}</text>` +
    `<text x="${left + panel / 2}" y="${H - 12}" text-anchor="middle" font-size="11">file size (MiB, 0 to ${(maxBytes / 2 ** 20).toFixed(1)})</text>` +
    `<text x="${left - 36}" y="${H / 2}" font-size="11" transform="rotate(-90 ${left - 36} ${H / 2})" text-anchor="middle">${ylabel}</text>`;
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>` +
    axes(pad, 'Size vs perplexity (held-out English)', 'perplexity (log scale)') + dots(yPpl, pad, (r) => r.en) +
    axes(left2, `Size vs poems recited exactly (of ${poems.length})`, 'poems recited') + dots(yRec, left2, (r) => r.exact) + '</svg>\n';
}

const table = [
  '| model | size (MiB) | ppl en | ppl zh | recited exactly | tg t/s |',
  '| --- | ---: | ---: | ---: | ---: | ---: |',
  ...rows.map((r) => `| ${r.name} | ${(r.bytes / 2 ** 20).toFixed(2)} | ${r.en.toFixed(2)} | ${r.zh.toFixed(1)} | ${r.exact} / ${poems.length} | ${r.tps.toFixed(0)} |`),
].join('\n');
const check = rows.filter((r) => r.native).map((r) => {
  const n = r.native;
  // Relative differences: llama-perplexity prints 4 decimals, so below ~1e-6 they are its rounding.
  const rel = (a, b) => ((a - b) / b).toExponential(1);
  return `| ${r.name} | ${r.en.toFixed(4)} vs ${n.en.toFixed(4)} (${rel(r.en, n.en)}) | ${r.zh.toFixed(4)} vs ${n.zh.toFixed(4)} (${rel(r.zh, n.zh)}) | ${r.exact} vs ${nativeRecited[r.name]} |`;
}).join('\n');
const q2 = rows.find((r) => r.name === 'q2_k');
const q2i = rows.find((r) => r.name === 'q2_k + imatrix');
writeFileSync(join(values.out, 'quality.svg'), svg());
writeFileSync(join(values.out, 'quality.md'), `# Quantization quality on huozi-tiny

Produced by \`npm run quality\` (scripts/quality.mjs) on ${new Date().toISOString().slice(0, 10)}, ${cpus().length} × ${cpus()[0]?.model}, ${threads} threads.

Every row is the fixture's f16 GGUF quantized by \`quantize()\` (llama.cpp's llama_model_quantize). Perplexity
uses llama-perplexity's chunking with \`-c 256\` (BOS first in each chunk; the second half of each chunk scored) on
\`eval/heldout-en.txt\` and \`eval/heldout-zh.txt\`. "Recited exactly": greedy answers to \`请背诵《title》\` (system
prompt 你是一个智能助手, up to 200 tokens, stopped at ${EOU}) equal to \`《title》\\nauthor\\nbody\`. tg t/s:
generation speed during the recitations (small absolute numbers: answers are short).

${table}

![size against perplexity and recitation](quality.svg)

## Against native llama.cpp

Perplexity: llama.cpp's own \`llama-perplexity -c 256\`, built from the same compiled llama.cpp as the addon
(scripts/native-tools.mjs), on the same files and texts, in this run. Recited: the fixture README's figure for
native llama.cpp (same prompts, pinned tree), not re-measured here.

| model | ppl en (ours vs llama-perplexity, relative difference) | ppl zh | recited (ours vs README) |
| --- | --- | --- | --- |
${check}

## The importance matrix

\`q2_k + imatrix\` used an importance matrix computed by \`computeImatrix\` on
\`test/fixtures/text/imatrix-recitations.txt\`: the 403 recitations in Huozi's chat format, i.e. the model's own
training material (never the held-out files, which only measure perplexity). Since the recitation test asks for
those same poems, the recitation column favours it; the perplexity columns do not. Against plain q2_k:
perplexity en ${q2.en.toFixed(2)} → ${q2i.en.toFixed(2)}, zh ${q2.zh.toFixed(1)} → ${q2i.zh.toFixed(1)},
recited ${q2.exact} → ${q2i.exact}.
`);
console.log(table);
