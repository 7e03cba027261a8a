// huozi-gguf convert-lora: a PEFT LoRA adapter to a GGUF adapter, as llama.cpp's convert_lora_to_gguf.py.
import type { Command } from 'commander';
import type { LoraOutType } from '../convert/lora.js';
import { addFlags, outputFlag, requiredFlag, stringFlag, type FlagValues } from './flags.js';
import { progressBar } from './progress.js';

const CONVERT_LORA_FLAGS = [
  requiredFlag('base', '--base <hf-dir|gguf>', 'the base model: its Hugging Face directory (config and tensor shapes are read) or its GGUF'),
  outputFlag.describe('where to write the GGUF adapter'),
  stringFlag('outtype', '--outtype <type>', 'f32, f16 or bf16').default('f32'),
] as const;

type ConvertLoraCliOptions = FlagValues<typeof CONVERT_LORA_FLAGS>;

export function register(program: Command): void {
  addFlags(
    program
      .command('convert-lora')
      .description("convert a PEFT LoRA adapter (adapter_config.json, adapter_model.safetensors) to a GGUF adapter, as llama.cpp's convert_lora_to_gguf.py")
      .argument('<peft-dir>', 'the adapter directory'),
    CONVERT_LORA_FLAGS,
  ).action((dir: string, opts: ConvertLoraCliOptions) => convertLoraCommand(dir, opts));
}

export async function convertLoraCommand(peftDir: string, opts: ConvertLoraCliOptions): Promise<void> {
  const { convertLora } = await import('../convert/lora.js');
  const v = await import('../validate.js');
  const outType = v.oneOf('--outtype', opts.outtype.toLowerCase(), ['f32', 'f16', 'bf16'] as const) as LoraOutType;
  const bar = progressBar(`convert-lora ${opts.output}`);
  const result = await convertLora(peftDir, {
    base: opts.base,
    output: opts.output,
    outType,
    onProgress: (done, total) => bar.update(done, total),
  });
  bar.finish(
    `${result.targets.length} adapted weights (${result.tensors} tensors), rank ${result.ranks.join('/')}, alpha ${result.alpha}, ` +
      `${(result.bytes / 2 ** 20).toFixed(2)} MiB ${outType.toUpperCase()}`,
  );
}
