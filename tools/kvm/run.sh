#!/usr/bin/env bash
# make test-kernel: run the datapath test suite (go test ./internal/datapath/) in a qemu guest
# booted on an older Debian kernel, to show that the BPF object loads and behaves under an
# older verifier and without TCX (clsact instead). Needs root (apt-get, /dev/kvm).
#
# Host: installs qemu, busybox-static and iproute2 when missing; downloads the newest kernel
# of the series with `apt-get download` (6.1: bookworm's, from the host's apt lists; 5.10:
# bullseye's, from lists of its own under $CACHE/apt, so the host's sources stay as they are)
# and unpacks it with dpkg-deb into $CACHE (so the host's /boot and initramfs hooks are never
# touched); builds a static test binary; packs an initramfs (tools/kvm/init as /init, busybox,
# ip and its libraries, the needed modules); boots it and exits with the status the guest
# prints in its marker line.
#
# Usage: run.sh [6.1|5.10]   (default 6.1)
#
# Environment:
#   SLUICE_KVM_KERNEL    Debian kernel package to boot (default: the newest of the series)
#   SLUICE_KVM_ACCEL     kvm | tcg | auto (default auto: kvm when the host has hardware KVM)
#   SLUICE_KVM_TIMEOUT   seconds before the guest is killed (default 1500: make test-kernel runs
#                        both guests at once, each about 8 min alone under TCG)
#   SLUICE_KVM_MEM       guest memory (default 3G: with 1G, Linux 5.10, which preallocates the
#                        LRU maps of every test's datapath, ran short and later test runs failed)
#   SLUICE_KVM_TESTARGS  extra test flags, e.g. '-test.run TestGolden'
#   SLUICE_KVM_MIN_UPTIME  seconds the guest must have been up before the tests (default 75)
#   SLUICE_KVM_CACHE     cache directory (default /var/cache/sluice/kvm)
#   SLUICE_KVM_PREPARE_ONLY=1  install what the host needs and fetch the kernel, then exit
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
GO=${GO:-go}
CACHE=${SLUICE_KVM_CACHE:-/var/cache/sluice/kvm}
TIMEOUT=${SLUICE_KVM_TIMEOUT:-1500}
# veth for testutil.NewNode; sch_ingress and cls_bpf so that clsact attachment (the tc path
# on kernels without TCX) works too. Their dependencies are added from each module's modinfo.
# bridge for the attach tests' software device; ipip, geneve, vxlan and tun for the tunnel tests.
# inet_diag and udp_diag: sockterm's SOCK_DESTROY (its test runs after the datapath's).
MODULES=(veth sch_ingress cls_bpf bridge ipip geneve vxlan tun inet_diag udp_diag)
MARKER=SLUICE-KVM-EXIT-STATUS
# The guest waits until it has been up this long before the tests start (see init).
MIN_UPTIME=${SLUICE_KVM_MIN_UPTIME:-75}

