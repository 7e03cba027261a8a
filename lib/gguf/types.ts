// ggml tensor types as the pinned llama.cpp defines them (ggml/include/ggml.h, type_traits in ggml.c).
// test/native/gguf-types.test.ts checks this table against the addon's ggml.

/** A ggml tensor type: id, name and block layout. */
export interface GgmlType {
  readonly id: number;
  readonly name: string;
  /** Elements per block. */
  readonly blockSize: number;
  /** Bytes per block. */
  readonly typeSize: number;
}

const T = (id: number, name: string, blockSize: number, typeSize: number): GgmlType => ({ id, name, blockSize, typeSize });

/** Types a GGUF file may use (removed ids are absent). */
export const GGML_TYPES: readonly GgmlType[] = [
  T(0, 'f32', 1, 4), T(1, 'f16', 1, 2), T(2, 'q4_0', 32, 18), T(3, 'q4_1', 32, 20), T(6, 'q5_0', 32, 22),
  T(7, 'q5_1', 32, 24), T(8, 'q8_0', 32, 34), T(9, 'q8_1', 32, 36), T(10, 'q2_K', 256, 84), T(11, 'q3_K', 256, 110),
  T(12, 'q4_K', 256, 144), T(13, 'q5_K', 256, 176), T(14, 'q6_K', 256, 210), T(15, 'q8_K', 256, 292),
  T(16, 'iq2_xxs', 256, 66), T(17, 'iq2_xs', 256, 74), T(18, 'iq3_xxs', 256, 98), T(19, 'iq1_s', 256, 50),
  T(20, 'iq4_nl', 32, 18), T(21, 'iq3_s', 256, 110), T(22, 'iq2_s', 256, 82), T(23, 'iq4_xs', 256, 136),
  T(24, 'i8', 1, 1), T(25, 'i16', 1, 2), T(26, 'i32', 1, 4), T(27, 'i64', 1, 8), T(28, 'f64', 1, 8),
  T(29, 'iq1_m', 256, 56), T(30, 'bf16', 1, 2), T(34, 'tq1_0', 256, 54), T(35, 'tq2_0', 256, 66),
  T(39, 'mxfp4', 32, 17), T(40, 'nvfp4', 64, 36), T(41, 'q1_0', 128, 18), T(42, 'q2_0', 64, 18),
];

/** One past the highest type id (GGML_TYPE_COUNT). */
export const GGML_TYPE_COUNT = 43;

const byId = new Map(GGML_TYPES.map((t) => [t.id, t]));
const byName = new Map(GGML_TYPES.map((t) => [t.name.toLowerCase(), t]));

export function ggmlType(id: number): GgmlType | undefined {
  return byId.get(id);
}

export function ggmlTypeByName(name: string): GgmlType | undefined {
  return byName.get(name.toLowerCase());
}

/** Bytes of a tensor of `elements` elements, as BigInt; undefined if the count is not whole blocks. */
export function tensorBytes(type: GgmlType, elements: bigint): bigint | undefined {
  const block = BigInt(type.blockSize);
  if (elements % block !== 0n) return undefined;
  return (elements / block) * BigInt(type.typeSize);
}

/** GGUF metadata value types (gguf.h). */
export enum GgufValueType {
  UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6, BOOL = 7, STRING = 8,
  ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
}

export const GGUF_VALUE_TYPE_NAMES: Record<number, string> = {
  0: 'u8', 1: 'i8', 2: 'u16', 3: 'i16', 4: 'u32', 5: 'i32', 6: 'f32', 7: 'bool', 8: 'str', 9: 'arr', 10: 'u64',
  11: 'i64', 12: 'f64',
};

/** Byte size of a fixed-size value type (not STRING or ARRAY). */
export const GGUF_SCALAR_SIZE: Record<number, number> = { 0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8 };
