// Element conversions exactly as convert_hf_to_gguf.py does them with torch and numpy, so that a converted
// file is byte-identical to llama.cpp's: bf16 and f16 widen to f32 exactly; f32 narrows to f16 with
// round-to-nearest-even (numpy's astype(float16): subnormals, overflow to inf); f32 to bf16 as gguf-py's
// quants.BF16; q8_0 as gguf-py's quants.Q8_0 (float32 arithmetic, which ggml-quants.c matches bit for bit).
// Typed arrays use the host's byte order; GGUF and safetensors are little-endian, and so is every host
// llama.cpp runs on (convert() checks).

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** The f16 bits nearest (ties to even) to the f32 with bits `x`. */
export function f32BitsToF16Bits(x: number): number {
  const sign = (x >>> 16) & 0x8000;
  const abs = x & 0x7fffffff;
  if (abs >= 0x7f800000) {
    // inf stays inf; a NaN keeps the top of its payload (quiet or signaling, as numpy does), and stays a NaN
    if (abs === 0x7f800000) return sign | 0x7c00;
    const h = 0x7c00 | ((abs >>> 13) & 0x3ff);
    return sign | (h === 0x7c00 ? 0x7c01 : h);
  }
  if (abs >= 0x477ff000) return sign | 0x7c00; // 65520 and above round to inf
  if (abs >= 0x38800000) {
    // normal f16: rebias the exponent, round the 13 dropped bits; a carry into the exponent is right
    let h = ((abs >>> 23) - 112) << 10 | ((abs >>> 13) & 0x3ff);
    const rest = abs & 0x1fff;
    if (rest > 0x1000 || (rest === 0x1000 && (h & 1) === 1)) h++;
    return sign | h;
  }
  if (abs < 0x33000000) return sign; // below half of the smallest subnormal (2^-25, which ties to 0)
  // subnormal f16: the value in units of 2^-24, rounded to nearest even
  const mant = (abs & 0x7fffff) | 0x800000;
  const shift = 126 - (abs >>> 23); // 14..24
  let h = mant >>> shift;
  const rest = mant & ((1 << shift) - 1);
  const half = 1 << (shift - 1);
  if (rest > half || (rest === half && (h & 1) === 1)) h++;
  return sign | h;
}

export function f32ToF16Bits(value: number): number {
  f32[0] = value;
  return f32BitsToF16Bits(u32[0]);
}

/** The f32 bits of an f16 (exact, NaN payloads kept). */
export function f16BitsToF32Bits(h: number): number {
  const sign = (h & 0x8000) << 16;
  const exp = (h >>> 10) & 0x1f;
  let mant = h & 0x3ff;
  if (exp === 0x1f) return (sign | 0x7f800000 | (mant << 13)) >>> 0;
  if (exp !== 0) return (sign | ((exp + 112) << 23) | (mant << 13)) >>> 0;
  if (mant === 0) return sign >>> 0;
  let e = 113;
  while ((mant & 0x400) === 0) {
    mant <<= 1;
    e--;
  }
  return (sign | (e << 23) | ((mant & 0x3ff) << 13)) >>> 0;
}

/** The bf16 bits of an f32's bits as gguf-py's quants.BF16 computes them (quiet NaN, round to nearest even). */
export function f32BitsToBf16Bits(x: number): number {
  let n = x >>> 0;
  if ((n & 0x7fffffff) > 0x7f800000) n = ((n & 0xffff0000) | (64 << 16)) >>> 0;
  return Math.floor((n + 0x7fff + ((n >>> 16) & 1)) / 65536) & 0xffff;
}

let bf16ToF16: Uint16Array | undefined;
let f16ToF32: Uint32Array | undefined;

/** bf16 → f32 → f16 for all 65536 bf16 values: a lookup is exact and far faster than the arithmetic. */
function bf16ToF16Table(): Uint16Array {
  if (!bf16ToF16) {
    bf16ToF16 = new Uint16Array(65536);
    for (let i = 0; i < 65536; i++) bf16ToF16[i] = f32BitsToF16Bits((i << 16) >>> 0);
  }
  return bf16ToF16;
}

function f16ToF32Table(): Uint32Array {
  if (!f16ToF32) {
    f16ToF32 = new Uint32Array(65536);
    for (let i = 0; i < 65536; i++) f16ToF32[i] = f16BitsToF32Bits(i);
  }
  return f16ToF32;
}

/** Element types a checkpoint's tensors may have (safetensors names). */
export type SourceDtype = 'F32' | 'F16' | 'BF16' | 'F64';

export const SOURCE_DTYPE_BYTES: Record<SourceDtype, number> = { F32: 4, F16: 2, BF16: 2, F64: 8 };

/** What convert writes: ggml type ids 0, 1, 30 and 8. */
export type OutElement = 'f32' | 'f16' | 'bf16' | 'q8_0';

