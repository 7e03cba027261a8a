// OpenAI's response bodies for the two generation endpoints. /v1/chat/completions and /v1/completions answer
// the same generation in different shapes (a message or a delta with a role vs plain text, their own object
// names and id prefixes); each endpoint kind is one object here behind the same interface, so that the code
// streaming a generation never asks which endpoint it serves.
import { randomBytes } from 'node:crypto';
import { ChatAnswerError } from '../chat/json.js';
import { parseToolTurn, type ToolTurn } from '../chat/tools.js';
import type { GenerationResult, StopReason, TokenLogprob } from '../generation.js';

/** OpenAI's `usage`, with the prompt tokens a slot's cache held as `cached_tokens`. */
export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  prompt_tokens_details: { cached_tokens: number };
}

/**
 * The usage of a request's choices, as OpenAI counts `n` > 1: the prompt once, the completion tokens of every
 * choice summed. The prompt's cached tokens are the first choice's (each choice runs in a slot of its own).
 */
export function usageOf(results: readonly GenerationResult[]): Usage {
  const prompt = results[0].promptTokens;
  const completion = results.reduce((sum, r) => sum + r.tokens.length, 0);
  return {
    prompt_tokens: prompt,
    completion_tokens: completion,
    total_tokens: prompt + completion,
    prompt_tokens_details: { cached_tokens: results[0].reusedTokens },
  };
}

/** A token limit (the request's or the slot's) cut the answer: 'length'; anything else ended it as meant. */
export function finishReason(reason: StopReason): 'stop' | 'length' {
  return reason === 'maxTokens' || reason === 'contextFull' ? 'length' : 'stop';
}

/** The bodies of one request's answer: whole, or as the events of a stream; each choice by its `index`. */
export interface ResponseShape {
  /** The answer of a non-streaming request: one choice per result, in order. */
  response(results: readonly GenerationResult[], usage: Usage): object;
  /** The events choice `index`'s stream opens with, before any generated text. */
  opening(index: number): object[];
  /**
   * The events for choice `index`'s newly generated text (and its tokens' logprobs, when asked for): one, or
   * none while the text is held until the choice ends (a tool turn's JSON).
   */
  chunk(index: number, text: string, logprobs?: readonly TokenLogprob[]): object[];
  /** The events that end choice `index`: what was held back, then the one that says why it ended. */
  final(index: number, result: GenerationResult): object[];
  /** The event with the usage, last before `[DONE]` (`stream_options.include_usage`). */
  usage(usage: Usage): object;
}

function completionId(prefix: string): string {
  return `${prefix}-${randomBytes(12).toString('hex')}`;
}

/**
 * Which logprob entries belong to the answer: those of the tokens that start inside its text. A final stop token
 * (an end of generation, one of stop_token_ids) and the tokens of a matched stop string end the answer without
 * being part of it, and OpenAI reports no logprobs for them. Tokens are placed by the bytes they add to the text:
 * their bytes, or none for a control token (its entry names its text, but it renders nothing).
 */
export class AnswerTokens {
  readonly #silent: ReadonlySet<number>;

  /** `silent`: the token ids that render no text. */
  constructor(silent: ReadonlySet<number>) {
    this.#silent = silent;
  }

  /** @internal The bytes `entry`'s token adds to the text. */
  size(entry: TokenLogprob): number {
    return this.#silent.has(entry.token) ? 0 : entry.bytes.length;
  }

  /** The entries of a whole result's answer. */
  of(result: GenerationResult): TokenLogprob[] {
    const all = result.logprobs ?? [];
    const length = Buffer.byteLength(result.text, 'utf8');
    let at = 0;
    let kept = 0;
    while (kept < all.length && at < length) at += this.size(all[kept++]);
    return kept === all.length ? all : all.slice(0, kept);
  }

  /** The same for a stream, chunk by chunk. */
  stream(): StreamedLogprobs {
    return new StreamedLogprobs(this);
  }
}

/**
 * {@link AnswerTokens} for a stream: the library may send a token's entry before its text (a piece of a
 * character, a possible start of a stop string), so each entry waits until text it starts in has been sent,
 * and goes out with that text. Entries still waiting when the generation ends were not part of the answer.
 */
export class StreamedLogprobs {
  readonly #answer: AnswerTokens;
  #pending: TokenLogprob[] = [];
  /** Bytes of text sent, and where the first pending entry starts. */
  #sent = 0;
  #next = 0;

