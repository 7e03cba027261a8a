// Importance matrices in llama.cpp's GGUF format (tools/imatrix): for each weight "<name>.in_sum2" (the sum of
// squared input activations per column, one row per expert) and "<name>.counts" (rows seen per expert), plus
// imatrix.datasets / chunk_count / chunk_size. computeImatrix() collects them with our own context;
// readImatrix() turns a file into what llama_model_quantize takes, as llama-quantize does.
import { readFile } from 'node:fs/promises';
import { basename } from 'node:path';
import type { Model } from '../model.js';
import { GgufError, AbortError } from '../errors.js';
import { parseGguf } from '../gguf/reader.js';
import { GgufValueType } from '../gguf/types.js';
import { encodeGgufHeader, writeGgufTo, type WriterValue } from '../gguf/writer.js';
import { openOutput, type OutputFile } from '../util/output.js';
import * as v from '../validate.js';

/** Options of {@link computeImatrix}. */
export interface ImatrixOptions {
  /** Tokens per chunk (llama-imatrix `-c`). Default: 512. */
  contextSize?: number;
  /** Most chunks to process (llama-imatrix `--chunks`). Default: all of the text. */
  chunks?: number;
  /** CPU threads. Default: the available cores. */
  threads?: number;
  /** Parse special-token text (`<|endofutterance|>`) in the file into tokens. Default: false, as llama-imatrix. */
  parseSpecial?: boolean;
  /** Called after each chunk with the chunks done and the total. */
  onProgress?: (chunk: number, chunks: number) => void;
  /** Stops between chunks (and inside one); the promise rejects with {@link AbortError}. Nothing is written. */
  signal?: AbortSignal;
}

/** What {@link computeImatrix} resolves to. */
export interface ImatrixResult {
  /** Absolute path of the written file. */
  path: string;
  /** Chunks evaluated. */
  chunks: number;
  /** Weight matrices with statistics. */
  entries: number;
  /** Tokens evaluated (chunks × contextSize). */
  tokens: number;
}

/**
 * Runs `textFile` through the model in chunks of `contextSize` tokens and writes the importance matrix to
 * `output` (GGUF, as llama-imatrix writes it), for quantize({ imatrix }).
 *
 * @throws {@link OutputPathError} for an output that exists and is not a regular file, that is the text or the
 * model's file (by device and inode), or whose directory is missing or not writable; found before any chunk runs.
 */
export async function computeImatrix(model: Model, textFile: string, output: string, options?: ImatrixOptions): Promise<ImatrixResult> {
  v.string('textFile', textFile, { allowEmpty: false });
  v.string('output', output, { allowEmpty: false });
  const o = v.options<ImatrixOptions>('options', options, ['contextSize', 'chunks', 'threads', 'parseSpecial', 'onProgress', 'signal']);
  const contextSize = o.contextSize === undefined ? 512 : v.integer('contextSize', o.contextSize, 16, 1 << 20);
  if (o.chunks !== undefined) v.integer('chunks', o.chunks, 1);
  if (o.parseSpecial !== undefined) v.boolean('parseSpecial', o.parseSpecial);
  if (o.onProgress !== undefined) v.func('onProgress', o.onProgress);
  if (o.signal !== undefined) v.signal('signal', o.signal);
  const out = await openOutput(output, { inputs: [textFile, model.path] });
  try {
    return await collect(model, textFile, out, contextSize, o);
  } catch (error) {
    await out.discard();
    throw error;
  }
}

