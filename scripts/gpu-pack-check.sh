#!/usr/bin/env bash
# Checks the CUDA package end to end on a GPU machine, as a user gets it: builds the CUDA prebuild into
# packages/linux-x64-cuda, packs it, installs it with the main package's tarball into a fresh folder with
# `npm install --offline --ignore-scripts`, and runs a program that prints systemInfo() (backend must be 'cuda'),
# loads the demo model with gpuLayers 'max' and generates; then the same with HUOZI_BACKEND=cpu (the fallback).
#
# The GPU machine has CUDA, cmake and no Node, npm or network. Here, first:
#   bash /work/shared/tools/gpu-bundle.sh          # .gpu-bundle/: node, vendor/llama.cpp, node_modules
#   npm run prebuilds                              # the CPU prebuild the main tarball carries
#   bash scripts/gpu-pack-check.sh --prepare       # .gpu-npm/: npm's own JS, the dependencies' tarballs in an
#                                                  # npm cache, and the main package's tarball (git-ignored)
# then on the GPU machine (carry .gpu-bundle and .gpu-npm):
#   source .gpu-bundle/bootstrap.sh && bash scripts/gpu-pack-check.sh [--cuda-arch 90]
# and, to try this script here without a GPU (the CPU prebuild stands in for the CUDA build):
#   bash scripts/gpu-pack-check.sh --dry-run
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd); cd "$root"
mode=gpu; arch=90
while [ $# -gt 0 ]; do
  case "$1" in
    --prepare) mode=prepare ;;
    --dry-run) mode=dry-run ;;
    --cuda-arch) arch=$2; shift ;;
    *) echo "usage: $0 [--prepare | --dry-run] [--cuda-arch 90]" >&2; exit 2 ;;
  esac
  shift
done
gn=$root/.gpu-npm
version=$(node -p "require('./package.json').version")

if [ "$mode" = prepare ]; then
  [ -f prebuilds/linux-x64/node.napi.glibc.node ] || { echo "no CPU prebuild: run npm run prebuilds first" >&2; exit 1; }
  rm -rf "$gn"; mkdir -p "$gn/cache"
  grep -qxF "/.gpu-npm/" .git/info/exclude 2>/dev/null || echo "/.gpu-npm/" >> .git/info/exclude
  npm_dir=$(dirname "$(dirname "$(readlink -f "$(command -v npm)")")")
  tar -C "$(dirname "$npm_dir")" -cJf "$gn/npm.tar.xz" "$(basename "$npm_dir")"
  # The runtime dependencies at the versions package-lock.json pins, in an npm cache of their own.
  node -e '
    const lock = require("./package-lock.json"); const deps = Object.keys(require("./package.json").dependencies);
    const seen = new Set(); const todo = [...deps];
    while (todo.length) { const n = todo.pop(); if (seen.has(n)) continue; seen.add(n);
      const e = lock.packages["node_modules/" + n]; console.log(n + "@" + e.version);
      todo.push(...Object.keys(e.dependencies ?? {})); }' | while read -r spec; do
    npm cache add --cache "$gn/cache" "$spec" >/dev/null
  done
  npx tsc -p tsconfig.json
  npm pack --ignore-scripts --pack-destination "$gn" >/dev/null
  du -sh "$gn"/*
  echo "carry .gpu-bundle and .gpu-npm; on the GPU machine: source .gpu-bundle/bootstrap.sh && bash scripts/gpu-pack-check.sh --cuda-arch $arch"
  exit 0
fi

# npm: this machine's own in a dry run, else the copy from --prepare.
if [ "$mode" = gpu ] || ! command -v npm >/dev/null; then
  [ -f "$gn/npm.tar.xz" ] || { echo "no $gn/npm.tar.xz: run $0 --prepare on the development machine" >&2; exit 1; }
  [ -d /tmp/huozi-npm/npm ] || { mkdir -p /tmp/huozi-npm && tar -C /tmp/huozi-npm -xJf "$gn/npm.tar.xz"; }
  npm() { node /tmp/huozi-npm/npm/bin/npm-cli.js "$@"; }
fi
main_tgz=$gn/huozi-gguf-$version.tgz
[ -f "$main_tgz" ] || { echo "no $main_tgz: run $0 --prepare on the development machine" >&2; exit 1; }

work=$(mktemp -d /tmp/huozi-gpu-check.XXXXXX)
trap 'rm -rf "$work"' EXIT
if [ "$mode" = gpu ]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  t0=$(date +%s)
  node scripts/prebuild.mjs --gpu cuda --cuda-arch "$arch"
  echo "CUDA prebuild: $(( $(date +%s) - t0 )) s"
  pkgdir=packages/linux-x64-cuda
else
  # A stand-in with the CPU prebuild's files, packed from a copy: packages/linux-x64-cuda/bin is left alone.
  pkgdir=$work/linux-x64-cuda
  mkdir -p "$pkgdir/bin"
  cp packages/linux-x64-cuda/package.json packages/linux-x64-cuda/README.md LICENSE "$pkgdir/"
  cp prebuilds/linux-x64/* "$pkgdir/bin/"
  mv "$pkgdir/bin/node.napi.glibc.node" "$pkgdir/bin/huozi_gguf.node"
fi
cuda_tgz=$(cd "$pkgdir" && npm pack --ignore-scripts --pack-destination "$work" 2>/dev/null | tail -1)
ls -l "$main_tgz" "$work/$cuda_tgz"

app=$work/app; mkdir -p "$app"; cd "$app"
npm init -y >/dev/null
npm install --offline --ignore-scripts --no-audit --no-fund --cache "$gn/cache" "$main_tgz" "$work/$cuda_tgz"
ls node_modules/@huozi-gguf/linux-x64-cuda/bin

cat > check.mjs <<'JS'
import { ChatSession, demoModelPath, devices, loadModel, systemInfo } from 'huozi-gguf';
const expected = process.argv[2];
const info = systemInfo();
console.log(JSON.stringify({ backend: info.backend, addon: info.addon, backendsDir: info.backendsDir, backendError: info.backendError }, null, 2));
console.log(info.llamaCpp);
console.log('devices:', JSON.stringify(devices()));
const model = await loadModel(demoModelPath, { gpuLayers: 'max' });
const chat = new ChatSession(await model.createContext({ contextSize: 512 }));
const answer = await chat.prompt('请背诵《春晓》', { temperature: 0 });
console.log(answer.text);
const t = answer.generation.timings;
console.log(`prompt ${t.promptTokensPerSecond.toFixed(0)} t/s, generation ${t.tokensPerSecond.toFixed(0)} t/s`);
await model.dispose();
if (info.backend !== expected) { console.error(`FAIL: backend is ${info.backend}, expected ${expected}`); process.exit(1); }
if (!answer.text.includes('春眠不觉晓')) { console.error('FAIL: the answer is not the poem'); process.exit(1); }
console.log(`OK: ${expected}`);
JS
if [ "$mode" = gpu ]; then
  echo "== default (CUDA package, NVIDIA device present)"
  node check.mjs cuda
else
  echo "== default (no NVIDIA device here: the CPU prebuild; the stand-in CUDA package is passed over)"
  node check.mjs cpu
  echo "== HUOZI_BINDING at the stand-in CUDA package's addon"
  HUOZI_BINDING="$app/node_modules/@huozi-gguf/linux-x64-cuda/bin/huozi_gguf.node" node check.mjs cpu
fi
echo "== HUOZI_BACKEND=cpu"
HUOZI_BACKEND=cpu node check.mjs cpu
echo "gpu-pack-check ($mode): all passed"
