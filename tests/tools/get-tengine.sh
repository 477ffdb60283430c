#!/usr/bin/env bash
# Build a Tengine (with the dyups and upstream check modules) for the tests and print its binary's path
# (the only line on stdout). The build is the role's own: tests/tools/get-tengine.yml runs the role's
# source-build tasks (tasks/install_tengine_source.yml, with tengine_dyups_tengine_tarball) on this
# machine, with the prefix and build directory inside the cache, so the configure arguments and the
# build steps are exactly what the role does on a host. Only those tasks run: no user, no service, no
# file under /etc (the role's restart handler is turned off for this run; its `-t` check still runs).
#
# The tarball: $TENGINE_TARBALL, else ../shared/tengine/tengine-3.2.0.tar.gz beside the clone (tests and
# CI only; the product never reads ../shared). Its version is read from its top directory.
#
# Configure arguments: the role's module set (vars/main.yml) and its default
# tengine_dyups_tengine_configure_args (defaults/main.yml: TLS, HTTP/2, real IP, stub status), plus
# --with-debug, which only the test build has: Tengine's own dyups suite (tests/nginx-tests/tengine-tests/
# dyups.t, run by tests/conformance/test_tengine_dyups_suite.py) counts debug log lines.
#
# TENGINE_EXTRA_CONFIGURE="--with-x --with-y": a build with these configure arguments too (another key, another
# cache entry), e.g. the second build tests/integration/test_binary_upgrade_builds.py upgrades to.
#
# Cache: ${TENGINE_CACHE:-/var/cache/swallowkeeper-dyups/tengine}/<key>/, outside the clone; <key> is
# the sha256 of the tarball's sha256 and the configure arguments (the role's module recipe, its default
# extra arguments and the test build's own). A second run with the same tarball and arguments prints the
# cached binary without building (about 1 s).
#
#   tests/tools/get-tengine.sh            -> /var/cache/swallowkeeper-dyups/tengine/<key>/sbin/tengine
#
# Exit status: 0 with the path; 3 when there is no tarball (nothing built, message on stderr); 1 when
# the build fails. Progress goes to stderr. Needs root (the role's build tasks own files as root).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
say() { echo "get-tengine: $*" >&2; }

tarball=${TENGINE_TARBALL:-}
if [ -z "$tarball" ]; then
  shared="$root/../shared/tengine/tengine-3.2.0.tar.gz"
  [ -f "$shared" ] && tarball=$(cd "$(dirname "$shared")" && pwd)/$(basename "$shared")
fi
if [ -z "$tarball" ]; then
  say "no Tengine tarball: set TENGINE_TARBALL=/path/to/tengine-X.Y.Z.tar.gz (or put one at ../shared/tengine/tengine-3.2.0.tar.gz)"
  exit 3
fi
if [ ! -f "$tarball" ]; then
  say "TENGINE_TARBALL=$tarball: no such file"
  exit 3
fi
tarball=$(cd "$(dirname "$tarball")" && pwd)/$(basename "$tarball")
sha=$(sha256sum "$tarball" | awk '{print $1}')
listing=$(tar -tzf "$tarball")
top=$(printf '%s\n' "$listing" | awk -F/ 'NR == 1 {print $1}')
version=${top#tengine-}
case "$version" in
  [0-9]*.[0-9]*) ;;
  *) say "$tarball: top directory '$top' is not tengine-<version>"; exit 1 ;;
esac

