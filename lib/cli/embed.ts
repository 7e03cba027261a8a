// huozi-gguf embed: one text per line (standard input or --file) in, one JSON line per text out:
// {"index":i,"embedding":[...]} (pooling none: "embedding" is one array per token). Lines are embedded in groups
// as they are read, so a long file streams through in bounded memory.
import type { Command } from 'commander';
import {
  addFlags, gpuLayersFlag, intFlag, loadCliModel, modelFlag, negatedFlag, PLACEMENT_FLAGS, rpcFlag, stringFlag, switchFlag, threadsFlag,
  type FlagValues,
} from './flags.js';

const EMBED_FLAGS = [
  modelFlag,
  stringFlag('file', '-f, --file <path>', 'read the texts from this file, one per line (default: standard input)'),
  stringFlag('pooling', '--pooling <type>', "mean, cls, last, none (one embedding per token) or model: the GGUF's pooling_type, else mean").default('model'),
  switchFlag('normalize', '--normalize', 'scale each embedding to unit length (L2; llama-embedding --embd-normalize 2)').default(true),
  negatedFlag('normalize', '--no-normalize', 'print the embeddings as the model computes them (--embd-normalize -1)'),
  intFlag('ctxSize', '-c, --ctx-size <n>', "the most tokens one line may have (default: the model's training context, at most 2048)"),
  intFlag('batchSize', '-b, --batch-size <n>', 'the most tokens computed in one decode, lines packed together (default: --ctx-size)'),
  threadsFlag,
  gpuLayersFlag.default('max'),
  ...PLACEMENT_FLAGS,
  rpcFlag,
] as const;

type EmbedFlags = FlagValues<typeof EMBED_FLAGS>;

/** Lines embedded per call: enough to fill batches, few enough to keep memory bounded and output flowing. */
const GROUP = 256;

export function register(program: Command): void {
  addFlags(
    program
      .command('embed')
      .description('print the embedding of each line of standard input (or --file) as a JSON line {"index","embedding"}'),
    EMBED_FLAGS,
  ).action((opts: EmbedFlags) => embed(opts));
}

export async function embed(opts: EmbedFlags): Promise<void> {
  const { createReadStream } = await import('node:fs');
  const { createInterface } = await import('node:readline');
  // --normalize and --no-normalize share one value: the last given wins.
  const normalize = opts.normalize;
  const input = opts.file === undefined ? process.stdin : createReadStream(opts.file);
  const opened = new Promise<void>((resolve, reject) => {
    if (opts.file === undefined) resolve();
    input.once('error', reject);
    input.once('ready', () => resolve());
  });
  await opened; // a missing --file ends the command before the model loads
  await using model = await loadCliModel(opts, opts.ctxSize);
  const pooling = opts.pooling as 'mean' | 'cls' | 'last' | 'none' | 'model';
  await using context = await model.createEmbeddingContext({
    pooling,
    normalize,
    ...(opts.ctxSize === undefined ? {} : { contextSize: opts.ctxSize }),
    ...(opts.batchSize === undefined ? {} : { batchSize: opts.batchSize }),
    ...(opts.threads === undefined ? {} : { threads: opts.threads }),
  });
  const controller = new AbortController();
  const onSigint = () => controller.abort();
  process.once('SIGINT', onSigint);
  let index = 0;
  let group: string[] = [];
  let pendingEmpty = 0; // empty lines are an error only when a text follows them (a file may end in blank lines)
  const flush = async () => {
    if (group.length === 0) return;
    const embeddings = await context.embed(group, { signal: controller.signal });
    const out = embeddings.map((e, i) => {
      const values = Array.isArray(e) ? e.map((row) => Array.from(row)) : Array.from(e as Float32Array);
      return `${JSON.stringify({ index: index + i, embedding: values })}\n`;
    });
    index += group.length;
    group = [];
    if (!process.stdout.write(out.join(''))) await new Promise((r) => process.stdout.once('drain', r));
  };
  try {
    const lines = createInterface({ input, crlfDelay: Infinity });
    let number = 0;
    for await (const line of lines) {
      number++;
      if (line.length === 0) {
        pendingEmpty = pendingEmpty || number;
        continue;
      }
      if (pendingEmpty) throw new Error(`line ${pendingEmpty} is empty: an embedding needs text (remove empty lines)`);
      group.push(line);
      if (group.length >= GROUP) await flush();
    }
    await flush();
  } finally {
    process.off('SIGINT', onSigint);
  }
}
