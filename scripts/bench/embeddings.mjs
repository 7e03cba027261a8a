// npm run bench -- --embeddings: embedding throughput, ours (EmbeddingContext.embed) against llama.cpp's own
// llama-embedding from the tree that built the addon (scripts/native-tools.mjs), on the same texts, threads and
// batch (-c = -b = -ub = --batch, a unified cache: both pack the texts into the same decodes), mean pooling, L2.
//
// Texts: --texts of about --tokens tokens each, cut from the fixture's held-out English and Chinese texts.
// Ours: a fresh process per round (scripts/bench/embed-ours.mjs): load, create the context, one warm-up call,
// then one embed() of all texts timed as a user sees it, from the call to the resolved promise (tokenization,
// decoding, normalization and the copy into Float32Arrays included): the first call after the warm-up, as
// llama-embedding's decodes are its first after its warm-up. Each side runs --repeat fresh processes per round and
// the fastest counts (this machine's other load only ever adds time). llama-embedding
// timed by its own log's clock, from the line that starts its first batch to the line that starts the batch after
// its last (a sentinel text longer than half a batch, appended): its decodes and their normalization, without its
// model load, warm-up, tokenization or output, so the comparison leans against us. (Its `--perf` prompt eval time
// counts only part of the decodes of an embedding run: 0.7 s of 2.6 s here.) Rounds alternate which runs
// first; figures are medians, the ratio the median of per-round ratios. Writes its section of
// docs/benchmarks.md (between the embeddings-bench markers; scripts/bench.mjs keeps it when it rewrites the page).
//
//   npm run bench -- --embeddings [--rounds 9 --repeat 3 --threads 2 --texts 256 --tokens 30 --batch 2048 --model m.gguf
//                                  --out docs/benchmarks.md]
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir, totalmem } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { ensureF16 } from '../fixture.mjs';
import { buildNativeTools, nativeEmbeddings } from '../native-tools.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const { values } = parseArgs({
  options: {
    embeddings: { type: 'boolean', default: true },
    rounds: { type: 'string', default: '9' },
    threads: { type: 'string', default: '2' },
    texts: { type: 'string', default: '256' },
    tokens: { type: 'string', default: '30' },
    batch: { type: 'string', default: '2048' },
    repeat: { type: 'string', default: '3' },
    model: { type: 'string' },
    out: { type: 'string', default: join(root, 'docs', 'benchmarks.md') },
  },
});
const rounds = Number(values.rounds);
const threads = Number(values.threads);
const count = Number(values.texts);
const target = Number(values.tokens);
const batch = Number(values.batch);
const repeat = Number(values.repeat);
const model = values.model ? resolve(values.model) : await ensureF16();

execFileSync('npx', ['tsc', '-p', 'tsconfig.json'], { cwd: root, stdio: 'inherit' });
const tools = buildNativeTools(['llama-embedding']);
const { loadModel } = await import(join(root, 'dist', 'index.js'));

// The texts: consecutive pieces of the held-out texts, each grown until it has `target` tokens.
const m = await loadModel(model, { vocabOnly: true });
const sources = ['heldout-en.txt', 'heldout-zh.txt'].map((f) =>
  readFileSync(join(root, 'test', 'fixtures', 'huozi-tiny', 'eval', f), 'utf8').replace(/\s+/g, ' ').trim());
