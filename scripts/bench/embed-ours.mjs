// One measurement of our embeddings for scripts/bench/embeddings.mjs, in a process of its own (as llama-embedding
// runs in its own): load the model, create the context, one warm-up call (llama-embedding warms up too, before
// its timing starts), then embed() of every text, timed from the call to the resolved promise. Prints one JSON line.
// With <repeat> > 1 the call is made that many times and each time is printed (the caller takes the fastest).
//   node scripts/bench/embed-ours.mjs <model> <texts.json> <threads> <batchSize> [repeat]
import { readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const { loadModel } = await import(join(root, 'dist', 'index.js'));
const [model, textsFile, threads, batchSize, repeat = '1'] = process.argv.slice(2);
const texts = JSON.parse(readFileSync(textsFile, 'utf8'));
const m = await loadModel(model);
const context = await m.createEmbeddingContext({ pooling: 'mean', contextSize: Number(batchSize), threads: Number(threads) });
await context.embed('warm up');
const times = [];
let r;
for (let i = 0; i < Number(repeat); i++) {
  const start = process.hrtime.bigint();
  r = await context.embedWithUsage(texts);
  times.push(Number(process.hrtime.bigint() - start) / 1e6);
}
console.log(JSON.stringify({ times, tokens: r.promptTokens, texts: r.embeddings.length }));
await m.dispose();
