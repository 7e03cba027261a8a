// npm run bench -- --constrained: generation speed under a JSON Schema, `huozi-gguf serve` against llama.cpp's own
// llama-server (scripts/native-tools.mjs: from the tree that built the addon when that tree has it, else
// .build/native; the page says which), and the time Grammar.fromJsonSchema takes for a 50-property schema.
// Writes docs/constrained-bench.md, all of it, from what this run measured.
//
// The request: /v1/completions with a prompt given as token ids (a user message in the Huozi chat template,
// rendered and tokenized here once), so that both servers see the same tokens: the fixture has no chat template
// in its file, and llama-server would render its own (ChatML) for a chat request. The constraint is one 10-field
// schema (strings with maxLength, bounded integers, enums, a bounded array, a nested object, a boolean, a number):
// ours gets it as `response_format: { type: 'json_schema' }`, llama-server as its `json_schema` field. Both then
// convert it with the same code (common/json-schema-to-grammar.cpp; llama-server's /v1/completions path calls
// json_schema_to_grammar directly, its chat path would go through the chat template's format first) and apply the
// grammar the same way (the drawn token checked, the whole vocabulary only when it is refused).
//
// Each server answers, one request at a time, greedy and at temperature 0.7 (top_k 40, top_p 0.95, min_p 0.05:
// llama-server's defaults, sent to both; seed 1000 + the request's index, the same on both), not streaming and
// streaming (one event per token on both: ours with stream_interval_ms 0), `--requests` answers per cell. tg is
// generated tokens / wall time as the client sees it (request sent to answer complete; the prompt is cached after
// the warm-up, so this is almost all generation); streaming also shows tokens after the first / time from the
// first token's event to the end. llama-server's own timing (`timings.predicted_per_second`) is shown beside it:
// ours reports none. Wall time moves with whatever else the machine runs, so each cell also shows the server
// process's CPU time per token (/proc). Every answer is parsed and validated against the schema (ajv). With the
// prompt cached the two servers' answers differ (llama-server evaluates the prompt's last token again alone, ours
// keeps its logits), so each round also asks once greedy and once seeded with cache_prompt false, where the texts
// must agree; the page says how many did. For reference, each server's unconstrained tg on the same prompt
// (greedy, `ignore_eos`, --gen tokens). Servers start afresh each round, their order alternating; figures are
// medians over rounds, ratios medians of the per-round ratios.
//
//   npm run bench -- --constrained [--rounds 5 --requests 8 --threads 2 --parallel 1 --ctx 2048 --max-tokens 1024
//                                  --gen 128 --compile-samples 20 --model m.gguf --out docs/constrained-bench.md]
import { execFileSync } from 'node:child_process';
import { request } from 'node:http';
import { readFileSync, writeFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { basename, dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { buildNativeTools, nativeTool } from '../native-tools.mjs';
import { launch } from './launch.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const { values } = parseArgs({
  args: process.argv.slice(2).filter((a) => a !== '--constrained'),
  options: {
    rounds: { type: 'string', default: '5' },
    requests: { type: 'string', default: '8' },
    threads: { type: 'string', default: '2' },
    parallel: { type: 'string', default: '1' },
    ctx: { type: 'string', default: '2048' },
    'max-tokens': { type: 'string', default: '1024' },
    gen: { type: 'string', default: '128' },
    'compile-samples': { type: 'string', default: '20' },
    model: { type: 'string', default: join(root, 'models', 'huozi-tiny-q4_0.gguf') },
    out: { type: 'string', default: join(root, 'docs', 'constrained-bench.md') },
  },
});
const rounds = Number(values.rounds);
const perCell = Number(values.requests);
const threads = Number(values.threads);
const parallel = Number(values.parallel);
const ctxPerSlot = Number(values.ctx);
const maxTokens = Number(values['max-tokens']);
const gen = Number(values.gen);
const compileSamples = Number(values['compile-samples']);
const model = resolve(values.model);

execFileSync('npx', ['tsc', '-p', 'tsconfig.json'], { cwd: root, stdio: 'inherit' });
const buildStart = performance.now();
const tools = buildNativeTools(['llama-server']);
const buildSeconds = (performance.now() - buildStart) / 1000;
const llamaServer = nativeTool('llama-server');
const { Grammar, huoziTemplate, loadModel, systemInfo } = await import(join(root, 'dist', 'index.js'));
const { default: Ajv } = await import('ajv');
const addonInfo = systemInfo();

