// Where a model's tensors live: llama.cpp's --cpu-moe / --n-cpu-moe (MoE expert tensors kept in host memory) and
// -ot/--override-tensor (a pattern of tensor names → a device), checked against the file's own tensor names
// before anything is loaded. loadModel, estimateMemory and the CLI take the same options through here.
import * as v from './validate.js';

/** A tensor placement rule: tensors whose name matches `pattern` (a regular expression, searched) go to `device`. */
export interface TensorOverride {
  /** A regular expression searched in each tensor's name, as llama.cpp's `-ot` (e.g. `blk\.1[0-9]\.ffn_.*_exps`). */
  pattern: string;
  /** A device by name, as `devices()` lists them (`CPU`, `CUDA0`, ...), or one of its buffer types (`CUDA_Host`). */
  device: string;
}

/** The placement options loadModel and estimateMemory share. */
export interface PlacementOptions {
  /**
   * MoE expert tensors kept in host memory, computed by the CPU: the experts of the first `n` layers (llama.cpp
   * `--n-cpu-moe n`), or of every layer with `'all'` (`--cpu-moe`). Everything else of those layers (attention,
   * router, norms) stays where `gpuLayers` puts it. A model without expert tensors refuses it. Default: none.
   */
  cpuMoe?: number | 'all';
  /**
   * Tensors placed on a device of your choice (llama.cpp `-ot pattern=device`), checked in order, the first
   * matching rule winning, before `cpuMoe`'s. A pattern that matches no tensor of the file is an error naming it.
   */
  tensorOverrides?: TensorOverride[];
}

/** How long and how deeply nested a tensor pattern may be (llama.cpp's std::regex recurses per level), and how many rules a load may have. */
export const PATTERN_LIMITS = Object.freeze({ length: 1024, depth: 32, rules: 128 });

/**
 * Why matching `pattern` could take exponential (or high-polynomial) time, or '' when it cannot: both this process
 * (JavaScript's RegExp, checking the rules against the file) and llama.cpp (C++'s recursive std::regex, per tensor)
 * backtrack, and a tensor pattern comes from a flag or a request. Tensor names are short (~30 characters), so what
 * is refused is what multiplies: a quantified group that itself contains a quantifier, an alternation or a group
 * (`(a+)*`, `(a|ab)*`), and more than four unbounded quantifiers (`.*` five times is 30^5 steps).
 */
export function backtrackingRisk(pattern: string): string {
  const stack: { quantifier: boolean; alternation: boolean; group: boolean }[] = [];
  let unbounded = 0;
  let inClass = false;
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i];
    if (c === '\\') {
      i++;
      continue;
    }
    if (inClass) {
      if (c === ']') inClass = false;
      continue;
    }
    const top = stack.at(-1);
    if (c === '[') inClass = true;
    else if (c === '(') {
      if (top) top.group = true;
      stack.push({ quantifier: false, alternation: false, group: false });
      // (?:...), (?=...), (?!...), (?<name>...): the ? is part of the group's syntax, not a quantifier.
      if (pattern[i + 1] === '?') i += 2;
    } else if (c === ')') {
      const inner = stack.pop();
      const rest = pattern.slice(i + 1);
      // A group that repeats: *, +, {n,} or {n,m} with m > 1 (? and {0,1} only make it optional).
      const braces = /^\{(\d*)(,(\d*))?\}/.exec(rest);
      const quantified = rest[0] === '*' || rest[0] === '+' || (braces !== null && (braces[2] === undefined ? Number(braces[1]) > 1 : braces[3] === '' || Number(braces[3]) > 1));
      if (inner && quantified && (inner.quantifier || inner.alternation || inner.group)) {
        return 'a quantified group holding a quantifier, an alternation or another group';
      }
      if ((quantified || rest[0] === '?' || braces !== null) && stack.at(-1)) stack.at(-1)!.quantifier = true;
    } else if (c === '|') {
      if (top) top.alternation = true;
    } else if (c === '*' || c === '+' || c === '?' || c === '{') {
      if (top) top.quantifier = true;
      if (c === '*' || c === '+' || (c === '{' && /^\{\d*,\}/.test(pattern.slice(i)))) unbounded++;
    }
  }
  return unbounded > 4 ? 'more than 4 unbounded quantifiers (*, +, {n,})' : '';
}

