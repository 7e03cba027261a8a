// Prints the public API as the compiled declarations give it (every export of dist/index.d.ts, with the members
// of its classes and interfaces and their types), one line each, independent of which file declares what.
// Used to check that a refactor changes nothing a user imports: `node scripts/api-surface.mjs > before.txt`.
import ts from 'typescript';
import { fileURLToPath } from 'node:url';

const entry = fileURLToPath(new URL('../dist/index.d.ts', import.meta.url));
const program = ts.createProgram([entry], { strict: true, skipLibCheck: true });
const checker = program.getTypeChecker();
const module = checker.getSymbolAtLocation(program.getSourceFile(entry));
const flags = ts.TypeFormatFlags.NoTruncation | ts.TypeFormatFlags.UseFullyQualifiedType;
const lines = [];
const show = (sym, at) => checker.typeToString(checker.getTypeOfSymbolAtLocation(sym, at), at, flags);
for (let sym of checker.getExportsOfModule(module)) {
  const name = sym.name;
  if (sym.flags & ts.SymbolFlags.Alias) sym = checker.getAliasedSymbol(sym);
  const decl = sym.declarations?.[0];
  if (!decl) continue;
  const kind = ts.SyntaxKind[decl.kind];
  if (sym.flags & (ts.SymbolFlags.Class | ts.SymbolFlags.Interface)) {
    const type = checker.getDeclaredTypeOfSymbol(sym);
    lines.push(`${kind} ${name}`);
    for (const m of checker.getPropertiesOfType(type)) lines.push(`  ${name}.${m.name}: ${show(m, decl)}`);
    if (sym.flags & ts.SymbolFlags.Class) {
      const statics = checker.getTypeOfSymbolAtLocation(sym, decl);
      for (const sig of statics.getConstructSignatures()) lines.push(`  new ${name}${checker.signatureToString(sig, decl, flags)}`);
      for (const m of checker.getPropertiesOfType(statics)) if (m.name !== 'prototype') lines.push(`  static ${name}.${m.name}: ${show(m, decl)}`);
    }
  } else if (sym.flags & ts.SymbolFlags.TypeAlias) {
    lines.push(`type ${name} = ${checker.typeToString(checker.getDeclaredTypeOfSymbol(sym), decl, flags)}`);
  } else {
    lines.push(`${kind} ${name}: ${show(sym, decl)}`);
  }
}
// Worktree paths and the checker's internal symbol numbers are not part of the API.
const root = fileURLToPath(new URL('../dist/', import.meta.url));
console.log(lines.map((l) => l.split(root).join('dist/').replace(/import\("[^"]*"\)\./g, '').replace(/__@(\w+)@\d+/g, '[Symbol.$1]')).sort().join('\n'));