/** The 10-field schema both servers answer under. */
const SCHEMA = {
  type: 'object',
  additionalProperties: false,
  properties: {
    name: { type: 'string', maxLength: 16 },
    city: { type: 'string', maxLength: 12 },
    age: { type: 'integer', minimum: 0, maximum: 120 },
    year: { type: 'integer', minimum: 1900, maximum: 2100 },
    level: { enum: ['beginner', 'intermediate', 'advanced'] },
    status: { type: 'string', enum: ['active', 'inactive', 'banned'] },
    tags: { type: 'array', items: { type: 'string', maxLength: 8 }, minItems: 1, maxItems: 3 },
    address: {
      type: 'object', additionalProperties: false,
      properties: { street: { type: 'string', maxLength: 20 }, zip: { type: 'integer', minimum: 10000, maximum: 99999 } },
      required: ['street', 'zip'],
    },
    verified: { type: 'boolean' },
    rating: { type: 'number' },
  },
  required: ['name', 'city', 'age', 'year', 'level', 'status', 'tags', 'address', 'verified', 'rating'],
};

/** A 50-property schema of the same kinds of fields, for the compile time. */
function wideSchema() {
  const kinds = [
    (i) => ({ type: 'string', maxLength: 8 + (i % 24) }),
    (i) => ({ type: 'integer', minimum: -i * 10, maximum: 1000 + i * 37 }),
    (i) => ({ enum: [`a${i}`, `b${i}`, `c${i}`, `d${i}`] }),
    () => ({ type: 'boolean' }),
    (i) => ({ type: 'array', items: { type: 'string', maxLength: 10 }, minItems: 0, maxItems: 2 + (i % 4) }),
    (i) => ({
      type: 'object', additionalProperties: false,
      properties: { x: { type: 'integer', minimum: 0, maximum: 100 + i }, y: { type: 'string', maxLength: 12 } }, required: ['x', 'y'],
    }),
    () => ({ type: 'number' }),
  ];
  const properties = {};
  for (let i = 0; i < 50; i++) properties[`field_${String(i).padStart(2, '0')}`] = kinds[i % kinds.length](i);
  return { type: 'object', additionalProperties: false, properties, required: Object.keys(properties).filter((_, i) => i % 5 !== 4) };
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

// --- Grammar compile time (Grammar.fromJsonSchema: the walker, llama.cpp's converter, the GBNF pre-scan and the
// native parse). Cold: the first call in a fresh process (the addon already loaded); warm: later calls in one.
const wide = wideSchema();
const coldScript = `
const { Grammar, systemInfo } = await import(${JSON.stringify(join(root, 'dist', 'index.js'))});
systemInfo();
const schema = JSON.parse(process.argv[1]);
const t0 = process.hrtime.bigint();
Grammar.fromJsonSchema(schema);
console.log(Number(process.hrtime.bigint() - t0) / 1e6);`;
const cold = [];
for (let i = 0; i < compileSamples; i++) {
  cold.push(Number(execFileSync(process.execPath, ['--input-type=module', '-e', coldScript, JSON.stringify(wide)], { encoding: 'utf8' }).trim()));
}
const wideGrammar = Grammar.fromJsonSchema(wide);
const warm = [];
for (let i = 0; i < compileSamples; i++) {
  const t0 = process.hrtime.bigint();
  Grammar.fromJsonSchema(wide);
  warm.push(Number(process.hrtime.bigint() - t0) / 1e6);
}
const tenWarm = [];
Grammar.fromJsonSchema(SCHEMA);
for (let i = 0; i < compileSamples; i++) {
  const t0 = process.hrtime.bigint();
  Grammar.fromJsonSchema(SCHEMA);
  tenWarm.push(Number(process.hrtime.bigint() - t0) / 1e6);
}
const wideRules = wideGrammar.gbnf.split('\n').filter((l) => l.includes('::=')).length;
console.log(`50-property schema: cold ${median(cold).toFixed(2)} ms, warm ${median(warm).toFixed(2)} ms (${wideGrammar.gbnf.length} bytes of GBNF, ${wideRules} rules)`);

// --- The prompt, as token ids.
const QUESTION = '请虚构一位读者的资料，用 JSON 回答：姓名、城市、年龄、出生年份、水平、状态、标签、地址、是否认证和评分。';
let prompt;
{
  const m = await loadModel(model);
  try {
    const text = huoziTemplate.render([{ role: 'user', content: QUESTION }], true).map((s) => s.text).join('');
    prompt = Array.from(m.tokenize(text, { parseSpecial: true }));
  } finally {
    await m.dispose();
  }
}
const validate = new Ajv({ strict: false }).compile(SCHEMA);

const OURS = 'huozi-gguf serve';
const THEIRS = 'llama-server';
const servers = {
  [OURS]: (port) => [
    process.execPath,
    [join(root, 'dist/cli/main.js'), 'serve', '-m', model, '--port', String(port), '--parallel', String(parallel),
      '-c', String(ctxPerSlot * parallel), '-t', String(threads), '--served-model-name', 'm', '-q', '--no-web'],
  ],
  [THEIRS]: (port) => [
    llamaServer,
    ['-m', model, '--port', String(port), '-np', String(parallel), '-c', String(ctxPerSlot * parallel), '-t', String(threads),
      '--alias', 'm', '--no-webui', '-b', '2048', '-ub', '512', '--log-disable'],
  ],
};

async function start(name) {
  return launch(name, servers[name]);
}

const SAMPLING = { top_k: 40, top_p: 0.95, min_p: 0.05 };
const MODES = [
  { key: 'greedy', label: 'greedy, not streaming', temperature: 0, stream: false },
  { key: 'greedyStream', label: 'greedy, streaming', temperature: 0, stream: true },
  { key: 'sampled', label: 'temperature 0.7, not streaming', temperature: 0.7, stream: false },
  { key: 'sampledStream', label: 'temperature 0.7, streaming', temperature: 0.7, stream: true },
];

function body(name, mode, index) {
  const b = {
    model: 'm', prompt, max_tokens: maxTokens, temperature: mode.temperature, ...SAMPLING, seed: 1000 + index, stream: mode.stream,
  };
  if (mode.stream) b.stream_options = { include_usage: true };
  if (name === OURS) {
    b.response_format = { type: 'json_schema', json_schema: { name: 'reader', schema: SCHEMA, strict: true } };
    if (mode.stream) b.stream_interval_ms = 0;
  } else {
    b.json_schema = SCHEMA;
  }
  return b;
}

/**
 * One request on a connection of its own. Resolves to { tokens, seconds, genSeconds (streaming: first token's
 * event to the end), serverTps (llama-server's own figure), text, finish, events }.
 */
function ask(url, payload) {
  const data = JSON.stringify(payload);
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    let first;
    const req = request(`${url}/v1/completions`, {
      method: 'POST', agent: false, headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(data) },
    }, (res) => {
      res.setEncoding('utf8');
      let raw = '';
      let buffer = '';
      let text = '';
      let finish = null;
      let usage;
      let timings;
      let events = 0;
      res.on('data', (part) => {
        if (res.statusCode !== 200 || !payload.stream) {
          raw += part;
          return;
        }
        buffer += part;
        let at;
        while ((at = buffer.indexOf('\n\n')) >= 0) {
          const line = buffer.slice(0, at).replace(/^data: /, '');
          buffer = buffer.slice(at + 2);
          if (line === '[DONE]' || line.length === 0) continue;
          const json = JSON.parse(line);
          const choice = json.choices?.[0];
          if (choice?.text) {
            first ??= performance.now();
            text += choice.text;
            events++;
          }
          if (choice?.finish_reason) finish = choice.finish_reason;
          if (json.usage) usage = json.usage;
          if (json.timings) timings = json.timings;
        }
      });
      res.on('end', () => {
        const end = performance.now();
        if (res.statusCode !== 200) return reject(new Error(`HTTP ${res.statusCode}: ${raw}`));
        if (!payload.stream) {
          const json = JSON.parse(raw);
          text = json.choices[0].text;
          finish = json.choices[0].finish_reason;
          usage = json.usage;
          timings = json.timings;
        }
        if (!usage) return reject(new Error('an answer came without usage'));
        resolve({
          tokens: usage.completion_tokens, seconds: (end - t0) / 1000, genSeconds: first === undefined ? undefined : (end - first) / 1000,
          serverTps: timings?.predicted_per_second, text, finish, events,
        });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(data);
  });
}

/** A process's CPU seconds so far (user + system; Linux /proc, clock ticks of 1/100 s), or undefined elsewhere. */
function cpuSeconds(pid) {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return undefined;
  }
}

function check(answer) {
  try {
    return validate(JSON.parse(answer.text));
  } catch {
    return false;
  }
}

// results[mode][server] = per round { tps, genTps, serverTps, tokens, valid, stopped, texts }
const names = [OURS, THEIRS];
const results = Object.fromEntries([...MODES.map((m) => m.key), 'free', 'uncached'].map((k) => [k, Object.fromEntries(names.map((n) => [n, []]))]));
for (let round = 0; round < rounds; round++) {
  const order = round % 2 === 0 ? names : [...names].reverse();
  for (const name of order) {
    const { url, child } = await start(name);
    try {
      // Warm-up: the prompt into the cache, the first grammar, the first streamed answer.
      await ask(url, body(name, MODES[0], 0));
      await ask(url, body(name, MODES[3], 0));
      for (const mode of MODES) {
        const answers = [];
        const cpu0 = cpuSeconds(child.pid);
        for (let i = 0; i < perCell; i++) answers.push(await ask(url, body(name, mode, i)));
        const cpu1 = cpuSeconds(child.pid);
        const tokens = answers.reduce((a, r) => a + r.tokens, 0);
        const seconds = answers.reduce((a, r) => a + r.seconds, 0);
        const cell = {
          tps: tokens / seconds,
          genTps: mode.stream ? answers.reduce((a, r) => a + r.tokens - 1, 0) / answers.reduce((a, r) => a + r.genSeconds, 0) : undefined,
          serverTps: answers.every((r) => r.serverTps) ? median(answers.map((r) => r.serverTps)) : undefined,
          tokens: tokens / answers.length,
          valid: answers.filter(check).length,
          stopped: answers.filter((r) => r.finish === 'stop').length,
          events: answers.reduce((a, r) => a + r.events, 0) / answers.length,
          cpuMsPerToken: cpu0 === undefined || cpu1 === undefined ? undefined : ((cpu1 - cpu0) * 1000) / tokens,
          texts: answers.map((r) => r.text),
        };
        results[mode.key][name].push(cell);
        console.log(`round ${round + 1} ${name} ${mode.key}: ${cell.tps.toFixed(0)} t/s${cell.genTps ? ` (${cell.genTps.toFixed(0)} after the first token)` : ''}, ` +
          `${cell.tokens.toFixed(0)} tokens per answer, ${cell.valid}/${answers.length} valid, ${cell.stopped} stopped`);
      }
      // The same answers from both when neither reuses the cached prompt (see the page): greedy and seeded.
      for (const mode of [MODES[0], MODES[2]]) results.uncached[name].push((await ask(url, { ...body(name, mode, 0), cache_prompt: false })).text);
      // Unconstrained, for reference.
      const free = [];
      for (let i = 0; i < perCell; i++) {
        free.push(await ask(url, { model: 'm', prompt, max_tokens: gen, temperature: 0, ignore_eos: true, stream: false }));
      }
      if (free.some((r) => r.tokens !== gen)) throw new Error(`${name}: an unconstrained answer was not ${gen} tokens long`);
      const tps = (free.length * gen) / free.reduce((a, r) => a + r.seconds, 0);
      results.free[name].push({ tps, serverTps: free.every((r) => r.serverTps) ? median(free.map((r) => r.serverTps)) : undefined });
      console.log(`round ${round + 1} ${name} unconstrained: ${tps.toFixed(0)} t/s`);
    } finally {
      child.kill('SIGTERM');
      await new Promise((r) => child.once('exit', r));
    }
  }
}

// --- The page.
const commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: root, encoding: 'utf8' }).trim();
const dirty = execFileSync('git', ['status', '--porcelain', '--untracked-files=no'], { cwd: root, encoding: 'utf8' }).trim() !== '';
const rel = (p) => (p.startsWith(root) ? relative(root, p) : p);
const f2 = (x) => (x === undefined || Number.isNaN(x) ? '–' : x.toFixed(2));
const f0 = (x) => (x === undefined || Number.isNaN(x) ? '–' : x.toFixed(0));
const ratios = (key, field) => results[key][OURS].map((o, i) => o[field] / results[key][THEIRS][i][field]);
const perRound = (xs) => xs.map((r) => r.toFixed(2)).join(', ');

