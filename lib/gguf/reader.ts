// A GGUF reader that trusts nothing: every count, length and offset is checked against caps and against the
// file's size with 64-bit (BigInt) arithmetic before it is used, so a corrupt or hostile file ends in a
// GgufError that says where and what, never in a huge allocation or a crash. It reads the header,
// metadata and tensor infos (the data section only by bounds).
import { open } from 'node:fs/promises';
import { GgufError } from '../errors.js';
import { GGML_TYPE_COUNT, GgufValueType, ggmlType, GGUF_SCALAR_SIZE, tensorBytes } from './types.js';

/** A metadata value: 64-bit integers are `bigint`, other numbers `number`. */
export type GgufScalar = number | bigint | boolean | string;
/** A metadata value or an array of them. */
export type GgufValue = GgufScalar | GgufScalar[];

/** One metadata key and its value. */
export interface GgufMetadataEntry {
  key: string;
  type: GgufValueType;
  /** For arrays: the element type. */
  arrayType?: GgufValueType;
  value: GgufValue;
  /** Byte offset of the entry in the file. */
  offset: number;
}

/** One tensor's info (not its data). */
export interface GgufTensorInfo {
  name: string;
  /** Elements along each dimension (ggml's ne), innermost first. */
  dims: bigint[];
  type: number;
  /** Offset of the data from the start of the data section. */
  offset: bigint;
  bytes: bigint;
  elements: bigint;
  /** Byte offset of this tensor's info in the file. */
  infoOffset: number;
}

/** A GGUF file's header, metadata and tensor infos, as {@link readGguf} and {@link parseGguf} return them. */
export interface GgufFile {
  version: number;
  metadata: Map<string, GgufMetadataEntry>;
  tensors: GgufTensorInfo[];
  alignment: number;
  /** Where the data section starts. */
  dataOffset: bigint;
  /** Bytes of tensor data, padding included. */
  dataBytes: bigint;
  fileSize: bigint;
}

export interface ReadGgufOptions {
  /** Largest header (metadata and tensor infos) read into memory. Default: 256 MiB. */
  maxHeaderBytes?: number;
}

/** Limits beyond any real model, that keep a hostile file from asking for absurd work. */
export const GGUF_LIMITS = {
  maxTensors: 1 << 20,
  maxKeys: 1 << 20,
  maxArrayElements: 1 << 26,
  maxStringBytes: 1 << 26,
  maxKeyBytes: 65_535,
  maxNameBytes: 63, // GGML_MAX_NAME - 1
  maxDims: 4, // GGML_MAX_DIMS
} as const;

const MAGIC = 0x46554747; // "GGUF" little-endian
const INT64_MAX = (1n << 63n) - 1n;

class NeedMore extends Error {}

class Cursor {
  pos = 0;
  constructor(
    readonly buf: Buffer,
    readonly complete: boolean, // the buffer holds the whole file
  ) {}

  need(n: number | bigint, what: string): number {
    const end = BigInt(this.pos) + BigInt(n);
    if (end > BigInt(this.buf.length)) {
      if (!this.complete) throw new NeedMore();
      throw new GgufError(`the file ends inside ${what}`, this.pos);
    }
    return Number(n);
  }
  u8(what: string): number {
    this.need(1, what);
    return this.buf.readUInt8(this.pos++);
  }
  u32(what: string): number {
    this.need(4, what);
    const v = this.buf.readUInt32LE(this.pos);
    this.pos += 4;
    return v;
  }
  u64(what: string): bigint {
    this.need(8, what);
    const v = this.buf.readBigUInt64LE(this.pos);
    this.pos += 8;
    return v;
  }
  i64(what: string): bigint {
    this.need(8, what);
    const v = this.buf.readBigInt64LE(this.pos);
    this.pos += 8;
    return v;
  }
  string(what: string, max: number): string {
    return this.rawString(what, max).toString('utf8');
  }
  /** The raw bytes of a string (to check for NUL bytes and invalid UTF-8 where it matters). */
  rawString(what: string, max: number): Buffer {
    const at = this.pos;
    const len = this.u64(`the length of ${what}`);
    if (len > BigInt(max)) throw new GgufError(`${what} is ${len} bytes long, more than the limit of ${max}`, at);
    const n = this.need(len, what);
    const bytes = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return bytes;
  }
}

