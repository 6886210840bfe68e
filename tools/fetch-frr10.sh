#!/usr/bin/env bash
# FRR 10 (Debian 13's frr 10.3) unpacked into a private folder, for interop tests that need
# `ip nhrp authentication` (Debian 12's FRR 8.4 lacks it). Nothing is installed system-wide: apt only
# downloads, with its own sources and lists, and the binaries run through trixie's own loader
# (see dmvpn.lab.frr). Idempotent: does nothing when the folder is complete.
set -euo pipefail
DEST=${FRR10_ROOT:-/opt/kube-dmvpn/frr10}
[[ -x "$DEST/root/usr/lib/frr/nhrpd" && -e "$DEST/.complete" ]] && exit 0
PACKAGES=(frr libyang3 libc6 libpcre2-8-0 libjson-c5 libcap2 libelf1t64 libprotobuf-c1 libssl3t64
          libreadline8t64 libcrypt1 libxxhash0 liblua5.3-0 libsystemd0 libzstd1 libtinfo6 libgcc-s1
          libcares2)
rm -rf "$DEST" && mkdir -p "$DEST"/{lists/partial,debs,root}
echo "deb [trusted=yes] http://deb.debian.org/debian trixie main" > "$DEST/sources.list"
APT=(-o Dir::Etc::SourceList="$DEST/sources.list" -o Dir::Etc::SourceParts=/dev/null
     -o Dir::State::Lists="$DEST/lists" -o APT::Get::List-Cleanup=0 -o APT::Sandbox::User=root)
echo "fetch-frr10: downloading ${PACKAGES[*]} (trixie) into $DEST"
apt-get "${APT[@]}" update -q >/dev/null
(cd "$DEST/debs" && apt-get "${APT[@]}" download "${PACKAGES[@]}" >/dev/null)
for deb in "$DEST"/debs/*.deb; do dpkg -x "$deb" "$DEST/root"; done
rm -rf "$DEST/lists" "$DEST/debs"
touch "$DEST/.complete"