log() { echo "==> $*"; }
die() { echo "test-kernel: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (apt-get, /dev/kvm)"
mkdir -p "$CACHE"

apt_updated=
apt_update() {
	[ -n "$apt_updated" ] && return
	log "apt-get update"
	apt-get update -qq
	apt_updated=1
}

# --- host tools ------------------------------------------------------------------------------
missing=()
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
# The guest has no libc of its own: busybox must be the static build.
[ "$(dpkg-query -W -f '${Status}' busybox-static 2>/dev/null)" = "install ok installed" ] || missing+=(busybox-static)
command -v ip >/dev/null || missing+=(iproute2)
if [ ${#missing[@]} -gt 0 ]; then
	apt_update
	log "installing ${missing[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
busybox=/bin/busybox

# --- the kernel ------------------------------------------------------------------------------
series=${1:-6.1}
apt_opts=()
case "$series" in
6.1) ;;
5.10)
	# Bullseye's archive, through apt lists of our own: the host's sources are not changed.
	a=$CACHE/apt
	mkdir -p "$a/lists/partial" "$a/cache/archives/partial"
	cat >"$a/sources.list" <<-EOF
	deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bullseye main
	deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bullseye-security main
	EOF
	apt_opts=(-o "Dir::Etc::sourcelist=$a/sources.list" -o Dir::Etc::sourceparts=- -o "Dir::State::Lists=$a/lists"
		-o "Dir::Cache=$a/cache" -o APT::Sandbox::User=root)
	apt_update() {
		[ -n "$apt_updated" ] && return
		log "apt-get update (bullseye)"
		apt-get "${apt_opts[@]}" update -qq
		apt_updated=1
	}
	;;
*) die "kernel series $series: want 6.1 or 5.10" ;;
esac
newest() {
	local re=${series//./\\.}
	apt-cache "${apt_opts[@]}" search --names-only "^linux-image-$re\\.0-[0-9]+-amd64\$" | awk '{print $1}' | sort -V | tail -n 1
}
pkg=${SLUICE_KVM_KERNEL:-}
if [ -z "$pkg" ]; then
	pkg=$(newest)
	if [ -z "$pkg" ]; then apt_update; pkg=$(newest); fi
	[ -n "$pkg" ] || die "no linux-image-$series.0-N-amd64 package in the apt lists"
fi
kdir=$CACHE/kernels/$pkg
if [ ! -e "$kdir/.complete" ]; then
	log "downloading $pkg"
	debs=$CACHE/debs-$series # one per series: all.sh prepares them one after the other, but a
	rm -rf "$kdir" "$debs"   # run of one series must never remove another's download
	mkdir -p "$debs"
	# Sandbox user root: the _apt user cannot write into root's cache directory.
	dl() { (cd "$debs" && apt-get "${apt_opts[@]}" download -qq -o APT::Sandbox::User=root "$pkg"); }
	dl || { apt_update; dl; }
	mkdir -p "$kdir"
	dpkg-deb -x "$debs"/"$pkg"_*.deb "$kdir"
	rm -rf "$debs" # the unpacked tree is what later runs use
	touch "$kdir/.complete"
fi
# all.sh prepares each series (host packages, the kernel) alone, then boots them together:
# two apt-get runs at once would fight over dpkg's lock on a fresh machine.
if [ "${SLUICE_KVM_PREPARE_ONLY:-}" = 1 ]; then
	log "prepared $pkg"
	exit 0
fi
vmlinuz=$(find "$kdir/boot" -maxdepth 1 -name 'vmlinuz-*' -print -quit)
[ -n "$vmlinuz" ] || die "$pkg has no /boot/vmlinuz-*"
kver=${vmlinuz##*/vmlinuz-}
moddir=$kdir/lib/modules/$kver
log "kernel $pkg ($kver)"

# --- the initramfs ---------------------------------------------------------------------------
work=$(mktemp -d -t sluice-kvm.XXXXXX)
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root"/{bin,sbin,dev,proc,sys,run,tmp,root,etc,var,datapath,sockterm,lib/modules}
ln -s ../run "$root/var/run"

log "building the datapath test binary"
# Static (no cgo), so it needs nothing from the guest but the kernel.
(cd "$repo" && CGO_ENABLED=0 "$GO" test -c -o "$root/datapath/datapath.test" ./internal/datapath/)
# And the socket terminator's, which needs sock_diag's SOCK_DESTROY of the guest's kernel.
(cd "$repo" && CGO_ENABLED=0 "$GO" test -c -o "$root/sockterm/sockterm.test" ./internal/sockterm/)
if [ -d "$repo/internal/datapath/testdata" ]; then
	cp -r "$repo/internal/datapath/testdata" "$root/datapath/"
fi
# Go's own timeout fires first, so a hung test ends with its goroutine dump in the log.
gotimeout=$((TIMEOUT > 120 ? TIMEOUT - 60 : TIMEOUT))
printf '%s\n' "-test.timeout=${gotimeout}s ${SLUICE_KVM_TESTARGS:-}" >"$root/testargs"
echo "$MIN_UPTIME" >"$root/min-uptime"

install -m 0755 "$here/init" "$root/init"
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
	case "$applet" in
	busybox) ;;
	ip) ;; # iproute2's instead, below: the tests need `ip netns`
	*) ln -s busybox "$root/bin/$applet" ;;
	esac
done
# ip is dynamic: copy it with the libraries and loader ldd names, at the same paths.
ipbin=$(readlink -f "$(command -v ip)")
cp "$ipbin" "$root/sbin/ip"
for lib in $(ldd "$ipbin" | awk '{for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i}'); do
	mkdir -p "$root$(dirname "$lib")"
	cp -L "$lib" "$root$lib"
