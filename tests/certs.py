"""A throw-away CA and a certificate it signed, made with openssl for one test module."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Certs:
    ca: Path
    cert: Path
    key: Path


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=30)


def make_certs(d: Path, names: str, cn: str = "logwarden test CA") -> Certs:
    """A CA named ``cn`` in ``d`` and a certificate for ``names``, the subjectAltName list
    (``DNS:www.example.com,IP:127.0.0.1``), signed by it."""
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", d / "ca.key", "-out", d / "ca.pem", "-days", "1",
             "-subj", f"/CN={cn}")
    _openssl("req", *ec, "-keyout", d / "node.key", "-out", d / "node.csr",
             "-subj", f"/CN={names.split(',')[0].partition(':')[2]}")
    (d / "san.ext").write_text(f"subjectAltName={names}\n")
    _openssl("x509", "-req", "-in", d / "node.csr", "-CA", d / "ca.pem", "-CAkey", d / "ca.key",
             "-CAcreateserial", "-days", "1", "-extfile", d / "san.ext", "-out", d / "node.pem")
    return Certs(d / "ca.pem", d / "node.pem", d / "node.key")
