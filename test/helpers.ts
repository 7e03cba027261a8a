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
