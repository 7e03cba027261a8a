source .gpu-bundle/bootstrap.sh >/dev/null
export CI=true
numeric="test/native/logits.test.ts test/native/generate.test.ts test/native/seed.test.ts test/native/quantize.test.ts test/native/perplexity.test.ts"
node scripts/build.mjs --native-tools --jobs 16 > /tmp/b1.log 2>&1 || tail -5 /tmp/b1.log
node scripts/prebuild.mjs --cpu-variants all --native-tools --jobs 16 > /tmp/b2.log 2>&1 || tail -5 /tmp/b2.log
pb=$PWD/prebuilds/linux-x64/node.napi.glibc.node
run() { echo "== $1"; shift; env "$@" timeout 150 node node_modules/vitest/vitest.mjs run $numeric 2>&1 | tee -a $OUT/numeric.txt | grep -E "×|Test Files|Tests |max \|logit|imatrix:|perplexity -c" | sed 's/\x1b\[[0-9;]*m//g' | cut -c1-170; }
run source HUOZI_BINDING=$PWD/build/Release/huozi_gguf.node
run prebuild-best HUOZI_BINDING=$pb
run prebuild-haswell HUOZI_BINDING=$pb HUOZI_CPU_VARIANT=haswell
