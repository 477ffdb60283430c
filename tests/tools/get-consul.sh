#!/usr/bin/env bash
# Obtain a Consul agent binary for the tests and print its path (the only line on stdout).
#
# Debian's current release has no consul package; its previous release (bullseye, main) has 1.8.7, a
# static Go binary. It is downloaded through the Debian mirror this machine already uses (read from its
# own apt sources, never written here), unpacked with dpkg -x into .cache/tools/consul-<version>/ and
# cached there; the package itself is NOT installed (no init script, no system user).
#
#   tests/tools/get-consul.sh            -> /path/to/.cache/tools/consul-1.8.7/usr/bin/consul
#   CONSUL_VERSION=1.8.7 (default), CONSUL_SUITE=bullseye (default)
#
# Progress goes to stderr. Exit status 1 with a message when the binary cannot be had.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
version=${CONSUL_VERSION:-1.8.7}
suite=${CONSUL_SUITE:-bullseye}
dest="$root/.cache/tools/consul-$version"
bin="$dest/usr/bin/consul"

say() { echo "get-consul: $*" >&2; }

first_line() { printf '%s\n' "${1%%$'\n'*}"; }

binary_ok() {  # the binary runs and reports the version asked for on its first line
  # The output is captured whole, then its first line compared: piping it into head or grep -q lets
  # the reader exit first, consul die of SIGPIPE, and the check fail by chance under pipefail.
  local out
  [ -x "$1" ] || return 1
  out=$("$1" version 2>/dev/null) || return 1
  [ "$(first_line "$out")" = "Consul v$version" ]
}

if binary_ok "$bin"; then
  echo "$bin"
  exit 0
fi

# The mirror URI of the machine's main Debian archive: the first deb URI of a stanza / line whose suite
# is a plain release name (not -security, -updates, -backports). deb822 files first, then the one-line format.
mirror_uri() {
  local file
  for file in /etc/apt/sources.list.d/*.sources; do
    [ -f "$file" ] || continue
    awk '
      function flush() {
        plain = 0
        n = split(suites, s, " ")
        for (k = 1; k <= n; k++) if (s[k] !~ /[-\/]/) plain = 1
        if (types ~ /(^| )deb( |$)/ && uris != "" && plain && !found) {
          split(uris, u, " "); print u[1]; found = 1
        }
        types = ""; uris = ""; suites = ""
      }
      /^[ \t]*#/ { next }
      /^[ \t]*$/ { flush(); next }
      tolower($1) == "types:"  { $1 = ""; types = $0 }
      tolower($1) == "uris:"   { $1 = ""; sub(/^ +/, ""); uris = $0 }
      tolower($1) == "suites:" { $1 = ""; suites = $0 }
      END { flush() }
    ' "$file"
  done
  for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$file" ] || continue
    awk '
      /^[ \t]*deb[ \t]/ {
        i = 2
        if ($i ~ /^\[/) { while ($i !~ /\]$/ && i < NF) i++; i++ }
        if ($(i+1) !~ /-(security|updates|backports)/) { print $i; exit }
      }
    ' "$file"
  done
}

uris=$(mirror_uri)
uri=$(first_line "$uris")
if [ -z "$uri" ]; then
  say "no Debian mirror found in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list"
  exit 1
fi
case "$uri" in
  mirror+*|tor+*) say "unsupported apt URI scheme in the machine's sources: ${uri%%:*}"; exit 1 ;;
esac

work="$root/.cache/tools/apt-$suite"
mkdir -p "$work/lists/partial" "$work/archives/partial" "$dest"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
signed=""
[ -f "$keyring" ] && signed="Signed-By: $keyring"
printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: main\n%s\n' "$uri" "$suite" "$signed" >"$work/$suite.sources"

apt_opts=(
  -o "Dir::Etc::SourceList=/dev/null"
  -o "Dir::Etc::SourceParts=$work/sources.d"
  -o "Dir::State::Lists=$work/lists"
  -o "Dir::Cache::Archives=$work/archives"
  -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache="
  -o "APT::Get::List-Cleanup=false"
)
# SourceParts wants a directory holding only our file.
mkdir -p "$work/sources.d"
mv -f "$work/$suite.sources" "$work/sources.d/$suite.sources"

say "reading the $suite package list from the machine's Debian mirror"
apt-get "${apt_opts[@]}" -qq update >&2
deb_dir=$(mktemp -d)
trap 'rm -rf "$deb_dir"' EXIT
say "downloading consul ($suite)"
(cd "$deb_dir" && apt-get "${apt_opts[@]}" -o APT::Sandbox::User=root -qq download "consul" >&2)
debs=$(find "$deb_dir" -maxdepth 1 -name 'consul_*.deb' | sort)
deb=$(first_line "$debs")
if [ -z "$deb" ]; then
  say "apt-get download produced no consul .deb"
  exit 1
fi
got=$(dpkg-deb -f "$deb" Version)
case "$got" in
  "$version"|"$version"+*|"$version"-*) ;;
  *) say "the $suite package is consul $got, not $version"; exit 1 ;;
esac
rm -rf "$dest"
mkdir -p "$dest"
dpkg -x "$deb" "$dest"
if ! binary_ok "$bin"; then
  say "unpacked $bin does not report Consul v$version: $(first_line "$("$bin" version 2>&1 || true)")"
  exit 1
fi
say "consul $version ready"
echo "$bin"
