// Tensor placement by name, for loadModel's and estimateMemory's tensor overrides (lib/placement.ts: cpuMoe,
// tensorOverrides): the buffer type an override names, and its pattern checked as llama.cpp will compile it.
#pragma once
#include <regex>
#include <string>
#include <vector>

#include "ggml-backend.h"
#include "llama.h"

namespace huozi {

// A device's name (CPU, CUDA0) for its default buffer type, or a buffer type's own name (CUDA_Host); null when
// no device of this process (and of `extra`, a load's RPC devices) has it.
inline ggml_backend_buffer_type_t BufferTypeByName(const std::string &name, const std::vector<ggml_backend_dev_t> &extra = {}) {
  std::vector<ggml_backend_dev_t> devs = extra;
  for (size_t i = 0; i < ggml_backend_dev_count(); ++i) devs.push_back(ggml_backend_dev_get(i));
  for (ggml_backend_dev_t dev : devs) {
    if (dev == nullptr) continue;
    ggml_backend_buffer_type_t b = ggml_backend_dev_buffer_type(dev);
    if (b && (name == ggml_backend_dev_name(dev) || name == ggml_backend_buft_name(b))) return b;
    b = ggml_backend_dev_host_buffer_type(dev);
    if (b && name == ggml_backend_buft_name(b)) return b;
  }
  return nullptr;
}

// The names BufferTypeByName takes, for an error message.
inline std::string BufferTypeNames(const std::vector<ggml_backend_dev_t> &extra = {}) {
  std::vector<ggml_backend_dev_t> devs = extra;
  for (size_t i = 0; i < ggml_backend_dev_count(); ++i) devs.push_back(ggml_backend_dev_get(i));
  std::string out;
  for (ggml_backend_dev_t dev : devs) {
    if (dev == nullptr) continue;
    out += (out.empty() ? "" : ", ") + std::string(ggml_backend_dev_name(dev));
  }
  return out;
}

// The local devices a model loads onto by default, in llama.cpp's order (llama_model_load_from_file_impl): the
// GPUs, or the integrated ones when there is no discrete GPU.
inline std::vector<ggml_backend_dev_t> LocalModelDevices() {
  std::vector<ggml_backend_dev_t> gpus, igpus;
  for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
    ggml_backend_dev_t dev = ggml_backend_dev_get(i);
    if (ggml_backend_dev_type(dev) == GGML_BACKEND_DEVICE_TYPE_GPU) gpus.push_back(dev);
    if (ggml_backend_dev_type(dev) == GGML_BACKEND_DEVICE_TYPE_IGPU) igpus.push_back(dev);
  }
  return gpus.empty() ? igpus : gpus;
}

// The devices for a load with RPC servers, as llama.cpp's --rpc ends up choosing them: the servers' devices
// first (llama_prepare_model_devices puts RPC devices at the front, to minimize network transfers), then the
// local GPUs (integrated ones only when there is no discrete one), null-terminated. common/arg.cpp registers each
// server's backend with ggml_backend_register, which would add them to every later load in the process; here
// they go only into this load's llama_model_params.devices. The CPU is never in the list: llama.cpp keeps what
// is not offloaded there, so on the CPU build gpuLayers counts the layers on the RPC servers. Returns an error
// message, empty on success. The servers must have been checked reachable (lib/rpc.ts): connecting to ask for
// the device count GGML_ABORTs when it cannot.
inline std::string RpcDevices(const std::vector<std::string> &servers, std::vector<ggml_backend_dev_t> &devices) {
  ggml_backend_reg_t rpc = ggml_backend_reg_by_name("RPC");
  using AddServer = ggml_backend_reg_t (*)(const char *);
  auto add = rpc == nullptr ? nullptr : reinterpret_cast<AddServer>(ggml_backend_reg_get_proc_address(rpc, "ggml_backend_rpc_add_server"));
  if (add == nullptr) return "this build of the addon has no RPC backend (GGML_RPC)";
  for (const std::string &endpoint : servers) {
    ggml_backend_reg_t reg = add(endpoint.c_str());
    if (reg == nullptr || ggml_backend_reg_dev_count(reg) == 0) return "the RPC server " + endpoint + " has no devices";
    for (size_t i = 0; i < ggml_backend_reg_dev_count(reg); ++i) devices.push_back(ggml_backend_reg_dev_get(reg, i));
  }
  for (ggml_backend_dev_t dev : LocalModelDevices()) devices.push_back(dev);
  devices.push_back(nullptr);
  return "";
}

// The overrides as llama.cpp takes them (null-terminated), or an error message naming the rule it cannot take:
// a buffer no device has, or a pattern std::regex (llama.cpp's matcher, ECMAScript grammar) refuses.
struct ResolvedOverrides {
  std::vector<llama_model_tensor_buft_override> list;
  std::string error;
};

inline ResolvedOverrides ResolveOverrides(const std::vector<std::pair<std::string, std::string>> &overrides,
                                          const std::vector<ggml_backend_dev_t> &extra = {}) {
  ResolvedOverrides r;
  for (const auto &[pattern, buffer] : overrides) {
    ggml_backend_buffer_type_t b = BufferTypeByName(buffer, extra);
    if (b == nullptr) {
      r.error = "no device named \"" + buffer + "\" for tensors matching " + pattern + " (devices: " + BufferTypeNames(extra) + ")";
      return r;
    }
    try {
      std::regex check(pattern);
    } catch (const std::regex_error &e) {
      r.error = "the tensor pattern " + pattern + " is not a regular expression llama.cpp can use: " + e.what();
      return r;
    }
    r.list.push_back({pattern.c_str(), b});
  }
  if (!r.list.empty()) r.list.push_back({nullptr, nullptr});
  return r;
}

}  // namespace huozi
