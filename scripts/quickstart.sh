#!/usr/bin/env bash
# Install everything, start a Corral server (embedded SQLite) and a local agent, deploy a
# multi-arch sample service and show it running. Fresh Debian 12, as root. Idempotent.
#
#   CORRAL_VENV   venv (default /opt/corral-venv)     CORRAL_PORT  server port (default 7443)
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CORRAL_VENV:-/opt/corral-venv}"
PORT="${CORRAL_PORT:-7443}"
DATA=/var/lib/corral
LOGS=/var/log/corral
export PATH="$VENV/bin:$PATH"

bash "$REPO/scripts/install-deps.sh"
mkdir -p "$LOGS"

echo "== test bed: dockerd, qemu binfmt, local registry, multi-arch busybox (built offline)"
IMAGE="$(cd "$REPO" && python -m testbed.up)"

echo "== corral server on https://127.0.0.1:$PORT (data: $DATA, SQLite)"
if ! curl -skf "https://127.0.0.1:$PORT/healthz" >/dev/null 2>&1; then
  setsid corral server --data-dir "$DATA" --listen "127.0.0.1:$PORT" >>"$LOGS/server.log" 2>&1 < /dev/null &
  for _ in $(seq 1 100); do
    curl -skf "https://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
    sleep 0.2
  done
fi
corral login "https://127.0.0.1:$PORT" --token "$(cat "$DATA/admin.token")"

echo "== corral agent (state: /var/lib/corral-agent)"
if ! pgrep -f "corral agent .*--state-dir /var/lib/corral-agent" >/dev/null; then
  JOIN="$(corral token join -o json | python -c 'import json,sys; print(json.load(sys.stdin)["token"])')"
  setsid corral agent --server "https://127.0.0.1:$PORT" --token "$JOIN" --label role=quickstart \
    --state-dir /var/lib/corral-agent \
    >>"$LOGS/agent.log" 2>&1 < /dev/null &
fi
for _ in $(seq 1 100); do
  corral host ls -o json | python -c 'import json,sys; sys.exit(not any(h["state"] == "ready" for h in json.load(sys.stdin)))' && break
  sleep 0.2
done
corral host ls

echo "== a multi-arch sample: $IMAGE"
corral image inspect "$IMAGE"
LOOP='while true; do echo "hello from $(uname -m)"; sleep 5; done'
if ! corral service inspect hello -o json >/dev/null 2>&1; then
  corral run --name hello --replicas 2 "$IMAGE" sh -c "$LOOP"
fi
# The arm64 build alone, pinned by digest: this host can only emulate it, so it must opt in.
ARM64="${IMAGE%:*}@$(corral image inspect "$IMAGE" -o json |
  python -c 'import json,sys; print(next(p["digest"] for p in json.load(sys.stdin)["platforms"] if p["platform"] == "linux/arm64"))')"
if ! corral service inspect hello-arm64 -o json >/dev/null 2>&1; then
  corral run --name hello-arm64 --allow-emulation "$ARM64" sh -c "$LOOP"
fi
corral ps
sleep 1
corral logs hello --tail 1
corral logs hello-arm64 --tail 1
echo
echo "Corral is running. Try: corral host ls | corral service ls | corral ps | corral logs -f hello"
