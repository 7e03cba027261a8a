// huozi-gguf inspect: what a GGUF holds, from its header alone; with --memory, what loading it would take.
import type { Command } from 'commander';
import type { GgufInspection } from '../gguf/inspect.js';
import { addFlags, cliPlacement, ctxSizeFlag, gpuLayersFlag, PLACEMENT_FLAGS, switchFlag, type FlagValues } from './flags.js';

const INSPECT_FLAGS = [
  switchFlag('json', '--json', 'machine-readable output'),
  switchFlag('tensors', '--tensors', 'list every tensor'),
  switchFlag('memory', '--memory', 'estimate memory per device (weights, KV cache, compute) without loading'),
  gpuLayersFlag.describe('with --memory: layers on the GPU, "max", or "auto": the plan loading would choose (also -ngl)'),
  ...PLACEMENT_FLAGS,
  ctxSizeFlag.describe('with --memory: context size').default(4096),
] as const;

type InspectOptions = FlagValues<typeof INSPECT_FLAGS>;

export function register(program: Command): void {
  addFlags(
    program
      .command('inspect')
      .description('show what a GGUF file holds (shape, vocabulary, tensor types), reading only its header')
      .argument('<model>', 'GGUF file'),
    INSPECT_FLAGS,
  ).action((path: string, opts: InspectOptions) => inspectCommand(path, opts));
}

const GiB = 2 ** 30;
const MiB = 2 ** 20;

function size(bytes: number): string {
  return bytes >= GiB ? `${(bytes / GiB).toFixed(2)} GiB` : `${(bytes / MiB).toFixed(2)} MiB`;
}

function count(n: number): string {
  return n >= 1e9 ? `${(n / 1e9).toFixed(2)} B` : n >= 1e6 ? `${(n / 1e6).toFixed(2)} M` : String(n);
}

function templateCheck(check: GgufInspection['chatTemplate']['check']): string {
  if (!check) return '';
  if (check.ok) return `, renders a probe conversation${check.systemRole ? '' : ' (without a system message: it refuses one)'}`;
  return `, FAILS a probe conversation: ${check.message}`;
}

export function formatInspection(i: GgufInspection, withTensors: boolean): string {
  const s = i.shape;
  const show = (x: unknown) => (x === null || x === undefined ? '-' : String(x));
  const lines = [
    `file           ${i.path}`,
    `size           ${size(i.fileSize)} (${i.fileSize} bytes), GGUF v${i.version}, alignment ${i.alignment}`,
    `architecture   ${show(i.architecture)}${i.name ? ` (${i.name})` : ''}`,
    `file type      ${show(i.fileType)}`,
    `parameters     ${count(i.parameters)} (${i.parameters}), ${size(i.tensorBytes)} of tensors, ${i.bitsPerWeight.toFixed(2)} bits per weight`,
    `layers         ${show(s.layers)}`,
    `embedding      ${show(s.embeddingSize)}, feed-forward ${show(s.expertFeedForwardSize ?? s.feedForwardSize)}`,
    `attention      ${show(s.heads)} heads, ${show(s.kvHeads)} KV heads, head size ${show(s.headSize)}`,
    `experts        ${s.experts ? `${s.experts}, ${show(s.expertsUsed)} used per token` : 'none (dense)'}`,
    `context        ${show(s.contextLength)} tokens (trained)`,
    `rope           base ${show(s.ropeFreqBase)}, ${show(s.ropeDimensions)} dimensions; rms eps ${show(s.rmsNormEpsilon)}`,
    `vocabulary     ${show(i.vocabulary.size)} tokens (${show(i.vocabulary.model)}), bos ${show(i.vocabulary.bos)}, eos ${show(i.vocabulary.eos)}, add bos ${show(i.vocabulary.addBos)}`,
    `special        ${Object.entries(i.vocabulary.special).map(([t, id]) => `${t}=${id}`).join(' ') || '-'}${
      i.vocabulary.specialCount > Object.keys(i.vocabulary.special).length ? ` (the first ${Object.keys(i.vocabulary.special).length} of ${i.vocabulary.specialCount})` : ''}`,
    `chat template  ${i.chatTemplate.present ? `yes (${i.chatTemplate.length} characters)${templateCheck(i.chatTemplate.check)}` : 'none in the file'}`,
    'tensor types',
    ...i.quantization.map(
      (q) => `  ${q.type.padEnd(8)} ${String(q.tensors).padStart(5)} tensors ${count(q.parameters).padStart(10)} params ${size(q.bytes).padStart(11)}`,
    ),
  ];
  if (withTensors) {
    lines.push('tensors');
    for (const t of i.tensors) lines.push(`  ${t.name.padEnd(36)} ${t.type.padEnd(8)} ${t.dims.join(' x ').padEnd(24)} ${size(t.bytes)}`);
  }
  return `${lines.join('\n')}\n`;
}

