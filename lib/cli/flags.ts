// The command line's flags. A flag is defined once, with the type of the value commander hands the action, so a
// command's options type is read off the list of flags it registers instead of being written out again beside
// its handler. The flags several commands take (loading a model, the context, sampling, -o) live here; a
// command's own flags live in its file. Only commander and types are imported: `--help` loads this file.
import { Option, type Command } from 'commander';
import type { Model } from '../model.js';
import type { LoraSetting } from '../lora.js';
import type { SamplingOptions } from '../generation.js';
import type { Grammar } from '../grammar.js';

// The parsers only turn text into numbers: ranges and their messages come from the library's validation.
export function intArg(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n)) throw new Error(`expected an integer, got "${value}"`);
  return n;
}

export function floatArg(value: string): number {
  const n = Number(value);
  if (!Number.isFinite(n)) throw new Error(`expected a number, got "${value}"`);
  return n;
}

/** For flags that may be given more than once. */
export function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

/**
 * One flag: `key` is the property commander stores its value under (the long name in camelCase, without `no-`)
 * and `V` the type of that value as the action receives it (`| undefined` while the flag has no default).
 */
export class Flag<K extends string, V> {
  /** Type only: what the action receives under `key`. */
  declare readonly value: V;

  constructor(
    readonly key: K,
    private readonly make: () => Option,
  ) {}

  /** A fresh commander Option (commander keeps parse state on it, so each command needs its own). */
  option(): Option {
    const option = this.make();
    // The key is written out for the type; a typo would hand the action its value under another name.
    if (option.attributeName() !== this.key) {
      throw new Error(`flag ${option.flags}: commander names its value "${option.attributeName()}", not "${this.key}"`);
    }
    return option;
  }

  /** The same flag with a default, which `--help` shows; the action always receives a value. */
  default<D extends Exclude<V, undefined>>(value: D): Flag<K, Exclude<V, undefined>> {
    return new Flag(this.key, () => this.make().default(value));
  }

  /** The same flag with another help text, for a command where it means something narrower. */
  describe(description: string): Flag<K, V> {
    return new Flag(this.key, () => {
      const option = this.make();
      option.description = description;
      return option;
    });
  }
}

type AnyFlag = Flag<string, unknown>;

/** The options object an action receives from a list of flags. */
export type FlagValues<F extends readonly AnyFlag[]> = { [E in F[number] as E['key']]: E['value'] };

/** Registers the flags on a command, in order (the order `--help` lists them in). */
export function addFlags(command: Command, flags: readonly AnyFlag[]): Command {
  for (const f of flags) command.addOption(f.option());
  return command;
}

/** `--name <value>`: a string, or undefined when not given. */
export function stringFlag<K extends string>(key: K, flags: string, description: string): Flag<K, string | undefined> {
  return new Flag(key, () => new Option(flags, description));
}

/** `--name <value...>`: the values given, or undefined when not given. */
export function listFlag<K extends string>(key: K, flags: string, description: string): Flag<K, string[] | undefined> {
  return new Flag(key, () => new Option(flags, description));
}

/** `--name [value]`: the value; true when given without one; undefined when not given. */
export function optionalValueFlag<K extends string>(key: K, flags: string, description: string): Flag<K, string | true | undefined> {
  return new Flag(key, () => new Option(flags, description));
}

/** A flag that may be given more than once: every value, in order ([] when not given). */
export function repeatableFlag<K extends string>(key: K, flags: string, description: string): Flag<K, string[]> {
  return new Flag(key, () => new Option(flags, description).argParser(collect).default([]));
}

export function intFlag<K extends string>(key: K, flags: string, description: string): Flag<K, number | undefined> {
  return new Flag(key, () => new Option(flags, description).argParser(intArg));
}

export function floatFlag<K extends string>(key: K, flags: string, description: string): Flag<K, number | undefined> {
  return new Flag(key, () => new Option(flags, description).argParser(floatArg));
}

/** `--name`: true when given, else false (shown as the default). */
export function switchFlag<K extends string>(key: K, flags: string, description: string): Flag<K, boolean> {
  return new Flag(key, () => new Option(flags, description).default(false));
}

/** `--no-name`: false when given, else true (commander's negation; `key` is `name`). */
export function negatedFlag<K extends string>(key: K, flags: string, description: string): Flag<K, boolean> {
  return new Flag(key, () => new Option(flags, description));
}

/** A flag the command cannot run without: commander refuses the command line when it is missing. */
export function requiredFlag<K extends string>(key: K, flags: string, description: string): Flag<K, string> {
  return new Flag(key, () => new Option(flags, description).makeOptionMandatory());
}

