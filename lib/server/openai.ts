// The OpenAI request bodies this server accepts, checked field by field: a wrong type or value is a 400 with
// OpenAI's error shape naming the parameter, never an exception deeper down.
import { normalizeRole, type ChatMessage } from '../chat/template.js';

/** An error answered to the client with OpenAI's error body. */
export class HttpError extends Error {
  readonly status: number;
  readonly type: string;
  readonly param: string | null;
  readonly errorCode: string | null;
  readonly headers: Record<string, string>;
  constructor(
    status: number,
    message: string,
    options: { type?: string; param?: string | null; code?: string | null; headers?: Record<string, string> } = {},
  ) {
    super(message);
    this.name = 'HttpError';
    this.status = status;
    this.type = options.type ?? (status === 401 ? 'authentication_error' : status >= 500 ? 'server_error' : 'invalid_request_error');
    this.param = options.param ?? null;
    this.errorCode = options.code ?? null;
    this.headers = options.headers ?? {};
  }

  body(): object {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.errorCode } };
  }
}

function bad(param: string, expected: string, value: unknown): HttpError {
  const shown = typeof value === 'string' ? JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value) : JSON.stringify(value);
  return new HttpError(400, `Invalid value for '${param}': expected ${expected}, got ${shown ?? typeof value}.`, {
    param, code: 'invalid_value',
  });
}

type Body = Record<string, unknown>;

function optNumber(body: Body, key: string, min: number, max: number): number | undefined {
  const value = body[key];
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'number' || !Number.isFinite(value) || value < min || value > max) {
    throw bad(key, `a number between ${min} and ${max}`, value);
  }
  return value;
}

function optInteger(body: Body, key: string, min: number, max: number): number | undefined {
  const value = optNumber(body, key, min, max);
  if (value !== undefined && !Number.isInteger(value)) throw bad(key, `an integer between ${min} and ${max}`, value);
  return value;
}

function optBoolean(body: Body, key: string): boolean | undefined {
  const value = body[key];
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'boolean') throw bad(key, 'a boolean', value);
  return value;
}

/** Sampling and stopping parameters common to both endpoints. */
export interface SamplingRequest {
  model: string;
  stream: boolean;
  includeUsage: boolean;
  maxTokens?: number;
  temperature?: number;
  topP?: number;
  topK?: number;
  minP?: number;
  seed?: number;
  presencePenalty?: number;
  frequencyPenalty?: number;
  repetitionPenalty?: number;
  stop: string[];
  stopTokenIds: number[];
  ignoreEos: boolean;
  cachePrompt: boolean;
  /** Streaming: how often text is sent, in ms (0: one event per token); undefined: the server's setting. */
  streamIntervalMs?: number;
}

export interface ChatRequest extends SamplingRequest {
  messages: ChatMessage[];
}

export interface CompletionRequest extends SamplingRequest {
  prompt: string | number[];
  echo: boolean;
}

// Fields a client may send that change nothing here (accepted so that ordinary clients work).
const IGNORED = new Set([
  'user', 'logit_bias', 'logprobs', 'top_logprobs', 'response_format', 'tools', 'tool_choice', 'parallel_tool_calls',
  'service_tier', 'store', 'metadata', 'suffix', 'best_of', 'modalities', 'reasoning_effort', 'prediction', 'audio',
  'functions', 'function_call', 'chat_template_kwargs', 'skip_special_tokens', 'spaces_between_special_tokens',
  'add_generation_prompt', 'include_stop_str_in_output', 'min_tokens', 'use_beam_search', 'length_penalty',
]);

const COMMON = new Set([
  'model', 'stream', 'stream_options', 'max_tokens', 'max_completion_tokens', 'temperature', 'top_p', 'top_k', 'min_p',
  'seed', 'presence_penalty', 'frequency_penalty', 'repetition_penalty', 'stop', 'stop_token_ids', 'n', 'ignore_eos',
  'cache_prompt', 'stream_interval_ms',
]);

