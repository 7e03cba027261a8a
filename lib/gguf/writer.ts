// Writes GGUF v3 files, streaming: the header first, then each tensor's data as it is produced, so a model
// of any size is written with memory for one tensor (or one chunk of it) at a time. The file appears at its
// path only when complete (temporary file, fsync, rename).
import { AbortError } from '../errors.js';
import { randomBytes } from 'node:crypto';
import { open, rename, unlink, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { GgufValueType, ggmlType, tensorBytes } from './types.js';
import type { GgufScalar } from './reader.js';

/** A metadata value to write: its GGUF type and value (arrays: the element type too). */
export type WriterValue =
  | { type: Exclude<GgufValueType, GgufValueType.ARRAY>; value: GgufScalar }
  | { type: GgufValueType.ARRAY; arrayType: Exclude<GgufValueType, GgufValueType.ARRAY>; value: GgufScalar[] };

/** A tensor to write: name, shape, ggml type id and a producer of its bytes. */
export interface WriterTensor {
  name: string;
  /** ggml's ne: innermost dimension first. */
  dims: readonly (number | bigint)[];
  type: number;
  /** Produces the tensor's bytes, in one or more chunks, exactly `bytes` long in total. */
  data: () => AsyncIterable<Uint8Array> | Iterable<Uint8Array>;
}

const DEFAULT_ALIGNMENT = 32;

function encodeString(s: string): Buffer {
  const bytes = Buffer.from(s, 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(bytes.length));
  return Buffer.concat([len, bytes]);
}

function encodeScalar(type: GgufValueType, v: GgufScalar): Buffer {
  let b: Buffer;
  switch (type) {
    case GgufValueType.UINT8: b = Buffer.alloc(1); b.writeUInt8(Number(v)); return b;
    case GgufValueType.INT8: b = Buffer.alloc(1); b.writeInt8(Number(v)); return b;
    case GgufValueType.UINT16: b = Buffer.alloc(2); b.writeUInt16LE(Number(v)); return b;
    case GgufValueType.INT16: b = Buffer.alloc(2); b.writeInt16LE(Number(v)); return b;
    case GgufValueType.UINT32: b = Buffer.alloc(4); b.writeUInt32LE(Number(v)); return b;
    case GgufValueType.INT32: b = Buffer.alloc(4); b.writeInt32LE(Number(v)); return b;
    case GgufValueType.FLOAT32: b = Buffer.alloc(4); b.writeFloatLE(Number(v)); return b;
    case GgufValueType.BOOL: return Buffer.from([v ? 1 : 0]);
    case GgufValueType.UINT64: b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(v as number | bigint)); return b;
    case GgufValueType.INT64: b = Buffer.alloc(8); b.writeBigInt64LE(BigInt(v as number | bigint)); return b;
    case GgufValueType.FLOAT64: b = Buffer.alloc(8); b.writeDoubleLE(Number(v)); return b;
    case GgufValueType.STRING: return encodeString(String(v));
    default: throw new TypeError(`cannot encode GGUF value type ${type}`);
  }
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n);
  return b;
}

function u64(n: number | bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(n));
  return b;
}

/** Bytes of the tensor's data (throws for a bad type or a row that is not whole blocks). */
export function writerTensorBytes(t: Pick<WriterTensor, 'name' | 'dims' | 'type'>): bigint {
  const gt = ggmlType(t.type);
  if (!gt) throw new RangeError(`tensor "${t.name}" has the unknown ggml type ${t.type}`);
  const elements = t.dims.reduce<bigint>((a, d) => a * BigInt(d), 1n);
  const bytes = tensorBytes(gt, elements);
  if (bytes === undefined || (t.dims.length > 0 && BigInt(t.dims[0]) % BigInt(gt.blockSize) !== 0n)) {
    throw new RangeError(`tensor "${t.name}": ${t.dims.join('x')} is not whole ${gt.name} blocks of ${gt.blockSize}`);
  }
  return bytes;
}

export interface WriteGgufOptions {
  /** Called after each tensor with the bytes written so far and the total. */
  onProgress?: (written: bigint, total: bigint) => void;
  signal?: AbortSignal;
}