const rows = MODES.map((mode) => {
  const o = results[mode.key][OURS];
  const t = results[mode.key][THEIRS];
  const r = ratios(mode.key, 'tps');
  const sum = (cells, f) => cells.reduce((a, c) => a + c[f], 0);
  return `| ${mode.label} | ${f0(median(t.map((c) => c.tps)))} | ${f0(median(o.map((c) => c.tps)))} | ${median(r).toFixed(2)}x | ${perRound(r)} | ` +
    `${f0(median(t.map((c) => c.serverTps)))} | ${median(t.map((c) => c.tokens)).toFixed(0)} / ${median(o.map((c) => c.tokens)).toFixed(0)} | ` +
    `${sum(t, 'valid')} / ${sum(o, 'valid')} of ${t.length * perCell} | ${sum(t, 'stopped')} / ${sum(o, 'stopped')} | ` +
    `${f2(median(t.map((c) => c.cpuMsPerToken)))} / ${f2(median(o.map((c) => c.cpuMsPerToken)))} |`;
});
const streamRows = MODES.filter((m) => m.stream).map((mode) => {
  const o = results[mode.key][OURS];
  const t = results[mode.key][THEIRS];
  const r = ratios(mode.key, 'genTps');
  return `| ${mode.label} | ${f0(median(t.map((c) => c.genTps)))} | ${f0(median(o.map((c) => c.genTps)))} | ${median(r).toFixed(2)}x | ${perRound(r)} | ` +
    `${median(t.map((c) => c.events)).toFixed(0)} / ${median(o.map((c) => c.events)).toFixed(0)} |`;
});
// The same answers from both servers: greedy always should (same converter, grammar and logits); seeded sampling
// does where both draw with llama.cpp's dist sampler from the same seed.
const same = MODES.map((mode) => {
  let equal = 0;
  let all = 0;
  results[mode.key][OURS].forEach((o, i) => o.texts.forEach((text, j) => {
    all++;
    if (text === results[mode.key][THEIRS][i].texts[j]) equal++;
  }));
  return `${mode.label}: ${equal} of ${all}`;
});
const uncachedSame = results.uncached[OURS].filter((text, i) => text === results.uncached[THEIRS][i]).length;
const free = { o: median(results.free[OURS].map((c) => c.tps)), t: median(results.free[THEIRS].map((c) => c.tps)) };
const freeRatio = ratios('free', 'tps');
const greedyOurs = median(results.greedy[OURS].map((c) => c.tps));
const greedyTheirs = median(results.greedy[THEIRS].map((c) => c.tps));
const sameLibs = tools.sameLibraries && !tools.fallback.includes('llama-server');
const args = process.argv.slice(2).filter((a) => a !== '--constrained').join(' ');

