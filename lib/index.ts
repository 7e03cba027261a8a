export { loadModel, Model } from './model.js';
export type { LoadModelOptions, SpecialTokens, TokenizeOptions, DetokenizeOptions } from './model.js';
export { Context, Generation } from './context.js';
export type {
  ContextOptions, SamplingOptions, GenerateOptions, GenerationResult, StopReason, EvaluateOptions,
} from './context.js';
export {
  HuoziError, ModelLoadError, ContextCreateError, ContextOverflowError, DecodeError, DisposedError, AbortError,
  BusyError, BindingError,
} from './errors.js';
export { demoModelPath } from './demo.js';
export { systemInfo } from './system.js';
export { ChatSession, SessionFileError } from './chat/session.js';
export type { ChatSessionOptions, ChatPromptOptions, ChatAnswer, ChatStream } from './chat/session.js';
export { huoziTemplate, chatmlTemplate, jinjaTemplate, jinjaTemplateFile } from './chat/template.js';
export type { ChatTemplate, ChatMessage, ChatRole, Segment, JinjaTemplateOptions } from './chat/template.js';
export type { TemplateOption } from './chat/detect.js';
