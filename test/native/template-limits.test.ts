// A GGUF's own tokenizer.chat_template is untrusted input (issue #14 item 2): the demo model with a crafted
// template (written by the test) loads, inspect() reports the template's probe check, loadModel's
// checkChatTemplate refuses it, and a chat gets a ChatTemplateError naming the template, instead of a dead or
// frozen process.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ChatSession, ChatTemplateError, inspect, jinjaTemplate, loadModel } from '../../dist/index.js';
import { withChatTemplate } from '../../scripts/fuzz/targets/template.mjs';
import { demoPath, root } from '../helpers.js';

const dir = mkdtempSync(join(tmpdir(), 'huozi-template-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function gguf(name: string, template: string): string {
  const path = join(dir, `${name}.gguf`);
  writeFileSync(path, withChatTemplate(readFileSync(demoPath), template));
  return path;
}

const HUGE_RANGE = '{% for i in range(2000000000) %}{{ i }}{% endfor %}';
const NESTED = '{% for i in range(100000) %}{% for j in range(100000) %}{{ i }}{% endfor %}{% endfor %}';
const RAISES = "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}";
const CHATML =
  "{% for m in messages %}{{ '<|beginofutterance|>' + m.role + '\\n' + m.content + '<|endofutterance|>\\n' }}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|beginofutterance|>assistant\\n' }}{% endif %}";

describe("a GGUF's own chat template", () => {
  it('range(2000000000): the model loads, inspect reports the failed probe, checkChatTemplate refuses the load', async () => {
    const path = gguf('huge-range', HUGE_RANGE);
    const model = await loadModel(path);
    expect(model.info.chatTemplate).toBe(HUGE_RANGE);
    await model.dispose();
    const info = await inspect(path);
    expect(info.chatTemplate).toMatchObject({ present: true, check: { ok: false, reason: 'limit', limit: 'arrayLength' } });
    expect((info.chatTemplate.check as { message: string }).message).toContain(`tokenizer.chat_template of ${path}`);
    expect((await inspect(path, { checkChatTemplate: false })).chatTemplate.check).toBeUndefined();
    const error = await loadModel(path, { checkChatTemplate: true }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ChatTemplateError);
    expect(error).toMatchObject({ code: 'ERR_HUOZI_CHAT_TEMPLATE', template: `tokenizer.chat_template of ${path}`, limit: 'arrayLength' });
  });

  it('a chat gets a ChatTemplateError for nested range(100000) loops and raise_exception, and the session stays usable', async () => {
    await using model = await loadModel(gguf('nested', NESTED));
    await using context = await model.createContext({ contextSize: 256 });
    const session = new ChatSession(context);
    await expect(session.prompt('hello', { maxTokens: 4 })).rejects.toMatchObject({
      name: 'ChatTemplateError', reason: 'limit', template: `tokenizer.chat_template of ${model.path}`,
    });
    // The same context with a template of the user's own: a broken GGUF template does not stand in the way.
    const own = new ChatSession(context, { template: 'huozi' });
    expect((await own.prompt('hello', { maxTokens: 2 })).text).toBeTypeOf('string');

    await using raising = await loadModel(gguf('raises', RAISES));
    await using ctx2 = await raising.createContext({ contextSize: 256 });
    await expect(new ChatSession(ctx2).prompt('hello', { maxTokens: 2 })).rejects.toThrow(
      `Chat template (tokenizer.chat_template of ${raising.path}) raised an exception: Conversation roles must alternate user/assistant/user/assistant/...`,
    );
  });

  it('a valid template passes the check at load and renders the same both ways', async () => {
    const path = gguf('valid', CHATML);
    await using model = await loadModel(path, { checkChatTemplate: true });
    expect((await inspect(path)).chatTemplate.check).toEqual({ ok: true, systemRole: true });
    const t = jinjaTemplate(model.info.chatTemplate!);
    const messages = [{ role: 'user' as const, content: '<|endofutterance|>' }];
    expect(await t.renderAsync!(messages, true)).toEqual(t.render(messages, true));
    await expect(loadModel(path, { checkChatTemplate: 'yes' as never })).rejects.toThrow(TypeError);
  });

  it('huozi-gguf inspect prints the outcome of the probe', () => {
    const cli = join(root, 'dist', 'cli', 'main.js');
    const bad = spawnSync(process.execPath, [cli, 'inspect', gguf('cli-raises', RAISES)], { encoding: 'utf8', timeout: 120_000 });
    expect(bad.status).toBe(0);
    expect(bad.stdout).toMatch(/chat template\s+yes \(\d+ characters\), FAILS a probe conversation: .*raised an exception: Conversation roles/);
    const good = spawnSync(process.execPath, [cli, 'inspect', gguf('cli-valid', CHATML)], { encoding: 'utf8', timeout: 120_000 });
    expect(good.stdout).toMatch(/chat template\s+yes \(\d+ characters\), renders a probe conversation\n/);
  });
});
