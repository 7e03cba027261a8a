// Safetensors checkpoints, single-file or sharded through model.safetensors.index.json, read the way
// gguf-py's SafetensorsLocal and convert_hf_to_gguf.py's index_tensors read them: the parts in sorted order,
// each part's tensors sorted by name. Only headers are read here; every tensor's byte range is checked against
// its file's size up front, so a truncated shard fails before anything is written. Data is read later, a slice
// at a time, with positioned reads (never a whole shard in memory).
import { open, readdir, readFile, stat, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { ConvertError } from './error.js';
import { SOURCE_DTYPE_BYTES, type SourceDtype } from './float.js';

export interface SafetensorsTensor {
  /** The name as stored (e.g. `model.layers.0.self_attn.q_proj.weight`). */
  name: string;
  dtype: SourceDtype;
  /** PyTorch order: outermost first. */
  shape: number[];
  /** The part file (absolute or as given). */
  file: string;
  /** Byte offset of the data in `file`. */
  offset: number;
  bytes: number;
}

export interface SafetensorsCheckpoint {
  /** The part files in the order their tensors are read. */
  files: string[];
  /** Every tensor, in convert_hf_to_gguf.py's order. */
  tensors: SafetensorsTensor[];
}

/** The safetensors library refuses headers above 100 MB; so does this. */
const MAX_HEADER_BYTES = 100_000_000;

/** Dtypes safetensors knows, with their element size, so that a non-float tensor gets a clear message. */
const KNOWN_DTYPES: Record<string, number> = {
  BOOL: 1, U8: 1, I8: 1, F8_E5M2: 1, F8_E4M3: 1, F8_E8M0: 1, F4: 0.5, I16: 2, U16: 2, F16: 2, BF16: 2, I32: 4, U32: 4,
  F32: 4, I64: 8, U64: 8, F64: 8,
};

function isSourceDtype(d: string): d is SourceDtype {
  return d in SOURCE_DTYPE_BYTES;
}

/** Reads one part's header and checks every tensor against the file. */
export async function readSafetensorsHeader(file: string): Promise<SafetensorsTensor[]> {
  let fh: FileHandle;
  try {
    fh = await open(file, 'r');
  } catch (error) {
    throw new ConvertError(`cannot open the checkpoint part ${file}: ${(error as Error).message}`, file, { cause: error });
  }
  try {
    const size = (await fh.stat()).size;
    const head = Buffer.alloc(8);
    if (size < 8 || (await fh.read(head, 0, 8, 0)).bytesRead < 8) {
      throw new ConvertError(`${file} is truncated: ${size} bytes, too short for a safetensors header`, file);
    }
    const headerLength = head.readBigUInt64LE(0);
    if (headerLength > BigInt(MAX_HEADER_BYTES)) {
      throw new ConvertError(`${file} claims a ${headerLength}-byte header; not a safetensors file?`, file);
    }
    const n = Number(headerLength);
    if (8 + n > size) throw new ConvertError(`${file} is truncated: its header needs ${8 + n} bytes but the file has ${size}`, file);
    const buf = Buffer.alloc(n);
    await fh.read(buf, 0, n, 8);
    let header: Record<string, unknown>;
    try {
      header = JSON.parse(buf.toString('utf8')) as Record<string, unknown>;
    } catch (error) {
      throw new ConvertError(`${file} has a header that is not JSON: ${(error as Error).message}`, file, { cause: error });
    }
    if (header === null || typeof header !== 'object' || Array.isArray(header)) {
      throw new ConvertError(`${file} has a header that is not a JSON object`, file);
    }
    const dataStart = 8 + n;
    const tensors: SafetensorsTensor[] = [];
    for (const [name, meta] of Object.entries(header)) {
      if (name === '__metadata__') continue;
      const m = meta as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
      if (m === null || typeof m !== 'object') throw new ConvertError(`${file}: the entry for "${name}" is not an object`, file);
      const shape = m.shape;
      if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
        throw new ConvertError(`${file}: "${name}" has the shape ${JSON.stringify(shape)}, not a list of sizes`, file);
      }
      const offsets = m.data_offsets;
      if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((o) => Number.isSafeInteger(o) && o >= 0) ||
          offsets[1] < offsets[0]) {
        throw new ConvertError(`${file}: "${name}" has the data_offsets ${JSON.stringify(offsets)}`, file);
      }
      const dtype = String(m.dtype);
      if (!(dtype in KNOWN_DTYPES)) throw new ConvertError(`${file}: "${name}" has the unknown dtype ${dtype}`, file);
      const elements = (shape as number[]).reduce((a, d) => a * d, 1);
      const bytes = offsets[1] - offsets[0];
      if (bytes !== elements * KNOWN_DTYPES[dtype]) {
        throw new ConvertError(
          `${file}: "${name}" is ${JSON.stringify(shape)} ${dtype} (${elements * KNOWN_DTYPES[dtype]} bytes) but its data_offsets span ${bytes} bytes`,
          file,
        );
      }
      if (dataStart + offsets[1] > size) {
        throw new ConvertError(
          `${file} is truncated: "${name}" needs bytes ${dataStart + offsets[0]}..${dataStart + offsets[1]} but the file has ${size}`,
          file,
        );
      }
      if (!isSourceDtype(dtype)) {
        throw new ConvertError(
          `${file}: "${name}" is ${dtype}; only F32, F16, BF16 and F64 weights can be converted (quantized checkpoints are not supported)`,
          file,
        );
      }
      tensors.push({ name, dtype, shape: shape as number[], file, offset: dataStart + offsets[0], bytes });
    }
    // Sorted by name, as the safetensors library (and so convert_hf_to_gguf.py) iterates them. Names are ASCII
    // in practice; for the rest, code-unit order is code-point order below U+D800, which is close enough.
    return tensors.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  } finally {
    await fh.close();
  }
}

