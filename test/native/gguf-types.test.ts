// lib/gguf/types.ts keeps ggml's type table in TypeScript (the GGUF reader must work without the addon): it must
// agree with the ggml the addon was built from, id by id, or the reader's size checks would pass files that
// llama.cpp reads differently (or refuse good ones) after a llama.cpp update.
import { describe, expect, it } from 'vitest';
import { binding } from '../../dist/binding.js';
import { GGML_TYPE_COUNT, GGML_TYPES, ggmlType } from '../../dist/gguf/types.js';

describe("the GGUF reader's ggml type table", () => {
  const native = binding().ggmlTypes();

  it('has the same type count as the addon\'s ggml', () => {
    expect(native.length).toBe(GGML_TYPE_COUNT);
  });

  it('names every type ggml still reads, with its block size and bytes per block; removed ids are absent', () => {
    const mismatches: string[] = [];
    for (const t of native) {
      const ours = ggmlType(t.id);
      // ggml keeps removed ids in its table with a block size of 0 ("... REMOVED, use ...").
      const removed = t.blockSize === 0 || /removed/i.test(t.name);
      if (removed) {
        if (ours) mismatches.push(`${t.id} (${t.name}) is removed from ggml but the reader accepts it as ${ours.name}`);
        continue;
      }
      if (!ours) {
        mismatches.push(`${t.id} (${t.name}) is missing`);
        continue;
      }
      const want = { id: t.id, name: t.name, blockSize: t.blockSize, typeSize: t.typeSize };
      if (JSON.stringify(ours) !== JSON.stringify(want)) mismatches.push(`${t.id}: ours ${JSON.stringify(ours)}, ggml ${JSON.stringify(want)}`);
    }
    expect(mismatches).toEqual([]);
    expect(GGML_TYPES.every((t) => t.id < native.length)).toBe(true);
  });
});
