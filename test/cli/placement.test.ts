// The placement flags (issue #17) as a user types them, llama.cpp's spellings included: --cpu-moe, --n-cpu-moe
// / -ncmoe, --override-tensor / -ot, --vram-budget with -ngl auto; inspect --memory prints the plan, and bad values
// get the library's messages.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { expertPattern } from '../../dist/index.js';
import { demoPath, root } from '../helpers.js';

const cli = join(root, 'dist', 'cli', 'main.js');
const run = (...args: string[]) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', timeout: 60_000 });

describe('placement flags', () => {
  it('inspect --memory prints the rules of -ncmoe and -ot and what a token reads from host memory', () => {
    const r = run('inspect', demoPath, '--memory', '-c', '256', '-ncmoe', '2', '-ot', 'output=CPU');
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toContain('placement (from the options)');
    expect(r.stdout).toContain('output -> CPU');
    expect(r.stdout).toContain(`${expertPattern(0)} -> CPU`);
    expect(r.stdout).toContain(`${expertPattern(1)} -> CPU`);
    expect(r.stdout).toMatch(/read from host memory per generated token/);
    const json = JSON.parse(run('inspect', demoPath, '--memory', '--json', '-c', '256', '--cpu-moe').stdout);
    expect(json.plan.overrides).toEqual([{ pattern: expertPattern(), buffer: 'CPU' }]);
    expect(json.devices.at(-1).name).toBe('host');
    // -ngl auto with a budget: the fit's plan and what it weighed.
    const auto = run('inspect', demoPath, '--memory', '-c', '256', '-ngl', 'auto', '--vram-budget', '4096');
    expect(auto.status, auto.stderr).toBe(0);
    expect(auto.stdout).toMatch(/placement \(--ngl auto, budget 4096 MiB/);
  });

  it('complete loads with them and answers', () => {
    const r = run('complete', '-m', demoPath, '-p', '床前明月光，', '-n', '4', '--temp', '0', '-ncmoe', '2', '--override-tensor', 'blk\\.3\\.ffn_up_exps=CPU,output=CPU');
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout.length).toBeGreaterThan(0);
  });

  it.each([
    [['-ot', 'nothing=CPU'], /tensorOverrides\[0\]\.pattern/],
    [['-ot', 'output'], /--override-tensor expects <pattern>=<device>, got "output"/],
    [['-ot', 'output=CUDA9'], /no device named "CUDA9"/],
    [['-ot', '(.*)*x=CPU'], /exponential time/],
    [['--cpu-moe', '-ncmoe', '1'], /--cpu-moe and --n-cpu-moe/],
    [['-ncmoe', '9'], /at most the model's 4 layers/],
    [['--vram-budget', '4096'], /add --ngl auto/],
    [['-ngl', 'auto', '-ncmoe', '1'], /gpuLayers/],
  ])('%j: one line naming what is wrong, exit 1', (flags, message) => {
    const r = run('complete', '-m', demoPath, '-p', 'x', '-n', '1', ...flags);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(message);
    expect(r.stderr).toMatch(/^huozi-gguf: /m);
  });
});
