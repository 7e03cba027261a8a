#!/bin/bash
# Issue #13 on an Intel host with AVX-512 (the GPU machines' CPUs): the README's source build with and without
# ggml's AVX512-FP16 arithmetic, and the prebuild with every CPU variant (best and AVX2 baseline), each checked
# against HF's logits (scripts/logits-check.mjs), for seeded reproducibility (scripts/device/seed-check.mjs) and
# timed with llama-bench from its own libraries. HF's router margins come from scripts/device/router-margins.py.
# Run from the repo root after `source .gpu-bundle/bootstrap.sh`, with dist/ carried; writes into ${OUT:-/tmp/out}:
# report.txt, bench.csv, router-margins.json.
set -u
out=${OUT:-/tmp/out}; mkdir -p "$out"; r="$out/report.txt"
jobs=$(nproc)
{ lscpu | grep -E 'Model name|^CPU\(s\)'; grep -o 'avx512[a-z0-9_]*\|amx[a-z0-9_]*\|avx_vnni' /proc/cpuinfo | sort -u | tr '\n' ' '; echo; } >> "$r"
model=models/huozi-tiny-q4_0.gguf
python3 scripts/device/router-margins.py > "$out/router-margins.json" 2> /tmp/router.txt &
bench() { # name llama-bench
  "$2" -m $model -p 512 -n 128 -t 1,2 -r ${REPS:-5} -o csv 2>/dev/null | awk -F, -v n="$1" 'NR>1{print n","$0}' >> "$out/bench.csv"
}
check() { # name, env...
  local name=$1; shift
  echo "== $name" >> "$r"
  env "$@" node scripts/logits-check.mjs >> "$r" 2>&1
  env "$@" node scripts/device/seed-check.mjs 16 >> "$r" 2>&1
}
for variant in ${VARIANTS:-nofp16 fp16}; do
  flag=; [ $variant = fp16 ] && flag=--fp16-arith
  start=$(date +%s)
  node scripts/build.mjs $flag --native-tools --jobs $jobs > /tmp/build-$variant.log 2>&1 || { echo "build $variant failed" >> "$r"; tail -20 /tmp/build-$variant.log >> "$r"; }
  echo "build $variant: $(( $(date +%s) - start )) s; $(grep -c 'Building' /tmp/build-$variant.log) objects compiled" >> "$r"
  cp build/Release/huozi_gguf.node /tmp/$variant.node; cp .build/cmake/bin/llama-bench /tmp/bench-$variant
  check native-$variant HUOZI_BINDING=/tmp/$variant.node
  bench native-$variant /tmp/bench-$variant
done
if [ -z "${NO_PREBUILD:-}" ]; then
  start=$(date +%s)
  node scripts/prebuild.mjs --cpu-variants all --native-tools --jobs $jobs > /tmp/build-prebuild.log 2>&1 || tail -20 /tmp/build-prebuild.log >> "$r"
  echo "build prebuild: $(( $(date +%s) - start )) s" >> "$r"
  pb=$PWD/prebuilds/linux-x64/node.napi.glibc.node
  check prebuild HUOZI_BINDING=$pb
  check prebuild-haswell HUOZI_BINDING=$pb HUOZI_CPU_VARIANT=haswell
  bench prebuild .build/prebuild-cpu/bin/llama-bench
fi
wait; cat /tmp/router.txt | grep sequence >> "$r"
echo done >> "$r"
