# The least-privilege ACL policy for readers of Consul in this collection: the consul_services module,
# playbooks/sync.yml and the watcher (Consul 1.8 policy syntax; measured on 1.8.7, see docs/consul.md
# "TLS and ACLs"). Used as it is by the tests (tests/support/consul.py, reader_policy_rules()).
#
# service_prefix "": /v1/catalog/services and /v1/health/service/NAME list only the services the token
#   may read; the readers also need the "consul" service, whose absence is how they notice a token
#   without these rights (an empty or partial catalog is not read as "no services").
# node_prefix "": instances and checks on a node the token may not read are left out of
#   /v1/health/service/NAME, /v1/health/state/any, /v1/catalog/nodes and /v1/catalog/node-services.
service_prefix "" {
  policy = "read"
}
node_prefix "" {
  policy = "read"
}
