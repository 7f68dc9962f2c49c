#!/usr/bin/env bash
# make test-kernel: run.sh for each kernel series given (default 6.1 and 5.10), all at once. A
# guest under TCG keeps about one host core busy (the verifier is single-threaded) and idles
# through its 75 s of uptime, so two side by side take little longer than one; CI counts the
# difference. Each guest's output goes to $CACHE/run-SERIES.out and is printed when all are done;
# the exit status is the first failure's.
#
# Usage: all.sh [series...]
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
CACHE=${SLUICE_KVM_CACHE:-/var/cache/sluice/kvm}
mkdir -p "$CACHE"
[ $# -gt 0 ] || set -- 6.1 5.10

# What each needs from apt first, one series after the other: on a fresh machine two apt-get
# runs at once would fight over dpkg's lock (and a shared download directory lost a kernel).
for s in "$@"; do
	SLUICE_KVM_PREPARE_ONLY=1 bash "$here/run.sh" "$s" || { echo "test-kernel: prepare Linux $s" >&2; exit 1; }
done

# Both guests boot the same test binaries: build them once, before the guests compete for CPU.
(cd "$here/../.." && for p in ./internal/datapath/ ./internal/sockterm/; do
	CGO_ENABLED=0 "${GO:-go}" test -c -o /dev/null "$p" || exit 1
done) ||
	{ echo "test-kernel: build the test binaries" >&2; exit 1; }

declare -A pid=() res=()
for s in "$@"; do
	bash "$here/run.sh" "$s" >"$CACHE/run-$s.out" 2>&1 &
	pid[$s]=$!
	echo "==> $s: booting (output in $CACHE/run-$s.out)"
done
status=0
for s in "$@"; do
	wait "${pid[$s]}"
	rc=$?
	echo "==> $s: exit $rc"
	[ "$status" -ne 0 ] || status=$rc
	res[$s]=$rc
done
for s in "$@"; do
	echo "===================== Linux $s ====================="
	cat "$CACHE/run-$s.out"
done
for s in "$@"; do
	echo "==> Linux $s: $([ "${res[$s]}" -eq 0 ] && echo passed || echo "FAILED (exit ${res[$s]})")"
done
exit "$status"
