// Chat templates render a conversation into *segments*: template text (where special-token text such as
// <|endofutterance|> becomes control tokens) and message content (never parsed for special tokens, so users
// cannot forge control tokens by typing them). lib/chat/tokenize.ts turns segments into token ids.
import { readFileSync } from 'node:fs';
import { Template } from '@huggingface/jinja';
import * as v from '../validate.js';

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
}

/**
 * A Jinja chat template (a GGUF's `tokenizer.chat_template`, or a file), rendered by @huggingface/jinja.
 * Throws a `SyntaxError` with `code` `ERR_HUOZI_TEMPLATE` when the template does not parse.
 */
export function jinjaTemplate(source: string, options: JinjaTemplateOptions = {}): ChatTemplate {
  v.string('template', source, { allowEmpty: false });
  let template: Template;
  try {
    template = new Template(source);
  } catch (cause) {
    throw Object.assign(new SyntaxError(`Invalid chat template: ${(cause as Error).message}`, { cause }), {
      code: 'ERR_HUOZI_TEMPLATE',
    });
  }
  const huoziRoles = options.roles ? options.roles === 'huozi' : /用户|助手/.test(source);
  const roles = huoziRoles ? HUOZI_ROLES : { system: 'system', user: 'user', assistant: 'assistant' };
  return {
    name: 'jinja',
    stopTexts: options.stopTexts ?? [],
    render(messages, addGenerationPrompt) {
      const rendered = template.render({
        ...options.variables,
        messages: messages.map((m, i) => ({ role: roles[m.role], content: `${MARK_OPEN}${i}${MARK_CLOSE}` })),
        add_generation_prompt: addGenerationPrompt,
      });
      const out: Segment[] = [];
      let at = 0;
      for (const match of rendered.matchAll(MARK)) {
        push(out, { kind: 'template', text: rendered.slice(at, match.index) });
        push(out, { kind: 'content', text: messages[Number(match[1])]?.content ?? '' });
        at = match.index! + match[0].length;
      }
      push(out, { kind: 'template', text: rendered.slice(at) });
      return out;
    },
  };
}

/** Reads a Jinja template file. */
export function jinjaTemplateFile(path: string, options?: JinjaTemplateOptions): ChatTemplate {
  return jinjaTemplate(readFileSync(path, 'utf8'), options);
}
