import { cliSampling, loadCliModel, readStdin, type ModelCliOptions } from './shared.js';

interface CompleteOptions extends ModelCliOptions {
  prompt?: string;
  maxTokens: number;
  special: boolean;
  stop?: string[];
  timings: boolean;
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
