// The OpenAI request bodies this server accepts, checked field by field: a wrong type or value is a 400 with
// OpenAI's error shape naming the parameter, never an exception deeper down.
import { normalizeRole } from '../chat/template.js';
import {
  checkConversation, toolTurn, type ConversationMessage, type ToolCall, type ToolChoice, type ToolTurn,
} from '../chat/tools.js';
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
  /** llama-server's per-request adapters: the server's adapter `id`s with their scales (the others off). */
  lora?: { id: number; scale: number }[];
}

export interface ChatRequest extends SamplingRequest {
  /** The conversation: plain messages, assistant turns that called tools, and the tools' results. */
  messages: ConversationMessage[];
  /** What the answer's turn may call (`tools`, `tool_choice`, `parallel_tool_calls`); undefined without tools. */
  toolTurn?: ToolTurn;
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
  // The legacy form of tools (deprecated by OpenAI): send `tools` and `tool_choice`.
  functions: { ok: (x) => Array.isArray(x) && x.length === 0, what: "[] (send 'tools')" },
  function_call: { ok: (x) => x === 'none' || x === 'auto', what: "'none' or 'auto' (send 'tool_choice')" },
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
  'cache_prompt', 'stream_interval_ms', 'logit_bias', 'lora', ...CONSTRAINT_FIELDS,
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
    lora: loraOf(body.lora),
    constraint: parseConstraint(body),
  };
}

/** `lora`: [{ id, scale }], each id once (checked against the server's adapters by the caller). */
function loraOf(value: unknown): { id: number; scale: number }[] | undefined {
  if (value === undefined || value === null) return undefined;
  if (!Array.isArray(value) || value.length > 64) throw bad('lora', 'an array of up to 64 { id, scale }', value);
  const seen = new Set<number>();
  return value.map((entry: unknown, i) => {
    if (!isObject(entry)) throw bad(`lora[${i}]`, 'an object { id, scale }', entry);
    for (const key of Object.keys(entry)) if (key !== 'id' && key !== 'scale') throw unknownKey(`lora[${i}].${key}`);
    const { id, scale } = entry;
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 0) throw bad(`lora[${i}].id`, 'an adapter id (an integer from 0)', id);
    if (seen.has(id)) throw bad(`lora[${i}].id`, 'each adapter once', id);
    seen.add(id);
    if (typeof scale !== 'number' || !Number.isFinite(scale) || Math.abs(scale) > 1e6) throw bad(`lora[${i}].scale`, 'a finite number', scale);
    return { id, scale };
  });
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

/** Tool names as the core takes them: OpenAI's, less a leading digit or dash. */
const TOOL_NAME = /^[A-Za-z_][A-Za-z0-9_-]{0,63}$/;
const TOOL_NAME_RULE = 'a name of letters, digits, _ and - (at most 64, not starting with a digit or -)';
/** OpenAI's limit on the tools of one request. */
const MAX_TOOLS = 128;

function onlyKeys(value: Body, at: string, keys: readonly string[]): void {
  for (const key of Object.keys(value)) if (!keys.includes(key)) throw unknownKey(`${at}.${key}`);
}

function unsupported(param: string, message: string): HttpError {
  return new HttpError(400, message, { param, code: 'unsupported_parameter' });
}

/**
 * `tools`, `tool_choice` and `parallel_tool_calls` as the core's turn (undefined without tools). OpenAI's
 * function tools only; each field is checked here so that a 400 names it as the client wrote it.
 */
