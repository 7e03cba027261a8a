// llama.cpp's RPC server (ggml-rpc, the code behind its ggml-rpc-server tool) inside the addon.
//
// rpcStartServer(endpoint, cacheDir, threads, devices, onExit) -> { devices: [...] }
// ggml_backend_rpc_start_server() serves one client at a time and returns only when it cannot bind or accept:
// it has no stop function. So it runs on a thread of its own that is never joined, and the process that
// started it is the server (lib/rpc.ts runs it in a child process, `huozi-gguf rpc-server`, which exits on
// SIGINT/SIGTERM). onExit(message) is called if it ever returns (the port is taken, the host is not an
// address of this machine); until then the thread-safe function keeps the event loop, and the process, alive.
#include <napi.h>

#include <string>
#include <thread>
#include <vector>

#include "ggml-backend.h"
#include "ggml-rpc.h"

#include "errors.h"

namespace huozi {

namespace {

// The devices llama.cpp's rpc-server exposes when given no --device: every accelerator (GPU, iGPU), else the CPU.
std::vector<ggml_backend_dev_t> DefaultDevices() {
  std::vector<ggml_backend_dev_t> out;
  for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
    ggml_backend_dev_t dev = ggml_backend_dev_get(i);
    const auto type = ggml_backend_dev_type(dev);
    if (type != GGML_BACKEND_DEVICE_TYPE_CPU && type != GGML_BACKEND_DEVICE_TYPE_ACCEL) out.push_back(dev);
  }
  if (out.empty()) {
    if (ggml_backend_dev_t cpu = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU)) out.push_back(cpu);
  }
  return out;
}

std::string DeviceNames() {
  std::string names;
  for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
    if (!names.empty()) names += ", ";
    names += ggml_backend_dev_name(ggml_backend_dev_get(i));
  }
  return names;
}

Napi::Value StartServer(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (info.Length() < 5 || !info[0].IsString() || !info[2].IsNumber() || !info[4].IsFunction()) {
    Throw(env, code::kInvalidArgument, "rpcStartServer(endpoint, cacheDir, threads, devices, onExit)");
  }
  std::string endpoint = info[0].As<Napi::String>().Utf8Value();
  std::string cache_dir = info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : "";
  const int64_t threads = info[2].As<Napi::Number>().Int64Value();
  if (threads < 1) Throw(env, code::kOutOfRange, "threads must be at least 1");
  if (endpoint.find('\0') != std::string::npos || cache_dir.find('\0') != std::string::npos) {
    Throw(env, code::kInvalidArgument, "endpoint and cacheDir must not contain NUL bytes");
  }

  ggml_backend_reg_t reg = ggml_backend_reg_by_name("RPC");
  auto start = reg == nullptr ? nullptr
      : reinterpret_cast<decltype(ggml_backend_rpc_start_server) *>(
            ggml_backend_reg_get_proc_address(reg, "ggml_backend_rpc_start_server"));
  if (start == nullptr) Throw(env, code::kInvalidArgument, "this build of the addon has no RPC backend (GGML_RPC)");

  std::vector<ggml_backend_dev_t> devices;
  if (info[3].IsArray()) {
    Napi::Array names = info[3].As<Napi::Array>();
    for (uint32_t i = 0; i < names.Length(); ++i) {
      std::string name = names.Get(i).ToString().Utf8Value();
      ggml_backend_dev_t dev = ggml_backend_dev_by_name(name.c_str());
      if (dev == nullptr) Throw(env, code::kOutOfRange, "no device named \"" + name + "\"; devices: " + DeviceNames());
      devices.push_back(dev);
    }
  }
  if (devices.empty()) devices = DefaultDevices();
  if (devices.empty()) Throw(env, code::kInvalidArgument, "no device to serve");

  Napi::Array described = Napi::Array::New(env, devices.size());
  for (size_t i = 0; i < devices.size(); ++i) {
    size_t free = 0, total = 0;
    ggml_backend_dev_memory(devices[i], &free, &total);
    Napi::Object d = Napi::Object::New(env);
    d.Set("name", ggml_backend_dev_name(devices[i]));
    d.Set("description", ggml_backend_dev_description(devices[i]));
    d.Set("totalBytes", Napi::Number::New(env, static_cast<double>(total)));
    d.Set("freeBytes", Napi::Number::New(env, static_cast<double>(free)));
    described.Set(static_cast<uint32_t>(i), d);
  }

  auto on_exit = Napi::ThreadSafeFunction::New(env, info[4].As<Napi::Function>(), "huozi-gguf:rpc-server", 0, 1);
  std::thread([start, on_exit, endpoint, cache_dir, threads, devices]() mutable {
    start(endpoint.c_str(), cache_dir.empty() ? nullptr : cache_dir.c_str(), static_cast<size_t>(threads),
          devices.size(), devices.data());
    // It returns only on failure; its reason went to stderr ("Failed to create server socket").
    on_exit.BlockingCall([endpoint](Napi::Env env, Napi::Function fn) {
      fn.Call({Napi::String::New(env, "the RPC server on " + endpoint + " stopped: it could not listen there or accept a connection")});
    });
    on_exit.Release();
  }).detach();

  Napi::Object out = Napi::Object::New(env);
  out.Set("devices", described);
  return out;
}

}  // namespace

void RegisterRpc(Napi::Env env, Napi::Object exports) {
  exports.Set("rpcStartServer", Napi::Function::New(env, StartServer));
}

}  // namespace huozi
