// How a fuzz case's outcome is counted (scripts/fuzz/targets/*.mjs use it; test/native/fuzz.test.ts checks the
// rule itself). A target's runCase returns { result: 'clean', class } for an acceptable outcome or
// { result: 'unexpected', name, code, message, stack } for anything else; the parent adds 'signal', 'timeout',
// 'exit' (the worker died) and 'rss' (the worker went over --max-rss-mb).
import { GgufError, ModelLoadError } from '../../dist/index.js';

/** A clean outcome of class `cls` (e.g. 'rejected: GgufError', 'loaded'), with an optional detail message. */
export function clean(cls, message) {
  return message === undefined ? { result: 'clean', class: cls } : { result: 'clean', class: cls, message: String(message).slice(0, 200) };
}

/** An unexpected outcome from `error` (thrown at `stage`): a failure the parent reports with its stack. */
export function unexpected(error, stage) {
  return {
    result: 'unexpected',
    stage,
    name: error?.name,
    code: error?.code,
    message: String(error?.message ?? error).slice(0, 200),
    stack: String(error?.stack ?? '').split('\n').slice(1, 4).map((l) => l.trim()).join(' | '),
  };
}

/**
 * The outcome of an error from loading a GGUF at `stage` ('load': loadModel or inspect, 'run': a context,
 * tokenization, generation):
 *   rejected: GgufError       from loading: our reader/validator refused the file before llama.cpp saw it
 *   rejected: ModelLoadError  from loading: llama.cpp's loader refused it (the only error that counts as
 *                             llama.cpp's refusal); with `raw` (the addon called directly) its untyped
 *                             equivalent, code ERR_HUOZI_MODEL_LOAD
 *   unexpected                anything else: a TypeError or other bug of our own, a typed error of another
 *                             kind, any error once the model loaded. A failure.
 */
export function classify(error, stage, { raw = false } = {}) {
  if (stage === 'load' && !raw && error instanceof GgufError) return clean('rejected: GgufError', error.message);
  if (stage === 'load' && !raw && error instanceof ModelLoadError) return clean('rejected: ModelLoadError', error.message);
  if (stage === 'load' && raw && error?.code === 'ERR_HUOZI_MODEL_LOAD') return clean('rejected: ModelLoadError', error.message);
  return unexpected(error, stage);
}
