#!/usr/bin/env bash
# Chaos (issue 9, acceptance item 3): `zonescaler up --shards SHARDS`, BOTS bots walking across
# borders for DURATION, and every KILL_EVERY seconds of the bots' run a `kill -9` of a random
# shard process, which `up` restarts (it joins again as a new member). The process holding the
# master role is a candidate only with INCLUDE_MASTER=1: then the first kill is the master's
# (found through the API: the others elect a successor) and the later ones any process's.
# The samples and audits go to whichever shard holds the master role (any shard's API points to
# it). Checked:
# - the master's ownership audit (`GET /api/audit`, polled every second for the whole run,
#   with the operator's token) never finds an entity owned by two shards: no audit lists a
#   duplicate and `duplicates_total` stays 0;
# - nothing is lost or doubled: once the bots left, `total_entities` (`GET /api/cluster`) and
#   the audit's `distinct_entities` equal the count before the bots (the world's NPCs), each the
#   median of the last samples (an NPC crossing a border between two shards' reports counts
#   on both or on neither for a moment);
# - every kill was seen and restarted by `up`, and every bot logged in;
# - the bots were playing (their own avatar in view, snapshots coming) at least PLAYING_BAR
#   (0.95) of their runs on average (`playing_fraction_mean` of their report).
# Printed: the seed (SEED=N picks the same victims), each kill, the audits (how many, how many
# complete, the largest owned/in-transit/distinct counts), the bots' failovers and gaps.
# On a duplicate: the audit's listing and the shard-log lines that name the entity.
# Defaults fit CI on a 2-core machine; the acceptance run is BOTS=500 DURATION=180s KILL_EVERY=20.
# Usage: [SHARDS=4] [BOTS=200] [DURATION=60s] [KILL_EVERY=20] [INCLUDE_MASTER=0]
#        [PLAYING_BAR=0.95] [SEED=N] [OUT_DIR=dir] bash .ci/chaos.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. .ci/cluster_lib.sh
shards=${SHARDS:-4}
bots=${BOTS:-200}
duration=${DURATION:-60s}
kill_every=${KILL_EVERY:-20}
include_master=${INCLUDE_MASTER:-0}
playing_bar=${PLAYING_BAR:-0.95}
seed=${SEED:-$(( RANDOM * 32768 + RANDOM ))}
duration_s=${duration%s}
case "$duration_s" in ''|*[!0-9]*) echo "chaos: DURATION must be whole seconds, like 60s (got $duration)"; exit 2;; esac
case "$include_master" in 0|1) ;; *) echo "chaos: INCLUDE_MASTER is 0 or 1 (got $include_master)"; exit 2;; esac
[ "$shards" -ge 2 ] || { echo "chaos: SHARDS must be at least 2"; exit 2; }
dir=${OUT_DIR:-$(mktemp -d)}
mkdir -p "$dir"
port=$(( 20000 + RANDOM % 20000 ))
http="127.0.0.1:$(( port + 200 ))"
# Every shard's API address (shard i serves on --http's port + i), shard 0's first.
apis=""
for i in $(seq 0 $(( shards - 1 ))); do apis="$apis${apis:+,}127.0.0.1:$(( port + 200 + i ))"; done
# Without OUT_DIR: cargo hands that variable to the compiler, so each new value rebuilt the
# binary (minutes on 2 cores).
env -u OUT_DIR cargo build -q --release -p zonescaler-server --bin zonescaler
exe="${CARGO_TARGET_DIR:-target}/release/zonescaler"
began=$(date +%s)
echo "chaos: seed $seed (SEED=$seed picks the same victims), $shards shards, $bots border bots for $duration, a kill -9 every ${kill_every}s, master included: $include_master; output in $dir"
RANDOM=$seed

"$exe" up --shards "$shards" --port "$port" --link-port $(( port + 100 )) --http "$http" \
  --metrics-port $(( port + 300 )) --run-dir "$dir" >"$dir/up.log" 2>&1 &
up_pid=$!
bots_pid=
cleanup() {
  [ -n "$bots_pid" ] && kill "$bots_pid" 2>/dev/null || true
  kill -INT "$up_pid" 2>/dev/null || true
}
trap cleanup EXIT
wait_up chaos "$dir" "$shards" "$up_pid"
token=$(cat "$dir/api.token")

# The master's view every second (total_entities before and after), and its audit every second
# (every audit it takes), until DIR/stop.
start_sampler chaos "$apis" "$dir" 1
python3 - "$apis" "$token" "$dir/audits.jsonl" "$dir/stop" <<'PY' &
import json, os, sys, time, urllib.request
apis, token, out, stop = sys.argv[1:5]
apis = apis.split(",")
with open(out, "w") as f:
    while not os.path.exists(stop):
        t = time.time()
        v = {"t": t, "error": "no shard answered"}
        # The one that answered last first; a shard without the master role redirects to it.
        for api in list(apis):
            req = urllib.request.Request(f"http://{api}/api/audit",
                                         headers={"Authorization": f"Bearer {token}"})
            try:
                v = json.load(urllib.request.urlopen(req, timeout=5))
                v["t"] = t
                apis.remove(api); apis.insert(0, api)
                break
            except Exception as e:
                v = {"t": t, "error": f"{api}: {e}"}
        f.write(json.dumps(v) + "\n"); f.flush()
        time.sleep(max(0.0, 1.0 - (time.time() - t)))
