#!/bin/bash
# A/B in one quiet spell: HEAD 0408751 (recheck at once) vs the deferred, coalesced recheck.
for i in 1 2 3; do   # the second set ran as 4 5 6
  for v in head new; do
    dir=/work/main; [ $v = head ] && dir=/tmp/wt-head
    (cd $dir && node --import tsx bench/run.ts --functions hello-node,flask-table,spring-greeting --runtimes lazy --only cold,burst --burst 200 --n 10 --out /tmp/ab2/$v-r$i > /tmp/ab2/$v-r$i.log 2>&1)
    echo "$v r=$i rc=$? $(uptime)"
  done
done
