// The chat CLI in a real terminal (tmux) and through a pipe.
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, existsSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { f16Path, root } from '../helpers.js';

const cli = join(root, 'dist', 'cli', 'main.js');

describe('huozi-gguf chat through a pipe', () => {
  it('answers one message per line and prints only the answers', () => {
    const r = spawnSync(process.execPath, [cli, 'chat', '--temp', '0', '--system', '你是一个智能助手'], {
      input: '请背诵《春晓》\n作者是谁？\n', encoding: 'utf8', timeout: 60_000,
    });
    expect(r.status).toBe(0);
    expect(r.stdout).toBe('《春晓》\n孟浩然\n春眠不觉晓，处处闻啼鸟。\n夜来风雨声，花落知多少。\n作者是孟浩然。\n');
  });

  it('takes the whole input as one message with --whole', () => {
    const r = spawnSync(process.execPath, [cli, 'chat', '-m', f16Path, '--temp', '0', '--whole'], {
      input: '请背诵《春晓》\n', encoding: 'utf8', timeout: 60_000,
    });
    expect(r.status).toBe(0);
    expect(r.stdout).toContain('春眠不觉晓');
  });

  it('holds every answer to --json-schema: each line of output parses and fits the schema', () => {
    const schema = {
      type: 'object',
      properties: { title: { type: 'string', maxLength: 8 }, lines: { type: 'integer', minimum: 1, maximum: 8 }, form: { enum: ['五言', '七言'] } },
      required: ['title', 'lines', 'form'],
      additionalProperties: false,
    };
    // The converter's grammar allows newlines and up to 20 blanks between tokens (a small model takes them):
    // -n leaves room for all of them.
    const r = spawnSync(process.execPath, [cli, 'chat', '--temp', '0', '-n', '512', '--json-schema', JSON.stringify(schema)], {
      input: '请背诵《春晓》\n作者是谁？\n', encoding: 'utf8', timeout: 110_000,
    });
    expect(r.status).toBe(0);
    // Answers may span lines: each is the shortest run of lines that parses.
    const values: unknown[] = [];
    let pending = '';
    for (const line of r.stdout.split('\n')) {
      pending += `${line}\n`;
      try {
        values.push(JSON.parse(pending));
        pending = '';
      } catch {
        // not a whole answer yet
      }
    }
    expect(pending.trim()).toBe('');
    expect(values).toHaveLength(2);
    for (const value of values as { title: string; lines: number; form: string }[]) {
      expect(Object.keys(value).sort()).toEqual(['form', 'lines', 'title']);
      expect([...value.title].length).toBeLessThanOrEqual(8);
      expect(Number.isInteger(value.lines) && value.lines >= 1 && value.lines <= 8).toBe(true);
      expect(['五言', '七言']).toContain(value.form);
    }
  }, 120_000);

  it('holds answers to --grammar-file, and reports a bad one naming the flag', () => {
    const dir = mkdtempSync(join(tmpdir(), 'huozi-cli-'));
    const grammar = join(dir, 'author.gbnf');
    writeFileSync(grammar, 'root ::= "作者：" [一-龥]{2,4} "。"\n');
    const r = spawnSync(process.execPath, [cli, 'chat', '--temp', '0', '--grammar-file', grammar], {
      input: '请背诵《春晓》\n', encoding: 'utf8', timeout: 60_000,
    });
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/^作者：[一-龥]{2,4}。\n$/);
    writeFileSync(grammar, 'root ::= [一-\n');
    const bad = spawnSync(process.execPath, [cli, 'chat', '--grammar-file', grammar], { input: 'x\n', encoding: 'utf8', timeout: 60_000 });
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/^huozi-gguf: --grammar-file \S+author\.gbnf: .* at byte \d+/);
    expect(bad.stderr.trimEnd().split('\n')).toHaveLength(1);
    const schema = spawnSync(process.execPath, [cli, 'chat', '--json-schema', '{"type":"string","not":{"const":""}}'], { input: 'x\n', encoding: 'utf8', timeout: 60_000 });
    expect(schema.status).toBe(1);
    expect(schema.stderr).toMatch(/^huozi-gguf: --json-schema: JSON Schema keyword "not" at #\/not/);
  });
});

const tmux = (...args: string[]) => execFileSync('tmux', args, { encoding: 'utf8' });
const session = `huozi-test-${process.pid}`;

function screen(): string {
  return tmux('capture-pane', '-p', '-J', '-S', '-200', '-t', session);
}