PY
auditor=$!
# The first samples see the world before the bots and the kills: its NPCs.
sleep 4.5
date +%s.%N >"$dir/bots_began"

"$exe" bots --connect "127.0.0.1:$port" --cert "$dir/cluster.pem" --login-key "$dir/login.key" \
  --bots "$bots" --duration "$duration" --scenario border --seed "$seed" \
  --report-json "$dir/report.json" --quiet >"$dir/bots.log" 2>&1 &
bots_pid=$!
bots_began=$(date +%s)
# The process (shard-K) that holds the master role now: the master's client port less up's.
master_process() {
  python3 - "$apis" "$port" <<'PY'
import json, sys, urllib.request
apis, port = sys.argv[1].split(","), int(sys.argv[2])
for api in apis:
    try:
        v = json.load(urllib.request.urlopen(f"http://{api}/api/cluster", timeout=3))
        addr = next(s["addr"] for s in v["shards"] if s["id"] == v["master"])
        print(int(addr.rsplit(":", 1)[1]) - port); break
    except Exception:
        continue
PY
}
: >"$dir/kills.log"
next=$kill_every
while [ "$next" -lt "$duration_s" ]; do
  sleep $(( bots_began + next - $(date +%s) > 0 ? bots_began + next - $(date +%s) : 0 ))
  kill -0 "$bots_pid" 2>/dev/null || break
  master=$(master_process)
  if [ "$include_master" = 1 ] && [ "$next" = "$kill_every" ] && [ -n "$master" ]; then
    k=$master
  else
    # Any process but the master's (unless INCLUDE_MASTER=1).
    k=$(( RANDOM % shards ))
    if [ "$include_master" = 0 ] && [ "$k" = "${master:-0}" ]; then k=$(( (k + 1 + RANDOM % (shards - 1)) % shards )); fi
  fi
  victim=$(pgrep -f -- "--cert-out $dir/shard-$k.pem" | head -n 1 || true)
  if [ -z "$victim" ]; then
    echo "chaos: ${next}s: shard-$k has no process (up is restarting it): no kill this round"
  else
    kill -9 "$victim"
    echo "$(date +%s.%N) $next $k $victim $([ "$k" = "$master" ] && echo 1 || echo 0)" >>"$dir/kills.log"
    echo "chaos: ${next}s: kill -9 shard-$k (pid $victim)$([ "$k" = "$master" ] && echo ', the master')"
  fi
  next=$(( next + kill_every ))
done
bots_rc=0
wait "$bots_pid" || bots_rc=$?
bots_pid=
# Until the bots' avatars are gone and total_entities is back, at most about a minute.
wait_settled "$http" "$dir"
sleep 6 # a few audits of the settled world (an audit reads reports up to a second old)
touch "$dir/stop"; wait "$sampler" "$auditor" 2>/dev/null || true

status=0
python3 - "$dir" "$bots" "$playing_bar" "$bots_rc" <<'PY' || status=1
import json, sys
d, bots, bar, bots_rc = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
problems = []
kills = [l.split() for l in open(f"{d}/kills.log") if l.strip()]
samples = [json.loads(l) for l in open(f"{d}/samples.jsonl") if l.strip()]
audits = [json.loads(l) for l in open(f"{d}/audits.jsonl") if l.strip()]
answered = [a for a in audits if "error" not in a]
failed = len(audits) - len(answered)
if not samples or not answered:
    sys.exit("chaos: no sample of /api/cluster or /api/audit")
