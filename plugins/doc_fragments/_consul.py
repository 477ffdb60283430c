# -*- coding: utf-8 -*-
# Private to swallowkeeper.dyups: the documentation of the Consul connection options (_consul_options.py).
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  consul_url:
    description:
      - Base URL of the Consul agent's HTTP API.
      - Talk to the local agent, not to the servers directly.
      - When not set, the E(CONSUL_HTTP_ADDR) environment variable of the managed node, as the consul CLI reads
        it (C(host:port), C(http://host:port) or C(https://host:port); E(CONSUL_HTTP_SSL) set to C(true) means C(https)),
        else C(http://127.0.0.1:8500).
    type: str
  token:
    description:
      - ACL token sent in the C(X-Consul-Token) header. Never logged, never returned.
      - When not set, the content of O(token_file) is used, else the E(CONSUL_HTTP_TOKEN) environment variable
        of the managed node (a file named by E(CONSUL_HTTP_TOKEN_FILE) wins over E(CONSUL_HTTP_TOKEN), as in
        the consul CLI).
      - With ACLs enabled, the token needs C(service:read) and C(node:read) on every service and node
        (C(service_prefix "") and C(node_prefix "") with C(policy = "read")). Consul leaves out what a token may
        not read instead of refusing, so an answer without the C(consul) service or its nodes fails the task
        rather than being read as "no services" (see docs/consul.md, section "TLS and ACLs").
    type: str
  token_file:
    description:
      - File on the managed node holding the ACL token (surrounding whitespace is ignored).
      - Used when O(token) is not set. A file that cannot be read or is empty fails the task.
      - When not set, the E(CONSUL_HTTP_TOKEN_FILE) environment variable of the managed node.
    type: path
  datacenter:
    description:
      - Datacenter to read. Default is the agent's own.
    type: str
  validate_certs:
    description:
      - Verify the agent's TLS certificate when O(consul_url) is C(https://).
      - When not set, the E(CONSUL_HTTP_SSL_VERIFY) environment variable of the managed node, else V(true).
    type: bool
  ca_path:
    description:
      - CA bundle to verify the agent's certificate with.
      - When not set, the E(CONSUL_CACERT) environment variable of the managed node.
    type: path
  client_cert:
    description:
      - Client certificate (PEM) for agents that require one.
      - When not set, the E(CONSUL_CLIENT_CERT) environment variable of the managed node.
    type: path
  client_key:
    description:
      - Private key (PEM) of O(client_cert), when the certificate file does not hold it.
      - When not set, the E(CONSUL_CLIENT_KEY) environment variable of the managed node.
    type: path
  timeout:
    description:
      - Seconds to wait for an answer from the agent, in all (a slow answer is cut off then, however its bytes
        come). An answer larger than 64 MiB is refused.
    type: float
    default: 10.0
"""
