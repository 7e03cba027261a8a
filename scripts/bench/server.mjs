// npm run bench -- --server: aggregate generation speed of `huozi-gguf serve` against llama.cpp's own
// llama-server (built from the same vendor tree by scripts/native-tools.mjs), with 1, 4 and 8 concurrent
// streaming clients, in one run. Both servers get the same model, slots, context, threads and batch sizes;
// every request is a streaming /v1/completions of exactly --gen tokens (ignore_eos, greedy), so both do the
// same work. Each (server, concurrency) cell is measured in every round with the servers' order rotating;
// figures are medians over rounds. Writes docs/server-bench.md.
//
//   npm run bench -- --server [--rounds 3 --threads 2 --parallel 8 --gen 128 --requests 4 --model m.gguf]
import { spawn } from 'node:child_process';
import { request } from 'node:http';
import { writeFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { createServer as netServer } from 'node:net';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { execFileSync } from 'node:child_process';
import { buildNativeTools, nativeTool } from '../native-tools.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const { values } = parseArgs({
  args: process.argv.slice(2).filter((a) => a !== '--server'),
  options: {
    rounds: { type: 'string', default: '3' },
    threads: { type: 'string', default: '2' },
    parallel: { type: 'string', default: '8' },
    streams: { type: 'string', default: '1,4,8' },
    gen: { type: 'string', default: '128' },
    requests: { type: 'string', default: '4' },
    ctx: { type: 'string', default: '512' },
    model: { type: 'string', default: join(root, 'models', 'huozi-tiny-q4_0.gguf') },
    out: { type: 'string', default: join(root, 'docs', 'server-bench.md') },
  },
});
const rounds = Number(values.rounds);
const threads = Number(values.threads);
const parallel = Number(values.parallel);
const streamCounts = values.streams.split(',').map(Number);
const gen = Number(values.gen);
const perClient = Number(values.requests);
const ctxPerSlot = Number(values.ctx);
const model = resolve(values.model);

buildNativeTools(['llama-server']);
execFileSync('npx', ['tsc', '-p', 'tsconfig.json'], { cwd: root, stdio: 'inherit' });

const PROMPTS = ['春眠不觉晓，', '床前明月光，', '白日依山尽，', '红豆生南国，', '千山鸟飞绝，', '松下问童子，', '独在异乡为异客，', '朝辞白帝彩云间，'];

function freePort() {
  return new Promise((res) => {
    const s = netServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

const servers = {
  'huozi-gguf serve': (port) => [
    process.execPath,
    [join(root, 'dist/cli/main.js'), 'serve', '-m', model, '--port', String(port), '--parallel', String(parallel),
      '-c', String(ctxPerSlot * parallel), '-t', String(threads), '--served-model-name', 'm', '-q', '--no-web'],
  ],
  'llama-server': (port) => [
    nativeTool('llama-server'),
    ['-m', model, '--port', String(port), '-np', String(parallel), '-c', String(ctxPerSlot * parallel), '-t', String(threads),
      '--alias', 'm', '--no-webui', '-b', '2048', '-ub', '512', '--log-disable'],
  ],
};

async function start(name) {
  const port = await freePort();
  const [cmd, args] = servers[name](port);
  const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d).length > 20000 && (stderr = stderr.slice(-10000)));
  const url = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 600; i++) {
    if (child.exitCode !== null) throw new Error(`${name} exited: ${stderr}`);
    try {
      const r = await fetch(`${url}/health`);
      if (r.ok) return { url, child };
    } catch {}
    await new Promise((r) => setTimeout(r, 100));
  }
  child.kill();
  throw new Error(`${name} did not become healthy: ${stderr}`);
}

