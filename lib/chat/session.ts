import { endOfTurn, type EndOfTurn } from './end-of-turn.js';
import { createHash } from 'node:crypto';
import type { Context } from '../context.js';
import { BusyError, ContextOverflowError, DecodeError } from '../errors.js';
import { SAMPLING_OPTIONS, type GenerationResult, type SamplingOptions } from '../generation.js';
import type { Model } from '../model.js';
import * as v from '../validate.js';
import { detectTemplate, type TemplateOption } from './detect.js';
import {
  joinSegments, normalizeRole, type ChatMessage, type ChatRole, type ChatTemplate, type Segment,
} from './template.js';
import { tokenizeSegments } from './tokenize.js';
import {
  encodeSessionFile, FORMAT_VERSION, MAGIC, readSessionFile, SessionFileError, writeSessionFile,
} from './session-file.js';

export { SessionFileError } from './session-file.js';

/** Options of the {@link ChatSession} constructor. */
export interface ChatSessionOptions {
  /** A system prompt, kept at the start of the conversation. Default: none. */
  systemPrompt?: string;
  /**
   * The chat template: `'auto'` (default: the GGUF's own template if it has one, else Huozi's when the
   * vocabulary has `<|beginofutterance|>`, else ChatML), `'huozi'`, `'chatml'`, `{ jinja: source }`,
   * `{ file: path }`, or a {@link ChatTemplate}.
   */
  template?: TemplateOption;
  /**
   * What to do when a turn would not fit the context: `'dropOldest'` (default) drops the oldest exchanges
   * after the system prompt until it fits; `'error'` throws a {@link ContextOverflowError}.
   */
  contextOverflow?: 'dropOldest' | 'error';
}

/** Options of {@link ChatSession.prompt} and {@link ChatSession.stream}: sampling, and these. */
export interface ChatPromptOptions extends SamplingOptions {
  /** Most tokens in the answer. Default: until the end of the turn, within the context. */
  maxTokens?: number;
  /** More strings that end the answer (the template's end-of-turn token always does). Default: none. */
  stopStrings?: readonly string[];
  /** Stops the answer; it rejects with {@link AbortError} and the partial answer joins the history. */
  signal?: AbortSignal;
}

const SESSION_OPTIONS = ['systemPrompt', 'template', 'contextOverflow'] as const;
const PROMPT_OPTIONS = [...SAMPLING_OPTIONS, 'maxTokens', 'stopStrings', 'signal'] as const satisfies readonly (keyof ChatPromptOptions)[];

/** What {@link ChatSession.prompt} resolves to. */
export interface ChatAnswer {
  /** The assistant's answer, without the end-of-turn token. */
  text: string;
  /** Why the answer ended (`stopToken` at the end of a turn). */
  stopReason: GenerationResult['stopReason'];
  /** Messages dropped from the start of the history to make this turn fit. */
  droppedMessages: number;
  /** The full generation result: tokens, reused and evaluated prompt tokens, timings. */
  generation: GenerationResult;
}

/** The rendered text and tokens that the context holds for the conversation so far. */
interface Committed {
  text: string;
  tokens: number[];
}

// The header's fields (version 1 also had stateSha256, a checksum of the state alone).
const HEADER_FIELDS = ['magic', 'version', 'model', 'template', 'messages', 'committed', 'tokens', 'stateBytes'] as const;
const ROLES: readonly string[] = ['system', 'user', 'assistant'];

/**
 * A conversation on a {@link Context}: renders the chat template, evaluates only what the context does not
 * hold yet, and stops at the end of the assistant's turn (for Huozi, `<|endofutterance|>`, which is not the
 * GGUF's eos).
 */
export class ChatSession {
  /** The context the conversation lives in (a session assumes it is the context's only user). */
  readonly context: Context;
  /** The chat template in use (after `'auto'` detection). */
  readonly template: ChatTemplate;
  /** What happens when a turn would not fit: see {@link ChatSessionOptions.contextOverflow}. */
  readonly contextOverflow: 'dropOldest' | 'error';
  #messages: ChatMessage[] = [];
  readonly #endOfTurn: EndOfTurn;
  #committed: Committed | undefined;
  #busy = false;

