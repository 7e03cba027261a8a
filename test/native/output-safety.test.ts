// Issue #14, items 7, 8 and 13 (quantize's directory): every command and API that writes a file refuses an
// output that exists and is not a regular file (device, FIFO, socket, directory), an output that is one of its
// inputs (by device and inode: same path, symlink, hard link), and an output whose directory is missing or not
// writable, with an OutputPathError before any work; it writes through a temporary file renamed into place.
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  chmodSync, copyFileSync, cpSync, linkSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync,
  statSync, symlinkSync, writeFileSync,
} from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as lib from '../../dist/index.js';
import { binding } from '../../dist/binding.js';
import { CHECKPOINT_FILES } from '../../dist/convert/convert.js';
import { computeImatrix, convert, GgufValueType, loadModel, quantize, readGguf, synth, writeGguf, type Model } from '../../dist/index.js';
import { f16Path, fixtureDir, root } from '../helpers.js';

const hfDir = join(fixtureDir, 'hf');
const recitations = join(root, 'test/fixtures/text/imatrix-recitations.txt');
const cli = join(root, 'dist/cli/main.js');
const fresh = () => mkdtempSync(join(tmpdir(), 'huozi-out-'));
const sha = (path: string) => createHash('sha256').update(readFileSync(path)).digest('hex');
const isRoot = process.getuid?.() === 0;

/** Runs `write` and returns what it threw (or fails the test when it resolved). */
async function refusal(write: () => Promise<unknown>): Promise<Error & { code?: string; reason?: string; path?: string }> {
  const result = await write().then(() => 'resolved', (e: unknown) => e);
  expect(result, 'expected the write to be refused').toBeInstanceOf(Error);
  return result as Error & { code?: string; reason?: string; path?: string };
}

function expectOutputPathError(error: Error & { code?: string; reason?: string; path?: string }, reason: string, path: string): void {
  expect({ name: error.name, code: error.code, reason: error.reason, path: error.path }, error.stack)
    .toEqual({ name: 'OutputPathError', code: 'ERR_HUOZI_OUTPUT_PATH', reason, path });
  expect(error).toBeInstanceOf((lib as unknown as { OutputPathError: new () => Error }).OutputPathError);
  expect(error.message).toContain(path);
}

let model: Model;
beforeAll(async () => {
  model = await loadModel(f16Path);
});
afterAll(async () => {
  await model?.dispose();
});

const S = (value: string) => ({ type: GgufValueType.STRING as const, value });

/** Every writer of the package, each writing a small file to `out`. */
const writers: [string, (out: string) => Promise<unknown>][] = [
  ['quantize', (out) => quantize(f16Path, out, { type: 'q8_0' })],
  ['convert', (out) => convert(hfDir, out, { outType: 'f16' })],
  ['synth', (out) => synth(out, { shape: 'tiny', type: 'q4_0', layers: 1 })],
  ['writeGguf', (out) => writeGguf(out, new Map([['general.architecture', S('llama')]]), [])],
  ['computeImatrix', (out) => computeImatrix(model, recitations, out, { contextSize: 64, chunks: 1 })],
];

// mknod needs root (CAP_MKNOD); the node is made in a temporary folder with /dev/null's numbers, so even a
// writer that wrote to it would reach the null device, and one that replaced it would replace only the copy.
let mknodWhy = 'not root: character devices can only be made by root (mknod)';
let canMknod = false;
if (isRoot) {
  const probe = join(fresh(), 'probe');
  try {
    execFileSync('mknod', [probe, 'c', '1', '3'], { stdio: 'pipe' });
    canMknod = lstatSync(probe).isCharacterDevice();
  } catch (error) {
    mknodWhy = `mknod failed: ${(error as Error).message.split('\n')[0]}`;
  }
}
if (!canMknod) console.log(`output-safety: character-device cases skipped (${mknodWhy})`);

