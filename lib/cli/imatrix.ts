// huozi-gguf imatrix: the importance matrix quantize --imatrix takes, in llama.cpp's GGUF format.
import type { Command } from 'commander';
import { addFlags, ctxSizeFlag, intFlag, outputFlag, threadsFlag, type FlagValues } from './flags.js';
import { progressBar } from './progress.js';

const IMATRIX_FLAGS = [
  outputFlag.describe('where to write the imatrix'),
  ctxSizeFlag.describe('tokens per chunk').default(512),
  intFlag('chunks', '--chunks <n>', 'most chunks'),
  threadsFlag.describe('threads'),
] as const;

type ImatrixCliOptions = FlagValues<typeof IMATRIX_FLAGS>;

export function register(program: Command): void {
  addFlags(
    program
      .command('imatrix')
      .description("compute an importance matrix (llama.cpp's GGUF format) for quantize --imatrix")
      .argument('<model>', 'GGUF model (f16 or better)')
      .argument('<text>', 'text file: what the model will be used for, not the evaluation set'),
    IMATRIX_FLAGS,
  ).action((model: string, text: string, opts: ImatrixCliOptions) => imatrixCommand(model, text, opts));
}

export async function imatrixCommand(model: string, text: string, opts: ImatrixCliOptions): Promise<void> {
  const { loadModel } = await import('../model.js');
  const { computeImatrix } = await import('../quantize/imatrix.js');
  await using m = await loadModel(model);
  const bar = progressBar('imatrix');
  const r = await computeImatrix(m, text, opts.output, {
    contextSize: opts.ctxSize, chunks: opts.chunks, threads: opts.threads, onProgress: (c, n) => bar.update(c, n),
  });
  bar.finish(`${r.entries} weights, ${r.chunks} chunks of ${opts.ctxSize} tokens -> ${r.path}`);
}
