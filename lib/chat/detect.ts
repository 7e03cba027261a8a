import type { Model } from '../model.js';
import * as v from '../validate.js';
import { chatmlTemplate, huoziTemplate, jinjaTemplate, jinjaTemplateFile, type ChatTemplate } from './template.js';

/** Which chat template to use: see {@link ChatSessionOptions.template}. */
export type TemplateOption = 'auto' | 'huozi' | 'chatml' | { jinja: string } | { file: string } | ChatTemplate;

/** Picks the chat template for a model (see ChatSessionOptions.template). */
export function detectTemplate(model: Model, option: TemplateOption): ChatTemplate {
  if (option === 'huozi') return huoziTemplate;
  if (option === 'chatml') return chatmlTemplate;
  if (typeof option === 'object' && option !== null) {
    if ('render' in option && typeof option.render === 'function') return option;
    const variables = templateVariables(model);
    const stopTexts = eogTexts(model);
    if ('jinja' in option) return jinjaTemplate(v.string('template.jinja', option.jinja), { variables, stopTexts });
    if ('file' in option) return jinjaTemplateFile(v.string('template.file', option.file), { variables, stopTexts });
  }
  if (option !== 'auto') {
    throw v.typeError('"auto", "huozi", "chatml", { jinja }, { file } or a ChatTemplate', 'template', option);
  }
  // Huozi's GGUFs have no tokenizer.chat_template (like the fixture); recognise them by their vocabulary.
  const special = model.specialTokens;
  if (model.info.chatTemplate) {
    return jinjaTemplate(model.info.chatTemplate, { variables: templateVariables(model), stopTexts: eogTexts(model) });
  }
  if (special.has('<|beginofutterance|>') && special.has('<|endofutterance|>')) return huoziTemplate;
  if (special.has('<|im_start|>') && special.has('<|im_end|>')) return chatmlTemplate;
  return chatmlTemplate;
}

function templateVariables(model: Model): Record<string, unknown> {
  const text = (id: number | null) => (id === null ? '' : model.specialTokenText(id) ?? '');
  return { bos_token: text(model.tokens.bos), eos_token: text(model.tokens.eos) };
}

/** The texts of the model's end-of-generation special tokens, and the well-known end-of-turn markers it has. */
function eogTexts(model: Model): string[] {
  const out: string[] = [];
  for (const [text, id] of model.specialTokens) {
    if (model.isEndOfGeneration(id) || ['<|im_end|>', '<|endofutterance|>', '<|eot_id|>', '<end_of_turn>'].includes(text)) {
      out.push(text);
    }
  }
  return out;
}
