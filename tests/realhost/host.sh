#!/usr/bin/env bash
# A real Debian systemd host (12 by default; MNTREAP_REALHOST_RELEASE=trixie|sid) for
# mntreap's real-host tests (tests/realhost.rs): systemd as
# PID 1 and Debian's own docker.io / containerd / nginx units, booted in systemd-nspawn on
# this machine's kernel.
#
#   host.sh build                    build the rootfs once (mmdebstrap, ~45 s) and cache it in
#                                    $MNTREAP_REALHOST_CACHE (default /var/cache/mntreap-realhost),
#                                    outside the repository; rebuilt when the package list changes
#   host.sh up NAME [OPTION...] [-- NSPAWN-ARG...]
#                                    copy the rootfs, configure it, boot it in the background,
#                                    wait for `systemctl is-system-running --wait`; prints the
#                                    host pid of the guest's PID 1
#       --live-restore               daemon.json "live-restore": true
#       --mountflags-slave           docker.service drop-in MountFlags=slave, dockerd supervising
#                                    its own containerd (ExecStart=/usr/sbin/dockerd -H fd://,
#                                    containerd.service masked): the first write-up's setup
#       --cri                        containerd's CRI plugin configured as on a Kubernetes node:
#                                    runc with the systemd cgroup driver, the sandbox image a
#                                    local one (the guest has no registry); docker.service and
#                                    docker.socket masked, as on a containerd node
#       --bin PATH                   static mntreap, bound read-only at /usr/local/bin/mntreap
#                                    (default: $MNTREAP_REALHOST_BIN)
#       --deb PATH                   a .deb (packaging/deb/build.sh), copied to /root/mntreap.deb
#   host.sh vm NAME [--cri] --bin PATH --test-bin PATH --test NAME
#                                    the release in a qemu VM instead (its own kernel from
#                                    linux-image-amd64, cgroup v2 with real controllers; a root
#                                    cached apart, with the kernel): the rootfs configured as
#                                    for `up`, the static mntreap and a test binary copied in,
#                                    booted under TCG; a unit runs that binary's test NAME
#                                    with MNTREAP_REALHOST_IN_GUEST=1 and powers off. Prints
#                                    the test's output, exits with its status; VM_TIMEOUT
#                                    (default 1200 s) bounds the run
#   host.sh exec NAME CMD...         run CMD inside (all namespaces of the guest's PID 1)
#   host.sh run NAME CMD...          run CMD inside as a transient unit (systemd-run --pipe --wait)
#   host.sh leader NAME              host pid of the guest's PID 1
#   host.sh console NAME             the guest's console log
#   host.sh down NAME [--kill]       stop it (poweroff, or SIGKILL to its PID 1 with --kill), kill
#                                    what is left in the cgroups this script created, remove them
#                                    and the run directory
#
# The repository's docker-plugin/ directory is bound read-only at /opt/mntreap/docker-plugin.
# Debian's units stay as shipped; scenarios change only configuration and drop-ins.
#
# This machine: PID 1 is not systemd and cgroups are hybrid v1, so nspawn runs with
# --register=no --keep-unit (no machined, no host systemd), and the launcher first moves
# itself into cgroups of its own (one per hierarchy, below its current ones). Docker in the
# guest needs no nspawn seccomp filter (SYSTEMD_SECCOMP=0; else runc fails "unable to join
# session keyring") and writable v1 controllers (nspawn mounts them read-only; the unit
# mntreap-cgroup-rw.service remounts them rw). The guest has only lo (--private-network):
# containers run with --network none.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
CACHE=${MNTREAP_REALHOST_CACHE:-/var/cache/mntreap-realhost}
# The Debian release the guest runs: bookworm (docker.io 20.10), trixie (26.1), sid (28.5).
RELEASE=${MNTREAP_REALHOST_RELEASE:-bookworm}
case "$RELEASE" in bookworm|trixie|sid) ;; *) echo "unknown release $RELEASE" >&2; exit 2;; esac
if [ "$RELEASE" = bookworm ]; then ROOTFS=$CACHE/rootfs; else ROOTFS=$CACHE/rootfs-$RELEASE; fi
RUNBASE=$CACHE/run
SOURCES=${MNTREAP_REALHOST_SOURCES:-}
PKGS=systemd,systemd-sysv,dbus,docker.io,containerd,nginx,busybox-static,iproute2,procps,util-linux
# trixie and sid ship the docker CLI apart from the daemon.
if [ "$RELEASE" != bookworm ]; then PKGS=$PKGS,docker-cli; fi
# A VM boots the release's own kernel; the test binary inside it runs python3 (the CRI
# test's image) and ctr (containerd's package).
if [ "${1:-}" = vm ]; then
    ROOTFS=$ROOTFS-vm
    PKGS=$PKGS,linux-image-amd64,initramfs-tools,python3
