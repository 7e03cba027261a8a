// The OpenAI request bodies this server accepts, checked field by field: a wrong type or value is a 400 with
// OpenAI's error shape naming the parameter, never an exception deeper down.
import { normalizeRole, type ChatMessage } from '../chat/template.js';
import { CONSTRAINT_FIELDS, parseConstraint, type Constraint } from './constraints.js';
import { bad, HttpError } from './http-error.js';

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
  /** Choices to generate (`n`): each its own generation of the same prompt. */
  n: number;
  /** `logit_bias`: token id -> bias (-100..100); the ids are checked against the vocabulary with the model. */
  logitBias?: Map<number, number>;
  /** What the answer is held to: a grammar or a JSON Schema, from one of the structured-output fields. */
  constraint?: Constraint;
  /** Each token's logprob and its `top` most likely alternatives (chat: logprobs + top_logprobs; completions: logprobs). */
  logprobs?: { top: number };
}

export interface ChatRequest extends SamplingRequest {
  messages: ChatMessage[];
}

export interface CompletionRequest extends SamplingRequest {
  prompt: string | number[];
  echo: boolean;
}

// Fields that change nothing in the answer (identifiers and hints for OpenAI's own service): accepted.
// `prediction` (Predicted Outputs) only speeds OpenAI's answer up; prompt_cache_* tune OpenAI's cache (this
// server keeps each slot's prompt cache whatever they say).
const NO_EFFECT = new Set([
  'user', 'store', 'metadata', 'service_tier', 'prediction', 'safety_identifier', 'prompt_cache_key', 'prompt_cache_retention',
  'prompt_cache_options',
]);

// Fields this server does not implement: accepted only with a value that asks for what it does anyway (so that
// clients sending their defaults work), refused otherwise, never ignored.
const AS_DEFAULT: Record<string, { ok: (value: unknown) => boolean; what: string }> = {
  tools: { ok: (x) => Array.isArray(x) && x.length === 0, what: '[]' },
  functions: { ok: (x) => Array.isArray(x) && x.length === 0, what: '[]' },
  tool_choice: { ok: (x) => x === 'none' || x === 'auto', what: "'none' or 'auto' (without tools)" },
  function_call: { ok: (x) => x === 'none' || x === 'auto', what: "'none' or 'auto' (without functions)" },
  parallel_tool_calls: { ok: (x) => typeof x === 'boolean', what: 'a boolean (without tools)' },
  suffix: { ok: (x) => x === '', what: "''" },
  modalities: { ok: (x) => Array.isArray(x) && x.length === 1 && x[0] === 'text', what: "['text']" },
  chat_template_kwargs: { ok: (x) => isObject(x) && Object.keys(x).length === 0, what: '{}' },
  skip_special_tokens: { ok: (x) => x === true, what: 'true (special tokens are never in the text)' },
  spaces_between_special_tokens: { ok: (x) => typeof x === 'boolean', what: 'a boolean (no special tokens are in the text)' },
  add_generation_prompt: { ok: (x) => x === true, what: 'true' },
  include_stop_str_in_output: { ok: (x) => x === false, what: 'false' },
  min_tokens: { ok: (x) => x === 0, what: '0' },
  use_beam_search: { ok: (x) => x === false, what: 'false' },
  length_penalty: { ok: (x) => x === 1, what: '1 (there is no beam search)' },
  reasoning_effort: { ok: () => false, what: 'null (the model has no reasoning setting)' },
  audio: { ok: () => false, what: 'null (text only)' },
  verbosity: { ok: (x) => x === 'medium', what: "'medium' (the model has no verbosity setting)" },
  web_search_options: { ok: () => false, what: 'null (this server cannot search the web)' },
  moderation: { ok: () => false, what: 'null (this server runs no moderation)' },
  guided_whitespace_pattern: { ok: () => false, what: 'null (JSON answers use the grammar\'s own whitespace)' },
};

