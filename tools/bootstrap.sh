#!/usr/bin/env bash
# Installs what the project needs on a fresh Debian 12 machine (as root): apt packages, then the
# virtualenv with the package and its dev tools. Fast when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  python3 python3-venv python3-pip make git
  # the kernel lab: a stock Debian kernel booted under QEMU by virtme-ng
  qemu-system-x86 linux-image-amd64 busybox-static kmod udev
  # the data plane's real peers and tools
  iproute2 iputils-ping procps psmisc tcpdump tshark nftables iptables iperf3 ethtool
  strongswan-charon strongswan-swanctl libcharon-extra-plugins libstrongswan-standard-plugins
  frr containernetworking-plugins
)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "bootstrap: apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# kubectl (tests/controller/test_kubectl.py drives the API emulator with it): Debian's package only when
# none is on PATH, so a kubectl installed another way is kept.
if ! command -v kubectl >/dev/null; then
  echo "bootstrap: apt-get install kubernetes-client (no kubectl on PATH)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends kubernetes-client
fi
# frr and strongswan start services on install; the lab runs its own instances per namespace.
for svc in frr strongswan-starter; do
  command -v systemctl >/dev/null && systemctl disable --now "$svc" >/dev/null 2>&1 || true
done

bash tools/fetch-frr10.sh

VENV=${VENV:-.venv}
stamp="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [[ ! -e "$stamp" ]]; then
  echo "bootstrap: virtualenv $VENV"
  [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e '.[dev]'
  rm -f "$VENV"/.installed-*
  touch "$stamp"
fi
