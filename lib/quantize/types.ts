// Every type llama-quantize accepts (tools/quantize/quantize.cpp QUANT_OPTIONS), spelled as it spells them,
// with its description of size and quality.
/** A quantization type as llama-quantize lists it. */
export interface QuantType {
  /** As llama-quantize spells it; matched case-insensitively. */
  name: string;
  /** llama_ftype. */
  ftype: number;
  description: string;
  /** llama-quantize refuses these without an importance matrix. */
  needsImatrix: boolean;
  /** Copies tensors as they are (COPY). */
  onlyCopy?: boolean;
}

const Q = (name: string, ftype: number, description: string, needsImatrix = false): QuantType => ({ name, ftype, description, needsImatrix });

/** Every type llama-quantize accepts, in its order, with its size/quality note (measured by llama.cpp on Llama-3-8B). */
export const QUANT_TYPES: readonly QuantType[] = [
  Q('Q1_0', 40, '1.125 bpw quantization'),
  Q('Q2_0', 41, '2.25 bpw quantization (group 64)'),
  Q('Q4_0', 2, '4.34G, +0.4685 ppl @ Llama-3-8B'),
  Q('Q4_1', 3, '4.78G, +0.4511 ppl @ Llama-3-8B'),
  Q('MXFP4_MOE', 38, 'MXFP4 MoE'),
  Q('Q5_0', 8, '5.21G, +0.1316 ppl @ Llama-3-8B'),
  Q('Q5_1', 9, '5.65G, +0.1062 ppl @ Llama-3-8B'),
  Q('IQ2_XXS', 19, '2.06 bpw quantization', true),
  Q('IQ2_XS', 20, '2.31 bpw quantization', true),
  Q('IQ2_S', 28, '2.5  bpw quantization', true),
  Q('IQ2_M', 29, '2.7  bpw quantization'),
  Q('IQ1_S', 24, '1.56 bpw quantization', true),
  Q('IQ1_M', 31, '1.75 bpw quantization', true),
  Q('TQ1_0', 36, '1.69 bpw ternarization'),
  Q('TQ2_0', 37, '2.06 bpw ternarization'),
  Q('Q2_K', 10, '2.96G, +3.5199 ppl @ Llama-3-8B'),
  Q('Q2_K_S', 21, '2.96G, +3.1836 ppl @ Llama-3-8B', true),
  Q('IQ3_XXS', 23, '3.06 bpw quantization'),
  Q('IQ3_S', 26, '3.44 bpw quantization'),
  Q('IQ3_M', 27, '3.66 bpw quantization mix'),
  Q('Q3_K', 12, 'alias for Q3_K_M'),
  Q('IQ3_XS', 22, '3.3 bpw quantization'),
  Q('Q3_K_S', 11, '3.41G, +1.6321 ppl @ Llama-3-8B'),
  Q('Q3_K_M', 12, '3.74G, +0.6569 ppl @ Llama-3-8B'),
  Q('Q3_K_L', 13, '4.03G, +0.5562 ppl @ Llama-3-8B'),
  Q('IQ4_NL', 25, '4.50 bpw non-linear quantization'),
  Q('IQ4_XS', 30, '4.25 bpw non-linear quantization'),
  Q('Q4_K', 15, 'alias for Q4_K_M'),
  Q('Q4_K_S', 14, '4.37G, +0.2689 ppl @ Llama-3-8B'),
  Q('Q4_K_M', 15, '4.58G, +0.1754 ppl @ Llama-3-8B'),
  Q('Q5_K', 17, 'alias for Q5_K_M'),
  Q('Q5_K_S', 16, '5.21G, +0.1049 ppl @ Llama-3-8B'),
  Q('Q5_K_M', 17, '5.33G, +0.0569 ppl @ Llama-3-8B'),
  Q('Q6_K', 18, '6.14G, +0.0217 ppl @ Llama-3-8B'),
  Q('Q8_0', 7, '7.96G, +0.0026 ppl @ Llama-3-8B'),
  Q('F16', 1, '14.00G, +0.0020 ppl @ Mistral-7B'),
  Q('BF16', 32, '14.00G, -0.0050 ppl @ Mistral-7B'),
  Q('F32', 0, '26.00G              @ 7B'),
  { ...Q('COPY', 0, 'only copy tensors, no quantizing'), onlyCopy: true },
];

/** The type named `name` (case-insensitive, llama-quantize's spelling), or undefined. */
export function quantType(name: string): QuantType | undefined {
  const lower = name.toLowerCase();
  return QUANT_TYPES.find((t) => t.name.toLowerCase() === lower);
}