/** `bytes` must start at an offset that is a multiple of the element size (convert's buffers start at 0). */
function view<T>(Ctor: { new (b: ArrayBufferLike, o: number, n: number): T }, bytes: Uint8Array, size: number): T {
  return new Ctor(bytes.buffer, bytes.byteOffset, bytes.byteLength / size);
}

/** The elements as f32 (exact for f32, f16 and bf16; f64 rounds to nearest even, as torch's .to(float32)). */
export function toF32(bytes: Uint8Array, dtype: SourceDtype): Float32Array {
  switch (dtype) {
    case 'F32':
      return new Float32Array(view(Float32Array, bytes, 4));
    case 'F64':
      return Float32Array.from(view(Float64Array, bytes, 8));
    case 'BF16': {
      const src = view(Uint16Array, bytes, 2);
      const out = new Uint32Array(src.length);
      for (let i = 0; i < src.length; i++) out[i] = src[i] << 16;
      return new Float32Array(out.buffer);
    }
    case 'F16': {
      const table = f16ToF32Table();
      const src = view(Uint16Array, bytes, 2);
      const out = new Uint32Array(src.length);
      for (let i = 0; i < src.length; i++) out[i] = table[src[i]];
      return new Float32Array(out.buffer);
    }
  }
}

function f32ToF16Array(values: Float32Array): Uint8Array {
  const bits = new Uint32Array(values.buffer, values.byteOffset, values.length);
  const out = new Uint16Array(values.length);
  for (let i = 0; i < bits.length; i++) out[i] = f32BitsToF16Bits(bits[i]);
  return new Uint8Array(out.buffer);
}

/** Bytes of one q8_0 block: an f16 scale and 32 int8. */
export const Q8_0_BLOCK_BYTES = 34;

/** q8_0 blocks of `values` (a multiple of 32 long), as gguf-py's Q8_0.quantize_blocks in float32. */
export function quantizeQ8_0(values: Float32Array): Uint8Array {
  const blocks = values.length / 32;
  const out = new Uint8Array(blocks * Q8_0_BLOCK_BYTES);
  for (let b = 0; b < blocks; b++) {
    const at = b * 32;
    let amax = 0;
    for (let j = 0; j < 32; j++) {
      const a = Math.abs(values[at + j]);
      if (a > amax) amax = a;
    }
    // amax / 127 and 1 / d in double, then rounded once to f32: the same as float32 arithmetic, since a
    // double holds the exact quotient of two floats to far more than twice f32's precision.
    const d = Math.fround(amax / 127);
    const id = d === 0 ? 0 : Math.fround(1 / d);
    const o = b * Q8_0_BLOCK_BYTES;
    const h = f32ToF16Bits(d);
    out[o] = h & 0xff;
    out[o + 1] = h >>> 8;
    for (let j = 0; j < 32; j++) {
      const x = Math.fround(values[at + j] * id);
      // round half away from zero (np_roundf, roundf); |x| + 0.5 is exact in double
      const q = x < 0 ? -Math.floor(-x + 0.5) : Math.floor(x + 0.5);
      out[o + 2 + j] = q & 0xff;
    }
  }
  return out;
}

/** Converts whole rows of `dtype` elements to the output element type. */
export function convertElements(bytes: Uint8Array, dtype: SourceDtype, out: OutElement): Uint8Array {
  switch (out) {
    case 'f32':
      return new Uint8Array(toF32(bytes, dtype).buffer);
    case 'f16': {
      if (dtype === 'F16') return bytes;
      if (dtype === 'BF16') {
        const table = bf16ToF16Table();
        const src = view(Uint16Array, bytes, 2);
        const dst = new Uint16Array(src.length);
        for (let i = 0; i < src.length; i++) dst[i] = table[src[i]];
        return new Uint8Array(dst.buffer);
      }
      return f32ToF16Array(toF32(bytes, dtype));
    }
    case 'bf16': {
      if (dtype === 'BF16') {
        // bf16 → f32 → bf16 is the identity, except that gguf-py quiets signaling NaNs on the way back
        const src = view(Uint16Array, bytes, 2);
        const dst = new Uint16Array(src.length);
        for (let i = 0; i < src.length; i++) dst[i] = (src[i] & 0x7fff) > 0x7f80 ? src[i] | 0x0040 : src[i];
        return new Uint8Array(dst.buffer);
      }
      const bits = new Uint32Array(toF32(bytes, dtype).buffer);
      const dst = new Uint16Array(bits.length);
      for (let i = 0; i < bits.length; i++) dst[i] = f32BitsToBf16Bits(bits[i]);
      return new Uint8Array(dst.buffer);
    }
    case 'q8_0':
      return quantizeQ8_0(toF32(bytes, dtype));
  }
}
