// Seeded mutations of a GGUF file: byte flips, field rewrites (metadata values, tensor dims/types/offsets)
// and splices, aimed mostly at the header where llama.cpp's parsing and validation live.
import { parseGguf } from '../../dist/gguf/reader.js';

export { prng } from '../../dist/gguf/synth.js';
import { prng } from '../../dist/gguf/synth.js';

const INTERESTING_U32 = [0, 1, 2, 3, 7, 8, 9, 31, 32, 63, 64, 255, 256, 511, 512, 513, 1023, 1024, 1025, 2049, 2050, 65535, 65536, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff];
const INTERESTING_U64 = [0n, 1n, 2n, 0x7fffffffn, 0xffffffffn, 0x100000000n, (1n << 62n), (1n << 63n) - 1n, 1n << 63n, (1n << 64n) - 1n, (1n << 64n) - 4n];

/** Byte positions worth rewriting: value fields of metadata entries and tensor infos. */
export function fieldsOf(base) {
  const file = parseGguf(base);
  const fields = [];
  for (const e of file.metadata.values()) {
    // key length (u64) at e.offset, then key, then type u32, then the value.
    const keyLen = Number(base.readBigUInt64LE(e.offset));
    const typeAt = e.offset + 8 + keyLen;
    fields.push({ at: e.offset, size: 8 }, { at: typeAt, size: 4 }, { at: typeAt + 4, size: 4 }, { at: typeAt + 4, size: 8 });
    if (e.type === 9) fields.push({ at: typeAt + 8, size: 8 }, { at: typeAt + 16, size: 4 });
  }
  for (const t of file.tensors) {
    const nameLen = Number(base.readBigUInt64LE(t.infoOffset));
    const nDimsAt = t.infoOffset + 8 + nameLen;
    fields.push({ at: t.infoOffset, size: 8 }, { at: nDimsAt, size: 4 });
    for (let d = 0; d < t.dims.length; d++) fields.push({ at: nDimsAt + 4 + 8 * d, size: 8 });
    const typeAt = nDimsAt + 4 + 8 * t.dims.length;
    fields.push({ at: typeAt, size: 4 }, { at: typeAt + 4, size: 8 });
  }
  fields.push({ at: 4, size: 4 }, { at: 8, size: 8 }, { at: 16, size: 8 });
  return { fields, headerEnd: Number(file.dataOffset) };
}

export function mutate(base, info, seed) {
  const rand = prng(seed);
  const pick = (n) => Math.floor(rand() * n);
  let buf = Buffer.from(base);
  const count = 1 + pick(3);
  const kinds = [];
  for (let i = 0; i < count; i++) {
    const r = rand();
    if (r < 0.4) {
      // Byte flips: mostly in the header.
      const flips = 1 + pick(8);
      for (let j = 0; j < flips; j++) {
        const at = rand() < 0.85 ? pick(info.headerEnd) : pick(buf.length);
        buf[at] ^= 1 << pick(8);
      }
      kinds.push('flip');
    } else if (r < 0.85) {
      const f = info.fields[pick(info.fields.length)];
      if (f.at + f.size > buf.length) continue;
      if (f.size === 4) buf.writeUInt32LE(INTERESTING_U32[pick(INTERESTING_U32.length)], f.at);
      else buf.writeBigUInt64LE(INTERESTING_U64[pick(INTERESTING_U64.length)], f.at);
      kinds.push('field');
    } else if (r < 0.93) {
      // Splice: copy a run of bytes over another place in the header.
      const len = 1 + pick(64);
      const from = pick(Math.max(1, info.headerEnd - len));
      const to = pick(Math.max(1, info.headerEnd - len));
      buf.copy(buf, to, from, from + len);
      kinds.push('splice');
    } else {
      // Truncate, or cut a piece out of the middle.
      const at = pick(buf.length);
      buf = rand() < 0.5 ? buf.subarray(0, at) : Buffer.concat([buf.subarray(0, at), buf.subarray(Math.min(buf.length, at + 1 + pick(4096)))]);
      kinds.push('cut');
    }
  }
  return { buf, kinds };
}

// Semantic mutations: a well-formed file with one meaningful change (a metadata value, a token, a tensor's
// type or shape, a missing or added key), re-encoded by our writer. These get past the structural checks
// and reach llama.cpp's hparams, vocabulary and kernels.
import { encodeGgufHeader } from '../../dist/gguf/writer.js';
import { GGML_TYPES } from '../../dist/gguf/types.js';

const STRINGS = ['', 'bogus', 'llama', 'gpt2', 'bert', 'rwkv', 'test', 'none', 'no_vocab', 't5', 'yarn', 'linear', 'longrope', 'mixtral', 'qwen2'];
const NUMBERS = [0, 1, 2, 3, -1, 7, 8, 9, 64, 65, 127, 128, 255, 256, 511, 512, 513, 1024, 1025, 2049, 2050, 65536, 1e9, 2 ** 31, 2 ** 32 - 1, 1e-5, 0.5, Number.NaN, Infinity];
const ADDED_KEYS = [
  ['llama.attention.causal', 7, false], ['llama.rope.scaling.type', 8, 'bogus'], ['llama.expert_group_count', 4, 4],
  ['llama.expert_group_used_count', 4, 0], ['split.count', 2, 3], ['llama.attention.key_length', 4, 32],
  ['llama.attention.value_length', 4, 48], ['llama.nextn_predict_layers', 4, 9], ['llama.pooling_type', 4, 9],
  ['tokenizer.ggml.add_eos_token', 7, true], ['tokenizer.ggml.eos_token_id', 4, 99999], ['llama.rope.dimension_count', 4, 3],
  ['llama.attention.head_count_kv', 4, 0], ['llama.attention.head_count_kv', 4, 3], ['llama.expert_used_count', 4, 0],
];

