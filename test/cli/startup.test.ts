import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { demoPath, root } from '../helpers.js';

const cli = join(root, 'dist', 'cli', 'main.js');
const tracer = join(root, 'test', 'cli', 'load-trace.mjs');
const dir = mkdtempSync(join(tmpdir(), 'huozi-cli-startup-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const COMMANDS = ['chat', 'complete', 'inspect', 'convert', 'convert-lora', 'quantize', 'imatrix', 'synth', 'modelfile', 'rpc-server', 'serve'];

/** Runs the CLI and returns what it loaded: package files relative to the root, and the addons it opened. */
function trace(args: string[]): { status: number | null; stdout: string; modules: string[]; addons: string[] } {
  const file = join(dir, `${args.join('_').replace(/\W/g, '-')}.txt`);
  const r = spawnSync(process.execPath, ['--import', tracer, cli, ...args], {
    encoding: 'utf8',
    env: { ...process.env, HUOZI_LOAD_TRACE: file },
  });
  const lines = readFileSync(file, 'utf8').trim().split('\n');
  const modules = lines.filter((l) => l.startsWith('module ')).map((l) => relative(root, fileURLToPath(l.slice(7))).replaceAll('\\', '/'));
  const addons = lines.filter((l) => l.startsWith('dlopen ')).map((l) => l.slice(7));
  return { status: r.status, stdout: r.stdout, modules, addons };
}

// What --help may load: the command files themselves (each registers its flags; what it runs on is imported
// inside its action), and the addon's loader for the package root, which opens the addon only when asked.
const allowed = (m: string) => /^dist\/cli\/[\w-]+\.js$/.test(m) || m === 'dist/binding.js' || m === 'dist/errors.js';

describe('huozi-gguf startup', () => {
  it.each(['--help', '--version', ...COMMANDS.map((c) => `${c} --help`)])('%s loads neither llama.cpp nor the library', (line) => {
    const r = trace(line.split(' '));
    expect(r.status).toBe(0);
    expect(r.addons).toEqual([]);
    expect(r.modules.filter((m) => !allowed(m))).toEqual([]);
    expect(r.modules).toContain('dist/cli/main.js');
  });

  it('lists every command in --help', () => {
    const r = trace(['--help']);
    for (const c of COMMANDS) expect(r.stdout).toMatch(new RegExp(`^  ${c} `, 'm'));
  });

  it('sees what an action imports and the addon it opens (the trace above is not blind)', () => {
    const r = trace(['modelfile']);
    expect(r.status).toBe(0);
    expect(r.modules).toContain('dist/demo.js');
    const memory = trace(['inspect', '--memory', demoPath]);
    expect(memory.status).toBe(0);
    expect(memory.modules).toContain('dist/gpu.js');
    expect(memory.addons).toHaveLength(1);
  });
});
