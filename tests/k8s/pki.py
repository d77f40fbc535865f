"""Credentials of a test cluster: a CA, the apiserver's certificate, the service-account key pair
(openssl, EC keys where Kubernetes 1.20 accepts them: fast), and kubeconfig files."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Sequence
from pathlib import Path

from tests.k8s.processes import ClusterError

SANS_DNS = ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc")


def _openssl(pki: Path, *args: str) -> None:
    result = subprocess.run(
        ["openssl", *args], cwd=pki, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise ClusterError(f"openssl {' '.join(args[:2])} failed: {result.stderr.strip()}")


def make_pki(pki: Path, ip_sans: Sequence[str]) -> None:
    """Writes ca.crt/ca.key, apiserver.crt/.key (valid for ``ip_sans`` and the usual names) and
    sa.key/sa.pub (RSA: the service-account token signer) into ``pki``."""
    pki.mkdir(parents=True, exist_ok=True)
    ec_key = ["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out"]
    _openssl(pki, *ec_key, "ca.key")
    _openssl(pki, "req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=agentfarm-test-ca",
             "-days", "3650", "-out", "ca.crt")  # fmt: skip
    _openssl(pki, *ec_key, "apiserver.key")
    sans = [f"DNS:{name}" for name in SANS_DNS] + [f"IP:{ip}" for ip in ip_sans]
    (pki / "apiserver.ext").write_text(
        f"subjectAltName={','.join(sans)}\nextendedKeyUsage=serverAuth\n"
        "keyUsage=digitalSignature,keyEncipherment\n"
    )
    _openssl(pki, "req", "-new", "-key", "apiserver.key", "-subj", "/CN=kube-apiserver",
             "-out", "apiserver.csr")  # fmt: skip
    _openssl(pki, "x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "3650", "-extfile", "apiserver.ext",
             "-out", "apiserver.crt")  # fmt: skip
    _openssl(pki, "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
             "-out", "sa.key")  # fmt: skip
    _openssl(pki, "pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub")
    for key in pki.glob("*.key"):
        key.chmod(0o600)


def write_kubeconfig(
    path: Path, server: str, ca_file: Path, token: str, namespace: str = ""
) -> Path:
    """A kubeconfig using ``token``, the CA inlined so the file can be copied anywhere
    (JSON, which is valid YAML for kubectl and the Python clients alike)."""
    context: dict[str, str] = {"cluster": "agentfarm-test", "user": "user"}
    if namespace:
        context["namespace"] = namespace
    ca_data = base64.b64encode(ca_file.read_bytes()).decode()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "agentfarm-test",
                "cluster": {"server": server, "certificate-authority-data": ca_data},
            }
        ],
        "users": [{"name": "user", "user": {"token": token}}],
        "contexts": [{"name": "agentfarm-test", "context": context}],
        "current-context": "agentfarm-test",
    }
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)
    return path