# The configure arguments the role uses, apart from the paths (which follow from the key): its module
# set and extra arguments for this version, read from the role's own vars through ansible.
python=${PYTHON:-$root/.venv/bin/python}
[ -x "$python" ] || python=python3
ansible_bin=$(dirname "$python")
export PATH="$ansible_bin:$PATH"
export ANSIBLE_ROLES_PATH="$root/roles" ANSIBLE_NOCOLOR=1 ANSIBLE_RETRY_FILES_ENABLED=0
export ANSIBLE_LOCALHOST_WARNING=0 ANSIBLE_INVENTORY_UNPARSED_WARNING=0
modules=$(sed -n 's/^_tengine_dyups_tengine_module_args: *//p' "$root/roles/tengine_dyups/vars/main.yml")
[ -n "$modules" ] || { say "roles/tengine_dyups/vars/main.yml has no _tengine_dyups_tengine_module_args"; exit 1; }
# The role's default extra arguments and the test build's --with-debug, as one JSON list for ansible.
extra_args=$("$python" -c '
import json, sys, yaml
with open(sys.argv[1]) as f:
    args = yaml.safe_load(f)["tengine_dyups_tengine_configure_args"]
print(json.dumps({"tengine_dyups_tengine_configure_args": list(args) + ["--with-debug"] + sys.argv[2].split()}))
' "$root/roles/tengine_dyups/defaults/main.yml" "${TENGINE_EXTRA_CONFIGURE:-}") \
  || { say "cannot read tengine_dyups_tengine_configure_args"; exit 1; }
# The key covers the role's whole configure recipe (vars/main.yml's configure lines), the extra
# arguments, the version and the tarball's content.
recipe=$(sed -n '/^_tengine_dyups_tengine_module_args:/,/^# Modules that/p' "$root/roles/tengine_dyups/vars/main.yml")
key=$(printf '%s\n%s\n%s\n%s\n' "$sha" "$version" "$recipe" "$extra_args" | sha256sum | awk '{print substr($1, 1, 16)}')
cache=${TENGINE_CACHE:-/var/cache/swallowkeeper-dyups/tengine}
prefix="$cache/$key"
bin="$prefix/sbin/tengine"

binary_ok() {  # the binary runs, is this version, has both modules, TLS and debug logging
  [ -x "$1" ] || return 1
  local v m
  v=$("$1" -V 2>&1) || return 1
  m=$("$1" -m 2>&1) || return 1
  case "$v" in *"Tengine/$version"*) ;; *) return 1 ;; esac
  case "$v" in *--with-http_ssl_module*) ;; *) return 1 ;; esac
  case "$v" in *--with-debug*) ;; *) return 1 ;; esac
  case "$m" in *ngx_http_dyups_module*) ;; *) return 1 ;; esac
  case "$m" in *ngx_http_upstream_check_module*) ;; *) return 1 ;; esac
  for arg in ${TENGINE_EXTRA_CONFIGURE:-}; do case "$v" in *" $arg"*) ;; *) return 1 ;; esac; done
}

if binary_ok "$bin"; then
  say "cached: Tengine $version ($key)"
  echo "$bin"
  exit 0
fi

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9   # two runs at once build once
if binary_ok "$bin"; then echo "$bin"; exit 0; fi

say "building Tengine $version from $tarball through the role (about 2-3 min on 2 cores)"
rm -rf "$prefix" "$cache/build-$key"
start=$SECONDS
log="$cache/build-$key.log"
if ! ansible-playbook -i localhost, -c local "$root/tests/tools/get-tengine.yml" \
    -e "tengine_dyups_tengine_tarball=$tarball" -e "tengine_dyups_tengine_sha256=$sha" \
    -e "tengine_dyups_tengine_version=$version" -e "tengine_dyups_tengine_prefix=$prefix" \
    -e "tengine_dyups_tengine_build_dir=$cache/build-$key" \
    -e "tengine_dyups_tengine_build_jobs=$(nproc)" -e "ansible_python_interpreter=${TENGINE_BUILD_PYTHON:-/usr/bin/python3}" \
    -e '{"_tengine_dyups_nginx_fresh": true}' -e "$extra_args" \
    >"$log" 2>&1; then
  say "the role's build failed; last lines of $log:"
  tail -40 "$log" >&2
  rm -rf "$prefix"
  exit 1
fi
rm -rf "$cache/build-$key"
if ! binary_ok "$bin"; then
  say "the build finished but $bin is not a Tengine $version with dyups, upstream check, TLS and debug ($log)"
  exit 1
fi
say "built in $((SECONDS - start))s: $bin"
echo "$bin"
