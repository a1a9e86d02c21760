#!/bin/bash
# leashd as the Debian package installs it, under the VM's systemd (PID 1),
# run by `cargo xtask vmtest --sessions` before the session tests: the
# package installs and enables nothing; `systemctl enable --now` returns
# once leashd is ready (Type=notify); a member of the `leash` group reads
# its status and runs a governed session, someone else is refused; the
# hardening is in force; `systemctl restart` leaves the components and the
# session alone; the journal holds the daemons' entries with their fields;
# `systemctl stop` then `leashctl stop --all`; purging removes the session
# and everything of leash's. Every finding is a `VMSESSIONS service:` line;
# the first check that fails ends it (exit 1) with leashd's journal.
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
. /mnt/run/vm.env

say() { echo "VMSESSIONS service: $*"; }
fail() {
  echo "FAILED: $*"
  journalctl -u leashd -n 80 --no-pager -o short-monotonic 2>&1
  exit 1
}
up() { cut -d' ' -f1 /proc/uptime; }
since() { echo "$(up) $1" | awk '{printf "%.1f", $1 - $2}'; }
# Up to $1 seconds (times the run's patience) for a command to succeed.
wait_for() {
  local n=$(($1 * PATIENCE))
  shift
  for _ in $(seq 1 "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
  return 1
}
as() { local u=$1; shift; runuser -u "$u" -- "$@"; }
components() { leashctl status --json | jq -r '[.components[] | "\(.name)=\(.pid)"] | join(" ")'; }
component_pids() { leashctl status --json | jq -r '.components[].pid'; }

[ "$(cat /proc/1/comm)" = systemd ] || fail "PID 1 is $(cat /proc/1/comm), not systemd"
say "PID 1 is systemd $(systemctl --version | sed -n '1s/^systemd \([0-9]*\).*/\1/p')"

# The package: installs, creates the group, enables and starts nothing.
dpkg -i /mnt/run/leash.deb >/tmp/dpkg.log 2>&1 || { cat /tmp/dpkg.log; fail "dpkg -i leash.deb"; }
getent group leash >/dev/null || fail "installing the package created no leash group"
enabled=$(systemctl is-enabled leashd 2>&1)
[ "$enabled" = disabled ] || fail "leashd is $enabled after the install, not disabled"
systemctl is-active -q leashd && fail "installing the package started leashd"
useradd -m -s /bin/bash -G leash alice || fail "useradd alice"
useradd -m -s /bin/bash bob || fail "useradd bob"

# Type=notify: `systemctl start` returns when leashd says READY=1, once its
# socket serves, so the first `leashctl status` reaches it (no retry).
t=$(up)
systemctl enable --now leashd || fail "systemctl enable --now leashd"
ready=$(since "$t")
first=$(leashctl status 2>&1)
case $first in *"not running"* | *"cannot connect"*) echo "$first"; fail "nothing answered right after systemctl start returned" ;; esac
[ "$(systemctl show -p Type --value leashd)" = notify ] || fail "the unit is not Type=notify"
main=$(systemctl show -p MainPID --value leashd)
[ "$(cat "/proc/$main/comm")" = leashd ] || fail "the unit's MainPID $main is not leashd"
[ "$(systemctl is-enabled leashd)" = enabled ] || fail "leashd is not enabled"
wait_for 60 leashctl status || { leashctl status; fail "leashctl status not healthy within $((60 * PATIENCE)) s"; }
say "systemctl enable --now leashd returned after $ready s (Type=notify); leashctl status answered at once; healthy: $(components)"

# The group: its members reach leashd, others do not.
sock=$(stat -c '%U:%G %a' /run/leash/leashd.sock)
[ "$sock" = "root:leash 660" ] || fail "leashd.sock is $sock, not root:leash 660"
as alice leashctl status >/tmp/alice 2>&1 || { cat /tmp/alice; fail "leashctl status as alice (in the leash group)"; }
as bob leashctl status >/tmp/bob 2>&1 && fail "bob (not in the leash group) reached leashd"
say "leashd.sock $sock; alice (group leash): leashctl status healthy; bob: refused: $(head -n 1 /tmp/bob)"

