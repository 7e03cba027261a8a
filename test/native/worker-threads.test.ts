// The addon in worker_threads: a worker terminated while it generates (a callback into JS then fails because
// its environment is going away) must end that worker only. Before NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS,
// node-addon-api turned that failure into a C++ exception nobody caught: "terminate called after throwing an
// instance of 'Napi::Error'" aborted the whole process. Run in a child process, so that an abort fails this test.
import { spawnSync } from 'node:child_process';
import { pathToFileURL } from 'node:url';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { demoPath, root } from '../helpers.js';

const script = `
import { Worker } from 'node:worker_threads';
const code = \`
import { workerData, parentPort } from 'node:worker_threads';
const lib = await import(workerData.lib);
const model = await lib.loadModel(workerData.model);
const context = await model.createContext({ contextSize: 512 });
if (workerData.mode === 'dispose') {
  for await (const _ of context.generate([1, 1000], { temperature: 0, maxTokens: 8 }));
  await model.dispose();
  parentPort.postMessage('disposed');
} else {
  let n = 0;
  for await (const _ of context.generate([1, 1000], { temperature: 0, maxTokens: 400, stopAtEog: false, streamIntervalMs: 0 })) {
    if (++n === 3) parentPort.postMessage('generating');
  }
}
\`;
const run = (mode) => new Promise((resolve, reject) => {
  const w = new Worker(new URL('data:text/javascript,' + encodeURIComponent(code)), {
    workerData: { mode, lib: process.argv[1], model: process.argv[2] },
  });
  w.on('message', (msg) => { if (msg === 'generating') w.terminate(); });
  w.on('error', reject);
  w.on('exit', resolve);
});
for (let round = 0; round < 3; round++) await Promise.all([run('terminate'), run('terminate'), run('dispose')]);
console.log('survived');
`;

describe('worker_threads', () => {
  it('a worker terminated mid-generation ends alone; the process and the other workers go on', () => {
    const lib = pathToFileURL(join(root, 'dist', 'index.js')).href;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script, lib, demoPath], { encoding: 'utf8', timeout: 120_000 });
    expect(r.stderr).not.toMatch(/terminate called/);
    expect({ status: r.status, signal: r.signal }).toEqual({ status: 0, signal: null });
    expect(r.stdout).toContain('survived');
  });
});
