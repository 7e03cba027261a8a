// The model file llama.cpp maps, held open by its Model to notice later changes to it (Model.checkFile): a file
// truncated or written over in place under a memory-mapped model makes evaluating it read pages that are gone
// (SIGBUS, the process dies) or weights that are not the model's.
import { closeSync, fstatSync, openSync } from 'node:fs';
import { ModelLoadError } from './errors.js';

/** The identity of an open model file: what changes when the file is truncated or written over in place. */
export interface FileIdentity {
  fd: number;
  size: bigint;
  mtimeNs: bigint;
}

export function openIdentity(path: string): FileIdentity | undefined {
  let fd: number | undefined;
  try {
    fd = openSync(path, 'r');
    const st = fstatSync(fd, { bigint: true });
    return { fd, size: st.size, mtimeNs: st.mtimeNs };
  } catch {
    // Unreadable or gone: llama.cpp's load reports it.
    if (fd !== undefined) closeSync(fd);
    return undefined;
  }
}

export function closeIdentity(id: FileIdentity): void {
  try {
    closeSync(id.fd);
  } catch {
    // already closed
  }
}

/** Throws a {@link ModelLoadError} when the file at `path`, open as `id`, changed since it was opened. One fstat. */
export function checkIdentity(id: FileIdentity, path: string): void {
  let st: { size: bigint; mtimeNs: bigint };
  try {
    st = fstatSync(id.fd, { bigint: true });
  } catch (error) {
    throw new ModelLoadError(`Cannot check the model file ${path}: ${(error as Error).message}`, { cause: error });
  }
  if (st.size !== id.size || st.mtimeNs !== id.mtimeNs) {
    throw new ModelLoadError(
      `The model file ${path} changed on disk after it was loaded (size ${id.size} -> ${st.size} bytes` +
        `${st.mtimeNs !== id.mtimeNs ? ', modified' : ''}); its memory-mapped weights are no longer valid. ` +
        'Dispose this model and load it again. To replace a model that is in use, write the new file next to ' +
        'it and rename it into place (the loaded model keeps the old file) instead of copying over it, or load ' +
        'with useMmap: false.',
    );
  }
}