/** A placement, as `inspect --memory` prints it: who chose it, the rules, and what it reads from host memory. */
export function formatPlan(plan: import('../gpu.js').GpuPlan): string[] {
  const gb = size;
  const cost = (c: import('../placement.js').PlacementCost) =>
    `${gb(c.deviceBytes)} of weights on the GPU, ${gb(c.hostBytes)} in host memory, ${gb(c.hostBytesPerToken)} read from host memory per generated token`;
  const lines = [
    ...(plan.cost.deviceBytes === 0 ? ['no GPU or RPC device here: llama.cpp keeps every weight in host memory, whatever the layers say'] : []),
    `placement (${plan.chosenBy === 'fit' ? `--ngl auto${plan.budgetMiB === undefined ? '' : `, budget ${JSON.stringify(plan.budgetMiB)} MiB`}, ${plan.status}` : 'from the options'}): ` +
      `${plan.gpuLayers < 0 ? 'all' : plan.gpuLayers} layers on the GPU, ${plan.overrides.length} tensor rule(s)`,
    ...plan.overrides.map((o) => `  ${o.pattern} -> ${o.buffer}`),
    `  ${cost(plan.cost)}`,
  ];
  for (const c of plan.candidates ?? []) {
    lines.push(`  weighed: ${c.family === 'experts' ? 'experts in host memory first' : 'whole layers'} (${c.gpuLayers < 0 ? 'all' : c.gpuLayers} layers, ${c.overrides.length} rules): ${gb(c.cost.hostBytesPerToken)} per token`);
  }
  return lines;
}

export async function inspectCommand(path: string, opts: InspectOptions): Promise<void> {
  if (opts.memory) {
    const { planMemory } = await import('../gpu.js');
    const placement = cliPlacement(opts, opts.ctxSize);
    const { plan, devices } = await planMemory(path, { ...placement, contextSize: opts.ctxSize });
    if (opts.json) {
      process.stdout.write(`${JSON.stringify({ plan: plan ?? null, devices }, null, 2)}\n`);
      return;
    }
    const m = (b: number) => `${(b / MiB).toFixed(0).padStart(8)} MiB`;
    const layers = (n: number) => (n < 0 ? 'all' : String(n));
    const lines = [
      `memory for ${path} with ${layers(plan?.gpuLayers ?? (placement.gpuLayers === 'max' ? -1 : (placement.gpuLayers as number)))} layers on the GPU and a context of ${opts.ctxSize} (llama.cpp's accounting, nothing loaded):`,
      `  ${'device'.padEnd(10)} ${'weights'.padStart(12)} ${'KV cache'.padStart(12)} ${'compute'.padStart(12)} ${'total'.padStart(12)}   free now`,
      ...devices.map((r) => `  ${r.name.padEnd(10)} ${m(r.model)} ${m(r.context)} ${m(r.compute)} ${m(r.total)}   ${r.deviceTotal ? m(r.deviceFree) : '-'}`),
    ];
    if (plan) lines.push(...formatPlan(plan));
    process.stdout.write(`${lines.join('\n')}\n`);
    return;
  }
  const { inspect } = await import('../gguf/inspect.js');
  const info = await inspect(path);
  if (opts.json) {
    const { tensors, ...rest } = info;
    process.stdout.write(`${JSON.stringify(opts.tensors ? info : rest, null, 2)}\n`);
  } else {
    process.stdout.write(formatInspection(info, opts.tensors));
  }
}