function isObject(value: unknown): value is Body {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

const COMMON = new Set([
  'model', 'stream', 'stream_options', 'max_tokens', 'max_completion_tokens', 'temperature', 'top_p', 'top_k', 'min_p',
  'seed', 'presence_penalty', 'frequency_penalty', 'repetition_penalty', 'stop', 'stop_token_ids', 'n', 'ignore_eos',
  'cache_prompt', 'stream_interval_ms', 'logit_bias', ...CONSTRAINT_FIELDS,
]);

function unknownKey(param: string): HttpError {
  return new HttpError(400, `Unrecognized request argument supplied: ${param}`, { param, code: 'unknown_parameter' });
}

/** The answer's token limit: at least 1 (OpenAI's rule: 0 would ask for an answer of nothing). */
function maxTokensOf(body: Body): number | undefined {
  const read = (key: string) => {
    const value = body[key];
    if (value === undefined || value === null) return undefined;
    if (typeof value !== 'number' || !Number.isInteger(value)) throw bad(key, 'an integer', value);
    if (value < 1) {
      throw new HttpError(400, `Invalid '${key}': integer below minimum value. Expected a value >= 1, but got ${value} instead.`, {
        param: key, code: 'integer_below_min_value',
      });
    }
    if (value > 2 ** 31 - 1) throw bad(key, `an integer between 1 and ${2 ** 31 - 1}`, value);
    return value;
  };
  const completion = read('max_completion_tokens');
  const tokens = read('max_tokens');
  if (completion !== undefined && tokens !== undefined && completion !== tokens) {
    throw new HttpError(400, `max_tokens (${tokens}) and max_completion_tokens (${completion}) disagree: send one of them.`, {
      param: 'max_tokens', code: 'invalid_value',
    });
  }
  return completion ?? tokens;
}

function sampling(body: Body, extra: readonly string[]): SamplingRequest {
  for (const key of Object.keys(body)) {
    if (COMMON.has(key) || NO_EFFECT.has(key) || extra.includes(key)) continue;
    const rule = AS_DEFAULT[key];
    if (rule === undefined) throw unknownKey(key);
    const value = body[key];
    if (value !== undefined && value !== null && !rule.ok(value)) {
      throw new HttpError(
        400,
        `'${key}' is not supported by this server; send ${rule.what}, null, or leave it out. Got ${JSON.stringify(value)?.slice(0, 80)}.`,
        { param: key, code: 'unsupported_parameter' },
      );
    }
  }
  const model = body.model;
  if (typeof model !== 'string' || model.length === 0) throw bad('model', 'a non-empty string', model);
  const stream = optBoolean(body, 'stream') ?? false;
  let includeUsage = false;
  const streamOptions = body.stream_options;
  if (streamOptions !== undefined && streamOptions !== null) {
    if (!isObject(streamOptions)) throw bad('stream_options', 'an object', streamOptions);
    if (!stream) {
      throw new HttpError(400, "The 'stream_options' parameter is only allowed when 'stream' is true.", {
        param: 'stream_options', code: 'invalid_value',
      });
    }
    for (const key of Object.keys(streamOptions)) {
      if (key === 'include_usage') continue;
      // OpenAI's padding of stream events: this server sends none, which is what false asks for.
      if (key === 'include_obfuscation' && (streamOptions[key] === false || streamOptions[key] === null)) continue;
      if (key === 'include_obfuscation') {
        throw new HttpError(400, "'stream_options.include_obfuscation' is not supported by this server; send false, null, or leave it out.", {
          param: 'stream_options.include_obfuscation', code: 'unsupported_parameter',
        });
      }
      throw unknownKey(`stream_options.${key}`);
    }
    const usage = streamOptions.include_usage;
    if (usage !== undefined && usage !== null && typeof usage !== 'boolean') throw bad('stream_options.include_usage', 'a boolean', usage);
    includeUsage = usage === true;
  }
  const maxTokens = maxTokensOf(body);
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
    // OpenAI's limit.
    n: optInteger(body, 'n', 1, 128) ?? 1,
    logitBias: logitBiasOf(body.logit_bias),
    constraint: parseConstraint(body),
  };
}

