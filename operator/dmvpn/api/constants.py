"""Names of the kube-dmvpn API: group, version, kinds and their REST names.

Other layers (operator, agent, CLI, charts) import these instead of spelling the strings themselves.
"""

from typing import Final

GROUP: Final = "dmvpn.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = "dmvpn.io/v1alpha1"  # GROUP/VERSION, spelled out so it types as a Literal
#: The ``apiVersion`` string every object of this API carries (kept as its own name so that a future
#: ``v1beta1`` can change what "the spec version this build writes" means without touching GROUP).
SPEC_VERSION: Final = API_VERSION

KIND_HUB: Final = "DMVPNHub"
KIND_SPOKE: Final = "DMVPNSpoke"
KINDS: Final = (KIND_HUB, KIND_SPOKE)

PLURALS: Final = {KIND_HUB: "dmvpnhubs", KIND_SPOKE: "dmvpnspokes"}
SINGULARS: Final = {KIND_HUB: "dmvpnhub", KIND_SPOKE: "dmvpnspoke"}
#: ``dh``/``ds`` would clash with ``ds`` (DaemonSet), hence the three-letter forms.
SHORT_NAMES: Final = {KIND_HUB: ("dmh",), KIND_SPOKE: ("dms",)}
CATEGORIES: Final = ("dmvpn",)

DEFAULT_INTERFACE: Final = "dmvpn0"
DEFAULT_NHRP_SECRET_KEY: Final = "password"
DEFAULT_PSK_SECRET_KEY: Final = "psk"
DEFAULT_IKE_PROPOSAL: Final = "aes256gcm16-prfsha256-ecp256"
DEFAULT_ESP_PROPOSAL: Final = "aes256gcm16-ecp256"

#: Linux IFNAMSIZ is 16 including the terminating NUL.
IFNAME_MAX: Final = 15
UINT32_MAX: Final = 2**32 - 1
UINT16_MAX: Final = 2**16 - 1
#: Cisco (and RFC 2332 in practice) carries the NHRP authentication string in 8 octets.
NHRP_SECRET_MAX_BYTES: Final = 8
#: Below this an IKEv2 PSK is within reach of an offline dictionary attack on a captured exchange.
PSK_MIN_BYTES: Final = 16


def crd_name(kind: str) -> str:
    """``dmvpnhubs.dmvpn.io`` for ``DMVPNHub``: the CustomResourceDefinition's metadata.name."""
    return f"{PLURALS[kind]}.{GROUP}"
