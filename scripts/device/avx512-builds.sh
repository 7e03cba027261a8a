#!/bin/bash
# Issue #13 on an Intel host with AVX-512 (the GPU machines' CPUs): the README's source build with and without
# ggml's AVX512-FP16 arithmetic, and the prebuild with every CPU variant, each checked against HF's logits
# (scripts/logits-check.mjs) and timed with llama-bench from its own libraries. Run from the repo root after
# `source .gpu-bundle/bootstrap.sh`, with dist/ carried; writes into ${OUT:-/tmp/out}.
set -u
out=${OUT:-/tmp/out}; mkdir -p "$out"
jobs=$(nproc)
lscpu > "$out/lscpu.txt"
grep -o 'avx512[a-z0-9_]*\|amx[a-z0-9_]*\|avx_vnni' /proc/cpuinfo | sort -u | tr '\n' ' ' >> "$out/lscpu.txt"
model=models/huozi-tiny-q4_0.gguf
python3 scripts/device/router-margins.py > "$out/router-margins.json" 2> "$out/router-margins.txt" &
bench() { # name llama-bench
  "$2" -m $model -p 512 -n 128 -t 1,2 -r 5 -o csv 2>/dev/null | awk -F, -v n="$1" 'NR>1{print n, $0}' >> "$out/bench.csv"
}
for variant in fp16 nofp16; do
  flag=; [ $variant = fp16 ] && flag=--fp16-arith
  start=$(date +%s)
  node scripts/build.mjs $flag --native-tools --jobs $jobs > "$out/build-$variant.log" 2>&1 || { echo "build $variant failed"; tail -20 "$out/build-$variant.log"; }
  echo "build $variant: $(( $(date +%s) - start )) s" >> "$out/times.txt"
  cp build/Release/huozi_gguf.node /tmp/$variant.node; cp .build/cmake/bin/llama-bench /tmp/bench-$variant
  HUOZI_BINDING=/tmp/$variant.node node scripts/logits-check.mjs > "$out/logits-$variant.txt" 2>&1
  bench native-$variant /tmp/bench-$variant
done
start=$(date +%s)
node scripts/prebuild.mjs --cpu-variants all --native-tools --jobs $jobs > "$out/build-prebuild.log" 2>&1 || tail -20 "$out/build-prebuild.log"
echo "build prebuild: $(( $(date +%s) - start )) s" >> "$out/times.txt"
pb=prebuilds/linux-x64/node.napi.glibc.node
for v in "" haswell; do
  HUOZI_BINDING=$PWD/$pb HUOZI_CPU_VARIANT=$v node scripts/logits-check.mjs > "$out/logits-prebuild${v:+-$v}.txt" 2>&1
done
bench prebuild .build/prebuild-cpu/bin/llama-bench
wait
echo done
