// huozi-gguf modelfile: an Ollama Modelfile for the same GGUF, so Ollama users can `ollama create` it.
import type { Command } from 'commander';
import { resolve } from 'node:path';
import { addFlags, modelFlag, stringFlag, type FlagValues } from './flags.js';

const MODELFILE_FLAGS = [
  modelFlag.describe('GGUF model (default: the embedded demo model)'),
  stringFlag('system', '--system <text>', 'system prompt to bake in'),
] as const;

type ModelfileOptions = FlagValues<typeof MODELFILE_FLAGS>;

export function register(program: Command): void {
  addFlags(program.command('modelfile').description("print an Ollama Modelfile for a GGUF, with Huozi's template and stop token"), MODELFILE_FLAGS)
    .action((opts: ModelfileOptions) => modelfile(opts));
}

/**
 * Huozi's template (template.jinja) in Ollama's Go-template syntax: each message as
 * <|beginofutterance|>ROLE\nCONTENT<|endofutterance|>\n, then <|beginofutterance|>助手\n to generate.
 */
export const OLLAMA_HUOZI_TEMPLATE = `{{- range .Messages }}<|beginofutterance|>
{{- if eq .Role "system" }}系统
{{- else if eq .Role "user" }}用户
{{- else if eq .Role "assistant" }}助手
{{- end }}
{{ .Content }}<|endofutterance|>
{{ end }}<|beginofutterance|>助手
`;

export function renderModelfile(modelPath: string, system?: string): string {
  const lines = [
    `# Ollama Modelfile written by huozi-gguf for ${modelPath}`,
    `FROM ${modelPath}`,
    '',
    `TEMPLATE """${OLLAMA_HUOZI_TEMPLATE}"""`,
    '',
    ...(system ? [`SYSTEM """${system}"""`, ''] : []),
    '# The GGUF\'s eos is </s>; Huozi ends its turn with <|endofutterance|> (57001 in Huozi 3.5).',
    'PARAMETER stop "<|endofutterance|>"',
    'PARAMETER stop "<|beginofutterance|>"',
    '# Sampling as in Huozi\'s README (llama.cpp main: --temp 0.2 --repeat_penalty 1.1 -c 2048).',
    'PARAMETER temperature 0.2',
    'PARAMETER repeat_penalty 1.1',
    'PARAMETER num_ctx 2048',
    '',
  ];
  return lines.join('\n');
}

export async function modelfile(opts: ModelfileOptions): Promise<void> {
  const { demoModelPath } = await import('../demo.js');
  process.stdout.write(renderModelfile(resolve(opts.model ?? demoModelPath), opts.system));
}
