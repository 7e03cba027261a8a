import { join } from 'node:path';
import { packageRoot } from './binding.js';

/**
 * The embedded demo model: huozi-tiny (a 6.6M-parameter Mixtral-architecture model in Huozi 3.5's exact
 * format, trained to recite Tang/Song poems) quantized to q4_0 with llama.cpp's quantizer. About 4 MB.
 */
export const demoModelPath: string = join(packageRoot, 'models', 'huozi-tiny-q4_0.gguf');
