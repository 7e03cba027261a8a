// huozi-gguf complete: a raw prompt (no chat template) in, its continuation out.
import type { Command } from 'commander';
import type { TokenLogprob } from '../generation.js';
import {
  addFlags, cliGrammar, cliLoras, cliSampling, GRAMMAR_FLAGS, intFlag, listFlag, loadCliModel, maxTokensFlag, RUN_FLAGS, SAMPLING_FLAGS, stringFlag,
  switchFlag, type FlagValues,
} from './flags.js';
import { readStdin } from './stdin.js';

const COMPLETE_FLAGS = [
  stringFlag('prompt', '-p, --prompt <text>', 'the prompt (default: read standard input)'),
  maxTokensFlag.default(256),
  switchFlag('special', '--special', 'parse special-token text such as <|endofutterance|> in the prompt'),
  listFlag('stop', '--stop <text...>', 'stop strings'),
  switchFlag('timings', '--timings', 'print speed figures to standard error'),
  ...GRAMMAR_FLAGS,
  intFlag('logprobs', '--logprobs <k>', 'after the text, a table of each generated token, its logprob and the k most likely tokens (0-20)'),
  ...RUN_FLAGS,
  ...SAMPLING_FLAGS,
] as const;

type CompleteOptions = FlagValues<typeof COMPLETE_FLAGS>;

export function register(program: Command): void {
  addFlags(program.command('complete').description('complete a raw prompt (no chat template) and print the text'), COMPLETE_FLAGS)
    .action((opts: CompleteOptions) => complete(opts));
}

export async function complete(opts: CompleteOptions): Promise<void> {
  // Before standard input is read or the model loads: a bad grammar ends the command at once.
  const grammar = await cliGrammar(opts);
  const prompt = opts.prompt ?? (await readStdin());
  await using model = await loadCliModel(opts, opts.ctxSize);
  await using context = await model.createContext({ contextSize: opts.ctxSize, threads: opts.threads });
  await context.setLoras(await cliLoras(model, opts.lora));
  const controller = new AbortController();
  const onSigint = () => controller.abort();
  process.once('SIGINT', onSigint);
  const generation = context.generate(prompt, {
    ...cliSampling(opts),
    maxTokens: opts.maxTokens,
    parseSpecial: opts.special,
    stopStrings: opts.stop,
    signal: controller.signal,
    ...(grammar ? { grammar } : {}),
    ...(opts.logprobs === undefined ? {} : { logprobs: true, topLogprobs: opts.logprobs }),
  });
  try {
    for await (const chunk of generation) process.stdout.write(chunk);
    process.stdout.write('\n');
    const r = await generation.result;
    if (opts.logprobs !== undefined) process.stdout.write(logprobTable(r.logprobs ?? [], opts.logprobs));
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

/**
 * A token as the table shows it: quoted with JSON's escapes (a newline or a leading space stays visible), or its
 * bytes in hex when they are not whole UTF-8 characters (one piece of a character split across tokens).
 */
export function showToken(t: { text: string; bytes: number[] }): string {
  const whole = Buffer.from(t.text, 'utf8').equals(Buffer.from(t.bytes));
  return whole ? JSON.stringify(t.text) : `<${t.bytes.map((b) => b.toString(16).padStart(2, '0')).join(' ')}>`;
}

/** Terminal columns a string takes: East Asian wide and fullwidth characters take two. */
function width(s: string): number {
  let n = 0;
  for (const c of s) {
    const p = c.codePointAt(0)!;
    const wide =
      (p >= 0x1100 && p <= 0x115f) || (p >= 0x2e80 && p <= 0xa4cf && p !== 0x303f) || (p >= 0xac00 && p <= 0xd7a3) ||
      (p >= 0xf900 && p <= 0xfaff) || (p >= 0xfe30 && p <= 0xfe4f) || (p >= 0xff00 && p <= 0xff60) || (p >= 0xffe0 && p <= 0xffe6) ||
      (p >= 0x1f300 && p <= 0x1faff) || (p >= 0x20000 && p <= 0x3fffd);
    n += wide ? 2 : 1;
  }
  return n;
}

const pad = (s: string, columns: number) => s + ' '.repeat(Math.max(0, columns - width(s)));

/**
 * --logprobs: one row per generated token (its text, its logprob, then the k most likely tokens at that step
 * with theirs), columns aligned, after a header line.
 */
export function logprobTable(logprobs: readonly TokenLogprob[], k: number): string {
  const rows = logprobs.map((t, i) => [String(i + 1), showToken(t), t.logprob.toFixed(4), ...t.top.map((a) => `${showToken(a)} ${a.logprob.toFixed(4)}`)]);
  const header = ['#', 'token', 'logprob', ...(k > 0 ? [`top ${k}`] : [])];
  const columns = Math.max(header.length, ...rows.map((r) => r.length));
  const widths = Array.from({ length: columns }, (_, c) => Math.max(width(header[c] ?? ''), ...rows.map((r) => width(r[c] ?? ''))));
  const line = (cells: string[]) => `${cells.map((cell, c) => (c === cells.length - 1 ? cell : pad(cell, widths[c]))).join('  ')}\n`;
  return `\n${line(header)}${rows.map(line).join('')}`;
}
