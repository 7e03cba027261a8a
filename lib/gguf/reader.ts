// A GGUF reader that trusts nothing: every count, length and offset is checked against caps and against the
// file's size with 64-bit (BigInt) arithmetic before it is used, so a corrupt or hostile file ends in a
// GgufError that says where and what, never in a huge allocation or a crash. It reads the header,
// metadata and tensor infos (the data section only by bounds). Metadata arrays are not decoded while reading:
// each is checked (its bounds, every string's length, every bool) and kept as a GgufArray (element type, length,
// where its bytes are) that decodes only the elements asked for, so a file of huge arrays costs about its
// header's bytes while it is read, not a JS value per element. A path that is not a regular file (a FIFO, a
// device, a directory) is refused before it is opened for reading.
import { closeSync, constants, fstatSync, openSync, readSync, type Stats } from 'node:fs';
import { open, stat, type FileHandle } from 'node:fs/promises';
import { GgufError, NotRegularFileError } from '../errors.js';
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
  /**
   * The value. For an array: its elements as a JS array, decoded on first access (and kept only while something
   * else holds it). An array of more than {@link GGUF_LIMITS}.maxDecodedElements elements throws a GgufError
   * here: read it through {@link GgufMetadataEntry.array}, which decodes only what is asked for.
   */
  readonly value: GgufValue;
  /** For arrays: the elements, read on demand ({@link GgufArray}). */
  array?: GgufArray;
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
  /** Largest array `entry.value` decodes into a JS array (`entry.array` reads any size element by element). */
  maxDecodedElements: 1 << 22,
  /** Largest array whose bytes readGguf keeps in memory; larger ones are read from the file when used. */
  maxRetainedArrayBytes: 16 << 20,
  /**
   * Most strings all metadata arrays may hold together: twice the largest vocabulary the validator accepts (its
   * tokens and merges). llama.cpp's loader keeps every string of every array as a std::string (about 32 bytes and
   * up each): 2^23 one-byte strings, a 72 MiB file, took about 1 GB to load.
   */
  maxMetadataStrings: 1 << 22,
} as const;

const MAGIC = 0x46554747; // "GGUF" little-endian
const INT64_MAX = (1n << 63n) - 1n;

/** Where an array's bytes are: in memory, or in the file (read, checked and cached weakly when used). */
type ArraySource = { buf: Buffer } | { path: string; fileOffset: number; byteLength: number; fileSize: bigint };

/**
 * A metadata array, read on demand: `length` and `type` are known without decoding anything; `at(i)`, `slice`,
 * iteration and `toArray()` decode only the elements asked for. Strings are located through an index of their
 * offsets (4 bytes per string), built on the first random access.
 */
export class GgufArray implements Iterable<GgufScalar> {
  #source: ArraySource;
  #bytes: WeakRef<Buffer> | undefined;
  #stringStarts: Uint32Array | undefined;
  #decoded: WeakRef<GgufScalar[]> | undefined;

  /** @internal */
  constructor(
    readonly key: string,
    /** The element type. */
    readonly type: GgufValueType,
    readonly length: number,
    /** Byte offset of the first element in the file. */
    readonly offset: number,
    /** Bytes of the elements (strings: with their lengths). */
    readonly byteLength: number,
    source: ArraySource,
  ) {
    this.#source = source;
  }

