/**
 * Huozi 3.5's chat template, byte for byte as its tokenizer ships it (template.jinja): what
 * `convert(..., { chatTemplate: 'huozi' })` stores as tokenizer.chat_template. Huozi's own HF checkpoint has none
 * in tokenizer_config.json, so llama.cpp's converter writes none; embedding it lets any GGUF runtime (llama.cpp's
 * --jinja, Ollama, LM Studio) format Huozi's turns without being told.
 */
export const HUOZI_CHAT_TEMPLATE =
  "{% for message in messages %}{{'<|beginofutterance|>' + message['role'] + '\\n' + message['content']}}" +
  "{% if (loop.last and add_generation_prompt) or not loop.last %}{{ '<|endofutterance|>' + '\\n'}}{% endif %}{% endfor %}\n" +
  "{% if add_generation_prompt and messages[-1]['role'] != '助手' %}{{ '<|beginofutterance|>助手\\n' }}{% endif %}";