function fitValue(type, v) {
  if (type === 7) return Boolean(v);
  if (type === 8) return String(v);
  if (type === 10 || type === 11) return BigInt(Math.trunc(Number.isFinite(v) ? Math.abs(v) : 1));
  if (type === 6 || type === 12) return v;
  const x = Math.trunc(Number.isFinite(v) ? v : 0);
  const ranges = { 0: [0, 255], 1: [-128, 127], 2: [0, 65535], 3: [-32768, 32767], 4: [0, 2 ** 32 - 1], 5: [-(2 ** 31), 2 ** 31 - 1] };
  const [lo, hi] = ranges[type] ?? [0, 0];
  return Math.min(hi, Math.max(lo, x));
}

export function semanticMutate(base, seed) {
  const rand = prng(seed ^ 0x9e3779b9);
  const pick = (n) => Math.floor(rand() * n);
  const file = parseGguf(base);
  const meta = new Map([...file.metadata].map(([k, e]) => [k, e.type === 9 ? { type: 9, arrayType: e.arrayType, value: [...e.value] } : { type: e.type, value: e.value }]));
  const tensors = file.tensors.map((t) => ({
    name: t.name, dims: [...t.dims], type: t.type,
    bytes: base.subarray(Number(file.dataOffset + t.offset), Number(file.dataOffset + t.offset + t.bytes)),
  }));
  const keys = [...meta.keys()];
  const r = rand();
  let what;
  if (r < 0.3) {
    const k = keys[pick(keys.length)];
    const e = meta.get(k);
    if (e.type === 9) {
      if (e.value.length) {
        const i = pick(e.value.length);
        if (e.arrayType === 8) {
          const choices = [e.value[pick(e.value.length)], '', 'a\0b', '<0xZZ>', `${e.value[i]}\0`, e.value[i] + e.value[i]];
          e.value[i] = choices[pick(choices.length)];
        } else {
          e.value[i] = fitValue(e.arrayType, NUMBERS[pick(NUMBERS.length)]);
        }
        if (rand() < 0.2) e.value.length = pick(e.value.length + 1);
      }
    } else if (e.type === 8) {
      e.value = STRINGS[pick(STRINGS.length)];
    } else {
      e.value = fitValue(e.type, NUMBERS[pick(NUMBERS.length)]);
    }
    what = `value of ${k}`;
  } else if (r < 0.4) {
    const k = keys[pick(keys.length)];
    const e = meta.get(k);
    if (e.type !== 9) {
      const types = [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12];
      e.type = types[pick(types.length)];
      e.value = fitValue(e.type, typeof e.value === 'number' ? e.value : 1);
    } else {
      meta.set(k, { type: 4, value: 1 });
    }
    what = `type of ${k}`;
  } else if (r < 0.5) {
    const k = keys[pick(keys.length)];
    meta.delete(k);
    what = `removed ${k}`;
  } else if (r < 0.65) {
    const [k, type, value] = ADDED_KEYS[pick(ADDED_KEYS.length)];
    meta.set(k, { type, value });
    what = `set ${k}`;
  } else if (r < 0.85) {
    const t = tensors[pick(tensors.length)];
    const gt = GGML_TYPES[pick(GGML_TYPES.length)];
    if (Number(t.dims[0]) % gt.blockSize === 0) {
      t.type = gt.id;
      t.bytes = null;
    }
    what = `type of ${t.name}`;
  } else if (r < 0.95) {
    const t = tensors[pick(tensors.length)];
    const d = pick(t.dims.length);
    const choices = [1n, 2n, t.dims[d] * 2n, t.dims[d] / 2n || 1n, 256n, 32n];
    t.dims[d] = choices[pick(choices.length)];
    if (rand() < 0.2) t.dims.push(2n);
    t.bytes = null;
    what = `shape of ${t.name}`;
  } else {
    tensors.splice(pick(tensors.length), 1);
    what = 'removed a tensor';
  }
  let encoded;
  try {
    encoded = encodeWithData(meta, tensors);
  } catch {
    return { buf: Buffer.from(base), kinds: ['semantic-skipped'] };
  }
  return { buf: encoded, kinds: [`semantic: ${what}`] };
}

/**
 * A GGUF of `meta` and `tensors` ({ name, dims, type, bytes? }): each tensor's bytes when their size still fits,
 * else `fill(size, tensor)` (zeros by default). Throws what encodeGgufHeader throws for an unencodable header.
 */
export function encodeWithData(meta, tensors, fill = (size) => Buffer.alloc(size)) {
  const writerTensors = tensors.map((t) => ({ name: t.name, dims: t.dims, type: t.type, data: () => [] }));
  const { header, sizes, alignment } = encodeGgufHeader(meta, writerTensors);
  const parts = [header];
  tensors.forEach((t, i) => {
    const size = Number(sizes[i]);
    const data = t.bytes && t.bytes.length === size ? t.bytes : fill(size, t);
    parts.push(data, Buffer.alloc((alignment - (size % alignment)) % alignment));
  });
  return Buffer.concat(parts);
}
