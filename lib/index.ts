export { loadModel, Model } from './model.js';
export type { LoadModelOptions, SpecialTokens, TokenizeOptions, DetokenizeOptions, GpuPlan } from './model.js';
export { Context, Generation } from './context.js';
export type {
  ContextOptions, SamplingOptions, GenerateOptions, GenerationResult, StopReason, EvaluateOptions, DeviceMemoryUse,
} from './context.js';
export { ParallelContext } from './parallel.js';
export { createServer, HuoziServer } from './server/server.js';
export type { ServerOptions } from './server/server.js';
export type { ParallelContextOptions, ParallelGenerateOptions, ParallelGenerationResult, ParallelStats } from './parallel.js';
export {
  HuoziError, ModelLoadError, ContextCreateError, ContextOverflowError, DecodeError, DisposedError, AbortError,
  BusyError, BindingError, GgufError, InsufficientMemoryError,
} from './errors.js';
export { demoModelPath } from './demo.js';
export { systemInfo } from './system.js';
export { ChatSession, SessionFileError } from './chat/session.js';
export type { ChatSessionOptions, ChatPromptOptions, ChatAnswer, ChatStream } from './chat/session.js';
export { huoziTemplate, chatmlTemplate, jinjaTemplate, jinjaTemplateFile } from './chat/template.js';
export type { ChatTemplate, ChatMessage, ChatRole, Segment, JinjaTemplateOptions } from './chat/template.js';
export type { TemplateOption } from './chat/detect.js';
export { inspect } from './gguf/inspect.js';
export type { GgufInspection } from './gguf/inspect.js';
export { readGguf, parseGguf, GGUF_LIMITS } from './gguf/reader.js';
export type { GgufFile, GgufTensorInfo, GgufMetadataEntry, GgufValue, GgufScalar } from './gguf/reader.js';
export { writeGguf } from './gguf/writer.js';
export type { WriterTensor, WriterValue } from './gguf/writer.js';
export { GgufValueType, GGML_TYPES } from './gguf/types.js';
export { synth, synthModel, SYNTH_SHAPES } from './gguf/synth.js';
export type { SynthOptions, SynthShape, SynthType } from './gguf/synth.js';
export { quantize, quantizedSize, QuantizeError } from './quantize/quantize.js';
export type { QuantizeOptions, QuantizeResult } from './quantize/quantize.js';
export { QUANT_TYPES, quantType } from './quantize/types.js';
export type { QuantType } from './quantize/types.js';
export { computeImatrix, readImatrix } from './quantize/imatrix.js';
export type { ImatrixOptions, ImatrixResult, LoadedImatrix } from './quantize/imatrix.js';
export { perplexity, perplexityOfFile } from './eval/perplexity.js';
export type { PerplexityOptions, PerplexityResult } from './eval/perplexity.js';
export { devices, estimateMemory } from './gpu.js';
export type { Device, DeviceMemory, MemoryEstimateOptions, FitResult } from './gpu.js';
export { startRpcServer, RpcServerError, RPC_DEFAULT_PORT } from './rpc.js';
export type { RpcServer, RpcServerOptions, RpcDevice } from './rpc.js';
export { convert, ConvertError, HUOZI_CHAT_TEMPLATE } from './convert/convert.js';
export type { ConvertOptions, ConvertResult, ConvertOutType } from './convert/convert.js';
export type { NativeModelInfo, NativeSystemInfo, AddonOrigin } from './binding.js';
export type { OutElement } from './convert/float.js';
export type { GgmlType } from './gguf/types.js';
export type { ReadGgufOptions } from './gguf/reader.js';
export type { WriteGgufOptions } from './gguf/writer.js';
export type { TensorPlan } from './gguf/synth.js';
export { ChatTemplateError } from './errors.js';
export { renderChatTemplate, checkChatTemplate, PROBE_CONVERSATION, DEFAULT_TEMPLATE_LIMITS } from './chat/template.js';
export type { ChatTemplateCheck, TemplateLimits } from './chat/template.js';
export { OutputPathError } from './errors.js';
export { NotRegularFileError } from './errors.js';
export { GgufArray } from './gguf/reader.js';
export type { TokenizeAsyncOptions } from './model.js';
