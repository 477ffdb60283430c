#!/bin/sh
# Replace a running nginx/Tengine master by the binary now at the path it was started from, without dropping a
# connection: nginx's binary upgrade (USR2, WINCH, QUIT), with an automatic rollback to the old master when the
# new binary fails. Run by the tengine_dyups role (handler "tengine_dyups upgrade nginx", after the binary path,
# a symbolic link, was pointed at another build: PREFIX/sbin/tengine -> PREFIX/builds/VERSION-HASH/sbin/tengine);
# usable by hand (docs/upgrade.md).
#
#   binary_upgrade.sh BINARY MAIN_CONFIG PID_FILE OLD_BINARY [API_URL PYTHON [TIMEOUT]]
#
# BINARY is the path the master was started from (its argv[0], which USR2 executes). OLD_BINARY is what to go
# back to: when BINARY is a symbolic link, the build it named before (a rollback points the link back at it,
# atomically); when BINARY is a plain file, the previous binary moved aside (`make install` leaves BINARY.old),
# which a rollback moves back. Empty or missing: nothing to put back (said on stderr).
#
#  1. BINARY -t on MAIN_CONFIG; failing: OLD_BINARY is put back as BINARY, the master is left alone.
#  2. USR2 to the master (PID_FILE): it renames PID_FILE to PID_FILE.oldbin and starts BINARY as a new master on
#     the same listening sockets, which reads the configuration (and the upstream file the watcher keeps) afresh.
#     Wait (TIMEOUT seconds, 30) for the new master and as many workers as the old one has; none: the new master,
#     if any, is stopped (the old one takes PID_FILE back), OLD_BINARY is put back.
#  3. WINCH to the old master: its workers stop accepting and finish what they serve (a websocket stays open on
#     its old worker until it closes). With API_URL (the dyups interface, http://ADDRESS:PORT) the new workers
#     must then answer /list with every upstream the old master had (read before step 2); they do not: HUP to
#     the old master (its workers start again), QUIT to the new one, OLD_BINARY put back. The environment's
#     DYUPS_SECRET_FILE names the file of the interface's shared secret (the role's), sent as X-Dyups-Secret.
#  4. QUIT to the old master: it exits once its last worker has finished. systemd (Type=forking, PIDFile=)
#     reads PID_FILE again when its main PID exits, and follows the new master; under supervisor the role's
#     program, nginx_supervise.py, does the same (the new master becomes its child).
# Exit status: 0 upgraded; 1 rolled back (the old master serves, the old binary is back; the reason on stderr);
# 3 no master runs (nothing to upgrade: start the service instead); 4 the old master of an earlier upgrade still
# drains its connections (nothing signalled, OLD_BINARY put back: try again once it has left); 2 wrong arguments.
set -u
[ $# -ge 4 ] || { echo "usage: $0 BINARY MAIN_CONFIG PID_FILE OLD_BINARY [API_URL PYTHON [TIMEOUT]]" >&2; exit 2; }
binary=$1 config=$2 pid_file=$3 old_binary=$4 api_url=${5:-} python=${6:-python3} limit=${7:-30}

say() { echo "binary upgrade: $*"; }
alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }
children() {  # the number of child processes of $1, not counting $2
  count=0
  for child in $(pgrep -P "$1"); do [ "$child" = "${2:-}" ] || count=$((count + 1)); done
  echo "$count"
}
upstreams() {  # the upstream names the interface lists, sorted, one line
  "$python" -c 'import os, sys, urllib.request
request = urllib.request.Request(sys.argv[1] + "/list")
if os.environ.get("DYUPS_SECRET_FILE"):
    with open(os.environ["DYUPS_SECRET_FILE"], encoding="utf-8") as secret:
        request.add_header("X-Dyups-Secret", secret.read().strip())
with urllib.request.urlopen(request, timeout=5) as answer:
    print(" ".join(sorted(answer.read().decode().split())))' "$api_url"
}
contains_all() {  # every word of $1 is a word of $2
  for name in $1; do case " $2 " in *" $name "*) ;; *) return 1 ;; esac; done
}
put_old_binary_back() {
  if [ -z "$old_binary" ] || [ ! -f "$old_binary" ]; then
    say "no previous binary (${old_binary:-none given}): $binary left as it is"
  elif [ -L "$binary" ]; then  # a new link beside it, renamed over it: the path always names a binary
    ln -sfn "$old_binary" "$binary.rollback.$$" && mv -fT "$binary.rollback.$$" "$binary" \
      && say "pointed $binary back at $old_binary"
  else
    mv -f "$old_binary" "$binary" && say "put the previous binary back at $binary"
  fi
}
roll_back() {  # $1: why
  echo "binary upgrade: $1; rolled back: master $old_master keeps serving" >&2
  put_old_binary_back >&2
  exit 1
}