fi
STAMP="$RELEASE minbase $PKGS"
BOOT_TIMEOUT=${BOOT_TIMEOUT:-120}

log() { echo "[$(date +%T)] host.sh: $*" >&2; }

cmd_build() {
    mkdir -p "$CACHE"
    exec 9>"$CACHE/build-$RELEASE.lock"
    flock 9 # concurrent tests: one builds, the others wait and reuse
    if [ -e "$ROOTFS/usr/sbin/dockerd" ] && [ "$(cat "$ROOTFS/.mntreap-stamp" 2>/dev/null)" = "$STAMP" ]; then
        exec 9>&-
        return
    fi
    rm -rf --one-file-system "$ROOTFS.tmp" "$ROOTFS"
    local t0=$SECONDS mirrors=()
    # the package archive the host is configured with (a deb822 file or list), if any
    if [ -n "$SOURCES" ]; then mirrors=("$SOURCES")
    elif [ -e /etc/apt/sources.list.d/debian.sources ]; then mirrors=(/etc/apt/sources.list.d/debian.sources)
    fi
    # The host's file names its own suites: another release takes the same archive with
    # its own suite.
    if [ "$RELEASE" != bookworm ] && [ ${#mirrors[@]} -gt 0 ] && [ -f "${mirrors[0]}" ]; then
        local uri
        uri=$(awk '/^URIs:/{print $2; exit} /^deb /{print $2; exit}' "${mirrors[0]}")
        mirrors=("deb $uri $RELEASE main")
    fi
    log "mmdebstrap $RELEASE -> $ROOTFS"
    # The archive reachable here is a snapshot: sid's Release file is past its Valid-Until.
    if ! nice -n 10 mmdebstrap --quiet --variant=minbase --include="$PKGS" \
            --aptopt='Acquire::Check-Valid-Until "false"' "$RELEASE" "$ROOTFS.tmp" "${mirrors[@]}" \
            > "$CACHE/build-$RELEASE.log" 2>&1; then
        cat "$CACHE/build-$RELEASE.log" >&2
        exit 1
    fi
    echo "$STAMP" > "$ROOTFS.tmp/.mntreap-stamp"
    mv "$ROOTFS.tmp" "$ROOTFS"
    log "rootfs built in $((SECONDS - t0))s"
    exec 9>&-
}

# Configuration of a guest's copy: only config files and drop-ins, Debian's units as shipped.
configure() {
    local r=$1 live_restore=$2 slave=$3 cri=$4
    echo "$(basename "$(dirname "$r")")" > "$r/etc/hostname"
    : > "$r/etc/machine-id"
    mkdir -p "$r/etc/docker"
    # no bridge / iptables: the guest has only lo
    # MNTREAP_REALHOST_IMAGE_STORE=containerd: Docker 26+'s containerd image store (the
    # default from Docker 29) instead of the overlay2 graph driver.
    local storage='"storage-driver": "overlay2"'
    if [ "${MNTREAP_REALHOST_IMAGE_STORE:-}" = containerd ]; then
        storage='"features": {"containerd-snapshotter": true}'
    fi
    cat > "$r/etc/docker/daemon.json" <<EOF
{
  "bridge": "none",
  "iptables": false,
  "ip-masq": false,
  $storage,
  "live-restore": $live_restore
}
EOF
    # a busybox rootfs for `docker import`
    rm -rf "$r/opt/bbroot"; mkdir -p "$r/opt/bbroot/bin" "$r/opt/bbroot/tmp"
    cp "$r/bin/busybox" "$r/opt/bbroot/bin/busybox"
    for a in sh sleep cat ls echo; do ln -sf busybox "$r/opt/bbroot/bin/$a"; done
    # nspawn mounts the v1 controllers read-only; docker (runc, cgroupfs driver) must
    # mkdir /sys/fs/cgroup/<ctrl>/docker: remount them rw (the per-mount flag only)
    cat > "$r/etc/systemd/system/mntreap-cgroup-rw.service" <<'EOF'
[Unit]
Description=Make nspawn's read-only cgroup v1 controller mounts writable (for docker)
DefaultDependencies=no
Before=sysinit.target containerd.service docker.service
ConditionVirtualization=systemd-nspawn

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'for d in /sys/fs/cgroup/*/; do if mountpoint -q "$d"; then mount -o remount,bind,rw "$d"; fi; done'

[Install]
WantedBy=sysinit.target
EOF
    mkdir -p "$r/etc/systemd/system/sysinit.target.wants"
    ln -sf ../mntreap-cgroup-rw.service "$r/etc/systemd/system/sysinit.target.wants/"
    # bookworm's nginx.service has no PrivateTmp; the second write-up's services do
    mkdir -p "$r/etc/systemd/system/nginx.service.d"
    printf '[Service]\nPrivateTmp=true\n' > "$r/etc/systemd/system/nginx.service.d/private-tmp.conf"
    # nothing asks for a login on the console
    ln -sf /dev/null "$r/etc/systemd/system/console-getty.service"
    if [ "$cri" = 1 ]; then
        # A Kubernetes node's containerd (kubelet would talk to it; the tests do, as kubelet
        # does). The config format of containerd 1.6/1.7; 2.x migrates it.
        cat > "$r/etc/containerd/config.toml" <<'EOF'
version = 2
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "mntreap.test/busybox:1"
  # nspawn gives the guest no AppArmor of its own, whatever the host kernel has
  disable_apparmor = true
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      SystemdCgroup = true
EOF
        # a containerd node has no dockerd: mntreap finds the CRI runtime on its own
        ln -sf /dev/null "$r/etc/systemd/system/docker.service"
        ln -sf /dev/null "$r/etc/systemd/system/docker.socket"
    fi
    if [ "$slave" = 1 ]; then
        # the first write-up: dockerd in a slave mount namespace, supervising its own
        # containerd (as 18.06 did)
        ln -sf /dev/null "$r/etc/systemd/system/containerd.service"
        mkdir -p "$r/etc/systemd/system/docker.service.d"
        printf '[Service]\nMountFlags=slave\nExecStart=\nExecStart=/usr/sbin/dockerd -H fd://\n' \
            > "$r/etc/systemd/system/docker.service.d/mountflags.conf"
    fi
}

rundir() { echo "$RUNBASE/$1"; }

# A VM of the release (see the usage above). Measured here: sid's kernel boots to
# multi-user.target and powers off in about 30 s under TCG. This machine has /dev/kvm
# (nested), but under KVM the kernel's decompressor stops at "KVM internal error ...
# emulation failure", so the VM runs under TCG.
cmd_vm() {
    local name=${1:?usage: host.sh vm NAME [--cri] --bin PATH --test-bin PATH --test NAME}; shift
    local cri=0 bin="" testbin="" test=""
    while [ $# -gt 0 ]; do
        case "$1" in
            --cri) cri=1;;
            --bin) bin=$2; shift;;
            --test-bin) testbin=$2; shift;;
            --test) test=$2; shift;;
            *) echo "unknown option $1" >&2; exit 2;;
        esac
        shift
    done
    if [ -z "$bin" ] || [ -z "$testbin" ] || [ -z "$test" ]; then
        echo "vm: --bin, --test-bin and --test are needed" >&2; exit 2
    fi
    case "${VM_BOOTS:-3}" in ''|*[!0-9]*) echo "VM_BOOTS must be a number, not '$VM_BOOTS'" >&2; exit 2;; esac
    command -v qemu-system-x86_64 >/dev/null \
        || { echo "qemu-system-x86_64 is missing: run .ci/run (installs qemu-system-x86)" >&2; exit 1; }
    cmd_build
    local d; d=$(rundir "$name")
    [ -n "$d" ] || exit 1
    [ -e "$d" ] && cmd_down "$name" --kill
    local t0=$SECONDS root="$d/root"
    mkdir -p "$d"
    cp -a --reflink=auto "$ROOTFS" "$root"
    configure "$root" false 0 "$cri"
    install -D -m 755 "$bin" "$root/usr/local/bin/mntreap"
    install -D -m 755 "$testbin" "$root/opt/mntreap/realhost-test"
    ln -sf /dev/null "$root/etc/systemd/system/serial-getty@ttyS0.service"
    local unit="$root/etc/systemd/system/mntreap-vm-test.service"
    {
        echo "[Unit]"
        echo "Description=mntreap's real-host test $test, inside the VM"
        echo "After=multi-user.target containerd.service"
        echo "Wants=containerd.service"
        echo
        echo "[Service]"
        echo "Type=oneshot"
        echo "Environment=MNTREAP_REALHOST_IN_GUEST=1 MNTREAP_REALHOST_RELEASE=$RELEASE RUST_BACKTRACE=1 HOME=/root"
        echo "ExecStart=/bin/sh -c 'echo MNTREAP-VM-BEGIN; /opt/mntreap/realhost-test --exact $test --nocapture --test-threads 1 2>&1; echo MNTREAP-VM-RC=\$\$?'"
        echo "ExecStopPost=/bin/systemctl --no-block poweroff"
        echo "StandardOutput=tty"
        echo "TTYPath=/dev/ttyS0"
        echo
        echo "[Install]"
        echo "WantedBy=multi-user.target"
    } > "$unit"
    ln -sf ../mntreap-vm-test.service "$root/etc/systemd/system/multi-user.target.wants/"
    cp "$root"/boot/vmlinuz-* "$d/vmlinuz"
    cp "$root"/boot/initrd.img-* "$d/initrd.img"
    # room for images, pods and logs beside the root's own size
    local mb; mb=$(( $(du -sm "$root" | cut -f1) + 3072 ))
    # sid's kernel (7.2 measured) sometimes dies of an "Oops: int3" in its own boot under
    # multi-threaded TCG (the emulator's race with the kernel patching its text: 2 boots in
    # 40 here, before init ran). panic=1 oops=panic with -no-reboot make a panic or an oops
    # end qemu at once instead of at the timeout (a hang still waits for it). A boot that
    # panicked before the test began is booted again, on a disk made afresh from the root
    # (a first boot again), at most VM_BOOTS times (default 3), logged; a crash after the
    # test began fails the test.
    local boots=${VM_BOOTS:-3} boot=1 limit=${VM_TIMEOUT:-1200}
    local deadline=$((SECONDS + limit)) qpid
    while :; do
        rm -f "$d/disk.img"
        truncate -s "${mb}M" "$d/disk.img"
        mkfs.ext4 -q -F -L mntreap-vm -d "$root" "$d/disk.img"
        if [ "$boot" = 1 ]; then log "$name: disk image in $((SECONDS - t0))s; booting under TCG"
        else log "$name: booting again at $((SECONDS - t0))s (boot $boot of at most $boots)"; fi
        qemu-system-x86_64 -accel tcg,thread=multi -cpu max -m 3072 -smp 2 \
            -display none -monitor none -serial "file:$d/console.log" -no-reboot -nic none \
            -kernel "$d/vmlinuz" -initrd "$d/initrd.img" \
            -append "root=/dev/vda rw console=ttyS0 quiet systemd.show_status=false panic=1 oops=panic" \
            -drive "file=$d/disk.img,format=raw,if=virtio" < /dev/null > "$d/qemu.log" 2>&1 &
        qpid=$!
        echo "$qpid" > "$d/qemu.pid"
        while kill -0 "$qpid" 2>/dev/null; do
            if [ "$SECONDS" -ge "$deadline" ]; then
                log "$name: no poweroff within ${limit}s; killing qemu $qpid"
                kill -KILL "$qpid" 2>/dev/null || true
                break
            fi
            sleep 1
        done
        wait "$qpid" 2>/dev/null || true
        if grep -q 'MNTREAP-VM-BEGIN' "$d/console.log" \
                || ! grep -q 'Kernel panic' "$d/console.log" \
                || [ "$boot" -ge "$boots" ] || [ "$SECONDS" -ge "$deadline" ]; then
            break
        fi
        log "$name: the guest's kernel crashed before the test began; its console:"
        grep -m 3 -E 'Oops|RIP:|Kernel panic' "$d/console.log" >&2 || true
        rm -f "$d/console.log" "$d/qemu.log"
        boot=$((boot + 1))
    done
    rm -rf --one-file-system "${root:?}"
    log "$name: VM done in $((SECONDS - t0))s"
    local out rc
    out=$(tr -d '\r' < "$d/console.log" | sed -n '/MNTREAP-VM-BEGIN/,/MNTREAP-VM-RC=/p')
    rc=$(printf '%s\n' "$out" | sed -n 's/.*MNTREAP-VM-RC=\([0-9]*\).*/\1/p' | tail -1)
    printf '%s\n' "$out"
    if [ -z "$rc" ]; then
        log "$name: the test never finished; the console's end:"
        tail -n 80 "$d/console.log" >&2
        cat "$d/qemu.log" >&2
        rc=1
    fi
    cmd_down "$name"
    return "$rc"
}

