// Session files (issue #14, items 1 and 9): a crafted file must end in a SessionFileError before llama.cpp reads
// anything the file cannot justify, a failed load must leave the session and its context exactly as they were,
// the whole file is checksummed, and save() keeps permissions, follows links and refuses what is not a file.
// Every crafted file is built here from a real saved session, with its checksums recomputed where the point is
// to reach the validation behind them.
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  chmodSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, realpathSync, statSync, symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ChatSession, loadModel, SessionFileError, type Context, type Model } from '../../dist/index.js';
import { demoPath, root } from '../helpers.js';

const MAGIC = 'HUOZI-CHAT-SESSION';
const SYSTEM = '你是一个智能助手';
const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest();

/** A session file taken apart: format version, JSON header and KV state (any checksum trailer dropped). */
interface Parts {
  version: number;
  header: Record<string, unknown>;
  state: Buffer;
}

function parse(bytes: Buffer): Parts {
  const version = bytes.readUInt32LE(MAGIC.length);
  const length = bytes.readUInt32LE(MAGIC.length + 4);
  const start = MAGIC.length + 8;
  const header = JSON.parse(bytes.toString('utf8', start, start + length));
  const end = version === 1 ? bytes.length : bytes.length - 32;
  return { version, header, state: Buffer.from(bytes.subarray(start + length, end)) };
}

/** Puts a session file back together with every checksum and length recomputed (as a careful forger would). */
function build({ version, header, state }: Parts): Buffer {
  const h = { ...header, stateBytes: state.length };
  if (version === 1) h.stateSha256 = sha256(state).toString('hex');
  const json = Buffer.from(JSON.stringify(h), 'utf8');
  const prefix = Buffer.alloc(8);
  prefix.writeUInt32LE(version, 0);
  prefix.writeUInt32LE(json.length, 4);
  const body = Buffer.concat([Buffer.from(MAGIC, 'latin1'), prefix, json, state]);
  return version === 1 ? body : Buffer.concat([body, sha256(body)]);
}

// llama.cpp's sequence state for a plain KV cache (llama-kv-cache.cpp state_write): magic u32, seq id i32,
// stream count u32, cell count u32, per cell pos i32 + n_seq_id u32 + seq_id i32, V-transposed flag u32, layer
// count u32, then per layer key type i32, key row size u64 and the rows.
const N_STREAM = 8;
const CELL_COUNT = 12;
const cell = (i: number) => 16 + 12 * i;
const afterCells = (n: number) => 16 + 12 * n;

let model: Model;
let saveCtx: Context;
let targetCtx: Context;
let controlCtx: Context;
let dir: string;
let saved: Buffer;
let parts: Parts;
let nTokens: number;

beforeAll(async () => {
  model = await loadModel(demoPath);
  saveCtx = await model.createContext({ contextSize: 256 });
  targetCtx = await model.createContext({ contextSize: 256 });
  controlCtx = await model.createContext({ contextSize: 256 });
  dir = mkdtempSync(join(tmpdir(), 'huozi-session-file-'));
  const session = new ChatSession(saveCtx, { systemPrompt: SYSTEM });
  // The model recites this poem and ends its turn, so the file has committed tokens (the stop token included).
  const answer = await session.prompt('请背诵《春晓》', { temperature: 0, maxTokens: 60 });
  expect(answer.stopReason).toBe('stopToken');
  await session.save(join(dir, 'base.session'));
  saved = readFileSync(join(dir, 'base.session'));
  parts = parse(saved);
  nTokens = (parts.header.tokens as number[]).length;
  expect(parts.header.committed).not.toBeNull();
});
afterAll(async () => {
  await model.dispose();
});

function write(name: string, bytes: Buffer): string {
  const path = join(dir, name);
  writeFileSync(path, bytes);
  return path;
}

function withState(edit: (s: Buffer) => Buffer | void): Buffer {
  const state = Buffer.from(parts.state);
  return build({ ...parts, state: edit(state) ?? state });
}

function withHeader(edit: (h: Record<string, unknown>) => void): Buffer {
  const header = structuredClone(parts.header);
  edit(header);
  return build({ ...parts, header });
}