/** llama.cpp's name for a layer's expert tensors (common/arg.cpp `llm_ffn_exps_block_regex`). */
export function expertPattern(layer?: number): string {
  return `${layer === undefined ? 'blk\\.\\d+' : `blk\\.${layer}`}\\.ffn_(up|down|gate_up|gate)_(ch|)exps`;
}

/** @internal A native override: the pattern and the buffer or device name the addon resolves. */
export interface NativeOverride {
  pattern: string;
  buffer: string;
}

/** @internal The placement options, checked for their form (`TypeError`/`RangeError`), before the file is read. */
export interface CheckedPlacement {
  cpuMoe: number | 'all' | undefined;
  tensorOverrides: TensorOverride[];
}

/** @internal Checks the form of `cpuMoe` and `tensorOverrides`. */
export function checkPlacement(o: PlacementOptions): CheckedPlacement {
  let cpuMoe: number | 'all' | undefined;
  if (o.cpuMoe !== undefined) cpuMoe = o.cpuMoe === 'all' ? 'all' : v.integer('cpuMoe', o.cpuMoe, 0, 100_000);
  const tensorOverrides: TensorOverride[] = [];
  if (o.tensorOverrides !== undefined) {
    if (!Array.isArray(o.tensorOverrides)) throw v.typeError('an array of { pattern, device }', 'tensorOverrides', o.tensorOverrides);
    // llama.cpp compiles every rule again for every tensor it loads: thousands of rules would take minutes.
    if (o.tensorOverrides.length > PATTERN_LIMITS.rules) {
      throw v.rangeError(`at most ${PATTERN_LIMITS.rules} rules`, 'tensorOverrides', `${o.tensorOverrides.length} rules`);
    }
    o.tensorOverrides.forEach((entry: unknown, i) => {
      const name = `tensorOverrides[${i}]`;
      const e = v.options<TensorOverride>(name, entry, ['pattern', 'device']);
      const pattern = v.string(`${name}.pattern`, e.pattern, { allowEmpty: false });
      const device = v.string(`${name}.device`, e.device, { allowEmpty: false });
      // llama.cpp reads both as C strings: text after a NUL would be silently dropped.
      if (pattern.includes('\0')) throw v.rangeError('a pattern without NUL characters', `${name}.pattern`, pattern);
      if (device.includes('\0')) throw v.rangeError('a device name without NUL characters', `${name}.device`, device);
      // llama.cpp compiles each pattern with std::regex, which recurses per nesting level: bounded here.
      if (pattern.length > PATTERN_LIMITS.length) throw v.rangeError(`a pattern of at most ${PATTERN_LIMITS.length} characters`, `${name}.pattern`, `${pattern.slice(0, 40)}…`);
      let depth = 0;
      let deepest = 0;
      for (const c of pattern.replace(/\\./g, '')) {
        if (c === '(') deepest = Math.max(deepest, ++depth);
        else if (c === ')') depth--;
      }
      if (deepest > PATTERN_LIMITS.depth) throw v.rangeError(`a pattern nesting at most ${PATTERN_LIMITS.depth} groups`, `${name}.pattern`, pattern);
      const slow = backtrackingRisk(pattern);
      if (slow) throw v.rangeError(`a pattern without ${slow} (it can take exponential time to match)`, `${name}.pattern`, pattern);
      try {
        new RegExp(pattern);
      } catch (error) {
        throw v.rangeError(`a regular expression (${(error as Error).message})`, `${name}.pattern`, pattern);
      }
      tensorOverrides.push({ pattern, device });
    });
  }
  return { cpuMoe, tensorOverrides };
}

/**
 * @internal The native overrides for a file whose tensors are `tensorNames` and which has `layers` blocks: each
 * rule must match at least one tensor (a `RangeError` naming the first that matches none), `cpuMoe` must not
 * exceed the layers and needs expert tensors. The user's rules come first (the first match wins, as in llama.cpp).
 */
