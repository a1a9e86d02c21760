#!/usr/bin/env bash
# Checks leashd.service with `systemd-analyze verify`.
#
# verify insists that ExecStart= exists, so the check runs on a copy whose
# /usr/local/bin/ prefix is replaced (the same substitution the installer
# makes) by a temporary directory holding a stand-in leashd.
# It needs no running systemd and no root.
#
# Exit status: 0 when verify says nothing about leashd.service, 1 when it
# warns about it or fails, 77 when systemd-analyze is not installed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
unit="$here/leashd.service"

if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "verify.sh: systemd-analyze is not installed; skipping" >&2
    exit 77
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

mkdir -p "$tmp/bin" "$tmp/units"
printf '#!/bin/sh\nexit 0\n' >"$tmp/bin/leashd"
chmod 0755 "$tmp/bin/leashd"
sed "s#/usr/local/bin/#$tmp/bin/#g" "$unit" >"$tmp/units/leashd.service"

if ! grep -q "^ExecStart=$tmp/bin/leashd\$" "$tmp/units/leashd.service"; then
    echo "verify.sh: ExecStart= is not /usr/local/bin/leashd in $unit" >&2
    exit 1
fi

# verify prints its findings on stderr; keep both streams, and its status.
status=0
output="$(systemd-analyze verify --man=no "$tmp/units/leashd.service" 2>&1)" || status=$?
[ -n "$output" ] && printf '%s\n' "$output"

if grep -q 'leashd\.service' <<<"$output"; then
    echo "verify.sh: systemd-analyze reported problems with leashd.service" >&2
    exit 1
fi
if [ "$status" -ne 0 ]; then
    echo "verify.sh: systemd-analyze verify exited with status $status" >&2
    exit 1
fi
echo "verify.sh: leashd.service OK"
