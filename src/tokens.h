// Token ids from JS reach llama.cpp's vocabulary lookups (std::vector::at, or unchecked indexing), so every
// entry point copies and checks them here first.
#pragma once
#include <napi.h>

#include <string>
#include <vector>

#include "errors.h"
#include "llama.h"

namespace huozi {

// An Int32Array of ids in [0, n_vocab); undefined/null gives an empty list when `optional`.
inline std::vector<llama_token> TokenIds(Napi::Env env, const Napi::Value &value, int32_t n_vocab, const char *what,
                                         bool optional = false) {
  if (optional && (value.IsUndefined() || value.IsNull())) return {};
  if (!value.IsTypedArray() || value.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array) {
    Throw(env, code::kInvalidArgument, std::string(what) + " must be an Int32Array");
  }
  Napi::Int32Array arr = value.As<Napi::Int32Array>();
  std::vector<llama_token> tokens(arr.Data(), arr.Data() + arr.ElementLength());
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= n_vocab) {
      Throw(env, code::kOutOfRange, std::string(what) + " contains token id " + std::to_string(tokens[i]) + " at index " +
                                        std::to_string(i) + ", outside the vocabulary (0.." + std::to_string(n_vocab - 1) + ")");
    }
  }
  return tokens;
}

}  // namespace huozi
