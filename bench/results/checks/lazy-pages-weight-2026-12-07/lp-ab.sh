#!/bin/bash
# Lazy-pages daemons in a low-weight cgroup (cpu.shares 128) vs where they are, alternated.
cd /work/main
for v in "$@"; do
  case $v in plain) w=/tmp/criu-lp-plain;; low) w=/tmp/criu-lp-low;; esac
  INITLESS_CRIU=$w timeout 1200 node --import tsx bench/restore.ts --functions flask-table,hello-node,spring-greeting,ts-compile --runtimes lazy --n 8 --concurrent 10 --mixed 10 --mixed-rounds 4 > /tmp/lp-$v-$(date +%H%M%S).log 2>&1
  rc=$?
  f=$(ls -t bench/results/restore-2*.json | head -1)
  echo "$v rc=$rc $f"
  python3 - "$f" <<'PY'
import json,sys
d=json.load(open(sys.argv[1]))
q=d.get('quiet',{})
print('  load',q.get('load1m'),'comparable',q.get('comparable'))
for r in d.get('restore',[]):
    if r['runtime']=='lazy': print('  ',r['function'],'p50',r['p50Ms'],'p95',r['p95Ms'])
c=d.get('concurrentLazy')
if c: print('  concurrent x3 p50',c['p50Ms'],'p95',c['p95Ms'],'ratio',c.get('ratioToAlone'))
m=d.get('mixed')
if m:
    print('  mixed errors',len(m.get('errors',[])) if isinstance(m.get('errors'),list) else m.get('errors'))
    for b in m.get('byFunction',[]): print('   ',{k:v for k,v in b.items() if k!='samplesMs'})
PY
done
