#!/usr/bin/env bash
# The role's molecule scenario (extensions/molecule/tengine_dyups) on THIS machine: delegated driver,
# localhost, stock nginx + Lua under supervisor, a Consul dev agent and two backends on loopback.
# tests/run.sh calls it as the `molecule` stage. It leaves the machine as it found it: the scenario's
# cleanup stops nginx, the watcher, Consul, the backends and (when it started it) supervisord, removes
# what the role installed and restores /etc/nginx/nginx.conf. Debian packages stay installed.
#
#   tests/tools/molecule.sh                 molecule test (cleanup, syntax, prepare, converge,
#                                           idempotence, verify, cleanup)
#   tests/tools/molecule.sh converge        any other molecule command, e.g. converge, verify, cleanup
#
# Needs root, tests/tools/install-system-deps.sh and tests/tools/venv.sh done. Logs of the services
# end up in tests/output/molecule/.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
scenario=tengine_dyups
command=${1:-test}
[ -x .venv/bin/molecule ] || { echo "no .venv/bin/molecule: run tests/tools/venv.sh first" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "the scenario installs packages and services: run it as root" >&2; exit 2; }
export PATH="$root/.venv/bin:$PATH"
ANSIBLE_COLLECTIONS_PATH=$(.venv/bin/python -c \
  'from tests.support.collection import ensure_importable; print(ensure_importable())')
export ANSIBLE_COLLECTIONS_PATH
export ANSIBLE_HOME="$root/.cache/ansible-home"
export ANSIBLE_FORCE_COLOR=0 PY_COLORS=0 ANSIBLE_NOCOLOR=1
run_dir=/var/tmp/swallowkeeper-molecule

start=$SECONDS
status=0
if [ "$command" = test ]; then
  # A run that died before its cleanup left processes behind: clean up before looking at the ports.
  if [ -d "$run_dir" ]; then molecule cleanup -s "$scenario" || true; fi
  busy=$(.venv/bin/python - "$scenario" <<'PY'
import subprocess, sys, yaml
data = yaml.safe_load(open(f"extensions/molecule/{sys.argv[1]}/molecule.yml"))
hv = data["provisioner"]["inventory"]["host_vars"]["instance"]
ports = list(hv["molecule_consul_ports"].values()) + [b["port"] for b in hv["molecule_backends"]]
ports += [hv["molecule_vhost_port"], int(hv["tengine_dyups_api_listen"].rsplit(":", 1)[1]),
          int(hv["tengine_dyups_watcher_status_listen"].rsplit(":", 1)[1])]
listening = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True, check=True).stdout
used = {line.split()[3].rsplit(":", 1)[1] for line in listening.splitlines() if line.strip()}
print(" ".join(str(p) for p in ports if str(p) in used))
PY
)
  if [ -n "$busy" ]; then
    echo "molecule: port(s) $busy of the scenario are in use on this machine; stop what holds them" >&2
    exit 2
  fi
  molecule test -s "$scenario" || status=$?
  # Safety net: molecule runs cleanup itself, also after a failure; if it died first, do it here.
  if [ -d "$run_dir" ]; then molecule cleanup -s "$scenario" || status=1; fi
else
  molecule "$command" -s "$scenario" || status=$?
fi
echo "molecule $command: exit $status after $((SECONDS - start))s"
exit $status
