// How a fuzz case's error is counted (scripts/fuzz/child.mjs; test/native/fuzz.test.ts checks the rule itself).
import { GgufError, ModelLoadError } from '../../dist/index.js';

/**
 * The outcome of an error thrown at `stage` ('load': loadModel, 'run': a context, tokenization, generation):
 *   rejected-by-us     GgufError from loadModel: our reader/validator refused the file before llama.cpp saw it
 *   rejected-by-llama  ModelLoadError from loadModel: llama.cpp's loader refused it (the only error that counts
 *                      as llama.cpp's refusal); with `raw` (the addon called directly) its untyped equivalent,
 *                      code ERR_HUOZI_MODEL_LOAD
 *   unexpected         anything else: a TypeError or other bug of our own, a typed error of another kind, any
 *                      error once the model loaded. A failure.
 */
export function classify(error, stage, { raw = false } = {}) {
  const detail = {
    stage,
    name: error?.name,
    code: error?.code,
    message: String(error?.message ?? error).slice(0, 200),
    stack: String(error?.stack ?? '').split('\n').slice(1, 4).map((l) => l.trim()).join(' | '),
  };
  let result = 'unexpected';
  if (stage === 'load' && !raw && error instanceof GgufError) result = 'rejected-by-us';
  else if (stage === 'load' && !raw && error instanceof ModelLoadError) result = 'rejected-by-llama';
  else if (stage === 'load' && raw && error?.code === 'ERR_HUOZI_MODEL_LOAD') result = 'rejected-by-llama';
  return { result, ...detail };
}
