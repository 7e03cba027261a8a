// Fuzz target "session": chat session files (ChatSession.save/load, issue #14). setup saves a real session of
// the demo model (a recited poem, so the file has committed tokens); each case mutates it: every count and
// size of the KV state set to boundary values, byte flips in the header and the state, header fields edited,
// removed or added, truncations and appended bytes, with the checksums recomputed in most cases so that the
// validation behind them is what gets exercised. runCase loads the file into a fresh ChatSession on a small
// context that already holds a conversation; a rejected file must leave that conversation and the context's
// tokens exactly as they were, a loaded one must answer two tokens.
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ChatSession, ContextOverflowError, loadModel, SessionFileError } from '../../../dist/index.js';
import { prng } from '../mutate.mjs';
import { clean, unexpected } from '../outcome.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const DEMO = join(root, 'models', 'huozi-tiny-q4_0.gguf');
const MAGIC = 'HUOZI-CHAT-SESSION';
const CONTEXT = { contextSize: 256, batchSize: 256, threads: 1 };
const SYSTEM = '你是一个智能助手';

export const title = 'chat session files: KV-state counts at boundaries, header edits, flips and truncations, checksums recomputed';

export const description = `Each case is a real saved chat session of the demo model (format version 2: header, KV
state, SHA-256 of the whole file) with one to three seeded mutations: a count or size of the KV state (stream
count, cell count, a cell's position, sequence count or sequence id, the V layout flag, the layer count, a
layer's key/value type, row size, element size or width) set to a boundary value (0, 1, n - 1, n + 1,
2^15, 2^16 - 1, 2^31 - 1, 2^31, 2^32 - 1, 2^64 - 1 ...), bytes flipped in the state or the header, a header
field edited (tokens, messages, committed tokens and text, model fingerprint, template, state length,
version), removed or added, the file truncated or extended, the version or header length in the prefix
changed. In 85% of the cases the checksum (and the header's state length) is recomputed, so the validation
behind it is what decides. Each file is loaded into a fresh \`ChatSession\` on a 256-token context that already
holds a conversation; a loaded file must then answer two tokens (or refuse the turn with \`ContextOverflowError\` when an
edited system prompt alone overflows the context), a rejected one must leave the session's
history and the context's tokens as they were.`;

export const classes = {
  'rejected: SessionFileError': '`SessionFileError` (`ERR_HUOZI_SESSION_FILE`); the session and its context unchanged',
  loaded: 'the file loads (a mutation that kept it valid, e.g. a message text edit) and the session answers',
  'loaded, turn too long: ContextOverflowError':
    "the file loads, but an (edited) message of its history is longer than the context holds, so the next turn is refused with `ContextOverflowError`, as for any session with that history",
};

const sha256 = (...chunks) => {
  const h = createHash('sha256');
  for (const c of chunks) h.update(c);
  return h.digest();
};

function parse(bytes) {
  const length = bytes.readUInt32LE(MAGIC.length + 4);
  const start = MAGIC.length + 8;
  return {
    header: JSON.parse(bytes.toString('utf8', start, start + length)),
    state: Buffer.from(bytes.subarray(start + length, bytes.length - 32)),
  };
}

/** A version-2 file; `json` (bytes) overrides the header's encoding. */
function build(header, state, json = Buffer.from(JSON.stringify(header), 'utf8'), version = 2) {
  const prefix = Buffer.alloc(8);
  prefix.writeUInt32LE(version, 0);
  prefix.writeUInt32LE(json.length, 4);
  const body = Buffer.concat([Buffer.from(MAGIC, 'latin1'), prefix, json, state]);
  return Buffer.concat([body, sha256(body)]);
}

/**
 * The fields of a plain-KV-cache sequence state (llama-kv-cache.cpp state_write): { name, offset, size } for
 * every count and size, found by walking the base state.
 */
function stateFields(state, nTokens) {
  const fields = [
    { name: 'magic', offset: 0, size: 4 },
    { name: 'seq id', offset: 4, size: 4 },
    { name: 'n_stream', offset: 8, size: 4 },
    { name: 'cell count', offset: 12, size: 4 },
  ];
  const cells = state.readUInt32LE(12);
  for (const i of [0, 1, cells - 1]) {
    fields.push({ name: `cell ${i} pos`, offset: 16 + 12 * i, size: 4 });
    fields.push({ name: `cell ${i} n_seq_id`, offset: 20 + 12 * i, size: 4 });
    fields.push({ name: `cell ${i} seq_id`, offset: 24 + 12 * i, size: 4 });
  }
  let at = 16 + 12 * cells;
  const vTrans = state.readUInt32LE(at);
  fields.push({ name: 'v_trans', offset: at, size: 4 });
  const nLayer = state.readUInt32LE(at + 4);
  fields.push({ name: 'n_layer', offset: at + 4, size: 4 });
  at += 8;
  for (let l = 0; l < nLayer; l++) {
    fields.push({ name: `layer ${l} k type`, offset: at, size: 4 }, { name: `layer ${l} k row`, offset: at + 4, size: 8 });
    at += 12 + Number(state.readBigUInt64LE(at + 4)) * cells;
  }
  for (let l = 0; l < nLayer && at < state.length; l++) {
    fields.push({ name: `layer ${l} v type`, offset: at, size: 4 });
    if (!vTrans) {
      fields.push({ name: `layer ${l} v row`, offset: at + 4, size: 8 });
      at += 12 + Number(state.readBigUInt64LE(at + 4)) * cells;
    } else {
      fields.push({ name: `layer ${l} v element size`, offset: at + 4, size: 4 }, { name: `layer ${l} v width`, offset: at + 8, size: 4 });
      at += 12 + state.readUInt32LE(at + 4) * state.readUInt32LE(at + 8) * cells;
    }
  }
  if (at !== state.length) throw new Error(`session target: walked ${at} of ${state.length} state bytes (${nTokens} tokens)`);
  return fields;
}

