// npm run bench -- --server: aggregate generation speed of `huozi-gguf serve` against llama.cpp's own
// llama-server (scripts/native-tools.mjs: from the tree that built the addon when that tree has it, else
// .build/native; the page says which), with 1, 4 and 8 concurrent clients, in one run. Both servers get the same
// model, slots, context, threads and batch sizes; every request is a /v1/completions of exactly --gen tokens
// (ignore_eos, greedy). Three ways of asking:
//   - streaming, each server as it streams by default: llama-server sends one SSE event per token; ours sends an
//     answer's new text at most every 16 ms (--stream-interval-ms), which at these speeds is a few events per
//     answer. The client parses every event on the same cores, so this row is not the same work on both sides;
//   - streaming, one event per token on both sides (ours with stream_interval_ms 0 in the request): like for like;
//   - not streaming: one JSON answer each.
// The events per answer (SSE events carrying text) are counted and shown. Each (server, mode, concurrency) cell
// is measured in every round, the servers' order alternating; figures are medians over rounds. Writes
// docs/server-bench.md, all of it, from what this run measured.
//
//   npm run bench -- --server [--rounds 3 --threads 2 --parallel 8 --gen 128 --requests 4 --model m.gguf]
import { request } from 'node:http';
import { writeFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { basename, dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { execFileSync } from 'node:child_process';
import { buildNativeTools, nativeTool } from '../native-tools.mjs';
import { launch } from './launch.mjs';

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

execFileSync('npx', ['tsc', '-p', 'tsconfig.json'], { cwd: root, stdio: 'inherit' });
const tools = buildNativeTools(['llama-server']);
const llamaServer = nativeTool('llama-server');
const { systemInfo } = await import(join(root, 'dist', 'index.js'));
const addonInfo = systemInfo();

const PROMPTS = ['春眠不觉晓，', '床前明月光，', '白日依山尽，', '红豆生南国，', '千山鸟飞绝，', '松下问童子，', '独在异乡为异客，', '朝辞白帝彩云间，'];

const servers = {
  'huozi-gguf serve': (port) => [
    process.execPath,
    [join(root, 'dist/cli/main.js'), 'serve', '-m', model, '--port', String(port), '--parallel', String(parallel),
      '-c', String(ctxPerSlot * parallel), '-t', String(threads), '--served-model-name', 'm', '-q', '--no-web'],
  ],
  'llama-server': (port) => [
    llamaServer,
    ['-m', model, '--port', String(port), '-np', String(parallel), '-c', String(ctxPerSlot * parallel), '-t', String(threads),
      '--alias', 'm', '--no-webui', '-b', '2048', '-ub', '512', '--log-disable'],
  ],
};

// llama-server's log line naming the CPU backend ggml loaded (prebuilt libraries only).
let serverCpuBackend;
async function start(name) {
  return launch(name, servers[name], (text) => {
    if (name === 'llama-server') serverCpuBackend ??= /loaded CPU backend from (\S+)/.exec(text)?.[1];
  });
}

// The ways of asking: [label, server, request fields].
const MODES = [
  { key: 'stream', label: 'streaming, as each streams by default', body: { stream: true } },
  { key: 'perToken', label: 'streaming, one event per token on both', body: { stream: true }, ours: { stream_interval_ms: 0 } },
  { key: 'whole', label: 'not streaming', body: { stream: false } },
];

// One request on a connection of its own (no keep-alive: an idle pooled socket that the server closes between
// two requests would fail the next one, more often on the busier server). Resolves to the number of SSE events
// that carried text (0 when not streaming).
function ask(url, name, mode, prompt) {
  const body = JSON.stringify({
    model: 'm', prompt, max_tokens: gen, temperature: 0, ignore_eos: true, ...mode.body, ...(name === 'llama-server' ? {} : mode.ours),
  });
  return new Promise((resolve, reject) => {
    const req = request(`${url}/v1/completions`, {
      method: 'POST', agent: false, headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) },
    }, (res) => {
      res.setEncoding('utf8');
      if (res.statusCode !== 200 || !mode.body.stream) {
        let text = '';
        res.on('data', (d) => (text += d));
        res.on('end', () => {
          if (res.statusCode !== 200) return reject(new Error(`HTTP ${res.statusCode}: ${text}`));
          const json = JSON.parse(text);
          const finish = json.choices?.[0]?.finish_reason;
          if (finish !== 'length' || json.usage?.completion_tokens !== gen) {
            return reject(new Error(`an answer ended with finish_reason ${finish}, ${json.usage?.completion_tokens} tokens`));
          }
          resolve(0);
        });
        res.on('error', reject);
        return;
      }
      let buffer = '';
      let finish = null;
      let events = 0;
      res.on('data', (part) => {
        buffer += part;
        let at;
        while ((at = buffer.indexOf('\n\n')) >= 0) {
          const data = buffer.slice(0, at).replace(/^data: /, '');
          buffer = buffer.slice(at + 2);
          if (data === '[DONE]') continue;
          const json = JSON.parse(data);
          if (json.choices?.[0]?.text) events++;
          if (json.choices?.[0]?.finish_reason) finish = json.choices[0].finish_reason;
        }
      });
      res.on('end', () => (finish === 'length' ? resolve(events) : reject(new Error(`a stream ended with finish_reason ${finish}`))));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

// N clients, each sending `perClient` requests one after another; aggregate = tokens / wall time.
async function load(url, name, mode, clients) {
  await ask(url, name, mode, PROMPTS[0]); // warm-up
  const events = [];
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: clients }, async (_, c) => {
      for (let r = 0; r < perClient; r++) events.push(await ask(url, name, mode, PROMPTS[(c + r) % PROMPTS.length]));
    }),
  );
  const seconds = (performance.now() - t0) / 1000;
  return { tps: (clients * perClient * gen) / seconds, events: events.reduce((a, b) => a + b, 0) / events.length };
}

const names = Object.keys(servers);
// results[mode][server][clients] = [{ tps, events }] over rounds
const results = Object.fromEntries(MODES.map((m) => [m.key, Object.fromEntries(names.map((n) => [n, Object.fromEntries(streamCounts.map((s) => [s, []]))]))]));
for (let round = 0; round < rounds; round++) {
  const order = round % 2 === 0 ? names : [...names].reverse();
  for (const name of order) {
    const { url, child } = await start(name);
    try {
      for (const mode of MODES) {
        for (const clients of streamCounts) {
          const r = await load(url, name, mode, clients);
          results[mode.key][name][clients].push(r);
          console.log(`round ${round + 1} ${name} ${mode.key} ${clients} clients: ${r.tps.toFixed(0)} t/s, ${r.events.toFixed(1)} events per answer`);
        }
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
const ev = (x) => (x >= 10 ? x.toFixed(0) : x.toFixed(1));
const tables = MODES.map((mode) => {
  const rows = streamCounts.map((s) => {
    const ours = results[mode.key]['huozi-gguf serve'][s];
    const theirs = results[mode.key]['llama-server'][s];
    const o = median(ours.map((r) => r.tps));
    const n = median(theirs.map((r) => r.tps));
    const perRound = ours.map((r, i) => r.tps / theirs[i].tps);
    const events = mode.body.stream
      ? ` ${ev(median(theirs.map((r) => r.events)))} | ${ev(median(ours.map((r) => r.events)))} |`
      : '';
    return `| ${s} | ${n.toFixed(0)} | ${o.toFixed(0)} | ${median(perRound).toFixed(2)}x | ${perRound.map((r) => r.toFixed(2)).join(', ')} |${events}`;
  });
  const eventHead = mode.body.stream ? ' llama-server events per answer | huozi-gguf events per answer |' : '';
  const eventRule = mode.body.stream ? ' ---: | ---: |' : '';
  const ask = mode.key === 'stream'
    ? '`"stream": true`: llama-server one event per token, ours at most one per 16 ms (its default `--stream-interval-ms 16`)'
    : mode.key === 'perToken'
      ? '`"stream": true`, and to ours `"stream_interval_ms": 0`: one event per token on both sides'
      : '`"stream": false`: one JSON answer per request';
  return `### ${mode.label}

${ask}.

| concurrent clients | llama-server t/s | huozi-gguf t/s | ratio | per-round ratios |${eventHead}
| ---: | ---: | ---: | ---: | --- |${eventRule}
${rows.join('\n')}
`;
});
const rel = (p) => (p.startsWith(root) ? relative(root, p) : p);
const sameLibs = tools.sameLibraries && !tools.fallback.includes('llama-server');
const md = `# Server benchmark: huozi-gguf serve vs llama-server

Produced by \`npm run bench -- --server ${process.argv.slice(2).filter((a) => a !== '--server').join(' ')}\`
(scripts/bench/server.mjs) on ${new Date().toISOString().slice(0, 10)}, commit ${commit}; ${cpus()[0]?.model ?? 'CPU'} ×
${cpus().length} cores, ${(totalmem() / 2 ** 30).toFixed(0)} GiB. Every figure on this page comes from that run.

Model \`${relative(root, model)}\`; both servers: ${parallel} slots of ${ctxPerSlot} tokens (\`-np ${parallel} -c ${ctxPerSlot * parallel}\`),
${threads} threads, batch 2048 / ubatch 512. Each client sends ${perClient} \`/v1/completions\` requests one after another,
each generating exactly ${gen} tokens (greedy, \`ignore_eos\`); aggregate = all generated tokens / wall time, the
client (Node, parsing every SSE event) running on the same machine. ${rounds} rounds, servers' order alternating;
medians, and the ratio is the median of the per-round ratios. "Events per answer" counts the SSE events that
carried text.

- huozi-gguf: \`${rel(addonInfo.addon?.path ?? 'unknown')}\` (${addonInfo.addon?.variant ?? 'unknown'} build), ${addonInfo.cpuBackend ? `CPU backend \`${addonInfo.cpuBackend}\`` : 'one CPU backend compiled in (static)'}.
- llama-server: \`${rel(llamaServer)}\`, ${serverCpuBackend ? `CPU backend \`${basename(serverCpuBackend)}\`` : 'its CPU backend compiled in (static)'}; ${sameLibs
    ? 'linked to the same compiled libraries as the addon'
    : `**not** linked to the addon's libraries (${tools.fallback.includes('llama-server') ? "the addon's tree has no llama-server target, so it came from .build/native" : tools.why.replaceAll(`${root}/`, '')})`}.

The first table is each server as it streams out of the box; only the second and third are the same work on
both sides.

${tables.join('\n')}`;
writeFileSync(values.out, md);
console.log(md);