  constructor(answer: AnswerTokens) {
    this.#answer = answer;
  }

  /** The entries to send with `text`, a chunk's text, given the entries that came with it. */
  take(text: string, entries: readonly TokenLogprob[] = []): TokenLogprob[] {
    this.#pending.push(...entries);
    this.#sent += Buffer.byteLength(text, 'utf8');
    let n = 0;
    while (n < this.#pending.length && this.#next < this.#sent) this.#next += this.#answer.size(this.#pending[n++]);
    return this.#pending.splice(0, n);
  }
}

/** OpenAI's chat entry for one token: its text, logprob, UTF-8 bytes and the most likely alternatives. */
function chatLogprob(t: TokenLogprob): object {
  return {
    token: t.text, logprob: t.logprob, bytes: t.bytes,
    top_logprobs: t.top.map((alt) => ({ token: alt.text, logprob: alt.logprob, bytes: alt.bytes })),
  };
}

/** A tool call as OpenAI's chat answers carry it: the arguments as JSON text. */
interface OpenAIToolCall {
  id: string;
  type: 'function';
  function: { name: string; arguments: string };
}

/** What a choice says: text, or tool calls (`content` null), and why it ended. */
interface ChatAnswer {
  content: string | null;
  toolCalls?: OpenAIToolCall[];
  finish: 'stop' | 'length' | 'tool_calls';
}

/**
 * A request's tool turn, for its answers: the turn, and the call ids its conversation holds already (a new call's
 * id is never one of them).
 */
export interface ChatTools {
  turn: ToolTurn;
  taken: ReadonlySet<string>;
}

/**
 * /v1/chat/completions: a message in `role`, streamed as deltas after one that names the role. With tools
 * offered, each choice is a tool turn: its text is JSON until the turn ends, so it is held (with its logprobs)
 * and sent at the end as `tool_calls` (`content` null, `finish_reason` 'tool_calls') or as the text of the
 * model's response. A turn that did not end where its grammar does (`max_tokens`, a full slot, a stop string)
 * is sent as the JSON text it got to, with its own finish reason.
 */
export class ChatShape implements ResponseShape {
  readonly #id = completionId('chatcmpl');
  readonly #created = Math.floor(Date.now() / 1000);
  readonly #model: string;
  readonly #role: string;
  readonly #logprobs: AnswerTokens | undefined;
  readonly #tools: ChatTools | undefined;
  /** Tool turns: each streamed choice's logprob entries, held until the turn ends. */
  readonly #held = new Map<number, TokenLogprob[]>();
  /** Ids given to calls of this answer (all choices), besides those of the conversation. */
  readonly #ids = new Set<string>();

  /**
   * `logprobs`: when the request asked for them (else each choice's `logprobs` is null). `tools`: the turn when
   * the request offers tools.
   */
  constructor(model: string, role: string, logprobs?: AnswerTokens, tools?: ChatTools) {
    this.#model = model;
    this.#role = role;
    this.#logprobs = logprobs;
    this.#tools = tools;
  }

