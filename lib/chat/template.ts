// Chat templates render a conversation into *segments*: template text (where special-token text such as
// <|endofutterance|> becomes control tokens) and message content (never parsed for special tokens, so users
// cannot forge control tokens by typing them). lib/chat/tokenize.ts turns segments into token ids.
import { readFileSync } from 'node:fs';
import { ChatTemplateError } from '../errors.js';
import * as v from '../validate.js';
import { parseTemplate, renderBounded, TemplateFailure, templateLimits, type TemplateLimits } from './template-limits.js';
import { renderIsolated } from './template-process.js';

export { DEFAULT_TEMPLATE_LIMITS, STEPS_PER_MESSAGE, MAX_LIST_LENGTH, type TemplateLimits } from './template-limits.js';

/** A message's role. {@link ChatSession.setHistory} also accepts Huozi's 系统/用户/助手. */
export type ChatRole = 'system' | 'user' | 'assistant';

/** One message of a conversation. */
export interface ChatMessage {
  role: ChatRole;
  content: string;
}

/**
 * A piece of a rendered conversation: `template` text (special-token text in it becomes control tokens) or
 * message `content` (never parsed for special tokens).
 */
export type Segment = { kind: 'template'; text: string } | { kind: 'content'; text: string };

/** A chat template: {@link huoziTemplate}, {@link chatmlTemplate}, {@link jinjaTemplate}, or your own object. */
export interface ChatTemplate {
  /** `huozi`, `chatml`, `jinja` (a GGUF's own or a file's), or a custom name. */
  readonly name: string;
  /**
   * Renders `messages`. With `addGenerationPrompt`, ends with the opening of an assistant message (and closes
   * every message); without it, an assistant message at the end stays open.
   */
  render(messages: readonly ChatMessage[], addGenerationPrompt: boolean): Segment[];
  /**
   * Renders off the event loop, where the template is untrusted code ({@link jinjaTemplate}: in a separate
   * renderer process, under its limits). Templates without it are rendered with `render`; call
   * {@link renderChatTemplate} to use whichever the template has.
   */
  renderAsync?(messages: readonly ChatMessage[], addGenerationPrompt: boolean): Promise<Segment[]>;
  /** Special-token texts that end an assistant turn, e.g. `<|endofutterance|>`. */
  readonly stopTexts: readonly string[];
}

const ROLE_ALIASES: Record<string, ChatRole> = {
  system: 'system', user: 'user', assistant: 'assistant', 系统: 'system', 用户: 'user', 助手: 'assistant',
};

/** Accepts system/user/assistant and Huozi's 系统/用户/助手. */
export function normalizeRole(role: unknown, name = 'role'): ChatRole {
  const r = typeof role === 'string' ? ROLE_ALIASES[role] : undefined;
  if (!r) {
    throw (typeof role === 'string' ? v.rangeError : v.typeError)(
      'one of "system", "user", "assistant", "系统", "用户", "助手"', name, role,
    );
  }
  return r;
}

export function joinSegments(segments: readonly Segment[]): string {
  return segments.map((s) => s.text).join('');
}

// Adjacent template pieces join; content stays its own segment (also when empty, to keep positions exact).
function push(out: Segment[], seg: Segment): void {
  const last = out[out.length - 1];
  if (seg.kind === 'template' && last?.kind === 'template') last.text += seg.text;
  else if (seg.kind === 'content' || seg.text.length > 0) out.push({ ...seg });
}

const HUOZI_ROLES: Record<ChatRole, string> = { system: '系统', user: '用户', assistant: '助手' };

/**
 * Huozi 3.5's template, exactly as its template.jinja renders it (transformers' trim_blocks):
 *   {% for message in messages %}{{'<|beginofutterance|>' + message['role'] + '\n' + message['content']}}
 *   {% if (loop.last and add_generation_prompt) or not loop.last %}{{ '<|endofutterance|>' + '\n'}}{% endif %}
 *   {% endfor %}
 *   {% if add_generation_prompt and messages[-1]['role'] != '助手' %}{{ '<|beginofutterance|>助手\n' }}{% endif %}
 * with the roles 系统/用户/助手.
 */