// One streaming request on a connection of its own (no keep-alive: an idle pooled socket that the server
// closes between two requests would fail the next one, more often on the busier server).
function stream(url, prompt) {
  const body = JSON.stringify({ model: 'm', prompt, max_tokens: gen, temperature: 0, ignore_eos: true, stream: true });
  return new Promise((resolve, reject) => {
    const req = request(`${url}/v1/completions`, {
      method: 'POST', agent: false, headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) },
    }, (res) => {
      if (res.statusCode !== 200) {
        let text = '';
        res.on('data', (d) => (text += d));
        res.on('end', () => reject(new Error(`HTTP ${res.statusCode}: ${text}`)));
        return;
      }
      res.setEncoding('utf8');
      let buffer = '';
      let finish = null;
      res.on('data', (part) => {
        buffer += part;
        let at;
        while ((at = buffer.indexOf('\n\n')) >= 0) {
          const data = buffer.slice(0, at).replace(/^data: /, '');
          buffer = buffer.slice(at + 2);
          if (data === '[DONE]') continue;
          const json = JSON.parse(data);
          if (json.choices?.[0]?.finish_reason) finish = json.choices[0].finish_reason;
        }
      });
      res.on('end', () => (finish === 'length' ? resolve() : reject(new Error(`a stream ended with finish_reason ${finish}`))));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

// N clients, each sending `perClient` requests one after another; aggregate = tokens / wall time.
async function load(url, clients) {
  await stream(url, PROMPTS[0]); // warm-up
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: clients }, async (_, c) => {
      for (let r = 0; r < perClient; r++) await stream(url, PROMPTS[(c + r) % PROMPTS.length]);
    }),
  );
  const seconds = (performance.now() - t0) / 1000;
  return (clients * perClient * gen) / seconds;
}

const names = Object.keys(servers);
const results = Object.fromEntries(names.map((n) => [n, Object.fromEntries(streamCounts.map((s) => [s, []]))]));
for (let round = 0; round < rounds; round++) {
  const order = round % 2 === 0 ? names : [...names].reverse();
  for (const name of order) {
    const { url, child } = await start(name);
    try {
      for (const clients of streamCounts) {
        const tps = await load(url, clients);
        results[name][clients].push(tps);
        console.log(`round ${round + 1} ${name} ${clients} streams: ${tps.toFixed(0)} t/s`);
      }
    } finally {
      child.kill('SIGTERM');
      await new Promise((r) => child.once('exit', r));
    }
  }
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: root, encoding: 'utf8' }).trim();
const rows = streamCounts.map((s) => {
  const ours = median(results['huozi-gguf serve'][s]);
  const native = median(results['llama-server'][s]);
  const perRound = results['huozi-gguf serve'][s].map((x, i) => x / results['llama-server'][s][i]);
  return `| ${s} | ${native.toFixed(0)} | ${ours.toFixed(0)} | ${(ours / native).toFixed(2)}x | ${perRound.map((r) => r.toFixed(2)).join(', ')} |`;
});
const md = `# Server benchmark: huozi-gguf serve vs llama-server

Produced by \`npm run bench -- --server ${process.argv.slice(2).filter((a) => a !== '--server').join(' ')}\`
(scripts/bench/server.mjs) on ${new Date().toISOString().slice(0, 10)}, commit ${commit}; ${cpus()[0]?.model ?? 'CPU'} ×
${cpus().length} cores, ${(totalmem() / 2 ** 30).toFixed(0)} GiB.

Model \`${relative(root, model)}\`; both servers: ${parallel} slots of ${ctxPerSlot} tokens (\`-np ${parallel} -c ${ctxPerSlot * parallel}\`),
${threads} threads, batch 2048 / ubatch 512. llama-server is llama.cpp's own, built from the same vendor tree
(scripts/native-tools.mjs). Each client sends ${perClient} streaming \`/v1/completions\` requests one after
another, each generating exactly ${gen} tokens (greedy, \`ignore_eos\`); aggregate = all generated tokens / wall
time. ${rounds} rounds, servers' order alternating; medians.

| concurrent streams | llama-server t/s | huozi-gguf t/s | ratio | per-round ratios |
| ---: | ---: | ---: | ---: | --- |
${rows.join('\n')}
`;
writeFileSync(values.out, md);
console.log(md);
