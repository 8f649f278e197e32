#!/bin/bash
# How the alternated runs were made (2026-12-07 20:22-20:30). The factor was read from the
# environment by a temporary edit of the built gateway (dist/gateway/scaling.js):
#   input.concurrency * Number(process.env.DRAIN_FACTOR ?? 2) * restoreMs
# 2 was the shipped value, 3 the candidate. Rounds 1-4 and 5-8 of the 200 burst ran as two batches,
# the 1000 burst (rounds 1-2) between them. The quiet gate passed before every run.
cd /work/main
BURST=${BURST:-200}
OUT=${OUT:-/tmp/drain-ab}
for round in 1 2 3 4; do
  for f in 2 3; do
    DRAIN_FACTOR=$f node --import tsx bench/run.ts --functions spring-greeting --runtimes lazy \
      --only cold,burst --n 5 --burst "$BURST" --out "$OUT/f$f" > "$OUT/f$f-r$round.log" 2>&1
  done
done