# The hardening, in force in leashd and in every component it started.
mask=0
for cap in 0 1 2 3 5 6 7 12 18 19 21 24 38 39; do mask=$((mask | 1 << cap)); done
want=$(printf '%016x' "$mask")
for pid in $main $(component_pids); do
  name=$(cat "/proc/$pid/comm")
  bnd=$(awk '/^CapBnd/{print $2}' "/proc/$pid/status")
  [ "$bnd" = "$want" ] || fail "$name (pid $pid) has the bounding set $bnd, not the unit's $want"
  [ "$(awk '/^NoNewPrivs/{print $2}' "/proc/$pid/status")" = 1 ] || fail "$name (pid $pid) may gain privileges"
  for dir in /usr /etc; do
    opts=$(awk -v d="$dir" '$5 == d {print $6}' "/proc/$pid/mountinfo" | tail -n 1)
    case $opts in ro,* | ro) ;; *) fail "$dir is not read-only for $name (pid $pid): ${opts:-no mount}" ;; esac
  done
done
score=$(systemd-analyze security leashd --no-pager 2>&1 | sed -n 's/.*Overall exposure level for leashd.service: //p')
[ -n "$score" ] || { systemd-analyze security leashd --no-pager; fail "systemd-analyze security printed no exposure level"; }
say "hardening in force in leashd and its components: bounding set $want, no new privileges, /usr and /etc read-only; systemd-analyze security leashd: $score"

doctor=$(timeout $((300 * PATIENCE)) leashctl doctor 2>&1)
echo "$doctor"
say "leashctl doctor: tier $(echo "$doctor" | sed -n 's/^tier: //p'), $(echo "$doctor" | grep -E '^self-test (passed|FAILED)')"

# A session of alice's, governed by her policy.
P=/home/alice/proj
as alice mkdir -p "$P/secrets"
as alice sh -c "echo fine > $P/ok.txt && echo hunter2 > $P/secrets/key"
as alice tee "$P/policy.cedar" >/dev/null <<EOF
@id("allow-the-rest")
permit (principal, action, resource);

@id("no-secrets")
forbid (principal, action == Action::"FileOpen", resource in Dir::"$P/secrets/");
EOF
id=$(cd "$P" && as alice leash -d --image leash-test:latest --policy "$P/policy.cedar" -- sleep 100000 2>/tmp/leash-d) ||
  fail "leash -d as alice: $id $(cat /tmp/leash-d)"
governed() {
  local out
  out=$(as alice leash exec "$id" -- cat "$P/ok.txt" 2>&1)
  [ "$out" = fine ] || fail "$1: reading ok.txt in session $id gave: $out"
  out=$(as alice leash exec "$id" -- cat "$P/secrets/key" 2>&1) && fail "$1: session $id read the forbidden file: $out"
  case $out in *hunter2*) fail "$1: the forbidden file's content reached the session" ;; esac
}
governed "a new session"
show() { as alice leashctl sessions show --json "$id" | jq -r "$1"; }
container=$(show .container)
started=$(docker inspect -f '{{.State.StartedAt}}' "$container")
say "alice's session $id (container ${container:0:12}, $(show .enforcement)): ok.txt read, secrets/key refused"

# A restart replaces leashd alone.
before=$(components)
t=$(up)
systemctl restart leashd || fail "systemctl restart leashd"
restarted=$(since "$t")
main2=$(systemctl show -p MainPID --value leashd)
[ "$main2" != "$main" ] || fail "leashd's pid is still $main after the restart"
wait_for 60 leashctl status || { leashctl status; fail "not healthy after the restart"; }
after=$(components)
[ "$after" = "$before" ] || fail "the components changed across the restart: $before, then $after"
spawned=$(leashctl status --json | jq '[.components[] | select(.spawned)] | length')
[ "$spawned" = 0 ] || fail "the new leashd started $spawned components instead of adopting them"
[ "$(show .state)" = running ] || fail "session $id is $(show .state) after the restart"
[ "$(docker inspect -f '{{.State.StartedAt}}' "$container")" = "$started" ] || fail "the session's container restarted"
governed "after systemctl restart leashd"
say "systemctl restart leashd ($restarted s): leashd pid $main, then $main2; components adopted, not restarted ($after); session $id running on in the same container, still governed"

