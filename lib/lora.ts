// LoRA adapters at run time (issue #18): model.loadLora(file) checks a GGUF adapter against the model in
// TypeScript (lib/gguf/validate-lora.ts: what llama.cpp would abort on, or compute garbage with), then loads it
// (src/lora.cc). A context applies a list of { adapter, scale } (Context.setLoras, or `loras` per generation;
// ParallelContext and the server per request). Adapters are children of their model: disposing the model
// disposes them; a context that applies an adapter keeps its weights until it stops applying it.
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import type { NativeLora, NativeModel } from './binding.js';
import { fromNative, LoraError } from './errors.js';
import { openRegularFile, readGguf } from './gguf/reader.js';
import { validateLoraForModel } from './gguf/validate-lora.js';
import { Lifecycle } from './lifecycle.js';
import * as v from './validate.js';

/** One adapter applied with a scale (llama.cpp `--lora-scaled FILE SCALE`; `--lora FILE` is scale 1). */
export interface LoraSetting {
  adapter: LoraAdapter;
  /** Multiplies the adapter's update (`alpha / rank · B·A`). Default 1; 0 applies nothing. Finite, |scale| ≤ 1e6. */
  scale?: number;
}

/** A LoRA adapter loaded for one model ({@link Model.loadLora}). */
export class LoraAdapter {
  /** Absolute path of the adapter's GGUF file. */
  readonly path: string;
  /** `adapter.lora.alpha` (0: none, the update is not rescaled). */
  readonly alpha: number;
  /** The adapter file's metadata (scalar values as strings, as llama.cpp reads them). */
  readonly metadata: Readonly<Record<string, string>>;
  /** SHA-256 of the adapter file, hex (session files record the adapters their cache was computed with). */
  readonly sha256: string;
  /** @internal */
  readonly model: object;
  readonly #life: Lifecycle<NativeLora>;

  /** @internal Use {@link Model.loadLora}. */
  constructor(model: object, native: NativeLora, path: string, sha256: string) {
    this.model = model;
    this.sha256 = sha256;
    this.#life = new Lifecycle(native, 'This LoRA adapter has been disposed');
    const info = native.info();
    this.path = path;
    this.metadata = Object.freeze({ ...info.metadata });
    const alpha = Number(info.metadata['adapter.lora.alpha'] ?? 0);
    this.alpha = Number.isFinite(alpha) ? alpha : 0;
  }

  /** Whether {@link LoraAdapter.dispose} has run (or its model was disposed). */
  get disposed(): boolean {
    return this.#life.disposed;
  }

  /** @internal The native adapter; DisposedError once disposed. */
  native(): NativeLora {
    return this.#life.alive();
  }

  /** Runs `listener` once when the adapter is disposed. */
  onDispose(listener: () => void): void {
    this.#life.onDispose(listener);
  }

  /**
   * Releases the adapter. Contexts that apply it keep its weights until they apply other adapters (or none)
   * or are disposed; it cannot be set again. Safe to call twice.
   */
  async dispose(): Promise<void> {
    await this.#life.dispose((native) => native.dispose());
  }
}

/**
 * @internal Model.loadLora: the file is opened once; the TypeScript check and llama.cpp both read that open
 * file (/proc/self/fd), and a file written over while it loads is refused.
 */
export async function loadLora(model: object, native: NativeModel, modelPath: string, path: string): Promise<LoraAdapter> {
  v.string('path', path, { allowEmpty: false });
  const full = resolve(path);
  const callSite = new Error();
  const fh = await openRegularFile(full);
  try {
    const before = await fh.stat({ bigint: true });
    const viaFd = `/proc/self/fd/${fh.fd}`;
    const at = existsSync(viaFd) ? viaFd : full;
    const [adapter, base] = await Promise.all([readGguf(at), readGguf(modelPath)]);
    validateLoraForModel(adapter, base, full);
    let loaded: NativeLora;
    try {
      loaded = await native.loadLora(at);
    } catch (error) {
      const typed = fromNative(error, callSite);
      if (typed instanceof LoraError) throw new LoraError(typed.message.replace(at, full), { reason: 'load', file: full });
      throw typed;
    }
    // The bytes llama.cpp read, hashed from the same open file (a file changed meanwhile is refused below).
    const hash = createHash('sha256');
    const chunk = Buffer.allocUnsafe(1 << 20);
    for (let at = 0; ; ) {
      const { bytesRead } = await fh.read(chunk, 0, chunk.length, at);
      if (bytesRead === 0) break;
      hash.update(chunk.subarray(0, bytesRead));
      at += bytesRead;
    }
    const after = await fh.stat({ bigint: true });
    if (after.size !== before.size || after.mtimeNs !== before.mtimeNs) {
      loaded.dispose();
      throw new LoraError(`The adapter file ${full} changed while it was being loaded; load it again`, { reason: 'file', file: full });
    }
    return new LoraAdapter(model, loaded, full, hash.digest('hex'));
  } finally {
    await fh.close();
  }
}

/**
 * @internal Checks `loras` (a generation's or a context's) for `model`: an array of { adapter, scale } of its
 * own, live adapters, each once. Returns the list the native side takes.
 */
export function checkLoras(model: object, name: string, loras: unknown): CheckedLora[] {
  if (!Array.isArray(loras)) throw v.typeError('an array of { adapter, scale }', name, loras);
  if (loras.length > 64) throw v.rangeError('at most 64 adapters', name, loras);
  const seen = new Set<LoraAdapter>();
  return loras.map((entry: unknown, i) => {
    const o = v.options<LoraSetting>(`${name}[${i}]`, entry, ['adapter', 'scale']);
    if (!(o.adapter instanceof LoraAdapter)) throw v.typeError('a LoraAdapter from model.loadLora()', `${name}[${i}].adapter`, o.adapter);
    if (o.adapter.model !== model) throw v.rangeError('an adapter loaded for this model', `${name}[${i}].adapter`, o.adapter.path);
    if (seen.has(o.adapter)) throw v.rangeError('each adapter once', `${name}[${i}].adapter`, o.adapter.path);
    seen.add(o.adapter);
    const scale = o.scale === undefined ? 1 : v.number(`${name}[${i}].scale`, o.scale, -1e6, 1e6);
    return { adapter: o.adapter.native(), scale, source: o.adapter };
  });
}

/** @internal A checked entry: the native adapter and its scale (what src/lora.cc reads), and its LoraAdapter. */
export interface CheckedLora {
  adapter: NativeLora;
  scale: number;
  source: LoraAdapter;
}

/** @internal What a session file records of the adapters a cache was computed with: each file's hash and scale. */
export function loraFingerprint(loras: readonly CheckedLora[]): { sha256: string; scale: number }[] {
  return loras.filter((l) => l.scale !== 0).map((l) => ({ sha256: l.source.sha256, scale: l.scale })).sort((a, b) => (a.sha256 < b.sha256 ? -1 : 1));
}
