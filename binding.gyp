# A shim, not a second build. The addon and llama.cpp are built by CMake (CMakeLists.txt, driven by
# scripts/build.mjs through cmake-js). If anything runs node-gyp on this package (node-gyp-build's fallback,
# `node-gyp rebuild`, an old npm's default install), this target hands the job to that same script, so
# node-gyp can never produce a half build with different flags.
{
  "targets": [
    {
      "target_name": "huozi_gguf",
      "type": "none",
      "actions": [
        {
          "action_name": "cmake_build",
          "inputs": ["CMakeLists.txt"],
          "outputs": ["<(module_root_dir)/build/Release/huozi_gguf.node"],
          "action": ["node", "<(module_root_dir)/scripts/build.mjs"]
        }
      ]
    }
  ]
}