# The journal: the daemons' entries, with their fields.
journal=$(journalctl -u leashd -o json --no-pager)
idents=$(echo "$journal" | jq -r '.SYSLOG_IDENTIFIER // empty' | sort -u | tr '\n' ' ')
for d in leashd leash-policy leash-sensor leash-proxy; do
  units=$(echo "$journal" | jq -r --arg d "$d" 'select(.SYSLOG_IDENTIFIER == $d) | ._SYSTEMD_UNIT // "none"' | sort | uniq -c | tr '\n' ' ')
  case $units in *" leashd.service"*) ;; *) fail "no journal entry of $d in leashd.service (its entries' units: $units; identifiers: $idents)" ;; esac
done
fields=$(echo "$journal" | jq -r 'keys[] | select(startswith("LEASH_"))' | sort -u | tr '\n' ' ')
[ -n "$fields" ] || fail "no journal entry carries a LEASH_ field"
# (Counted: jq 1.6's -e answers for the last input only.)
full=$(echo "$journal" | jq -c 'select(.SYSLOG_IDENTIFIER == "leashd" and .PRIORITY != null and .CODE_FILE != null and .TARGET != null)' | wc -l)
[ "$full" -gt 0 ] || fail "leashd's entries have no PRIORITY, CODE_FILE or TARGET"
picked=$(journalctl -u leashd -o json --no-pager LEASH_COMPONENT=leash-sensor | wc -l)
[ "$picked" -gt 0 ] || fail "journalctl LEASH_COMPONENT=leash-sensor selects nothing"
by_session=$(journalctl -u leashd -o json --no-pager "LEASH_SESSION_ID=$id" | jq -r .SYSLOG_IDENTIFIER | sort -u | tr '\n' ' ')
[ -n "$by_session" ] || fail "journalctl LEASH_SESSION_ID=$id selects nothing"
journalctl -u leashd -o verbose --no-pager -n 1 LEASH_COMPONENT=leash-sensor
journalctl -u leashd --no-pager -n 12
say "journal: entries of $idents under leashd.service; fields $fields; LEASH_COMPONENT=leash-sensor selects $picked, LEASH_SESSION_ID=$id entries of $by_session"

# Stop: leashd alone; then stop --all stops the components it left.
pids=$(component_pids)
systemctl stop leashd || fail "systemctl stop leashd"
systemctl is-active -q leashd && fail "leashd is still active after systemctl stop"
for pid in $pids; do kill -0 "$pid" 2>/dev/null || fail "component pid $pid died with systemctl stop leashd"; done
out=$(leashctl stop --all 2>&1) || fail "leashctl stop --all without leashd: $out"
echo "$out"
for pid in $pids; do
  wait_for 10 sh -c "! kill -0 $pid 2>/dev/null" || fail "component pid $pid still runs after leashctl stop --all"
done
sleep 2
systemctl is-active -q leashd && fail "systemd started leashd again"
[ "$(docker inspect -f '{{.State.Running}}' "$container")" = true ] || fail "the session's container stopped with the daemons"
say "systemctl stop leashd left the components ($(echo $pids)); leashctl stop --all then stopped them: $(echo "$out" | tr '\n' ';'); the unit stays stopped, the session's container runs"

# Purge: the session, its container, the unit, the group, the state.
dpkg --purge leash >/tmp/purge.log 2>&1 || { cat /tmp/purge.log; fail "dpkg --purge leash"; }
left=$(docker ps -aq --filter "id=$container")
[ -z "$left" ] || fail "the session's container $left outlived the purge"
pgrep -f '^/usr/bin/leash' && fail "leash processes outlived the purge"
getent group leash && fail "the leash group outlived the purge"
for f in /var/lib/leash /run/leash /usr/lib/systemd/system/leashd.service /etc/systemd/system/multi-user.target.wants/leashd.service /usr/bin/leashd; do
  [ -e "$f" ] && fail "$f outlived the purge"
done
systemctl cat leashd >/dev/null 2>&1 && fail "systemd still knows leashd.service"
userdel -r alice 2>/dev/null
userdel -r bob 2>/dev/null
say "dpkg --purge leash: the session's container, the processes, the unit, the group and the state are gone"
exit 0
