"""The test bed's certificates (a CA, the API server's and the webhooks' serving certificates) and kubeconfigs."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

ADMIN_TOKEN_USER = "slipway-admin"


def openssl(*args: str) -> None:
    """Run ``openssl`` with these arguments (fails loudly)."""
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def issue(pki: Path, cn: str, san: str, key: Path, csr: Path, crt: Path, ext: Path) -> None:
    """A serving certificate for ``san`` (an openssl subjectAltName), its key made anew, signed by the CA in ``pki``."""
    ext.write_text(f"subjectAltName={san}\nextendedKeyUsage=serverAuth\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout", str(key), "-out", str(csr))
    openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(pki / "ca.crt"), "-CAkey", str(pki / "ca.key"),
        "-CAcreateserial", "-days", "3650", "-extfile", str(ext), "-out", str(crt),
    )  # fmt: skip


def make_pki(pki: Path) -> None:
    """A CA, the API server's serving certificate and the service-account key pair."""
    pki.mkdir(parents=True, exist_ok=True)
    if (pki / "apiserver.crt").exists():
        return
    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650", "-subj", "/CN=slipway-testbed-ca",
        "-keyout", str(pki / "ca.key"), "-out", str(pki / "ca.crt"),
    )  # fmt: skip
    issue(
        pki,
        "kube-apiserver",
        "IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc",
        pki / "apiserver.key",
        pki / "apiserver.csr",
        pki / "apiserver.crt",
        pki / "apiserver.ext",
    )
    openssl("genrsa", "-out", str(pki / "sa.key"), "2048")
    openssl("rsa", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub"))


def webhook_certificate(pki: Path, cert_dir: Path) -> None:
    """``tls.crt``/``tls.key`` for a webhook server, signed by the test bed's CA, for IP 127.0.0.1."""
    cert_dir.mkdir(parents=True, exist_ok=True)
    if (cert_dir / "tls.crt").exists():
        return
    key, csr, crt = cert_dir / "tls.key", cert_dir / "tls.csr", cert_dir / "tls.crt"
    issue(pki, "kserve-webhook", "IP:127.0.0.1,DNS:localhost", key, csr, crt, cert_dir / "san.ext")


def write_kubeconfig(path: Path, server: str, ca: Path, token: str) -> None:
    """A kubeconfig for the admin user (group system:masters), JSON being valid YAML."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "slipway-testbed",
        "clusters": [
            {
                "name": "slipway-testbed",
                "cluster": {"server": server, "certificate-authority-data": base64.b64encode(ca.read_bytes()).decode()},
            }
        ],
        "users": [{"name": ADMIN_TOKEN_USER, "user": {"token": token}}],
        "contexts": [
            {
                "name": "slipway-testbed",
                "context": {"cluster": "slipway-testbed", "user": ADMIN_TOKEN_USER, "namespace": "default"},
            }
        ],
    }
    path.write_text(json.dumps(config, indent=2))
    path.chmod(0o600)
