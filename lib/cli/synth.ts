import { readFileSync } from 'node:fs';
import { synth, type SynthShape, type SynthType } from '../gguf/synth.js';
import { checkOutput } from '../util/output.js';
import { progressBar } from './progress.js';

export async function synthCommand(opts: { shape: string; type: string; output: string; layers?: number; seed?: number }): Promise<void> {
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
