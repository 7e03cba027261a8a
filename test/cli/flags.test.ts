import { Command } from 'commander';
import { describe, expect, it } from 'vitest';
import {
  addFlags, Flag, GRAMMAR_FLAGS, intFlag, negatedFlag, repeatableFlag, requiredFlag, RUN_FLAGS, SAMPLING_FLAGS, stringFlag, switchFlag,
} from '../../dist/cli/flags.js';

/** Parses a command line against a command with these flags, as commander hands it to the action. */
function parse(flags: readonly Flag<string, unknown>[], argv: string[]): Record<string, unknown> {
  const command = addFlags(new Command('t').exitOverride().configureOutput({ writeErr: () => {} }), flags);
  command.parse(argv, { from: 'user' });
  return command.opts();
}

function help(flags: readonly Flag<string, unknown>[]): string {
  return addFlags(new Command('t'), flags).helpInformation();
}

describe('CLI flags (lib/cli/flags.ts)', () => {
  it("refuses a key that is not the name commander stores the value under", () => {
    expect(() => stringFlag('gpu', '--ngl, --gpu-layers <n>', 'x').option()).toThrow(/"gpuLayers", not "gpu"/);
    expect(() => negatedFlag('noWeb', '--no-web', 'x').option()).toThrow(/"web", not "noWeb"/);
    for (const f of [...RUN_FLAGS, ...SAMPLING_FLAGS, ...GRAMMAR_FLAGS]) expect(f.option().attributeName()).toBe(f.key);
  });

  it('gives each value its type, with or without a default', () => {
    const flags = [
      intFlag('n', '-n <n>', 'count'),
      intFlag('port', '--port <n>', 'port').default(8000),
      switchFlag('quiet', '-q, --quiet', 'quiet'),
      negatedFlag('web', '--no-web', 'no page'),
      repeatableFlag('host', '--host <name>', 'hosts'),
      stringFlag('template', '--template <name>', 'template').default('auto'),
    ];
    expect(parse(flags, [])).toEqual({ port: 8000, quiet: false, web: true, host: [], template: 'auto' });
    expect(parse(flags, ['-n', '3', '--port', '1', '-q', '--no-web', '--host', 'a', '--host', 'b', '--template', 'x'])).toEqual({
      n: 3, port: 1, quiet: true, web: false, host: ['a', 'b'], template: 'x',
    });
    expect(() => parse(flags, ['-n', '1.5'])).toThrow('expected an integer, got "1.5"');
    expect(() => parse([requiredFlag('output', '-o, --output <file>', 'out')], [])).toThrow(/required option '-o, --output <file>'/);
  });

  it('derives a variant without changing the flag it comes from', () => {
    const base = intFlag('ctxSize', '-c, --ctx-size <n>', 'context size in tokens');
    const variant = base.describe('tokens per chunk').default(512);
    expect(help([variant])).toContain('-c, --ctx-size <n>  tokens per chunk (default: 512)');
    expect(help([base])).toMatch(/-c, --ctx-size <n>\s+context size in tokens\n/);
    expect(parse([base], [])).toEqual({});
    expect(parse([variant], [])).toEqual({ ctxSize: 512 });
  });

  it('gives each command its own Option (commander keeps parse state on it)', () => {
    const a = parse(RUN_FLAGS, ['-c', '10']);
    const b = parse(RUN_FLAGS, []);
    expect(a.ctxSize).toBe(10);
    expect(b.ctxSize).toBe(2048);
    expect(RUN_FLAGS[0].option()).not.toBe(RUN_FLAGS[0].option());
  });

  it('lists flags in --help in the order they are given', () => {
    const text = help([...RUN_FLAGS, ...SAMPLING_FLAGS]);
    const order = ['--model', '--ctx-size', '--threads', '--gpu-layers', '--rpc', '--temp', '--top-k', '--top-p', '--min-p', '--repeat-penalty', '--seed'];
    const at = order.map((f) => text.indexOf(f));
    expect(at.every((i) => i >= 0)).toBe(true);
    expect([...at].sort((x, y) => x - y)).toEqual(at);
  });
});
