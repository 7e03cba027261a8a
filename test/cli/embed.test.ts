import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { f16Path, root } from '../helpers.js';

const cli = join(root, 'dist', 'cli', 'main.js');
const run = (args: string[], input?: string) =>
  spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', input, timeout: 120_000, maxBuffer: 256 << 20 });
const cosine = (a: number[], b: number[]) => a.reduce((s, x, i) => s + x * b[i], 0) / Math.hypot(...a) / Math.hypot(...b);
const lines = (stdout: string) => stdout.trim().split('\n').map((l) => JSON.parse(l) as { index: number; embedding: number[] & number[][] });

describe('huozi-gguf embed', () => {
  it('one JSON line per input line, in order, unit length by default', () => {
    const r = run(['embed', '-m', f16Path, '-t', '1'], 'hello world\r\n你好\n床前明月光\n');
    expect(r.status).toBe(0);
    const out = lines(r.stdout);
    expect(out.map((o) => o.index)).toEqual([0, 1, 2]);
    for (const o of out) {
      expect(o.embedding).toHaveLength(256);
      expect(Math.hypot(...o.embedding)).toBeCloseTo(1, 5);
    }
    // Alone or packed with others, a text has the same embedding (to rounding; CRLF is a line end, not text).
    const again = lines(run(['embed', '-m', f16Path, '-t', '1'], 'hello world').stdout)[0];
    expect(cosine(again.embedding, out[0].embedding)).toBeGreaterThan(0.99999);
  });

  it('--file, --no-normalize, --pooling none, --pooling cls', () => {
    const dir = mkdtempSync(join(tmpdir(), 'huozi-embed-'));
    const file = join(dir, 'texts.txt');
    writeFileSync(file, 'Hello world\nsecond line\n\n');
    const raw = run(['embed', '-m', f16Path, '-t', '1', '--file', file, '--no-normalize']);
    expect(raw.status).toBe(0);
    const out = lines(raw.stdout);
    expect(out).toHaveLength(2);
    expect(Math.abs(Math.hypot(...out[0].embedding) - 1)).toBeGreaterThan(1e-3);
    const none = run(['embed', '-m', f16Path, '-t', '1', '--pooling', 'none'], 'Hello world\n');
    expect(none.status).toBe(0);
    const rows = lines(none.stdout)[0].embedding;
    expect(rows.length).toBeGreaterThan(1);
    for (const row of rows) expect(row).toHaveLength(256);
    const cls = run(['embed', '-m', f16Path, '-t', '1', '--pooling', 'cls'], 'Hello world\n');
    expect(cls.status).toBe(0);
    // CLS pools the first token's embedding: BOS, the same for every text.
    const other = lines(run(['embed', '-m', f16Path, '-t', '1', '--pooling', 'cls'], 'other\n').stdout)[0].embedding;
    expect(cosine(lines(cls.stdout)[0].embedding, other)).toBeGreaterThan(0.99999);
  });

  it('reports bad input as one line with exit code 1', () => {
    const bad = run(['embed', '-m', f16Path, '--pooling', 'max'], 'a\n');
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/^huozi-gguf: Expected one of "model", "mean", "cls", "last", "none" for pooling/);
    const empty = run(['embed', '-m', f16Path, '-t', '1'], 'a\n\nb\n');
    expect(empty.status).toBe(1);
    expect(empty.stderr).toContain('line 2 is empty');
    const long = run(['embed', '-m', f16Path, '-t', '1', '-c', '16'], `${'word '.repeat(100)}\n`);
    expect(long.status).toBe(1);
    expect(long.stderr).toMatch(/inputs\[0\] has \d+ tokens, more than contextSize \(16\)/);
    const missing = run(['embed', '-m', f16Path, '--file', '/nonexistent/texts.txt']);
    expect(missing.status).toBe(1);
    expect(missing.stderr).toMatch(/^huozi-gguf: ENOENT/);
    expect(missing.stderr).not.toContain('    at ');
  });

  it('no input, no output', () => {
    const r = run(['embed', '-m', f16Path, '-t', '1'], '');
    expect(r.status).toBe(0);
    expect(r.stdout).toBe('');
  });
});