async function waitFor(predicate: (text: string) => boolean, what: string, ms = 30_000): Promise<string> {
  const end = Date.now() + ms;
  let text = '';
  while (Date.now() < end) {
    text = screen();
    if (predicate(text)) return text;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}; screen:\n${text}`);
}

const prompts = (text: string) => text.split('\n').filter((l) => l.startsWith('> ')).length;

describe('huozi-gguf chat in a terminal (tmux, which .ci/run installs)', () => {
  afterEach(() => {
    spawnSync('tmux', ['kill-session', '-t', session]);
  });

  function start(args: string): void {
    tmux('new-session', '-d', '-s', session, '-x', '120', '-y', '50', `${process.execPath} ${cli} chat --no-color ${args}; echo EXITED $?; sleep 30`);
  }

  it('holds a two-turn conversation and recites 《春晓》', async () => {
    start('--temp 0 --system 你是一个智能助手');
    await waitFor((t) => prompts(t) === 1, 'the first prompt');
    tmux('send-keys', '-t', session, '-l', '请背诵《春晓》');
    tmux('send-keys', '-t', session, 'Enter');
    await waitFor((t) => prompts(t) === 2, 'the second prompt');
    tmux('send-keys', '-t', session, '-l', '作者是谁？');
    tmux('send-keys', '-t', session, 'Enter');
    const text = await waitFor((t) => prompts(t) === 3, 'the third prompt');
    console.log(`terminal transcript:\n${text.trimEnd()}`);
    expect(text).toContain('note: no -m given; using the embedded demo model');
    expect(text).toContain('《春晓》\n孟浩然\n春眠不觉晓，处处闻啼鸟。\n夜来风雨声，花落知多少。');
    expect(text).toContain('> 作者是谁？\n作者是孟浩然。');
    tmux('send-keys', '-t', session, 'C-d');
    await waitFor((t) => t.includes('EXITED 0'), 'exit after Ctrl+D');
  });

  it('stops an answer on Ctrl+C, goes on, and leaves on a second Ctrl+C at the prompt', async () => {
    // ChatML on a model that does not know it: the answer runs on until stopped.
    start(`-m ${f16Path} --template chatml -c 32768 -t 1 --temp 0.7`);
    await waitFor((t) => prompts(t) === 1, 'the first prompt');
    tmux('send-keys', '-t', session, '-l', 'hello');
    tmux('send-keys', '-t', session, 'Enter');
    await new Promise((r) => setTimeout(r, 1500));
    tmux('send-keys', '-t', session, 'C-c');
    // The answer may have scrolled the first prompt out of the pane's history: look at the end of the screen.
    let text = await waitFor((t) => /\(stopped\)\n> ?$/.test(t.trimEnd() + ' '), 'the stopped answer');
    expect(text).not.toContain('EXITED');
    tmux('send-keys', '-t', session, '/reset', 'Enter');
    text = await waitFor((t) => t.includes('(conversation cleared)'), '/reset');
    tmux('send-keys', '-t', session, 'C-c');
    await waitFor((t) => t.includes('press Ctrl+C again'), 'the first Ctrl+C at the prompt');
    tmux('send-keys', '-t', session, 'C-c');
    await waitFor((t) => t.includes('EXITED 0'), 'exit after the second Ctrl+C');
  });

  it('saves and loads a conversation with /save and /load', async () => {
    const file = join(mkdtempSync(join(tmpdir(), 'huozi-cli-')), 'chat.session');
    start('--temp 0');
    await waitFor((t) => prompts(t) === 1, 'the first prompt');
    tmux('send-keys', '-t', session, '-l', '请背诵《春晓》');
    tmux('send-keys', '-t', session, 'Enter');
    await waitFor((t) => prompts(t) === 2, 'the answer');
    tmux('send-keys', '-t', session, '-l', `/save ${file}`);
    tmux('send-keys', '-t', session, 'Enter');
    await waitFor((t) => t.includes(`(saved to ${file})`), '/save');
    expect(existsSync(file)).toBe(true);
    tmux('send-keys', '-t', session, '/reset', 'Enter');
    tmux('send-keys', '-t', session, '-l', `/load ${file}`);
    tmux('send-keys', '-t', session, 'Enter');
    await waitFor((t) => t.includes(`(loaded 2 messages from ${file})`), '/load');
    tmux('send-keys', '-t', session, '/help', 'Enter');
    await waitFor((t) => t.includes('/system <text>'), '/help');
  });
});