export async function setup(workDir) {
  const model = await loadModel(DEMO);
  try {
    const context = await model.createContext(CONTEXT);
    const session = new ChatSession(context, { systemPrompt: SYSTEM });
    await session.prompt('请背诵《春晓》', { temperature: 0, maxTokens: 60 });
    const path = join(workDir, 'base.session');
    await session.save(path);
    const { header, state } = parse(readFileSync(path));
    return { workDir, header, state, fields: stateFields(state, header.tokens.length), vocab: model.vocabularySize };
  } finally {
    await model.dispose();
  }
}

const U32 = [0, 1, 2, 0xff, 0x100, 0x7fff, 0x8000, 0xffff, 0x10000, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff];
const U64 = [0n, 1n, 0xffffffffn, 0x100000000n, 1n << 62n, 1n << 63n, (1n << 64n) - 1n];

export function makeCase(state, seed, index) {
  const rand = prng(seed ^ 0x2c1b3c6d);
  const pick = (n) => Math.floor(rand() * n);
  const header = structuredClone(state.header);
  let st = Buffer.from(state.state);
  const n = header.tokens.length;
  const kinds = [];
  let json; // raw header bytes, when a mutation corrupts the JSON itself
  let tail = null; // a whole-file mutation applied after the checksum
  const recompute = rand() < 0.85;
  let version = 2;

  const mutations = 1 + pick(3);
  for (let m = 0; m < mutations; m++) {
    const r = rand();
    if (r < 0.4) {
      const f = state.fields[pick(state.fields.length)];
      if (f.offset + f.size > st.length) continue;
      if (f.size === 8) {
        const old = st.readBigUInt64LE(f.offset);
        const v = rand() < 0.3 ? BigInt.asUintN(64, old + BigInt(pick(3) - 1 || 1)) : U64[pick(U64.length)];
        st.writeBigUInt64LE(v, f.offset);
        kinds.push(`${f.name} = ${v}`);
      } else {
        const old = st.readUInt32LE(f.offset);
        const around = [n - 1, n, n + 1, old - 1, old + 1, 255, 256, 257].map((x) => x >>> 0);
        const v = rand() < 0.4 ? around[pick(around.length)] : U32[pick(U32.length)];
        st.writeUInt32LE(v >>> 0, f.offset);
        kinds.push(`${f.name} = ${v >>> 0}`);
      }
    } else if (r < 0.55) {
      const flips = 1 + pick(8);
      for (let i = 0; i < flips; i++) st[pick(st.length)] ^= 1 << pick(8);
      kinds.push(`${flips} bit flips in the state`);
    } else if (r < 0.6) {
      const at = pick(st.length + 1);
      st = rand() < 0.5 ? st.subarray(0, at) : Buffer.concat([st, Buffer.alloc(1 + pick(64), pick(256))]);
      kinds.push(`state ${st.length < state.state.length ? 'truncated' : 'extended'} to ${st.length}`);
    } else if (r < 0.85) {
      kinds.push(editHeader(header, rand, pick, state));
    } else if (r < 0.92) {
      const raw = Buffer.from(JSON.stringify(header), 'utf8');
      const flips = 1 + pick(4);
      for (let i = 0; i < flips; i++) raw[pick(raw.length)] ^= 1 << pick(8);
      json = raw;
      kinds.push(`${flips} bit flips in the header`);
    } else if (r < 0.95) {
      version = [0, 1, 3, 0xffffffff][pick(4)];
      kinds.push(`version ${version}`);
    } else {
      const t = rand();
      tail = t < 0.4 ? { truncate: true } : t < 0.7 ? { append: 1 + pick(100) } : { headerLength: U32[pick(U32.length)] };
      kinds.push(tail.truncate ? 'file truncated' : tail.append ? `${tail.append} bytes appended to the file` : `header length ${tail.headerLength}`);
    }
  }
  if (recompute) header.stateBytes = st.length;
  else kinds.push('checksum not recomputed');
  let file = build(header, st, json, version);
  if (!recompute) {
    // The original checksum (and state length), whatever changed.
    const original = build(state.header, state.state);
    file = Buffer.concat([file.subarray(0, file.length - 32), original.subarray(original.length - 32)]);
  }
  if (tail?.truncate) file = file.subarray(0, pick(file.length));
  if (tail?.append) file = Buffer.concat([file, Buffer.alloc(tail.append, 0x41)]);
  if (tail?.headerLength !== undefined) file.writeUInt32LE(tail.headerLength, MAGIC.length + 4);
  const path = join(state.workDir, `case-${index % 2}.session`);
  writeFileSync(path, file);
  return { path, kinds };
}

