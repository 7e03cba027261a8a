// Per-environment state (worker_threads each get their own): the constructors of our wrapped classes, and what
// a ModelHandle needs to free its weights off this environment's JS thread (model.h).
#pragma once
#include <napi.h>

#include <atomic>
#include <memory>
#include <thread>

namespace huozi {

// Shared by the environment's AddonData and every ModelHandle made there, so that it outlives both.
struct EnvLife {
  napi_env env = nullptr;
  std::thread::id js_thread;
  std::atomic<bool> closing{false};  // set by the environment's cleanup hook: no more work can be queued
};

struct AddonData {
  Napi::FunctionReference model_ctor;
  Napi::FunctionReference context_ctor;
  Napi::FunctionReference parallel_ctor;
  Napi::FunctionReference lora_ctor;
  std::shared_ptr<EnvLife> life;
};

inline AddonData &Data(Napi::Env env) { return *env.GetInstanceData<AddonData>(); }

}  // namespace huozi