  #buffer(): Buffer {
    const s = this.#source;
    if ('buf' in s) return s.buf;
    const cached = this.#bytes?.deref();
    if (cached) return cached;
    // The array was too large to keep: read it again, from a file that must still be the one that was read.
    const fd = openSync(s.path, constants.O_RDONLY | constants.O_NONBLOCK);
    try {
      const st = fstatSync(fd);
      if (!st.isFile() || BigInt(st.size) !== s.fileSize) {
        throw new GgufError(`"${this.key}": the file changed since it was read`, this.offset);
      }
      const buf = Buffer.allocUnsafe(s.byteLength);
      let done = 0;
      while (done < buf.length) {
        const n = readSync(fd, buf, done, buf.length - done, s.fileOffset + done);
        if (n === 0) throw new GgufError(`"${this.key}": the file changed since it was read`, this.offset);
        done += n;
      }
      this.#bytes = new WeakRef(buf);
      return buf;
    } finally {
      closeSync(fd);
    }
  }

  #check(i: number): number {
    if (!Number.isInteger(i) || i < 0 || i >= this.length) {
      throw Object.assign(new RangeError(`index ${i} is outside "${this.key}"'s ${this.length} elements`), { code: 'ERR_OUT_OF_RANGE' });
    }
    return i;
  }

  #starts(buf: Buffer): Uint32Array {
    if (this.#stringStarts) return this.#stringStarts;
    const starts = new Uint32Array(this.length);
    let p = 0;
    for (let i = 0; i < this.length; i++) {
      starts[i] = p;
      p += 8 + stringLength(buf, p, this.key, this.offset);
    }
    this.#stringStarts = starts;
    return starts;
  }

  /** Element `i` (0 <= i < length). */
  at(i: number): GgufScalar {
    this.#check(i);
    const buf = this.#buffer();
    if (this.type === GgufValueType.STRING) {
      const p = this.#starts(buf)[i];
      return buf.toString('utf8', p + 8, p + 8 + stringLength(buf, p, this.key, this.offset));
    }
    return scalarAt(buf, this.type, i * GGUF_SCALAR_SIZE[this.type]);
  }

  /** The raw UTF-8 bytes of string element `i` (to check for NUL bytes or invalid UTF-8). */
  rawStringAt(i: number): Buffer {
    this.#check(i);
    if (this.type !== GgufValueType.STRING) throw new TypeError(`"${this.key}" is not an array of strings`);
    const buf = this.#buffer();
    const p = this.#starts(buf)[i];
    return buf.subarray(p + 8, p + 8 + stringLength(buf, p, this.key, this.offset));
  }

  /** Elements `start` to `end` (exclusive), as Array.prototype.slice takes them (no negative indices). */
  slice(start = 0, end = this.length): GgufScalar[] {
    const from = Math.max(0, Math.min(this.length, Math.trunc(start)));
    const to = Math.max(from, Math.min(this.length, Math.trunc(end)));
    const out: GgufScalar[] = [];
    let i = 0;
    for (const x of this) {
      if (i >= to) break;
      if (i >= from) out.push(x);
      i++;
    }
    return out;
  }

  *[Symbol.iterator](): IterableIterator<GgufScalar> {
    const buf = this.#buffer();
    if (this.type === GgufValueType.STRING) {
      let p = 0;
      for (let i = 0; i < this.length; i++) {
        const n = stringLength(buf, p, this.key, this.offset);
        yield buf.toString('utf8', p + 8, p + 8 + n);
        p += 8 + n;
      }
      return;
    }
    const size = GGUF_SCALAR_SIZE[this.type];
    for (let i = 0; i < this.length; i++) yield scalarAt(buf, this.type, i * size);
  }

  /** Every element as a JS array (up to GGUF_LIMITS.maxDecodedElements; a GgufError beyond). */
  toArray(): GgufScalar[] {
    const cached = this.#decoded?.deref();
    if (cached) return cached;
    if (this.length > GGUF_LIMITS.maxDecodedElements) {
      throw new GgufError(
        `"${this.key}" has ${this.length} elements, more than the ${GGUF_LIMITS.maxDecodedElements} decoded at once; read it through entry.array`,
        this.offset,
      );
    }
    const out = [...this];
    this.#decoded = new WeakRef(out);
    return out;
  }
}

function stringLength(buf: Buffer, p: number, key: string, offset: number): number {
  if (p + 8 > buf.length || buf.readUInt32LE(p + 4) !== 0) throw new GgufError(`"${key}": an element is out of bounds`, offset + p);
  const n = buf.readUInt32LE(p);
  if (p + 8 + n > buf.length) throw new GgufError(`"${key}": an element is out of bounds`, offset + p);
  return n;
}

function scalarAt(b: Buffer, type: GgufValueType, p: number): GgufScalar {
  switch (type) {
    case GgufValueType.UINT8: return b.readUInt8(p);
    case GgufValueType.INT8: return b.readInt8(p);
    case GgufValueType.UINT16: return b.readUInt16LE(p);
    case GgufValueType.INT16: return b.readInt16LE(p);
    case GgufValueType.UINT32: return b.readUInt32LE(p);
    case GgufValueType.INT32: return b.readInt32LE(p);
    case GgufValueType.FLOAT32: return b.readFloatLE(p);
    case GgufValueType.BOOL: return b.readUInt8(p) === 1;
    case GgufValueType.UINT64: return b.readBigUInt64LE(p);
    case GgufValueType.INT64: return b.readBigInt64LE(p);
    case GgufValueType.FLOAT64: return b.readDoubleLE(p);
    default: throw new TypeError(`no scalar of type ${type}`);
  }
}

class Entry implements GgufMetadataEntry {
  constructor(
    public key: string,
    public type: GgufValueType,
    public offset: number,
    private scalar: GgufScalar | undefined,
    public arrayType?: GgufValueType,
    public array?: GgufArray,
  ) {}
  get value(): GgufValue {
    return this.array ? this.array.toArray() : this.scalar!;
  }
  toJSON(): unknown {
    const { key, type, arrayType, offset } = this;
    return this.array ? { key, type, arrayType, offset, length: this.array.length } : { key, type, offset, value: this.scalar };
  }
}

