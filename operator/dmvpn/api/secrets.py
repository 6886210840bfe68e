"""Checks for secret values, applied where a Secret (or, standalone, a file) is read.

The API only holds references to Secrets; their values reach the agent later, so these limits cannot be
part of the CRD schema. Readers call these helpers and report the error on the object's conditions.
"""

from dmvpn.api.constants import NHRP_SECRET_MAX_BYTES, PSK_MIN_BYTES


class SecretValueError(ValueError):
    """A secret's value is unusable; the message says why and what to do, without echoing the value."""


def _strip_final_newline(value: bytes) -> bytes:
    # `kubectl create secret --from-file` and editors add one; nobody means it as part of a key.
    if value.endswith(b"\r\n"):
        return value[:-2]
    return value.removesuffix(b"\n")


def validate_nhrp_secret(value: bytes) -> bytes:
    """The NHRP authentication string from a Secret value: 1..8 bytes, as IOS sends it on the wire.

    One trailing newline is removed first. Raises SecretValueError if empty or longer than 8 bytes
    (IOS silently truncates to 8; we refuse, so that both ends provably agree).
    """
    secret = _strip_final_newline(value)
    if not secret:
        raise SecretValueError("NHRP authentication secret is empty")
    if len(secret) > NHRP_SECRET_MAX_BYTES:
        raise SecretValueError(
            f"NHRP authentication secret is {len(secret)} bytes; NHRP carries at most "
            f"{NHRP_SECRET_MAX_BYTES} (ip nhrp authentication), shorten it"
        )
    return secret


def validate_ipsec_psk(value: bytes) -> bytes:
    """The IKE pre-shared key from a Secret value: at least 16 bytes after removing one final newline.

    Raises SecretValueError for a shorter key: a short PSK can be guessed offline from one captured
    IKE_AUTH exchange.
    """
    psk = _strip_final_newline(value)
    if len(psk) < PSK_MIN_BYTES:
        raise SecretValueError(
            f"IPsec pre-shared key is {len(psk)} bytes; use at least {PSK_MIN_BYTES} random bytes "
            "(e.g. openssl rand -base64 32)"
        )
    return psk