async function collect(model: Model, textFile: string, out: OutputFile, contextSize: number, o: ImatrixOptions): Promise<ImatrixResult> {
  const text = await readFile(textFile, 'utf8');
  // As llama-imatrix: the text tokenized with BOS first (common_tokenize with add_special), then cut into chunks
  // of contextSize whose first token becomes BOS. Without it every chunk was one token off llama-imatrix's.
  const tokens = model.tokenize(text, { parseSpecial: o.parseSpecial ?? false });
  const available = Math.floor(tokens.length / contextSize);
  const chunks = o.chunks === undefined ? available : Math.min(available, o.chunks);
  if (chunks < 1) {
    throw v.rangeError(`a text of at least contextSize (${contextSize}) tokens`, 'textFile', `${tokens.length} tokens`);
  }
  const context = await model.createContext({ contextSize, batchSize: contextSize, threads: o.threads, collectImatrix: true });
  try {
    const bos = model.tokens.addBos ? model.tokens.bos : null;
    for (let c = 0; c < chunks; c++) {
      if (o.signal?.aborted) throw new AbortError();
      const chunk = tokens.slice(c * contextSize, (c + 1) * contextSize);
      if (bos !== null) chunk[0] = bos; // as llama-imatrix: each chunk starts with BOS
      await context.clear();
      await context.evaluate(chunk, { logits: 'computeAll', signal: o.signal });
      o.onProgress?.(c + 1, chunks);
    }
    const stats = context.imatrix();
    const meta = new Map<string, WriterValue>([
      ['general.type', { type: GgufValueType.STRING, value: 'imatrix' }],
      ['imatrix.datasets', { type: GgufValueType.ARRAY, arrayType: GgufValueType.STRING, value: [textFile] }],
      ['imatrix.chunk_count', { type: GgufValueType.UINT32, value: chunks }],
      ['imatrix.chunk_size', { type: GgufValueType.UINT32, value: contextSize }],
    ]);
    const sorted = [...stats].sort((a, b) => (a.name < b.name ? -1 : 1));
    const tensors = sorted.flatMap((s) => {
      const rows = s.counts.length;
      return [
        { name: `${s.name}.in_sum2`, dims: [s.values.length / rows, rows], type: 0, data: () => [new Uint8Array(s.values.buffer, s.values.byteOffset, s.values.byteLength)] },
        { name: `${s.name}.counts`, dims: [1, rows], type: 0, data: () => [new Uint8Array(s.counts.buffer, s.counts.byteOffset, s.counts.byteLength)] },
      ];
    });
    const { header, sizes, alignment } = encodeGgufHeader(meta, tensors);
    await writeGgufTo(out, header, sizes, alignment, tensors);
    return { path: out.path, chunks, entries: sorted.length, tokens: chunks * contextSize };
  } finally {
    await context.dispose();
  }
}

/** An importance matrix as {@link readImatrix} returns it. */
export interface LoadedImatrix {
  entries: { name: string; importance: Float32Array }[];
  chunkCount: number;
  datasets: string[];
  /** The metadata llama-quantize records in a quantized file about its importance matrix. */
  provenance: { key: string; value: string | number }[];
}

/** Reads an importance matrix (GGUF) and divides the sums by the counts per expert, as llama-quantize does. */
export async function readImatrix(path: string): Promise<LoadedImatrix> {
  const buf = await readFile(path);
  const file = parseGguf(buf);
  if (file.metadata.get('general.type')?.value !== 'imatrix') {
    throw new GgufError(`${basename(path)} is not an importance matrix (general.type is not "imatrix")`, 0);
  }
  const tensors = new Map(file.tensors.map((t) => [t.name, t]));
  const f32 = (name: string) => {
    const t = tensors.get(name)!;
    if (t.type !== 0) throw new GgufError(`${name} must be f32`, t.infoOffset);
    const start = Number(file.dataOffset + t.offset);
    return new Float32Array(buf.buffer.slice(buf.byteOffset + start, buf.byteOffset + start + Number(t.bytes)));
  };
  const entries: LoadedImatrix['entries'] = [];
  for (const t of file.tensors) {
    if (!t.name.endsWith('.in_sum2')) continue;
    const name = t.name.slice(0, -'.in_sum2'.length);
    if (!tensors.has(`${name}.counts`)) throw new GgufError(`${name} has sums but no counts`, t.infoOffset);
    const sums = f32(t.name);
    const counts = f32(`${name}.counts`);
    const ne0 = sums.length / counts.length;
    if (!Number.isInteger(ne0)) throw new GgufError(`${name}: ${sums.length} sums do not split into ${counts.length} rows`, t.infoOffset);
    const importance = new Float32Array(sums.length);
    for (let j = 0; j < counts.length; j++) {
      const count = Math.round(counts[j]);
      for (let i = 0; i < ne0; i++) importance[j * ne0 + i] = count > 0 ? sums[j * ne0 + i] / count : 1;
    }
    entries.push({ name, importance });
  }
  const chunkCount = Number(file.metadata.get('imatrix.chunk_count')?.value ?? 0);
  const datasets = (file.metadata.get('imatrix.datasets')?.value as string[] | undefined) ?? [];
  const provenance: LoadedImatrix['provenance'] = [
    { key: 'quantize.imatrix.file', value: path },
    ...(datasets.length ? [{ key: 'quantize.imatrix.dataset', value: datasets[0] }] : []),
    { key: 'quantize.imatrix.entries_count', value: entries.length },
    { key: 'quantize.imatrix.chunks_count', value: chunkCount },
  ];
  return { entries, chunkCount, datasets, provenance };
}