/** Runs a load in a child Node process (under a 6 GB address-space limit) and reports how it ended. */
function loadInChild(path: string, timeoutMs = 120_000): { status: number | null; signal: string | null; out: Record<string, unknown> | null; stderr: string } {
  const script = join(dir, 'child.mjs');
  writeFileSync(
    script,
    `import { ChatSession, loadModel } from ${JSON.stringify(join(root, 'dist', 'index.js'))};
const model = await loadModel(${JSON.stringify(demoPath)});
const context = await model.createContext({ contextSize: 256 });
const session = new ChatSession(context, { systemPrompt: 'untouched' });
const started = Date.now();
let out;
try {
  await session.load(process.argv[2]);
  out = { loaded: true };
} catch (error) {
  out = { name: error.name, code: error.code, message: error.message };
}
out.ms = Date.now() - started;
out.history = session.history;
out.maxRssKiB = process.resourceUsage().maxRSS;
console.log(JSON.stringify(out));
process.exit(0);
`,
  );
  const r = spawnSync('bash', ['-c', 'ulimit -v 6000000 && exec "$0" "$1" "$2"', process.execPath, script, path], {
    encoding: 'utf8',
    timeout: timeoutMs,
  });
  const line = r.stdout.trim().split('\n').pop();
  let out: Record<string, unknown> | null = null;
  try {
    out = line ? JSON.parse(line) : null;
  } catch {
    out = null;
  }
  return { status: r.status, signal: r.signal, out, stderr: r.stderr.slice(-2000) };
}

async function expectSessionFileError(session: ChatSession, path: string, pattern?: RegExp): Promise<SessionFileError> {
  const error = await session.load(path).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error, `${path} loaded`).toBeInstanceOf(SessionFileError);
  expect((error as SessionFileError).code).toBe('ERR_HUOZI_SESSION_FILE');
  if (pattern) expect((error as Error).message).toMatch(pattern);
  return error as SessionFileError;
}

