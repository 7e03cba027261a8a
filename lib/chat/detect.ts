import { ChatTemplateError } from '../errors.js';
import * as v from '../validate.js';
import {
  chatmlTemplate, checkChatTemplate, huoziTemplate, jinjaTemplate, jinjaTemplateFile, type ChatTemplate, type ChatTemplateCheck,
} from './template.js';
import type { TemplateLimits } from './template-limits.js';

/**
 * Which chat template to use: see {@link ChatSessionOptions.template}. `{ jinja }` and `{ file }` take the
 * render limits of {@link jinjaTemplate} as `limits`.
 */
export type TemplateOption =
  | 'auto' | 'huozi' | 'chatml'
  | { jinja: string; limits?: Partial<TemplateLimits> }
  | { file: string; limits?: Partial<TemplateLimits> }
  | ChatTemplate;

/**
 * What template detection reads of a model: a Model has all of it. Declared here because lib/model.ts imports
 * this file (loadModel's checkChatTemplate), so this file takes nothing from lib/model.ts.
 */
export interface TemplateModel {
  readonly path: string;
  readonly info: { readonly chatTemplate: string | null };
  readonly tokens: { readonly bos: number | null; readonly eos: number | null };
  readonly specialTokens: ReadonlyMap<string, number>;
  specialTokenText(token: number): string | undefined;
  isEndOfGeneration(token: number): boolean;
}

/** Picks the chat template for a model (see ChatSessionOptions.template). */
export function detectTemplate(model: TemplateModel, option: TemplateOption): ChatTemplate {
  if (option === 'huozi') return huoziTemplate;
  if (option === 'chatml') return chatmlTemplate;
  if (typeof option === 'object' && option !== null) {
    if ('render' in option && typeof option.render === 'function') return option;
    const variables = templateVariables(model);
    const stopTexts = eogTexts(model);
    if ('jinja' in option) {
      const o = v.options<{ jinja: string; limits: Partial<TemplateLimits> }>('template', option, ['jinja', 'limits']);
      return jinjaTemplate(v.string('template.jinja', o.jinja), {
        variables, stopTexts, label: 'template given as { jinja }', ...(o.limits === undefined ? {} : { limits: o.limits }),
      });
    }
    if ('file' in option) {
      const o = v.options<{ file: string; limits: Partial<TemplateLimits> }>('template', option, ['file', 'limits']);
      return jinjaTemplateFile(v.string('template.file', o.file), {
        variables, stopTexts, ...(o.limits === undefined ? {} : { limits: o.limits }),
      });
    }
  }
  if (option !== 'auto') {
    throw v.typeError('"auto", "huozi", "chatml", { jinja }, { file } or a ChatTemplate', 'template', option);
  }
  // Huozi's GGUFs have no tokenizer.chat_template (like the fixture); recognise them by their vocabulary.
  const special = model.specialTokens;
  if (model.info.chatTemplate) return ggufTemplate(model, model.info.chatTemplate);
  if (special.has('<|beginofutterance|>') && special.has('<|endofutterance|>')) return huoziTemplate;
  if (special.has('<|im_start|>') && special.has('<|im_end|>')) return chatmlTemplate;
  return chatmlTemplate;
}

/** The GGUF's own tokenizer.chat_template as a Jinja template; errors name it and the file. */
function ggufTemplate(model: TemplateModel, source: string): ChatTemplate {
  return jinjaTemplate(source, {
    variables: templateVariables(model), stopTexts: eogTexts(model), label: `tokenizer.chat_template of ${model.path}`,
  });
}

/**
 * loadModel's checkChatTemplate: renders the probe conversation with the GGUF's own template (see
 * checkChatTemplate). Null when the file has none. Throws ChatTemplateError.
 */
export async function checkModelChatTemplate(model: TemplateModel): Promise<ChatTemplateCheck | null> {
  const source = model.info.chatTemplate;
  return source ? checkChatTemplate(ggufTemplate(model, source)) : null;
}

function templateVariables(model: TemplateModel): Record<string, unknown> {
  const text = (id: number | null) => (id === null ? '' : model.specialTokenText(id) ?? '');
  return { bos_token: text(model.tokens.bos), eos_token: text(model.tokens.eos) };
}

/** The texts of the model's end-of-generation special tokens, and the well-known end-of-turn markers it has. */
function eogTexts(model: TemplateModel): string[] {
  const out: string[] = [];
  for (const [text, id] of model.specialTokens) {
    if (model.isEndOfGeneration(id) || ['<|im_end|>', '<|endofutterance|>', '<|eot_id|>', '<end_of_turn>'].includes(text)) {
      out.push(text);
    }
  }
  return out;
}

/** The outcome of probing a template (inspect's `chatTemplate.check`). */
export type ChatTemplateProbe =
  | { ok: true; systemRole: boolean }
  | { ok: false; reason: ChatTemplateError['reason']; limit?: string; message: string };

/** Renders the probe conversation with a template's source, reporting the outcome instead of throwing it. */
export async function probeTemplateSource(
  source: string, options: { label: string; variables: Record<string, unknown> },
): Promise<ChatTemplateProbe> {
  try {
    const check = await checkChatTemplate(jinjaTemplate(source, options));
    return { ok: true, systemRole: check.systemRole };
  } catch (error) {
    if (!(error instanceof ChatTemplateError)) throw error;
    return { ok: false, reason: error.reason, ...(error.limit === undefined ? {} : { limit: error.limit }), message: error.message };
  }
}
