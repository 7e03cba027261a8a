// huozi-gguf convert: a Hugging Face checkpoint to GGUF, as llama.cpp's convert_hf_to_gguf.py.
import type { Command } from 'commander';
import type { ConvertOutType } from '../convert/convert.js';
import { addFlags, outputFlag, stringFlag, type FlagValues } from './flags.js';
import { progressBar } from './progress.js';

const CONVERT_FLAGS = [
  outputFlag,
  stringFlag('outtype', '--outtype <type>', 'f32, f16, bf16 or q8_0').default('f16'),
  stringFlag('chatTemplate', '--chat-template <name>', 'embed a chat template: huozi'),
] as const;

type ConvertCliOptions = FlagValues<typeof CONVERT_FLAGS>;

export function register(program: Command): void {
  addFlags(
    program
      .command('convert')
      .description("convert a Hugging Face checkpoint (Llama, Mistral, Mixtral/Huozi 3.5) to GGUF, as llama.cpp's convert_hf_to_gguf.py")
      .argument('<hf-dir>', 'checkpoint directory (config.json, *.safetensors, tokenizer.model)'),
    CONVERT_FLAGS,
  ).action((dir: string, opts: ConvertCliOptions) => convertCommand(dir, opts));
}

export async function convertCommand(hfDir: string, opts: ConvertCliOptions): Promise<void> {
  const { convert } = await import('../convert/convert.js');
  const v = await import('../validate.js');
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
