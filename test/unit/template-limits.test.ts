// Jinja chat templates are untrusted code (a GGUF's tokenizer.chat_template, a template file): rendering is
// bounded (steps, output size, list size, depth, time, and in renderAsync's renderer process memory), and every
// failure is a ChatTemplateError naming the template. Issue #14 item 2.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { root } from '../helpers.js';
import {
  ChatTemplateError, checkChatTemplate, huoziTemplate, jinjaTemplate, renderChatTemplate, type ChatMessage,
} from '../../dist/index.js';

const conversation: ChatMessage[] = [
  { role: 'system', content: 'You are a helpful assistant.' },
  { role: 'user', content: 'Hello' },
];

const CHATML = `{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}`;

/** The ChatTemplateError that rendering `source` both ways throws (the same reason and limit both ways). */
async function failure(source: string, options: Parameters<typeof jinjaTemplate>[1] = {}): Promise<ChatTemplateError> {
  const template = jinjaTemplate(source, { label: 'the test template', ...options });
  let sync: unknown;
  try {
    template.render(conversation, true);
  } catch (error) {
    sync = error;
  }
  let async: unknown;
  try {
    await template.renderAsync!(conversation, true);
  } catch (error) {
    async = error;
  }
  expect(sync).toBeInstanceOf(ChatTemplateError);
  expect(async).toBeInstanceOf(ChatTemplateError);
  const s = sync as ChatTemplateError;
  const a = async as ChatTemplateError;
  expect(a.code).toBe('ERR_HUOZI_CHAT_TEMPLATE');
  expect(a.template).toBe('the test template');
  expect(a.message).toContain('the test template');
  expect([s.reason, s.limit]).toEqual([a.reason, a.limit]);
  return a;
}

