import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { f16Path, root } from '../helpers.js';

const cli = join(root, 'dist', 'cli', 'main.js');
const run = (args: string[], input?: string) =>
  spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', input, timeout: 60_000 });

const chunwen = '<|beginofutterance|>用户\n请背诵《春晓》<|endofutterance|>\n<|beginofutterance|>助手\n';

describe('huozi-gguf complete', () => {
  it('runs on the embedded demo model when no model is given', () => {
    const r = run(['complete', '--special', '--temp', '0', '--stop', '<|endofutterance|>', '-n', '40', '-p', chunwen]);
    expect(r.status).toBe(0);
    expect(r.stderr).toContain('embedded demo model huozi-tiny');
    expect(r.stdout).toContain('《春晓》\n孟浩然\n春眠不觉晓，处处闻啼鸟。');
  });

  it('reads the prompt from standard input and takes llama.cpp-style flags', () => {
    const r = run(['complete', '-m', f16Path, '--special', '--temp', '0', '-n', '20', '-ngl', '0', '-t', '1', '-c', '256'], chunwen);
    expect(r.status).toBe(0);
    expect(r.stdout).toContain('《春晓》');
  });

  it('reports a bad model path as one line, with exit code 1', () => {
    const r = run(['complete', '-m', '/nonexistent.gguf', '-p', 'x']);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/^huozi-gguf: Failed to load model from \/nonexistent\.gguf/);
    expect(r.stderr).not.toContain('    at ');
  });

  it('reports bad option values without a stack trace', () => {
    const r = run(['complete', '-c', '0', '-p', 'x']);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/\nhuozi-gguf: Expected integer between 1 and \d+ for contextSize but received 0 of type number\n$/);
  });

  it('prints help without loading the addon', () => {
    const r = spawnSync(process.execPath, [cli, '--help'], { encoding: 'utf8', env: { ...process.env, HUOZI_BINDING: '/nonexistent.node' } });
    expect(r.status).toBe(0);
    expect(r.stdout).toContain('complete');
  });

  describe('--grammar-file, --json-schema, --logprobs', () => {
    const dir = mkdtempSync(join(tmpdir(), 'huozi-cli-grammar-'));
    const file = (name: string, text: string) => {
      const path = join(dir, name);
      writeFileSync(path, text);
      return path;
    };
    // Outside the demo model's poems: without the grammar the answer would be another poem.
    const yesNo = file('yes-no.gbnf', 'root ::= ("是" | "否") "，" answer\nanswer ::= "作者是" [一-龥]{2,3} "。"\n');
    const person = {
      type: 'object',
      properties: { name: { type: 'string', maxLength: 6 }, age: { type: 'integer', minimum: 0, maximum: 150 }, tags: { type: 'array', items: { enum: ['诗', '词'] }, maxItems: 2 } },
      required: ['name', 'age', 'tags'],
      additionalProperties: false,
    };
    const checkPerson = (text: string) => {
      const value = JSON.parse(text);
      expect(Object.keys(value).sort()).toEqual(['age', 'name', 'tags']);
      expect(typeof value.name).toBe('string');
      expect([...value.name].length).toBeLessThanOrEqual(6);
      expect(Number.isInteger(value.age) && value.age >= 0 && value.age <= 150).toBe(true);
      expect(value.tags.every((t: string) => t === '诗' || t === '词')).toBe(true);
    };

    it('holds the output to a GBNF grammar file', () => {
      for (const temp of ['0', '1.5']) {
        const r = run(['complete', '--special', '--temp', temp, '--seed', '7', '-n', '40', '-p', chunwen, '--grammar-file', yesNo]);
        expect(r.status).toBe(0);
        expect(r.stdout).toMatch(/^[是否]，作者是[一-龥]{2,3}。\n$/);
      }
    });

    it('answers JSON that parses and fits a schema given inline or as a file', () => {
      // -n leaves room for the blanks and newlines the converter's grammar allows between tokens.
      const inline = run(['complete', '--special', '--temp', '0', '-n', '512', '-p', chunwen, '--json-schema', JSON.stringify(person)]);
      expect(inline.status).toBe(0);
      checkPerson(inline.stdout);
      const fromFile = run(['complete', '--special', '--temp', '1', '--seed', '3', '-n', '512', '-p', chunwen, '--json-schema', file('person.json', JSON.stringify(person, null, 2))]);
      expect(fromFile.status).toBe(0);
      checkPerson(fromFile.stdout);
    });

    it('--logprobs k: after the text, one row per generated token with its logprob and k alternatives', () => {
      const r = run(['complete', '--special', '--temp', '0', '--repeat-penalty', '1', '-n', '12', '-p', chunwen, '--logprobs', '3']);
      expect(r.status).toBe(0);
      const [text, table] = r.stdout.split('\n\n');
      expect(text.startsWith('《春晓》\n孟浩然\n春')).toBe(true);
      const lines = table.trimEnd().split('\n');
      expect(lines[0]).toMatch(/^#\s+token\s+logprob\s+top 3$/);
      const shown = String.raw`("(?:[^"\\]|\\.)*"|<[0-9a-f]{2}(?: [0-9a-f]{2})*>)`;
      const row = new RegExp(String.raw`^(\d+)\s+${shown}\s+(-?\d+\.\d{4})\s+(.*)$`);
      const alternative = new RegExp(String.raw`${shown} (-?\d+\.\d{4})`, 'g');
      const rows = lines.slice(1).map((line) => {
        const m = row.exec(line);
        expect(m, line).not.toBeNull();
        return { index: Number(m![1]), token: m![2], logprob: Number(m![3]), top: [...m![4].matchAll(alternative)].map((a) => ({ token: a[1], logprob: Number(a[2]) })) };
      });
      expect(rows.map((x) => x.index)).toEqual(Array.from({ length: 12 }, (_, i) => i + 1));
      const bytes: Buffer[] = [];
      for (const x of rows) {
        expect(x.top).toHaveLength(3);
        // Greedy without penalties takes the most likely token; the alternatives come most likely first.
        expect(x.top[0]).toEqual({ token: x.token, logprob: x.logprob });
        expect(x.logprob).toBeLessThanOrEqual(0);
        expect(x.top[1].logprob).toBeLessThanOrEqual(x.top[0].logprob);
        expect(x.top[2].logprob).toBeLessThanOrEqual(x.top[1].logprob);
        // A token that is part of a character shows its bytes.
        bytes.push(x.token.startsWith('"') ? Buffer.from(JSON.parse(x.token)) : Buffer.from(x.token.slice(1, -1).split(' ').map((h) => parseInt(h, 16))));
      }
      // The rows are the text, token by token (the text holds back a character cut at the end).
      expect(Buffer.concat(bytes).toString('utf8').startsWith(text)).toBe(true);
      // k = 0: the tokens and their logprobs only.
      const none = run(['complete', '--special', '--temp', '0', '-n', '3', '-p', chunwen, '--logprobs', '0']);
      expect(none.status).toBe(0);
      const noneLines = none.stdout.split('\n\n')[1].trimEnd().split('\n');
      expect(noneLines[0]).toMatch(/^#\s+token\s+logprob$/);
      expect(noneLines.slice(1)).toHaveLength(3);
      for (const line of noneLines.slice(1)) expect(line).toMatch(new RegExp(String.raw`^\d+\s+${shown}\s+-?\d+\.\d{4}$`));
    });

    it('reports a bad grammar, a bad schema, a missing file and both flags at once as one line naming the flag, before loading a model', () => {
      const cases: [string[], RegExp][] = [
        [['--grammar-file', file('bad.gbnf', 'root ::= "a" | (\n')], /^huozi-gguf: --grammar-file \S+bad\.gbnf: .*at byte \d+ \(line \d+, column \d+\)/],
        [['--grammar-file', file('undefined.gbnf', 'root ::= answer\n')], /^huozi-gguf: --grammar-file \S+undefined\.gbnf: Undefined rule 'answer'/],
        [['--grammar-file', join(dir, 'missing.gbnf')], /^huozi-gguf: --grammar-file \S+missing\.gbnf: ENOENT: no such file or directory/],
        [['--json-schema', '{"type":"number","multipleOf":2}'], /^huozi-gguf: --json-schema: JSON Schema keyword "multipleOf" at #\/multipleOf/],
        [['--json-schema', file('bad.json', '{"type": "object",')], /^huozi-gguf: --json-schema \S+bad\.json: not valid JSON: /],
        [['--json-schema', '{"type":'], /^huozi-gguf: --json-schema: not valid JSON: /],
        [['--json-schema', join(dir, 'missing.json')], /^huozi-gguf: --json-schema \S+missing\.json: ENOENT: no such file or directory/],
        [['--json-schema', '{"type":"string"}', '--grammar-file', yesNo], /^huozi-gguf: --grammar-file and --json-schema cannot be used together/],
      ];
      for (const [flags, message] of cases) {
        const r = run(['complete', '-p', 'x', ...flags]);
        expect(r.status, flags.join(' ')).toBe(1);
        expect(r.stderr).toMatch(message);
        expect(r.stderr.trimEnd().split('\n'), r.stderr).toHaveLength(1);
        expect(r.stdout).toBe('');
      }
    });
  });
});