export const huoziTemplate: ChatTemplate = {
  name: 'huozi',
  stopTexts: ['<|endofutterance|>'],
  render(messages, addGenerationPrompt) {
    const out: Segment[] = [];
    messages.forEach((m, i) => {
      push(out, { kind: 'template', text: `<|beginofutterance|>${HUOZI_ROLES[m.role]}\n` });
      push(out, { kind: 'content', text: m.content });
      const last = i === messages.length - 1;
      if ((last && addGenerationPrompt) || !last) push(out, { kind: 'template', text: '<|endofutterance|>\n' });
    });
    if (addGenerationPrompt && messages[messages.length - 1]?.role !== 'assistant') {
      push(out, { kind: 'template', text: '<|beginofutterance|>助手\n' });
    }
    return out;
  },
};

/** Plain ChatML (`<|im_start|>role\ncontent<|im_end|>\n`). */
export const chatmlTemplate: ChatTemplate = {
  name: 'chatml',
  stopTexts: ['<|im_end|>'],
  render(messages, addGenerationPrompt) {
    const out: Segment[] = [];
    messages.forEach((m, i) => {
      push(out, { kind: 'template', text: `<|im_start|>${m.role}\n` });
      push(out, { kind: 'content', text: m.content });
      const openLast = i === messages.length - 1 && m.role === 'assistant' && !addGenerationPrompt;
      if (!openLast) push(out, { kind: 'template', text: '<|im_end|>\n' });
    });
    if (addGenerationPrompt) push(out, { kind: 'template', text: '<|im_start|>assistant\n' });
    return out;
  },
};

// Private-use characters mark where content goes, so that what the Jinja template adds around it stays
// template text and the content itself is never parsed for special tokens.
const MARK_OPEN = '\uE000';
const MARK_CLOSE = '\uE001';
const MARK = /\uE000(\d+)\uE001/g;

/** Options of {@link jinjaTemplate} and {@link jinjaTemplateFile}. */
export interface JinjaTemplateOptions {
  /** Template variables: `bos_token`, `eos_token` and the like. */
  variables?: Record<string, unknown>;
  /** Texts that end an assistant turn. Default: none beyond the model's end-of-generation tokens. */
  stopTexts?: string[];
  /**
   * Role names as the template expects them: `english` (system/user/assistant) or `huozi` (系统/用户/助手).
   * Default: `huozi` when the template mentions 用户 or 助手, else `english`.
   */
  roles?: 'english' | 'huozi';
  /**
   * Limits on one render: steps, output size, time, and the renderer process's memory (see
   * {@link TemplateLimits}). A render past one fails with a {@link ChatTemplateError}. Default:
   * {@link DEFAULT_TEMPLATE_LIMITS}.
   */
  limits?: Partial<TemplateLimits>;
  /** How errors name the template, e.g. `tokenizer.chat_template of /models/x.gguf`. Default: `jinja template`. */
  label?: string;
}

const JINJA_OPTIONS = ['variables', 'stopTexts', 'roles', 'limits', 'label'] as const;

/**
 * A Jinja chat template (a GGUF's `tokenizer.chat_template`, or a file), rendered by @huggingface/jinja under
 * limits: the template is untrusted code. `render` runs in this thread (bounded by the steps, output and time
 * limits, so it can hold the event loop up to `limits.timeoutMs`); `renderAsync` runs in a separate renderer
 * process that also caps memory and is killed past the deadline, and never blocks the event loop.
 *
 * @throws {@link ChatTemplateError} (`reason` `syntax`) when the template does not parse; render and
 * renderAsync throw it when the template raises an exception, goes past a limit or fails otherwise.
 */
