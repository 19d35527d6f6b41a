# Steps shared by the end-to-end scripts that run `zonescaler up` and watch its master's API
# (crowd.sh, join_drain.sh). Source it; each function says what it takes.

# wait_up NAME DIR SHARDS UP_PID: wait until the last shard wrote its certificate (the cluster
# formed), then 2 s; exit 1 with up's log if up died first.
wait_up() {
  local name=$1 dir=$2 shards=$3 up_pid=$4
  for _ in $(seq 1 1200); do
    [ -f "$dir/shard-$(( shards - 1 )).pem" ] && break
    kill -0 "$up_pid" 2>/dev/null || { cat "$dir/up.log"; echo "$name: up died"; exit 1; }
    sleep 0.1
  done
  sleep 2
}

# start_sampler NAME HTTP DIR [EVERY_S]: sample GET /api/cluster every EVERY_S seconds (default
# 1) into DIR/samples.jsonl (each with its time "t") until DIR/stop exists; runs in the
# background, its pid in $sampler. HTTP may name several shards' API addresses, comma-separated:
# the one that answered last is asked first (a shard without the master role redirects to it;
# one that is down is skipped), so the samples go on while the master role moves.
start_sampler() {
  python3 - "$1" "$2" "$3/samples.jsonl" "$3/stop" "${4:-1}" <<'PY' &
import json, os, sys, time, urllib.request
name, http, out, stop, every = sys.argv[1:6]
apis = http.split(",")
with open(out, "w") as f:
    while not os.path.exists(stop):
        errors = []
        for api in list(apis):
            try:
                v = json.load(urllib.request.urlopen(f"http://{api}/api/cluster", timeout=2))
                v["t"] = time.time()
                f.write(json.dumps(v) + "\n"); f.flush()
                apis.remove(api); apis.insert(0, api)
                break
            except Exception as e:
                errors.append(f"{api}: {e}")
        else:
            print(f"{name}: sample failed:", "; ".join(errors), file=sys.stderr)
        time.sleep(float(every))
PY
  sampler=$!
}

# wait_settled HTTP DIR: the bots' avatars go when their connections do, a redirected one whose
# client never came only after REDIRECT_WAIT_MS (15 s), and one handed on while it waited can
# take longer: wait 16 s, then at most 45 s more until the player directory is empty and
# total_entities is back at the first sample's, three reads in a row. Writes when that was (or
# when it gave up) to DIR/settled, so the "after" figures start there.
wait_settled() {
  python3 - "$1" "$2/samples.jsonl" "$2/settled" <<'PY' || true
import json, sys, time, urllib.request
http, samples, settled = sys.argv[1:4]
# The median of the first samples (the world before the bots): one read can catch an NPC on its
# way between two shards' heartbeats, counted on both or on neither.
# Only samples without players: the bots may start within the first five.
early = [json.loads(l) for l in open(samples).readlines()[:5]]
head = sorted(s["total_entities"] for s in early if s["players"] == 0) or [early[0]["total_entities"]]
first = head[len(head) // 2]
time.sleep(16)
# Three reads in a row: one read can catch an NPC between two shards' heartbeats (counted on
# neither) while a redirected avatar is still waiting for its client.
good = 0
for _ in range(45):
    v = json.load(urllib.request.urlopen(f"http://{http}/api/cluster", timeout=5))
    good = good + 1 if v["total_entities"] == first and v["players"] == 0 else 0
    if good >= 3:
        break
    time.sleep(1)
open(settled, "w").write(str(time.time()))
PY
}