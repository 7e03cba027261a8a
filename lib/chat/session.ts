import { endOfTurn, type EndOfTurn } from './end-of-turn.js';
import { createHash } from 'node:crypto';
import type { Context } from '../context.js';
import { AbortError, BusyError, ContextOverflowError, DecodeError } from '../errors.js';
import { SAMPLING_OPTIONS, type Generation, type GenerationResult, type SamplingOptions } from '../generation.js';
import type { LoraSetting } from '../lora.js';
import type { Grammar } from '../grammar.js';
import type { Model } from '../model.js';
import * as v from '../validate.js';
import { detectTemplate, type TemplateOption } from './detect.js';
import {
  joinSegments, normalizeRole, type ChatMessage, type ChatRole, type ChatTemplate, type Segment,
} from './template.js';
import { tokenizeSegments } from './tokenize.js';
import { ChatAnswerError, incompleteAnswer, parseJsonAnswer } from './json.js';
import {
  checkConversation, conversationMessage, newToolCallIds, offersTools, parseToolTurn, pendingToolCalls, resultText,
  templateMessages, toolGrammar, toolTurn, ToolCallError, type ChatTools, type ConversationMessage, type ToolCall,
  type ToolChoice, type ToolTurn,
} from './tools.js';
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
  /** LoRA adapters for this answer instead of the context's ({@link Context.setLoras}); `[]`: the base model. */
  loras?: readonly LoraSetting[];
}

/**
 * Tool calling in {@link ChatSession.prompt} and {@link ChatSession.respond}. The model's turn is constrained to
 * calls of these tools (arguments valid for each tool's `parameters`) or, with `toolChoice` `auto`, an answer.
 */
export interface ChatToolOptions {
  /** The functions the model may call: `{ name: { description, parameters, handler } }` or a list with `name`. */
  tools?: ChatTools;
  /**
   * `auto` (default: calls or an answer), `none` (no tools offered: a plain answer), `required` (at least one
   * call), `{ name }` (calls of that tool). `required` and `{ name }` apply to the first turn; after the handlers'
   * results the model may answer (`auto`).
   */
  toolChoice?: ToolChoice;
  /** Several calls in one turn (default `true`); `false`: at most one. */
  parallelToolCalls?: boolean;
  /**
   * Run the handlers (default `true`): when every call of a turn has a handler, they run in order, their results
   * join the conversation and the model goes on, until it answers. Otherwise (`false`, or a called tool without
   * a handler) the answer comes back with `toolCalls` for you to run: add each result with
   * {@link ChatSession.addToolResult}, then call {@link ChatSession.respond}.
   */
  executeTools?: boolean;
  /** Most rounds of handlers in one call before it gives up with a {@link ToolCallError}. Default: 8. */
  maxToolRounds?: number;
}

/** Options of {@link ChatSession.prompt} and {@link ChatSession.respond}: a prompt's, and tool calling's. */
export interface ChatToolPromptOptions extends ChatPromptOptions, ChatToolOptions {}

/** Options of {@link ChatSession.promptJson}: a prompt's (no grammar of their own), and the schema. */
export interface ChatJsonOptions extends Omit<ChatPromptOptions, 'grammar' | 'jsonSchema'> {
  /** The JSON Schema the answer follows (what `Grammar.fromJsonSchema` takes). */
  schema: object;
}

const SESSION_OPTIONS = ['systemPrompt', 'template', 'contextOverflow'] as const;
const PROMPT_OPTIONS = [...SAMPLING_OPTIONS, 'maxTokens', 'stopStrings', 'signal', 'loras'] as const satisfies readonly (keyof ChatPromptOptions)[];
const TOOL_OPTIONS = ['tools', 'toolChoice', 'parallelToolCalls', 'executeTools', 'maxToolRounds'] as const satisfies readonly (keyof ChatToolOptions)[];
const JSON_OPTIONS = [...PROMPT_OPTIONS.filter((k) => k !== 'grammar' && k !== 'jsonSchema'), 'schema'] as const;

/** What {@link ChatSession.prompt} resolves to. */
export interface ChatAnswer {
  /** The assistant's answer, without the end-of-turn token ('' when it called tools for you to run). */
  text: string;
  /** Why the answer ended (`stopToken` at the end of a turn). */
  stopReason: GenerationResult['stopReason'];
  /** Messages dropped from the start of the history to make this turn fit. */
  droppedMessages: number;
  /** The full generation result: tokens, reused and evaluated prompt tokens, timings (of the last turn). */
  generation: GenerationResult;
  /**
   * The calls the model made that are yours to run (`executeTools: false`, or a tool without a handler); they
   * are in the history, waiting for their results ({@link ChatSession.addToolResult}, then
   * {@link ChatSession.respond}). Absent when the model answered.
   */
  toolCalls?: ToolCall[];
}

