// Routes llama.cpp/ggml logging. llama.cpp prints everything to stderr by default; a library must not: its
// errors reach the caller as JS errors. Nothing is printed unless HUOZI_LOG=debug|info|warn|error asks for
// it, and the latest error lines are kept per thread so that a failed load can say *why* in its JS error.
#pragma once
#include <string>

namespace huozi {

void InstallLogHandler();
// Error lines llama.cpp logged on this thread since the last call; clears them.
std::string TakeThreadErrors();

// While set, every log message from this thread is also passed to `hook` (used to read llama_model_quantize's
// per-tensor lines as progress: it has no progress callback).
using LogHook = void (*)(const char *text, void *data);
void SetThreadLogHook(LogHook hook, void *data);

}  // namespace huozi