// Loading a model: chat, complete and serve (modelfile names the model only; inspect --memory places layers).
export const modelFlag = stringFlag('model', '-m, --model <file>', 'GGUF model (default: the embedded huozi-tiny demo model)');
export const gpuLayersFlag = stringFlag(
  'gpuLayers',
  '--ngl, --gpu-layers <n>',
  'layers to offload to the GPU, "max", or "auto": the fastest placement that fits free memory (and --vram-budget) (also -ngl)',
);
/** Where the weights go besides --ngl: llama.cpp's --cpu-moe, --n-cpu-moe, -ot, and a VRAM budget for --ngl auto. */
export const PLACEMENT_FLAGS = [
  switchFlag('cpuMoe', '--cpu-moe', "keep every layer's MoE expert tensors in host memory (llama.cpp --cpu-moe)"),
  intFlag('nCpuMoe', '--n-cpu-moe <n>', 'keep the MoE experts of the first <n> layers in host memory (llama.cpp --n-cpu-moe, also -ncmoe)'),
  repeatableFlag(
    'overrideTensor',
    '--override-tensor <pattern=device>',
    'put tensors whose name matches <pattern> on <device> (CPU, CUDA0, ...); comma-separated or repeatable (llama.cpp -ot, also -ot)',
  ),
  floatFlag('vramBudget', '--vram-budget <MiB>', 'with --ngl auto: use at most this much memory on each GPU, even when more is free'),
] as const;
export type PlacementFlags = FlagValues<typeof PLACEMENT_FLAGS>;
export const rpcFlag = stringFlag(
  'rpc',
  '--rpc <servers>',
  'RPC servers for layers, comma-separated host:port (huozi-gguf rpc-server; llama.cpp --rpc)',
);
/** The flags loadCliModel() reads; every command that loads a model registers them. */
export type ModelFlags = FlagValues<[typeof modelFlag, Flag<'gpuLayers', string>, typeof rpcFlag]> & PlacementFlags;

// The context: its size (each command says what it sizes) and the CPU threads that run it.
export const ctxSizeFlag = intFlag('ctxSize', '-c, --ctx-size <n>', 'context size in tokens');
export const threadsFlag = intFlag('threads', '-t, --threads <n>', 'CPU threads (default: cores; -1 on GPU)');

/** LoRA adapters on the model (chat, complete, serve): llama.cpp's --lora and --lora-scaled in one flag. */
export const loraFlag = repeatableFlag('lora', '--lora <file[:scale]>', 'apply a LoRA adapter (a GGUF from convert-lora) at scale 1 or <scale>; repeatable');

/** chat and complete: a model and a context on it; -c 2048 as Huozi's README runs it. */
export const RUN_FLAGS = [modelFlag, ctxSizeFlag.default(2048), threadsFlag, gpuLayersFlag.default('max'), ...PLACEMENT_FLAGS, rpcFlag, loraFlag] as const;
export type RunFlags = FlagValues<typeof RUN_FLAGS>;

export const maxTokensFlag = intFlag('maxTokens', '-n, --max-tokens <n>', 'most tokens to generate');
export const seedFlag = intFlag('seed', '--seed <n>', 'random seed');

/** Sampling, with Huozi's README settings as defaults (not the library's: temperature 0.8, repeat penalty 1). */
export const SAMPLING_FLAGS = [
  floatFlag('temp', '--temp <x>', 'temperature (0 = greedy)').default(0.2),
  intFlag('topK', '--top-k <n>', 'top-k sampling').default(40),
  floatFlag('topP', '--top-p <x>', 'top-p sampling').default(0.95),
  floatFlag('minP', '--min-p <x>', 'min-p sampling').default(0.05),
  floatFlag('repeatPenalty', '--repeat-penalty <x>', 'repetition penalty').default(1.1),
  seedFlag,
] as const;
export type SamplingFlags = FlagValues<typeof SAMPLING_FLAGS>;

/** chat and complete: an answer constrained to a grammar, or to JSON that a schema describes (at most one). */
export const GRAMMAR_FLAGS = [
  stringFlag('grammarFile', '--grammar-file <path>', 'constrain the output to a GBNF grammar (its rule "root")'),
  stringFlag('jsonSchema', '--json-schema <file|json>', 'constrain the output to JSON valid under a JSON Schema (a file, or the schema inline)'),
] as const;
export type GrammarFlags = FlagValues<typeof GRAMMAR_FLAGS>;

/** Commands that write a file (convert, imatrix, synth); the file is checked before any work (lib/util/output.ts). */
export const outputFlag = requiredFlag('output', '-o, --output <file>', 'where to write the GGUF');

