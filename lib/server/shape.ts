// OpenAI's response bodies for the two generation endpoints. /v1/chat/completions and /v1/completions answer
// the same generation in different shapes (a message or a delta with a role vs plain text, their own object
// names and id prefixes); each endpoint kind is one object here behind the same interface, so that the code
// streaming a generation never asks which endpoint it serves.
import { randomBytes } from 'node:crypto';
import type { GenerationResult, StopReason } from '../generation.js';

/** OpenAI's `usage`, with the prompt tokens a slot's cache held as `cached_tokens`. */
export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  prompt_tokens_details: { cached_tokens: number };
}

export function usageOf(result: GenerationResult): Usage {
  return {
    prompt_tokens: result.promptTokens,
    completion_tokens: result.tokens.length,
    total_tokens: result.promptTokens + result.tokens.length,
    prompt_tokens_details: { cached_tokens: result.reusedTokens },
  };
}

/** A token limit (the request's or the slot's) cut the answer: 'length'; anything else ended it as meant. */
export function finishReason(reason: StopReason): 'stop' | 'length' {
  return reason === 'maxTokens' || reason === 'contextFull' ? 'length' : 'stop';
}

/** The bodies of one request's answer: whole, or as the events of a stream. */
export interface ResponseShape {
  /** The answer of a non-streaming request. */
  response(result: GenerationResult, usage: Usage): object;
  /** The events a stream opens with, before any generated text. */
  opening(): object[];
  /** The event carrying newly generated text. */
  chunk(text: string): object;
  /** The event that says why the answer ended. */
  final(reason: StopReason): object;
  /** The event with the usage, last before `[DONE]` (`stream_options.include_usage`). */
  usage(usage: Usage): object;
}

function completionId(prefix: string): string {
  return `${prefix}-${randomBytes(12).toString('hex')}`;
}

/** /v1/chat/completions: a message in `role`, streamed as deltas after one that names the role. */
export class ChatShape implements ResponseShape {
  readonly #id = completionId('chatcmpl');
  readonly #created = Math.floor(Date.now() / 1000);
  readonly #model: string;
  readonly #role: string;

  constructor(model: string, role: string) {
    this.#model = model;
    this.#role = role;
  }

  response(result: GenerationResult, usage: Usage): object {
    return {
      id: this.#id, object: 'chat.completion', created: this.#created, model: this.#model,
      choices: [{ index: 0, message: { role: this.#role, content: result.text }, logprobs: null, finish_reason: finishReason(result.stopReason) }],
      usage,
    };
  }

  opening(): object[] {
    return [this.#chunk({ role: this.#role, content: '' }, null)];
  }

  chunk(text: string): object {
    return this.#chunk({ content: text }, null);
  }

  final(reason: StopReason): object {
    return this.#chunk({}, finishReason(reason));
  }

  usage(usage: Usage): object {
    return { id: this.#id, object: 'chat.completion.chunk', created: this.#created, model: this.#model, choices: [], usage };
  }

  #chunk(delta: Record<string, unknown>, finish: string | null): object {
    return {
      id: this.#id, object: 'chat.completion.chunk', created: this.#created, model: this.#model,
      choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }],
    };
  }
}

/** /v1/completions: text continuing the prompt, after the prompt itself when the request asked for `echo`. */
export class CompletionShape implements ResponseShape {
  readonly #id = completionId('cmpl');
  readonly #created = Math.floor(Date.now() / 1000);
  readonly #model: string;
  readonly #echo: string;

  /** `echo`: the prompt's text when the request has `echo: true`, else ''. */
  constructor(model: string, echo: string) {
    this.#model = model;
    this.#echo = echo;
  }

  response(result: GenerationResult, usage: Usage): object {
    return {
      id: this.#id, object: 'text_completion', created: this.#created, model: this.#model,
      choices: [{ index: 0, text: this.#echo + result.text, logprobs: null, finish_reason: finishReason(result.stopReason) }],
      usage,
    };
  }

  opening(): object[] {
    return this.#echo ? [this.#chunk(this.#echo, null)] : [];
  }

  chunk(text: string): object {
    return this.#chunk(text, null);
  }

  final(reason: StopReason): object {
    return this.#chunk('', finishReason(reason));
  }

  usage(usage: Usage): object {
    return { id: this.#id, object: 'text_completion', created: this.#created, model: this.#model, choices: [], usage };
  }

  #chunk(text: string, finish: string | null): object {
    return {
      id: this.#id, object: 'text_completion', created: this.#created, model: this.#model,
      choices: [{ index: 0, text, logprobs: null, finish_reason: finish }],
    };
  }
}
