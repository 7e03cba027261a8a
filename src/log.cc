#include "log.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "llama.h"

namespace huozi {
namespace {

constexpr int kSilent = 100;
thread_local std::string thread_errors;
thread_local ggml_log_level last_level = GGML_LOG_LEVEL_NONE;
thread_local LogHook hook = nullptr;
thread_local void *hook_data = nullptr;
int min_level = kSilent;

int LevelFromEnv() {
  const char *v = std::getenv("HUOZI_LOG");
  if (v == nullptr) return kSilent;
  if (std::strcmp(v, "debug") == 0) return GGML_LOG_LEVEL_DEBUG;
  if (std::strcmp(v, "info") == 0) return GGML_LOG_LEVEL_INFO;
  if (std::strcmp(v, "warn") == 0) return GGML_LOG_LEVEL_WARN;
  if (std::strcmp(v, "error") == 0) return GGML_LOG_LEVEL_ERROR;
  return kSilent;
}

void OnLog(ggml_log_level level, const char *text, void *) {
  // CONT continues the previous message at the previous level.
  ggml_log_level effective = level == GGML_LOG_LEVEL_CONT ? last_level : level;
  if (level != GGML_LOG_LEVEL_CONT) last_level = level;
  if (effective == GGML_LOG_LEVEL_ERROR && thread_errors.size() < 4096) thread_errors += text;
  if (hook != nullptr) hook(text, hook_data);
  if (effective >= min_level) std::fputs(text, stderr);
}

}  // namespace

void InstallLogHandler() {
  min_level = LevelFromEnv();
  llama_log_set(OnLog, nullptr);
}

void SetThreadLogHook(LogHook h, void *data) {
  hook = h;
  hook_data = data;
}

std::string TakeThreadErrors() {
  std::string out;
  out.swap(thread_errors);
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

}  // namespace huozi