# nspawn without a cgroup namespace binds every v1 controller the kernel has (every enabled
# line of /proc/cgroups) from the host's /sys/fs/cgroup/NAME, and fails on one it cannot find;
# this machine leaves some unmounted, some of them (hugetlb) attached to cgroup2 with no
# cgroup using them there, which a v1 mount takes over. Mounts each as a hierarchy of its own
# (an earlier one, if the kernel still has it), as a booted host has it, and
# lists the ones it mounted in $CONTROLLERS: the last guest's `down` unmounts them.
CONTROLLERS=$RUNBASE/controllers
mount_missing_controllers() {
    local ctrl enabled
    while read -r ctrl _ _ enabled; do
        case "$ctrl" in '#'*) continue;; esac
        [ "$enabled" = 1 ] || continue
        findmnt -rn -t cgroup -o OPTIONS | tr , '\n' | grep -qx "$ctrl" && continue
        mkdir -p "/sys/fs/cgroup/$ctrl"
        if ! mount -t cgroup -o "$ctrl" "cgroup" "/sys/fs/cgroup/$ctrl"; then
            rmdir "/sys/fs/cgroup/$ctrl" 2>/dev/null || true
            log "cannot mount the cgroup v1 controller $ctrl, which nspawn needs (cgroup2 has" \
                "$(cat /sys/fs/cgroup/unified/cgroup.controllers 2>/dev/null); one a cgroup2" \
                "cgroup enables stays there): no CRI guest on this machine"
            return 1
        fi
        echo "$ctrl" >> "$CONTROLLERS"
    done < /proc/cgroups
}

