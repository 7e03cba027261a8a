import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const root = join(dirname(fileURLToPath(import.meta.url)), '..');
export const fixtureDir = join(root, 'test', 'fixtures', 'huozi-tiny');
/** huozi-tiny in f16, as our converter writes it from hf/ (test/global-setup.ts; byte-identical to llama.cpp's). */
export const f16Path = join(root, 'test', 'fixtures', '.generated', 'huozi-tiny-f16.gguf');
export const demoPath = join(root, 'models', 'huozi-tiny-q4_0.gguf');

export interface Reference {
  vocab_size: number;
  special: Record<string, number>;
  greedy: { prompt: string; prompt_ids: number[]; output_ids: number[]; output_text: string; top2_margins: number[] }[];
  teacher_forced: { ids: number[]; last_logits: number[]; top5_ids: number[][]; top5_logits: number[][] }[];
  tokenize: { text: string; ids: number[] }[];
}

export const reference: Reference = JSON.parse(readFileSync(join(fixtureDir, 'reference.json'), 'utf8'));

export const EOU = 2049;

/** Number of leading steps whose top-1/top-2 margin is at least `min` (where any runtime must agree). */
export function confidentPrefix(margins: number[], min = 0.1): number {
  const i = margins.findIndex((m) => m < min);
  return i === -1 ? margins.length : i;
}

/** The two highest logits of a row: ids and values (ties: the lower id first, as llama.cpp's greedy pick). */
export function topTwo(row: ArrayLike<number>): { first: number; second: number } {
  let first = 0;
  let second = -1;
  for (let t = 1; t < row.length; t++) {
    if (row[t] > row[first]) {
      second = first;
      first = t;
    } else if (second < 0 || row[t] > row[second]) {
      second = t;
    }
  }
  return { first, second };
}

/**
 * How far our logits may move a top-1/top-2 margin from HF's fp32 one. Our f16 GGUF against HF fp32, teacher-
 * forced along every `reference.greedy` answer, on an AMD EPYC with AVX-512: at most 0.0151 with the source build
 * and the prebuild's zen4 kernels (greedy[3] step 38), 0.0155 with its haswell (AVX2) kernels (greedy[2] step 32);
 * about three times that. A margin is a difference of two logits, so it moves by at most twice the largest logit
 * error: this bounds that too.
 */
export const GREEDY_MARGIN_TOLERANCE = 0.05;

export interface GreedyComparison {
  /** Steps of HF's answer checked teacher-forced: always all of them. */
  steps: number;
  /** Leading tokens of our free-running generation equal to HF's. */
  agreeing: number;
  /** Where our generation left HF's answer, if it did, and what made that legitimate. */
  divergence?: string;
  /** The largest |our margin - HF's margin| where we pick HF's token, and its step. */
  worstMarginDiff: number;
  worstStep: number;
  /** Everything that did not hold; empty when the comparison passes. */
  problems: string[];
}

/**
 * Compares a greedy answer with HF's reference answer `hf` (its tokens and top-2 margins), step by step.
 * `rows(i)` are our logits teacher-forced on HF's path (prompt + hf.output_ids[0..i-1]); `generated` is what
 * our greedy generation produced from the same prompt.
 *
 * At every step, teacher-forced:
 * - where our top-1 is HF's token, our top-1/top-2 margin is HF's within `tolerance`;
 * - where it is not, the two must be a near-tie HF's own margin shows: HF's margin plus ours (ours over HF's
 *   token) is at most `tolerance`, and our token is HF's second best. reference.json has no second-best ids,
 *   so that is derived: HF's second best s has HF(h) - HF(s) = margin, so with every logit within
 *   tolerance/2 of HF's ours has R(h) - R(s) <= margin + tolerance; when exactly one token other than h is
 *   that close to R(h), it is s. When several are (a three-way near-tie), the check is the one that can be
 *   derived: HF's own logit for our token is within `tolerance` of HF's top; the divergence note says so.
 * The free-running generation must equal HF's answer up to the first step where it differs; there (the
 * context is still HF's path, so the teacher-forced row applies) the same near-tie rule holds for our token.
 * After a divergence the generation is on its own path, which HF's reference does not cover; the teacher-
 * forced steps still check every later step against HF.
 */
