#!/bin/bash
# HEAD (neighbour flush, new profile) vs 3d55dd8 with its own helper build, alternated.
for v in "$@"; do
  case $v in A) d=/tmp/wtA; export INITLESS_SANDBOX_HELPER=/tmp/wtA-native/initless-sandbox-helper;; B) d=/work/main; unset INITLESS_SANDBOX_HELPER;; esac
  cd $d && timeout 900 node --import tsx bench/run.ts --functions hello-node --runtimes lazy --only cold --n 12 > /tmp/ab3-$v-$(date +%H%M%S).log 2>&1
  f=$(ls -t $d/bench/results/2*.json | head -1)
  python3 -c "
import json;d=json.load(open('$f'));q=d['quiet']
print('$v', '$f'.split('/')[-1], 'load',q['load1m'],q['comparable'],' | '.join(f\"{c['function'][:6]} {c['p50Ms']} p95 {c['p95Ms']} {c['phasesP50Ms']}\" for c in d['coldStart']))"
done
