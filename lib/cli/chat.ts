// huozi-gguf chat: an interactive chat in a terminal, or a scripted one through a pipe.
import type { Command } from 'commander';
// node:readline is loaded where it is used: at the top it would cost `--help` a few milliseconds.
import type { Interface } from 'node:readline';
import type { ChatPromptOptions, ChatSession } from '../chat/session.js';
import type { TemplateOption } from '../chat/detect.js';
import {
  addFlags, cliGrammar, cliLoras, cliSampling, GRAMMAR_FLAGS, loadCliModel, maxTokensFlag, negatedFlag, RUN_FLAGS, SAMPLING_FLAGS, stringFlag, switchFlag, type FlagValues,
} from './flags.js';
import { readStdin } from './stdin.js';

const CHAT_FLAGS = [
  stringFlag('system', '--system <text>', 'system prompt'),
  stringFlag('template', '--template <name>', 'chat template: auto, huozi, chatml, or a Jinja file').default('auto'),
  maxTokensFlag.describe('most tokens per answer'),
  switchFlag('whole', '--whole', 'with piped input: send all of standard input as one message'),
  negatedFlag('color', '--no-color', 'plain output'),
  ...GRAMMAR_FLAGS,
  ...RUN_FLAGS,
  ...SAMPLING_FLAGS,
] as const;

export type ChatCliOptions = FlagValues<typeof CHAT_FLAGS>;

export function register(program: Command): void {
  addFlags(
    program
      .command('chat', { isDefault: true })
      .description("chat with a model in Huozi's format (or the GGUF's own template); pipes: one message per line"),
    CHAT_FLAGS,
  ).action((opts: ChatCliOptions) => chat(opts));
}

const HELP = `commands:
  /reset            forget the conversation (keeps the system prompt)
  /system <text>    set the system prompt
  /save <file>      save the conversation and its cache
  /load <file>      load a saved conversation
  /help             this list
  /exit             leave (also Ctrl+D, or Ctrl+C twice)
Ctrl+C while an answer is printing stops the answer.`;

function templateOption(name: string): TemplateOption {
  if (name === 'auto' || name === 'huozi' || name === 'chatml') return name;
  return { file: name };
}

export async function chat(opts: ChatCliOptions): Promise<void> {
  const { ChatSession } = await import('../chat/session.js');
  // Compiled once: every answer is held to it.
  const grammar = await cliGrammar(opts);
  const model = await loadCliModel(opts, opts.ctxSize);
  const context = await model.createContext({ contextSize: opts.ctxSize, threads: opts.threads });
  await context.setLoras(await cliLoras(model, opts.lora));
  const session = new ChatSession(context, { systemPrompt: opts.system, template: templateOption(opts.template) });
  const turn: ChatPromptOptions = { ...cliSampling(opts), maxTokens: opts.maxTokens, ...(grammar ? { grammar } : {}) };
  try {
    if (process.stdin.isTTY && process.stdout.isTTY) await interactive(session, turn, opts.color);
    else await scripted(session, turn, opts.whole);
  } finally {
    await model.dispose();
  }
}

/** Non-TTY: one message per line (or the whole input with --whole); prints only the answers. */
async function scripted(session: ChatSession, turn: ChatPromptOptions, whole: boolean): Promise<void> {
  const answer = async (text: string) => {
    for await (const chunk of session.stream(text, turn)) process.stdout.write(chunk);
    process.stdout.write('\n');
  };
  if (whole) {
    const text = (await readStdin()).trim();
    if (text) await answer(text);
    return;
  }
  const { createInterface } = await import('node:readline');
  const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
  for await (const line of lines) {
    if (line.trim()) await answer(line);
  }
}

async function interactive(session: ChatSession, turn: ChatPromptOptions, color: boolean): Promise<void> {
  const paint = (code: string) => (text: string) => (color ? `\x1b[${code}m${text}\x1b[0m` : text);
  const dim = paint('2');
  const user = paint('1;32');
  const answerColor = color ? '\x1b[36m' : '';
  const reset = color ? '\x1b[0m' : '';
  const { createInterface } = await import('node:readline');
  const rl: Interface = createInterface({ input: process.stdin, output: process.stdout, terminal: true });
  let current: { stop(): void } | undefined;
  let interruptedAt = 0;

  process.stdout.write(dim(`huozi-gguf chat (${session.template.name} template). /help for commands, Ctrl+D to leave.\n`));
  rl.setPrompt(user('> '));

  // Readline turns Ctrl+C into 'SIGINT': stop the answer being printed, or (twice at the prompt) leave.
  rl.on('SIGINT', () => {
    if (current) {
      current.stop();
      return;
    }
    const now = Date.now();
    if (now - interruptedAt < 2000) {
      rl.close();
      return;
    }
    interruptedAt = now;
    process.stdout.write(dim('\n(press Ctrl+C again or Ctrl+D to leave)\n'));
    rl.prompt();
  });

  const closed = new Promise<void>((resolve) => rl.once('close', resolve));
  rl.prompt();
  for await (const line of rl) {
    const text = line.trim();
    if (!text) {
      rl.prompt();
      continue;
    }
    if (text.startsWith('/')) {
      const [command, ...rest] = text.split(/\s+/);
      const arg = text.slice(command.length).trim();
      try {
        if (command === '/exit' || command === '/quit') break;
        else if (command === '/help') process.stdout.write(`${HELP}\n`);
        else if (command === '/reset') {
          session.reset();
          process.stdout.write(dim('(conversation cleared)\n'));
        } else if (command === '/system') {
          session.systemPrompt = arg || undefined;
          process.stdout.write(dim(arg ? '(system prompt set)\n' : '(system prompt removed)\n'));
        } else if (command === '/save' && rest.length) {
          await session.save(arg);
          process.stdout.write(dim(`(saved to ${arg})\n`));
        } else if (command === '/load' && rest.length) {
          await session.load(arg);
          process.stdout.write(dim(`(loaded ${session.history.length} messages from ${arg})\n`));
        } else process.stdout.write(dim(`unknown command ${command}; /help lists them\n`));
      } catch (error) {
        process.stdout.write(dim(`error: ${(error as Error).message}\n`));
      }
      rl.prompt();
      continue;
    }
    const stream = session.stream(text, turn);
    current = stream;
    process.stdout.write(answerColor);
    try {
      for await (const chunk of stream) process.stdout.write(chunk);
      process.stdout.write(`${reset}\n`);
    } catch (error) {
      process.stdout.write(reset);
      if ((error as { code?: string }).code === 'ABORT_ERR') process.stdout.write(dim(' (stopped)\n'));
      else process.stdout.write(dim(`\nerror: ${(error as Error).message}\n`));
    } finally {
      current = undefined;
    }
    rl.prompt();
  }
  rl.close();
  await closed;
  process.stdout.write('\n');
}