/** `logit_bias`: token ids (as the object's keys) to a bias from -100 (banned) to 100. */
function logitBiasOf(value: unknown): Map<number, number> | undefined {
  if (value === undefined || value === null) return undefined;
  if (!isObject(value)) throw bad('logit_bias', 'an object of token ids to biases', value);
  const bias = new Map<number, number>();
  for (const [key, b] of Object.entries(value)) {
    if (!/^(0|[1-9]\d{0,9})$/.test(key)) throw bad('logit_bias', `token ids as keys ('${key.slice(0, 20)}' is not one)`, value);
    if (typeof b !== 'number' || !Number.isFinite(b) || b < -100 || b > 100) throw bad(`logit_bias.${key}`, 'a number between -100 and 100', b);
    bias.set(Number(key), b);
  }
  return bias.size > 0 ? bias : undefined;
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
        if (isObject(part) && part.type === 'text' && typeof part.text === 'string') {
          for (const key of Object.keys(part)) if (key !== 'type' && key !== 'text') throw unknownKey(`${at}[${i}].${key}`);
          return part.text;
        }
        throw bad(`${at}[${i}]`, "a text part ({ type: 'text', text })", part);
      })
      .join('');
  }
  throw bad(at, 'a string or an array of text parts', content);
}

// Message fields accepted when null (or an empty array): nothing to act on.
const MESSAGE_NOTHING = new Set(['name', 'refusal', 'tool_calls', 'function_call', 'audio', 'tool_call_id', 'annotations']);

export function parseChatRequest(body: Body): ChatRequest {
  const base = sampling(body, ['messages', 'logprobs', 'top_logprobs']);
  const logprobs = optBoolean(body, 'logprobs') ?? false;
  const top = optInteger(body, 'top_logprobs', 0, 20);
  if (top !== undefined && !logprobs) {
    throw new HttpError(400, "'top_logprobs' needs 'logprobs': true.", { param: 'top_logprobs', code: 'invalid_value' });
  }
  if (logprobs) base.logprobs = { top: top ?? 0 };
  const messages = body.messages;
  if (!Array.isArray(messages) || messages.length === 0) throw bad('messages', 'a non-empty array of messages', messages);
  const parsed = messages.map((m, i): ChatMessage => {
    if (!isObject(m)) throw bad(`messages[${i}]`, 'an object', m);
    for (const key of Object.keys(m)) {
      if (key === 'role' || key === 'content') continue;
      const value = m[key];
      // What OpenAI's own answers carry (an assistant message sent back as history): accepted when it says nothing.
      if (MESSAGE_NOTHING.has(key) && (value === null || (Array.isArray(value) && value.length === 0))) continue;
      if (key === 'name') {
        throw new HttpError(400, `messages[${i}].name: participant names are not supported by this server's chat templates; leave it out.`, {
          param: `messages[${i}].name`, code: 'unsupported_parameter',
        });
      }
      throw unknownKey(`messages[${i}].${key}`);
    }
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
  const base = sampling(body, ['prompt', 'echo', 'logprobs', 'best_of']);
  let prompt = body.prompt;
  if (Array.isArray(prompt) && prompt.length === 1 && typeof prompt[0] === 'string') prompt = prompt[0];
  if (typeof prompt !== 'string' && !(Array.isArray(prompt) && prompt.length > 0 && prompt.every((t) => Number.isInteger(t) && t >= 0))) {
    throw bad('prompt', 'a string or an array of token ids', prompt);
  }
  const echo = optBoolean(body, 'echo') ?? false;
  // OpenAI's legacy limit: the 5 most likely tokens, besides the sampled one.
  const top = optInteger(body, 'logprobs', 0, 5);
  if (top !== undefined) {
    if (echo) {
      throw new HttpError(400, "'logprobs' with 'echo' would need the prompt's logprobs, which this server does not compute; send one of them.", {
        param: 'logprobs', code: 'unsupported_parameter',
      });
    }
    base.logprobs = { top };
  }
  // best_of other than n would rank the choices by their logprobs: not supported (vLLM's default is n).
  const bestOf = optInteger(body, 'best_of', 1, 128);
  if (bestOf !== undefined && bestOf !== base.n) {
    throw new HttpError(400, `'best_of' is not supported by this server; send n (${base.n}), null, or leave it out.`, {
      param: 'best_of', code: 'unsupported_parameter',
    });
  }
  return { ...base, prompt: prompt as string | number[], echo };
}