class NeedMore extends Error {
  constructor(readonly end: bigint) {
    super('need more');
  }
}

class Cursor {
  pos = 0;
  constructor(
    readonly buf: Buffer,
    readonly fileSize: bigint,
    /** Where array bytes are kept: subarrays of buf (parseGguf), or copies / the file (readGguf). */
    readonly arraySource: (at: number, bytes: number) => ArraySource,
  ) {}

  need(n: number | bigint, what: string): number {
    const end = BigInt(this.pos) + BigInt(n);
    if (end > this.fileSize) throw new GgufError(`the file ends inside ${what}`, this.pos);
    if (end > BigInt(this.buf.length)) throw new NeedMore(end);
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
  if (type === GgufValueType.STRING) return c.string(what, GGUF_LIMITS.maxStringBytes);
  if (size === undefined) throw new GgufError(`${what} has the unknown type ${type}`, c.pos);
  c.need(size, what);
  const p = c.pos;
  c.pos += size;
  if (type === GgufValueType.BOOL && c.buf[p] > 1) throw new GgufError(`${what} is a bool with the value ${c.buf[p]}`, p);
  return scalarAt(c.buf, type, p);
}

/** Checks an array's elements where they are (bounds, string lengths, bools) without decoding them. */
function readArray(c: Cursor, key: string, type: GgufValueType, count: number): GgufArray {
  const start = c.pos;
  if (type === GgufValueType.STRING) {
    // Every string is at least its 8-byte length: a count the file cannot hold fails here, at once.
    c.need(BigInt(count) * 8n, `the elements of "${key}"`);
    const b = c.buf;
    for (let j = 0; j < count; j++) {
      const at = c.pos;
      c.need(8, `"${key}"[${j}]`);
      const hi = b.readUInt32LE(at + 4);
      const lo = b.readUInt32LE(at);
      if (hi !== 0 || lo > GGUF_LIMITS.maxStringBytes) {
        throw new GgufError(`"${key}"[${j}] is ${(BigInt(hi) << 32n) | BigInt(lo)} bytes long, more than the limit of ${GGUF_LIMITS.maxStringBytes}`, at);
      }
      c.pos += 8;
      c.need(lo, `"${key}"[${j}]`);
      c.pos += lo;
    }
  } else {
    const size = GGUF_SCALAR_SIZE[type];
    c.need(BigInt(count) * BigInt(size), `the elements of "${key}"`);
    if (type === GgufValueType.BOOL) {
      const bad = c.buf.subarray(start, start + count).findIndex((v) => v > 1);
      if (bad >= 0) throw new GgufError(`"${key}"[${bad}] is a bool with the value ${c.buf[start + bad]}`, start + bad);
    }
    c.pos += count * size;
  }
  const bytes = c.pos - start;
  return new GgufArray(key, type, count, start, bytes, c.arraySource(start, bytes));
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
  let strings = 0;
  for (let i = 0; i < Number(kvCount); i++) {
    const offset = c.pos;
    const key = c.string(`the key of metadata entry ${i}`, GGUF_LIMITS.maxKeyBytes);
    if (key.length === 0) throw new GgufError(`metadata entry ${i} has an empty key`, offset);
    if (metadata.has(key)) throw new GgufError(`the metadata key "${key}" appears twice`, offset);
    const type = c.u32(`the type of "${key}"`) as GgufValueType;
    if (type === GgufValueType.ARRAY) {
      const at = c.pos;
      const arrayType = c.u32(`the element type of "${key}"`) as GgufValueType;
      if (arrayType === GgufValueType.ARRAY) throw new GgufError(`"${key}" is an array of arrays, which GGUF readers reject`, at);
      if (!(arrayType in GGUF_SCALAR_SIZE) && arrayType !== GgufValueType.STRING) {
        throw new GgufError(`"${key}" is an array of the unknown type ${arrayType}`, at);
      }
      const count = c.u64(`the length of "${key}"`);
      if (count > BigInt(GGUF_LIMITS.maxArrayElements)) {
        throw new GgufError(`"${key}" claims ${count} elements, more than the limit of ${GGUF_LIMITS.maxArrayElements}`, at + 4);
      }
      if (arrayType === GgufValueType.STRING) {
        strings += Number(count);
        if (strings > GGUF_LIMITS.maxMetadataStrings) {
          throw new GgufError(
            `"${key}" brings the metadata to ${strings} strings, more than the limit of ${GGUF_LIMITS.maxMetadataStrings} (a vocabulary and its merges need far fewer)`, at + 4,
          );
        }
      }
      const array = readArray(c, key, arrayType, Number(count));
      metadata.set(key, new Entry(key, type, offset, undefined, arrayType, array));
    } else {
      metadata.set(key, new Entry(key, type, offset, readScalar(c, type, `the value of "${key}"`)));
    }
  }

  let alignment = 32;
  const alignEntry = metadata.get('general.alignment');
  if (alignEntry) {
    if (alignEntry.type !== GgufValueType.UINT32) {
      throw new GgufError('general.alignment must be a u32', alignEntry.offset);
    }
    const a = alignEntry.value;
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
  return parse(new Cursor(buf, BigInt(buf.length), (at, bytes) => ({ buf: buf.subarray(at, at + bytes) })), BigInt(buf.length));
}

function kindOf(st: Stats): string {
  if (st.isDirectory()) return 'a directory';
  if (st.isFIFO()) return 'a FIFO (named pipe)';
  if (st.isSocket()) return 'a socket';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  return 'not a regular file';
}

/**
 * Opens `path` for reading if it is a regular file. A FIFO, a device, a socket or a directory is refused with
 * {@link NotRegularFileError} before it is opened for reading (reading a FIFO or a terminal blocks until
 * someone writes; /dev/zero never ends). The path is checked with stat, opened with O_NONBLOCK (so that a
 * FIFO swapped in after the check does not block the open), and the open descriptor is checked again.
 * Node's own errors (`ENOENT`, `EACCES`, ...) pass through.
 */
export async function openRegularFile(path: string): Promise<FileHandle> {
  const st = await stat(path);
  if (!st.isFile()) throw new NotRegularFileError(path, kindOf(st));
  const fh = await open(path, constants.O_RDONLY | constants.O_NONBLOCK);
  try {
    const again = await fh.stat();
    if (!again.isFile()) throw new NotRegularFileError(path, kindOf(again));
  } catch (error) {
    await fh.close();
    throw error;
  }
  return fh;
}

/** Throws {@link NotRegularFileError} if `path` exists and is not a regular file (without opening it). */
export async function assertRegularFile(path: string): Promise<void> {
  const st = await stat(path);
  if (!st.isFile()) throw new NotRegularFileError(path, kindOf(st));
}

/**
 * Reads the header, metadata and tensor infos of a GGUF file and checks them (counts, lengths, offsets, types,
 * against the file's size and {@link GGUF_LIMITS}). Metadata arrays are checked but not decoded (see
 * {@link GgufArray}); arrays of up to GGUF_LIMITS.maxRetainedArrayBytes are kept in memory, larger ones are
 * read from the file again when used. Throws {@link GgufError} (with the byte offset) for anything malformed,
 * {@link NotRegularFileError} for a path that is not a regular file, Node's own errors (`ENOENT`, ...) for a
 * file that cannot be read.
 */
export async function readGguf(path: string, options: ReadGgufOptions = {}): Promise<GgufFile> {
  const maxHeader = options.maxHeaderBytes ?? 256 * 2 ** 20;
  const fh = await openRegularFile(path);
  try {
    const size = BigInt((await fh.stat()).size);
    const cap = Number(size < BigInt(maxHeader) ? size : BigInt(maxHeader));
    let buf = Buffer.alloc(0);
    let want = Math.min(cap, 1 << 20);
    for (;;) {
      // Read only the bytes not read yet; a NeedMore says how far the parser needs to see.
      const next = Buffer.allocUnsafe(want);
      buf.copy(next, 0);
      let filled = buf.length;
      while (filled < want) {
        const { bytesRead } = await fh.read(next, filled, want - filled, filled);
        if (bytesRead === 0) break;
        filled += bytesRead;
      }
      buf = next.subarray(0, filled);
      const header = buf;
      const source = (at: number, bytes: number): ArraySource =>
        bytes <= GGUF_LIMITS.maxRetainedArrayBytes
          ? { buf: Buffer.from(header.subarray(at, at + bytes)) }
          : { path, fileOffset: at, byteLength: bytes, fileSize: size };
      try {
        // A file shorter than its size (it shrank while being read) ends where the reading did.
        return parse(new Cursor(buf, filled < want ? BigInt(filled) : size, source), size);
      } catch (error) {
        if (!(error instanceof NeedMore)) throw error;
        if (want >= maxHeader) {
          throw new GgufError(`the header (metadata and tensor infos) is larger than ${maxHeader} bytes`, want);
        }
        const needed = Number(error.end > BigInt(cap) ? BigInt(cap) : error.end);
        want = Math.min(Math.max(want * 4, needed + (1 << 20)), cap);
      }
    }
  } finally {
    await fh.close();
  }
}
