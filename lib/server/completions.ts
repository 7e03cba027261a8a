// The two generation endpoints, from a parsed JSON body to the answer: the request is checked, waits its turn
// in the server's queue, becomes prompt tokens (chat: through the template), and is generated on the
// ParallelContext, answered whole or streamed as SSE in the endpoint's shape. What differs between chat and
// text completions is one Endpoint object each; the path through here is the same for both.
import type { ServerResponse } from 'node:http';
import type { ChatMessage, ChatTemplate, Segment } from '../chat/template.js';
import { endOfTurn } from '../chat/end-of-turn.js';
import { segmentsToPieces } from '../chat/tokenize.js';
import { offersTools, templateMessages, toolGrammar, turnSchema, type ToolTurn } from '../chat/tools.js';
import { AbortError, GrammarError, HuoziError } from '../errors.js';
import { Grammar } from '../grammar.js';
import type { LoraAdapter } from '../lora.js';
import type { Model } from '../model.js';
import type { ParallelContext, ParallelGenerateOptions } from '../parallel.js';
import { isChatTemplateError, sendJson, toHttpError } from './http.js';
import type { Metrics } from './metrics.js';
import { HttpError } from './http-error.js';
import type { Constraint } from './constraints.js';
import {
  parseChatRequest, parseCompletionRequest, type ChatRequest, type CompletionRequest, type SamplingRequest,
} from './openai.js';
import { AnswerTokens, ChatShape, CompletionShape, usageOf, type ChatTools, type ResponseShape, type Usage } from './shape.js';

/** What one generation endpoint does its own way. */
export interface Endpoint<R extends SamplingRequest = SamplingRequest> {
  /** The request field holding the prompt, named in errors about its length. */
  readonly param: 'messages' | 'prompt';
  parse(body: Record<string, unknown>): R;
  /**
   * Stops added to the request's own (chat: the template's end of turn). Its tokens are banned inside a
   * constrained answer (see {@link Completions}).
   */
  readonly stops: { readonly stopStrings: readonly string[]; readonly stopTokens: readonly number[] };
  /** The tools the answer may call (chat: `tools`), or undefined when it offers none. */
  tools(request: R): ToolTurn | undefined;
  /** The prompt's tokens; `signal` aborts when the client leaves meanwhile. */
  prompt(request: R, signal: AbortSignal): Promise<number[]>;
  /** The answer's bodies, made just before the generation starts. */
  shape(request: R): ResponseShape;
}

export interface CompletionSettings {
  model: Model;
  context: ParallelContext;
  template: ChatTemplate;
  /** The served model name and its aliases: the names a request's `model` may give. */
  name: string;
  aliases: string[];
  responseRole: string;
  streamIntervalMs: number;
  maxQueue: number;
  metrics: Metrics;
  /** The adapters requests may use, with their default scales (ServerOptions.loras). */
  loras: readonly { adapter: LoraAdapter; scale: number }[];
}

export class Completions {
  /** /v1/chat/completions. */
  readonly chat: Endpoint<ChatRequest>;
  /** /v1/completions. */
  readonly text: Endpoint<CompletionRequest>;
  readonly #s: CompletionSettings;
  readonly #model: Model;
  readonly #context: ParallelContext;
  #active = 0;
  /** Grammars compiled for recent requests (clients send the same schema with every request), newest last. */
  readonly #grammars = new Map<string, Grammar>();

  constructor(settings: CompletionSettings) {
    this.#s = settings;
    this.#model = settings.model;
    this.#context = settings.context;
    this.chat = {
      param: 'messages',
      parse: parseChatRequest,
      stops: endOfTurn(settings.model, settings.template),
      tools: (r) => (offersTools(r.toolTurn) ? r.toolTurn : undefined),
      prompt: (r, signal) => this.#chatPrompt(templateMessages(r.messages, r.toolTurn), signal),
      shape: (r) => new ChatShape(r.model, settings.responseRole, r.logprobs && this.#answerTokens(), chatTools(r)),
    };
    this.text = {
      param: 'prompt',
      parse: parseCompletionRequest,
      stops: { stopStrings: [], stopTokens: [] },
      tools: () => undefined,
      prompt: (r, signal) => this.#completionPrompt(r.prompt, signal),
      shape: (r) => new CompletionShape(
        r.model, !r.echo ? '' : typeof r.prompt === 'string' ? r.prompt : this.#model.detokenize(r.prompt), r.logprobs && this.#answerTokens(),
      ),
    };
  }

  /** Which logprob entries are the answer's: made on the first request that asks for logprobs. */
  #answer: AnswerTokens | undefined;
  #answerTokens(): AnswerTokens {
    // Control tokens render no text (their entries still name them).
    this.#answer ??= new AnswerTokens(new Set([...this.#model.specialTokens.values()].filter((id) => this.#model.detokenize([id]) === '')));
    return this.#answer;
  }