/** --lora values (`file` or `file:scale`, the scale a number after the last colon) loaded for `model`. */
export async function cliLoras(model: Model, values: readonly string[]): Promise<LoraSetting[]> {
  const out: LoraSetting[] = [];
  for (const value of values) {
    const m = /^(.+):([-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?)$/i.exec(value);
    const [file, scale] = m ? [m[1], Number(m[2])] : [value, 1];
    if (file === '') throw new Error(`--lora expects <file> or <file>:<scale>, got "${value}"`);
    out.push({ adapter: await model.loadLora(file), scale });
  }
  return out;
}

/** The model -m names (the demo model when none), loaded with --ngl, the placement flags and --rpc; `contextSize`: what --ngl auto leaves room for. */
export async function loadCliModel(opts: ModelFlags, contextSize?: number): Promise<Model> {
  const { demoModelPath } = await import('../demo.js');
  const { loadModel } = await import('../model.js');
  const path = opts.model ?? demoModelPath;
  if (!opts.model) {
    process.stderr.write('note: no -m given; using the embedded demo model huozi-tiny (6.6M parameters, q4_0)\n');
  }
  const rpcServers = opts.rpc?.split(',').map((s) => s.trim()).filter(Boolean);
  return loadModel(path, { ...cliPlacement(opts, contextSize), ...(rpcServers?.length ? { rpcServers } : {}) });
}

/**
 * --ngl, --cpu-moe, --n-cpu-moe, -ot and --vram-budget as the library's placement options (which check them: a
 * bad value is its RangeError naming the option). `contextSize` is what --ngl auto leaves room for.
 */
export function cliPlacement(
  opts: PlacementFlags & { gpuLayers?: string },
  contextSize?: number,
): { gpuLayers: number | 'max' | 'auto'; cpuMoe?: number | 'all'; tensorOverrides?: { pattern: string; device: string }[]; fit?: { budgetMiB?: number; contextSize?: number } } {
  const g = opts.gpuLayers;
  const gpuLayers = g === undefined || g === 'max' ? 'max' : g === 'auto' ? 'auto' : Number(g);
  if (opts.cpuMoe && opts.nCpuMoe !== undefined) throw new Error('--cpu-moe and --n-cpu-moe both say where the experts go: give one');
  const out: ReturnType<typeof cliPlacement> = { gpuLayers };
  if (opts.cpuMoe) out.cpuMoe = 'all';
  else if (opts.nCpuMoe !== undefined) out.cpuMoe = opts.nCpuMoe;
  const rules = opts.overrideTensor.flatMap((arg) => arg.split(',')).filter((r) => r.trim() !== '');
  if (rules.length > 0) {
    out.tensorOverrides = rules.map((rule) => {
      const at = rule.lastIndexOf('=');
      if (at <= 0 || at === rule.length - 1) throw new Error(`--override-tensor expects <pattern>=<device>, got "${rule}"`);
      return { pattern: rule.slice(0, at), device: rule.slice(at + 1) };
    });
  }
  if (opts.vramBudget !== undefined) {
    if (gpuLayers !== 'auto') throw new Error('--vram-budget sizes the plan of --ngl auto: add --ngl auto');
    out.fit = { budgetMiB: opts.vramBudget };
  }
  if (gpuLayers === 'auto' && contextSize !== undefined) out.fit = { ...out.fit, contextSize };
  return out;
}

export function cliSampling(opts: SamplingFlags): SamplingOptions {
  return {
    temperature: opts.temp,
    topK: opts.topK,
    topP: opts.topP,
    minP: opts.minP,
    repeatPenalty: opts.repeatPenalty,
    ...(opts.seed === undefined ? {} : { seed: opts.seed }),
  };
}

/** Prefixes an error's message with the flag it came from, so that `huozi-gguf: <message>` says which input is wrong. */
function blame(flag: string, error: unknown): Error {
  const e = error instanceof Error ? error : new Error(String(error));
  e.message = `${flag}: ${e.message}`;
  return e;
}

/**
 * The grammar --grammar-file or --json-schema asks for, compiled once (before the model loads, so that a typo
 * costs no load) and reused by every answer; undefined when neither is given.
 */
export async function cliGrammar(opts: GrammarFlags): Promise<Grammar | undefined> {
  if (opts.grammarFile !== undefined && opts.jsonSchema !== undefined) {
    throw new Error('--grammar-file and --json-schema cannot be used together: give one of them');
  }
  if (opts.grammarFile === undefined && opts.jsonSchema === undefined) return undefined;
  const { readFile } = await import('node:fs/promises');
  const { Grammar } = await import('../grammar.js');
  if (opts.grammarFile !== undefined) {
    const flag = `--grammar-file ${opts.grammarFile}`;
    let gbnf: string;
    try {
      gbnf = await readFile(opts.grammarFile, 'utf8');
    } catch (error) {
      throw blame(flag, error);
    }
    try {
      return Grammar.compile(gbnf);
    } catch (error) {
      throw blame(flag, error);
    }
  }
  // Inline JSON starts with "{" (a schema is an object); anything else names a file.
  const value = opts.jsonSchema!;
  const inline = value.trimStart().startsWith('{');
  const flag = inline ? '--json-schema' : `--json-schema ${value}`;
  let text = value;
  if (!inline) {
    try {
      text = await readFile(value, 'utf8');
    } catch (error) {
      throw blame(flag, error);
    }
  }
  let schema: unknown;
  try {
    schema = JSON.parse(text);
  } catch (error) {
    throw blame(flag, `not valid JSON: ${(error as Error).message}`);
  }
  try {
    return Grammar.fromJsonSchema(schema as object);
  } catch (error) {
    throw blame(flag, error);
  }
}
