#!/bin/bash
# Alternated quiet cold runs: base (8f874fe, house after) vs head. Base predates bench/quiet.ts,
# so both wait here for a 1-minute load of 0.5 or less (up to 300 s) before each run.
set -u
out=/work/bench-out/bisect
quiet() {
  for _ in $(seq 60); do
    awk '{exit !($1 <= 0.5)}' /proc/loadavg && return 0
    sleep 5
  done
  echo "$(date +%T) not quiet: $(cat /proc/loadavg)" >> $out/progress
}
run() { # side dir n tag
  quiet
  local load; load=$(cut -d' ' -f1-3 /proc/loadavg)
  ( cd "$2" && node --import tsx bench/run.ts --functions hello-node,spring-greeting,flask-table --runtimes lazy \
      --only cold --n "$3" --state-dir /var/lib/initless-bench-$1 --out $out/$1-$4 ) \
      > $out/$1-$4.log 2>&1
  echo "$(date +%T) $1 $4 rc=$? load at start $load" >> $out/progress
}
run base /work/wt-base 1 bake
run head /work/main 1 bake
for i in 1 2; do
  run base /work/wt-base 10 r$i
  run head /work/main 10 r$i
done
echo done >> $out/progress
