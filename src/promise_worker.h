// An AsyncWorker that runs `run` on the libuv pool and settles a promise with `resolve`'s value on the main
// thread. Anything thrown by `run` (a CodedError, any std::exception) rejects the promise with a coded JS
// error; nothing escapes to the process. `done` runs on the main thread in both cases, before settling, and
// is where owners release their busy flag. `keep` holds JS objects alive until the worker finishes.
#pragma once
#include <napi.h>

#include <functional>
#include <string>

#include "errors.h"

namespace huozi {

template <typename Result>
class PromiseWorker final : public Napi::AsyncWorker {
 public:
  using Run = std::function<Result()>;
  using Resolve = std::function<Napi::Value(Napi::Env, Result &)>;
  using Done = std::function<void()>;

  static Napi::Promise Start(Napi::Env env, Napi::Object keep, const char *fallback_code, Run run, Resolve resolve,
                             Done done = nullptr) {
    auto *worker = new PromiseWorker(env, keep, fallback_code, std::move(run), std::move(resolve), std::move(done));
    Napi::Promise promise = worker->deferred_.Promise();
    worker->Napi::AsyncWorker::Queue();
    return promise;
  }

 private:
  PromiseWorker(Napi::Env env, Napi::Object keep, const char *fallback_code, Run run, Resolve resolve, Done done)
      : Napi::AsyncWorker(env, "huozi-gguf"),
        deferred_(Napi::Promise::Deferred::New(env)),
        keep_(Napi::Persistent(keep)),
        code_(fallback_code),
        run_(std::move(run)),
        resolve_(std::move(resolve)),
        done_(std::move(done)) {}

  void Execute() override {
    try {
      result_ = run_();
    } catch (const CodedError &e) {
      code_ = e.code();
      SetError(e.what());
    } catch (const std::exception &e) {
      SetError(std::string("llama.cpp: ") + e.what());
    } catch (...) {
      SetError("unknown native error");
    }
  }

  void OnOK() override {
    if (done_) done_();
    Napi::Env env = Env();
    try {
      deferred_.Resolve(resolve_(env, result_));
    } catch (const Napi::Error &e) {
      deferred_.Reject(e.Value());
    } catch (const std::exception &e) {
      deferred_.Reject(MakeError(env, code_, e.what()).Value());
    }
  }

  void OnError(const Napi::Error &error) override {
    if (done_) done_();
    Napi::Env env = Env();
    deferred_.Reject(MakeError(env, code_, error.Message()).Value());
  }

  Napi::Promise::Deferred deferred_;
  Napi::ObjectReference keep_;
  const char *code_;
  Run run_;
  Resolve resolve_;
  Done done_;
  Result result_{};
};

}  // namespace huozi