const texts = [];
const at = [0, 0];
while (texts.length < count) {
  const k = texts.length % 2;
  const src = sources[k];
  let end = at[k] + 1;
  while (end < src.length && m.tokenize(src.slice(at[k], end)).length < target) end++;
  const text = src.slice(at[k], end).trim();
  at[k] = end >= src.length ? 0 : end;
  if (text) texts.push(text);
}
const tokenCounts = texts.map((t) => m.tokenize(t).length);
// For llama-embedding's clock (see runNative): a text of more than half a batch, after the measured ones.
let sentinel = sources[0].slice(0, 8 * batch);
while (m.tokenize(sentinel).length > batch) sentinel = sentinel.slice(0, Math.floor(sentinel.length * 0.95));
if (m.tokenize(sentinel).length <= batch / 2) throw new Error('the held-out text is too short for the sentinel');
await m.dispose();
const dir = mkdtempSync(join(tmpdir(), 'huozi-embd-bench-'));
const textsFile = join(dir, 'texts.json');
writeFileSync(textsFile, JSON.stringify(texts));

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const ours = [];
const native = [];
const ratios = [];
try {
  for (let round = 0; round < rounds; round++) {
    const runOurs = () => {
      const runs = Array.from({ length: repeat }, () => {
        const r = spawnSync(process.execPath, [join(root, 'scripts', 'bench', 'embed-ours.mjs'), model, textsFile, String(threads), String(batch)], { encoding: 'utf8' });
        if (r.status !== 0) throw new Error(`embed-ours failed:\n${r.stderr}`);
        const o = JSON.parse(r.stdout.trim().split('\n').pop());
        return { ms: o.times[0], tokens: o.tokens, texts: o.texts };
      });
      return { ms: Math.min(...runs.map((x) => x.ms)), tokens: runs[0].tokens, texts: runs[0].texts };
    };
    const runNative = () => {
      const runs = Array.from({ length: repeat }, () => runNativeOnce());
      for (const x of runs) if (x.tokens !== runs[0].tokens || x.texts !== runs[0].texts) throw new Error('llama-embedding runs disagree');
      return { ms: Math.min(...runs.map((x) => x.ms)), tokens: runs[0].tokens, texts: runs[0].texts };
    };
    const runNativeOnce = () => {
      // The sentinel text fills a batch of its own: the log line that starts its decode marks the end of the texts'.
      const r = nativeEmbeddings(model, [...texts, sentinel], { pooling: 'mean', normalize: true, batchSize: batch, threads });
      const starts = [...r.log.matchAll(/^(\d+)\.(\d+)\.(\d+)\.(\d+) I batch_decode: n_tokens = (\d+), n_seq = (\d+)$/gm)].map((x) => ({
        at: Number(x[1]) * 60_000 + Number(x[2]) * 1000 + Number(x[3]) + Number(x[4]) / 1000, tokens: Number(x[5]), seqs: Number(x[6]),
      }));
      if (starts.length < 2 || starts.at(-1).seqs !== 1) throw new Error(`llama-embedding's log has no batch lines to time:\n${r.log.slice(-1500)}`);
      const mine = starts.slice(0, -1);
      return { ms: starts.at(-1).at - starts[0].at, tokens: mine.reduce((a, b) => a + b.tokens, 0), texts: mine.reduce((a, b) => a + b.seqs, 0) };
    };
    let o;
    let n;
    if (round % 2 === 0) {
      o = runOurs();
      n = runNative();
    } else {
      n = runNative();
      o = runOurs();
    }
    if (o.tokens !== n.tokens || o.texts !== n.texts) throw new Error(`ours ${o.tokens} tokens / ${o.texts} texts, llama-embedding ${n.tokens} / ${n.texts}`);
    ours.push(o);
    native.push(n);
    ratios.push(n.ms / o.ms);
    console.log(`round ${round + 1}/${rounds}: ours ${o.ms.toFixed(1)} ms, llama-embedding ${n.ms.toFixed(1)} ms (its log's clock), ratio ${(n.ms / o.ms).toFixed(3)}`);
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}

const tokens = ours[0].tokens;
const row = (name, runs, clock) => {
  const ms = median(runs.map((r) => r.ms));
  return `| ${name} | ${clock} | ${ms.toFixed(1)} | ${((count * 1000) / ms).toFixed(0)} | ${((tokens * 1000) / ms).toFixed(0)} |`;
};
const ratio = median(ratios);
const commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: root, encoding: 'utf8' }).trim();
const argv = process.argv.slice(2).join(' ');
const section = `<!-- embeddings-bench -->
## Embeddings

Produced by \`npm run bench -- ${argv || '--embeddings'}\` (scripts/bench/embeddings.mjs) on ${new Date().toISOString().slice(0, 10)}, commit ${commit}:
${cpus().length} × ${cpus()[0]?.model ?? 'unknown CPU'}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}; model ${relative(root, model)}.
llama-embedding: ${tools.why}.

${count} texts of ${Math.min(...tokenCounts)}-${Math.max(...tokenCounts)} tokens (${tokens} in all; English and Chinese from the
fixture's held-out texts), mean pooling, L2-normalized, ${threads} threads, batch ${batch} (\`-c ${batch} -b ${batch} -ub ${batch}\`: both
pack the texts into the same decodes). ${rounds} rounds, each running both in fresh processes, alternating which
goes first; in each round each side runs ${repeat} fresh processes and its fastest counts (other load on the machine only
ever adds time); medians over rounds. Ours is timed as a user sees it, from the \`embed()\` call to the resolved promise (tokenizing,
decoding, normalizing, the Float32Arrays), the first call after a warm-up call, as llama-embedding's decodes follow its warm-up; llama-embedding by its log's clock, from the start of its first decode to
the end of its last (the start of a sentinel text's batch appended after them): without tokenizing, model load or
output, which leans against us.

| runtime | clock | ms | texts/s | tokens/s |
| --- | --- | ---: | ---: | ---: |
${row('huozi-gguf EmbeddingContext', ours, 'embed() call to result')}
${row('llama-embedding', native, 'first decode to last, its log')}

Ours vs llama-embedding: **${ratio.toFixed(3)}x** (median of the per-round ratios of speeds; per round: ${ratios.map((r) => r.toFixed(3)).join(', ')}).
<!-- /embeddings-bench -->
`;
const old = existsSync(values.out) ? readFileSync(values.out, 'utf8') : '# Benchmarks\n';
const marked = /<!-- embeddings-bench -->[\s\S]*?<!-- \/embeddings-bench -->\n?/;
const doc = marked.test(old) ? old.replace(marked, section) : `${old.trimEnd()}\n\n${section}`;
writeFileSync(values.out, doc);
console.log(`\n${section}\nwrote ${relative(root, values.out)}`);