# one sub-cgroup (below the launcher's current one) in every hierarchy
cg_paths() {
    local name=$1 hid ctrl path mnt opts
    while IFS=: read -r hid ctrl path; do
        if [ -z "$ctrl" ]; then mnt=$(findmnt -rn -t cgroup2 -o TARGET | head -1)
        else
            mnt=""
            while read -r m opts; do
                case ",$opts," in *",${ctrl},"*) mnt=$m; break;; esac
            done < <(findmnt -rn -t cgroup -o TARGET,OPTIONS)
        fi
        [ -n "$mnt" ] || continue
        echo "$mnt${path%/}/mntreap-realhost-$name"
    done < /proc/self/cgroup
}

find_leader() { # the child of nspawn that is PID 1 in its pid namespace
    local npid=$1 p ppid ns
    for p in /proc/[0-9]*; do
        read -r _ _ _ ppid _ 2>/dev/null < "$p/stat" || continue
        [ "$ppid" = "$npid" ] || continue
        ns=$(awk '/^NSpid:/{print $NF}' "$p/status" 2>/dev/null)
        [ "$ns" = 1 ] && { echo "${p#/proc/}"; return 0; }
    done
    return 1
}

cmd_up() {
    local name=${1:?usage: host.sh up NAME [OPTION...]}; shift
    local live_restore=false slave=0 cri=0 bin=${MNTREAP_REALHOST_BIN:-} deb= nspawn_args=()
    while [ $# -gt 0 ]; do
        case "$1" in
            --live-restore) live_restore=true;;
            --mountflags-slave) slave=1;;
            --cri) cri=1;;
            --bin) bin=$2; shift;;
            --deb) deb=$2; shift;;
            --) shift; nspawn_args=("$@"); break;;
            *) echo "unknown option $1" >&2; exit 2;;
        esac
        shift
    done
    cmd_build
    local d; d=$(rundir "$name")
    if [ -e "$d/nspawn.pid" ] && kill -0 "$(cat "$d/nspawn.pid")" 2>/dev/null; then
        echo "$name is already running" >&2; exit 1; fi
    [ -e "$d" ] && cmd_down "$name" --kill # stale run directory
    local t0=$SECONDS
    mkdir -p "$d"
    # a plain copy: / is one ext4 tree like a real host's (overlay2 cannot use an overlayfs
    # upper directory), /var/lib/docker is not a separate mount
    cp -a --reflink=auto "$ROOTFS" "$d/root"
    configure "$d/root" "$live_restore" "$slave" "$cri"
    if [ -n "$deb" ]; then cp "$deb" "$d/root/root/mntreap.deb"; fi
    local binds=(--bind-ro="$repo/docker-plugin:/opt/mntreap/docker-plugin")
    if [ -n "$bin" ]; then binds+=(--bind-ro="$bin:/usr/local/bin/mntreap"); fi
    # held until nspawn.pid exists, so that no `down` unmounts the controllers between
    exec {lock}>"$RUNBASE/controllers.lock"; flock "$lock"
    if [ "$cri" = 1 ]; then mount_missing_controllers; fi
    cg_paths "$name" > "$d/cgroups"
    (
        while read -r cg; do
            mkdir -p "$cg"
            if [ -e "$cg/cpuset.cpus" ]; then # v1 cpuset starts empty: inherit
                cat "$cg/../cpuset.cpus" > "$cg/cpuset.cpus"; cat "$cg/../cpuset.mems" > "$cg/cpuset.mems"
            fi
            echo $BASHPID > "$cg/cgroup.procs"
        done < "$d/cgroups"
        export SYSTEMD_SECCOMP=0
        # sid's systemd (258+) refuses cgroup v1: give it the unified hierarchy, which this
        # cgroup v1 host offers without controllers (enough for Docker, not for CRI pods).
        if [ "$RELEASE" = sid ]; then export SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1; fi
        # A host's processes live in the kernel's initial cgroup namespace, the only one in
        # which mntreap trusts kubelet's cgroup paths (in nspawn's own it cannot place a
        # pod's processes, and protects every namespace that may be one): a CRI guest gets none.
        if [ "$cri" = 1 ]; then export SYSTEMD_NSPAWN_USE_CGNS=0; fi
        exec systemd-nspawn --quiet --boot --directory="$d/root" --machine="$name" \
            --register=no --keep-unit --capability=all --private-network \
            --console=passive "${binds[@]}" "${nspawn_args[@]}" > "$d/console.log" 2>&1 < /dev/null
    ) &
    local npid=$!
    echo "$npid" > "$d/nspawn.pid"
    flock -u "$lock"; exec {lock}>&-
    local leader="" i
    for i in $(seq 1 200); do
        leader=$(find_leader "$npid") && [ -n "$leader" ] && break
        kill -0 "$npid" 2>/dev/null || { cat "$d/console.log" >&2; exit 1; }
        sleep 0.05
    done
    [ -n "$leader" ] || { log "$name: no leader"; cat "$d/console.log" >&2; exit 1; }
    echo "$leader" > "$d/leader.pid"
    # wait for systemd inside (its bus may not exist for the first fraction of a second)
    local state=""
    for i in $(seq 1 "$BOOT_TIMEOUT"); do
        state=$(timeout "$BOOT_TIMEOUT" nsenter -t "$leader" -a systemctl is-system-running --wait 2>/dev/null) && break
        case "$state" in degraded|running|maintenance|stopping) break;; esac
        kill -0 "$npid" 2>/dev/null || { cat "$d/console.log" >&2; exit 1; }
        sleep 1
    done
    log "booted $name in $((SECONDS - t0))s: state=$state nspawn=$npid leader=$leader"
    echo "$leader"
}

