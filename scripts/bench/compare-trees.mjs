// A/B of two built checkouts of this package (each with its own dist/ and addon), e.g. before and after a
// refactor: `node scripts/bench/compare-trees.mjs <before-root> <after-root> [rounds]`. Each round runs
// scripts/bench/addon.mjs of both trees in fresh processes, alternating which goes first; prints the medians and
// the median of the per-round ratios after/before (pp512, tg128 by the wall clock and by the native clock).
import { execFileSync } from 'node:child_process';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const [before, after, roundsArg] = process.argv.slice(2);
if (!before || !after) throw new Error('usage: compare-trees.mjs <before-root> <after-root> [rounds]');
const trees = { before: resolve(before), after: resolve(after) };
const models = { q4_0: join(root, 'models/huozi-tiny-q4_0.gguf'), f16: join(root, 'test/fixtures/.generated/huozi-tiny-f16.gguf') };
const rounds = Number(roundsArg ?? 9);
const med = (a) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)];
for (const [m, path] of Object.entries(models)) for (const t of [1, 2]) {
  const r = { before: [], after: [] };
  for (let i = 0; i < rounds; i++) {
    for (const k of i % 2 ? ['after', 'before'] : ['before', 'after']) {
      r[k].push(JSON.parse(execFileSync(process.execPath, [`${trees[k]}/scripts/bench/addon.mjs`, path, String(t), '512', '128'], { encoding: 'utf8' })));
    }
  }
  const ratio = (f) => med(r.after.map((a, i) => a[f] / r.before[i][f]));
  console.log(`${m} t=${t}: pp ${med(r.before.map((x) => x.pp)).toFixed(0)} -> ${med(r.after.map((x) => x.pp)).toFixed(0)} (${ratio('pp').toFixed(3)}x), ` +
    `tg wall ${med(r.before.map((x) => x.tgWall)).toFixed(0)} -> ${med(r.after.map((x) => x.tgWall)).toFixed(0)} (${ratio('tgWall').toFixed(3)}x), ` +
    `tg native ${med(r.before.map((x) => x.tg)).toFixed(0)} -> ${med(r.after.map((x) => x.tg)).toFixed(0)} (${ratio('tg').toFixed(3)}x)`);
}