  response(results: readonly GenerationResult[], usage: Usage): object {
    return {
      id: this.#id, object: 'chat.completion', created: this.#created, model: this.#model,
      choices: results.map((result, index) => {
        const answer = this.#answer(result);
        return {
          index,
          message: { role: this.#role, content: answer.content, ...(answer.toolCalls ? { tool_calls: answer.toolCalls } : {}) },
          logprobs: this.#logprobs ? { content: this.#logprobs.of(result).map(chatLogprob), refusal: null } : null,
          finish_reason: answer.finish,
        };
      }),
      usage,
    };
  }

  /** A tool turn opens with the role alone: its content is null when it calls tools. */
  opening(index: number): object[] {
    return [this.#chunk(index, this.#tools === undefined ? { role: this.#role, content: '' } : { role: this.#role }, null)];
  }

  chunk(index: number, text: string, logprobs?: readonly TokenLogprob[]): object[] {
    if (this.#tools === undefined) return [this.#chunk(index, { content: text }, null, logprobs)];
    if (logprobs && logprobs.length > 0) {
      const held = this.#held.get(index);
      if (held) held.push(...logprobs);
      else this.#held.set(index, [...logprobs]);
    }
    return [];
  }

  /**
   * A tool turn's calls go out as the `openai` client accumulates them: per call (by `index`), one delta with
   * its id, type, name and empty arguments, then one with the arguments; the held logprobs ride on the first.
   */
  final(index: number, result: GenerationResult): object[] {
    if (this.#tools === undefined) return [this.#chunk(index, {}, finishReason(result.stopReason))];
    const answer = this.#answer(result);
    const logprobs = this.#held.get(index);
    this.#held.delete(index);
    const events: object[] = [];
    const first = () => (events.length === 0 ? logprobs : undefined);
    if (answer.toolCalls) {
      answer.toolCalls.forEach((call, i) => {
        events.push(this.#chunk(index, {
          tool_calls: [{ index: i, id: call.id, type: call.type, function: { name: call.function.name, arguments: '' } }],
        }, null, first()));
        events.push(this.#chunk(index, { tool_calls: [{ index: i, function: { arguments: call.function.arguments } }] }, null));
      });
    } else if (answer.content !== '' || (logprobs && logprobs.length > 0)) {
      events.push(this.#chunk(index, { content: answer.content }, null, first()));
    }
    events.push(this.#chunk(index, {}, answer.finish));
    return events;
  }

  usage(usage: Usage): object {
    return { id: this.#id, object: 'chat.completion.chunk', created: this.#created, model: this.#model, choices: [], usage };
  }

  /** What a choice's generation says: its text, or for a tool turn that ended as its grammar does, the parsed turn. */
  #answer(result: GenerationResult): ChatAnswer {
    const plain: ChatAnswer = { content: result.text, finish: finishReason(result.stopReason) };
    if (this.#tools === undefined || result.stopReason !== 'eog') return plain;
    let parsed;
    try {
      parsed = parseToolTurn(result.text, this.#tools.turn);
    } catch (error) {
      // The grammar allows only what parses; should the two ever disagree, the client gets the text as it is.
      if (error instanceof ChatAnswerError) return plain;
      throw error;
    }
    if ('response' in parsed) return { content: parsed.response, finish: 'stop' };
    return {
      content: null,
      toolCalls: parsed.calls.map((c) => ({
        id: this.#callId(), type: 'function', function: { name: c.name, arguments: JSON.stringify(c.arguments) },
      })),
      finish: 'tool_calls',
    };
  }

  /** A new call id, `call_` and 24 hex digits as OpenAI's look, never one the conversation or this answer has. */
  #callId(): string {
    for (;;) {
      const id = `call_${randomBytes(12).toString('hex')}`;
      if (!this.#tools!.taken.has(id) && !this.#ids.has(id)) {
        this.#ids.add(id);
        return id;
      }
    }
  }

  #chunk(index: number, delta: Record<string, unknown>, finish: string | null, logprobs?: readonly TokenLogprob[]): object {
    return {
      id: this.#id, object: 'chat.completion.chunk', created: this.#created, model: this.#model,
      choices: [{
        index, delta,
        logprobs: this.#logprobs && logprobs ? { content: logprobs.map(chatLogprob), refusal: null } : null,
        finish_reason: finish,
      }],
    };
  }
}

/**
 * Where each token starts in the answer's text, in UTF-16 units as JavaScript and Python index it, from the
 * tokens' bytes: UTF-8 decoded as TextDecoder does (WHATWG: a broken sequence is one U+FFFD). A token that
 * starts inside a character is placed where that character starts.
 */
class TextOffsets {
  #units: number;
  /** The character being decoded: continuation bytes still needed, their allowed range, its UTF-16 length. */
  #needed = 0;
  #lower = 0x80;
  #upper = 0xbf;
  #width = 1;

  constructor(start: number) {
    this.#units = start;
  }

  /** Where a token of these bytes starts; then moves past them. */
  next(bytes: readonly number[]): number {
    const b = bytes[0];
    const offset = this.#needed > 0 && b !== undefined && (b < this.#lower || b > this.#upper) ? this.#units + 1 : this.#units;
    for (const byte of bytes) this.#byte(byte);
    return offset;
  }

  #byte(b: number): void {
    if (this.#needed > 0) {
      if (b >= this.#lower && b <= this.#upper) {
        this.#lower = 0x80;
        this.#upper = 0xbf;
        if (--this.#needed === 0) this.#units += this.#width;
        return;
      }
      // A broken sequence: one U+FFFD, and this byte starts afresh.
      this.#needed = 0;
      this.#lower = 0x80;
      this.#upper = 0xbf;
      this.#units++;
    }
    if (b <= 0x7f) this.#units++;
    else if (b >= 0xc2 && b <= 0xdf) [this.#needed, this.#width] = [1, 1];
    else if (b >= 0xe0 && b <= 0xef) {
      [this.#needed, this.#width] = [2, 1];
      if (b === 0xe0) this.#lower = 0xa0;
      if (b === 0xed) this.#upper = 0x9f;
    } else if (b >= 0xf0 && b <= 0xf4) {
      [this.#needed, this.#width] = [3, 2];
      if (b === 0xf0) this.#lower = 0x90;
      if (b === 0xf4) this.#upper = 0x8f;
    } else this.#units++;
  }
}

/** The legacy `logprobs` object of /v1/completions, built token by token (a stream's chunks continue one). */
class LegacyLogprobs {
  readonly #offsets: TextOffsets;
  readonly #answer: AnswerTokens;

  /** `start`: the characters before the answer (the echoed prompt). */
  constructor(start: number, answer: AnswerTokens) {
    this.#offsets = new TextOffsets(start);
    this.#answer = answer;
  }

  /** `tokens`, `token_logprobs`, `top_logprobs` (the alternatives and the sampled token, text -> logprob), `text_offset`. */
  of(logprobs: readonly TokenLogprob[]): object {
    const out = { tokens: [] as string[], token_logprobs: [] as number[], top_logprobs: [] as Record<string, number>[], text_offset: [] as number[] };
    for (const t of logprobs) {
      out.tokens.push(t.text);
      out.token_logprobs.push(t.logprob);
      const top: Record<string, number> = {};
      for (const alt of t.top) if (!(alt.text in top)) top[alt.text] = alt.logprob;
      if (!(t.text in top)) top[t.text] = t.logprob;
      out.top_logprobs.push(top);
      // A control token renders nothing: it starts where the next text does.
      out.text_offset.push(this.#offsets.next(this.#answer.size(t) > 0 ? t.bytes : []));
    }
    return out;
  }
}

/** /v1/completions: text continuing the prompt, after the prompt itself when the request asked for `echo`. */
export class CompletionShape implements ResponseShape {
  readonly #id = completionId('cmpl');
  readonly #created = Math.floor(Date.now() / 1000);
  readonly #model: string;
  readonly #echo: string;
  readonly #logprobs: AnswerTokens | undefined;
  /** Each streamed choice's logprobs so far (their text offsets continue from chunk to chunk). */
  readonly #streamed = new Map<number, LegacyLogprobs>();

  /** `echo`: the prompt's text when the request has `echo: true`, else ''. `logprobs`: when it asked for them. */
  constructor(model: string, echo: string, logprobs?: AnswerTokens) {
    this.#model = model;
    this.#echo = echo;
    this.#logprobs = logprobs;
  }

  response(results: readonly GenerationResult[], usage: Usage): object {
    return {
      id: this.#id, object: 'text_completion', created: this.#created, model: this.#model,
      choices: results.map((result, index) => ({
        index,
        text: this.#echo + result.text,
        logprobs: this.#logprobs ? new LegacyLogprobs(this.#echo.length, this.#logprobs).of(this.#logprobs.of(result)) : null,
        finish_reason: finishReason(result.stopReason),
      })),
      usage,
    };
  }

  opening(index: number): object[] {
    return this.#echo ? [this.#chunk(index, this.#echo, null)] : [];
  }

  chunk(index: number, text: string, logprobs?: readonly TokenLogprob[]): object[] {
    let legacy: object | null = null;
    if (this.#logprobs && logprobs) {
      let state = this.#streamed.get(index);
      if (!state) this.#streamed.set(index, (state = new LegacyLogprobs(this.#echo.length, this.#logprobs)));
      legacy = state.of(logprobs);
    }
    return [this.#chunk(index, text, null, legacy)];
  }

  final(index: number, result: GenerationResult): object[] {
    return [this.#chunk(index, '', finishReason(result.stopReason))];
  }

  usage(usage: Usage): object {
    return { id: this.#id, object: 'text_completion', created: this.#created, model: this.#model, choices: [], usage };
  }

  #chunk(index: number, text: string, finish: string | null, logprobs: object | null = null): object {
    return {
      id: this.#id, object: 'text_completion', created: this.#created, model: this.#model,
      choices: [{ index, text, logprobs, finish_reason: finish }],
    };
  }
}
