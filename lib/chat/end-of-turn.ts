import type { Model } from '../model.js';
import type { ChatTemplate } from './template.js';

/** How an assistant turn ends with a template on a model: the stop options every chat generation adds. */
export interface EndOfTurn {
  /** The template's end-of-turn texts that are special tokens of the model (`<|endofutterance|>`): they stop at the token. */
  stopTokens: number[];
  /** Its end-of-turn texts the vocabulary has no special token for: they stop where the text appears. */
  stopStrings: string[];
}

/**
 * The one place that decides where an assistant turn ends (ChatSession and the server's chat completions both
 * ask it): the template's `stopTexts`, as tokens where the model has them, as text otherwise.
 */
export function endOfTurn(model: Model, template: ChatTemplate): EndOfTurn {
  const stopTokens = new Set<number>();
  const stopStrings = new Set<string>();
  for (const text of template.stopTexts) {
    if (text.length === 0) continue;
    const id = model.specialTokens.get(text);
    if (id === undefined) stopStrings.add(text);
    else stopTokens.add(id);
  }
  return { stopTokens: [...stopTokens], stopStrings: [...stopStrings] };
}
