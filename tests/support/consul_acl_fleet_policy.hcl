# What the watchers' token needs besides the readers' policy (consul_acl_policy.hcl) with fleet_share: on
# (docs/watcher.md, "One reader for a fleet"). Every watcher of a fleet_group may become the publisher, so
# each may write the shared results; nothing else is granted.
#
# key_prefix "swk/": the lock (swk/GROUP/leader), the journal and the upstream keys under the default
#   fleet_kv_prefix "swk" (another prefix: change it here too).
# session_prefix "": a session on the watcher's own node, made to take the lock (and ended when another
#   watcher holds it).
key_prefix "swk/" {
  policy = "write"
}
session_prefix "" {
  policy = "write"
}