  constructor(context: Context, options?: ChatSessionOptions) {
    const o = v.options<ChatSessionOptions>('options', options, SESSION_OPTIONS);
    this.context = context;
    this.template = detectTemplate(context.model, o.template ?? 'auto');
    this.contextOverflow =
      o.contextOverflow === undefined ? 'dropOldest' : v.oneOf('contextOverflow', o.contextOverflow, ['dropOldest', 'error'] as const);
    this.#endOfTurn = endOfTurn(context.model, this.template);
    if (o.systemPrompt !== undefined) this.#messages.push({ role: 'system', content: v.string('systemPrompt', o.systemPrompt) });
  }

  /** The conversation so far (a copy). */
  get history(): ChatMessage[] {
    return this.#messages.map((m) => ({ ...m }));
  }

  /** Replaces the conversation. Roles may be system/user/assistant or 系统/用户/助手. */
  setHistory(messages: readonly { role: string; content: string }[]): void {
    if (!Array.isArray(messages)) throw v.typeError('array of messages', 'messages', messages);
    this.#messages = messages.map((m, i) => {
      if (m === null || typeof m !== 'object') throw v.typeError('object', `messages[${i}]`, m);
      return { role: normalizeRole(m.role, `messages[${i}].role`), content: v.string(`messages[${i}].content`, m.content) };
    });
    this.#committed = undefined;
  }

  /** The system prompt (the first message when its role is system), or undefined. */
  get systemPrompt(): string | undefined {
    return this.#messages[0]?.role === 'system' ? this.#messages[0].content : undefined;
  }

  /** Sets (or with `undefined` removes) the system prompt; the rest of the conversation stays. */
  set systemPrompt(text: string | undefined) {
    if (text !== undefined) v.string('systemPrompt', text);
    const rest = this.#messages[0]?.role === 'system' ? this.#messages.slice(1) : this.#messages;
    this.#messages = text === undefined ? rest : [{ role: 'system', content: text }, ...rest];
    this.#committed = undefined;
  }

  /** Forgets the conversation, keeping the system prompt. */
  reset(): void {
    this.#messages = this.#messages[0]?.role === 'system' ? [this.#messages[0]] : [];
    this.#committed = undefined;
  }

  /**
   * Sends a user message and resolves to the whole answer.
   *
   * @throws {@link BusyError} while another answer of this session is running.
   * @throws {@link ContextOverflowError} when the turn does not fit (always with contextOverflow 'error'; with
   * 'dropOldest' only when the last message alone does not fit).
   */
  async prompt(text: string, options?: ChatPromptOptions): Promise<ChatAnswer> {
    const stream = this.stream(text, options);
    return stream.result;
  }

  /**
   * Sends a user message and streams the answer: iterate for text chunks; `result` resolves when the turn
   * ends. The answer joins the history when the turn ends (also when it was stopped, with what was said).
   */
  stream(text: string, options?: ChatPromptOptions): ChatStream {
    v.string('text', text);
    const o = v.options<ChatPromptOptions>('options', options, PROMPT_OPTIONS);
    if (this.#busy) throw new BusyError('This chat session is answering; wait for the answer (or stop it) first');
    const { signal, maxTokens, stopStrings, ...sampling } = o;
    const messages: ChatMessage[] = [...this.#messages, { role: 'user', content: text }];
    const reserve = maxTokens ?? Math.floor(this.context.contextSize / 4);
    const { tokens, kept, dropped, rendered } = this.#fit(messages, reserve);
    const generation = this.context.generate(tokens, {
      ...sampling, maxTokens, signal, reuseCache: true,
      stopStrings: [...(stopStrings ?? []), ...this.#endOfTurn.stopStrings], stopTokens: this.#endOfTurn.stopTokens,
    });
    this.#busy = true;
    const result = generation.result.then(
      (r) => {
        this.#busy = false;
        return this.#finish(kept, rendered, tokens, r, dropped.length);
      },
      (error: unknown) => {
        this.#busy = false;
        const partial = (error as { result?: GenerationResult }).result;
        if (partial) this.#finish(kept, rendered, tokens, partial, dropped.length);
        throw error;
      },
    );
    result.catch(() => undefined);
    return {
      result,
      stop: () => generation.stop(),
      [Symbol.asyncIterator]: () => generation[Symbol.asyncIterator](),
    };
  }

  #finish(kept: ChatMessage[], rendered: string, prompt: number[], r: GenerationResult, dropped: number): ChatAnswer {
    this.#messages = [...kept, { role: 'assistant', content: r.text }];
    // What the context now holds is the prompt and the answer's tokens. Its text is known exactly only when
    // the turn ended on its stop token; otherwise the next turn tokenizes the conversation afresh (and the
    // context still reuses the longest prefix it holds).
    const stopText = r.stopToken === null ? undefined : this.context.model.specialTokenText(r.stopToken);
    this.#committed =
      (r.stopReason === 'stopToken' || r.stopReason === 'eog') && stopText !== undefined
        ? { text: rendered + r.text + stopText, tokens: [...prompt, ...r.tokens] }
        : undefined;
    return { text: r.text, stopReason: r.stopReason, droppedMessages: dropped, generation: r };
  }

  /** Tokens for `messages` with a generation prompt, dropping old exchanges if the context is too small. */
  #fit(
    messages: ChatMessage[],
    reserve: number,
  ): { tokens: number[]; kept: ChatMessage[]; dropped: ChatMessage[]; rendered: string } {
    const limit = this.context.contextSize;
    const budget = Math.max(1, limit - Math.min(reserve, Math.floor(limit / 2)));
    let current = messages;
    const dropped: ChatMessage[] = [];
    for (;;) {
      const segments = this.template.render(current, true);
      const tokens = this.#tokenize(segments, dropped.length === 0);
      if (tokens.length <= budget) return { tokens, kept: current, dropped, rendered: joinSegments(segments) };
      const first = current[0]?.role === 'system' ? 1 : 0;
      // Drop the oldest exchange: everything up to the next user message after the first one.
      const nextUser = current.findIndex((m, i) => i > first && m.role === 'user');
      if (this.contextOverflow === 'error' || nextUser === -1) {
        throw new ContextOverflowError(
          `The conversation needs ${tokens.length} tokens plus room for the answer (${limit - budget}), more than ` +
            `the context size of ${limit}` + (this.contextOverflow === 'error' ? '' : ' even with only the last message'),
        );
      }
      dropped.push(...current.slice(first, nextUser));
      current = [...current.slice(0, first), ...current.slice(nextUser)];
      this.#committed = undefined;
    }
  }

  /** Tokenizes segments, reusing the committed tokens when the rendering starts with the committed text. */
  #tokenize(segments: Segment[], mayReuse: boolean): number[] {
    const model = this.context.model;
    const committed = mayReuse ? this.#committed : undefined;
    if (committed) {
      const rest = sliceSegments(segments, committed.text);
      if (rest) return [...committed.tokens, ...tokenizeSegments(model, rest, false)];
    }
    return tokenizeSegments(model, segments, model.tokens.addBos);
  }

  /**
   * Saves the conversation and the context's KV cache to `path`, atomically (a temporary file in the same
   * directory, then a rename). The file records which model it belongs to and a SHA-256 of all its bytes;
   * {@link ChatSession.load} checks both, and everything else in it. A new file gets mode 0600; an existing file
   * keeps its mode. A symbolic link is followed and its final target replaced (the link stays); a link to nothing,
   * or a path that is a directory, FIFO, socket or device, is refused with a {@link SessionFileError}.
   */
  async save(path: string): Promise<void> {
    v.string('path', path, { allowEmpty: false });
    let state: { data: Buffer; tokens: number[] };
    try {
      state = await this.context.saveState();
    } catch (error) {
      throw asSessionFileError(error, `Cannot save this session to ${path}`);
    }
    const header = {
      magic: MAGIC,
      version: FORMAT_VERSION,
      model: modelFingerprint(this.context.model),
      template: this.template.name,
      messages: this.#messages,
      committed: this.#committed ?? null,
      tokens: state.tokens,
      stateBytes: state.data.length,
    };
    await writeSessionFile(path, encodeSessionFile(header, state.data));
  }

  /**
   * Restores a conversation and its KV cache saved by {@link ChatSession.save} (format versions 1 and 2). The
   * whole file is checked before anything changes: its checksum, every header field, and the KV state against
   * this context (cell counts, positions, layers, key/value types and row sizes, total size). Any problem is a
   * {@link SessionFileError}, and the session and its context stay exactly as they were. A missing or unreadable
   * file rejects with Node's own error (`ENOENT`, `EACCES`).
   *
   * @throws {@link BusyError} while an answer of this session is running.
   */
  async load(path: string): Promise<void> {
    v.string('path', path, { allowEmpty: false });
    if (this.#busy) throw new BusyError('This chat session is answering; wait for the answer (or stop it) before loading');
    const context = this.context;
    // A state holds at most the context's whole KV cache, plus a few bytes of metadata per cell.
    const kvBytes = context.memory().reduce((sum, d) => sum + d.context, 0);
    const maxStateBytes = kvBytes + context.contextSize * 64 + 1024 * 1024;
    const { version, header, state } = await readSessionFile(path, maxStateBytes);
    const bad = (why: string) => new SessionFileError(`${path} is not a usable chat session file: ${why}`);
    const { messages, tokens, committed } = this.#checkHeader(header, version, bad);
    if (this.#busy) throw new BusyError('This chat session started answering while the file was read; nothing was loaded');
    try {
      await context.loadState(state, tokens);
    } catch (error) {
      throw asSessionFileError(error, `${path} is not a usable chat session file`);
    }
    this.#messages = messages;
    this.#committed = committed;
  }

  /** The header's conversation, tokens and committed text, each checked; throws `bad(why)` otherwise. */
  #checkHeader(
    h: Record<string, unknown>,
    version: number,
    bad: (why: string) => SessionFileError,
  ): { messages: ChatMessage[]; tokens: number[]; committed: Committed | undefined } {
    const fields: readonly string[] = version === 1 ? [...HEADER_FIELDS, 'stateSha256'] : HEADER_FIELDS;
    for (const key of Object.keys(h)) if (!fields.includes(key)) throw bad(`unknown header field "${key}"`);
    for (const key of fields) if (!(key in h)) throw bad(`the header has no "${key}"`);
    if (h.magic !== MAGIC || h.version !== version) throw bad('the header does not match the file\'s magic and version');
    if (JSON.stringify(h.model) !== JSON.stringify(modelFingerprint(this.context.model))) {
      throw bad('it was saved with a different model');
    }
    if (typeof h.template !== 'string') throw bad('the header\'s template is not a string');

    if (!Array.isArray(h.messages)) throw bad('the header\'s messages are not an array');
    const messages = h.messages.map((m: unknown, i): ChatMessage => {
      if (m === null || typeof m !== 'object' || Array.isArray(m)) throw bad(`message ${i} is not an object`);
      const keys = Object.keys(m);
      const { role, content } = m as Record<string, unknown>;
      if (keys.length !== 2 || typeof role !== 'string' || !ROLES.includes(role)) {
        throw bad(`message ${i} is not { role: system|user|assistant, content }`);
      }
      if (typeof content !== 'string') throw bad(`message ${i}'s content is not a string`);
      return { role: role as ChatRole, content };
    });

    const vocab = this.context.model.vocabularySize;
    const tokenList = (value: unknown, what: string): number[] => {
      if (!Array.isArray(value)) throw bad(`${what} is not an array of token ids`);
      value.forEach((t: unknown, i) => {
        if (!Number.isInteger(t) || (t as number) < 0 || (t as number) >= vocab) {
          throw bad(`${what}[${i}] is not a token id of this model (0..${vocab - 1})`);
        }
      });
      return value as number[];
    };
    const tokens = tokenList(h.tokens, 'the saved token list');
    if (tokens.length > this.context.contextSize) {
      throw bad(`it holds ${tokens.length} tokens, more than this context's ${this.context.contextSize}`);
    }

    let committed: Committed | undefined;
    if (h.committed !== null) {
      const c = h.committed as Record<string, unknown>;
      if (c === null || typeof c !== 'object' || Array.isArray(c) || Object.keys(c).length !== 2) {
        throw bad('the committed part is not { text, tokens }');
      }
      if (typeof c.text !== 'string') throw bad('the committed text is not a string');
      const ct = tokenList(c.tokens, 'the committed tokens');
      // What the context holds is the committed tokens, less the stop token that ended the last answer (sampled,
      // never evaluated).
      const holds =
        (ct.length === tokens.length || (ct.length === tokens.length + 1 && this.#endOfTurn.stopTokens.includes(ct[ct.length - 1]))) &&
        tokens.every((t, i) => ct[i] === t);
      if (!holds) throw bad('the committed tokens are not the tokens the KV state holds');
      // Saved with another template, the committed text is not how this session renders the conversation: the
      // next turn tokenizes it afresh (and still reuses the cache as far as the tokens agree).
      committed = h.template === this.template.name ? { text: c.text, tokens: [...ct] } : undefined;
    }
    return { messages, tokens, committed };
  }
}

/** A chat answer being streamed: an async iterable of text chunks, with the final {@link ChatAnswer}. */
export interface ChatStream extends AsyncIterable<string> {
  /** Resolves when the turn ends; rejects with {@link AbortError} when stopped. */
  readonly result: Promise<ChatAnswer>;
  /** Stops the answer (the result then rejects with AbortError; the partial answer joins the history). */
  stop(): void;
}

/** A native or llama.cpp refusal of a session's state, as a SessionFileError (other errors pass unchanged). */
function asSessionFileError(error: unknown, context: string): unknown {
  const code = (error as { code?: unknown } | null)?.code;
  if (code === 'ERR_HUOZI_SESSION_FILE' || error instanceof DecodeError) {
    return new SessionFileError(`${context}: ${(error as Error).message}`, { cause: error });
  }
  return error;
}

/** The segments after the text `prefix`, or null when `prefix` does not end on a usable boundary. */
function sliceSegments(segments: Segment[], prefix: string): Segment[] | null {
  let offset = 0;
  for (let i = 0; i < segments.length; i++) {
    const seg = segments[i];
    const end = offset + seg.text.length;
    if (end <= prefix.length) {
      if (seg.text !== prefix.slice(offset, end)) return null;
      offset = end;
      continue;
    }
    const inside = prefix.length - offset;
    if (seg.text.slice(0, inside) !== prefix.slice(offset)) return null;
    // Cutting inside content would tokenize part of it on its own; only template text may be cut.
    if (inside > 0 && seg.kind === 'content') return null;
    return [{ ...seg, text: seg.text.slice(inside) } as Segment, ...segments.slice(i + 1)];
  }
  return offset === prefix.length ? [] : null;
}

function modelFingerprint(model: Model): Record<string, unknown> {
  const meta = Object.entries(model.metadata).sort(([a], [b]) => (a < b ? -1 : 1));
  return {
    parameters: model.info.parameters,
    size: model.info.size,
    vocabularySize: model.vocabularySize,
    metadataSha256: createHash('sha256').update(JSON.stringify(meta)).digest('hex'),
  };
}

export type { ChatMessage, ChatRole };
