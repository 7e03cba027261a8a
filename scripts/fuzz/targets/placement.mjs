// Fuzz target "placement": loadModel's and planMemory's placement options (issue #17) as a caller, a command
// line or a request could pass them: tensorOverrides patterns (regex syntax fragments, catastrophic backtracking,
// nesting, lookbehind, NUL, huge), device names, cpuMoe values and fit budgets, random and mutated. Each case asks
// planMemory() on the demo model; one in ten also loads it with the options and generates two tokens.
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { demoModelPath, expertPattern, loadModel, ModelLoadError, planMemory } from '../../../dist/index.js';
import { prng } from '../mutate.mjs';
import { clean, unexpected } from '../outcome.mjs';

export const title = 'placement options: tensor override patterns and devices, cpuMoe, fit budgets, random and mutated';

export const description = `Each case is a set of placement options for the demo model, seeded: tensorOverrides
with patterns built from regex fragments (groups, alternations, classes, quantifiers nested up to 64 deep,
backreferences, lookarounds, anchors, escapes, Unicode, NUL, up to 100,000 characters), patterns that backtrack
exponentially (\`(a+)*\`, \`(.*)*x\`), llama.cpp's own expert patterns mutated, device names real and not (\`CPU\`,
\`CUDA0\`, empty, NUL, long); cpuMoe from -1 to 2^53 and odd types; gpuLayers 'auto' with fit budgets (numbers,
per-device maps, negative, NaN). Each is passed to planMemory(); one case in ten also to loadModel(), which then
generates two tokens. Clean outcomes: a plan (and a load that generates), or a TypeError/RangeError naming the
option, or a ModelLoadError naming the device or the pattern llama.cpp's std::regex refuses.`;

export const classes = {
  planned: 'planMemory answered a plan',
  'planned, loaded, generated': 'planMemory answered, loadModel loaded with the options and generated two tokens',
  'rejected: TypeError': 'an argument error (`ERR_INVALID_ARG_TYPE`) naming the option',
  'rejected: RangeError': 'an argument error (`ERR_OUT_OF_RANGE`) naming the option: a pattern that matches no tensor, backtracks, nests too deep; cpuMoe beyond the layers',
  'rejected: ModelLoadError': 'llama.cpp cannot take it: a device this machine lacks, a pattern std::regex refuses',
};

const FRAGMENTS = [
  'blk', '\\.', '.', '*', '+', '?', '{2}', '{1,3}', '{2,}', '(', ')', '(?:', '(?=', '(?<=', '(?!', '|', '[0-9]', '[^a]', '[', ']', '^', '$',
  '\\d', '\\w', '\\s', '\\b', '\\1', '\\', 'ffn_', 'up', 'down', 'gate', 'exps', 'attn_', 'output', 'token_embd', 'weight', '_', '中文', '\u0000',
  '\uD800', '(a+)*', '(.*)*', '(a|ab)*', '.*', '.+', '\\p{L}', '(?<n>x)', '\\k<n>',
];
const DEVICES = ['CPU', 'CPU', 'CPU', 'CUDA0', 'CUDA_Host', 'cpu', '', 'RPC0[127.0.0.1:1]', 'CPU\u0000CUDA0', 'X'.repeat(5000), 'CPU_REPACK', 'AMX'];

function pickOf(rand) {
  return (xs) => xs[Math.floor(rand() * xs.length)];
}

function pattern(rand) {
  const pick = pickOf(rand);
  const kind = Math.floor(rand() * 5);
  if (kind === 0) return expertPattern(rand() < 0.5 ? undefined : Math.floor(rand() * 8) - 2);
  if (kind === 1) {
    // llama.cpp's pattern with a span cut, repeated or replaced.
    const base = expertPattern(Math.floor(rand() * 4));
    const at = Math.floor(rand() * base.length);
    const len = Math.floor(rand() * 6);
    return base.slice(0, at) + (rand() < 0.5 ? pick(FRAGMENTS) : base.slice(at, at + len).repeat(1 + Math.floor(rand() * 4))) + base.slice(at + len);
  }
  if (kind === 2) {
    const depth = pick([2, 8, 31, 32, 33, 64]);
    return `${'('.repeat(depth)}ffn${')'.repeat(rand() < 0.9 ? depth : depth - 1)}${pick(['', '*', '+', '{2}'])}`;
  }
  if (kind === 3) return pick(['a'.repeat(1025), 'x'.repeat(100000), '(a+)*b', '(.*)*x', '(\\w|\\w\\w)+$', '.*.*.*.*.*_exps', '^(blk\\.)+', '']);
  return Array.from({ length: 1 + Math.floor(rand() * 12) }, () => pick(FRAGMENTS)).join('');
}