old_master=$(cat "$pid_file" 2>/dev/null) || old_master=""
alive "$old_master" || { say "no master runs (no live PID in $pid_file): nothing to upgrade"; exit 3; }
# A master from an earlier upgrade that still drains (PID_FILE.oldbin: QUIT sent, a websocket still open) is the
# parent of the master now serving, and nginx ignores USR2 in a master whose parent still runs: refuse until it left.
draining=$(cat "$pid_file.oldbin" 2>/dev/null) || draining=""
if alive "$draining"; then
  echo "binary upgrade: master $draining of an earlier upgrade still serves its last connections ($pid_file.oldbin);" \
       "try again once it has left; master $old_master keeps serving" >&2
  put_old_binary_back >&2
  exit 4
fi
workers=$(children "$old_master")
before=""
if [ -n "$api_url" ]; then before=$(upstreams) || roll_back "the interface $api_url did not answer before the upgrade"; fi

"$binary" -t -q -c "$config" || roll_back "the new binary $binary fails -t on $config"

say "USR2 to master $old_master ($workers workers)"
kill -USR2 "$old_master"
new_master=""
seen_oldbin=""
waited=0
tries=$((limit * 5))
while [ "$tries" -gt 0 ]; do
  candidate=$(cat "$pid_file" 2>/dev/null) || candidate=""
  if [ "$candidate" != "$old_master" ] && alive "$candidate" && [ "$(children "$candidate")" -ge "$workers" ]; then
    new_master=$candidate
    break
  fi
  alive "$old_master" || break
  # The old master renames its pid file to .oldbin as it takes USR2 and takes it back when the new master exits:
  # no .oldbin after a second (or after one was seen) and the old PID in the pid file: the new master has exited.
  waited=$((waited + 1))
  if [ -f "$pid_file.oldbin" ]; then seen_oldbin=1
  elif { [ -n "$seen_oldbin" ] || [ "$waited" -ge 5 ]; } && [ "$candidate" = "$old_master" ]; then break; fi
  tries=$((tries - 1))
  sleep 0.2
done
if [ -z "$new_master" ]; then
  candidate=$(cat "$pid_file" 2>/dev/null) || candidate=""
  if [ "$candidate" != "$old_master" ] && alive "$candidate"; then kill -TERM "$candidate"; fi
  roll_back "the new binary did not start a master with $workers workers (it exited, or not within ${limit}s; see the error log)"
fi
say "new master $new_master runs with $(children "$new_master") workers; WINCH to the old master"
kill -WINCH "$old_master"

if [ -n "$api_url" ]; then
  tries=$((limit * 5))
  while :; do
    # the old workers close their listening sockets as they stop: from now on the new ones answer
    if after=$(upstreams 2>/dev/null) && contains_all "$before" "$after"; then break; fi
    tries=$((tries - 1))
    if [ "$tries" -le 0 ]; then
      kill -HUP "$old_master"
      kill -QUIT "$new_master"
      roll_back "the new master's interface lacks upstreams the old one had (before: $before; now: ${after:-no answer})"
    fi
    sleep 0.2
  done
  say "the new workers serve every upstream the old master had ($(echo "$before" | wc -w))"
fi

kill -QUIT "$old_master"
say "QUIT to the old master $old_master (it exits when its last connection ends); master now $new_master"
exit 0