const md = `# Constrained generation: huozi-gguf serve vs llama-server

Produced by \`npm run bench -- --constrained${args ? ` ${args}` : ''}\` (scripts/bench/constrained.mjs) on
${new Date().toISOString().slice(0, 10)}, commit ${commit}${dirty ? ' (with uncommitted changes)' : ''}; ${cpus()[0]?.model ?? 'CPU'} × ${cpus().length} cores,
${(totalmem() / 2 ** 30).toFixed(0)} GiB. Every figure on this page comes from that run.

Model \`${rel(model)}\`; both servers: ${parallel} slot${parallel === 1 ? '' : 's'} of ${ctxPerSlot} tokens (\`-np ${parallel} -c ${ctxPerSlot * parallel}\`), ${threads} threads,
batch 2048 / ubatch 512.

- huozi-gguf: \`${rel(addonInfo.addon?.path ?? 'unknown')}\` (${addonInfo.addon?.variant ?? 'unknown'} build), ${addonInfo.cpuBackend ? `CPU backend \`${addonInfo.cpuBackend}\`` : 'one CPU backend compiled in (static)'}.
- llama-server: \`${rel(llamaServer)}\`; ${sameLibs
    ? 'linked to the same compiled libraries as the addon'
    : `**not** linked to the addon's libraries (${tools.fallback.includes('llama-server') ? "the addon's tree has no llama-server target, so it came from .build/native" : tools.why.replaceAll(`${root}/`, '')})`}${buildSeconds > 5 ? ` (built by this run in ${buildSeconds.toFixed(0)} s)` : ''}.