/** The rendered text and tokens that the context holds for the conversation so far. */
interface Committed {
  text: string;
  tokens: number[];
}

/** One generation of a turn: the prompt it ran on and its result. */
interface Round {
  kept: ConversationMessage[];
  rendered: string;
  tokens: number[];
  dropped: number;
}

// The header's fields (version 1 also had stateSha256, a checksum of the state alone).
const HEADER_FIELDS = ['magic', 'version', 'model', 'template', 'messages', 'committed', 'tokens', 'stateBytes'] as const;
// Since LoRA adapters (issue #18): the adapters the cache was computed with ([{ sha256, scale }]); absent = none.
const OPTIONAL_FIELDS = ['loras'] as const;
const ROLES: readonly string[] = ['system', 'user', 'assistant'];
// The keys a saved message may have, by its shape.
const MESSAGE_KEYS = { plain: ['role', 'content'], calls: ['role', 'content', 'toolCalls'], tool: ['role', 'toolCallId', 'name', 'content'] };

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
  #messages: ConversationMessage[] = [];
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

  /**
   * The conversation so far (a copy): `{ role, content }` messages, assistant turns that called tools
   * (`toolCalls`) and tools' results (`{ role: 'tool', toolCallId, name, content }`).
   */
  get history(): ConversationMessage[] {
    return this.#messages.map((m) => structuredClone(m));
  }

  /**
   * Replaces the conversation. Roles may be system/user/assistant or 系统/用户/助手; tool calls and results as
   * {@link history} shows them (each result after its call, each call answered at most once).
   */
  setHistory(messages: readonly (ConversationMessage | { role: string; content: string })[]): void {
    if (!Array.isArray(messages)) throw v.typeError('array of messages', 'messages', messages);
    const checked = messages.map((m, i) => conversationMessage(m, `messages[${i}]`, normalizeRole));
    checkConversation(checked);
    this.#messages = checked;
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
   * Sends a user message and resolves to the whole answer. With tools ({@link ChatToolOptions}), the model's
   * turns are constrained to tool calls or an answer; handlers run until the model answers.
   *
   * @throws {@link BusyError} while another answer of this session is running.
   * @throws {@link ContextOverflowError} when the turn does not fit (always with contextOverflow 'error'; with
   * 'dropOldest' only when the last message alone does not fit).
   * @throws {@link ToolCallError} when calls of the last turn still wait for their results, or past `maxToolRounds`.
   * @throws {@link ChatAnswerError} when a turn with tools was cut before its JSON ended (`maxTokens`, a full context).
   */
  async prompt(text: string, options?: ChatToolPromptOptions): Promise<ChatAnswer> {
    if (typeof options === 'object' && options !== null && TOOL_OPTIONS.some((k) => k in options)) {
      v.string('text', text);
      return this.#toolTurns({ role: 'user', content: text }, options);
    }
    const stream = this.stream(text, options);
    return stream.result;
  }

  /**
   * Generates the assistant's next turn for the conversation as it stands: after the results of its tool calls
   * ({@link addToolResult}), or after {@link setHistory} with a user message last. Takes prompt() options,
   * tools included.
   *
   * @throws {@link ToolCallError} (`pending`) when a call still waits for its result.
   */
  async respond(options?: ChatToolPromptOptions): Promise<ChatAnswer> {
    this.#checkNoPending();
    const last = this.#messages[this.#messages.length - 1];
    if (last?.role !== 'user' && last?.role !== 'tool') {
      throw v.rangeError('a conversation that ends with a user message or tool results', 'respond()', last?.role ?? 'an empty conversation');
    }
    return this.#toolTurns(undefined, options ?? {});
  }

  /**
   * Adds the result of a tool call the model made (see {@link ChatAnswer.toolCalls}): a string as it is, anything
   * else as JSON. When every call of the turn has its result, {@link respond} lets the model go on.
   */
  addToolResult(id: string, result: unknown): void {
    v.string('id', id);
    if (this.#busy) throw new BusyError('This chat session is answering; wait for the answer (or stop it) first');
    const pending = pendingToolCalls(this.#messages);
    const call = pending.find((c) => c.id === id);
    if (!call) {
      throw v.rangeError(`the id of a call waiting for its result (${pending.map((c) => c.id).join(', ') || 'none is'})`, 'id', id);
    }
    this.#messages = [...this.#messages, { role: 'tool', toolCallId: id, name: call.name, content: resultText(result) }];
  }

  /**
   * Sends a user message and resolves to the answer as a value: the answer is constrained to JSON that `schema`
   * describes, then parsed. The turn joins the history like prompt()'s.
   *
   * @throws {@link GrammarError} when the schema cannot be converted (before anything is generated).
   * @throws {@link ChatAnswerError} when the answer was cut before its JSON ended (`maxTokens`, a full context).
   */
  async promptJson<T = unknown>(text: string, options: ChatJsonOptions): Promise<T> {
    const o = v.options<ChatJsonOptions>('options', options, JSON_OPTIONS);
    if (typeof o.schema !== 'object' || o.schema === null || Array.isArray(o.schema)) throw v.typeError('a JSON Schema object', 'schema', o.schema);
    const { schema, ...rest } = o;
    const answer = await this.prompt(text, { ...rest, jsonSchema: schema });
    return parseJsonAnswer(answer.text, answer.stopReason, answer.generation) as T;
  }

  /**
   * Sends a user message and streams the answer: iterate for text chunks; `result` resolves when the turn
   * ends. The answer joins the history when the turn ends (also when it was stopped, with what was said).
   */
  stream(text: string, options?: ChatPromptOptions): ChatStream {
    v.string('text', text);
    const o = v.options<ChatPromptOptions>('options', options, PROMPT_OPTIONS);
    if (this.#busy) throw new BusyError('This chat session is answering; wait for the answer (or stop it) first');
    this.#checkNoPending();
    const { generation, round } = this.#start([...this.#messages, { role: 'user', content: text }], undefined, o);
    this.#busy = true;
    const result = this.#settle(generation, round).then(
      (r) => {
        this.#busy = false;
        this.#finish(round, { role: 'assistant', content: r.text }, r, true);
        return { text: r.text, stopReason: r.stopReason, droppedMessages: round.dropped, generation: r };
      },
      (error: unknown) => {
        this.#busy = false;
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

  /** A new user message is refused while the last turn's calls wait for their results. */
  #checkNoPending(): void {
    const pending = pendingToolCalls(this.#messages);
    if (pending.length > 0) {
      throw new ToolCallError(
        `The model's tool calls ${pending.map((c) => c.id).join(', ')} wait for their results: add them with addToolResult() (then respond()) first`,
        { reason: 'pending', toolCalls: pending },
      );
    }
  }

  /**
   * Starts one generation on `messages` (rendered for `turn`): fits the conversation into the context and
   * generates. A constrained turn (a grammar, a schema, tools) ends where its grammar does, at end-of-generation:
   * the end-of-turn token is banned inside it, where its text would otherwise be allowed in any JSON string and
   * end the turn halfway through a value.
   */
  #start(
    messages: ConversationMessage[], turn: ToolTurn | undefined, o: Partial<ChatPromptOptions>, grammar?: Grammar,
  ): { generation: Generation; round: Round } {
    const { signal, maxTokens, stopStrings, ...sampling } = o;
    const reserve = maxTokens ?? Math.floor(this.context.contextSize / 4);
    const { tokens, kept, dropped, rendered } = this.#fit(messages, reserve, turn);
    const constrained = grammar !== undefined || sampling.grammar !== undefined || sampling.jsonSchema !== undefined;
    const generation = this.context.generate(tokens, {
      ...sampling,
      ...(grammar === undefined ? {} : { grammar }),
      ...(constrained ? { logitBias: this.#banEndOfTurn(sampling.logitBias) } : {}),
      maxTokens, signal, reuseCache: true,
      stopStrings: [...(stopStrings ?? []), ...this.#endOfTurn.stopStrings], stopTokens: this.#endOfTurn.stopTokens,
    });
    return { generation, round: { kept, rendered, tokens, dropped: dropped.length } };
  }

  /** The caller's logit bias, with the end-of-turn tokens banned where it says nothing of them. */
  #banEndOfTurn(bias: ChatPromptOptions['logitBias']): Map<number, number> {
    const out = new Map<number, number>();
    if (bias instanceof Map) for (const [k, b] of bias) out.set(k, b);
    else if (bias !== undefined && bias !== null && typeof bias === 'object') for (const [k, b] of Object.entries(bias)) out.set(/^\d+$/.test(k) ? Number(k) : (k as never), b);
    for (const t of this.#endOfTurn.stopTokens) if (!out.has(t)) out.set(t, -100);
    return out;
  }

  /** The generation's result; a stopped or failed one's partial answer joins the history as text first. */
  #settle(generation: Generation, round: Round): Promise<GenerationResult> {
    return generation.result.catch((error: unknown) => {
      const partial = (error as { result?: GenerationResult }).result;
      if (partial) this.#finish(round, { role: 'assistant', content: partial.text }, partial, true);
      throw error;
    });
  }

  /**
   * The turn's answer joins the history. `exact`: the message renders as the generated text, so the context's
   * tokens stand for the rendered conversation (a tool turn's message renders differently: the next turn
   * tokenizes afresh, and the context still reuses the longest prefix it holds).
   */
  #finish(round: Round, message: ConversationMessage, r: GenerationResult, exact: boolean): void {
    this.#messages = [...round.kept, message];
    // What the context now holds is the prompt and the answer's tokens. Its text is known exactly only when
    // the turn ended on its stop token; otherwise the next turn tokenizes the conversation afresh (and the
    // context still reuses the longest prefix it holds).
    const stopText = r.stopToken === null ? undefined : this.context.model.specialTokenText(r.stopToken);
    this.#committed =
      exact && (r.stopReason === 'stopToken' || r.stopReason === 'eog') && stopText !== undefined
        ? { text: round.rendered + r.text + stopText, tokens: [...round.tokens, ...r.tokens] }
        : undefined;
  }

  /** The turns of prompt() with tools, and of respond(): generate, run the handlers, until an answer. */
  async #toolTurns(user: ConversationMessage | undefined, options: ChatToolPromptOptions): Promise<ChatAnswer> {
    const all = v.options<ChatToolPromptOptions>('options', options, [...PROMPT_OPTIONS, ...TOOL_OPTIONS]);
    const { tools, toolChoice, parallelToolCalls, executeTools, maxToolRounds, ...o } = all;
    const first = toolTurn({ tools: tools ?? [], choice: toolChoice, parallel: parallelToolCalls });
    const execute = executeTools === undefined ? true : v.boolean('executeTools', executeTools);
    const maxRounds = maxToolRounds === undefined ? 8 : v.integer('maxToolRounds', maxToolRounds, 1, 1000);
    if (offersTools(first) && (o.grammar !== undefined || o.jsonSchema !== undefined)) {
      throw Object.assign(new TypeError('Expected at most one of tools and grammar/jsonSchema but received both'), { code: 'ERR_INVALID_ARG_TYPE' });
    }
    if (this.#busy) throw new BusyError('This chat session is answering; wait for the answer (or stop it) first');
    this.#checkNoPending();
    // required and a named tool ask for calls once; after their results the model may answer.
    const later: ToolTurn = first.choice === 'auto' || first.choice === 'none' ? first : { ...first, choice: 'auto' };
    const grammars = new Map<ToolTurn, Grammar | undefined>([[first, toolGrammar(first)]]);
    this.#busy = true;
    try {
      let messages = user === undefined ? this.#messages : [...this.#messages, user];
      let dropped = 0;
      for (let round = 0; ; round++) {
        if (o.signal?.aborted) throw new AbortError('The chat turn was aborted between tool calls');
        const turn = round === 0 ? first : later;
        if (!grammars.has(turn)) grammars.set(turn, toolGrammar(turn));
        const { generation, round: r0 } = this.#start(messages, turn, o, grammars.get(turn));
        const r = await this.#settle(generation, r0);
        dropped += r0.dropped;
        const answer = (text: string, toolCalls?: ToolCall[]): ChatAnswer =>
          ({ text, stopReason: r.stopReason, droppedMessages: dropped, generation: r, ...(toolCalls ? { toolCalls } : {}) });
        if (!offersTools(turn)) {
          this.#finish(r0, { role: 'assistant', content: r.text }, r, true);
          return answer(r.text);
        }
        let parsed;
        try {
          if (r.stopReason !== 'eog') throw incompleteAnswer(r.text, r);
          parsed = parseToolTurn(r.text, turn);
        } catch (error) {
          this.#finish(r0, { role: 'assistant', content: r.text }, r, true);
          if (error instanceof ChatAnswerError && error.result === undefined) {
            throw new ChatAnswerError(error.message, { reason: error.reason, text: r.text, result: r }, { cause: error.cause });
          }
          throw error;
        }
        if ('response' in parsed) {
          this.#finish(r0, { role: 'assistant', content: parsed.response }, r, false);
          return answer(parsed.response);
        }
        const ids = newToolCallIds(r0.kept, parsed.calls.length);
        const calls: ToolCall[] = parsed.calls.map((c, i) => ({ id: ids[i], name: c.name, arguments: c.arguments }));
        this.#finish(r0, { role: 'assistant', content: '', toolCalls: calls }, r, false);
        const handlers = calls.map((c) => first.tools.find((t) => t.name === c.name)?.handler);
        if (!execute || handlers.some((h) => h === undefined)) return answer('', structuredClone(calls));
        if (round + 1 > maxRounds) {
          throw new ToolCallError(`The model still calls tools after ${maxRounds} rounds (maxToolRounds)`, {
            reason: 'maxToolRounds', toolCalls: structuredClone(calls),
          });
        }
        for (const [i, call] of calls.entries()) {
          let content: string;
          try {
            content = resultText(await handlers[i]!(structuredClone(call.arguments), structuredClone(call)));
          } catch (error) {
            content = `Error: ${error instanceof Error ? error.message : String(error)}`;
          }
          this.#messages = [...this.#messages, { role: 'tool', toolCallId: call.id, name: call.name, content }];
        }
        messages = this.#messages;
      }
    } finally {
      this.#busy = false;
    }
  }

  /** Tokens for `messages` with a generation prompt, dropping old exchanges if the context is too small. */
  #fit(
    messages: ConversationMessage[],
    reserve: number,
    turn: ToolTurn | undefined,
  ): { tokens: number[]; kept: ConversationMessage[]; dropped: ConversationMessage[]; rendered: string } {
    const limit = this.context.contextSize;
    const budget = Math.max(1, limit - Math.min(reserve, Math.floor(limit / 2)));
    let current = messages;
    const dropped: ConversationMessage[] = [];
    for (;;) {
      const segments = this.template.render(templateMessages(current, turn), true);
      const tokens = this.#tokenize(segments, dropped.length === 0);
      if (tokens.length <= budget) return { tokens, kept: current, dropped, rendered: joinSegments(segments) };
      const first = current[0]?.role === 'system' ? 1 : 0;
      // Drop the oldest exchange: everything up to the next user message after the first one (an exchange's
      // tool calls and results go with it).
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
      ...(this.context.lorasFingerprint.length ? { loras: this.context.lorasFingerprint } : {}),
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
  ): { messages: ConversationMessage[]; tokens: number[]; committed: Committed | undefined } {
    const fields: readonly string[] = version === 1 ? [...HEADER_FIELDS, 'stateSha256'] : HEADER_FIELDS;
    for (const key of Object.keys(h)) if (!fields.includes(key) && !(OPTIONAL_FIELDS as readonly string[]).includes(key)) throw bad(`unknown header field "${key}"`);
    for (const key of fields) if (!(key in h)) throw bad(`the header has no "${key}"`);
    if (h.magic !== MAGIC || h.version !== version) throw bad('the header does not match the file\'s magic and version');
    if (JSON.stringify(h.model) !== JSON.stringify(modelFingerprint(this.context.model))) {
      throw bad('it was saved with a different model');
    }
    if (typeof h.template !== 'string') throw bad('the header\'s template is not a string');
    // Its keys and values were computed with these adapters: another set would continue from a cache of another model.
    if (JSON.stringify(h.loras ?? []) !== JSON.stringify(this.context.lorasFingerprint)) {
      throw bad('its cache was computed with other LoRA adapters (or scales) than this context applies');
    }

    if (!Array.isArray(h.messages)) throw bad('the header\'s messages are not an array');
    const messages = h.messages.map((m: unknown, i): ConversationMessage => {
      if (m === null || typeof m !== 'object' || Array.isArray(m)) throw bad(`message ${i} is not an object`);
      const keys = Object.keys(m);
      const { role, content, toolCalls } = m as Record<string, unknown>;
      const shape = role === 'tool' ? MESSAGE_KEYS.tool : toolCalls !== undefined ? MESSAGE_KEYS.calls : MESSAGE_KEYS.plain;
      if (
        (typeof role !== 'string' || (!ROLES.includes(role) && role !== 'tool')) ||
        keys.some((k) => !shape.includes(k)) || (role !== 'tool' && keys.length !== shape.length)
      ) {
        throw bad(`message ${i} is not { role: system|user|assistant, content }, an assistant's { role, content, toolCalls } or a { role: 'tool', toolCallId, name, content }`);
      }
      if (typeof content !== 'string') throw bad(`message ${i}'s content is not a string`);
      try {
        return conversationMessage(m, `message ${i}`, (r) => r as ChatRole);
      } catch (error) {
        throw bad((error as Error).message);
      }
    });
    try {
      checkConversation(messages);
    } catch (error) {
      throw bad((error as Error).message);
    }

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