function toolTurnOf(body: Body): ToolTurn | undefined {
  const value = body.tools;
  const tools: { name: string; description?: string; parameters?: object }[] = [];
  if (value !== undefined && value !== null) {
    if (!Array.isArray(value)) throw bad('tools', 'an array of tools', value);
    if (value.length > MAX_TOOLS) throw bad('tools', `at most ${MAX_TOOLS} tools`, `${value.length} tools`);
    value.forEach((t: unknown, i) => {
      const at = `tools[${i}]`;
      if (!isObject(t)) throw bad(at, "a tool ({ type: 'function', function: { name, description?, parameters?, strict? } })", t);
      if (t.type !== 'function') {
        if (typeof t.type === 'string') throw unsupported(`${at}.type`, `${at}.type '${t.type.slice(0, 40)}' is not supported by this server; send 'function'.`);
        throw bad(`${at}.type`, "'function'", t.type);
      }
      onlyKeys(t, at, ['type', 'function']);
      const fn = t.function;
      if (!isObject(fn)) throw bad(`${at}.function`, 'an object { name, description?, parameters?, strict? }', fn);
      onlyKeys(fn, `${at}.function`, ['name', 'description', 'parameters', 'strict']);
      const name = fn.name;
      if (typeof name !== 'string' || !TOOL_NAME.test(name)) throw bad(`${at}.function.name`, TOOL_NAME_RULE, name);
      if (tools.some((other) => other.name === name)) throw bad(`${at}.function.name`, 'a name no other tool has', name);
      const tool: (typeof tools)[number] = { name };
      if (fn.description !== undefined && fn.description !== null) {
        if (typeof fn.description !== 'string') throw bad(`${at}.function.description`, 'a string', fn.description);
        tool.description = fn.description;
      }
      if (fn.parameters !== undefined && fn.parameters !== null) {
        if (!isObject(fn.parameters)) throw bad(`${at}.function.parameters`, 'a JSON Schema object', fn.parameters);
        const type = fn.parameters.type;
        if (type !== undefined && type !== 'object') {
          throw bad(`${at}.function.parameters.type`, "'object' (the arguments are an object)", type);
        }
        tool.parameters = fn.parameters;
      }
      // strict: false lets OpenAI's arguments leave the schema; here they always follow it, which is what strict:
      // true asks and what a non-strict schema hopes for (as response_format's strict).
      if (fn.strict !== undefined && fn.strict !== null && typeof fn.strict !== 'boolean') throw bad(`${at}.function.strict`, 'a boolean', fn.strict);
      tools.push(tool);
    });
  }
  const choice = toolChoiceOf(body.tool_choice, tools.map((t) => t.name));
  const parallel = optBoolean(body, 'parallel_tool_calls');
  if (tools.length === 0) return undefined;
  try {
    return toolTurn({ tools, choice, parallel: parallel ?? true });
  } catch (error) {
    // Everything the core checks was checked above; this names the field should the two ever disagree.
    throw new HttpError(400, `tools: ${(error as Error).message}`, { param: 'tools', code: 'invalid_value' });
  }
}

/** `tool_choice`: OpenAI's strings or a named function; without tools only 'none' and 'auto' (what it means then). */
function toolChoiceOf(value: unknown, names: readonly string[]): ToolChoice {
  const expected = "'none', 'auto', 'required' or { type: 'function', function: { name } }";
  if (value === undefined || value === null) return names.length > 0 ? 'auto' : 'none';
  if (value === 'none' || value === 'auto') return value;
  if (value === 'required') {
    if (names.length === 0) throw bad('tool_choice', "'none' or 'auto' when no tools are given", value);
    return value;
  }
  if (!isObject(value)) throw bad('tool_choice', expected, value);
  if (value.type !== 'function') {
    if (typeof value.type === 'string') {
      throw unsupported('tool_choice.type', `tool_choice.type '${value.type.slice(0, 40)}' is not supported by this server; send 'function'.`);
    }
    throw bad('tool_choice.type', "'function'", value.type);
  }
  onlyKeys(value, 'tool_choice', ['type', 'function']);
  const fn = value.function;
  if (!isObject(fn)) throw bad('tool_choice.function', 'an object { name }', fn);
  onlyKeys(fn, 'tool_choice.function', ['name']);
  if (typeof fn.name !== 'string' || !names.includes(fn.name)) {
    throw bad('tool_choice.function.name', `the name of one of the tools (${names.join(', ') || 'none are given'})`, fn.name);
  }
  return { name: fn.name };
}

/** An assistant message's `tool_calls` as the core's calls (arguments parsed from their JSON text). */
function toolCallsOf(value: unknown[], at: string): ToolCall[] {
  return value.map((c, j) => {
    const cat = `${at}.tool_calls[${j}]`;
    if (!isObject(c)) throw bad(cat, "a tool call ({ id, type: 'function', function: { name, arguments } })", c);
    onlyKeys(c, cat, ['id', 'type', 'function']);
    if (typeof c.id !== 'string' || c.id.length === 0) throw bad(`${cat}.id`, 'a non-empty string', c.id);
    if (c.type !== 'function') throw bad(`${cat}.type`, "'function'", c.type);
    const fn = c.function;
    if (!isObject(fn)) throw bad(`${cat}.function`, 'an object { name, arguments }', fn);
    onlyKeys(fn, `${cat}.function`, ['name', 'arguments']);
    if (typeof fn.name !== 'string' || !TOOL_NAME.test(fn.name)) throw bad(`${cat}.function.name`, TOOL_NAME_RULE, fn.name);
    let args: unknown;
    try {
      args = typeof fn.arguments === 'string' ? JSON.parse(fn.arguments) : undefined;
    } catch {
      args = undefined;
    }
    if (!isObject(args)) throw bad(`${cat}.function.arguments`, 'a JSON object, as text', fn.arguments);
    return { id: c.id, name: fn.name, arguments: args };
  });
}