export function compareGreedyWithHf(
  hf: { output_ids: number[]; top2_margins: number[] },
  generated: ArrayLike<number>,
  rows: (step: number) => ArrayLike<number>,
  tolerance = GREEDY_MARGIN_TOLERANCE,
): GreedyComparison {
  const problems: string[] = [];
  const steps = hf.output_ids.length;
  let worstMarginDiff = 0;
  let worstStep = -1;
  // Why `token` (not HF's h) is a legitimate pick at step i, or what is wrong with it.
  const nearTie = (i: number, row: ArrayLike<number>, token: number): { problem?: string; note: string } => {
    const h = hf.output_ids[i];
    const margin = hf.top2_margins[i];
    const lead = row[token] - row[h]; // ours over HF's token: about 0 or more for a token we picked
    if (lead < -tolerance) {
      return { problem: `step ${i}: ${token} is ${(-lead).toFixed(4)} below HF's ${h} in our logits, more than ${tolerance}`, note: 'not a near-tie' };
    }
    if (margin + lead > tolerance) {
      return { problem: `step ${i}: ${token} instead of HF's ${h} is no near-tie: HF's margin ${margin.toFixed(4)} + ours ${lead.toFixed(4)} > ${tolerance}`, note: 'not a near-tie' };
    }
    const close: number[] = [];
    for (let t = 0; t < row.length; t++) if (t !== h && row[t] >= row[h] - margin - tolerance) close.push(t);
    if (close.length === 1 && close[0] === token) return { note: `${token} is HF's second best` };
    // Three or more tokens within HF's margin: which one is HF's second best cannot be told from our logits,
    // but HF's own logit for ours is within `tolerance` of HF's top (HF(h) - HF(t) <= R(h) - R(t) + tolerance).
    return { note: `HF's second best is one of ${close.join(', ')}; HF scores ${token} within ${(margin + lead).toFixed(4)} of its top` };
  };
  for (let i = 0; i < steps; i++) {
    const row = rows(i);
    const { first, second } = topTwo(row);
    if (first === hf.output_ids[i]) {
      const diff = Math.abs(row[first] - row[second] - hf.top2_margins[i]);
      if (diff > worstMarginDiff) {
        worstMarginDiff = diff;
        worstStep = i;
      }
      if (diff > tolerance) problems.push(`step ${i}: margin ${(row[first] - row[second]).toFixed(4)}, HF's ${hf.top2_margins[i].toFixed(4)}`);
    } else {
      const { problem } = nearTie(i, row, first);
      if (problem) problems.push(`teacher-forced ${problem}`);
    }
  }
  let agreeing = 0;
  while (agreeing < steps && agreeing < generated.length && generated[agreeing] === hf.output_ids[agreeing]) agreeing++;
  let divergence: string | undefined;
  if (agreeing < steps) {
    if (agreeing === generated.length) {
      problems.push(`generation stopped after ${agreeing} tokens, HF's answer has ${steps}`);
    } else {
      const token = generated[agreeing];
      const { problem, note } = nearTie(agreeing, rows(agreeing), token);
      if (problem) problems.push(`generation ${problem}`);
      divergence = `step ${agreeing}: ${token} where HF has ${hf.output_ids[agreeing]} (HF's margin ${hf.top2_margins[agreeing].toFixed(4)}; ${note})`;
    }
  } else if (generated.length !== steps) {
    problems.push(`generation has ${generated.length} tokens, HF's answer ${steps}`);
  }
  return { steps, agreeing, divergence, worstMarginDiff, worstStep, problems };
}

/**
 * Our logits teacher-forced on HF's answer `hf` to the prompt: row(i) is what follows prompt + the first i
 * tokens of HF's answer, for the first `steps` steps. Clears the context and evaluates in one batch.
 */
export async function teacherForcedRows(
  context: { clear(): Promise<void>; evaluate(tokens: number[], options: { logits: 'all' }): Promise<Float32Array | undefined> },
  vocabularySize: number,
  hf: { prompt_ids: number[]; output_ids: number[] },
  steps = hf.output_ids.length,
): Promise<(step: number) => Float32Array> {
  await context.clear();
  const all = await context.evaluate([...hf.prompt_ids, ...hf.output_ids.slice(0, steps - 1)], { logits: 'all' });
  const first = hf.prompt_ids.length - 1;
  return (step) => {
    if (step < 0 || step >= steps) throw new RangeError(`step ${step} is outside the ${steps} teacher-forced steps`);
    return all!.subarray((first + step) * vocabularySize, (first + step + 1) * vocabularySize);
  };
}
