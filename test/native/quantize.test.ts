import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { linkSync, mkdtempSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  AbortError, computeImatrix, GgufError, loadModel, quantize, QuantizeError, QUANT_TYPES, quantType, readImatrix,
} from '../../dist/index.js';
import { buildNativeTools, nativeTool } from '../../scripts/native-tools.mjs';
import { EOU, f16Path, reference, root } from '../helpers.js';

const sha = (path: string) => createHash('sha256').update(readFileSync(path)).digest('hex');
const fresh = () => mkdtempSync(join(tmpdir(), 'huozi-quant-'));
const leftovers = (dir: string) => readdirSync(dir).filter((f) => f.endsWith('.tmp'));
const recitations = join(root, 'test/fixtures/text/imatrix-recitations.txt');

beforeAll(() => {
  // llama.cpp's own llama-quantize and llama-imatrix from the addon's tree (scripts/native-tools.mjs; .ci/run
  // builds them before the tests).
  const tools = buildNativeTools(['llama-quantize', 'llama-imatrix']);
  console.log(`native tools: ${tools.why}`);
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
      await expect(quantize(input, out, { type: 'q4_0' })).rejects.toMatchObject({
        name: 'OutputPathError', code: 'ERR_HUOZI_OUTPUT_PATH', reason: 'SAME_AS_INPUT', path: resolve(out),
      });
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

  it('knows every type llama-quantize lists (name, ftype, description, order) and takes each case-insensitively', () => {
    // llama-quantize --help prints its QUANT_OPTIONS: "  %2d  or  %-7s : %s", or "          %-7s : %s" (COPY);
    // some descriptions start with a space there, to align the sizes.
    const help = spawnSync(nativeTool('llama-quantize'), ['--help'], { encoding: 'utf8' });
    const text = help.stdout + help.stderr;
    const listed = [...text.slice(text.indexOf('allowed quantization types')).matchAll(/^ {2}(?:([ \d]\d) {2}or {2}| {8})(\S+)\s*: (.*)$/gm)]
      .map(([, ftype, name, description]) => ({ name, ftype: ftype === undefined ? null : Number(ftype), description: description.trim() }));
    expect(listed.length).toBeGreaterThan(30);
    expect(QUANT_TYPES.map((t) => ({ name: t.name, ftype: t.onlyCopy ? null : t.ftype, description: t.description }))).toEqual(listed);
    for (const { name } of listed) {
      expect(quantType(name.toLowerCase())?.name).toBe(name);
      expect(quantType(name.toUpperCase())?.name).toBe(name);
    }
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
  // Our importance matrix of the recitations, shared by the tests below.
  const dir = fresh();
  const ours = join(dir, 'imatrix.gguf');
  const chunks = 20;
  beforeAll(async () => {
    await using model = await loadModel(f16Path);
    const r = await computeImatrix(model, recitations, ours, { contextSize: 256, chunks, parseSpecial: true, threads: 2 });
    expect(r.chunks).toBe(chunks);
    expect(r.entries).toBe(4 * 8); // per layer: q, k, v, output, the router and the three expert tensors
  }, 300_000);

  // Relative difference allowed between our values and llama-imatrix's. Both sum the same squared activations
  // over the same chunks; llama-imatrix evaluates 8 chunks per batch, we one. Measured: at most 1.25e-5 (the
  // same on every run: both are deterministic; 1.18e-5 with llama-imatrix's default batch, 1.25e-5 with -b 256),
  // this is four times that.
  const IMATRIX_TOLERANCE = 5e-5;

  it('collects the values llama-imatrix collects from the same text, in its GGUF format', async () => {
    const native = join(dir, 'native-imatrix.gguf');
    const r = spawnSync(nativeTool('llama-imatrix'), [
      '-m', f16Path, '-f', recitations, '-o', native, '-c', '256', '--chunks', String(chunks), '--parse-special', '--no-ppl', '-t', '2',
    ], { encoding: 'utf8' });
    expect(r.status, r.stderr.slice(-2000)).toBe(0);
    const a = await readImatrix(ours);
    const b = await readImatrix(native);
    expect(a.chunkCount).toBe(chunks);
    expect(b.chunkCount).toBe(chunks);
    expect(a.entries.map((e) => e.name).sort()).toEqual(b.entries.map((e) => e.name).sort());
    expect(a.entries.find((e) => e.name === 'blk.0.ffn_down_exps.weight')!.importance).toHaveLength(192 * 8);
    expect(a.entries.find((e) => e.name === 'blk.0.attn_q.weight')!.importance).toHaveLength(256);
    let worst = { diff: 0, name: '', i: -1 };
    for (const e of a.entries) {
      const n = b.entries.find((x) => x.name === e.name)!.importance;
      expect(e.importance.length, e.name).toBe(n.length);
      for (let i = 0; i < n.length; i++) {
        expect(Number.isFinite(e.importance[i]), `${e.name}[${i}]`).toBe(true);
        const diff = Math.abs(e.importance[i] - n[i]) / Math.max(Math.abs(n[i]), Number.MIN_VALUE);
        if (!(diff <= worst.diff)) worst = { diff, name: e.name, i };
      }
    }
    console.log(`imatrix: max |ours - llama-imatrix| / |llama-imatrix| = ${worst.diff.toExponential(2)} at ${worst.name}[${worst.i}]`);
    expect(worst.diff).toBeLessThan(IMATRIX_TOLERANCE);
  }, 300_000);

  // With the same importance matrix file, our quantize() and llama-quantize write the same bytes.
  it.each(['IQ2_XXS', 'Q2_K'])('%s with an imatrix matches llama-quantize --imatrix byte for byte', async (type) => {
    const native = join(dir, `native-${type}.gguf`);
    const r = spawnSync(nativeTool('llama-quantize'), ['--imatrix', ours, f16Path, native, type], { encoding: 'utf8' });
    expect(r.status, r.stdout + r.stderr).toBe(0);
    const out = join(dir, `ours-${type}.gguf`);
    await quantize(f16Path, out, { type, imatrix: ours });
    expect(sha(out)).toBe(sha(native));
    await using model = await loadModel(out);
    expect(model.metadata['quantize.imatrix.chunks_count']).toBe(String(chunks));
    expect(model.info.fileType).toMatch(new RegExp(`^${type}`));
  }, 300_000);

  it('rejects a file that is not an importance matrix', async () => {
    await expect(readImatrix(f16Path)).rejects.toThrow(/not an importance matrix/);
  });
});

describe('errors', () => {
  it('QuantizeError has a code', () => {
    expect(new QuantizeError('x').code).toBe('ERR_HUOZI_QUANTIZE');
  });
});
