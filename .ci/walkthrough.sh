#!/usr/bin/env bash
# The README's "Write your own game" walkthrough, done as a new user would: its Cargo.toml and
# src/main.rs (the ```toml file=… and ```rust file=… blocks) copied into a fresh crate beside a
# checkout, built, and run as a 2-shard cluster that its own bots log into and play.
# Only the dependency path is rewritten: the README puts the checkout at ../zonescaler, here it
# is this repository. The build uses the dev profile; its dependency settings (README's
# [profile.dev.package."*"]) are the repository's, so it reuses what `cargo test --workspace`
# compiled under the same Cargo.lock. Were they to differ, every dependency would be rebuilt.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
game="$work/mygame"
mkdir -p "$game/src"
python3 - "$repo/README.md" "$game" <<'PY'
import re, sys, pathlib
readme, out = pathlib.Path(sys.argv[1]).read_text(), pathlib.Path(sys.argv[2])
blocks = re.findall(r"^```\w+ file=(\S+)\n(.*?)^```$", readme, flags=re.S | re.M)
files = {name: body for name, body in blocks}
assert set(files) == {"Cargo.toml", "src/main.rs"}, f"walkthrough files in README.md: {sorted(files)}"
for name, body in files.items():
    (out / name).write_text(body)
print("walkthrough: copied", ", ".join(sorted(files)), "from README.md")
PY
grep -q 'path = "../zonescaler/server"' "$game/Cargo.toml" \
  || { echo "walkthrough: Cargo.toml does not depend on ../zonescaler/server"; exit 1; }
sed -i "s#path = \"../zonescaler/server\"#path = \"$repo/server\"#" "$game/Cargo.toml"
cp "$repo/Cargo.lock" "$game/Cargo.lock"
export CARGO_TARGET_DIR="$repo/target"
(cd "$game" && cargo build -q)
exe="$repo/target/debug/mygame"

port=$(( 20000 + RANDOM % 20000 ))
run_dir="$work/run"
"$exe" up --shards 2 --port "$port" --link-port $(( port + 100 )) --http "127.0.0.1:$(( port + 200 ))" \
  --world "$repo/assets/worlds/default.toml" --run-dir "$run_dir" >"$work/up.log" 2>&1 &
up_pid=$!
cleanup() { kill -INT "$up_pid" 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 1 600); do
  [ -f "$run_dir/shard-1.pem" ] && break
  kill -0 "$up_pid" 2>/dev/null || { cat "$work/up.log"; echo "walkthrough: mygame up died"; exit 1; }
  sleep 0.1
done
[ -f "$run_dir/shard-1.pem" ] || { cat "$work/up.log"; echo "walkthrough: shards did not start"; exit 1; }
"$exe" bots --connect "127.0.0.1:$port" --cert "$run_dir/cluster.pem" --login-key "$run_dir/login.key" \
  --bots 10 --duration 5s --scenario border --report-json "$work/report.json" --quiet
python3 - "$work/report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
assert r["game"] == "mygame", f"the bots played {r['game']}"
assert r["bots_connected"] == 10, f"connected {r['bots_connected']} of 10"
assert r["snapshots_total"] > 0 and not r["errors"], f"snapshots {r['snapshots_total']}, errors {r['errors']}"
print(f"walkthrough: mygame ran as 2 shards; 10/10 bots played it, {r['snapshots_per_sec_p50']:.1f} snapshots/s")
PY
kill -INT "$up_pid"
for _ in $(seq 1 100); do kill -0 "$up_pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$up_pid" 2>/dev/null; then echo "walkthrough: mygame up did not stop on Ctrl-C"; exit 1; fi
trap - EXIT
if pgrep -f "$run_dir/shard-" >/dev/null; then echo "walkthrough: a shard outlived up"; exit 1; fi
rm -rf "$work"
echo "walkthrough: ok"
