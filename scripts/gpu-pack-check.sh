#!/usr/bin/env bash
# Checks the CUDA package end to end on a GPU machine, as a user gets it: builds the CPU and CUDA prebuilds there
# (16 cores), packs huozi-gguf and @huozi-gguf/linux-x64-cuda, installs both tarballs into a fresh folder with
# `npm install --offline --ignore-scripts`, and runs a program that prints systemInfo() (backend must be 'cuda'),
# loads the demo model with gpuLayers 'max' and generates; then the same with HUOZI_BACKEND=cpu (the fallback).
#
# The GPU machine has CUDA, cmake and a compiler but no Node, npm or network. Here, first:
#   bash /work/shared/tools/gpu-bundle.sh          # .gpu-bundle/: node, vendor/llama.cpp (node_modules unused)
#   bash scripts/gpu-pack-check.sh --prepare       # .gpu-npm/: npm's own JS, the runtime dependencies' tarballs
#                                                  # in an npm cache, cmake-js & co. for the build; compiles dist/
# then on the GPU machine, carrying .gpu-bundle/node.xz, .gpu-bundle/llama-src.tar.xz, .gpu-bundle/bootstrap.sh,
# .gpu-npm and dist (about 50 MiB with the tracked tree):
#   source .gpu-bundle/bootstrap.sh && bash scripts/gpu-pack-check.sh --build [--cuda-arch 90]   # the two builds
#   source .gpu-bundle/bootstrap.sh && bash scripts/gpu-pack-check.sh                            # pack, install, run
# (two calls: each stays under 10 minutes). To try it here without a GPU (the CPU prebuild, which must exist,
# stands in for the CUDA build):
#   bash scripts/gpu-pack-check.sh --dry-run
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd); cd "$root"
mode=gpu; arch=90; main_variants=all
while [ $# -gt 0 ]; do
  case "$1" in
    --prepare) mode=prepare ;;
    --build) mode=build ;;
    --dry-run) mode=dry-run ;;
    --cuda-arch) arch=$2; shift ;;
    --main-cpu-baseline) main_variants=baseline ;;   # --build: the main package's CPU prebuild with one variant
    *) echo "usage: $0 [--prepare | --build [--main-cpu-baseline] | --dry-run] [--cuda-arch 90]" >&2; exit 2 ;;
  esac
  shift
done
gn=$root/.gpu-npm
version=$(node -p "require('./package.json').version")

if [ "$mode" = prepare ]; then
  rm -rf "$gn"; mkdir -p "$gn/cache"
  grep -qxF "/.gpu-npm/" .git/info/exclude 2>/dev/null || echo "/.gpu-npm/" >> .git/info/exclude
  npm_dir=$(dirname "$(dirname "$(readlink -f "$(command -v npm)")")")
  tar -C "$(dirname "$npm_dir")" -cJf "$gn/npm.tar.xz" "$(basename "$npm_dir")"
  # package-lock.json's packages needed by `names`, as "node_modules/..." folders (nested ones inside their parent).
  closure() {
    node -e '
      const lock = require("./package-lock.json").packages; const seen = new Set();
      const walk = (key) => { if (seen.has(key) || !lock[key]) return; seen.add(key);
        for (const d of Object.keys({ ...lock[key].dependencies, ...lock[key].optionalDependencies })) {
          walk(lock[`${key}/node_modules/${d}`] ? `${key}/node_modules/${d}` : `node_modules/${d}`); } };
      process.argv.slice(1).forEach((n) => walk(`node_modules/${n}`));
      for (const k of seen) if (!k.slice(13).includes("/node_modules/")) console.log(k);' "$@"
  }
  # The runtime dependencies at the versions the lock pins, in an npm cache of their own (for --offline).
  for dir in $(closure $(node -p "Object.keys(require('./package.json').dependencies).join(' ')")); do
    npm cache add --cache "$gn/cache" "$(node -p "const p = require('./$dir/package.json'); p.name + '@' + p.version")" >/dev/null
  done
  # What scripts/prebuild.mjs needs on the GPU machine: cmake-js and the Node-API headers.
  tar -cJf "$gn/build-modules.tar.xz" $(closure cmake-js node-api-headers node-addon-api)
  npx tsc -p tsconfig.json
  du -sh "$gn"/* dist
  echo "carry .gpu-bundle/node.xz .gpu-bundle/llama-src.tar.xz .gpu-bundle/bootstrap.sh .gpu-npm dist; on the GPU machine:"
  echo "  source .gpu-bundle/bootstrap.sh && bash scripts/gpu-pack-check.sh --build --cuda-arch $arch"
  echo "  source .gpu-bundle/bootstrap.sh && bash scripts/gpu-pack-check.sh"
  exit 0
fi

if [ "$mode" != dry-run ]; then
  [ -d node_modules/cmake-js ] || tar -xJf "$gn/build-modules.tar.xz"
fi
if [ "$mode" = build ]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  t0=$(date +%s)
  [ -f prebuilds/linux-x64/node.napi.glibc.node ] || node scripts/prebuild.mjs --cpu-variants "$main_variants"
  t1=$(date +%s)
  node scripts/prebuild.mjs --gpu cuda --cuda-arch "$arch"
  t2=$(date +%s)
  echo "CPU prebuild: $(( t1 - t0 )) s, CUDA prebuild: $(( t2 - t1 )) s on $(nproc) cores"
  exit 0
fi

# npm: this machine's own in a dry run, else the copy from --prepare.
if [ "$mode" = gpu ] || ! command -v npm >/dev/null; then
  [ -f "$gn/npm.tar.xz" ] || { echo "no $gn/npm.tar.xz: run $0 --prepare on the development machine" >&2; exit 1; }
  [ -d /tmp/huozi-npm/npm ] || { mkdir -p /tmp/huozi-npm && tar -C /tmp/huozi-npm -xJf "$gn/npm.tar.xz"; }
  npm() { node /tmp/huozi-npm/npm/bin/npm-cli.js "$@"; }
fi
[ -f prebuilds/linux-x64/node.napi.glibc.node ] || { echo "no CPU prebuild: run $0 --build first" >&2; exit 1; }
[ -d dist ] || { echo "no dist/: run $0 --prepare on the development machine (it compiles the TypeScript)" >&2; exit 1; }
work=$(mktemp -d /tmp/huozi-gpu-check.XXXXXX)
trap 'rm -rf "$work"' EXIT
npm pack --ignore-scripts --pack-destination "$work" >/dev/null 2>&1
main_tgz=$work/huozi-gguf-$version.tgz
if [ "$mode" = gpu ]; then
  [ -f packages/linux-x64-cuda/bin/huozi_gguf.node ] || { echo "no CUDA prebuild: run $0 --build first" >&2; exit 1; }
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
cp -r "$gn/cache" "$work/cache"   # a copy: installing adds the tarballs to the cache it uses
npm install --offline --ignore-scripts --no-audit --no-fund --cache "$work/cache" "$main_tgz" "$work/$cuda_tgz"
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
