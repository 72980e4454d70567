#!/usr/bin/env bash
# Install everything Corral's real test bed needs on a fresh Debian 12 machine (run as root).
#
# Idempotent: safe to run again on a machine that already has everything. It installs
# packages and the Python venv only; it starts no daemon (testbed/daemons.py does that).
#
#   CORRAL_VENV   where the venv lives (default /opt/corral-venv)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CORRAL_VENV:-/opt/corral-venv}"
export DEBIAN_FRONTEND=noninteractive

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps.sh: must run as root" >&2
  exit 1
fi

# Foreign architectures: the test bed downloads busybox-static for arm64 and armhf.
foreign="$(dpkg --print-foreign-architectures)"
for arch in arm64 armhf; do
  if ! grep -qx "$arch" <<<"$foreign"; then
    dpkg --add-architecture "$arch"
  fi
done

# A mirror mid-sync can fail one index file (seen here: bookworm-security armhf). Retry,
# then go on with what was fetched: the install below fails loudly if a package is missing.
apt_update() {
  local try
  for try in 1 2 3; do
    if apt-get update; then
      return 0
    fi
    echo "install-deps.sh: apt-get update failed (try $try), retrying" >&2
    sleep $((try * 5))
  done
  echo "install-deps.sh: WARNING: apt-get update incomplete; continuing with the lists fetched" >&2
}
apt_update
apt-get install -y \
  docker.io qemu-user-static binfmt-support docker-registry postgresql \
  iproute2 iptables python3 python3-venv python3-pip git ca-certificates procps \
  util-linux apache2-utils wireguard-go wireguard-tools iperf3 iputils-ping

# Debian's postgresql package creates and may start a "15/main" cluster; the test bed
# uses its own throwaway cluster on port 55432, so the packaged one is left alone.

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -e "$REPO[test]"
# The test bed (testbed/, a pytest plugin) lives beside the corral package but is not part
# of the distribution: put the repository root on the venv's path so it imports anywhere.
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$REPO" > "$SITE/corral-testbed.pth"

# `corral` on the PATH for people (the scripts call the venv's copy directly).
ln -sf "$VENV/bin/corral" /usr/local/bin/corral

echo "install-deps.sh: done (venv: $VENV)"