function sampling(body: Body, extra: readonly string[]): SamplingRequest {
  for (const key of Object.keys(body)) {
    if (!COMMON.has(key) && !IGNORED.has(key) && !extra.includes(key)) {
      throw new HttpError(400, `Unrecognized request argument supplied: ${key}`, { param: key, code: 'unknown_parameter' });
    }
  }
  const model = body.model;
  if (typeof model !== 'string' || model.length === 0) throw bad('model', 'a non-empty string', model);
  const n = optInteger(body, 'n', 1, 1);
  void n;
  const stream = optBoolean(body, 'stream') ?? false;
  let includeUsage = false;
  const streamOptions = body.stream_options;
  if (streamOptions !== undefined && streamOptions !== null) {
    if (typeof streamOptions !== 'object' || Array.isArray(streamOptions)) throw bad('stream_options', 'an object', streamOptions);
    includeUsage = optBoolean(streamOptions as Body, 'include_usage') ?? false;
  }
  const maxTokens = optInteger(body, 'max_completion_tokens', 0, 2 ** 31 - 1) ?? optInteger(body, 'max_tokens', 0, 2 ** 31 - 1);
  const stopValue = body.stop;
  let stop: string[] = [];
  if (typeof stopValue === 'string') stop = [stopValue];
  else if (Array.isArray(stopValue)) {
    if (stopValue.length > 16 || !stopValue.every((s) => typeof s === 'string')) throw bad('stop', 'a string or up to 16 strings', stopValue);
    stop = stopValue as string[];
  } else if (stopValue !== undefined && stopValue !== null) throw bad('stop', 'a string or an array of strings', stopValue);
  const ids = body.stop_token_ids;
  let stopTokenIds: number[] = [];
  if (Array.isArray(ids)) {
    if (!ids.every((t) => Number.isInteger(t) && t >= 0)) throw bad('stop_token_ids', 'an array of token ids', ids);
    stopTokenIds = ids as number[];
  } else if (ids !== undefined && ids !== null) throw bad('stop_token_ids', 'an array of token ids', ids);
  return {
    model,
    stream,
    includeUsage,
    maxTokens,
    temperature: optNumber(body, 'temperature', 0, 2),
    topP: optNumber(body, 'top_p', 0, 1),
    topK: optInteger(body, 'top_k', -1, 1 << 20),
    minP: optNumber(body, 'min_p', 0, 1),
    seed: optInteger(body, 'seed', -(2 ** 53), 2 ** 53),
    presencePenalty: optNumber(body, 'presence_penalty', -2, 2),
    frequencyPenalty: optNumber(body, 'frequency_penalty', -2, 2),
    repetitionPenalty: optNumber(body, 'repetition_penalty', Number.MIN_VALUE, 10),
    stop: stop.filter((s) => s.length > 0),
    stopTokenIds,
    ignoreEos: optBoolean(body, 'ignore_eos') ?? false,
    cachePrompt: optBoolean(body, 'cache_prompt') ?? true,
    streamIntervalMs: optInteger(body, 'stream_interval_ms', 0, 60_000),
  };
}

/** Parses a request body; throws HttpError 400 on anything that is not a JSON object. */
export function parseJson(text: string): Body {
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch (error) {
    throw new HttpError(400, `The request body is not valid JSON: ${(error as Error).message}`, { code: 'invalid_json' });
  }
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw new HttpError(400, 'The request body must be a JSON object.', { code: 'invalid_json' });
  }
  return body as Body;
}

function contentText(content: unknown, at: string): string {
  if (typeof content === 'string') return content;
  // The array form: text parts only.
  if (Array.isArray(content)) {
    return content
      .map((part, i) => {
        if (typeof part === 'object' && part !== null && (part as Body).type === 'text' && typeof (part as Body).text === 'string') {
          return (part as Body).text as string;
        }
        throw bad(`${at}[${i}]`, "a text part ({ type: 'text', text })", part);
      })
      .join('');
  }
  throw bad(at, 'a string or an array of text parts', content);
}

export function parseChatRequest(body: Body): ChatRequest {
  const base = sampling(body, ['messages']);
  const messages = body.messages;
  if (!Array.isArray(messages) || messages.length === 0) throw bad('messages', 'a non-empty array of messages', messages);
  const parsed = messages.map((m, i): ChatMessage => {
    if (typeof m !== 'object' || m === null || Array.isArray(m)) throw bad(`messages[${i}]`, 'an object', m);
    let role;
    try {
      role = normalizeRole((m as Body).role, `messages[${i}].role`);
    } catch {
      throw bad(`messages[${i}].role`, 'one of system, user, assistant, 系统, 用户, 助手', (m as Body).role);
    }
    return { role, content: contentText((m as Body).content ?? '', `messages[${i}].content`) };
  });
  return { ...base, messages: parsed };
}

export function parseCompletionRequest(body: Body): CompletionRequest {
  const base = sampling(body, ['prompt', 'echo']);
  let prompt = body.prompt;
  if (Array.isArray(prompt) && prompt.length === 1 && typeof prompt[0] === 'string') prompt = prompt[0];
  if (typeof prompt !== 'string' && !(Array.isArray(prompt) && prompt.length > 0 && prompt.every((t) => Number.isInteger(t) && t >= 0))) {
    throw bad('prompt', 'a string or an array of token ids', prompt);
  }
  return { ...base, prompt: prompt as string | number[], echo: optBoolean(body, 'echo') ?? false };
}
