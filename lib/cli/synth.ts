// huozi-gguf synth: a random-weight GGUF in a real model's shape, to measure speed and memory without the weights.
import type { Command } from 'commander';
import { readFileSync } from 'node:fs';
import type { SynthShape, SynthType } from '../gguf/synth.js';
import { addFlags, intFlag, outputFlag, requiredFlag, seedFlag, stringFlag, type FlagValues } from './flags.js';
import { progressBar } from './progress.js';

const SYNTH_FLAGS = [
  requiredFlag('shape', '--shape <name|json>', 'huozi3.5, tiny, a JSON shape or a .json file'),
  stringFlag('type', '--type <type>', 'q4_0, q8_0, q6_k, q2_k or f16 (per-tensor types as llama-quantize picks them)').default('q4_0'),
  outputFlag,
  intFlag('layers', '--layers <n>', 'keep only the first N layers'),
  seedFlag,
] as const;

type SynthCliOptions = FlagValues<typeof SYNTH_FLAGS>;

export function register(program: Command): void {
  addFlags(
    program.command('synth').description("write a random-weight GGUF with a real model's exact shape, for speed and memory measurements"),
    SYNTH_FLAGS,
  ).action((opts: SynthCliOptions) => synthCommand(opts));
}

export async function synthCommand(opts: SynthCliOptions): Promise<void> {
  const { synth } = await import('../gguf/synth.js');
  const { checkOutput } = await import('../util/output.js');
  let shape: string | SynthShape = opts.shape;
  if (opts.shape.trim().startsWith('{')) shape = JSON.parse(opts.shape) as SynthShape;
  else if (opts.shape.endsWith('.json')) {
    shape = JSON.parse(readFileSync(opts.shape, 'utf8')) as SynthShape;
    await checkOutput(opts.output, { inputs: [opts.shape] }); // -o shape.json would replace the shape
  }
  const bar = progressBar(`synth ${opts.output}`);
  const { bytes, tensors } = await synth(opts.output, {
    shape: shape as never,
    type: opts.type.toLowerCase() as SynthType,
    layers: opts.layers,
    seed: opts.seed,
    onProgress: (done, total) => bar.update(Number(done), Number(total)),
  });
  bar.finish(`${tensors} tensors, ${(Number(bytes) / 2 ** 30).toFixed(2)} GiB of tensor data`);
}