/** The complete header (metadata and tensor infos, padded to the alignment) for these tensors. */
export function encodeGgufHeader(metadata: ReadonlyMap<string, WriterValue>, tensors: readonly WriterTensor[]): {
  header: Buffer;
  offsets: bigint[];
  sizes: bigint[];
  alignment: number;
} {
  const alignEntry = metadata.get('general.alignment');
  const alignment = alignEntry ? Number(alignEntry.value) : DEFAULT_ALIGNMENT;
  const pad = (n: bigint) => ((n + BigInt(alignment) - 1n) / BigInt(alignment)) * BigInt(alignment);
  const parts: Buffer[] = [Buffer.from('GGUF', 'latin1'), u32(3), u64(tensors.length), u64(metadata.size)];
  for (const [key, v] of metadata) {
    parts.push(encodeString(key), u32(v.type));
    if (v.type === GgufValueType.ARRAY) {
      parts.push(u32(v.arrayType), u64(v.value.length));
      for (const item of v.value) parts.push(encodeScalar(v.arrayType, item));
    } else {
      parts.push(encodeScalar(v.type, v.value));
    }
  }
  const offsets: bigint[] = [];
  const sizes: bigint[] = [];
  let offset = 0n;
  for (const t of tensors) {
    const bytes = writerTensorBytes(t);
    parts.push(encodeString(t.name), u32(t.dims.length), ...t.dims.map((d) => u64(BigInt(d))), u32(t.type), u64(offset));
    offsets.push(offset);
    sizes.push(bytes);
    offset = pad(offset + bytes);
  }
  const raw = Buffer.concat(parts);
  const header = Buffer.concat([raw, Buffer.alloc(Number(pad(BigInt(raw.length)) - BigInt(raw.length)))]);
  return { header, offsets, sizes, alignment };
}

/**
 * Writes a GGUF v3 file through a temporary file in the same directory; `path` appears only when complete.
 * Metadata keys are written in the Map's order. Throws a `RangeError` for a tensor whose type is unknown, whose
 * rows are not whole blocks, or whose data is not exactly its size.
 */
export async function writeGguf(
  path: string,
  metadata: ReadonlyMap<string, WriterValue>,
  tensors: readonly WriterTensor[],
  options: WriteGgufOptions = {},
): Promise<void> {
  const { header, sizes, alignment } = encodeGgufHeader(metadata, tensors);
  const total = sizes.reduce((a, b) => a + b, 0n);
  const tmp = join(dirname(path), `.${basename(path)}.${randomBytes(6).toString('hex')}.tmp`);
  let fh: FileHandle | undefined = await open(tmp, 'wx', 0o644);
  try {
    let pos = 0;
    const write = async (chunk: Uint8Array) => {
      let done = 0;
      while (done < chunk.length) {
        const { bytesWritten } = await fh!.write(chunk, done, chunk.length - done, pos);
        done += bytesWritten;
        pos += bytesWritten;
      }
    };
    await write(header);
    let written = 0n;
    for (let i = 0; i < tensors.length; i++) {
      if (options.signal?.aborted) throw new AbortError();
      let bytes = 0n;
      for await (const chunk of tensors[i].data()) {
        bytes += BigInt(chunk.length);
        if (bytes > sizes[i]) break;
        await write(chunk);
      }
      if (bytes !== sizes[i]) {
        throw new RangeError(`tensor "${tensors[i].name}" produced ${bytes} bytes of data, expected ${sizes[i]}`);
      }
      written += bytes;
      const padding = Number((BigInt(alignment) - (bytes % BigInt(alignment))) % BigInt(alignment));
      if (padding) await write(Buffer.alloc(padding)); // after every tensor, the last too, as gguf.cpp and gguf-py do
      options.onProgress?.(written, total);
    }
    await fh.sync();
    await fh.close();
    fh = undefined;
    await rename(tmp, path);
  } catch (error) {
    await fh?.close().catch(() => undefined);
    await unlink(tmp).catch(() => undefined);
    throw error;
  }
}
