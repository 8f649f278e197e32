# usage: corr.py <memwatch.sh output> <executor log, one JSON record per line>
# Each restore: seconds after the snapshot was stored, CRIU and restore ms, MiB dirty/writeback then.
import json,datetime,sys
mem=[l.split() for l in open(sys.argv[1])]
mem=[(float(a),int(b),int(c)) for a,b,c in mem]
def memat(t):
    best=min(mem,key=lambda m:abs(m[0]-t)); return best[1]//1024, best[2]//1024
commit=None
for l in open(sys.argv[2]):
    r=json.loads(l)
    t=datetime.datetime.fromisoformat(r['time'].replace('Z','+00:00')).timestamp()
    if 'stored' in r['msg']: commit=t; print('commit',r['time'])
    if r['msg']=='instance ready':
        print(round(t-(commit or t),1), 'criu', round(r.get('criuMs',0),1), 'restore', round(r.get('restoreMs',0),1), 'ready', round(r.get('readyMs',0),1), 'dirty/wb MiB', memat(t))
