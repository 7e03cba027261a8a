// Per-environment state (worker_threads each get their own): the constructors of our wrapped classes.
#pragma once
#include <napi.h>

namespace huozi {

struct AddonData {
  Napi::FunctionReference model_ctor;
  Napi::FunctionReference context_ctor;
  Napi::FunctionReference parallel_ctor;
};

inline AddonData &Data(Napi::Env env) { return *env.GetInstanceData<AddonData>(); }

}  // namespace huozi