async function isFile(path: string): Promise<boolean> {
  return stat(path).then((s) => s.isFile(), () => false);
}

/** Finds the parts (through the index when there is one) and reads every header. */
export async function indexSafetensors(dir: string): Promise<SafetensorsCheckpoint> {
  const entries = await readdir(dir);
  let parts = entries.filter((f) => f.startsWith('model') && f.endsWith('.safetensors')).sort();
  const indexFile = join(dir, 'model.safetensors.index.json');
  let weightMap: Record<string, string> | undefined;
  if (await isFile(indexFile)) {
    let index: { weight_map?: unknown };
    try {
      index = JSON.parse(await readFile(indexFile, 'utf8'));
    } catch (error) {
      throw new ConvertError(`${indexFile} is not valid JSON: ${(error as Error).message}`, indexFile, { cause: error });
    }
    const wm = index?.weight_map;
    if (wm === null || typeof wm !== 'object' || Array.isArray(wm) || !Object.values(wm).every((f) => typeof f === 'string')) {
      throw new ConvertError(`${indexFile} has no weight_map of tensor names to files`, indexFile);
    }
    weightMap = wm as Record<string, string>;
    parts = [...new Set(Object.values(weightMap))].sort();
    for (const part of parts) {
      if (part.includes('/') || part.includes('\\') || part === '..') {
        throw new ConvertError(`${indexFile} names the part "${part}", which is not a file in ${dir}`, indexFile);
      }
    }
    const missing = [];
    for (const part of parts) if (!(await isFile(join(dir, part)))) missing.push(part);
    if (missing.length) {
      throw new ConvertError(`${dir} lacks ${missing.length === 1 ? 'the part' : 'the parts'} ${missing.join(', ')} named in model.safetensors.index.json`, join(dir, missing[0]));
    }
  }
  if (parts.length === 0) {
    const bins = entries.filter((f) => f.startsWith('pytorch_model') && f.endsWith('.bin'));
    throw new ConvertError(
      bins.length
        ? `${dir} holds a PyTorch .bin checkpoint; only safetensors can be converted (re-save it with save_pretrained(safe_serialization=True))`
        : `${dir} has no model*.safetensors file`,
      dir,
    );
  }

  const files = parts.map((p) => join(dir, p));
  const tensors: SafetensorsTensor[] = [];
  const seen = new Map<string, string>();
  for (const file of files) {
    for (const t of await readSafetensorsHeader(file)) {
      const other = seen.get(t.name);
      if (other) throw new ConvertError(`the tensor "${t.name}" is in both ${other} and ${file}`, file);
      seen.set(t.name, file);
      tensors.push(t);
    }
  }
  if (weightMap) {
    // The same check as index_tensors: a part that holds fewer tensors than the index says is incomplete.
    const missing = Object.keys(weightMap).filter((n) => !seen.has(n)).sort();
    const extra = [...seen.keys()].filter((n) => !(n in weightMap!)).sort();
    if (missing.length) {
      const inFiles = [...new Set(missing.map((n) => weightMap![n]))].sort();
      throw new ConvertError(
        `missing or incomplete checkpoint parts ${inFiles.join(', ')}: ${missing.length} tensors named in the index are not in them ` +
          `(${missing.slice(0, 3).join(', ')}${missing.length > 3 ? ', ...' : ''})`,
        join(dir, inFiles[0]),
      );
    }
    if (extra.length) {
      throw new ConvertError(
        `the parts hold ${extra.length} tensors model.safetensors.index.json does not name (${extra.slice(0, 3).join(', ')}${extra.length > 3 ? ', ...' : ''})`,
        indexFile,
      );
    }
  }
  return { files, tensors };
}

/** Positioned reads from the parts, one open handle per part while a conversion runs. */
export class PartReader {
  private handles = new Map<string, Promise<FileHandle>>();

  private handle(file: string): Promise<FileHandle> {
    let h = this.handles.get(file);
    if (!h) {
      h = open(file, 'r');
      this.handles.set(file, h);
    }
    return h;
  }

  /** Reads `length` bytes at `offset` into a fresh buffer that starts at byte 0 of its own ArrayBuffer. */
  async read(file: string, offset: number, length: number): Promise<Buffer> {
    const fh = await this.handle(file);
    const buf = Buffer.allocUnsafeSlow(length);
    let done = 0;
    while (done < length) {
      const { bytesRead } = await fh.read(buf, done, length - done, offset + done);
      if (bytesRead === 0) throw new ConvertError(`${file} ended at byte ${offset + done} while reading tensor data (was it truncated during the conversion?)`, file);
      done += bytesRead;
    }
    return buf;
  }

  async close(): Promise<void> {
    const all = [...this.handles.values()];
    this.handles.clear();
    await Promise.all(all.map((h) => h.then((fh) => fh.close(), () => undefined)));
  }
}