type Special = { kind: string; reason: string; make: (path: string) => Promise<() => Promise<void>>; is: (path: string) => boolean };
const specials: Special[] = [
  {
    kind: 'FIFO', reason: 'NOT_A_FILE',
    make: async (p) => (execFileSync('mkfifo', [p]), async () => undefined),
    is: (p) => lstatSync(p).isFIFO(),
  },
  {
    kind: 'socket', reason: 'NOT_A_FILE',
    make: (p) => new Promise((done, fail) => {
      const server: Server = createServer();
      server.once('error', fail);
      server.listen(p, () => done(() => new Promise((closed) => server.close(() => closed()))));
    }),
    is: (p) => lstatSync(p).isSocket(),
  },
  {
    kind: 'directory', reason: 'EISDIR',
    make: async (p) => (mkdirSync(p), async () => undefined),
    is: (p) => lstatSync(p).isDirectory(),
  },
  ...(canMknod ? [{
    kind: 'character device', reason: 'NOT_A_FILE',
    make: async (p: string) => (execFileSync('mknod', [p, 'c', '1', '3']), async () => undefined),
    is: (p: string) => lstatSync(p).isCharacterDevice(),
  }] : []),
];

describe('an output that exists and is not a regular file is refused, and left as it was', () => {
  for (const [writer, write] of writers) {
    it.each(specials.map((s) => [s.kind, s] as const))(`${writer} onto a %s`, async (_kind, special) => {
      const dir = fresh();
      const out = join(dir, 'null');
      const cleanup = await special.make(out);
      try {
        const before = lstatSync(out);
        const error = await refusal(() => write(out));
        expectOutputPathError(error, special.reason, out);
        expect(special.is(out)).toBe(true);
        expect(lstatSync(out).ino).toBe(before.ino);
        expect(readdirSync(dir)).toEqual(['null']); // no temporary file left
      } finally {
        await cleanup();
      }
    });
  }

  it('a symlink to a FIFO is refused too', async () => {
    const dir = fresh();
    execFileSync('mkfifo', [join(dir, 'fifo')]);
    symlinkSync(join(dir, 'fifo'), join(dir, 'link.gguf'));
    const error = await refusal(() => quantize(f16Path, join(dir, 'link.gguf'), { type: 'q8_0' }));
    expectOutputPathError(error, 'NOT_A_FILE', join(dir, 'link.gguf'));
    expect(error.message).toMatch(/FIFO/);
    expect(lstatSync(join(dir, 'fifo')).isFIFO()).toBe(true);
    expect(readlinkSync(join(dir, 'link.gguf'))).toBe(join(dir, 'fifo'));
  });

  it('the CLI says so and exits 1: quantize, convert -o, synth -o, imatrix -o', () => {
    const dir = fresh();
    const fifo = join(dir, 'null');
    execFileSync('mkfifo', [fifo]);
    const runs = [
      ['quantize', f16Path, fifo, 'q8_0'],
      ['convert', hfDir, '-o', fifo],
      ['synth', '--shape', 'tiny', '--layers', '1', '-o', fifo],
      ['imatrix', f16Path, recitations, '-o', fifo, '-c', '64', '--chunks', '1'],
    ];
    for (const args of runs) {
      const r = spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', timeout: 120_000 });
      expect({ command: args[0], status: r.status }).toEqual({ command: args[0], status: 1 });
      expect(r.stderr).toContain(`${fifo} is a FIFO`);
      expect(lstatSync(fifo).isFIFO()).toBe(true);
    }
    expect(readdirSync(dir)).toEqual(['null']);
  });

  it("the addon's quantize refuses an output that is not a regular file instead of opening it (a FIFO would block)", () => {
    const dir = fresh();
    const fifo = join(dir, 'fifo');
    execFileSync('mkfifo', [fifo]);
    // In a child: before the check, llama.cpp opened the FIFO for writing and waited forever for a reader.
    const script = `import('${join(root, 'dist/binding.js')}').then(({ binding }) => {
      try { binding().quantize('${f16Path}', '${fifo}', { ftype: 7 }); console.log('no error'); }
      catch (e) { console.log(e.code + ': ' + e.message); }
    })`;
    const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 60_000 });
    expect(r.signal, 'the quantizer blocked on the FIFO').toBeNull();
    expect(r.stdout).toMatch(/^ERR_HUOZI_INVALID_ARGUMENT: .*fifo.* is not a regular file/m);
    expect(lstatSync(fifo).isFIFO()).toBe(true);
    expect(typeof binding).toBe('function');
  });
});

