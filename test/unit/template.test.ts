import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Template } from '@huggingface/jinja';
import { describe, expect, it } from 'vitest';
import { ChatTemplateError, chatmlTemplate, huoziTemplate, jinjaTemplate, type ChatMessage } from '../../dist/index.js';
import { fixtureDir, reference, root } from '../helpers.js';

// Huozi's own template.jinja, byte for byte (HIT-SCIR/huozi example/openai-api/template.jinja).
const huoziJinja = readFileSync(join(root, 'test/fixtures/templates/huozi-template.jinja'), 'utf8');
const HUOZI_ROLE = { system: '系统', user: '用户', assistant: '助手' } as const;

function renderReference(messages: ChatMessage[], addGenerationPrompt: boolean): string {
  // transformers renders chat templates with trim_blocks/lstrip_blocks, as @huggingface/jinja does.
  return new Template(huoziJinja).render({
    messages: messages.map((m) => ({ role: HUOZI_ROLE[m.role], content: m.content })),
    add_generation_prompt: addGenerationPrompt,
  });
}

const join_ = (segments: { text: string }[]) => segments.map((s) => s.text).join('');

const system: ChatMessage = { role: 'system', content: '你是一个智能助手' };
const turns: ChatMessage[] = [
  { role: 'user', content: '请背诵《春晓》' },
  { role: 'assistant', content: '《春晓》\n孟浩然\n春眠不觉晓，处处闻啼鸟。' },
  { role: 'user', content: '作者是谁？' },
  { role: 'assistant', content: '作者是孟浩然。' },
  { role: 'user', content: 'Tell me a fortune.\n<|endofutterance|> is just text here' },
];

describe("Huozi's template", () => {
  const cases: [string, ChatMessage[]][] = [];
  for (const withSystem of [false, true]) {
    for (const n of [1, 3, 5]) {
      const msgs = [...(withSystem ? [system] : []), ...turns.slice(0, n)];
      cases.push([`${(n + 1) / 2} turn(s)${withSystem ? ' with a system message' : ''}`, msgs]);
    }
    // An open assistant message at the end (continuation).
    cases.push([`open assistant message${withSystem ? ' with a system message' : ''}`, [...(withSystem ? [system] : []), ...turns.slice(0, 2)]]);
  }

  it.each(cases)('renders byte-identical to template.jinja: %s', (_, messages) => {
    for (const addGenerationPrompt of [true, false]) {
      expect(join_(huoziTemplate.render(messages, addGenerationPrompt))).toBe(renderReference(messages, addGenerationPrompt));
    }
  });

  it('renders the reference prompts of the fixture', () => {
    const g = reference.greedy[0];
    const rendered = join_(huoziTemplate.render([system, { role: 'user', content: '请背诵《感遇・其一》' }], true));
    expect(rendered).toBe(g.prompt);
  });

  it('keeps message content apart from template text', () => {
    const segments = huoziTemplate.render([{ role: 'user', content: '<|endofutterance|>' }], true);
    expect(segments).toEqual([
      { kind: 'template', text: '<|beginofutterance|>用户\n' },
      { kind: 'content', text: '<|endofutterance|>' },
      { kind: 'template', text: '<|endofutterance|>\n<|beginofutterance|>助手\n' },
    ]);
  });

  it('matches the same template run through the Jinja engine, segment for segment', () => {
    const jinja = jinjaTemplate(huoziJinja);
    for (const n of [1, 3, 5]) {
      const messages = [system, ...turns.slice(0, n)];
      expect(jinja.render(messages, true)).toEqual(huoziTemplate.render(messages, true));
    }
  });
});

describe('ChatML template', () => {
  it('renders <|im_start|>role\\ncontent<|im_end|>\\n and the assistant opening', () => {
    const text = join_(chatmlTemplate.render([system, turns[0]], true));
    expect(text).toBe('<|im_start|>system\n你是一个智能助手<|im_end|>\n<|im_start|>user\n请背诵《春晓》<|im_end|>\n<|im_start|>assistant\n');
  });
});

describe('Jinja templates', () => {
  it('reports a broken template as a ChatTemplateError', () => {
    expect(() => jinjaTemplate('{% for %}')).toThrow(ChatTemplateError);
    expect(() => jinjaTemplate('{% for %}')).toThrow(expect.objectContaining({ code: 'ERR_HUOZI_CHAT_TEMPLATE', reason: 'syntax' }));
  });
  it('fixture has no tokenizer.chat_template, like Huozi 3.5', () => {
    expect(readFileSync(join(fixtureDir, 'llamacpp-f16-manifest.json'), 'utf8')).not.toContain('tokenizer.chat_template');
  });
});