describe('session file: crafted KV state (issue #14 item 1)', () => {
  it('a cell count of 0x7fffffff or 0xffffffff is a SessionFileError, with no large allocation', () => {
    for (const count of [0x7fffffff, 0xffffffff]) {
      const path = write(`cells-${count}.session`, withState((s) => void s.writeUInt32LE(count, CELL_COUNT)));
      const r = loadInChild(path);
      expect(r.signal, r.stderr).toBeNull();
      expect(r.status, r.stderr).toBe(0);
      expect(r.out?.name, JSON.stringify(r.out)).toBe('SessionFileError');
      expect(r.out?.code).toBe('ERR_HUOZI_SESSION_FILE');
      expect(r.out?.message).toMatch(/cell count/);
      expect(r.out?.history).toEqual([{ role: 'system', content: 'untouched' }]);
      // The model and context take ~100 MiB; anything sized by the cell count would be gigabytes.
      expect(r.out?.maxRssKiB as number).toBeLessThan(1024 * 1024);
    }
  });

  it('every count and size the state carries is checked against the context before llama.cpp reads it', async () => {
    const target = new ChatSession(targetCtx, { systemPrompt: 'untouched' });
    const n = nTokens;
    const a = afterCells(n);
    const cases: [string, (s: Buffer) => Buffer | void, RegExp][] = [
      ['magic', (s) => void (s[0] ^= 1), /magic/],
      ['streams 0', (s) => void s.writeUInt32LE(0, N_STREAM), /stream/],
      ['streams 2', (s) => void s.writeUInt32LE(2, N_STREAM), /stream/],
      ['cells 0', (s) => void s.writeUInt32LE(0, CELL_COUNT), /cell/],
      ['cells 1', (s) => void s.writeUInt32LE(1, CELL_COUNT), /cell count/],
      ['cells n-1', (s) => void s.writeUInt32LE(n - 1, CELL_COUNT), /cell count/],
      ['cells n+1', (s) => void s.writeUInt32LE(n + 1, CELL_COUNT), /cell count/],
      ['cells > cache', (s) => void s.writeUInt32LE(257, CELL_COUNT), /cell count/],
      ['n_seq_id 0', (s) => void s.writeUInt32LE(0, cell(0) + 4), /sequences/],
      ['n_seq_id 2', (s) => void s.writeUInt32LE(2, cell(0) + 4), /sequences/],
      ['n_seq_id 0x7fffffff', (s) => void s.writeUInt32LE(0x7fffffff, cell(0) + 4), /sequences/],
      ['seq id 1', (s) => void s.writeInt32LE(1, cell(0) + 8), /sequence 1/],
      ['pos -1', (s) => void s.writeInt32LE(-1, cell(0)), /position/],
      ['pos n', (s) => void s.writeInt32LE(n, cell(n - 1)), /position/],
      ['pos 0x7fffffff', (s) => void s.writeInt32LE(0x7fffffff, cell(n - 1)), /position/],
      ['duplicate pos', (s) => void s.writeInt32LE(1, cell(0)), /position/],
      ['v_trans 2', (s) => void s.writeUInt32LE(2, a), /V layout/],
      ['v_trans flipped', (s) => void s.writeUInt32LE(s.readUInt32LE(a) ^ 1, a), /transposed/],
      ['layers 0', (s) => void s.writeUInt32LE(0, a + 4), /layers/],
      ['layers +1', (s) => void s.writeUInt32LE(s.readUInt32LE(a + 4) + 1, a + 4), /layers/],
      ['layers 0xffffffff', (s) => void s.writeUInt32LE(0xffffffff, a + 4), /layers/],
      ['key type', (s) => void s.writeInt32LE(s.readInt32LE(a + 8) === 1 ? 0 : 1, a + 8), /type/],
      ['key type 0x7fffffff', (s) => void s.writeInt32LE(0x7fffffff, a + 8), /type/],
      ['key row +1', (s) => void s.writeBigUInt64LE(s.readBigUInt64LE(a + 12) + 1n, a + 12), /row/],
      ['key row 2^64-1', (s) => void s.writeBigUInt64LE(0xffffffffffffffffn, a + 12), /row/],
      ['truncated by 1', (s) => s.subarray(0, s.length - 1), /ends|need/],
      ['truncated to 16', (s) => s.subarray(0, 16), /ends|need/],
      ['1 byte appended', (s) => Buffer.concat([s, Buffer.from([0])]), /follow/],
    ];
    const failures: string[] = [];
    for (const [name, edit, pattern] of cases) {
      const path = write(`state-${name.replace(/\W+/g, '_')}.session`, withState(edit));
      const error = await target.load(path).then(
        () => undefined,
        (e: unknown) => e as Error & { code?: string },
      );
      if (!(error instanceof SessionFileError) || error.code !== 'ERR_HUOZI_SESSION_FILE' || !pattern.test(error.message)) {
        failures.push(`${name}: ${error ? `${error.name} ${error.code}: ${error.message}` : 'loaded'}`);
      }
      expect(target.history).toEqual([{ role: 'system', content: 'untouched' }]);
    }
    expect(failures).toEqual([]);
  });

  it('the header is checked too: token lists, messages and committed tokens', async () => {
    const target = new ChatSession(targetCtx, { systemPrompt: 'untouched' });
    const cases: [string, (h: Record<string, unknown>) => void, RegExp][] = [
      ['one token fewer', (h) => void (h.tokens as number[]).pop(), /token/],
      ['one token more', (h) => void (h.tokens as number[]).push(1), /token/],
      ['token out of vocabulary', (h) => void ((h.tokens as number[])[1] = model.vocabularySize), /token/],
      ['token -1', (h) => void ((h.tokens as number[])[1] = -1), /token/],
      ['tokens not an array', (h) => void (h.tokens = 'abc'), /token/],
      ['message role', (h) => void ((h.messages as { role: string }[])[1].role = 'admin'), /role|message/],
      ['message content', (h) => void ((h.messages as { content: unknown }[])[1].content = 42), /content|message/],
      ['messages not an array', (h) => void (h.messages = {}), /message/],
      ['committed token out of vocabulary', (h) => void ((h.committed as { tokens: number[] }).tokens[0] = 1e9), /committed/],
      ['committed tokens unrelated', (h) => void ((h.committed as { tokens: number[] }).tokens = [5, 6, 7]), /committed/],
      ['committed text not a string', (h) => void ((h.committed as { text: unknown }).text = 7), /committed/],
      ['unknown field', (h) => void (h.extra = 1), /extra/],
    ];
    const failures: string[] = [];
    for (const [name, edit, pattern] of cases) {
      const path = write(`header-${name.replace(/\W+/g, '_')}.session`, withHeader(edit));
      const error = await target.load(path).then(
        () => undefined,
        (e: unknown) => e as Error & { code?: string },
      );
      if (!(error instanceof SessionFileError) || !pattern.test(error.message)) {
        failures.push(`${name}: ${error ? `${error.name} ${error.code}: ${error.message}` : 'loaded'}`);
      }
      expect(target.history).toEqual([{ role: 'system', content: 'untouched' }]);
    }
    expect(failures).toEqual([]);
  });
});