leader() {
    local f; f="$(rundir "$1")/leader.pid"
    [ -e "$f" ] || { echo "$1 is not up" >&2; exit 1; }
    cat "$f"
}

cmd_exec() { local name=$1; shift
    exec nsenter -t "$(leader "$name")" -a env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root TERM=dumb LANG=C.UTF-8 "$@"; }

cmd_run() { local name=$1; shift
    cmd_exec "$name" systemd-run --quiet --pipe --wait --collect --service-type=exec "$@"; }

others_up() { # another guest's nspawn still runs
    local f
    for f in "$RUNBASE"/*/nspawn.pid; do
        [ -e "$f" ] && [ "$f" != "$(rundir "$1")/nspawn.pid" ] || continue
        [ "$(cat "/proc/$(cat "$f")/comm" 2>/dev/null)" = systemd-nspawn ] && return 0
    done
    return 1
}

cmd_down() {
    local name=${1:?usage: host.sh down NAME [--kill]} d; d=$(rundir "$name")
    [ -d "$d" ] || return 0
    local npid="" i; [ -e "$d/nspawn.pid" ] && npid=$(cat "$d/nspawn.pid")
    # a VM's qemu, only while that pid is still a qemu (pids are reused)
    if [ -e "$d/qemu.pid" ]; then
        local q; q=$(cat "$d/qemu.pid")
        case "$(cat "/proc/$q/comm" 2>/dev/null)" in qemu-system-*) kill -KILL "$q" 2>/dev/null || true;; esac
    fi
    # only a pid that is still our systemd-nspawn (pids are reused)
    if [ -n "$npid" ] && [ "$(cat "/proc/$npid/comm" 2>/dev/null)" = systemd-nspawn ]; then
        if [ "${2:-}" = --kill ] && [ -e "$d/leader.pid" ]; then
            # SIGKILL to the guest's PID 1 ends its whole pid namespace
            local l; l=$(cat "$d/leader.pid")
            grep -qx "PPid:[[:space:]]*$npid" "/proc/$l/status" 2>/dev/null && kill -KILL "$l" 2>/dev/null || true
        else
            kill -TERM "$npid" 2>/dev/null || true # nspawn -> SIGRTMIN+3 to PID 1 -> poweroff
        fi
        for i in $(seq 1 150); do kill -0 "$npid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$npid" 2>/dev/null && kill -KILL "$npid" 2>/dev/null || true
    fi
    # anything left in the cgroups this script created (only what it started lives there)
    if [ -e "$d/cgroups" ]; then
        local cg p
        for i in 1 2 3 4 5; do
            local left=0
            while read -r cg; do
                [ -d "$cg" ] || continue
                while read -r p; do left=1; kill -KILL "$p" 2>/dev/null || true
                done < <(find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null)
            done < "$d/cgroups"
            [ "$left" = 0 ] && break
            sleep 0.2
        done
        while read -r cg; do
            [ -d "$cg" ] && { find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null || true; }
        done < "$d/cgroups"
    fi
    # the controllers an `up` mounted, once no other guest of this script runs
    exec {lock}>"$RUNBASE/controllers.lock"; flock "$lock"
    if [ -e "$CONTROLLERS" ] && ! others_up "$name"; then
        local ctrl
        while read -r ctrl; do
            umount "/sys/fs/cgroup/$ctrl" && rmdir "/sys/fs/cgroup/$ctrl" || true
        done < "$CONTROLLERS"
        rm -f "$CONTROLLERS"
    fi
    flock -u "$lock"; exec {lock}>&-
    rm -rf --one-file-system "$d"
    log "down $name"
}

case "${1:-}" in
    build) cmd_build; echo "$ROOTFS";;
    up) shift; cmd_up "$@";;
    vm) shift; cmd_vm "$@";;
    exec) shift; cmd_exec "$@";;
    run) shift; cmd_run "$@";;
    leader) leader "$2";;
    console) cat "$(rundir "$2")/console.log";;
    down) shift; cmd_down "$@";;
    *) sed -n '2,40p' "$0"; exit 2;;
esac
