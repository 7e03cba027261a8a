import { HuoziError } from '../errors.js';

/**
 * A Hugging Face checkpoint cannot be converted: an unsupported architecture, a missing or truncated file, a
 * tensor of the wrong shape, a vocabulary this converter cannot read. Thrown before anything is written, so the
 * output path is as it was.
 */
export class ConvertError extends HuoziError {
  /** The file the problem is in, when there is one. */
  readonly file?: string;
  constructor(message: string, file?: string, options?: ErrorOptions) {
    super(message, 'ERR_HUOZI_CONVERT', options);
    if (file !== undefined) this.file = file;
  }
}
