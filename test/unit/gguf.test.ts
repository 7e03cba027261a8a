import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { GgufError, parseGguf } from '../../dist/index.js';
import { encodeGgufHeader } from '../../dist/gguf/writer.js';
import { Raw } from '../gguf-builder.js';
import { f16Path } from '../helpers.js';

const fixture = readFileSync(f16Path);

function rejects(buf: Buffer, message: RegExp, offset?: number): GgufError {
  let error: unknown;
  try {
    parseGguf(buf);
  } catch (e) {
    error = e;
  }
  expect(error, `expected a GgufError matching ${message}`).toBeInstanceOf(GgufError);
  expect((error as GgufError).message).toMatch(message);
  expect((error as GgufError).code).toBe('ERR_HUOZI_GGUF');
  if (offset !== undefined) expect((error as GgufError).offset).toBe(offset);
  return error as GgufError;
}

/** A minimal valid file: one u32 key, one f32 tensor of 8 elements. */
const minimal = () => new Raw().header(1, 1).kvU32('general.alignment', 32).tensor('t', [8], 0, 0).data(32);

describe('GGUF reader', () => {
  it('reads the fixture like llama.cpp wrote it', () => {
    const f = parseGguf(fixture);
    expect(f.version).toBe(3);
    expect(f.tensors).toHaveLength(43);
    expect(f.metadata.get('general.architecture')?.value).toBe('llama');
    expect(f.metadata.get('tokenizer.ggml.tokens')?.value).toHaveLength(2050);
    expect(f.dataOffset + f.dataBytes).toBe(BigInt(fixture.length));
  });

  it('accepts the minimal file built here', () => {
    expect(parseGguf(minimal().build()).tensors[0]).toMatchObject({ name: 't', dims: [8n], bytes: 32n });
  });

  it('rejects the fixture truncated at every 1/64 of its length and at length-1', () => {
    const cuts = Array.from({ length: 64 }, (_, i) => Math.floor((fixture.length * i) / 64));
    cuts.push(fixture.length - 1);
    for (const cut of cuts) {
      expect(() => parseGguf(fixture.subarray(0, cut)), `cut at ${cut}`).toThrow(GgufError);
    }
  });

  // The fault classes of llama.cpp's tests/test-gguf.cpp.
  it('rejects a bad magic and bad versions, naming big-endian files', () => {
    rejects(Buffer.from('GGML' + '\0'.repeat(28)), /not a GGUF file/, 0);
    rejects(new Raw().header(0, 0, 0).build(), /unsupported GGUF version 0/, 4);
    rejects(new Raw().header(0, 0, 1).build(), /version 1 is not supported/, 4);
    rejects(new Raw().header(0, 0, 4).build(), /unsupported GGUF version 4/, 4);
    rejects(new Raw().header(0, 0, 0x03000000).build(), /big-endian/, 4);
  });

  it('rejects huge counts before allocating anything', () => {
    rejects(new Raw().header(1n << 62n, 0).build(), /claims \d+ tensors/, 8);
    rejects(new Raw().header(0, (1n << 64n) - 1n).build(), /claims \d+ metadata entries/, 16);
    rejects(new Raw().header(0, 1).str('k').u32(9).u32(4).u64(1n << 40n).build(), /claims \d+ elements/);
    rejects(new Raw().header(0, 1).str('k').u32(8).u64(1n << 60n).build(), /more than the limit/);
    rejects(new Raw().header(0, 1).u64(1n << 50n).build(), /key of metadata entry 0 is \d+ bytes long/);
  });

  it('rejects empty and duplicate keys', () => {
    rejects(new Raw().header(0, 1).kvU32('', 1).build(), /empty key/);
    rejects(new Raw().header(0, 2).kvU32('a', 1).kvU32('a', 2).build(), /"a" appears twice/);
  });

  it('rejects bad value types, arrays of arrays and non-0/1 bools', () => {
    rejects(new Raw().header(0, 1).str('k').u32(13).u32(0).build(), /unknown type 13/);
    rejects(new Raw().header(0, 1).str('k').u32(9).u32(9).u64(0).build(), /array of arrays/);
    rejects(new Raw().header(0, 1).str('k').u32(9).u32(77).u64(0).build(), /unknown type 77/);
    rejects(new Raw().header(0, 1).str('k').u32(7).bytes([2]).build(), /bool with the value 2/);
  });

  it('rejects an alignment of 0, 3 or one too large for the file, and a non-u32 alignment', () => {
    for (const a of [0, 3]) {
      rejects(new Raw().header(0, 1).kvU32('general.alignment', a).build(), /power of two/);
    }
    rejects(new Raw().header(1, 1).kvU32('general.alignment', 2 ** 31).tensor('t', [8], 0, 0).data(32).build(), /tensor data needs/);
    rejects(new Raw().header(0, 1).kvStr('general.alignment', '32').build(), /must be a u32/);
  });

  it('rejects long, NUL-containing and duplicate tensor names', () => {
    rejects(new Raw().header(1, 0).tensor('x'.repeat(64), [8], 0, 0).data(32).build(), /64 bytes, more than ggml's 63/);
    rejects(new Raw().header(1, 0).tensor('a\0b', [8], 0, 0).data(32).build(), /NUL byte/);
    rejects(new Raw().header(2, 0).tensor('t', [8], 0, 0).tensor('t', [8], 0, 32).data(64).build(), /"t" appears twice/);
  });

  it('rejects 5 dimensions, negative and wrapping sizes, and bad types', () => {
    rejects(new Raw().header(1, 0).tensor('t', [1, 1, 1, 1, 1], 0, 0).data(32).build(), /5 dimensions/);
    rejects(new Raw().header(1, 0).tensor('t', [-8], 0, 0).data(32).build(), /negative dimension/);
    rejects(new Raw().header(1, 0).tensor('t', [1n << 40n, 1n << 40n], 0, 0).data(32).build(), /more elements than fit in 64 bits/);
    rejects(new Raw().header(1, 0).tensor('t', [8], 4, 0).data(32).build(), /removed from ggml/);
    rejects(new Raw().header(1, 0).tensor('t', [8], 99, 0).data(32).build(), /unknown to ggml/);
    rejects(new Raw().header(1, 0).tensor('t', [33], 2, 0).data(64).build(), /not a multiple of q4_0's block of 32/);
  });

  it('rejects overlapping, gapped and out-of-order offsets', () => {
    const two = (o1: number, o2: number) => new Raw().header(2, 0).tensor('a', [8], 0, o1).tensor('b', [8], 0, o2).data(96).build();
    rejects(two(0, 0), /"b" has its data at offset 0, expected 32/);
    rejects(two(0, 64), /"b" has its data at offset 64, expected 32/);
    rejects(two(32, 0), /"a" has its data at offset 32, expected 0/);
    rejects(two(0, 16), /expected 32/);
  });

  it('rejects data short by one byte', () => {
    const ok = minimal().build();
    expect(() => parseGguf(ok)).not.toThrow();
    rejects(ok.subarray(0, ok.length - 1), /needs \d+ bytes but the file has \d+/);
  });

  it('gives the byte offset of the problem', () => {
    const buf = new Raw().header(0, 2).kvU32('a', 1).kvU32('a', 2).build();
    const e = rejects(buf, /appears twice/);
    expect(e.offset).toBe(24 + 8 + 1 + 4 + 4);
  });
});

describe('GGUF writer', () => {
  it('encodes the fixture header byte for byte', () => {
    const f = parseGguf(fixture);
    const meta = new Map([...f.metadata].map(([k, e]) => [k, e.type === 9 ? { type: 9, arrayType: e.arrayType!, value: e.value } : { type: e.type, value: e.value }] as const));
    const { header } = encodeGgufHeader(meta as never, f.tensors.map((t) => ({ name: t.name, dims: t.dims, type: t.type, data: () => [] })));
    expect(header.length).toBe(Number(f.dataOffset));
    expect(header.equals(fixture.subarray(0, header.length))).toBe(true);
  });
});
