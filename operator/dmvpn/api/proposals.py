"""A small grammar for strongSwan IKE/ESP proposals, so a typo fails at ``kubectl apply`` time.

A proposal is dash-separated algorithm tokens, e.g. ``aes256gcm16-prfsha256-ecp256``. We check that every
token is an algorithm strongSwan knows, that none is known to be unsafe, and that the combination makes a
complete proposal (a cipher; integrity unless the cipher is AEAD; a PRF for AEAD IKE; a key exchange for
IKE). Anything subtler is left to strongSwan, which reports it when the connection is loaded.
"""

import difflib
from typing import Annotated, Literal

from pydantic import Strict

from dmvpn.api.types import Checked, invalid

Protocol = Literal["ike", "esp"]

_AES_SIZES = ("128", "192", "256")
_AEAD = frozenset(
    {f"aes{size}{mode}{icv}" for size in _AES_SIZES for mode in ("gcm", "ccm") for icv in ("8", "12", "16")}
    | {f"aes{size}{mode}{bits}" for size in _AES_SIZES for mode in ("gcm", "ccm") for bits in ("64", "96")}
    | {f"aes{size}{mode}128" for size in _AES_SIZES for mode in ("gcm", "ccm")}
    | {f"camellia{size}ccm{icv}" for size in _AES_SIZES for icv in ("8", "12", "16")}
    | {"chacha20poly1305"}
)
_CIPHERS = frozenset(
    {"aes", *(f"aes{size}" for size in _AES_SIZES), *(f"aes{size}ctr" for size in _AES_SIZES)}
    | {*(f"camellia{size}" for size in _AES_SIZES), *(f"camellia{size}ctr" for size in _AES_SIZES)}
    | {"des", "3des", "cast128", "blowfish128", "blowfish192", "blowfish256", "null"}
    | {f"aes{size}gmac" for size in _AES_SIZES}
)
_INTEGRITY = frozenset(
    {"sha1", "sha1_160", "sha256", "sha2_256", "sha256_96", "sha2_256_96", "sha384", "sha2_384"}
    | {"sha512", "sha2_512", "aesxcbc", "aescmac", "md5", "md5_128"}
)
_PRF = frozenset({"prfsha1", "prfsha256", "prfsha384", "prfsha512", "prfaesxcbc", "prfaescmac", "prfmd5"})
_KEY_EXCHANGE = frozenset(
    {f"modp{bits}" for bits in ("768", "1024", "1536", "2048", "3072", "4096", "6144", "8192")}
    | {"modp1024s160", "modp2048s224", "modp2048s256"}
    | {"ecp192", "ecp224", "ecp256", "ecp384", "ecp521", "ecp224bp", "ecp256bp", "ecp384bp", "ecp512bp"}
    | {"curve25519", "x25519", "curve448", "x448", "mlkem512", "mlkem768", "mlkem1024"}
)
#: strongSwan 6 names additional key exchanges (RFC 9370) ``ke1_mlkem768`` .. ``ke7_...``.
_ADDITIONAL_KE_PREFIXES = tuple(f"ke{n}_" for n in range(1, 8))
_ESP_ONLY = frozenset({"esn", "noesn"})

_UNSAFE = {
    "des": "56-bit DES is broken",
    "3des": "3DES has a 64-bit block (Sweet32)",
    "cast128": "CAST-128 has a 64-bit block (Sweet32)",
    "blowfish128": "Blowfish has a 64-bit block (Sweet32)",
    "blowfish192": "Blowfish has a 64-bit block (Sweet32)",
    "blowfish256": "Blowfish has a 64-bit block (Sweet32)",
    "null": "it disables encryption",
    "aes128gmac": "GMAC authenticates only, it does not encrypt",
    "aes192gmac": "GMAC authenticates only, it does not encrypt",
    "aes256gmac": "GMAC authenticates only, it does not encrypt",
    "md5": "MD5 is broken",
    "md5_128": "MD5 is broken",
    "prfmd5": "MD5 is broken",
    "modp768": "768-bit MODP is breakable",
    "modp1024": "1024-bit MODP is breakable (RFC 8247)",
    "modp1024s160": "1024-bit MODP is breakable (RFC 8247)",
    "modp1536": "1536-bit MODP is below the 2048-bit minimum (RFC 8247)",
    "ecp192": "a 192-bit curve is below the 224-bit minimum",
}

