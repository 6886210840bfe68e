"""The charon plugins kube-dmvpn's IPsec profiles need, loaded explicitly instead of "every installed one".

Debian's strongswan.conf sets ``load_modular = yes`` and each plugin's own ``load = yes``, so charon loads
whatever packages are installed. With ``libcharon-extra-plugins`` present that includes ``forecast``
(it forwards multicast and broadcast into SAs, so it inspects traffic itself): in the lab, a charon with
this list plus ``forecast`` used 1.9 CPU-seconds per 5 s while its SA carried iperf3, and the agent-built
path reached 41 % of a hand-built one's throughput; with this list alone charon used 0.1 s and the path
75 % (bench/agent_bench.py, same guest).

What each entry is for: IKE and ESP crypto (openssl, with the built-in aes/sha/hmac/gcm as fallbacks),
nonces and DRBGs, key derivation (kdf), PSK and x509 authentication (x509, pem, pkcs1, pkcs8, pubkey,
constraints, revocation), the kernel's xfrm and routes (kernel-netlink), IKE's UDP sockets
(socket-default) and the agent's control channel (vici).
"""

from __future__ import annotations

CHARON_PLUGINS: tuple[str, ...] = (
    "random",
    "nonce",
    "drbg",
    "openssl",
    "aes",
    "sha1",
    "sha2",
    "hmac",
    "gcm",
    "kdf",
    "x509",
    "pem",
    "pkcs1",
    "pkcs8",
    "pubkey",
    "constraints",
    "revocation",
    "kernel-netlink",
    "socket-default",
    "vici",
)


def charon_load_setting() -> str:
    """The value of strongswan.conf's ``charon.load`` (used with ``charon.load_modular = no``)."""
    return " ".join(CHARON_PLUGINS)
