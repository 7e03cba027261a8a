// The web chat page (web/chat.html) in a real browser against the real server: Debian's Chromium driven by
// playwright-core, the tiny Huozi model behind `createServer`.
// docs/web-chat.png comes from `HUOZI_SCREENSHOT=1 npx vitest run test/server/web.test.ts -t two-turn`, with a CJK
// font installed (Debian's fonts-wqy-microhei); otherwise the screenshot goes to a temporary folder.
import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type Browser, type BrowserContext, type Page, type Request } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createServer, loadModel, type HuoziServer, type Model } from '../../dist/index.js';
import { f16Path, root } from '../helpers.js';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
// Without the background-networking flags Chromium keeps dialling Google's hosts, which a closed network refuses.
const CHROMIUM_ARGS = [
  '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update',
  '--disable-sync', '--disable-dev-shm-usage',
];
const POEM = '请背诵《春晓》';

let model: Model;
let server: HuoziServer;
let url: string;
let browser: Browser;

beforeAll(async () => {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`The web chat test needs Chromium at ${CHROMIUM}: install it with \`apt-get install chromium\` (or set CHROMIUM_PATH)`);
  }
  model = await loadModel(f16Path);
  server = await createServer(model, { parallel: 2, threads: 1 });
  ({ url } = await server.listen(0, '127.0.0.1'));
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
});

afterAll(async () => {
  await browser?.close();
  await server?.close();
  model?.dispose();
});

/** A fresh browser profile (empty localStorage) on the page, recording the chat requests it sends. */
async function openPage(base = url): Promise<{ context: BrowserContext; page: Page; requests: Request[]; failed: Request[] }> {
  const context = await browser.newContext({ viewport: { width: 1100, height: 720 }, deviceScaleFactor: 1 });
  const page = await context.newPage();
  const requests: Request[] = [];
  const failed: Request[] = [];
  page.on('request', (r) => {
    if (r.url().endsWith('/v1/chat/completions')) requests.push(r);
  });
  page.on('requestfailed', (r) => {
    if (r.url().endsWith('/v1/chat/completions')) failed.push(r);
  });
  await page.goto(base);
  return { context, page, requests, failed };
}

/** Records every change of a text node in the thread, as the page makes it (read with textChanges; watching
 * again starts a new record). */
async function watchTextChanges(page: Page): Promise<void> {
  await page.evaluate(() => {
    const w = window as unknown as { textChanges: string[] };
    if (w.textChanges) {
      w.textChanges = [];
      return;
    }
    w.textChanges = [];
    new MutationObserver((records) => {
      for (const r of records) if (r.type === 'characterData') w.textChanges.push(r.target.textContent ?? '');
    }).observe(document.getElementById('thread')!, { subtree: true, characterData: true });
  });
}

function textChanges(page: Page): Promise<string[]> {
  return page.evaluate(() => (window as unknown as { textChanges: string[] }).textChanges);
}

/** Waits until `n` assistant messages have finished (done, stopped, cut off or failed). */
async function answered(page: Page, n: number): Promise<string[]> {
  await page.waitForFunction(
    (n) => [...document.querySelectorAll('.msg.assistant')].filter((m) => !['waiting', 'streaming'].includes((m as HTMLElement).dataset.state!)).length >= n,
    n,
    { timeout: 20_000 },
  );
  return page.locator('.msg.assistant').allTextContents();
}

