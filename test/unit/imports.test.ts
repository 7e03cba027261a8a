// The import graph of lib/: no module may take part in a cycle of imports. A cycle of value imports makes the
// order in which modules run depend on which one is imported first (a class used before its module has run
// is a TypeError at load time), and a cycle through a type-only import still means that neither file can be
// understood, or moved, without the other. The only type-only imports allowed to close a loop are listed below,
// each for a public field that must name its parent's type.
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';
import { root } from '../helpers.js';

const lib = join(root, 'lib');

/** Type-only imports that may close a loop: `from -> to` (paths under lib/), with the reason. */
const ALLOWED_TYPE_LOOPS: Record<string, string> = {
  'context.ts -> model.ts': 'Context.model: Model, the public field that names the model a context runs on',
  'parallel.ts -> model.ts': 'ParallelContext.model: Model, the public field that names the model a context runs on',
  'embedding.ts -> model.ts': 'EmbeddingContext.model: Model, the public field that names the model a context runs on',
};

interface Edge {
  from: string;
  to: string;
  typeOnly: boolean;
}

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const path = join(dir, e.name);
    if (e.isDirectory()) return sources(path);
    return e.name.endsWith('.ts') && !e.name.endsWith('.d.ts') ? [path] : [];
  });
}

/**
 * The static imports and re-exports of a file (dynamic `import()` runs later, when called, and closes no loop at
 * load time). An import is type-only when it says so (`import type`, `export type`) or when each of its names
 * does (`import { type A, type B }`): TypeScript then leaves it out of the JavaScript.
 */
function importsOf(file: string): Edge[] {
  const source = ts.createSourceFile(file, readFileSync(file, 'utf8'), ts.ScriptTarget.Latest, true);
  const edges: Edge[] = [];
  for (const statement of source.statements) {
    let specifier: ts.Expression | undefined;
    let typeOnly = false;
    if (ts.isImportDeclaration(statement)) {
      specifier = statement.moduleSpecifier;
      const clause = statement.importClause;
      const named = clause?.namedBindings;
      typeOnly =
        clause !== undefined &&
        (clause.isTypeOnly ||
          (clause.name === undefined && named !== undefined && ts.isNamedImports(named) && named.elements.length > 0 &&
            named.elements.every((e) => e.isTypeOnly)));
    } else if (ts.isExportDeclaration(statement) && statement.moduleSpecifier) {
      specifier = statement.moduleSpecifier;
      const clause = statement.exportClause;
      typeOnly =
        statement.isTypeOnly ||
        (clause !== undefined && ts.isNamedExports(clause) && clause.elements.length > 0 && clause.elements.every((e) => e.isTypeOnly));
    }
    if (!specifier || !ts.isStringLiteral(specifier) || !specifier.text.startsWith('.')) continue;
    const target = resolve(dirname(file), specifier.text.replace(/\.js$/, '.ts'));
    edges.push({ from: relative(lib, file), to: relative(lib, target), typeOnly });
  }
  return edges;
}

/** The cycles of a graph, one per strongly connected component with more than one file (or a file importing itself). */
function cycles(files: string[], edges: Edge[]): string[][] {
  const next = new Map<string, string[]>(files.map((f) => [f, []]));
  for (const e of edges) next.get(e.from)?.push(e.to);
  // Tarjan's algorithm.
  let index = 0;
  const indices = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const found: string[][] = [];
  const visit = (v: string) => {
    indices.set(v, index);
    low.set(v, index++);
    stack.push(v);
    onStack.add(v);
    for (const w of next.get(v) ?? []) {
      if (!indices.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) {
        low.set(v, Math.min(low.get(v)!, indices.get(w)!));
      }
    }
    if (low.get(v) === indices.get(v)) {
      const component: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        onStack.delete(w);
        component.push(w);
      } while (w !== v);
      if (component.length > 1 || (next.get(v) ?? []).includes(v)) found.push(component.sort());
    }
  };
  for (const f of files) if (!indices.has(f)) visit(f);
  return found;
}

const files = sources(lib).map((f) => relative(lib, f)).sort();
const edges = files.flatMap((f) => importsOf(join(lib, f)));

describe('the import graph of lib/', () => {
  it('finds the imports of every file (a sanity check of the parser)', () => {
    expect(files).toContain('model.ts');
    expect(edges).toContainEqual({ from: 'model.ts', to: 'context.ts', typeOnly: false });
    expect(edges).toContainEqual({ from: 'context.ts', to: 'model.ts', typeOnly: true });
    for (const e of edges) expect(files, `${e.from} imports ${e.to}, which does not exist`).toContain(e.to);
  });

  it('has no cycle of value imports', () => {
    expect(cycles(files, edges.filter((e) => !e.typeOnly))).toEqual([]);
  });

  it('has no cycle at all once the allowed type-only imports are set aside', () => {
    const rest = edges.filter((e) => !(e.typeOnly && `${e.from} -> ${e.to}` in ALLOWED_TYPE_LOOPS));
    expect(cycles(files, rest)).toEqual([]);
  });

  it('allows only type-only imports that exist and that do close a loop', () => {
    for (const key of Object.keys(ALLOWED_TYPE_LOOPS)) {
      const [from, to] = key.split(' -> ');
      const matching = edges.filter((e) => e.from === from && e.to === to);
      expect(matching.length, `${key} is not an import`).toBeGreaterThan(0);
      expect(matching.every((e) => e.typeOnly), `${key} is not type-only`).toBe(true);
      const others = edges.filter((e) => !(e.from === from && e.to === to));
      const withoutOthers = others.filter((e) => !(e.typeOnly && `${e.from} -> ${e.to}` in ALLOWED_TYPE_LOOPS));
      expect(cycles(files, [...withoutOthers, ...matching]).length, `${key} closes no loop: remove it from the list`).toBeGreaterThan(0);
    }
  });
});
