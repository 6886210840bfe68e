"""Throw-away test PKI made with the openssl command line: one EC CA and leaf certificates signed by it."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Leaf:
    certificate_pem: bytes
    private_key_pem: bytes


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_ca(workdir: Path, name: str = "dmvpn test CA") -> bytes:
    """Create ``ca.key``/``ca.crt`` in ``workdir``; returns the CA certificate PEM."""
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key", cwd=workdir)
    _openssl(
        "req", "-x509", "-new", "-key", "ca.key", "-subj", f"/O=dmvpn-test/CN={name}", "-days", "2",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-out", "ca.crt", cwd=workdir,
    )  # fmt: skip
    return (workdir / "ca.crt").read_bytes()


def make_leaf(workdir: Path, name: str, ip: str) -> Leaf:
    """A certificate for ``CN=name`` with ``ip`` as subjectAltName, signed by the CA in ``workdir``."""
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{name}.key", cwd=workdir)
    _openssl(
        "req", "-new", "-key", f"{name}.key", "-subj", f"/O=dmvpn-test/CN={name}", "-out", f"{name}.csr", cwd=workdir
    )
    (workdir / f"{name}.ext").write_text(f"subjectAltName=IP:{ip}\nextendedKeyUsage=serverAuth,clientAuth\n")
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=workdir,
    )  # fmt: skip
    return Leaf((workdir / f"{name}.crt").read_bytes(), (workdir / f"{name}.key").read_bytes())