describe('session file: whole-file checksum and failed loads (issue #14 item 9)', () => {
  it('an edit anywhere in the file (header included) fails the checksum', async () => {
    const target = new ChatSession(targetCtx, { systemPrompt: 'untouched' });
    // Same length, one committed token changed, checksums left as they were: an accident the hash must catch.
    const text = saved.toString('latin1');
    const committedAt = text.indexOf('"committed":{');
    const digit = text.indexOf('"tokens":[', committedAt) + '"tokens":['.length;
    const edited = Buffer.from(saved);
    edited[digit] = edited[digit] === 0x31 ? 0x32 : 0x31;
    await expectSessionFileError(target, write('edited-committed.session', edited), /checksum/);
    const message = Buffer.from(saved);
    message[saved.indexOf(Buffer.from('"role":"user"')) + '"role":"'.length] = 0x55; // "user" -> "User"
    await expectSessionFileError(target, write('edited-role.session', message), /checksum/);
    const flipped = Buffer.from(saved);
    flipped[MAGIC.length + 8 + 5] ^= 0x01;
    await expectSessionFileError(target, write('flipped-header.session', flipped));
    expect(target.history).toEqual([{ role: 'system', content: 'untouched' }]);
  });

  it('a failed load leaves the session and its context exactly as they were', async () => {
    await targetCtx.clear();
    await controlCtx.clear();
    const target = new ChatSession(targetCtx, { systemPrompt: SYSTEM });
    const control = new ChatSession(controlCtx, { systemPrompt: SYSTEM });
    await target.prompt('你好', { temperature: 0, maxTokens: 6 });
    await control.prompt('你好', { temperature: 0, maxTokens: 6 });
    const history = target.history;
    const tokens = targetCtx.tokens;
    expect(tokens.length).toBeGreaterThan(0);

    const bad = [
      // Before issue #14 these replaced the history, and llama.cpp had already emptied the context.
      write('fail-tokens.session', withHeader((h) => void (h.tokens as number[]).pop())),
      write('fail-layers.session', withState((s) => void s.writeUInt32LE(s.readUInt32LE(afterCells(nTokens) + 4) + 1, afterCells(nTokens) + 4))),
      write('fail-row.session', withState((s) => void s.writeBigUInt64LE(s.readBigUInt64LE(afterCells(nTokens) + 12) + 1n, afterCells(nTokens) + 12))),
    ];
    for (const path of bad) {
      await expectSessionFileError(target, path);
      expect(target.history).toEqual(history);
      expect(targetCtx.tokens).toEqual(tokens);
    }
    // The context still holds its cache: the next turn reuses it and answers as a session that never saw a bad file.
    const a = await target.prompt('请背诵《春晓》', { temperature: 0, maxTokens: 8 });
    const b = await control.prompt('请背诵《春晓》', { temperature: 0, maxTokens: 8 });
    expect(a.generation.reusedTokens).toBe(b.generation.reusedTokens);
    expect(a.generation.reusedTokens).toBeGreaterThan(0);
    expect(a.generation.tokens).toEqual(b.generation.tokens);
  });

  it('a good file still loads, and the next turn reuses its cache', async () => {
    const restored = new ChatSession(targetCtx);
    await restored.load(join(dir, 'base.session'));
    expect(restored.history).toEqual(parts.header.messages);
    expect(targetCtx.tokens).toEqual(parts.header.tokens);
    const answer = await restored.prompt('谢谢', { temperature: 0, maxTokens: 4 });
    expect(answer.generation.reusedTokens).toBeGreaterThanOrEqual(nTokens - 1);
  });

  it('reads format version 1 files and refuses unknown versions by name', async () => {
    const { stateBytes: _drop, ...header } = parts.header;
    const v1 = write('v1.session', build({ version: 1, header: { ...header, version: 1 }, state: parts.state }));
    const restored = new ChatSession(targetCtx);
    await restored.load(v1);
    expect(restored.history).toEqual(parts.header.messages);
    expect(targetCtx.tokens).toEqual(parts.header.tokens);
    const v3 = Buffer.from(saved);
    v3.writeUInt32LE(3, MAGIC.length);
    const target = new ChatSession(targetCtx, { systemPrompt: 'untouched' });
    await expectSessionFileError(target, write('v3.session', v3), /format version 3.*newer/);
    // A version-1 file's state checksum covered the state only; its header is still validated in full.
    const forged = build({ version: 1, header: { ...header, version: 1, messages: [{ role: 'root', content: '' }] }, state: parts.state });
    await expectSessionFileError(target, write('v1-forged.session', forged), /message 0/);
    expect(target.history).toEqual([{ role: 'system', content: 'untouched' }]);
  });

  it('refuses what is not a regular file, without blocking on a FIFO', async () => {
    const target = new ChatSession(targetCtx, { systemPrompt: 'untouched' });
    await expectSessionFileError(target, dir, /not a regular file/);
    await expectSessionFileError(target, '/dev/null', /not a regular file/);
    await expect(target.load(join(dir, 'missing.session'))).rejects.toMatchObject({ code: 'ENOENT' });
    const fifo = join(dir, 'fifo.session');
    expect(spawnSync('mkfifo', [fifo]).status).toBe(0);
    // In a child, with a timeout: a load that opened the FIFO for reading would wait for a writer forever.
    const r = loadInChild(fifo, 60_000);
    expect(r.signal, 'the load blocked on the FIFO').toBeNull();
    expect(r.out?.name).toBe('SessionFileError');
    expect(r.out?.message).toMatch(/not a regular file/);
  });
});

