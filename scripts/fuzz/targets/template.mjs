// Fuzz target "template": the demo model with a generated tokenizer.chat_template (seeded): loops over ranges of
// boundary sizes, nested loops, string and list doubling, filters with huge widths, macros and recursion,
// raise_exception, unknown filters and tests, syntax errors, huge literals, and valid templates. Each file is
// loaded (vocabulary only: a broken template must not stop a load), checked by inspect(), and its template is
// rendered both ways (render in-process, renderAsync in the renderer process) under small limits.
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ChatTemplateError, inspect, jinjaTemplate, loadModel, parseGguf } from '../../../dist/index.js';
import { prng } from '../mutate.mjs';
import { clean, unexpected } from '../outcome.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');

const u32 = (n) => { const b = Buffer.alloc(4); b.writeUInt32LE(n >>> 0); return b; };
const u64 = (n) => { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(n)); return b; };
const str = (s) => { const b = Buffer.from(s, 'utf8'); return Buffer.concat([u64(b.length), b]); };

/** `base` (a GGUF file) with `template` as its tokenizer.chat_template (replacing one it has); data kept aligned. */
export function withChatTemplate(base, template) {
  const key = 'tokenizer.chat_template';
  const file = parseGguf(base);
  const metas = [...file.metadata.values()];
  const tensorsStart = file.tensors.length ? file.tensors[0].infoOffset : Number(file.dataOffset);
  const last = file.tensors.at(-1);
  const tensorsEnd = last ? last.infoOffset + 8 + Buffer.byteLength(last.name) + 4 + 8 * last.dims.length + 4 + 8 : tensorsStart;
  const kept = [];
  metas.forEach((e, i) => {
    if (e.key === key) return;
    kept.push(base.subarray(e.offset, i + 1 < metas.length ? metas[i + 1].offset : tensorsStart));
  });
  const entry = Buffer.concat([str(key), u32(8), str(template)]);
  const parts = [base.subarray(0, 8), u64(file.tensors.length), u64(kept.length + 1), ...kept, entry, base.subarray(tensorsStart, tensorsEnd)];
  const length = parts.reduce((n, p) => n + p.length, 0);
  parts.push(Buffer.alloc((file.alignment - (length % file.alignment)) % file.alignment), base.subarray(Number(file.dataOffset)));
  return Buffer.concat(parts);
}

export const title = 'chat templates: huge and nested loops, string/list doubling, filter widths, recursion, raise_exception, syntax errors';

export const description = `Each case is the demo model with a generated \`tokenizer.chat_template\` (seeded): one to
four fragments among loops over \`range()\` of boundary sizes (0 to 2^53, negative, non-integer), nested loops,
string and list doubling, \`indent\`/\`tojson\` widths, \`replace\`/\`join\` amplification, macros calling
themselves, \`raise_exception\`, unknown filters and tests, huge literals, a conversation loop of a real
template (ChatML, Huozi, Gemma-like), then possibly cut short or given an unbalanced tag. The file is loaded
(vocabulary only), \`inspect()\` reports its probe check (one case in ten: the probe renders with the default
limits, up to 2 s), and the template is rendered with \`render\` and with \`renderAsync\` under limits of
100,000 steps, 200 ms and 128 MiB. Clean outcomes: rendered, or a
\`ChatTemplateError\` (by reason and limit) from both ways.`;

export const classes = {
  rendered: 'the template rendered the conversation, the same text both ways',
  'rejected: ChatTemplateError syntax': '`ChatTemplateError` (`reason` `syntax`) when the template is built, and from the probe of `inspect`',
  'rejected: ChatTemplateError exception': '`ChatTemplateError` carrying the text of `raise_exception`',
  'rejected: ChatTemplateError error': '`ChatTemplateError` for a runtime error (unknown filter, bad operand)',
};

export async function setup(workDir, options = {}) {
  return { base: readFileSync(options.base ?? join(root, 'models', 'huozi-tiny-q4_0.gguf')), workDir };
}

const SIZES = [0, 1, 2, 255, 256, 65535, 65536, 262143, 262144, 262145, 1048576, 2 ** 31 - 1, 2000000000, 2 ** 53, -1, '1.5', "'x'"];
const VALID = [
  "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
  "{% for message in messages %}{{'<|beginofutterance|>' + message['role'] + '\n' + message['content']}}{% if (loop.last and add_generation_prompt) or not loop.last %}{{ '<|endofutterance|>' + '\n'}}{% endif %}{% endfor %}{% if add_generation_prompt and messages[-1]['role'] != '助手' %}{{ '<|beginofutterance|>助手\n' }}{% endif %}",
  "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for m in messages %}<start_of_turn>{{ m.role }}\n{{ m.content | trim }}<end_of_turn>\n{% endfor %}",
];

