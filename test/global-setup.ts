// Runs once before the suite: converts the fixture's HF checkpoint to the f16 GGUF the tests use.
import { ensureF16 } from '../scripts/fixture.mjs';

export default async function setup(): Promise<void> {
  await ensureF16();
}
