import { binding, type NativeSystemInfo } from './binding.js';

/** Which backend the loaded addon was built for, and what llama.cpp detected on this machine. */
export function systemInfo(): NativeSystemInfo {
  return binding().systemInfo();
}