export function placementOverrides(p: CheckedPlacement, tensorNames: readonly string[], layers: number): NativeOverride[] {
  const out: NativeOverride[] = [];
  p.tensorOverrides.forEach(({ pattern, device }, i) => {
    const re = new RegExp(pattern);
    if (!tensorNames.some((n) => re.test(n))) {
      throw v.rangeError(`a pattern matching at least one of the model's ${tensorNames.length} tensors (e.g. ${JSON.stringify(tensorNames[0] ?? '')})`, `tensorOverrides[${i}].pattern`, pattern);
    }
    out.push({ pattern, buffer: device });
  });
  if (p.cpuMoe !== undefined && p.cpuMoe !== 0) {
    const experts = new RegExp(expertPattern());
    if (!tensorNames.some((n) => experts.test(n))) {
      throw v.rangeError('undefined or 0: this model has no MoE expert tensors', 'cpuMoe', p.cpuMoe);
    }
    if (p.cpuMoe === 'all') {
      out.push({ pattern: expertPattern(), buffer: 'CPU' });
    } else {
      if (p.cpuMoe > layers) throw v.rangeError(`'all' or at most the model's ${layers} layers`, 'cpuMoe', p.cpuMoe);
      for (let layer = 0; layer < p.cpuMoe; layer++) out.push({ pattern: expertPattern(layer), buffer: 'CPU' });
    }
  }
  return out;
}

/** @internal The layers (blocks) of a model, from its tensor names: one more than the highest `blk.N`. */
export function layerCount(tensors: readonly { name: string }[]): number {
  let most = -1;
  for (const { name } of tensors) {
    const m = /^blk\.(\d+)\./.exec(name);
    if (m) most = Math.max(most, Number(m[1]));
  }
  return most + 1;
}

/** What a placement leaves in host memory, and how much of it one generated token reads. */
export interface PlacementCost {
  /** Bytes of weights one generated token reads from host memory: every CPU-side tensor whole, but a MoE expert
   * tensor only for the experts a token uses (expertsUsed / experts of it), and the token embedding not at all
   * (one row is looked up). On a GPU host this decides generation speed: host memory is ~20x slower. */
  hostBytesPerToken: number;
  /** Bytes of weights in host memory (what a prompt's batches stream to the GPU, or compute on the CPU). */
  hostBytes: number;
  /** Bytes of weights on the GPUs. */
  deviceBytes: number;
}

/** @internal The shape the cost model needs: tensor names and sizes, layers, experts. */
export interface WeightLayout {
  tensors: readonly { name: string; bytes: number }[];
  layers: number;
  experts: number;
  expertsUsed: number;
}

/** @internal A GGUF's weight layout for {@link placementCost}. */
export function weightLayout(gguf: { metadata: Map<string, { value?: unknown; array?: unknown }>; tensors: readonly { name: string; bytes: bigint }[] }): WeightLayout {
  const arch = gguf.metadata.get('general.architecture')?.value;
  const count = (key: string) => {
    const x = gguf.metadata.get(`${String(arch)}.${key}`)?.value;
    return typeof x === 'number' ? x : typeof x === 'bigint' ? Number(x) : 0;
  };
  return {
    tensors: gguf.tensors.map((t) => ({ name: t.name, bytes: Number(t.bytes) })),
    layers: layerCount(gguf.tensors),
    experts: count('expert_count'),
    expertsUsed: count('expert_used_count'),
  };
}

/**
 * @internal Where llama.cpp puts each weight for `gpuLayers` and `overrides`, and what that costs: the last
 * `gpuLayers` layers go to the GPU (-1 or more than the layers: all, and the output layer), the token embedding
 * stays in host memory, and the first override whose pattern matches a tensor's name decides instead.
 */