describe('an output that is one of the inputs is refused (device and inode: path, symlink, hard link)', () => {
  it('convert: every file of the checkpoint it reads (config, tokenizer, index, shards)', async () => {
    // Real copies: nothing here can reach the fixture.
    const dir = join(fresh(), 'hf');
    cpSync(hfDir, dir, { recursive: true, dereference: true });
    const inputs = [
      'config.json', 'generation_config.json', 'tokenizer.model', 'tokenizer_config.json', 'added_tokens.json',
      'model.safetensors.index.json', 'model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors',
    ];
    const before = Object.fromEntries(readdirSync(dir).map((f) => [f, sha(join(dir, f))]));
    const elsewhere = fresh();
    for (const f of inputs) {
      const input = join(dir, f);
      symlinkSync(input, join(elsewhere, `sym-${f}`));
      linkSync(input, join(elsewhere, `hard-${f}`));
      for (const out of [input, join(dir, '.', f), join(elsewhere, `sym-${f}`), join(elsewhere, `hard-${f}`)]) {
        const error = await refusal(() => convert(dir, out));
        expectOutputPathError(error, 'SAME_AS_INPUT', out);
        expect(error.message).toContain(input);
      }
    }
    expect(Object.fromEntries(readdirSync(dir).map((f) => [f, sha(join(dir, f))]))).toEqual(before);
    expect(readdirSync(dir).filter((f) => f.endsWith('.tmp'))).toEqual([]);
    // A GGUF written into the checkpoint's folder is not an input: writing it again replaces it.
    const out = join(dir, 'model.gguf');
    await convert(dir, out);
    const first = sha(out);
    await convert(dir, out);
    expect(sha(out)).toBe(first);
  });

  it("convert's list of the files it reads names every file lib/convert/ opens by name", () => {
    // Drift guard: a reader that starts reading another checkpoint file must add it to CHECKPOINT_FILES.
    const dirLib = join(root, 'lib', 'convert');
    const named = new Set<string>();
    for (const f of readdirSync(dirLib).filter((n) => n.endsWith('.ts'))) {
      for (const m of readFileSync(join(dirLib, f), 'utf8').matchAll(/join\(dir, '([^']+)'\)/g)) named.add(m[1]);
    }
    named.delete('additional_chat_templates'); // a folder: its *.jinja files are compared one by one
    expect(named.size).toBeGreaterThan(5);
    expect([...named].filter((n) => !(CHECKPOINT_FILES as readonly string[]).includes(n))).toEqual([]);
  });

  it('convertLora refuses an output that is one of its inputs: the adapter\'s files or the base GGUF', async () => {
    // Its readers name the adapter's files on `adapterDir`: the ones convertLora passes to openOutput as inputs
    // (adapter_model.bin is only looked for, to refuse it).
    const named = new Set<string>();
    for (const f of readdirSync(join(root, 'lib', 'convert')).filter((n) => n.startsWith('lora') && n.endsWith('.ts'))) {
      for (const m of readFileSync(join(root, 'lib', 'convert', f), 'utf8').matchAll(/join\(adapterDir, '([^']+)'\)/g)) named.add(m[1]);
    }
    expect([...named].sort()).toEqual(['adapter_config.json', 'adapter_model.bin', 'adapter_model.safetensors']);
    const dir = mkdtempSync(join(tmpdir(), 'huozi-lora-out-'));
    try {
      const peft = join(dir, 'peft');
      cpSync(join(root, 'test', 'fixtures', 'huozi-tiny-lora'), peft, { recursive: true });
      const base = join(dir, 'base.gguf');
      copyFileSync(f16Path, base);
      const before = [sha(join(peft, 'adapter_config.json')), sha(join(peft, 'adapter_model.safetensors')), sha(base)];
      for (const out of [join(peft, 'adapter_config.json'), join(peft, 'adapter_model.safetensors'), base]) {
        const error = await refusal(() => lib.convertLora(peft, { base, output: out }));
        expectOutputPathError(error, 'SAME_AS_INPUT', out);
      }
      expect([sha(join(peft, 'adapter_config.json')), sha(join(peft, 'adapter_model.safetensors')), sha(base)]).toEqual(before);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('convert: a chat template it reads (chat_template.jinja, additional_chat_templates/*.jinja)', async () => {
    const dir = join(fresh(), 'hf');
    cpSync(hfDir, dir, { recursive: true, dereference: true });
    writeFileSync(join(dir, 'chat_template.jinja'), '{{ messages }}');
    mkdirSync(join(dir, 'additional_chat_templates'));
    writeFileSync(join(dir, 'additional_chat_templates', 'tool_use.jinja'), '{{ tools }}');
    for (const f of ['chat_template.jinja', join('additional_chat_templates', 'tool_use.jinja')]) {
      const error = await refusal(() => convert(dir, join(dir, f)));
      expectOutputPathError(error, 'SAME_AS_INPUT', join(dir, f));
    }
    expect(readFileSync(join(dir, 'chat_template.jinja'), 'utf8')).toBe('{{ messages }}');
  });

  it('quantize: the input and the importance matrix', async () => {
    const dir = fresh();
    const input = join(dir, 'in.gguf');
    copyFileSync(f16Path, input);
    // An importance matrix with no entries: llama.cpp takes it (and would have written over it).
    const imatrix = join(dir, 'imatrix.gguf');
    await writeGguf(imatrix, new Map([['general.type', S('imatrix')]]), []);
    const imatrixSha = sha(imatrix);
    symlinkSync(imatrix, join(dir, 'sym-imatrix.gguf'));
    linkSync(imatrix, join(dir, 'hard-imatrix.gguf'));
    for (const out of [imatrix, join(dir, 'sym-imatrix.gguf'), join(dir, 'hard-imatrix.gguf')]) {
      const error = await refusal(() => quantize(input, out, { type: 'q4_0', imatrix }));
      expectOutputPathError(error, 'SAME_AS_INPUT', out);
      expect(error.message).toContain(imatrix);
    }
    expect(sha(imatrix)).toBe(imatrixSha);
    expect(sha(input)).toBe(sha(f16Path));
    expect(readdirSync(dir).sort()).toEqual(['hard-imatrix.gguf', 'imatrix.gguf', 'in.gguf', 'sym-imatrix.gguf']);
  });

  it("computeImatrix: the model's file and the text", async () => {
    const dir = fresh();
    const modelCopy = join(dir, 'model.gguf');
    copyFileSync(f16Path, modelCopy);
    const text = join(dir, 'text.txt');
    copyFileSync(recitations, text);
    await using copy = await loadModel(modelCopy);
    for (const out of [modelCopy, text]) {
      const error = await refusal(() => computeImatrix(copy, text, out, { contextSize: 64, chunks: 1 }));
      expectOutputPathError(error, 'SAME_AS_INPUT', out);
    }
    expect(sha(modelCopy)).toBe(sha(f16Path));
    expect(sha(text)).toBe(sha(recitations));
    expect(readdirSync(dir).sort()).toEqual(['model.gguf', 'text.txt']);
  });

  it('synth (CLI): the --shape file', () => {
    const dir = fresh();
    const shapeFile = join(dir, 'shape.json');
    const shape = JSON.stringify({ ...lib.SYNTH_SHAPES.tiny, layers: 1 });
    writeFileSync(shapeFile, shape);
    const r = spawnSync(process.execPath, [cli, 'synth', '--shape', shapeFile, '-o', shapeFile], { encoding: 'utf8' });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/is the input/);
    expect(readFileSync(shapeFile, 'utf8')).toBe(shape);
  });
});

describe("an output whose directory is missing or not writable is refused up front, naming the path and the reason", () => {
  for (const [writer, write] of writers) {
    it(`${writer}: ENOENT and ENOTDIR`, async () => {
      const dir = fresh();
      const missing = join(dir, 'missing', 'o.gguf');
      const enoent = await refusal(() => write(missing));
      expectOutputPathError(enoent, 'ENOENT', missing);
      expect(enoent.message).toMatch(/the output directory .*missing does not exist/);
      writeFileSync(join(dir, 'file'), 'a file');
      const underFile = join(dir, 'file', 'o.gguf');
      const enotdir = await refusal(() => write(underFile));
      expectOutputPathError(enotdir, 'ENOTDIR', underFile);
      expect(readdirSync(dir)).toEqual(['file']);
    });
  }

  it('quantize (CLI) into a folder it may not write: EACCES (as root, run as nobody)', (ctx) => {
    const dir = fresh();
    chmodSync(dir, 0o755);
    const out = join(dir, 'locked', 'o.gguf');
    mkdirSync(join(dir, 'locked'), { mode: 0o555 });
    chmodSync(join(dir, 'locked'), 0o555);
    // Root may write anywhere: the command runs as nobody (uid 65534) then, for whom the folder is read-only.
    const asUser = isRoot ? { uid: 65534, gid: 65534 } : {};
    const r = spawnSync(process.execPath, [cli, 'quantize', f16Path, out, 'q8_0'], { encoding: 'utf8', ...asUser });
    if (isRoot && (r.error as NodeJS.ErrnoException | undefined)?.code === 'EPERM') {
      console.log('output-safety: EACCES case skipped (root without CAP_SETUID cannot run the command as nobody)');
      ctx.skip();
    }
    expect(r.status, r.stderr).toBe(1);
    expect(r.stderr).toContain(out);
    expect(r.stderr).toMatch(/the output directory .*locked is not writable \(EACCES/);
    expect(readdirSync(join(dir, 'locked'))).toEqual([]);
  });

  // A read-only file system: a read-only tmpfs mounted on a temporary folder, which needs root (and
  // CAP_SYS_ADMIN). Elsewhere EROFS is reported as the other errors are (the same code path).
  let mountWhy = isRoot ? '' : 'not root: mounting a read-only tmpfs needs root';
  let roDir = '';
  if (isRoot) {
    roDir = fresh();
    try {
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'ro,size=64k', 'tmpfs', roDir], { stdio: 'pipe' });
    } catch (error) {
      mountWhy = `mount failed: ${(error as Error).message.split('\n')[0]}`;
    }
  }
  if (mountWhy) console.log(`output-safety: EROFS case skipped (${mountWhy})`);
  afterAll(() => {
    if (roDir && !mountWhy) execFileSync('umount', [roDir]);
  });
  it.skipIf(mountWhy !== '')('quantize, convert, synth onto a read-only file system: EROFS', async () => {
    for (const [writer, write] of writers.filter(([w]) => ['quantize', 'convert', 'synth'].includes(w))) {
      const out = join(roDir, `${writer}.gguf`);
      const error = await refusal(() => write(out));
      expectOutputPathError(error, 'EROFS', out);
      expect(error.message).toMatch(/read-only file system/);
    }
  });
});

describe('writing through a temporary file', () => {
  it('an output that is a symlink is written through: the file it points to is replaced, the link stays', async () => {
    const dir = fresh();
    const target = join(dir, 'models', 'real.gguf');
    mkdirSync(join(dir, 'models'));
    writeFileSync(target, 'previous contents');
    symlinkSync(target, join(dir, 'link.gguf'));
    const r = await quantize(f16Path, join(dir, 'link.gguf'), { type: 'q8_0' });
    expect(r.output).toBe(target);
    expect(readlinkSync(join(dir, 'link.gguf'))).toBe(target);
    expect((await readGguf(target)).tensors.length).toBe(43);
    expect(readdirSync(join(dir, 'models'))).toEqual(['real.gguf']);
    // A link that points nowhere is refused (as cp refuses to write through a dangling symlink).
    symlinkSync(join(dir, 'nowhere', 'x.gguf'), join(dir, 'dangling.gguf'));
    const error = await refusal(() => writeGguf(join(dir, 'dangling.gguf'), new Map(), []));
    expectOutputPathError(error, 'DANGLING_SYMLINK', join(dir, 'dangling.gguf'));
    expect(lstatSync(join(dir, 'dangling.gguf')).isSymbolicLink()).toBe(true);
  });

  it("a replaced file keeps its permission bits", async () => {
    const dir = fresh();
    const out = join(dir, 'o.gguf');
    writeFileSync(out, 'previous contents', { mode: 0o600 });
    chmodSync(out, 0o600);
    await synth(out, { shape: 'tiny', type: 'q4_0', layers: 1 });
    expect(statSync(out).mode & 0o777).toBe(0o600);
    expect((await readGguf(out)).tensors.length).toBeGreaterThan(0);
  });

  it('a writer that fails part-way leaves the old file and no temporary file', async () => {
    const dir = fresh();
    const out = join(dir, 'o.gguf');
    writeFileSync(out, 'previous contents');
    const tensors = [{
      name: 'x', dims: [64], type: 0,
      data: function* () {
        yield new Uint8Array(128);
        throw new Error('the producer failed');
      },
    }];
    await expect(writeGguf(out, new Map(), tensors)).rejects.toThrow('the producer failed');
    expect(readFileSync(out, 'utf8')).toBe('previous contents');
    expect(readdirSync(dir)).toEqual([basename(out)]);
    rmSync(dir, { recursive: true });
  });
});
