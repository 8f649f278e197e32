#!/bin/bash
# A/B in one quiet spell: 2c4d2a3 (the daemon polled until it listens) vs its status pipe.
for i in 1 2 3; do
  for v in head new; do
    dir=/work/main; [ $v = head ] && dir=/tmp/wt-head
    (cd $dir && node --import tsx bench/run.ts --functions hello-node,flask-table,spring-greeting,ts-compile --runtimes lazy --only cold --n 10 --out /tmp/ab5/$v-r$i > /tmp/ab5/$v-r$i.log 2>&1)
    echo "$v r=$i rc=$? $(uptime)"
  done
done
