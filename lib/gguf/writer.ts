// Writes GGUF v3 files, streaming: the header first, then each tensor's data as it is produced, so a model
// of any size is written with memory for one tensor (or one chunk of it) at a time. The file appears at its
// path only when complete (lib/util/output.ts: the path checked first, a temporary file, fsync, rename).
import { AbortError } from '../errors.js';
import { openOutput, type OutputFile } from '../util/output.js';
import * as v from '../validate.js';
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
 * Metadata keys are written in the Map's order. The path is checked before anything is written
 * (lib/util/output.ts): an existing `path` must be a regular file, or a symlink to one (written through), and its
 * directory must take a new file.
 *
 * @throws {@link OutputPathError} for a path that cannot be written safely (a device, a FIFO, a socket, a
 * directory, a missing or read-only directory): nothing is written.
 * @throws `RangeError` for a tensor whose type is unknown, whose rows are not whole blocks, or whose data is not
 * exactly its size; the existing file at `path` is then as it was.
 */
export async function writeGguf(
  path: string,
  metadata: ReadonlyMap<string, WriterValue>,
  tensors: readonly WriterTensor[],
  options: WriteGgufOptions = {},
): Promise<void> {
  v.string('path', path, { allowEmpty: false });
  const o = v.options<WriteGgufOptions>('options', options, ['onProgress', 'signal']);
  const checked: WriteGgufOptions = {
    onProgress: o.onProgress === undefined ? undefined : v.func<NonNullable<WriteGgufOptions['onProgress']>>('onProgress', o.onProgress),
    signal: o.signal === undefined ? undefined : v.signal('signal', o.signal),
  };
  const { header, sizes, alignment } = encodeGgufHeader(metadata, tensors);
  const out = await openOutput(path);
  await writeGgufTo(out, header, sizes, alignment, tensors, checked);
}

/** The header from {@link encodeGgufHeader} and the tensors' data into a checked output, then commit(). */
export async function writeGgufTo(
  out: OutputFile,
  header: Uint8Array,
  sizes: readonly bigint[],
  alignment: number,
  tensors: readonly WriterTensor[],
  options: WriteGgufOptions = {},
): Promise<void> {
  const total = sizes.reduce((a, b) => a + b, 0n);
  const fh = out.handle;
  try {
    let pos = 0;
    const write = async (chunk: Uint8Array) => {
      let done = 0;
      while (done < chunk.length) {
        const { bytesWritten } = await fh.write(chunk, done, chunk.length - done, pos);
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
    if (options.signal?.aborted) throw new AbortError();
    await out.commit();
  } catch (error) {
    await out.discard();
    throw error;
  }
}