function fragment(rand) {
  const pick = (a) => a[Math.floor(rand() * a.length)];
  const n = () => pick(SIZES);
  switch (Math.floor(rand() * 16)) {
    case 0: return `{% for i in range(${n()}) %}x{% endfor %}`;
    case 1: return `{% for i in range(${n()}) %}{% for j in range(${n()}) %}{{ i ~ j }}{% endfor %}{% endfor %}`;
    case 2: return `{% for i in range(${n()}) %}{% for j in range(${n()}) %}{% for k in range(${n()}) %}{% endfor %}{% endfor %}{% endfor %}`;
    case 3: return `{% set ns = namespace(s='${pick(['ab', '中文', ''])}') %}{% for i in range(${pick([10, 21, 22, 30, 64])}) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}`;
    case 4: return `{% set ns = namespace(a=[1]) %}{% for i in range(${pick([10, 18, 19, 40])}) %}{% set ns.a = ns.a + ns.a %}{% endfor %}{{ ns.a|length }}`;
    case 5: return `{{ 'a\\nb'|indent(${n()}) }}`;
    case 6: return `{{ messages|tojson(indent=${n()}) }}`;
    case 7: return `{% set s = '${'y'.repeat(Math.floor(rand() * 64))}' %}{{ s.replace('', s ~ s ~ s ~ s) }}{{ [s, s, s]|join(s ~ s) }}`;
    case 8: return '{% macro f(g, n) %}{{ g(g, n + 1) }}{% endmacro %}{{ f(f, 0) }}';
    case 9: return `{% macro m(x) %}[{{ x }}]{% endmacro %}{% for i in range(${pick([3, 1000, 100000])}) %}{{ m(i) }}{% endfor %}`;
    case 10: return `{{ raise_exception('${pick(['Conversation roles must alternate', '角色必须交替', '', "quote's"]).replace(/'/g, "\\'")}') }}`;
    case 11: return pick(["{{ 'a'|no_such_filter }}", '{% if x is no_such_test %}{% endif %}', '{{ none + 1 }}', '{{ messages[99].content.x }}', '{{ 1 / 0 }}']);
    case 12: return `{{ '${'z'.repeat(pick([1, 1000, 1 << 20]))}'|length }}`;
    case 13: return `{{ [${Array.from({ length: pick([1, 1000, 100000]) }, (_, i) => i).join(',')}]|length }}`;
    case 14: return `{{ ${pick(['1e308 * 10', '2 ** 1000', '-0', '9007199254740993'])} }}`;
    default: return pick(VALID);
  }
}

export function makeCase(state, seed, index) {
  const rand = prng(seed ^ 0x1b873593);
  const kinds = [];
  const parts = [];
  const count = 1 + Math.floor(rand() * 4);
  for (let i = 0; i < count; i++) parts.push(fragment(rand));
  let template = parts.join('');
  kinds.push(`${count} fragments`);
  const r = rand();
  if (r < 0.1) {
    template = template.slice(0, Math.floor(rand() * template.length));
    kinds.push('cut short');
  } else if (r < 0.15) {
    template += pick(rand, ['{% for x in y %}', '{% endif %}', '{{', '{% macro %}', '{% set %}']);
    kinds.push('unbalanced');
  }
  if (template.length === 0) template = ' ';
  // Two file names in turn (not one per case: 20,000 copies of the model would fill the disk); '-probe' marks the
  // cases whose runCase also runs inspect's probe.
  const path = join(state.workDir, `case-${index % 2}${index % 10 === 0 ? '-probe' : ''}.gguf`);
  writeFileSync(path, withChatTemplate(state.base, template));
  return { path, kinds };
}

function pick(rand, a) {
  return a[Math.floor(rand() * a.length)];
}

const LIMITS = { steps: 100_000, timeoutMs: 200, memoryMiB: 128 };
const CONVERSATION = [
  { role: 'system', content: 'S' }, { role: 'user', content: 'U <|im_end|>' }, { role: 'assistant', content: 'A' }, { role: 'user', content: '问' },
];

const className = (e) => `rejected: ChatTemplateError ${e.reason}${e.limit ? ` ${e.limit}` : ''}`;

export async function runCase(path) {
  let model;
  try {
    model = await loadModel(path, { vocabOnly: true });
  } catch (error) {
    return unexpected(error, 'load');
  }
  try {
    const source = model.info.chatTemplate;
    if (typeof source !== 'string') return unexpected(new Error('the template did not reach model.info.chatTemplate'), 'load');
    // inspect's probe renders with the default limits (2 s): one case in ten, or the run takes hours.
    const probe = path.endsWith('-probe.gguf');
    const info = await inspect(path, { checkChatTemplate: probe });
    if (probe && !info.chatTemplate.check) return unexpected(new Error('inspect did not check the template'), 'inspect');
    let template;
    try {
      template = jinjaTemplate(source, { label: 'fuzz', limits: LIMITS });
    } catch (error) {
      if (!(error instanceof ChatTemplateError)) return unexpected(error, 'build');
      if (probe && info.chatTemplate.check.ok) return unexpected(new Error('inspect rendered a template that does not parse'), 'inspect');
      return clean(className(error), error.message);
    }
    const outcome = async (f) => {
      try {
        return { text: (await f()).map((s) => s.text).join('') };
      } catch (error) {
        return { error };
      }
    };
    const sync = await outcome(() => template.render(CONVERSATION, true));
    const isolated = await outcome(() => template.renderAsync(CONVERSATION, true));
    for (const o of [sync, isolated]) {
      if (o.error && !(o.error instanceof ChatTemplateError)) return unexpected(o.error, 'render');
    }
    // Time and memory limits may fall on either side of a boundary in one way and not the other.
    const soft = (o) => o.error && ['timeoutMs', 'memoryMiB'].includes(o.error.limit);
    if (!soft(sync) && !soft(isolated)) {
      if (Boolean(sync.error) !== Boolean(isolated.error) || sync.text !== isolated.text || (sync.error && className(sync.error) !== className(isolated.error))) {
        return unexpected(new Error(`render and renderAsync differ: ${sync.error?.message ?? 'rendered'} / ${isolated.error?.message ?? 'rendered'}`), 'render');
      }
    }
    const result = isolated.error ?? sync.error;
    return result ? clean(className(result), result.message) : clean('rendered');
  } catch (error) {
    return unexpected(error, 'run');
  } finally {
    await model.dispose();
  }
}
