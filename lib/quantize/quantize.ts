// quantize(): llama_model_quantize in a child process, writing to a temporary file next to the output that
// is checked, fsynced and renamed only when complete (lib/util/output.ts, which checks the output path before
// anything starts). A crash, an abort, a full disk or a bad type leaves any existing output untouched and no
// partial file behind; the caller's process is never at risk.
import { spawn } from 'node:child_process';
import { stat } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { AbortError, HuoziError } from '../errors.js';
import { readGguf } from '../gguf/reader.js';
import { ggmlTypeByName } from '../gguf/types.js';
import { validateForLlama } from '../gguf/validate.js';
import { openOutput } from '../util/output.js';
import * as v from '../validate.js';
import { quantType, QUANT_TYPES, type QuantType } from './types.js';

/** Options of {@link quantize}: llama-quantize's, camelCased. */
export interface QuantizeOptions {
  /** Target type as llama-quantize spells it, case-insensitive: `q4_0`, `Q2_K`, `q4_k_m`, ... (see QUANT_TYPES). */
  type: string;
  /** Threads (llama-quantize's nthread). Default: all cores. */
  threads?: number;
  /** Importance matrix file (GGUF, from computeImatrix or llama-imatrix). Required by the IQ1/IQ2 types and Q2_K_S. Default: none. */
  imatrix?: string;
  /** Allow re-quantizing tensors that are already quantized (`--allow-requantize`). Default: false. */
  allowRequantize?: boolean;
  /** Keep output.weight as it is (`--leave-output-tensor`). Default: false. */
  leaveOutputTensor?: boolean;
  /** Every tensor in the target type, no per-tensor mix (`--pure`). Default: false. */
  pure?: boolean;
  /** Type for output.weight (`--output-tensor-type`), a ggml type name such as `q8_0`. Default: llama.cpp's choice. */
  outputTensorType?: string;
  /** Type for token_embd.weight (`--token-embedding-type`). Default: llama.cpp's choice. */
  tokenEmbeddingType?: string;
  /** Per-tensor types by name pattern (`--tensor-type attn_v=q8_0`): `{ 'attn_v': 'q8_0' }`. */
  tensorTypes?: Record<string, string>;
  /** Called per tensor with tensors done and the total; reaches 1 (done === total) exactly once, at the end. */
  onProgress?: (done: number, total: number) => void;
  /** Kills the quantizer; the promise rejects with {@link AbortError} and the output path is as it was. */
  signal?: AbortSignal;
}

const OPTIONS = [
  'type', 'threads', 'imatrix', 'allowRequantize', 'leaveOutputTensor', 'pure', 'outputTensorType', 'tokenEmbeddingType',
  'tensorTypes', 'onProgress', 'signal',
] as const;

/** What {@link quantize} resolves to. */
export interface QuantizeResult {
  /** Absolute path of the written file (the file a symlink pointed to, when the output was one). */
  output: string;
  /** The type, as llama-quantize spells it (`Q4_0`). */
  type: string;
  inputBytes: number;
  outputBytes: number;
  /** Tensor elements in the output. */
  parameters: number;
  /** Tensor data bits per parameter. */
  bitsPerWeight: number;
  seconds: number;
}

/** Quantization failed; the output path is as it was before. */
export class QuantizeError extends HuoziError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, 'ERR_HUOZI_QUANTIZE', options);
  }
}

const childScript = join(dirname(fileURLToPath(import.meta.url)), 'child.js');

function ggmlTypeId(name: string, option: string): number {
  const t = ggmlTypeByName(v.string(option, name));
  if (!t) throw v.rangeError('a ggml type name such as q8_0, q6_K or f16', option, name);
  return t.id;
}

interface ChildOutcome {
  done?: { quantMiB: number; requiresImatrix: boolean };
  error?: { message: string; code: string };
  exit: { code: number | null; signal: NodeJS.Signals | null };
}

