// The f16 GGUF of huozi-tiny that tests, benchmarks and the quality report run on: converted by our own
// converter from the HF checkpoint in test/fixtures/huozi-tiny/hf (byte-identical to what llama.cpp's
// convert_hf_to_gguf.py writes; test/native/convert.test.ts checks it), once, into test/fixtures/.generated.
import { existsSync, mkdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
export const f16Path = join(root, 'test', 'fixtures', '.generated', 'huozi-tiny-f16.gguf');

export async function ensureF16() {
  if (existsSync(f16Path)) return f16Path;
  mkdirSync(dirname(f16Path), { recursive: true });
  const { convert } = await import('../dist/index.js');
  await convert(join(root, 'test', 'fixtures', 'huozi-tiny', 'hf'), f16Path, { outType: 'f16' });
  return f16Path;
}