function readScalar(c: Cursor, type: GgufValueType, what: string): GgufScalar {
  const size = GGUF_SCALAR_SIZE[type];
  if (size !== undefined) c.need(size, what);
  const b = c.buf;
  const p = c.pos;
  switch (type) {
    case GgufValueType.UINT8: c.pos += 1; return b.readUInt8(p);
    case GgufValueType.INT8: c.pos += 1; return b.readInt8(p);
    case GgufValueType.UINT16: c.pos += 2; return b.readUInt16LE(p);
    case GgufValueType.INT16: c.pos += 2; return b.readInt16LE(p);
    case GgufValueType.UINT32: c.pos += 4; return b.readUInt32LE(p);
    case GgufValueType.INT32: c.pos += 4; return b.readInt32LE(p);
    case GgufValueType.FLOAT32: c.pos += 4; return b.readFloatLE(p);
    case GgufValueType.BOOL: {
      c.pos += 1;
      const v = b.readUInt8(p);
      if (v > 1) throw new GgufError(`${what} is a bool with the value ${v}`, p);
      return v === 1;
    }
    case GgufValueType.UINT64: c.pos += 8; return b.readBigUInt64LE(p);
    case GgufValueType.INT64: c.pos += 8; return b.readBigInt64LE(p);
    case GgufValueType.FLOAT64: c.pos += 8; return b.readDoubleLE(p);
    case GgufValueType.STRING: return c.string(what, GGUF_LIMITS.maxStringBytes);
    default: throw new GgufError(`${what} has the unknown type ${type}`, p);
  }
}

function parse(c: Cursor, fileSize: bigint): GgufFile {
  const magic = c.u32('the magic number');
  if (magic !== MAGIC) {
    throw new GgufError(`not a GGUF file (magic ${magic.toString(16).padStart(8, '0')}, expected "GGUF")`, 0);
  }
  const version = c.u32('the version');
  if (version === 1) throw new GgufError('GGUF version 1 is not supported (llama.cpp reads versions 2 and 3)', 4);
  if (version !== 2 && version !== 3) {
    // A big-endian file reads its version 2 or 3 as 0x02000000 or 0x03000000.
    const swapped = ((version & 0xff) << 24) | ((version >>> 8 & 0xff) << 16) | ((version >>> 16 & 0xff) << 8) | (version >>> 24);
    if (swapped === 2 || swapped === 3) {
      throw new GgufError('this is a big-endian GGUF file; llama.cpp (and this package) read little-endian files only', 4);
    }
    throw new GgufError(`unsupported GGUF version ${version}`, 4);
  }
  const tensorCount = c.u64('the tensor count');
  if (tensorCount > BigInt(GGUF_LIMITS.maxTensors)) {
    throw new GgufError(`the file claims ${tensorCount} tensors, more than the limit of ${GGUF_LIMITS.maxTensors}`, 8);
  }
  const kvCount = c.u64('the metadata count');
  if (kvCount > BigInt(GGUF_LIMITS.maxKeys)) {
    throw new GgufError(`the file claims ${kvCount} metadata entries, more than the limit of ${GGUF_LIMITS.maxKeys}`, 16);
  }

  const metadata = new Map<string, GgufMetadataEntry>();
  for (let i = 0; i < Number(kvCount); i++) {
    const offset = c.pos;
    const key = c.string(`the key of metadata entry ${i}`, GGUF_LIMITS.maxKeyBytes);
    if (key.length === 0) throw new GgufError(`metadata entry ${i} has an empty key`, offset);
    if (metadata.has(key)) throw new GgufError(`the metadata key "${key}" appears twice`, offset);
    const type = c.u32(`the type of "${key}"`) as GgufValueType;
    let value: GgufValue;
    let arrayType: GgufValueType | undefined;
    if (type === GgufValueType.ARRAY) {
      const at = c.pos;
      arrayType = c.u32(`the element type of "${key}"`) as GgufValueType;
      if (arrayType === GgufValueType.ARRAY) throw new GgufError(`"${key}" is an array of arrays, which GGUF readers reject`, at);
      if (!(arrayType in GGUF_SCALAR_SIZE) && arrayType !== GgufValueType.STRING) {
        throw new GgufError(`"${key}" is an array of the unknown type ${arrayType}`, at);
      }
      const count = c.u64(`the length of "${key}"`);
      if (count > BigInt(GGUF_LIMITS.maxArrayElements)) {
        throw new GgufError(`"${key}" claims ${count} elements, more than the limit of ${GGUF_LIMITS.maxArrayElements}`, at + 4);
      }
      const elemSize = GGUF_SCALAR_SIZE[arrayType] ?? 8; // a string is at least its 8-byte length
      c.need(count * BigInt(elemSize), `the elements of "${key}"`);
      const items: GgufScalar[] = new Array(Number(count));
      for (let j = 0; j < items.length; j++) items[j] = readScalar(c, arrayType, `"${key}"[${j}]`);
      value = items;
    } else {
      value = readScalar(c, type, `the value of "${key}"`);
    }
    metadata.set(key, { key, type, arrayType, value, offset });
  }

  let alignment = 32;
  const alignEntry = metadata.get('general.alignment');
  if (alignEntry) {
    const a = alignEntry.value;
    if (alignEntry.type !== GgufValueType.UINT32) {
      throw new GgufError('general.alignment must be a u32', alignEntry.offset);
    }
    if (typeof a !== 'number' || a === 0 || (a & (a - 1)) !== 0) {
      throw new GgufError(`general.alignment is ${String(a)}; it must be a power of two`, alignEntry.offset);
    }
    alignment = a;
  }

  const tensors: GgufTensorInfo[] = [];
  const names = new Set<string>();
  for (let i = 0; i < Number(tensorCount); i++) {
    const infoOffset = c.pos;
    const rawName = c.rawString(`the name of tensor ${i}`, 1 << 16);
    const name = rawName.toString('utf8');
    if (rawName.length > GGUF_LIMITS.maxNameBytes) {
      throw new GgufError(`tensor ${i}'s name is ${rawName.length} bytes, more than ggml's ${GGUF_LIMITS.maxNameBytes}`, infoOffset);
    }
    if (rawName.includes(0)) throw new GgufError(`tensor ${i}'s name contains a NUL byte`, infoOffset);
    if (names.has(name)) throw new GgufError(`the tensor name "${name}" appears twice`, infoOffset);
    names.add(name);
    const nDims = c.u32(`the dimension count of "${name}"`);
    if (nDims > GGUF_LIMITS.maxDims) throw new GgufError(`"${name}" has ${nDims} dimensions; ggml allows at most 4`, c.pos - 4);
    const dims: bigint[] = [];
    let elements = 1n;
    for (let d = 0; d < nDims; d++) {
      const ne = c.i64(`dimension ${d} of "${name}"`);
      if (ne < 0n) throw new GgufError(`"${name}" has a negative dimension (${ne})`, c.pos - 8);
      dims.push(ne);
      elements *= ne;
      if (elements > INT64_MAX) throw new GgufError(`"${name}" has more elements than fit in 64 bits`, c.pos - 8);
    }
    const typeAt = c.pos;
    const type = c.u32(`the type of "${name}"`);
    const gt = ggmlType(type);
    if (!gt) {
      throw new GgufError(`"${name}" has the type id ${type}, which is ${type < GGML_TYPE_COUNT ? 'removed from' : 'unknown to'} ggml`, typeAt);
    }
    if (dims.length > 0 && dims[0] % BigInt(gt.blockSize) !== 0n) {
      throw new GgufError(`"${name}" has ${dims[0]} elements per row, not a multiple of ${gt.name}'s block of ${gt.blockSize}`, typeAt);
    }
    const bytes = tensorBytes(gt, elements);
    if (bytes === undefined || bytes > INT64_MAX) throw new GgufError(`"${name}" is too large`, typeAt);
    const offset = c.u64(`the data offset of "${name}"`);
    tensors.push({ name, dims, type, offset, bytes, elements, infoOffset });
  }

  // The data section starts at the next multiple of the alignment; llama.cpp expects the tensors in order,
  // each at the padded end of the one before.
  const pad = (n: bigint) => ((n + BigInt(alignment) - 1n) / BigInt(alignment)) * BigInt(alignment);
  const dataOffset = pad(BigInt(c.pos));
  let expected = 0n;
  for (const t of tensors) {
    if (t.offset !== expected) {
      throw new GgufError(
        `"${t.name}" has its data at offset ${t.offset}, expected ${expected} (tensors must follow each other, each aligned to ${alignment})`,
        t.infoOffset,
      );
    }
    expected = pad(t.offset + t.bytes);
  }
  const dataBytes = expected;
  const lastEnd = tensors.length ? tensors[tensors.length - 1].offset + tensors[tensors.length - 1].bytes : 0n;
  if (dataOffset + lastEnd > fileSize) {
    throw new GgufError(
      `the tensor data needs ${dataOffset + lastEnd} bytes but the file has ${fileSize} (truncated?)`,
      Number(dataOffset > BigInt(Number.MAX_SAFE_INTEGER) ? 0n : dataOffset),
    );
  }
  return { version, metadata, tensors, alignment, dataOffset, dataBytes, fileSize };
}

