// huozi-gguf quantize: llama.cpp's quantizer (in a child process, lib/quantize/), and --list of its types.
import type { Command } from 'commander';
import { addFlags, intFlag, listFlag, stringFlag, switchFlag, type FlagValues } from './flags.js';
import { progressBar } from './progress.js';

const QUANTIZE_FLAGS = [
  switchFlag('list', '--list', 'list the types (with a model: the size each would have)'),
  intFlag('threads', '--threads <n>', 'threads'),
  stringFlag('imatrix', '--imatrix <file>', 'importance matrix (GGUF) from huozi-gguf imatrix or llama-imatrix'),
  switchFlag('allowRequantize', '--allow-requantize', 'allow quantizing tensors that are already quantized'),
  switchFlag('leaveOutputTensor', '--leave-output-tensor', 'keep output.weight unquantized'),
  switchFlag('pure', '--pure', 'every tensor in the target type'),
  stringFlag('outputTensorType', '--output-tensor-type <type>', 'ggml type for output.weight'),
  stringFlag('tokenEmbeddingType', '--token-embedding-type <type>', 'ggml type for token_embd.weight'),
  listFlag('tensorType', '--tensor-type <pattern=type...>', 'ggml type for tensors whose names match pattern'),
] as const;

type QuantizeCliOptions = FlagValues<typeof QUANTIZE_FLAGS>;

export function register(program: Command): void {
  addFlags(
    program
      .command('quantize')
      .description('quantize a GGUF with llama.cpp (q4_0, q2_k, q4_k_m, ... as llama-quantize spells them)')
      .argument('[input]', 'GGUF to quantize')
      .argument('[output]', 'where to write the result')
      .argument('[type]', 'target type, e.g. q4_0 (see --list)'),
    QUANTIZE_FLAGS,
  ).action((input: string | undefined, output: string | undefined, type: string | undefined, opts: QuantizeCliOptions) =>
    quantizeCommand(input, output, type, opts));
}

const MiB = 2 ** 20;

export async function quantizeCommand(input: string | undefined, output: string | undefined, type: string | undefined, opts: QuantizeCliOptions): Promise<void> {
  const { quantize, quantizedSize } = await import('../quantize/quantize.js');
  const { QUANT_TYPES } = await import('../quantize/types.js');
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