function editHeader(h, rand, pick, state) {
  const vocab = state.vocab;
  const n = Array.isArray(h.tokens) ? h.tokens.length : 0;
  const choices = [
    () => (h.tokens.pop(), 'tokens: one fewer'),
    () => (h.tokens.push(pick(vocab)), 'tokens: one more'),
    () => ((h.tokens[pick(n)] = [-1, vocab, vocab + 1, 2 ** 31, 1.5, null, '1'][pick(7)]), 'tokens: a bad id'),
    () => ((h.tokens[pick(n)] = pick(vocab)), 'tokens: another valid id'),
    () => ((h.tokens = [[], {}, 'x', null, Array(n + 1000).fill(1)][pick(5)]), 'tokens: not a token list'),
    () => ((h.messages[pick(h.messages.length)].role = ['admin', 'System', '用户', '', 7][pick(5)]), 'messages: a bad role'),
    () => ((h.messages[pick(h.messages.length)].content = [null, 7, {}, ''][pick(4)]), 'messages: bad content'),
    () => ((h.messages[pick(h.messages.length)].content = 'x'.repeat(pick(100000))), 'messages: another text'),
    () => (h.messages.push({ role: 'user', content: 'hi', extra: 1 }), 'messages: an extra key'),
    () => ((h.messages = [null, {}, 'x'][pick(3)]), 'messages: not an array'),
    () => (h.committed ? (h.committed.tokens[pick(h.committed.tokens.length)] = pick(vocab + 10)) : (h.committed = { text: '', tokens: [] }), 'committed: a token'),
    () => (h.committed ? h.committed.tokens.pop() : 0, 'committed: one token fewer'),
    () => ((h.committed = [{}, { text: 1, tokens: [] }, 'x', { text: '', tokens: h.tokens, more: 1 }][pick(4)]), 'committed: malformed'),
    () => ((h.committed = null), 'committed: null'),
    () => ((h.model = { ...h.model, size: h.model.size + 1 }), 'model: another fingerprint'),
    () => ((h.template = ['chatml', 7, null][pick(3)]), 'template: another'),
    () => ((h.stateBytes = [0, -1, 2 ** 53, '1'][pick(4)]), 'stateBytes: wrong'),
    () => ((h.version = [1, 3, '2'][pick(3)]), 'header version: wrong'),
    () => ((h.magic = 'x'), 'header magic: wrong'),
    () => {
      const keys = Object.keys(h);
      delete h[keys[pick(keys.length)]];
      return 'a header field removed';
    },
    () => ((h.stateSha256 = '00'), 'a header field added'),
  ];
  // An earlier edit may have removed or replaced what a later one edits: then another edit is drawn.
  for (let tries = 0; tries < 8; tries++) {
    try {
      return choices[pick(choices.length)]();
    } catch {
      // drawn again
    }
  }
  return 'no header edit applied';
}

let shared;
async function worker() {
  shared ??= (async () => {
    const model = await loadModel(DEMO);
    const context = await model.createContext(CONTEXT);
    await new ChatSession(context, { systemPrompt: SYSTEM }).prompt('你好', { temperature: 0, maxTokens: 4 });
    return { model, context };
  })();
  return shared;
}

export async function runCase(path) {
  const { model, context } = await worker();
  const session = new ChatSession(context, { systemPrompt: 'untouched' });
  const tokensBefore = context.tokens;
  try {
    await session.load(path);
  } catch (error) {
    if (!(error instanceof SessionFileError) || error.code !== 'ERR_HUOZI_SESSION_FILE') return unexpected(error, 'load');
    const history = session.history;
    if (history.length !== 1 || history[0].content !== 'untouched') {
      return unexpected(new Error(`a rejected load changed the history: ${JSON.stringify(history).slice(0, 100)}`), 'load');
    }
    const after = context.tokens;
    if (after.length !== tokensBefore.length || after.some((t, i) => t !== tokensBefore[i])) {
      return unexpected(new Error(`a rejected load changed the context (${tokensBefore.length} -> ${after.length} tokens)`), 'load');
    }
    return clean('rejected: SessionFileError', error.message);
  }
  try {
    await session.prompt('继续', { temperature: 0, maxTokens: 2 });
    return clean('loaded');
  } catch (error) {
    if (error instanceof ContextOverflowError && session.history.some((m) => model.tokenize(m.content).length >= context.contextSize - 2)) {
      return clean('loaded, turn too long: ContextOverflowError', error.message);
    }
    return unexpected(error, 'run');
  }
}