export function jinjaTemplate(source: string, options: JinjaTemplateOptions = {}): ChatTemplate {
  v.string('template', source, { allowEmpty: false });
  const o = v.options<JinjaTemplateOptions>('options', options, JINJA_OPTIONS);
  const label = o.label === undefined ? 'jinja template' : v.string('label', o.label);
  const limits = templateLimits('limits', o.limits);
  const stopTexts = o.stopTexts === undefined ? [] : v.stringArray('stopTexts', o.stopTexts);
  const roleOption = o.roles === undefined ? undefined : v.oneOf('roles', o.roles, ['english', 'huozi'] as const);
  if (o.variables !== undefined && (o.variables === null || typeof o.variables !== 'object' || Array.isArray(o.variables))) {
    throw v.typeError('an object', 'variables', o.variables);
  }
  let variables: Record<string, unknown>;
  try {
    // Plain data only: renderAsync sends them to the renderer process.
    variables = structuredClone({ ...o.variables });
  } catch {
    throw v.typeError('an object of plain data (strings, numbers, booleans, null, arrays, objects)', 'variables', o.variables);
  }
  const fail = (error: unknown): never => {
    if (error instanceof TemplateFailure) {
      throw new ChatTemplateError(`Chat template (${label}) ${error.info.message}`, {
        template: label, reason: error.info.reason, limit: error.info.limit,
      });
    }
    throw error;
  };
  let program: ReturnType<typeof parseTemplate>;
  try {
    program = parseTemplate(source);
  } catch (error) {
    return fail(error);
  }
  const huoziRoles = roleOption ? roleOption === 'huozi' : /用户|助手/.test(source);
  const roles = huoziRoles ? HUOZI_ROLES : { system: 'system', user: 'user', assistant: 'assistant' };
  const items = (messages: readonly ChatMessage[], addGenerationPrompt: boolean) => ({
    ...variables,
    messages: messages.map((m, i) => ({ role: roles[m.role], content: `${MARK_OPEN}${i}${MARK_CLOSE}` })),
    add_generation_prompt: addGenerationPrompt,
  });
  return {
    name: 'jinja',
    stopTexts,
    render(messages, addGenerationPrompt) {
      let rendered: string;
      try {
        rendered = renderBounded(program, items(messages, addGenerationPrompt), limits, messages.length);
      } catch (error) {
        return fail(error);
      }
      return split(rendered, messages);
    },
    async renderAsync(messages, addGenerationPrompt) {
      let rendered: string;
      try {
        rendered = await renderIsolated(source, items(messages, addGenerationPrompt), limits, messages.length);
      } catch (error) {
        return fail(error);
      }
      return split(rendered, messages);
    },
  };
}

// The rendered text, cut at the content markers: template text around, each message's own content in between.
function split(rendered: string, messages: readonly ChatMessage[]): Segment[] {
  const out: Segment[] = [];
  let at = 0;
  for (const match of rendered.matchAll(MARK)) {
    push(out, { kind: 'template', text: rendered.slice(at, match.index) });
    push(out, { kind: 'content', text: messages[Number(match[1])]?.content ?? '' });
    at = match.index! + match[0].length;
  }
  push(out, { kind: 'template', text: rendered.slice(at) });
  return out;
}

/** Renders with the template's `renderAsync` when it has one (Jinja templates), else with `render`. */
export async function renderChatTemplate(
  template: ChatTemplate, messages: readonly ChatMessage[], addGenerationPrompt: boolean,
): Promise<Segment[]> {
  return template.renderAsync ? template.renderAsync(messages, addGenerationPrompt) : template.render(messages, addGenerationPrompt);
}

/** What {@link checkChatTemplate} found. */
export interface ChatTemplateCheck {
  /** Whether the template takes a system message (some, like Gemma's, raise an exception for one). */
  systemRole: boolean;
  /** The probe conversation as rendered (contents included). */
  text: string;
}

/** The probe conversation of {@link checkChatTemplate}. */
export const PROBE_CONVERSATION: readonly ChatMessage[] = Object.freeze([
  { role: 'system', content: 'You are a helpful assistant.' },
  { role: 'user', content: 'Hello!' },
  { role: 'assistant', content: 'Hello! How can I help you?' },
  { role: 'user', content: 'Tell me a story.' },
] as const);

/**
 * Checks a template by rendering a probe conversation (system, user, assistant, user, with the generation
 * prompt) the way a chat would: through `renderAsync` where the template has one, under its limits. When the
 * template raises an exception for the system message, the probe is retried without it (`systemRole: false`).
 *
 * @throws {@link ChatTemplateError} when the template fails the probe.
 */
export async function checkChatTemplate(template: ChatTemplate): Promise<ChatTemplateCheck> {
  if (template === null || typeof template !== 'object' || typeof template.render !== 'function') {
    throw v.typeError('a ChatTemplate', 'template', template);
  }
  try {
    return { systemRole: true, text: joinSegments(await renderChatTemplate(template, PROBE_CONVERSATION, true)) };
  } catch (error) {
    if (!(error instanceof ChatTemplateError) || error.reason !== 'exception') throw error;
    try {
      return { systemRole: false, text: joinSegments(await renderChatTemplate(template, PROBE_CONVERSATION.slice(1), true)) };
    } catch {
      throw error;
    }
  }
}

/** Reads a Jinja template file (errors name it `template file <path>` unless `label` says otherwise). */
export function jinjaTemplateFile(path: string, options?: JinjaTemplateOptions): ChatTemplate {
  v.string('path', path, { allowEmpty: false });
  return jinjaTemplate(readFileSync(path, 'utf8'), { label: `template file ${path}`, ...options });
}