  /** Generations running or waiting for a slot (a request with `n` choices counts n). */
  get active(): number {
    return this.#active;
  }

  /** Answers `body` on `res`; the usage when an answer was generated (undefined when the client left). */
  async serve<R extends SamplingRequest>(res: ServerResponse, body: Record<string, unknown>, endpoint: Endpoint<R>): Promise<Usage | undefined> {
    const request = endpoint.parse(body);
    this.#checkModel(request.model);
    // Checked before the prompt is rendered or tokenized: a refused request costs nothing more.
    const options = this.#generateOptions(request, endpoint);
    const capacity = this.#context.parallel + this.#s.maxQueue;
    if (request.n > capacity) {
      throw new HttpError(400, `n = ${request.n} is more than this server runs and queues at once (${capacity}).`, {
        param: 'n', code: 'invalid_value',
      });
    }
    if (this.#active + request.n > capacity) {
      this.#s.metrics.rejected++;
      throw new HttpError(503, `The server is busy: ${this.#active} requests are running or waiting. Try again shortly.`, {
        type: 'server_error', code: 'server_busy', headers: { 'Retry-After': '1' },
      });
    }
    this.#active += request.n;
    try {
      // A client that leaves while its prompt is rendered or tokenized stops that work.
      const left = new AbortController();
      const onClose = () => {
        if (!res.writableFinished) left.abort();
      };
      res.on('close', onClose);
      let prompt: number[];
      try {
        prompt = await endpoint.prompt(request, left.signal);
      } finally {
        res.off('close', onClose);
      }
      this.#checkLength(prompt.length, endpoint.param, 'resulted in');
      const grammarField = request.constraint?.field ?? (endpoint.tools(request) ? 'tools' : undefined);
      return await this.#generate(res, request, prompt, options, endpoint.shape(request), grammarField);
    } finally {
      this.#active -= request.n;
    }
  }