function options(rand) {
  const pick = pickOf(rand);
  const o = {};
  if (rand() < 0.7) {
    o.tensorOverrides = Array.from({ length: 1 + Math.floor(rand() * 3) }, () => ({ pattern: pattern(rand), device: pick(DEVICES) }));
    if (rand() < 0.05) o.tensorOverrides = pick([{ pattern: 'x', device: 'CPU' }, 'ffn=CPU', [null], [{ pattern: 1, device: 'CPU' }], [{ pattern: 'ffn', device: 'CPU', extra: 1 }]]);
  }
  if (rand() < 0.4) o.cpuMoe = pick([0, 1, 2, 4, 5, 'all', -1, 1.5, 2 ** 53, NaN, 'most', null, true]);
  if (rand() < 0.3) o.gpuLayers = pick(['max', 0, 2, 99, 'auto', -1]);
  if (rand() < 0.2) {
    o.gpuLayers = 'auto';
    delete o.tensorOverrides;
    delete o.cpuMoe;
    o.fit = pick([{ budgetMiB: 8192 }, { budgetMiB: 0 }, { budgetMiB: -5 }, { budgetMiB: NaN }, { budgetMiB: { CUDA0: 100 } }, { budgetMiB: { CPU: 1 } }, { budgetMiB: '8G' }, { budget: 1 }, { budgetMiB: 1e300, marginMiB: 0 }]);
  }
  return o;
}

export async function setup(workDir) {
  return { workDir };
}

export function makeCase(state, seed, index) {
  const rand = prng(seed ^ 0x2c1b3c6d);
  const o = options(rand);
  const kinds = [];
  if (o.tensorOverrides) kinds.push(Array.isArray(o.tensorOverrides) ? `${o.tensorOverrides.length} override(s)` : 'overrides not an array');
  if ('cpuMoe' in o) kinds.push(`cpuMoe ${String(o.cpuMoe)}`);
  if (o.fit) kinds.push('fit budget');
  const load = index % 10 === 0;
  if (load) kinds.push('load');
  const path = join(state.workDir, `case-${index % 2}.json`);
  // NaN does not survive JSON: marked and restored.
  writeFileSync(path, JSON.stringify({ o, load }, (_, x) => (Number.isNaN(x) ? '__NaN__' : x)));
  return { path, kinds };
}

const ARGUMENT_CODES = ['ERR_INVALID_ARG_TYPE', 'ERR_INVALID_ARG_VALUE', 'ERR_OUT_OF_RANGE'];

function rejected(error) {
  if ((error instanceof TypeError || error instanceof RangeError) && ARGUMENT_CODES.includes(error.code)) return clean(`rejected: ${error.name}`, error.message);
  if (error instanceof ModelLoadError) return clean('rejected: ModelLoadError', error.message);
  return undefined;
}

export async function runCase(path) {
  const { o, load } = JSON.parse(readFileSync(path, 'utf8'), (_, x) => (x === '__NaN__' ? NaN : x));
  try {
    const plan = await planMemory(demoModelPath, { ...o, contextSize: 256 });
    if (!Array.isArray(plan.devices)) return unexpected(new Error('planMemory answered no devices'), 'plan');
  } catch (error) {
    return rejected(error) ?? unexpected(error, 'plan');
  }
  if (!load) return clean('planned');
  try {
    const model = await loadModel(demoModelPath, o);
    try {
      const context = await model.createContext({ contextSize: 128, threads: 1 });
      const r = await context.generate([1, 500], { temperature: 0, maxTokens: 2, stopAtEog: false }).result;
      await context.dispose();
      if (r.tokens.length !== 2) return unexpected(new Error(`generated ${r.tokens.length} tokens`), 'generate');
    } finally {
      await model.dispose();
    }
  } catch (error) {
    return rejected(error) ?? unexpected(error, 'load');
  }
  return clean('planned, loaded, generated');
}
