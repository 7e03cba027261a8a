// The life of an object that owns a native one (Model, Context, ParallelContext): the native object while it
// lives, DisposedError after, dispose listeners, and dispose running once. A model is an owner of children
// (its contexts): disposing it disposes them first, so that its weights are never freed under a running context.
import type { NativeModel } from './binding.js';
import { DisposedError } from './errors.js';

/** What a parent needs of a child: to dispose it, and to hear when it was disposed on its own. */
export interface Child {
  dispose(): Promise<void>;
  onDispose(listener: () => void): void;
}

export class Lifecycle<N> {
  #native: N | undefined;
  readonly #message: string;
  readonly #listeners = new Set<() => void>();
  /** Undefined for an object without children: its dispose() marks it disposed at once, before any await. */
  readonly #children: Set<Child> | undefined;

  /** `message`: the DisposedError's, e.g. 'This model has been disposed'. */
  constructor(native: N, message: string, { parent = false }: { parent?: boolean } = {}) {
    this.#native = native;
    this.#message = message;
    this.#children = parent ? new Set() : undefined;
  }

  /** Whether dispose() has taken the native object. */
  get disposed(): boolean {
    return this.#native === undefined;
  }

  /** The native object; DisposedError once disposed. */
  alive(): N {
    if (this.#native === undefined) throw new DisposedError(this.#message);
    return this.#native;
  }

  /** Runs `listener` once, when the object is disposed. */
  onDispose(listener: () => void): void {
    this.#listeners.add(listener);
  }

  /** Makes `child` part of this object: disposed before it, forgotten when disposed on its own. */
  adopt(child: Child): void {
    const children = this.#children;
    if (!children) throw new TypeError('This object has no children');
    children.add(child);
    child.onDispose(() => children.delete(child));
  }

  /**
   * Disposes once. A parent first disposes its children, then waits for `drain` (work that still holds the
   * native object), both while it still counts as alive. Then the object is marked disposed, `release` frees
   * the native object, and the listeners run. A second call returns at once; one that arrives while a parent
   * waits for its children waits with it and leaves the release to the first.
   */
  async dispose(release: (native: N) => void | Promise<void>, drain?: () => Promise<void>): Promise<void> {
    if (this.#native === undefined) return;
    if (this.#children) await Promise.all([...this.#children].map((c) => c.dispose()));
    if (drain) await drain();
    const native = this.#native;
    if (native === undefined) return;
    this.#native = undefined;
    const released = release(native);
    if (released) await released;
    for (const listener of this.#listeners) listener();
    this.#listeners.clear();
  }
}

// The native model of each Model, for the files that create its contexts (lib/context.ts, lib/parallel.ts):
// they reach it through nativeModel() instead of a public getter, and need no value import of lib/model.ts.
const models = new WeakMap<object, Lifecycle<NativeModel>>();

/** @internal Called by Model's constructor. */
export function registerModel(model: object, life: Lifecycle<NativeModel>): void {
  models.set(model, life);
}

/** @internal The native model of a Model; DisposedError once it is disposed. */
export function nativeModel(model: object): NativeModel {
  const life = models.get(model);
  if (!life) throw new TypeError('Expected a Model created by loadModel()');
  return life.alive();
}