function runChild(job: object, onTensor: (i: number, n: number) => void, signal?: AbortSignal): Promise<ChildOutcome> {
  return new Promise((resolveOutcome) => {
    const child = spawn(process.execPath, [childScript, JSON.stringify(job)], { stdio: ['ignore', 'ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
    const outcome: Partial<ChildOutcome> = {};
    const lines = createInterface({ input: child.stdio[3] as NodeJS.ReadableStream });
    lines.on('line', (line) => {
      try {
        const msg = JSON.parse(line);
        if (msg.tensor) onTensor(msg.tensor, msg.of);
        else if (msg.done) outcome.done = msg.done;
        else if (msg.error) outcome.error = msg.error;
      } catch {
        // not ours
      }
    });
    const onAbort = () => child.kill('SIGKILL');
    signal?.addEventListener('abort', onAbort, { once: true });
    child.on('close', (code, sig) => {
      signal?.removeEventListener('abort', onAbort);
      if (!outcome.done && !outcome.error && stderr.trim()) {
        outcome.error = { message: stderr.trim().split('\n').slice(-3).join(' '), code: 'ERR_HUOZI_QUANTIZE' };
      }
      resolveOutcome({ ...outcome, exit: { code, signal: sig } } as ChildOutcome);
    });
  });
}

/**
 * Quantizes `input` into `output` with llama.cpp's llama_model_quantize, in a child process, through a temporary
 * file that replaces `output` only when complete.
 *
 * @throws `TypeError` / `RangeError` for bad options or an unknown type.
 * @throws {@link OutputPathError} for an output that exists and is not a regular file, that is the input or the
 * importance matrix (by device and inode: the same path, a symlink or a hard link), or whose directory is missing
 * or not writable; found before anything starts.
 * @throws {@link GgufError} when the input is not a GGUF llama.cpp can load.
 * @throws {@link QuantizeError} when llama.cpp fails, or the type needs an importance matrix and none was given.
 * @throws {@link AbortError} when `signal` aborts.
 */
export async function quantize(input: string, output: string, options: QuantizeOptions): Promise<QuantizeResult> {
  v.string('input', input, { allowEmpty: false });
  v.string('output', output, { allowEmpty: false });
  const o = v.options<QuantizeOptions>('options', options, OPTIONS);
  if (o.type === undefined) throw v.typeError('a quantization type', 'options.type', undefined);
  const qt: QuantType | undefined = quantType(v.string('type', o.type));
  if (!qt) {
    throw v.rangeError(`one of ${QUANT_TYPES.map((t) => t.name).join(', ')}`, 'type', o.type);
  }
  const params: Record<string, unknown> = { ftype: qt.ftype, onlyCopy: qt.onlyCopy === true };
  if (o.threads !== undefined) params.threads = v.integer('threads', o.threads, 1, 512);
  if (o.allowRequantize !== undefined) params.allowRequantize = v.boolean('allowRequantize', o.allowRequantize);
  if (o.leaveOutputTensor !== undefined) params.leaveOutputTensor = v.boolean('leaveOutputTensor', o.leaveOutputTensor);
  if (o.pure !== undefined) params.pure = v.boolean('pure', o.pure);
  if (o.outputTensorType !== undefined) params.outputTensorType = ggmlTypeId(o.outputTensorType, 'outputTensorType');
  if (o.tokenEmbeddingType !== undefined) params.tokenEmbeddingType = ggmlTypeId(o.tokenEmbeddingType, 'tokenEmbeddingType');
  if (o.tensorTypes !== undefined) {
    const entries = Object.entries(v.options<Record<string, string>>('tensorTypes', o.tensorTypes, Object.keys(o.tensorTypes)));
    params.tensorTypes = entries.map(([pattern, type]) => ({ pattern, type: ggmlTypeId(type as string, `tensorTypes.${pattern}`) }));
  }
  const onProgress = o.onProgress === undefined ? undefined : v.func<(d: number, t: number) => void>('onProgress', o.onProgress);
  const signal = o.signal === undefined ? undefined : v.signal('signal', o.signal);
  const imatrix = o.imatrix === undefined ? undefined : resolve(v.string('imatrix', o.imatrix, { allowEmpty: false }));

  const inPath = resolve(input);
  const started = Date.now();
  // The output path first: a device, a FIFO, an input or a directory that cannot be written is refused before
  // any work, and the temporary file the quantizer writes is created here.
  const out = await openOutput(output, { inputs: [inPath, imatrix] });
  try {
    // The input must be a file llama.cpp can load without aborting (it loads it to quantize it).
    const inputFile = await readGguf(inPath);
    validateForLlama(inputFile);
    if (imatrix) await stat(imatrix);
    if (signal?.aborted) throw new AbortError();

    // A dry run first: llama.cpp says whether the type needs an importance matrix, before anything is written.
    if (!imatrix && !qt.onlyCopy) {
      const dry = await runChild({ input: inPath, output: '', params: { ...params, dryRun: true } }, () => undefined, signal);
      if (signal?.aborted) throw new AbortError('quantization was aborted');
      if (dry.error || !dry.done) throw new QuantizeError(`Cannot quantize ${inPath}: ${dry.error?.message ?? `the worker ended (${dry.exit.signal ?? dry.exit.code})`}`);
      if (dry.done.requiresImatrix || qt.needsImatrix) {
        throw new QuantizeError(`${qt.name} needs an importance matrix: pass imatrix (huozi-gguf imatrix computes one)`);
      }
    }

    let reported = 0;
    const outcome = await runChild(
      { input: inPath, output: out.tmp, params, imatrixFile: imatrix },
      (i, n) => {
        // Tensor i is starting: i-1 are done. The final 100% comes after the rename.
        if (i - 1 > reported && i - 1 < n) onProgress?.((reported = i - 1), n);
      },
      signal,
    );
    if (signal?.aborted) throw new AbortError('quantization was aborted');
    if (!outcome.done) {
      const why = outcome.error?.message ??
        (outcome.exit.signal ? `the quantizer was killed by ${outcome.exit.signal}` : `the quantizer exited with code ${outcome.exit.code}`);
      throw new QuantizeError(`Quantizing ${inPath} to ${qt.name} failed: ${why}`);
    }
    // Check what was written before it replaces anything, then make it durable and rename it into place.
    const written = await readGguf(out.tmp);
    await out.commit();
    const total = written.tensors.length;
    onProgress?.(total, total);
    const outputBytes = Number(written.fileSize);
    const parameters = written.tensors.reduce((a, t) => a + Number(t.elements), 0);
    return {
      output: out.path,
      type: qt.name,
      inputBytes: Number(inputFile.fileSize),
      outputBytes,
      parameters,
      bitsPerWeight: (Number(written.tensors.reduce((a, t) => a + t.bytes, 0n)) * 8) / parameters,
      seconds: (Date.now() - started) / 1000,
    };
  } catch (error) {
    await out.discard();
    throw error;
  }
}

/** Size (MiB) a quantization would produce, from llama.cpp's dry run; no file is written. */
export async function quantizedSize(input: string, type: string): Promise<{ mib: number; requiresImatrix: boolean }> {
  const qt = quantType(type);
  if (!qt) throw v.rangeError(`one of ${QUANT_TYPES.map((t) => t.name).join(', ')}`, 'type', type);
  const inPath = resolve(input);
  validateForLlama(await readGguf(inPath));
  const dry = await runChild({ input: inPath, output: '', params: { ftype: qt.ftype, onlyCopy: qt.onlyCopy === true, dryRun: true } }, () => undefined);
  if (!dry.done) throw new QuantizeError(`Dry run failed: ${dry.error?.message ?? 'the worker ended'}`);
  return { mib: dry.done.quantMiB, requiresImatrix: dry.done.requiresImatrix || qt.needsImatrix };
}