## The request

\`POST /v1/completions\`, one at a time, the prompt as ${prompt.length} token ids: the user message
"${QUESTION}" in the Huozi chat template (the fixture's file has no template, and for a chat request llama-server
would render ChatML). At most ${maxTokens} tokens (the converter's whitespace rule, \`space ::= | " " | "\\n"{1,2} [ \\t]{0,20}\`, lets
this small model write long runs of tabs between fields). The schema (10 fields, all required):

\`\`\`json
${JSON.stringify(SCHEMA)}
\`\`\`

To ours as \`"response_format": { "type": "json_schema", "json_schema": { "name": "reader", "schema": ..., "strict": true } }\`,
to llama-server as \`"json_schema": ...\` (on /v1/completions it converts that with \`json_schema_to_grammar\`, the
converter ours calls too). Sampling: \`temperature\` 0 (greedy) or 0.7 with \`top_k\` 40, \`top_p\` 0.95, \`min_p\` 0.05
and \`seed\` 1000 + the request's index, the same on both. Streaming: \`stream_options.include_usage\`, and to ours
\`stream_interval_ms: 0\`, so both send one event per token.

${rounds} round${rounds === 1 ? '' : 's'} × ${perCell} answers per cell, each server started afresh per round, their order alternating; a warm-up
answer first. tg = generated tokens / wall time from sending the request to the end of the answer, as the
client sees it (the prompt is in the cache after the warm-up); medians over rounds; the ratio is ours /
llama-server, the median of the per-round ratios. Every answer is parsed with JSON.parse and validated against
the schema with ajv. "Server CPU ms per token" is the server process's user + system time over a cell (from
/proc; ggml's worker threads spin while they wait, so this counts them busy) divided by the tokens it generated:
less sensitive than wall time to other work on the machine.

## Results

| request | llama-server tg t/s | huozi-gguf tg t/s | ratio | per-round ratios | llama-server's own tg (\`timings\`) | tokens per answer (llama-server / ours) | valid answers (llama-server / ours) | ended by the grammar (llama-server / ours) | server CPU ms per token (llama-server / ours) |
| --- | ---: | ---: | ---: | --- | ---: | --- | --- | --- | --- |
${rows.join('\n')}

Streaming, from the first token's event to the end (tokens after the first / that time):

| request | llama-server t/s | huozi-gguf t/s | ratio | per-round ratios | events per answer (llama-server / ours) |
| --- | ---: | ---: | ---: | --- | --- |
${streamRows.join('\n')}

The same answer text from both servers: ${same.join('; ')}. With the prompt cached (after the warm-up),
llama-server evaluates the prompt's last token again alone, a one-token batch whose logits differ from the whole
prompt's in the last bits, while ours keeps the prompt's last logits; on this small model a near-tie then turns
the answers that follow, greedy ones included. With \`cache_prompt: false\` on both, one greedy and one seeded
(temperature 0.7, seed 1000) answer per round: the same text in ${uncachedSame} of ${2 * rounds} (the same converter, grammar, sampling
chain and seed; test/server/llama-server.test.ts checks the greedy case, and the logprobs, on every run).

Unconstrained, for reference (the same prompt, greedy, \`ignore_eos\`, ${gen} tokens, not streaming): llama-server
${f0(free.t)} t/s, huozi-gguf ${f0(free.o)} t/s (ratio ${median(freeRatio).toFixed(2)}x; per round ${perRound(freeRatio)}). Greedy under the
schema is ${(greedyOurs / free.o).toFixed(2)}x of unconstrained on ours and ${(greedyTheirs / free.t).toFixed(2)}x on llama-server (answers
of different lengths: the unconstrained row generates ${gen} tokens).

## Grammar compile time

\`Grammar.fromJsonSchema\` (the schema walker, llama.cpp's converter, the GBNF pre-scan and the native parse) for a
50-property schema of the same kinds of fields (${wideGrammar.gbnf.length} bytes of GBNF, ${wideRules} rules), median of ${compileSamples}:

| | ms |
| --- | ---: |
| cold: the first call in a fresh process (the addon loaded) | ${median(cold).toFixed(2)} |
| warm: later calls in the same process | ${median(warm).toFixed(2)} |
| warm, the 10-field schema above | ${median(tenWarm).toFixed(2)} |

The server compiles a request's schema once per request (its \`n\` answers share it), so each constrained request
pays the warm figure before its first token; llama-server converts and parses per request too.
`;
writeFileSync(values.out, md);
console.log(md);
process.exit(0);