# The world before the bots: its NPCs. Medians: shards report at different moments, so an NPC
# crossing a border between two reports counts on both or on neither for a moment, in the
# heartbeats' total_entities and in an audit's distinct_entities alike.
med = lambda v: sorted(v)[len(v) // 2]
began = float(open(f"{d}/bots_began").read())
world = med([s["total_entities"] for s in samples if s["t"] < began] or [samples[0]["total_entities"]])
# Every audit the master took, once each (the poll can see one twice, or miss one).
taken = {(a["at_ms"], a["audits_total"]): a for a in answered}
dups = [a for a in taken.values() if a["duplicates"] > 0]
complete = sum(1 for a in taken.values() if a["complete"])
last = answered[-1]
span = answered[-1]["t"] - answered[0]["t"]
print(f"chaos: {len(kills)} kills; {len(audits)} polls of /api/audit over {span:.0f} s ({failed} unanswered), "
      f"{len(taken)} distinct audits, {complete} of them complete (every live shard's report in); "
      f"the master's audits_total {last['audits_total']}, duplicates_total {last['duplicates_total']}")
print(f"chaos: per audit: total_owned max {max(a['total_owned'] for a in taken.values())}, "
      f"total_in_transit max {max(a['total_in_transit'] for a in taken.values())}, "
      f"distinct_entities min {min(a['distinct_entities'] for a in taken.values() if a['complete'])} "
      f"max {max(a['distinct_entities'] for a in taken.values())}, "
      f"handed_between_reports max {max(a['handed_between_reports'] for a in taken.values())}")
# The API is away while the shards elect a new master (1.5 s of silence and the vote): a few
# polls per master killed.
master_kills = sum(1 for k in kills if len(k) > 4 and k[4] == "1")
if failed > 2 + 4 * master_kills:
    problems.append(f"{failed} polls of /api/audit unanswered ({master_kills} masters killed)")
if dups or last["duplicates_total"] > 0:
    problems.append(f"entities owned twice: {len(dups)} audits with duplicates, duplicates_total {last['duplicates_total']}")
    shown = dups[0]["listed"] if dups else last["last_duplicates"]
    print("chaos: first duplicates listed:", json.dumps(shown[:5]))
    open(f"{d}/duplicate_ids", "w").write("\n".join(x["id"] for x in shown[:5]) + "\n")
# After the bots' avatars went (wait_settled: players 0 and the count back, or it gave up).
settled_at = float(open(f"{d}/settled").read())
tail = sorted(s["total_entities"] for s in samples if s["t"] > settled_at) or \
    sorted(s["total_entities"] for s in samples[-10:])
final = med(tail)
print(f"chaos: total_entities {world} before the bots and the kills (median), {final} after "
      f"they left (median of the samples since they settled: {tail})")
if final != world:
    problems.append(f"total_entities {final} after, {world} before: {'lost' if final < world else 'doubled'} {abs(final - world)}")
settled = [a for a in answered if a["t"] > settled_at + 2 and a["complete"]]
held = med([a["distinct_entities"] for a in settled]) if settled else None
print(f"chaos: the last audits' distinct_entities {[a['distinct_entities'] for a in settled]}")
if held is None:
    problems.append("no complete audit after the bots left")
elif held != world:
    problems.append(f"the last audits hold {held} distinct entities (median), {world} before")
r = json.load(open(f"{d}/report.json"))
print(f"chaos: bots {r['bots_connected']}/{bots} connected; playing {100 * r['playing_fraction_mean']:.1f}% "
      f"of their runs on average (min {100 * r['playing_fraction_min']:.1f}%); failovers {r['failovers']} "
      f"({r['resumes']} resumed, {r['resumes_failed']} resumes failed, {r['relogins']} logged in anew), "
      f"gap p50 {r['failover_gap_ms_p50']:.0f} p99 {r['failover_gap_ms_p99']:.0f} max {r['failover_gap_ms_max']:.0f} ms; "
      f"handoffs {r['handoffs']} (gap p99 {r['handoff_gap_ms_p99']:.0f} ms); snapshots/s p50 {r['snapshots_per_sec_p50']:.1f}")
print(f"chaos: bots' errors: {r['errors']}")
if r["bots_connected"] != bots:
    problems.append(f"connected {r['bots_connected']} of {bots}")
if r["playing_fraction_mean"] < bar:
    problems.append(f"bots playing {100 * r['playing_fraction_mean']:.1f}% of their runs < {100 * bar:.0f}%")
if bots_rc != 0:
    problems.append(f"the bots exited {bots_rc}")
if problems:
    print("chaos FAILED: " + "; ".join(problems)); sys.exit(1)
PY
if [ -f "$dir/duplicate_ids" ]; then
  while read -r id; do
    echo "chaos: shard log lines naming $id:"
    grep -h -- "$id" "$dir"/shard-*.log | tail -n 20 || true
  done <"$dir/duplicate_ids"
fi
# Every kill was seen by `up` and the shard restarted: as many restarts of each as it was killed.
for k in $(awk '{print $3}' "$dir/kills.log" | sort -u); do
  killed=$(awk -v k="$k" '$3 == k' "$dir/kills.log" | wc -l)
  restarted=$(grep -c "zonescaler up: restarting shard-$k " "$dir/up.log" || true)
  if [ "$restarted" -lt "$killed" ]; then
    echo "chaos FAILED: shard-$k killed $killed times, restarted $restarted times by up"; status=1
  fi
done
[ -s "$dir/kills.log" ] || { echo "chaos FAILED: no shard was killed (DURATION shorter than KILL_EVERY?)"; status=1; }
if ! kill -0 "$up_pid" 2>/dev/null; then
  tail -n 30 "$dir/up.log"; echo "chaos FAILED: zonescaler up is gone"; status=1
fi
kill -INT "$up_pid" 2>/dev/null || true
for _ in $(seq 1 100); do kill -0 "$up_pid" 2>/dev/null || break; sleep 0.1; done
trap - EXIT
echo "chaos: took $(( $(date +%s) - began )) s"
[ "$status" -eq 0 ] || { echo "chaos: output kept in $dir"; exit 1; }
echo "chaos: ok"
[ -n "${OUT_DIR:-}" ] || rm -rf "$dir"
