// Errors that cross into JS carry a stable `.code`; lib/errors.ts turns each code into a typed class.
#pragma once
#include <napi.h>

#include <stdexcept>
#include <string>

namespace huozi {

// Codes shared with lib/errors.ts.
namespace code {
constexpr const char *kInvalidArgument = "ERR_HUOZI_INVALID_ARGUMENT";
constexpr const char *kOutOfRange = "ERR_HUOZI_OUT_OF_RANGE";
constexpr const char *kModelLoad = "ERR_HUOZI_MODEL_LOAD";
constexpr const char *kContextCreate = "ERR_HUOZI_CONTEXT_CREATE";
constexpr const char *kContextOverflow = "ERR_HUOZI_CONTEXT_OVERFLOW";
constexpr const char *kDecode = "ERR_HUOZI_DECODE";
constexpr const char *kAborted = "ERR_HUOZI_ABORTED";
constexpr const char *kDisposed = "ERR_HUOZI_DISPOSED";
constexpr const char *kBusy = "ERR_HUOZI_BUSY";
constexpr const char *kQuantize = "ERR_HUOZI_QUANTIZE";
constexpr const char *kGrammar = "ERR_HUOZI_GRAMMAR";
}  // namespace code

// The message of the exception being handled (inside a catch): what a thread reports instead of letting an
// exception escape it (std::terminate would end the whole process).
inline std::string CurrentExceptionMessage() {
  try {
    throw;
  } catch (const std::exception &e) {
    return std::string("llama.cpp: ") + e.what();
  } catch (...) {
    return "llama.cpp threw an exception that is not a std::exception";
  }
}

// Thrown on worker threads (where no napi_env may be touched) and turned into a JS error on the main thread.
class CodedError final : public std::runtime_error {
 public:
  CodedError(const char *code, const std::string &message) : std::runtime_error(message), code_(code) {}
  const char *code() const { return code_; }

 private:
  const char *code_;
};

inline Napi::Error MakeError(Napi::Env env, const char *code, const std::string &message) {
  Napi::Error error = Napi::Error::New(env, message);
  error.Set("code", Napi::String::New(env, code));
  return error;
}

[[noreturn]] inline void Throw(Napi::Env env, const char *code, const std::string &message) {
  throw MakeError(env, code, message);
}

}  // namespace huozi