done

# Modules, dependencies first, uncompressed (busybox insmod takes plain .ko files).
declare -A modpath=() added=()
while IFS= read -r f; do
	n=${f##*/}
	n=${n%%.ko*}
	modpath[${n//-/_}]=$f
done < <(find "$moddir" -name '*.ko*')
: >"$root/lib/modules/load"
add_module() {
	local name=${1//-/_} f out dep deps
	[ -z "${added[$name]:-}" ] || return 0
	f=${modpath[$name]:-}
	if [ -z "$f" ]; then
		# Built into this kernel (or absent): modules.builtin says which.
		grep -q "/${name//_/[-_]}\.ko" "$moddir/modules.builtin" 2>/dev/null ||
			die "module $name is neither in $pkg nor built in"
		added[$name]=builtin
		return 0
	fi
	out=$root/lib/modules/$name.ko
	case "$f" in
	*.ko.xz) xz -dc "$f" >"$out" ;;
	*.ko.zst) zstd -qdc "$f" >"$out" ;;
	*.ko.gz) gzip -dc "$f" >"$out" ;;
	*) cp "$f" "$out" ;;
	esac
	added[$name]=1
	# sed reads to the end (no early q): with pipefail, tr killed by SIGPIPE would fail the run.
	deps=$(tr '\0' '\n' <"$out" | sed -n 's/^depends=//p')
	for dep in ${deps//,/ }; do add_module "$dep"; done
	echo "$name.ko" >>"$root/lib/modules/load"
}
for m in "${MODULES[@]}"; do add_module "$m"; done

(cd "$root" && find . | "$busybox" cpio -o -H newc -R 0:0 2>/dev/null) >"$work/initramfs.cpio"

# --- boot ------------------------------------------------------------------------------------
accel=${SLUICE_KVM_ACCEL:-auto}
if [ "$accel" = auto ]; then
	accel=tcg
	# Hardware KVM only: /dev/kvm can also be a paravirtual KVM (e.g. PVM in a cloud VM without
	# nested VT-x) that boots only guest kernels built for it; Debian's hangs before its first line.
	if [ -w /dev/kvm ] && { [ -d /sys/module/kvm_intel ] || [ -d /sys/module/kvm_amd ]; }; then
		accel=kvm
	else
		kvm_mods=$(find /sys/module -maxdepth 1 -name 'kvm_*' -printf ' %f')
		log "no hardware KVM (modules:${kvm_mods:- none}): emulating with TCG, slower"
	fi
fi
case "$accel" in
kvm) accel_args=(-enable-kvm -cpu host) ;;
tcg) accel_args=(-accel "tcg,thread=multi" -cpu max) ;;
*) die "SLUICE_KVM_ACCEL=$accel: want kvm, tcg or auto" ;;
esac

runlog=$CACHE/last-run-$series.log
log "booting $kver ($accel, timeout ${TIMEOUT}s); serial log in $runlog"
set +e
timeout -k 10 "$TIMEOUT" qemu-system-x86_64 "${accel_args[@]}" \
	-m "${SLUICE_KVM_MEM:-3G}" -smp 2 -nodefaults -no-user-config -display none -serial stdio -no-reboot \
	-kernel "$vmlinuz" -initrd "$work/initramfs.cpio" \
	-append "console=ttyS0 panic=-1 quiet" </dev/null | tee "$runlog"
qemu_status=${PIPESTATUS[0]}
set -e

status=$(tr -d '\r' <"$runlog" | sed -n "s/^$MARKER=\([0-9]*\)\$/\1/p" | tail -n 1)
if [ -z "$status" ]; then
	if [ "$qemu_status" -eq 124 ] || [ "$qemu_status" -eq 137 ]; then
		die "no result from the guest: timed out after ${TIMEOUT}s (log: $runlog)"
	fi
	die "no result from the guest (kernel panic or early failure; qemu exited $qemu_status; log: $runlog)"
fi
if [ "$status" -eq 0 ]; then
	log "datapath tests passed on $kver"
else
	log "datapath tests FAILED on $kver (exit $status)"
fi
exit "$status"
