"""Throwaway TLS material for test Consul agents, made at run time with ``consul tls`` (never committed).

    material = make_tls_material(workdir)       # a CA, a server and a client certificate signed by it
    material.ca_file, material.server_cert, material.server_key, material.client_cert, material.client_key
    stranger = make_tls_material(other_dir)     # another CA: its client certificate is one the agent refuses

Certificates are for datacenter ``dc1`` (the -dev default). The server certificate names
``server.dc1.consul``, ``localhost`` and the IP 127.0.0.1 (``consul tls cert create -server``'s default),
so a client verifying ``https://127.0.0.1:PORT`` accepts it. Keys are written 0600 by ``consul tls``.
Shared by tests/support/consul.py (``ConsulAgent(tls=True)``) and anyone else who needs a CA.

    cert, key = self_signed(directory)          # one self-signed certificate for localhost (openssl)

for HTTPS servers of nginx and Tengine in tests (vhosts, HTTPS upstream servers).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TlsMaterial:
    directory: Path
    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _consul_tls(binary, directory, *args):
    done = subprocess.run([binary, "tls", *args], cwd=directory, capture_output=True, text=True, timeout=60,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"consul tls {' '.join(args)} failed: {done.stdout}{done.stderr}")


def make_tls_material(directory, binary=None, datacenter="dc1"):
    """A CA, one server and one client certificate in ``directory`` (created); returns TlsMaterial."""
    if binary is None:
        from tests.support.consul import consul_binary  # late: consul.py imports this module
        binary = consul_binary()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _consul_tls(binary, directory, "ca", "create", "-days", "2")
    _consul_tls(binary, directory, "cert", "create", "-server", "-dc", datacenter, "-days", "2")
    _consul_tls(binary, directory, "cert", "create", "-client", "-dc", datacenter, "-days", "2")
    return TlsMaterial(
        directory=directory,
        ca_file=directory / "consul-agent-ca.pem",
        server_cert=directory / f"{datacenter}-server-consul-0.pem",
        server_key=directory / f"{datacenter}-server-consul-0-key.pem",
        client_cert=directory / f"{datacenter}-client-consul-0.pem",
        client_key=directory / f"{datacenter}-client-consul-0-key.pem",
    )


def self_signed(directory, name="localhost"):
    """(certificate, key) paths of a fresh self-signed RSA-2048 certificate for ``name`` (CN and DNS
    subjectAltName), valid 2 days, made with openssl in ``directory``."""
    directory = Path(directory)
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
                    "-addext", f"subjectAltName=DNS:{name}", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key