describe('Jinja templates under limits', () => {
  it('refuses range(2000000000) before building the list (it killed the process)', async () => {
    const e = await failure('{% for i in range(2000000000) %}x{% endfor %}');
    expect([e.reason, e.limit]).toEqual(['limit', 'arrayLength']);
    expect(e.message).toMatch(/range\(\) for 2000000000 numbers/);
  });

  it('stops nested range(100000) loops by the step budget, off the event loop in renderAsync', async () => {
    const source = '{% for i in range(100000) %}{% for j in range(100000) %}{{ i }}{% endfor %}{% endfor %}';
    const template = jinjaTemplate(source, { label: 'nested' });
    let ticks = 0;
    const timer = setInterval(() => ticks++, 5);
    try {
      await expect(template.renderAsync!(conversation, true)).rejects.toMatchObject({ reason: 'limit', template: 'nested' });
    } finally {
      clearInterval(timer);
    }
    // The event loop ran while the renderer process worked (at least ~0.5 s of steps).
    expect(ticks).toBeGreaterThan(5);
    expect(() => template.render(conversation, true)).toThrow(expect.objectContaining({ reason: 'limit' }));
  });

  it('honours limits.steps and limits.timeoutMs, named in the error', async () => {
    const loop = '{% for i in range(200000) %}{{ i }}{% endfor %}';
    expect((await failure(loop, { limits: { steps: 5000 } })).limit).toBe('steps');
    const t = jinjaTemplate('{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}', {
      limits: { timeoutMs: 50, steps: 1e12 },
    });
    expect(() => t.render(conversation, true)).toThrow(expect.objectContaining({ limit: 'timeoutMs' }));
    await expect(t.renderAsync!(conversation, true)).rejects.toMatchObject({ limit: 'timeoutMs' });
  });

  it("puts raise_exception's text in the message", async () => {
    const e = await failure("{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}");
    expect(e.reason).toBe('exception');
    expect(e.message).toBe(
      'Chat template (the test template) raised an exception: Conversation roles must alternate user/assistant/user/assistant/...',
    );
  });

  it('caps strings, lists, filter widths and recursion', async () => {
    const strings = await failure("{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}");
    expect(strings.limit).toBe('outputChars');
    const lists = await failure('{% set ns = namespace(a=[1]) %}{% for i in range(64) %}{% set ns.a = ns.a + ns.a %}{% endfor %}');
    expect(lists.limit).toBe('arrayLength');
    // A width is checked before the filter builds the string.
    expect((await failure("{{ 'a\\nb'|indent(500000000) }}")).limit).toBe('outputChars');
    expect((await failure('{{ [[1]]|tojson(indent=100000000) }}')).limit).toBe('outputChars');
    expect((await failure('{% macro f(g, n) %}{{ g(g, n + 1) }}{% endmacro %}{{ f(f, 0) }}')).limit).toBe('depth');
    expect((await failure('{{ "12345678901" }}', { limits: { outputChars: 10 } })).limit).toBe('outputChars');
  });

  it('reports unknown filters and syntax errors as ChatTemplateError', async () => {
    const e = await failure("{{ 'a'|no_such_filter }}");
    expect(e.reason).toBe('error');
    expect(e.message).toMatch(/no_such_filter/);
    expect(() => jinjaTemplate('{% for %}', { label: 'broken' })).toThrow(
      expect.objectContaining({ reason: 'syntax', template: 'broken', code: 'ERR_HUOZI_CHAT_TEMPLATE' }),
    );
  });

  it('runs the memory of renderAsync in a capped process and carries on after it dies', async () => {
    // Distinct flat strings of 4 Mi characters, kept: past a 64 MiB heap.
    const source =
      "{% set ns = namespace(s='ab', l=[]) %}{% for i in range(20) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}" +
      '{% for i in range(200) %}{% set ns.l = ns.l + [(ns.s ~ i)|upper] %}{% endfor %}{{ ns.l|length }}';
    const t = jinjaTemplate(source, { label: 'hog', limits: { memoryMiB: 64, timeoutMs: 120_000 } });
    await expect(t.renderAsync!(conversation, true)).rejects.toMatchObject({ reason: 'limit', limit: 'memoryMiB', template: 'hog' });
    // A fresh renderer process takes the next render.
    const ok = jinjaTemplate(CHATML, { limits: { memoryMiB: 64 } });
    expect(await ok.renderAsync!(conversation, true)).toEqual(ok.render(conversation, true));
  });

  it('renders valid templates the same way both ways, contents as their own segments', async () => {
    const t = jinjaTemplate(CHATML);
    const sync = t.render(conversation, true);
    expect(await t.renderAsync!(conversation, true)).toEqual(sync);
    expect(await renderChatTemplate(t, conversation, true)).toEqual(sync);
    expect(sync).toContainEqual({ kind: 'content', text: 'Hello' });
    expect(await renderChatTemplate(huoziTemplate, conversation, true)).toEqual(huoziTemplate.render(conversation, true));
  });

  it('refuses unknown options and limits, and variables that are not plain data', () => {
    expect(() => jinjaTemplate(CHATML, { limits: { step: 10 } as never })).toThrow(/limits/);
    expect(() => jinjaTemplate(CHATML, { limits: { timeoutMs: 0 } })).toThrow(RangeError);
    expect(() => jinjaTemplate(CHATML, { limit: {} } as never)).toThrow(TypeError);
    expect(() => jinjaTemplate(CHATML, { variables: { f: () => 1 } })).toThrow(TypeError);
  });

  it('checks a template with a probe conversation, without the system message when the template refuses one', async () => {
    expect(await checkChatTemplate(jinjaTemplate(CHATML))).toMatchObject({ systemRole: true });
    const gemmaLike =
      "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}" +
      '{% for m in messages %}<start_of_turn>{{ m.role }}\n{{ m.content }}<end_of_turn>\n{% endfor %}';
    const check = await checkChatTemplate(jinjaTemplate(gemmaLike));
    expect(check.systemRole).toBe(false);
    expect(check.text).toContain('Tell me a story.');
    await expect(checkChatTemplate(jinjaTemplate("{{ raise_exception('no') }}", { label: 'nope' }))).rejects.toMatchObject({
      reason: 'exception', template: 'nope',
    });
  });

  it('lets the process exit once renders are done (the renderer process does not hold it open)', () => {
    const script = `import { jinjaTemplate } from ${JSON.stringify(join(root, 'dist', 'index.js'))};
      const t = jinjaTemplate('{{ messages[0].content }}');
      await t.renderAsync([{ role: 'user', content: 'x' }], true);
      await t.renderAsync([{ role: 'user', content: 'y' }], true).catch(() => {});
      await jinjaTemplate("{{ raise_exception('no') }}").renderAsync([], true).catch(() => {});
      console.log('done');`;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 60_000 });
    expect(r.signal).toBe(null);
    expect(r.status).toBe(0);
    expect(r.stdout.trim()).toBe('done');
  });
});