describe('web chat page', () => {
  it('streams a two-turn conversation and sends the first exchange with the second question', async () => {
    const { context, page, requests } = await openPage();
    await expect.poll(() => page.locator('#model').textContent()).toBe(server.servedModelName);
    await page.fill('#temperature', '0');

    await watchTextChanges(page);
    await page.fill('#input', POEM);
    await page.press('#input', 'Enter');
    const [first] = await answered(page, 1);
    expect(first).toContain('春眠不觉晓');
    // The page showed what the stream carried. (A poem can take less than one 16 ms delivery on a fast machine,
    // so "in several pieces" is checked on a long answer, in the next test.)
    expect((await textChanges(page)).at(-1)).toBe(first);
    const sse = await (await requests[0].response())!.text();
    expect(sse.match(/"delta":\{"content":"[^"]/g)?.length ?? 0).toBeGreaterThan(0);
    expect(sse.trimEnd().endsWith('data: [DONE]')).toBe(true);

    await page.fill('#input', '作者是谁？');
    await page.click('#send');
    const answers = await answered(page, 2);
    expect(answers).toHaveLength(2);
    expect(answers[1].trim()).not.toBe('');
    expect(await page.locator('.msg.user').allTextContents()).toEqual([POEM, '作者是谁？']);
    expect(requests).toHaveLength(2);
    const second = requests[1].postDataJSON();
    expect(second).toMatchObject({ model: server.servedModelName, stream: true, temperature: 0 });
    expect(second.messages).toEqual([
      { role: 'user', content: POEM },
      { role: 'assistant', content: first },
      { role: 'user', content: '作者是谁？' },
    ]);
    expect(await page.locator('.msg.assistant[data-state="done"]').count()).toBe(2);
    expect(await page.locator('#input').inputValue()).toBe('');

    const shot = process.env.HUOZI_SCREENSHOT === '1'
      ? join(root, 'docs', 'web-chat.png')
      : join(mkdtempSync(join(tmpdir(), 'huozi-web-')), 'web-chat.png');
    await page.screenshot({ path: shot });
    await context.close();
  });

  it('renders a long answer piece by piece while it streams', async () => {
    const { context, page, requests } = await openPage();
    await page.fill('#temperature', '2');
    await page.fill('#max-tokens', '1500');
    // At temperature 2 the tiny model rambles for up to 1500 tokens (hundreds of ms), but now and then it ends at
    // once: then start over.
    let answer = '';
    for (let attempt = 0; attempt < 8 && answer.length < 300; attempt++) {
      await page.click('#new-chat');
      await expect.poll(() => page.locator('.turn').count()).toBe(0);
      await watchTextChanges(page);
      await page.fill('#input', '1 2 3 4 5');
      await page.press('#input', 'Enter');
      [answer] = await answered(page, 1);
    }
    expect(answer.length).toBeGreaterThanOrEqual(300);
    const changes = (await textChanges(page)).filter((t) => t.length > 0);
    // Several distinct, growing texts: it was shown while it streamed, not all at the end.
    expect(new Set(changes).size).toBeGreaterThan(3);
    expect(changes.at(-1)).toBe(answer);
    expect(answer.startsWith(changes[0])).toBe(true);
    const sse = await (await requests.at(-1)!.response())!.text();
    expect(sse.match(/"delta":\{"content":"[^"]/g)?.length ?? 0).toBeGreaterThan(3);
    await context.close();
  });

  it('Stop aborts a long answer, keeps what was said, and the next turn builds on it', async () => {
    const { context, page, requests, failed } = await openPage();
    await page.fill('#temperature', '2');
    await page.fill('#max-tokens', '4000');
    // At temperature 2 the tiny model rambles for seconds, but now and then it ends at once: then start over.
    let partial = '';
    for (let attempt = 0; attempt < 8 && !partial; attempt++) {
      await page.click('#new-chat');
      await expect.poll(() => page.locator('.turn').count()).toBe(0);
      const failedBefore = failed.length;
      await page.fill('#input', '1 2 3 4 5');
      await page.press('#input', 'Enter');
      const last = page.locator('.msg.assistant').last();
      await page.waitForFunction(() => {
        const m = [...document.querySelectorAll<HTMLElement>('.msg.assistant')].at(-1);
        return m !== undefined && ((m.textContent ?? '').length > 0 || !['waiting', 'streaming'].includes(m.dataset.state!));
      });
      try {
        await page.click('#stop', { timeout: 1000 });
      } catch {
        continue; // it finished before the click
      }
      await expect.poll(() => last.getAttribute('data-state')).not.toMatch(/waiting|streaming/);
      if ((await last.getAttribute('data-state')) !== 'stopped') continue;
      // Playwright reports the aborted request a moment later, and only if the browser had not yet received the
      // whole stream when Stop was clicked (a short answer can reach the network layer in full while the page
      // still reads it; then nothing was left to abort on the server): wait for the report, else try again.
      const deadline = Date.now() + 2000;
      while (failed.length === failedBefore && Date.now() < deadline) await page.waitForTimeout(50);
      if (failed.length > failedBefore) partial = (await last.textContent()) ?? '';
    }
    expect(partial).not.toBe('');
    // The fetch was aborted, the text stays as it was, and the page is ready for the next message.
    expect(failed.length).toBeGreaterThan(0);
    await page.waitForTimeout(300);
    expect(await page.locator('.msg.assistant').last().textContent()).toBe(partial);
    expect(await page.locator('#stop').isHidden()).toBe(true);
    expect(await page.locator('#send').isEnabled()).toBe(true);
    await expect.poll(() => page.locator('.meta').last().textContent()).toContain('Stopped');
    // The server noticed the client leaving: it cancelled the generation and freed the slot.
    await expect.poll(async () => (await (await fetch(`${url}/health`)).json()).slots_busy, { timeout: 5000 }).toBe(0);
    const metrics = await (await fetch(`${url}/metrics`)).text();
    expect(Number(/^huozi_generations_cancelled_total (\d+)/m.exec(metrics)?.[1])).toBeGreaterThan(0);

    await page.fill('#temperature', '0');
    await page.fill('#max-tokens', '64');
    await page.fill('#input', POEM);
    await page.press('#input', 'Enter');
    const answers = await answered(page, 2);
    expect(answers).toHaveLength(2);
    // The follow-up is answered in full: the page shows it finished, and its stream ended with a finish_reason and
    // [DONE]. (Its text is the tiny model's choice after a temperature-2 ramble in the history: now and then it
    // ends its turn at once, an empty answer.)
    expect(await page.locator('.msg.assistant').last().getAttribute('data-state')).toMatch(/^(done|length)$/);
    const sse = await (await requests.at(-1)!.response())!.text();
    expect(sse).toMatch(/"finish_reason":"(stop|length)"/);
    expect(sse.trim().endsWith('data: [DONE]')).toBe(true);
    expect(requests.at(-1)!.postDataJSON().messages).toEqual([
      { role: 'user', content: '1 2 3 4 5' },
      { role: 'assistant', content: partial },
      { role: 'user', content: POEM },
    ]);
    await context.close();
  });

  it('uses the API key and system prompt, shows server errors inline, and keeps Shift+Enter and IME Enter in the box', async () => {
    const keyed = await createServer(model, { parallel: 1, threads: 1, apiKey: 'sk-test-secret' });
    const { url: keyedUrl } = await keyed.listen(0, '127.0.0.1');
    try {
      const { context, page, requests } = await openPage(keyedUrl);
      await expect.poll(() => page.locator('#model').textContent()).toBe('API key needed');

      // Shift+Enter is a new line; Enter while an IME composes (拼音 candidates) only confirms the candidate.
      await page.click('#input');
      await page.keyboard.type('春');
      await page.keyboard.press('Shift+Enter');
      await page.keyboard.type('晓');
      await page.evaluate(() => {
        document.getElementById('input')!.dispatchEvent(
          new KeyboardEvent('keydown', { key: 'Enter', code: 'Enter', isComposing: true, bubbles: true, cancelable: true }),
        );
      });
      expect(await page.locator('#input').inputValue()).toBe('春\n晓');
      expect(await page.locator('.turn').count()).toBe(0);

      // Without the key: the server's 401 message, inline; the text goes back in the box for a retry.
      await page.fill('#input', POEM);
      await page.click('#send');
      await expect.poll(() => page.locator('.error').textContent()).toContain('Missing API key');
      expect(await page.locator('.error').textContent()).toContain('401');
      expect(await page.locator('#input').inputValue()).toBe(POEM);

      await page.fill('#api-key', 'sk-test-secret');
      await page.dispatchEvent('#api-key', 'change');
      await expect.poll(() => page.locator('#model').textContent()).toBe(keyed.servedModelName);
      await page.fill('#system', '你是一个诗人。');
      await page.fill('#temperature', '0');
      await page.click('#send');
      const answers = await answered(page, 1);
      expect(answers[0].trim()).not.toBe('');
      const request = requests.at(-1)!;
      expect(await request.headerValue('authorization')).toBe('Bearer sk-test-secret');
      // The failed turn is not part of the conversation that is sent.
      expect(request.postDataJSON().messages).toEqual([
        { role: 'system', content: '你是一个诗人。' },
        { role: 'user', content: POEM },
      ]);

      // The key and settings survive a reload (localStorage); the conversation starts afresh.
      await page.reload();
      await expect.poll(() => page.locator('#model').textContent()).toBe(keyed.servedModelName);
      expect(await page.locator('#api-key').inputValue()).toBe('sk-test-secret');
      expect(await page.locator('#system').inputValue()).toBe('你是一个诗人。');
      expect(await page.locator('.turn').count()).toBe(0);

      // An error body from the server is shown with its message: here a temperature it refuses, put in on the way.
      await page.route('**/v1/chat/completions', async (route) => {
        const body = route.request().postDataJSON();
        await route.continue({ postData: JSON.stringify({ ...body, temperature: 5 }) });
      });
      await page.fill('#input', '你好');
      await page.press('#input', 'Enter');
      await expect.poll(() => page.locator('.error').textContent()).toMatch(/temperature.*\(400/);
      await context.close();
    } finally {
      await keyed.close();
    }
  });
});