describe('session file: save() (issue #14 item 9)', () => {
  const tmpLeft = (d: string) => readdirSync(d).filter((f) => f.endsWith('.tmp'));

  it('creates new files 0600 and keeps the mode of an existing one', async () => {
    const d = mkdtempSync(join(tmpdir(), 'huozi-session-save-'));
    const session = new ChatSession(saveCtx, { systemPrompt: SYSTEM });
    const fresh = join(d, 'new.session');
    await session.save(fresh);
    expect(statSync(fresh).mode & 0o777).toBe(0o600);
    for (const mode of [0o640, 0o600, 0o400, 0o604]) {
      const path = join(d, `existing-${mode.toString(8)}.session`);
      writeFileSync(path, 'old');
      chmodSync(path, mode);
      await session.save(path);
      expect(statSync(path).mode & 0o777).toBe(mode);
      expect(readFileSync(path).subarray(0, MAGIC.length).toString('latin1')).toBe(MAGIC);
    }
    expect(tmpLeft(d)).toEqual([]);
  });

  it('writes through a symbolic link to its target, atomically, and keeps the link', async () => {
    const d = mkdtempSync(join(tmpdir(), 'huozi-session-link-'));
    mkdirSync(join(d, 'real'));
    const target = join(d, 'real', 'chat.session');
    writeFileSync(target, 'old');
    chmodSync(target, 0o640);
    const link = join(d, 'link.session');
    symlinkSync(join('real', 'chat.session'), link);
    const chain = join(d, 'chain.session');
    symlinkSync('link.session', chain);
    const session = new ChatSession(saveCtx, { systemPrompt: SYSTEM });
    await session.save(chain);
    expect(lstatSync(link).isSymbolicLink()).toBe(true);
    expect(lstatSync(chain).isSymbolicLink()).toBe(true);
    expect(realpathSync(chain)).toBe(realpathSync(target));
    expect(statSync(target).mode & 0o777).toBe(0o640);
    const restored = new ChatSession(targetCtx);
    await restored.load(chain);
    expect(restored.history).toEqual(session.history);
    expect(tmpLeft(d)).toEqual([]);
    expect(tmpLeft(join(d, 'real'))).toEqual([]);

    const dangling = join(d, 'dangling.session');
    symlinkSync(join(d, 'nowhere', 'x.session'), dangling);
    const error = await session.save(dangling).then(() => undefined, (e: unknown) => e);
    expect(error).toBeInstanceOf(SessionFileError);
    expect((error as Error).message).toMatch(/symbolic link/);
    expect(lstatSync(dangling).isSymbolicLink()).toBe(true);
  });

  it('refuses a target that exists and is not a regular file', async () => {
    const d = mkdtempSync(join(tmpdir(), 'huozi-session-special-'));
    const session = new ChatSession(saveCtx, { systemPrompt: SYSTEM });
    const sub = join(d, 'a-directory');
    mkdirSync(sub);
    const fifo = join(d, 'fifo');
    expect(spawnSync('mkfifo', [fifo]).status).toBe(0);
    for (const path of [sub, fifo]) {
      const error = await session.save(path).then(() => undefined, (e: unknown) => e);
      expect(error, path).toBeInstanceOf(SessionFileError);
      expect((error as Error).message).toMatch(/not a regular file/);
    }
    expect(lstatSync(fifo).isFIFO()).toBe(true);
    expect(statSync(sub).isDirectory()).toBe(true);
    expect(tmpLeft(d)).toEqual([]);
    expect(existsSync(join(d, 'a-directory', 'chat.session'))).toBe(false);
  });
});
