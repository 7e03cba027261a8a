import { spawnSync } from 'node:child_process';
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
});