export function placementCost(w: WeightLayout, gpuLayers: number, overrides: readonly NativeOverride[]): PlacementCost {
  const all = gpuLayers < 0 || gpuLayers > w.layers;
  const firstGpuLayer = all ? 0 : w.layers - gpuLayers;
  const rules = overrides.map((o) => ({ re: new RegExp(o.pattern), host: /^CPU/.test(o.buffer) }));
  const expert = new RegExp(expertPattern());
  const share = w.experts > 0 && w.expertsUsed > 0 ? w.expertsUsed / w.experts : 1;
  const cost: PlacementCost = { hostBytesPerToken: 0, hostBytes: 0, deviceBytes: 0 };
  for (const t of w.tensors) {
    const layer = /^blk\.(\d+)\./.exec(t.name);
    let host = layer ? Number(layer[1]) < firstGpuLayer : t.name.startsWith('token_embd') || !all;
    const rule = rules.find((r) => r.re.test(t.name));
    if (rule) host = rule.host;
    if (!host) {
      cost.deviceBytes += t.bytes;
      continue;
    }
    cost.hostBytes += t.bytes;
    if (t.name.startsWith('token_embd')) continue;
    cost.hostBytesPerToken += expert.test(t.name) ? t.bytes * share : t.bytes;
  }
  return cost;
}

/** How `gpuLayers: 'auto'` sizes its plan. */
export interface FitOptions {
  /** Tokens of context to leave room for. Default: 4096. */
  contextSize?: number;
  /** Free memory to leave on each GPU, in MiB. Default: 1024. */
  marginMiB?: number;
  /**
   * The most memory the plan may use on each GPU, in MiB, even when more is free (a card shared with other
   * work): one number for every GPU, or a map of device name (`CUDA0`, ...) to MiB (GPUs it does not name are
   * not capped). The plan also keeps `marginMiB` free. Default: no cap.
   */
  budgetMiB?: number | Record<string, number>;
}

/** @internal `fit.budgetMiB`: MiB for every GPU, or per device name. */
export function checkBudget(budget: unknown): number | Record<string, number> | undefined {
  if (budget === undefined) return undefined;
  if (typeof budget === 'number') return v.number('fit.budgetMiB', budget, 0);
  if (budget === null || typeof budget !== 'object' || Array.isArray(budget)) {
    throw v.typeError('a number of MiB or an object of device name → MiB', 'fit.budgetMiB', budget);
  }
  const out: Record<string, number> = {};
  for (const [name, mib] of Object.entries(budget)) out[name] = v.number(`fit.budgetMiB.${name}`, mib, 0);
  return out;
}

/** @internal A placement request, checked: gpuLayers, the manual placement, and fit's settings for 'auto'. */
export interface PlacementRequest {
  gpuLayers: number | 'auto';
  placement: CheckedPlacement;
  fitContext: number;
  fitMargin: number;
  fitBudget: number | Record<string, number> | undefined;
}

/**
 * @internal Checks gpuLayers, `fit` and the manual placement together, as loadModel and planMemory take them:
 * `fit` only with 'auto', and 'auto' without `cpuMoe` / `tensorOverrides` (it places the experts itself).
 */
export function checkPlacementRequest(gpuLayers: unknown, fit: unknown, o: PlacementOptions, contextSize: number): PlacementRequest {
  const layers = gpuLayers === undefined || gpuLayers === 'max' ? -1 : gpuLayers === 'auto' ? 'auto' : v.integer('gpuLayers', gpuLayers, 0, 100_000);
  const f = v.options<FitOptions>('fit', fit, ['contextSize', 'marginMiB', 'budgetMiB']);
  if (fit !== undefined && layers !== 'auto') {
    throw v.typeError("options for gpuLayers 'auto' (with a number or 'max' nothing is fitted)", 'fit', fit);
  }
  const placement = checkPlacement(o);
  if (layers === 'auto' && (placement.cpuMoe !== undefined || placement.tensorOverrides.length > 0)) {
    throw v.rangeError("a number or 'max' with cpuMoe or tensorOverrides ('auto' places the experts itself)", 'gpuLayers', gpuLayers);
  }
  return {
    gpuLayers: layers,
    placement,
    fitContext: f.contextSize === undefined ? contextSize : v.integer('fit.contextSize', f.contextSize, 1, 1 << 24),
    fitMargin: f.marginMiB === undefined ? 1024 : v.number('fit.marginMiB', f.marginMiB, 0),
    fitBudget: checkBudget(f.budgetMiB),
  };
}
