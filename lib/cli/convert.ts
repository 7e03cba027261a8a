import { convert, type ConvertOutType } from '../convert/convert.js';
import * as v from '../validate.js';
import { progressBar } from './progress.js';

export async function convertCommand(hfDir: string, opts: { output: string; outtype: string; chatTemplate?: string }): Promise<void> {
  // Spelled as convert_hf_to_gguf.py spells them; the API names the same values.
  const outType = v.oneOf('--outtype', opts.outtype.toLowerCase(), ['f32', 'f16', 'bf16', 'q8_0'] as const) as ConvertOutType;
  const chatTemplate = opts.chatTemplate === undefined ? undefined : v.oneOf('--chat-template', opts.chatTemplate, ['huozi'] as const);
  const bar = progressBar(`convert ${opts.output}`);
  const result = await convert(hfDir, opts.output, {
    outType,
    chatTemplate,
    onProgress: (done, total) => bar.update(done, total),
  });
  bar.finish(
    `${result.architecture}, ${result.tensors} tensors, ${(result.parameters / 1e6).toFixed(1)}M parameters, ` +
      `${(result.bytes / 2 ** 20).toFixed(1)} MiB ${outType.toUpperCase()}`,
  );
}
