#!/bin/bash
# Source build vs prebuild on this CPU, each with llama-bench linked to its own libraries, alternating rounds
# (huozi-tiny q4_0, pp512 and tg128 at 1 and 2 threads). Output: ${OUT}/speed.csv (build,round,test,threads,t/s).
set -u
out=${OUT:-/tmp/out}; mkdir -p "$out"; jobs=$(nproc)
node scripts/build.mjs --native-tools --jobs $jobs > /tmp/b-src.log 2>&1 || tail -5 /tmp/b-src.log
node scripts/prebuild.mjs --cpu-variants all --native-tools --jobs $jobs > /tmp/b-pre.log 2>&1 || tail -5 /tmp/b-pre.log
for round in $(seq 1 ${ROUNDS:-4}); do
  for b in source:.build/cmake/bin/llama-bench prebuild:.build/prebuild-cpu/bin/llama-bench; do
    "${b#*:}" -m models/huozi-tiny-q4_0.gguf -p 512 -n 128 -t 1,2 -r 3 -o json 2>/dev/null |
      node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{for(const r of JSON.parse(s))console.log([process.argv[1],process.argv[2],r.n_prompt?"pp512":"tg128",r.n_threads,r.avg_ts.toFixed(0)].join(","))})' "${b%%:*}" $round >> "$out/speed.csv"
  done
done
