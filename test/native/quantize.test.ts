import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, linkSync, mkdtempSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  AbortError, computeImatrix, GgufError, loadModel, quantize, QuantizeError, QUANT_TYPES, readImatrix,
} from '../../dist/index.js';
import { buildNativeTools, nativeTool } from '../../scripts/native-tools.mjs';
import { EOU, f16Path, reference, root } from '../helpers.js';

const sha = (path: string) => createHash('sha256').update(readFileSync(path)).digest('hex');
const fresh = () => mkdtempSync(join(tmpdir(), 'huozi-quant-'));
const leftovers = (dir: string) => readdirSync(dir).filter((f) => f.endsWith('.tmp'));
const recitations = join(root, 'test/fixtures/text/imatrix-recitations.txt');

beforeAll(() => {
  // llama.cpp's own llama-quantize from the same tree (.ci/run builds it before the tests).
  buildNativeTools(['llama-quantize']);
}, 1_200_000);

describe('quantize() matches llama-quantize byte for byte', () => {
  it.each(['q4_0', 'q2_k'])('%s', async (type) => {
    const dir = fresh();
    const ours = join(dir, `ours-${type}.gguf`);
    const native = join(dir, `native-${type}.gguf`);
    const r = spawnSync(nativeTool('llama-quantize'), [f16Path, native, type], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    const result = await quantize(f16Path, ours, { type });
    expect(sha(ours)).toBe(sha(native));
    expect(result).toMatchObject({ type: type.toUpperCase(), inputBytes: 13_195_904 });
    expect(result.outputBytes).toBe(readFileSync(native).length);
    // And it runs.
    await using model = await loadModel(ours);
    await using ctx = await model.createContext({ contextSize: 256 });
    const g = reference.greedy[8];
    expect((await ctx.generate(g.prompt_ids, { temperature: 0, maxTokens: 8, stopTokens: [EOU] }).result).tokens.length).toBeGreaterThan(0);
  });
});

describe('quantize() never loses a file', () => {
  it('refuses an output that is the input: same path, symlink, hard link', async () => {
    const dir = fresh();
    const input = join(dir, 'in.gguf');
    writeFileSync(input, readFileSync(f16Path));
    symlinkSync(input, join(dir, 'sym.gguf'));
    linkSync(input, join(dir, 'hard.gguf'));
    for (const out of [input, join(dir, 'sym.gguf'), join(dir, 'hard.gguf'), join(dir, '.', 'in.gguf')]) {
      await expect(quantize(input, out, { type: 'q4_0' })).rejects.toMatchObject({ name: 'RangeError', code: 'ERR_OUT_OF_RANGE' });
    }
    expect(sha(input)).toBe(sha(f16Path));
  });

  it('rejects unknown types and bad options before starting', async () => {
    const dir = fresh();
    await expect(quantize(f16Path, join(dir, 'o.gguf'), { type: 'q4_9' })).rejects.toThrow(/one of Q1_0, Q2_0, Q4_0/);
    await expect(quantize(f16Path, join(dir, 'o.gguf'), { type: 'q4_0', threads: 0 })).rejects.toBeInstanceOf(RangeError);
    await expect(quantize(f16Path, join(dir, 'o.gguf'), { type: 'q4_0', outputTensorType: 'q9' })).rejects.toBeInstanceOf(RangeError);
    await expect(quantize(f16Path, join(dir, 'o.gguf'), { type: 'q4_0', tyep: 'x' } as never)).rejects.toThrow(/Did you mean "type"/);
    expect(readdirSync(dir)).toEqual([]);
  });

  it('accepts every type name llama-quantize accepts, case-insensitively', () => {
    expect(QUANT_TYPES.map((t) => t.name)).toEqual(expect.arrayContaining(['Q4_0', 'Q2_K', 'Q4_K_M', 'IQ2_XXS', 'Q8_0', 'F16', 'BF16', 'COPY']));
  });

  it('says a type needs an importance matrix before writing anything', async () => {
    const dir = fresh();
    const out = join(dir, 'o.gguf');
    writeFileSync(out, 'previous contents');
    await expect(quantize(f16Path, out, { type: 'IQ2_XXS' })).rejects.toThrow(/IQ2_XXS needs an importance matrix/);
    expect(readFileSync(out, 'utf8')).toBe('previous contents');
    expect(leftovers(dir)).toEqual([]);
  });

  it('leaves an existing output untouched when the input is corrupt', async () => {
    const dir = fresh();
    const bad = join(dir, 'bad.gguf');
    writeFileSync(bad, readFileSync(f16Path).subarray(0, 5000));
    const out = join(dir, 'o.gguf');
    writeFileSync(out, 'previous contents');
    await expect(quantize(bad, out, { type: 'q4_0' })).rejects.toBeInstanceOf(GgufError);
    expect(readFileSync(out, 'utf8')).toBe('previous contents');
    expect(leftovers(dir)).toEqual([]);
  });

  it('aborts mid-way, leaving the old output and no partial file', async () => {
    const dir = fresh();
    const out = join(dir, 'o.gguf');
    writeFileSync(out, 'previous contents');
    const controller = new AbortController();
    const progress: number[] = [];
    const run = quantize(f16Path, out, {
      type: 'q6_k', threads: 1, signal: controller.signal,
      onProgress: (done) => {
        progress.push(done);
        controller.abort();
      },
    });
    await expect(run).rejects.toBeInstanceOf(AbortError);
    expect(progress.length).toBeGreaterThan(0);
    expect(readFileSync(out, 'utf8')).toBe('previous contents');
    expect(leftovers(dir)).toEqual([]);
  });

  it('survives the quantizer being killed by a file size limit (a full disk), keeping the old output', () => {
    const dir = fresh();
    const out = join(dir, 'o.gguf');
    writeFileSync(out, 'previous contents');
    const script = `import('${join(root, 'dist/index.js')}').then(({ quantize }) => quantize('${f16Path}', '${out}', { type: 'q8_0' }))
      .then(() => console.log('no error'), (e) => console.log(e.name + ': ' + e.message))`;
    // RLIMIT_FSIZE of 1 MiB: the quantizer (a child) gets SIGXFSZ when its output passes it.
    const r = spawnSync('bash', ['-c', `ulimit -f 1024; exec ${process.execPath} -e "${script.replace(/"/g, '\\"')}"`], { encoding: 'utf8' });
    expect(r.status).toBe(0);
    // Node ignores SIGXFSZ, so the write fails (EFBIG) and llama.cpp reports an I/O error: still a clean error.
    expect(r.stdout).toMatch(/QuantizeError: .*(killed by SIGXFSZ|iostream error|EFBIG|too large)/);
    expect(readFileSync(out, 'utf8')).toBe('previous contents');
    expect(leftovers(dir)).toEqual([]);
  });

  it('reports progress per tensor, reaching 100% exactly once', async () => {
    const dir = fresh();
    const seen: [number, number][] = [];
    await quantize(f16Path, join(dir, 'o.gguf'), { type: 'q8_0', onProgress: (d, t) => seen.push([d, t]) });
    const total = seen[0][1];
    expect(total).toBe(43);
    expect(seen.filter(([d, t]) => d === t)).toHaveLength(1);
    expect(seen.at(-1)).toEqual([43, 43]);
    expect(seen.map(([d]) => d)).toEqual([...seen.map(([d]) => d)].sort((a, b) => a - b));
  });
});

describe('importance matrix', () => {
  it('collects one in llama.cpp\'s GGUF format that llama-quantize and quantize() both use', async () => {
    const dir = fresh();
    const imatrix = join(dir, 'imatrix.gguf');
    {
      await using model = await loadModel(f16Path);
      const r = await computeImatrix(model, recitations, imatrix, { contextSize: 256, chunks: 20, parseSpecial: true });
      expect(r.chunks).toBe(20);
      expect(r.entries).toBe(4 * 8); // per layer: q, k, v, output, the router and the three expert tensors
    }
    const loaded = await readImatrix(imatrix);
    const exps = loaded.entries.find((e) => e.name === 'blk.0.ffn_down_exps.weight')!;
    expect(exps.importance).toHaveLength(192 * 8);
    expect(loaded.entries.find((e) => e.name === 'blk.0.attn_q.weight')!.importance).toHaveLength(256);
    expect(loaded.entries.every((e) => e.importance.every((x) => Number.isFinite(x) && x >= 0))).toBe(true);

    const native = spawnSync(nativeTool('llama-quantize'), ['--imatrix', imatrix, f16Path, join(dir, 'native-iq2.gguf'), 'IQ2_XXS'], { encoding: 'utf8' });
    expect(native.status, native.stdout + native.stderr).toBe(0);
    const ours = join(dir, 'ours-iq2.gguf');
    await quantize(f16Path, ours, { type: 'IQ2_XXS', imatrix });
    await using model = await loadModel(ours);
    expect(model.metadata['quantize.imatrix.chunks_count']).toBe('20');
    const withImatrix = join(dir, 'q2k-imatrix.gguf');
    await quantize(f16Path, withImatrix, { type: 'q2_k', imatrix });
    expect(sha(withImatrix)).not.toBe(sha(join(dir, 'ours-iq2.gguf')));
    expect(existsSync(withImatrix)).toBe(true);
  });

  it('rejects a file that is not an importance matrix', async () => {
    await expect(readImatrix(f16Path)).rejects.toThrow(/not an importance matrix/);
  });
});

describe('errors', () => {
  it('QuantizeError has a code', () => {
    expect(new QuantizeError('x').code).toBe('ERR_HUOZI_QUANTIZE');
  });
});