  #checkModel(name: string): void {
    if (name !== this.#s.name && !this.#s.aliases.includes(name)) {
      throw new HttpError(404, `The model '${name}' does not exist; this server serves '${this.#s.name}'.`, {
        param: 'model', code: 'model_not_found',
      });
    }
  }

  /** 400 when `tokens` (a count, or the fewest the prompt can be) leaves no room in a slot. */
  #checkLength(tokens: number, param: Endpoint['param'], how: string): void {
    const limit = this.#context.slotContextSize;
    if (tokens >= limit) {
      throw new HttpError(
        400,
        `This model's maximum context length is ${limit} tokens. However, your ${param} ` +
          `${how} ${tokens} tokens, which leaves no room for a completion. Please shorten it.`,
        { param, code: 'context_length_exceeded' },
      );
    }
  }

  async #chatPrompt(messages: ChatMessage[], signal: AbortSignal): Promise<number[]> {
    let segments: Segment[];
    const template = this.#s.template;
    try {
      // Off the event loop where the template has renderAsync (Jinja templates: a separate renderer under limits).
      const t = template as ChatTemplate & { renderAsync?: (m: readonly ChatMessage[], g: boolean) => Promise<Segment[]> };
      segments = t.renderAsync ? await t.renderAsync(messages, true) : t.render(messages, true);
    } catch (error) {
      if (isChatTemplateError(error)) {
        throw new HttpError(400, error.message, { param: 'messages', code: 'chat_template_error' });
      }
      if (error instanceof HuoziError) throw error;
      // A template object of the caller's own that threw.
      throw new HttpError(400, `The chat template '${template.name}' failed: ${(error as Error)?.message ?? String(error)}`, {
        param: 'messages', code: 'chat_template_error',
      });
    }
    const model = this.#model;
    const pieces = segmentsToPieces(model, segments);
    // The fewest tokens this can be, from its length alone: one that cannot fit is refused before tokenizing.
    let least = 0;
    for (const piece of pieces) least += 'special' in piece ? 1 : model.minTokens(piece.text);
    this.#checkLength(least, 'messages', 'would be at least');
    const out: number[] = [];
    for (const piece of pieces) {
      if ('special' in piece) out.push(piece.special);
      else for (const id of await model.tokenizeToArrayAsync(piece.text, { addBos: false, parseSpecial: false, signal })) out.push(id);
    }
    const bos = model.tokens.bos;
    if (model.tokens.addBos && bos !== null && out[0] !== bos) out.unshift(bos);
    return out;
  }

  async #completionPrompt(prompt: string | number[], signal: AbortSignal): Promise<number[]> {
    const model = this.#model;
    if (typeof prompt === 'string') {
      this.#checkLength(model.minTokens(prompt), 'prompt', 'would be at least');
      return Array.from(await model.tokenizeToArrayAsync(prompt, { signal }));
    }
    const bad = prompt.findIndex((t) => t >= model.vocabularySize);
    if (bad >= 0) {
      throw new HttpError(400, `prompt[${bad}] = ${prompt[bad]} is not a token id of this model (0..${model.vocabularySize - 1}).`, {
        param: 'prompt', code: 'invalid_value',
      });
    }
    return prompt;
  }

  /**
   * The options of each of the request's `n` generations (they differ only in their seeds). A constrained answer
   * (a structured-output field, or tools) ends where its grammar does, at end-of-generation, as ChatSession's
   * does: the end-of-turn tokens are banned inside it, where a JSON string would otherwise take their text and
   * the answer end halfway through a value (unless the request's own logit_bias names them).
   */
  #generateOptions<R extends SamplingRequest>(r: R, endpoint: Endpoint<R>): ParallelGenerateOptions[] {
    const stops = endpoint.stops;
    const turn = endpoint.tools(r);
    const vocab = this.#model.vocabularySize;
    const badId = r.stopTokenIds.find((t) => t >= vocab);
    if (badId !== undefined) {
      throw new HttpError(400, `stop_token_ids contains ${badId}, not a token id of this model (0..${vocab - 1}).`, {
        param: 'stop_token_ids', code: 'invalid_value',
      });
    }
    const o: ParallelGenerateOptions = {
      stopStrings: [...r.stop, ...stops.stopStrings],
      stopTokens: [...r.stopTokenIds, ...stops.stopTokens],
      stopAtEog: !r.ignoreEos,
      reuseCache: r.cachePrompt,
      // A non-streaming answer is sent whole: its text need not wake the JS thread before the end.
      streamIntervalMs: r.stream ? (r.streamIntervalMs ?? this.#s.streamIntervalMs) : 60_000,
    };
    o.loras = this.#loras(r);
    if (r.maxTokens !== undefined) o.maxTokens = r.maxTokens;
    if (r.temperature !== undefined) o.temperature = r.temperature;
    if (r.topP !== undefined) o.topP = r.topP;
    if (r.topK !== undefined) o.topK = Math.max(0, r.topK);
    if (r.minP !== undefined) o.minP = r.minP;
    if (r.presencePenalty !== undefined) o.presencePenalty = r.presencePenalty;
    if (r.frequencyPenalty !== undefined) o.frequencyPenalty = r.frequencyPenalty;
    if (r.repetitionPenalty !== undefined) o.repeatPenalty = r.repetitionPenalty;
    if (r.logitBias !== undefined) {
      for (const id of r.logitBias.keys()) {
        if (id >= vocab) {
          throw new HttpError(400, `logit_bias names ${id}, not a token id of this model (0..${vocab - 1}).`, {
            param: 'logit_bias', code: 'invalid_value',
          });
        }
      }
      o.logitBias = r.logitBias;
    }
    if (r.logprobs !== undefined) {
      o.logprobs = true;
      o.topLogprobs = r.logprobs.top;
    }
    if (turn !== undefined && r.constraint !== undefined) {
      throw new HttpError(400, `'tools' and '${r.constraint.field}' both constrain the answer: send one of them.`, {
        param: r.constraint.field, code: 'invalid_value',
      });
    }
    if (r.constraint !== undefined) o.grammar = this.#grammar(r.constraint);
    else if (turn !== undefined) o.grammar = this.#toolGrammar(turn);
    if (o.grammar !== undefined && stops.stopTokens.length > 0) {
      const bias = new Map(r.logitBias ?? []);
      for (const t of stops.stopTokens) if (!bias.has(t)) bias.set(t, -100);
      o.logitBias = bias;
    }
    // Any integer, folded into the library's 0 .. 2^32-2 (2^32-1 would mean "random" to llama.cpp); choice i
    // is seeded seed + i, so that the choices differ and each is reproducible.
    const fold = (seed: number) => ((seed % (2 ** 32 - 1)) + (2 ** 32 - 1)) % (2 ** 32 - 1);
    return Array.from({ length: r.n }, (_, i) => (r.seed === undefined ? { ...o } : { ...o, seed: fold(fold(r.seed) + i) }));
  }

  /**
   * The request's adapters: those it lists at its scales and the others off, or (no `lora`, or `[]`, as
   * llama-server) the server's defaults.
   */
  #loras(r: SamplingRequest): { adapter: LoraAdapter; scale: number }[] {
    const all = this.#s.loras;
    if (r.lora === undefined || r.lora.length === 0) return all.filter((l) => l.scale !== 0);
    const scales = new Map(r.lora.map((l) => [l.id, l.scale]));
    for (const id of scales.keys()) {
      if (id >= all.length) {
        throw new HttpError(400, all.length === 0
          ? `lora names adapter ${id}, but this server has no LoRA adapters (start it with --lora).`
          : `lora names adapter ${id}; this server's adapters are 0..${all.length - 1} (GET /lora-adapters).`, {
          param: 'lora', code: 'invalid_value',
        });
      }
    }
    return all.flatMap((l, id) => (scales.get(id) ? [{ adapter: l.adapter, scale: scales.get(id)! }] : []));
  }

  /** The constraint's grammar, compiled once for all the choices (and kept for the next requests that ask for it). */
  #grammar(c: Constraint): Grammar {
    const key = 'grammar' in c ? `g${c.grammar}` : `s${JSON.stringify(c.jsonSchema)}`;
    return this.#cached(key, () => {
      try {
        return 'grammar' in c ? Grammar.compile(c.grammar) : Grammar.fromJsonSchema(c.jsonSchema);
      } catch (error) {
        throw constraintError(error, c.field);
      }
    });
  }

  /**
   * The tool turn's grammar, kept as the constraints' are (by the turn's schema: an agent sends the same tools
   * with every request). A tool whose parameters the converter refuses is a 400 naming that tool's parameters.
   */
  #toolGrammar(turn: ToolTurn): Grammar {
    return this.#cached(`t${JSON.stringify(turnSchema(turn))}`, () => {
      try {
        return toolGrammar(turn)!;
      } catch (error) {
        if (!(error instanceof GrammarError)) throw error;
        // The core names the tool in its message; the client's field is that tool's place in its list.
        const i = turn.tools.findIndex((t) => {
          if (typeof turn.choice === 'object' && turn.choice.name !== t.name) return false;
          try {
            Grammar.fromJsonSchema(t.parameters);
            return false;
          } catch {
            return true;
          }
        });
        throw constraintError(error, i === -1 ? 'tools' : `tools[${i}].function.parameters`);
      }
    });
  }

  /** The grammar kept under `key`, or `compile()`'s, kept (the least recently used one goes when full). */
  #cached(key: string, compile: () => Grammar): Grammar {
    let grammar = this.#grammars.get(key);
    if (grammar === undefined) {
      grammar = compile();
      if (this.#grammars.size >= GRAMMAR_CACHE) this.#grammars.delete(this.#grammars.keys().next().value!);
    } else this.#grammars.delete(key);
    this.#grammars.set(key, grammar);
    return grammar;
  }

  async #generate(
    res: ServerResponse,
    request: SamplingRequest,
    prompt: number[],
    options: ParallelGenerateOptions[],
    shape: ResponseShape,
    grammarField: string | undefined,
  ): Promise<Usage | undefined> {
    if (res.destroyed) throw new AbortError('The client left before its generation started');
    // The choices evaluate the prompt once; the others copy its cache.
    const generations = this.#context.generateChoices(prompt, options);
    const stopAll = () => {
      for (const g of generations) g.stop();
    };
    // The client going away (closed socket, aborted fetch) stops the generations at the next step.
    const onClose = () => {
      if (!res.writableFinished) stopAll();
    };
    res.on('close', onClose);
    try {
      if (!request.stream) {
        const results = await Promise.all(generations.map((g) => g.result));
        const usage = usageOf(results);
        sendJson(res, 200, shape.response(results, usage));
        return usage;
      }
      res.writeHead(200, {
        'Content-Type': 'text/event-stream; charset=utf-8',
        'Cache-Control': 'no-cache',
        Connection: 'keep-alive',
        'X-Accel-Buffering': 'no',
      });
      res.flushHeaders();
      const send = (data: unknown) => {
        if (!res.writableEnded && !res.destroyed) res.write(`data: ${typeof data === 'string' ? data : JSON.stringify(data)}\n\n`);
      };
      for (let i = 0; i < generations.length; i++) for (const event of shape.opening(i)) send(event);
      // The choices stream at once, each chunk sent as it comes (a client reads them apart by `index`).
      const results = await Promise.all(generations.map(async (generation, i) => {
        if (request.logprobs !== undefined) {
          const answer = this.#answerTokens().stream();
          for await (const chunk of generation.chunks()) {
            const entries = answer.take(chunk.text, chunk.logprobs);
            if (chunk.text !== '' || entries.length > 0) for (const event of shape.chunk(i, chunk.text, entries)) send(event);
          }
        } else {
          for await (const text of generation) for (const event of shape.chunk(i, text)) send(event);
        }
        const result = await generation.result;
        for (const event of shape.final(i, result)) send(event);
        return result;
      }));
      const usage = usageOf(results);
      if (request.includeUsage) send(shape.usage(usage));
      send('[DONE]');
      res.end();
      return usage;
    } catch (error) {
      // One choice failed or the client left: the others stop too.
      stopAll();
      if (error instanceof AbortError) {
        // The client left: nobody to answer.
        if (!res.headersSent) res.destroy();
        else res.end();
        return undefined;
      }
      const e = grammarField !== undefined ? constraintError(error, grammarField) : error;
      if (res.headersSent) {
        // Mid-stream: report the failure in the stream itself, as OpenAI does, then end it.
        const http = toHttpError(e);
        if (!res.writableEnded) {
          res.write(`data: ${JSON.stringify(http.body())}\n\n`);
          res.end();
        }
        return undefined;
      }
      throw e;
    } finally {
      res.off('close', onClose);
    }
  }
}

/** A chat request's tool turn for its answers, when it offers tools: with the call ids its conversation holds. */
function chatTools(r: ChatRequest): ChatTools | undefined {
  if (!offersTools(r.toolTurn)) return undefined;
  const taken = new Set<string>();
  for (const m of r.messages) if (m.role === 'assistant' && 'toolCalls' in m) for (const c of m.toolCalls) taken.add(c.id);
  return { turn: r.toolTurn, taken };
}

/** How many compiled grammars a server keeps for requests that send the same one again. */
const GRAMMAR_CACHE = 32;

/**
 * A GrammarError as the client's 400 naming the field that asked for the grammar: one that cannot be compiled
 * (bad GBNF, a schema keyword the converter cannot honour), or one that allowed no next token while generating.
 */
function constraintError(error: unknown, field: string): unknown {
  if (!(error instanceof GrammarError)) return error;
  return new HttpError(400, `${field}: ${error.message}`, { param: field, code: 'invalid_value' });
}