_KNOWN = _AEAD | _CIPHERS | _INTEGRITY | _PRF | _KEY_EXCHANGE | _ESP_ONLY


def _key_exchange(token: str) -> str | None:
    """The key exchange method a token names (``ke1_mlkem768`` -> ``mlkem768``), or None."""
    for prefix in _ADDITIONAL_KE_PREFIXES:
        if token.startswith(prefix):
            token = token.removeprefix(prefix)
            break
    return token if token in _KEY_EXCHANGE else None


def _suggest(token: str) -> str | None:
    """The known algorithm a mistyped token most likely meant (``aes256gcm`` -> ``aes256gcm16``)."""
    lowered = token.lower()
    if lowered in _KNOWN:
        return lowered
    # A truncated name usually lacks its ICV length; 16 octets is the one to recommend.
    completions = sorted(
        (known for known in _KNOWN if known.startswith(lowered)),
        key=lambda known: (not known.endswith("16"), len(known), known),
    )
    if completions:
        return completions[0]
    close = difflib.get_close_matches(lowered, sorted(_KNOWN), n=1, cutoff=0.6)
    return close[0] if close else None


def _token_problem(token: str, protocol: Protocol) -> str | None:
    base = _key_exchange(token) or token
    if base not in _KNOWN:
        if not token:
            return "empty algorithm between dashes"
        hint = _suggest(token)
        suggestion = f"; did you mean {hint!r}?" if hint else ""
        return f"unknown algorithm {token!r}{suggestion}"
    if base in _UNSAFE:
        return f"{token!r} is not allowed: {_UNSAFE[base]}"
    if protocol == "esp" and base in _PRF:
        return f"{token!r} is a PRF, which only IKE proposals take"
    if protocol == "ike" and base in _ESP_ONLY:
        return f"{token!r} (extended sequence numbers) only applies to ESP proposals"
    return None


def _structure_problems(tokens: list[str], protocol: Protocol) -> list[str]:
    aead = [t for t in tokens if t in _AEAD]
    classic = [t for t in tokens if t in _CIPHERS]
    integrity = [t for t in tokens if t in _INTEGRITY]
    problems: list[str] = []
    if not aead and not classic:
        problems.append("needs a cipher such as aes256gcm16 or aes256")
    if aead and classic:
        problems.append(f"mixes AEAD {aead[0]!r} with non-AEAD {classic[0]!r}; use separate proposals")
    if aead and integrity:
        problems.append(f"AEAD cipher {aead[0]!r} authenticates by itself; remove {integrity[0]!r}")
    if classic and not integrity:
        problems.append(f"non-AEAD cipher {classic[0]!r} needs an integrity algorithm such as sha256")
    if protocol == "ike":
        if aead and not any(t in _PRF for t in tokens):
            problems.append(f"AEAD cipher {aead[0]!r} in IKE needs a PRF such as prfsha256")
        if not any(_key_exchange(t) for t in tokens):
            problems.append("IKE needs a key exchange (Diffie-Hellman group) such as ecp256 or x25519")
    return problems


def proposal_problems(proposal: str, protocol: Protocol) -> list[str]:
    """Everything wrong with one proposal string; empty if strongSwan should accept it."""
    tokens = proposal.split("-")
    problems = [p for p in (_token_problem(t, protocol) for t in tokens) if p]
    if not problems:
        problems = _structure_problems(tokens, protocol)
    return problems


def _checker(protocol: Protocol) -> Checked:
    def check(proposal: str) -> str:
        problems = proposal_problems(proposal, protocol)
        if problems:
            raise invalid(f"{protocol}_proposal", "; ".join(problems))
        return proposal

    # The grammar lives here, not in the CRD: the operator reports violations as a condition.
    return Checked(check, {"minLength": 1, "maxLength": 256, "pattern": "^[a-z0-9_]+(-[a-z0-9_]+)*$"})


IkeProposal = Annotated[str, Strict(), _checker("ike")]
EspProposal = Annotated[str, Strict(), _checker("esp")]
