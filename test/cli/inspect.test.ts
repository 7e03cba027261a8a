import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { inspect } from '../../dist/index.js';
import { demoPath, f16Path, root } from '../helpers.js';

const cli = join(root, 'dist', 'cli', 'main.js');

describe('inspect()', () => {
  it('reports the fixture\'s shape, vocabulary and tensor types', async () => {
    const i = await inspect(f16Path);
    expect(i).toMatchObject({
      architecture: 'llama', fileType: 'F16', version: 3, alignment: 32, parameters: 6_565_120,
      shape: { layers: 4, embeddingSize: 256, heads: 4, kvHeads: 2, headSize: 64, experts: 8, expertsUsed: 2, contextLength: 32768, ropeFreqBase: 1e6, rmsNormEpsilon: 1e-5 },
      vocabulary: { model: 'llama', size: 2050, bos: 1, eos: 2, addBos: true },
      chatTemplate: { present: false },
    });
    expect(i.vocabulary.special['<|endofutterance|>']).toBe(2049);
    expect(i.quantization.map((q) => q.type)).toEqual(['f16', 'f32']);
    expect(i.tensors).toHaveLength(43);
  });

  it('reads the demo model\'s quantization mix', async () => {
    const i = await inspect(demoPath);
    expect(i.fileType).toBe('Q4_0');
    expect(Object.fromEntries(i.quantization.map((q) => [q.type, q.tensors]))).toEqual({ q4_0: 21, q6_K: 1, q8_0: 8, f32: 13 });
  });
});

describe('huozi-gguf inspect', () => {
  it('prints the facts', () => {
    const r = spawnSync(process.execPath, [cli, 'inspect', demoPath], { encoding: 'utf8' });
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/architecture\s+llama/);
    expect(r.stdout).toMatch(/experts\s+8, 2 used per token/);
    expect(r.stdout).toMatch(/attention\s+4 heads, 2 KV heads, head size 64/);
    expect(r.stdout).toMatch(/special\s+.*<\|endofutterance\|>=2049/);
    expect(r.stdout).toMatch(/q4_0\s+21 tensors/);
    expect(r.stdout).not.toContain('blk.0.attn_q.weight');
  });

  it('prints JSON and tensors on request', () => {
    const r = spawnSync(process.execPath, [cli, 'inspect', demoPath, '--json', '--tensors'], { encoding: 'utf8' });
    const json = JSON.parse(r.stdout);
    expect(json.tensors.find((t: { name: string }) => t.name === 'blk.0.attn_v.weight')).toMatchObject({ type: 'q8_0', dims: [256, 128] });
  });

  it('reports a corrupt file with the offset, exit code 1', () => {
    const r = spawnSync(process.execPath, [cli, 'inspect', join(root, 'package.json')], { encoding: 'utf8' });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/huozi-gguf: not a GGUF file .*\(at byte 0\)/);
  });
});