/** One message of the conversation: `{ role, content }`, an assistant's `tool_calls`, or a tool's result. */
function messageOf(m: unknown, i: number): ConversationMessage {
  const at = `messages[${i}]`;
  if (!isObject(m)) throw bad(at, 'an object', m);
  if (m.role === 'function') {
    throw unsupported(`${at}.role`, `${at}.role 'function' (the legacy form of tool results) is not supported by this server; send role 'tool' with tool_call_id.`);
  }
  const tool = m.role === 'tool';
  const calls = m.role === 'assistant' && Array.isArray(m.tool_calls) && m.tool_calls.length > 0;
  for (const key of Object.keys(m)) {
    if (key === 'role' || key === 'content') continue;
    if (tool && (key === 'tool_call_id' || key === 'name')) continue;
    if (calls && key === 'tool_calls') continue;
    const value = m[key];
    // What OpenAI's own answers carry (an assistant message sent back as history): accepted when it says nothing.
    if (MESSAGE_NOTHING.has(key) && (value === null || (Array.isArray(value) && value.length === 0))) continue;
    if (key === 'name') {
      throw unsupported(`${at}.name`, `${at}.name: participant names are not supported by this server's chat templates; leave it out.`);
    }
    if (key === 'tool_calls') throw bad(`${at}.tool_calls`, 'a non-empty array of tool calls, on an assistant message only', m[key]);
    if (key === 'tool_call_id') throw bad(`${at}.tool_call_id`, "null: only a message of role 'tool' answers a tool call", m[key]);
    if (key === 'function_call') {
      throw unsupported(`${at}.function_call`, `${at}.function_call (the legacy form of tool calls) is not supported by this server; send tool_calls.`);
    }
    throw unknownKey(`${at}.${key}`);
  }
  const content = contentText(m.content ?? '', `${at}.content`);
  if (tool) {
    if (typeof m.tool_call_id !== 'string' || m.tool_call_id.length === 0) throw bad(`${at}.tool_call_id`, 'the id of the tool call this answers', m.tool_call_id);
    if (m.name !== undefined && m.name !== null && typeof m.name !== 'string') throw bad(`${at}.name`, "the called tool's name", m.name);
    const name = typeof m.name === 'string' ? m.name : undefined;
    return name === undefined ? { role: 'tool', toolCallId: m.tool_call_id, content } : { role: 'tool', toolCallId: m.tool_call_id, name, content };
  }
  let role;
  try {
    role = normalizeRole(m.role, `${at}.role`);
  } catch {
    throw bad(`${at}.role`, 'one of system, user, assistant, tool, 系统, 用户, 助手', m.role);
  }
  if (calls) return { role: 'assistant', content, toolCalls: toolCallsOf(m.tool_calls as unknown[], at) };
  return { role, content };
}

/**
 * The core's check that the conversation's tool messages fit together, its message and the field it names in
 * OpenAI's words (`messages[3].tool_call_id`, not the core's `toolCallId`).
 */
function checkToolMessages(messages: readonly ConversationMessage[]): void {
  try {
    checkConversation(messages, 'messages');
  } catch (error) {
    if (!(error instanceof RangeError)) throw error;
    const openai = (text: string) => text.replace(/\.toolCallId\b/g, '.tool_call_id').replace(/\.toolCalls\[/g, '.tool_calls[');
    const param = /for (messages\[\d+\][\w.[\]]*)/.exec(error.message)?.[1];
    throw new HttpError(400, openai(error.message), { param: param === undefined ? 'messages' : openai(param), code: 'invalid_value' });
  }
}

export function parseChatRequest(body: Body): ChatRequest {
  const base = sampling(body, ['messages', 'logprobs', 'top_logprobs', 'tools', 'tool_choice', 'parallel_tool_calls']);
  const logprobs = optBoolean(body, 'logprobs') ?? false;
  const top = optInteger(body, 'top_logprobs', 0, 20);
  if (top !== undefined && !logprobs) {
    throw new HttpError(400, "'top_logprobs' needs 'logprobs': true.", { param: 'top_logprobs', code: 'invalid_value' });
  }
  if (logprobs) base.logprobs = { top: top ?? 0 };
  const turn = toolTurnOf(body);
  const messages = body.messages;
  if (!Array.isArray(messages) || messages.length === 0) throw bad('messages', 'a non-empty array of messages', messages);
  const parsed = messages.map(messageOf);
  checkToolMessages(parsed);
  return turn === undefined ? { ...base, messages: parsed } : { ...base, messages: parsed, toolTurn: turn };
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
