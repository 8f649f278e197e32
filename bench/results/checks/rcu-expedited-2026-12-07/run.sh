#!/bin/bash
# Alternated quiet cold runs, /sys/kernel/rcu_expedited 0 vs 1 (restored to 0 at the end).
set -u
out=/work/bench-out/rcu
cd /work/main
trap 'echo 0 > /sys/kernel/rcu_expedited' EXIT
for i in 1 2; do
  for e in 0 1; do
    echo $e > /sys/kernel/rcu_expedited
    node --import tsx bench/run.ts --functions hello-node,spring-greeting,flask-table,ts-compile --runtimes lazy \
      --only cold --n 10 --out $out/e$e-r$i --max-load 0.5 --quiet-wait 300 > $out/e$e-r$i.log 2>&1
    echo "$(date +%T) rcu_expedited=$e r$i rc=$?" >> $out/progress
  done
done
echo done >> $out/progress
