import { describe, expect, it } from 'vitest';
import {
  convertElements, f16BitsToF32Bits, f32BitsToBf16Bits, f32BitsToF16Bits, f32ToF16Bits, quantizeQ8_0,
} from '../../dist/convert/float.js';

const bits = (x: number) => new Uint32Array(new Float32Array([x]).buffer)[0];
const u8 = (a: Uint16Array | Float32Array) => new Uint8Array(a.buffer);

// The expected values are numpy's (float32 → float16 astype) and gguf-py's (quants.BF16, quants.Q8_0); the
// converter's output was also checked against numpy on 4 million mixed values and against gguf-py on 6.8 MB of q8_0.
describe('f32 → f16, as numpy rounds it', () => {
  it.each([
    [1, 0x3c00], [-2, 0xc000], [65504, 0x7bff], [65519, 0x7bff], [65520, 0x7c00], [1e6, 0x7c00], [-1e6, 0xfc00],
    [Infinity, 0x7c00], [-Infinity, 0xfc00], [0, 0x0000], [-0, 0x8000],
    [2 ** -14, 0x0400], [2 ** -24, 0x0001], [2 ** -25, 0x0000], [1.5 * 2 ** -25, 0x0001], [3 * 2 ** -25, 0x0002],
    [2 ** -14 - 2 ** -25, 0x0400], [1 + 2 ** -11, 0x3c00], [1 + 3 * 2 ** -11, 0x3c02], [1e-10, 0x0000],
  ])('%d → %i', (x, h) => expect(f32ToF16Bits(x)).toBe(h));

  it('keeps NaNs NaN, with the top of the payload', () => {
    // Bits, not numbers: a NaN that passes through a JS number may lose its payload.
    for (const [nan, h] of [[0x7fc00000, 0x7e00], [0xffc00000, 0xfe00], [0x7f800001, 0x7c01], [0x7fa978ac, 0x7d4b]]) {
      expect(f32BitsToF16Bits(nan)).toBe(h);
      expect(convertElements(new Uint8Array(new Uint32Array([nan]).buffer), 'F32', 'f16')).toEqual(u8(new Uint16Array([h])));
    }
  });

  it('widens f16 exactly, subnormals and NaN payloads included', () => {
    expect(f16BitsToF32Bits(0x3c00)).toBe(bits(1));
    expect(f16BitsToF32Bits(0x0001)).toBe(bits(2 ** -24));
    expect(f16BitsToF32Bits(0x03ff)).toBe(bits(1023 * 2 ** -24));
    expect(f16BitsToF32Bits(0xfc00)).toBe(bits(-Infinity));
    expect(f16BitsToF32Bits(0x7d4b)).toBe(0x7fa96000);
    for (let h = 0; h < 0x7c00; h++) expect(f32ToF16Bits(new Float32Array(new Uint32Array([f16BitsToF32Bits(h)]).buffer)[0])).toBe(h);
  });
});

describe('bf16', () => {
  it('rounds f32 to nearest even and quiets NaN, as gguf-py', () => {
    expect(f32BitsToBf16Bits(bits(1))).toBe(0x3f80);
    expect(f32BitsToBf16Bits(bits(1 + 2 ** -8))).toBe(0x3f80); // a tie, to even
    expect(f32BitsToBf16Bits(bits(1 + 3 * 2 ** -8))).toBe(0x3f82);
    expect(f32BitsToBf16Bits(bits(3.4028234663852886e38))).toBe(0x7f80); // rounds up to inf
    expect(f32BitsToBf16Bits(0x7f800001)).toBe(0x7fc0);
  });

  it('converts bf16 to f16 through f32 (the table equals the arithmetic)', () => {
    const all = new Uint16Array(65536).map((_, i) => i);
    const f16 = new Uint16Array(convertElements(u8(all), 'BF16', 'f16').slice().buffer);
    for (let i = 0; i < 65536; i++) if (f16[i] !== f32BitsToF16Bits((i << 16) >>> 0)) expect([i, f16[i]]).toBe('equal');
    expect(convertElements(u8(new Uint16Array([0x3f80, 0xc000])), 'BF16', 'f32')).toEqual(u8(new Float32Array([1, -2])));
    expect(convertElements(u8(new Uint16Array([0x3f80, 0x3f81, 0x7f81, 0xffc1, 0x7f80])), 'BF16', 'bf16'))
      .toEqual(u8(new Uint16Array([0x3f80, 0x3f81, 0x7fc1, 0xffc1, 0x7f80]))); // signaling NaNs quieted, as gguf-py does
  });

  it('converts f64 and f16 sources', () => {
    expect(convertElements(u8(new Float32Array(new Float64Array([1 / 3, -1e300]).buffer)), 'F64', 'f32'))
      .toEqual(u8(new Float32Array([Math.fround(1 / 3), -Infinity])));
    expect(convertElements(u8(new Uint16Array([0x3c00, 0x0001])), 'F16', 'bf16')).toEqual(u8(new Uint16Array([0x3f80, 0x3380])));
  });
});

describe('q8_0, as gguf-py quantizes it', () => {
  it('scales by amax / 127 and rounds half away from zero', () => {
    const block = new Float32Array(32);
    block.set([127, -63.5, 0.5, -0.5, 1.49, 2.5]);
    const q = quantizeQ8_0(new Float32Array([...block, ...new Float32Array(32)]));
    expect(q.length).toBe(68);
    expect(q[0] | (q[1] << 8)).toBe(0x3c00); // d = 1
    expect([...new Int8Array(q.buffer, 2, 6)]).toEqual([127, -64, 1, -1, 1, 3]);
    expect([...q.subarray(34)]).toEqual(new Array(34).fill(0)); // an all-zero block: d = 0, id = 0
  });

  it('uses float32 arithmetic for d, 1 / d and x * id', () => {
    const x = new Float32Array(32).map((_, i) => Math.fround(Math.sin(i + 1) * 0.037));
    const q = quantizeQ8_0(x);
    const amax = Math.max(...x.map(Math.abs));
    const d = Math.fround(amax / 127);
    const id = Math.fround(1 / d);
    expect(q[0] | (q[1] << 8)).toBe(f32ToF16Bits(d));
    const ints = new Int8Array(q.buffer, 2, 32);
    x.forEach((v, i) => expect(ints[i]).toBe(Math.sign(v) * Math.floor(Math.abs(Math.fround(v * id)) + 0.5)));
  });
});
