// huozi-gguf complete: a raw prompt (no chat template) in, its continuation out.
import type { Command } from 'commander';
import {
  addFlags, cliSampling, listFlag, loadCliModel, maxTokensFlag, RUN_FLAGS, SAMPLING_FLAGS, stringFlag, switchFlag, type FlagValues,
} from './flags.js';
import { readStdin } from './stdin.js';

const COMPLETE_FLAGS = [
  stringFlag('prompt', '-p, --prompt <text>', 'the prompt (default: read standard input)'),
  maxTokensFlag.default(256),
  switchFlag('special', '--special', 'parse special-token text such as <|endofutterance|> in the prompt'),
  listFlag('stop', '--stop <text...>', 'stop strings'),
  switchFlag('timings', '--timings', 'print speed figures to standard error'),
  ...RUN_FLAGS,
  ...SAMPLING_FLAGS,
] as const;

type CompleteOptions = FlagValues<typeof COMPLETE_FLAGS>;

export function register(program: Command): void {
  addFlags(program.command('complete').description('complete a raw prompt (no chat template) and print the text'), COMPLETE_FLAGS)
    .action((opts: CompleteOptions) => complete(opts));
}

export async function complete(opts: CompleteOptions): Promise<void> {
  const prompt = opts.prompt ?? (await readStdin());
  await using model = await loadCliModel(opts);
  await using context = await model.createContext({ contextSize: opts.ctxSize, threads: opts.threads });
  const controller = new AbortController();
  const onSigint = () => controller.abort();
  process.once('SIGINT', onSigint);
  const generation = context.generate(prompt, {
    ...cliSampling(opts),
    maxTokens: opts.maxTokens,
    parseSpecial: opts.special,
    stopStrings: opts.stop,
    signal: controller.signal,
  });
  try {
    for await (const chunk of generation) process.stdout.write(chunk);
    process.stdout.write('\n');
    const r = await generation.result;
    if (opts.timings) {
      process.stderr.write(
        `prompt: ${r.evaluatedTokens} tokens, ${r.timings.promptTokensPerSecond.toFixed(1)} t/s; ` +
          `generated: ${r.tokens.length} tokens, ${r.timings.tokensPerSecond.toFixed(1)} t/s; stop: ${r.stopReason}\n`,
      );
    }
  } catch (error) {
    if ((error as { code?: string }).code !== 'ABORT_ERR') throw error;
    process.stdout.write('\n');
  } finally {
    process.off('SIGINT', onSigint);
  }
}