/** Parses a GGUF file already in memory. Throws {@link GgufError} (with the byte offset) for anything malformed. */
export function parseGguf(buf: Buffer): GgufFile {
  return parse(new Cursor(buf, true), BigInt(buf.length));
}

/**
 * Reads the header, metadata and tensor infos of a GGUF file and checks them (counts, lengths, offsets, types,
 * against the file's size and {@link GGUF_LIMITS}). Throws {@link GgufError} (with the byte offset) for anything
 * malformed; Node's own errors (`ENOENT`, ...) for a file that cannot be read.
 */
export async function readGguf(path: string, options: ReadGgufOptions = {}): Promise<GgufFile> {
  const maxHeader = options.maxHeaderBytes ?? 256 * 2 ** 20;
  const fh = await open(path, 'r');
  try {
    const size = BigInt((await fh.stat()).size);
    let want = Math.min(Number(size < BigInt(maxHeader) ? size : BigInt(maxHeader)), 1 << 20);
    for (;;) {
      const buf = Buffer.allocUnsafe(want);
      const { bytesRead } = await fh.read(buf, 0, want, 0);
      const complete = BigInt(bytesRead) >= size;
      try {
        return parse(new Cursor(buf.subarray(0, bytesRead), complete), size);
      } catch (error) {
        if (!(error instanceof NeedMore)) throw error;
        if (want >= maxHeader) {
          throw new GgufError(`the header (metadata and tensor infos) is larger than ${maxHeader} bytes`, want);
        }
        want = Math.min(want * 4, maxHeader, Number(size));
      }
    }
  } finally {
    await fh.close();
  }
}
