// JSON answers: a grammar-constrained answer becomes a value only when its text is complete JSON. The grammar
// guarantees the shape of what was generated, not that generation reached the end of it: maxTokens, a full
// context or a stop string can cut it anywhere, and a half value must never pass for a whole one.
import { HuoziError } from '../errors.js';
import type { GenerationResult, StopReason } from '../generation.js';

/**
 * A constrained answer (from {@link ChatSession.promptJson}, or a turn of a tool conversation) that is not a
 * complete value: `reason` `incomplete` when generation was cut before the JSON ended (`maxTokens`, a full
 * context, a stop string; `result.stopReason` says which), `invalid` when the text does not parse or is not
 * the shape the turn allows. `text` is what was generated; the answer joined the history as that text, as an
 * aborted answer does.
 */
export class ChatAnswerError extends HuoziError {
  readonly reason: 'incomplete' | 'invalid';
  readonly text: string;
  readonly result: GenerationResult | undefined;
  constructor(
    message: string,
    details: { reason: 'incomplete' | 'invalid'; text: string; result?: GenerationResult },
    options?: ErrorOptions,
  ) {
    super(message, 'ERR_HUOZI_CHAT_ANSWER', options);
    this.reason = details.reason;
    this.text = details.text;
    this.result = details.result;
  }
}

/** An answer that generation cut before its JSON ended (`result.stopReason` says why). */
export function incompleteAnswer(text: string, result: GenerationResult): ChatAnswerError {
  return new ChatAnswerError(`Cannot use the model's answer: it ended (${result.stopReason}) before its JSON was complete`, {
    reason: 'incomplete', text, result,
  });
}

/**
 * The value of a constrained answer's text. A text that does not parse is a {@link ChatAnswerError}: `invalid`
 * when the answer ended at end-of-generation (where its grammar ends), `incomplete` when anything else ended it
 * first (`maxTokens`, a full context, a stop string or token).
 */
export function parseJsonAnswer(text: string, stopReason: StopReason, result: GenerationResult): unknown {
  try {
    return JSON.parse(text);
  } catch (error) {
    if (stopReason !== 'eog') throw incompleteAnswer(text, result);
    throw new ChatAnswerError(`Cannot use the model's answer: it is not valid JSON (${(error as Error).message})`, {
      reason: 'invalid', text, result,
    }, { cause: error });
  }
}
