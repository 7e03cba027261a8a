// Finds and loads the native addon, lazily: `huozi-gguf --help` must not pay for loading llama.cpp.
// Order: HUOZI_BINDING (an explicit .node path), then node-gyp-build's search of this package
// (build/Release from a source build, then prebuilds/<platform>-<arch>/).
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BindingError } from './errors.js';

export interface NativeSystemInfo {
  backend: 'cpu' | 'cuda' | 'metal';
  llamaCpp: string;
  /** A local GPU (RPC devices do not count). */
  gpuOffload: boolean;
  /** The RPC backend is built in (GGML_RPC). */
  rpc: boolean;
  mmap: boolean;
  mlock: boolean;
  maxDevices: number;
}

export interface NativeModelInfo {
  description: string;
  size: number;
  parameters: number;
  trainContextSize: number;
  embeddingSize: number;
  layers: number;
  heads: number;
  kvHeads: number;
  vocabularySize: number;
  fileType: string;
  chatTemplate: string | null;
  tokens: { bos: number | null; eos: number | null; eot: number | null; nl: number | null; addBos: boolean; addEos: boolean };
  metadata: Record<string, string>;
}

export interface NativeGenerateResult {
  tokens: Int32Array;
  text: string;
  stopReason: 'eog' | 'stopToken' | 'stopString' | 'maxTokens' | 'contextFull' | 'abort';
  stopToken: number | null;
  stopString: string | null;
  reusedTokens: number;
  evaluatedTokens: number;
  promptMs: number;
  generateMs: number;
}

export interface NativeContext {
  info(): { contextSize: number; batchSize: number; ubatchSize: number; threads: number; batchThreads: number };
  tokens(): Int32Array;
  evaluate(tokens: Int32Array, logits: 0 | 1 | 2 | 3): Promise<Float32Array | undefined>;
  generate(prompt: Int32Array, params: object, onText?: (text: string) => void): Promise<NativeGenerateResult>;
  eraseFrom(position: number): void;
  saveState(): Promise<{ data: Buffer; tokens: Int32Array }>;
  imatrix(): { name: string; values: Float32Array; counts: Float32Array }[];
  loadState(data: Buffer, tokens: Int32Array): Promise<void>;
  abort(): void;
  setThreads(threads: number, batchThreads: number): void;
  dispose(): void;
  readonly disposed: boolean;
}

export interface NativeModel {
  info(): NativeModelInfo;
  tokenize(text: string, addSpecial: boolean, parseSpecial: boolean): Int32Array;
  detokenize(tokens: Int32Array, removeSpecial: boolean, unparseSpecial: boolean): string;
  tokenPieces(tokens: Int32Array, special: boolean): Buffer[];
  isEog(token: number): boolean;
  specialTokens(): { ids: Int32Array; texts: string[] };
  createContext(params: object): Promise<NativeContext>;
  dispose(): void;
  readonly disposed: boolean;
}

export interface NativeBinding {
  loadModel(
    path: string,
    params: object,
    onProgress?: (progress: number) => void,
  ): { promise: Promise<NativeModel>; cancel(): void };
  systemInfo(): NativeSystemInfo;
  ggmlTypes(): { id: number; name: string; blockSize: number; typeSize: number }[];
  /** Starts ggml_backend_rpc_start_server on a thread of its own; onExit only if it ever returns. */
  rpcStartServer(
    endpoint: string,
    cacheDir: string | null,
    threads: number,
    devices: string[] | null,
    onExit: (why: string) => void,
  ): { devices: { name: string; description: string; totalBytes: number; freeBytes: number }[] };
}

/** The package's root folder (where package.json is), from dist/ or lib/. */
export const packageRoot = join(dirname(fileURLToPath(import.meta.url)), '..');

let cached: NativeBinding | undefined;

export function binding(): NativeBinding {
  if (cached) return cached;
  const require = createRequire(import.meta.url);
  const tried: string[] = [];
  const explicit = process.env.HUOZI_BINDING;
  try {
    if (explicit) {
      tried.push(explicit);
      cached = require(explicit) as NativeBinding;
    } else {
      tried.push(join(packageRoot, 'build/Release/huozi_gguf.node'), join(packageRoot, `prebuilds/${process.platform}-${process.arch}/`));
      const nodeGypBuild = require('node-gyp-build') as (dir: string) => NativeBinding;
      cached = nodeGypBuild(packageRoot);
    }
  } catch (cause) {
    throw new BindingError(
      `huozi-gguf could not load its native addon for ${process.platform}-${process.arch} (Node ${process.version}).\n` +
        `Tried:\n${tried.map((t) => `  - ${t}`).join('\n')}\n` +
        `Reason: ${(cause as Error).message}\n` +
        `To build it from source (needs cmake and a C++17 compiler): cd ${packageRoot} && npm run setup`,
      { cause },
    );
  }
  return cached;
}
