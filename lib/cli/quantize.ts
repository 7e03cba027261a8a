import { quantize, quantizedSize } from '../quantize/quantize.js';
import { QUANT_TYPES } from '../quantize/types.js';
import { progressBar } from './progress.js';

interface QuantizeCliOptions {
  list: boolean;
  threads?: number;
  imatrix?: string;
  allowRequantize: boolean;
  leaveOutputTensor: boolean;
  pure: boolean;
  outputTensorType?: string;
  tokenEmbeddingType?: string;
  tensorType?: string[];
}

const MiB = 2 ** 20;

export async function quantizeCommand(input: string | undefined, output: string | undefined, type: string | undefined, opts: QuantizeCliOptions): Promise<void> {
  if (opts.list) {
    // With a model, llama.cpp's dry run gives each type's exact size for it.
    const rows = [];
    for (const t of QUANT_TYPES) {
      let size = '';
      if (input && t.name !== 'COPY') {
        const s = await quantizedSize(input, t.name).catch(() => undefined);
        size = s ? `${s.mib.toFixed(2).padStart(10)} MiB${s.requiresImatrix ? '  (needs --imatrix)' : ''}` : '         n/a (llama.cpp cannot quantize this model to it)';
      }
      rows.push(`  ${t.name.padEnd(10)} ${t.description.padEnd(36)}${size ? ` ${size}` : t.needsImatrix ? ' (needs --imatrix)' : ''}`);
    }
    process.stdout.write(`quantization types${input ? ` (sizes for ${input})` : ''}:\n${rows.join('\n')}\n`);
    return;
  }
  if (!input || !output || !type) throw new Error('usage: huozi-gguf quantize <input.gguf> <output.gguf> <type>  (or --list)');
  const tensorTypes = opts.tensorType
    ? Object.fromEntries(opts.tensorType.map((s) => {
        const at = s.lastIndexOf('=');
        if (at <= 0) throw new Error(`--tensor-type expects pattern=type, got "${s}"`);
        return [s.slice(0, at), s.slice(at + 1)];
      }))
    : undefined;
  const controller = new AbortController();
  process.once('SIGINT', () => controller.abort());
  const bar = progressBar(`quantize ${type}`);
  const r = await quantize(input, output, {
    type,
    threads: opts.threads,
    imatrix: opts.imatrix,
    allowRequantize: opts.allowRequantize,
    leaveOutputTensor: opts.leaveOutputTensor,
    pure: opts.pure,
    outputTensorType: opts.outputTensorType,
    tokenEmbeddingType: opts.tokenEmbeddingType,
    tensorTypes,
    onProgress: (done, total) => bar.update(done, total),
    signal: controller.signal,
  });
  bar.finish();
  process.stderr.write(
    `${r.output}: ${(r.inputBytes / MiB).toFixed(2)} MiB -> ${(r.outputBytes / MiB).toFixed(2)} MiB ` +
      `(${((r.outputBytes / r.inputBytes) * 100).toFixed(1)}%), ${r.bitsPerWeight.toFixed(2)} bits per weight, ${r.type}, ${r.seconds.toFixed(1)} s\n`,
  );
}

export async function imatrixCommand(model: string, text: string, opts: { output: string; ctxSize: number; chunks?: number; threads?: number }): Promise<void> {
  const { loadModel } = await import('../model.js');
  const { computeImatrix } = await import('../quantize/imatrix.js');
  await using m = await loadModel(model);
  const bar = progressBar('imatrix');
  const r = await computeImatrix(m, text, opts.output, {
    contextSize: opts.ctxSize, chunks: opts.chunks, threads: opts.threads, onProgress: (c, n) => bar.update(c, n),
  });
  bar.finish(`${r.entries} weights, ${r.chunks} chunks of ${opts.ctxSize} tokens -> ${r.path}`);
}
