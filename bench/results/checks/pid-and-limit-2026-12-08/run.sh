#!/bin/bash
# A/B in one quiet spell: a7b35cd (pid read after the CPU limit, written from node) vs side by side, the limit through the helper.
for i in 1 2 3; do
  for v in head new; do
    dir=/work/main; [ $v = head ] && dir=/tmp/wt-head
    (cd $dir && node --import tsx bench/run.ts --functions hello-node,flask-table,spring-greeting,ts-compile --runtimes lazy --only cold --n 10 --out /tmp/ab6/$v-r$i > /tmp/ab6/$v-r$i.log 2>&1)
    echo "$v r=$i rc=$? $(uptime)"
  done
done
