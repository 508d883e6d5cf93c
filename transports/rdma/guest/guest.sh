#!/usr/bin/env bash
# Real RDMA verbs without RDMA hardware: a small Linux guest with soft-RoCE
# (the kernel's rdma_rxe driver), booted under QEMU's software emulation.
#
#   guest.sh packages                 install the Debian packages this needs
#   guest.sh initramfs OUT FILE...    pack FILEs (binaries) into a guest image
#   guest.sh run IMAGE JOB [ARGS]     boot one guest, rxe on loopback, run
#                                     /jobs/JOB ARGS; exit with its status
#   guest.sh run2 IMAGE "JOB_A [ARGS]" "JOB_B [ARGS]"
#                                     boot two guests joined by a QEMU socket
#                                     network (10.0.0.1 and 10.0.0.2), rxe on
#                                     eth0; exit non-zero if either job failed
#
# Every guest powers itself off when its job ends and runs under `timeout`,
# so nothing here can hang (GUEST_TIMEOUT_S, default 600). A guest whose
# kernel has not started the job within GUEST_BOOT_S (default 120; a boot
# takes about 5 s) hung in the emulator before any of the project's code
# ran: it is stopped and booted again, once. A job that started is never
# run again.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
timeout_s="${GUEST_TIMEOUT_S:-600}"
boot_s="${GUEST_BOOT_S:-120}"
# The newest Debian kernel installed with its modules (the guest's kernel).
kver() {
    local v
    for v in $(ls /boot | sed -n 's/^vmlinuz-//p' | sort -rV); do
        [ -f "/lib/modules/$v/modules.dep" ] && { echo "$v"; return; }
    done
    echo "guest.sh: no kernel in /boot with modules in /lib/modules (install linux-image-amd64)" >&2
    exit 2
}

packages() {
    local need=(qemu-system-x86 linux-image-amd64 busybox-static rdma-core
        ibverbs-utils ibverbs-providers perftest iproute2 libibverbs-dev
        cmake gcc make python3 pkg-config libnl-3-dev libnl-route-3-dev
        libclang-dev cpio)
    local missing=()
    for p in "${need[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -eq 0 ]; then return 0; fi
    echo "installing: ${missing[*]}"
    if [ "$(id -u)" != 0 ]; then
        echo "guest.sh: these Debian packages are missing and installing them needs root: ${missing[*]}" >&2
        exit 2
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# Copies a file and the shared libraries it links (with the dynamic loader).
add_with_libs() {
    local root="$1" file="$2" dest="$3"
    mkdir -p "$root/$(dirname "$dest")"
    cp -L "$file" "$root/$dest"
    ldd "$file" 2>/dev/null | grep -o '/[^ ]*' | while read -r lib; do
        [ -e "$lib" ] || continue
        mkdir -p "$root/$(dirname "$lib")"
        [ -e "$root/$lib" ] || cp -L "$lib" "$root/$lib"
    done
}

initramfs() {
    local out="$1"; shift
    local k; k="$(kver)"
    local root; root="$(mktemp -d)"
    trap 'rm -rf "$root"' RETURN
    mkdir -p "$root"/{bin,sbin,proc,sys,dev,tmp,etc,jobs,laggard,lib/modules}
    cp /bin/busybox "$root/bin/busybox"
    for applet in $("$root/bin/busybox" --list); do
        [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
    done
    # Kernel modules: rdma_rxe and the virtio network stack, each after the
    # modules it depends on (read from modules.dep).
    local moddir="/lib/modules/$k"
    python3 - "$moddir" > "$root/modules.order" <<'PY'
import sys
moddir = sys.argv[1]
deps = {}
for line in open(f"{moddir}/modules.dep"):
    mod, _, rest = line.partition(":")
    deps[mod] = rest.split()
want = ["kernel/crypto/crc32_generic.ko", "kernel/drivers/virtio/virtio_pci.ko",
        "kernel/drivers/net/virtio_net.ko", "kernel/drivers/infiniband/core/ib_uverbs.ko",
        "kernel/drivers/infiniband/sw/rxe/rdma_rxe.ko"]
order, seen = [], set()
def visit(m):
    if m in seen: return
    seen.add(m)
    # modules.dep lists every (transitive) dependency; load them deepest first
    for d in reversed(deps.get(m, [])): visit(d)
    order.append(m)
for m in want: visit(m)
print("\n".join(order))
PY
    while read -r m; do
        mkdir -p "$root/lib/modules/$(dirname "$m")"
        cp "$moddir/$m" "$root/lib/modules/$m"
    done < "$root/modules.order"
    # The verbs library, the rxe provider, the rdma tool and perftest.
    add_with_libs "$root" /usr/bin/rdma /bin/rdma
    for t in ib_write_bw ib_write_lat ibv_devices ibv_devinfo; do
        add_with_libs "$root" "/usr/bin/$t" "/bin/$t"
    done
    local prov; prov="$(ls /usr/lib/x86_64-linux-gnu/libibverbs/librxe-rdmav*.so)"
    add_with_libs "$root" "$prov" "$prov"
    mkdir -p "$root/etc/libibverbs.d"
    cp /etc/libibverbs.d/rxe.driver "$root/etc/libibverbs.d/"
    # The project's binaries.
    for f in "$@"; do
        add_with_libs "$root" "$f" "/laggard/$(basename "$f")"
    done
    cp "$here/init" "$root/init"
    cp "$here"/jobs/* "$root/jobs/"
    chmod +x "$root/init" "$root"/jobs/*
    (cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$out"
    echo "guest image: $out ($(du -h "$out" | cut -f1))"
}

# tsc=reliable: under software emulation the kernel finds the vCPUs' TSCs
# unsynchronized and falls back to the HPET, which turns every
# clock_gettime into a system call and an emulated device read (several
# microseconds; real hosts read the TSC in the vDSO in tens of
# nanoseconds). QEMU derives every vCPU's TSC from one host clock, so it is
# safe to trust.
# Run it in the background (`qemu ... &`): it replaces that subshell with
# `timeout`, so `$!` is timeout's process, which passes a kill on to QEMU.
qemu() {
    local image="$1" append="$2"; shift 2
    exec timeout --kill-after=10 "$timeout_s" qemu-system-x86_64 \
        -machine pc -cpu max -smp 2 -m 3G -nographic -no-reboot \
        -kernel "/boot/vmlinuz-$(kver)" -initrd "$image" \
        -append "console=ttyS0 panic=-1 quiet loglevel=3 tsc=reliable $append" "$@"
}

# The job's status is the number after the marker its guest printed last.
status_of() {
    local s
    s="$(grep -a -o 'LAGGARD-JOB-STATUS [0-9]*' "$1" | tail -1 | cut -d' ' -f2)"
    echo "${s:-255}"
}

# Waits until every guest logging to one of LOGS (their PIDS first, then
# "--", then the logs) started its job or stopped; fails if one did
# neither within boot_s seconds.
booted() {
    local pids=() logs=() waited=0 log i pending
    while [ "$1" != -- ]; do pids+=("$1"); shift; done
    shift
    logs=("$@")
    while :; do
        pending=0
        for i in "${!logs[@]}"; do
            log="${logs[$i]}"
            grep -aq 'init: running job' "$log" && continue
            kill -0 "${pids[$i]}" 2>/dev/null || continue
            pending=1
        done
        [ "$pending" = 0 ] && return 0
        [ "$waited" -ge "$boot_s" ] && return 1
        sleep 1
        waited=$((waited + 1))
    done
}

# Stops the guests whose `timeout` processes are PIDS (it stops QEMU).
stop() {
    local pid
    for pid in "$@"; do kill "$pid" 2>/dev/null || true; done
    for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
}

run() {
    local image="$1" job="$2"; shift 2
    local log; log="$(mktemp)"
    local attempt pid
    for attempt in 1 2; do
        : > "$log"
        qemu "$image" "laggard.job=$job laggard.args=$(IFS=,; echo "$*")" > "$log" 2>&1 &
        pid=$!
        tail -f --pid="$pid" "$log" | tr -d '\r' &
        if booted "$pid" -- "$log"; then
            wait "$pid" || true
            wait
            break
        fi
        stop "$pid"
        wait
        echo "guest.sh: the guest did not start job $job within ${boot_s}s (hung while booting, attempt $attempt of 2)"
    done
    local s; s="$(status_of "$log")"
    rm -f "$log"
    [ "$s" = 0 ] || { echo "guest job $job failed (status $s)"; return 1; }
}

run2() {
    local image="$1" job_a="$2" job_b="$3"
    # "JOB ARG..." -> laggard.job=JOB laggard.args=ARG,...
    cmdline() { local job="${1%% *}" args=""; [ "$1" = "$job" ] || args="${1#* }"; echo "laggard.job=$job laggard.args=${args// /,}"; }
    local log_a log_b; log_a="$(mktemp)"; log_b="$(mktemp)"
    local attempt pid_a pid_b port_a port_b
    for attempt in 1 2; do
        : > "$log_a"; : > "$log_b"
        port_a=$((20000 + RANDOM % 20000)); port_b=$((port_a + 1))
        qemu "$image" "$(cmdline "$job_a") laggard.ip=10.0.0.1 laggard.peer=10.0.0.2" \
            -netdev "socket,id=n0,udp=127.0.0.1:$port_b,localaddr=127.0.0.1:$port_a" \
            -device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:01 > "$log_a" 2>&1 &
        pid_a=$!
        qemu "$image" "$(cmdline "$job_b") laggard.ip=10.0.0.2 laggard.peer=10.0.0.1" \
            -netdev "socket,id=n0,udp=127.0.0.1:$port_a,localaddr=127.0.0.1:$port_b" \
            -device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:02 > "$log_b" 2>&1 &
        pid_b=$!
        if booted "$pid_a" "$pid_b" -- "$log_a" "$log_b"; then
            wait "$pid_a" || true
            wait "$pid_b" || true
            break
        fi
        stop "$pid_a" "$pid_b"
        echo "guest.sh: a guest did not start its job within ${boot_s}s (hung while booting, attempt $attempt of 2)"
    done
    echo "--- guest A ($job_a)"; tr -d '\r' < "$log_a"
    echo "--- guest B ($job_b)"; tr -d '\r' < "$log_b"
    local sa sb; sa="$(status_of "$log_a")"; sb="$(status_of "$log_b")"
    rm -f "$log_a" "$log_b"
    [ "$sa" = 0 ] && [ "$sb" = 0 ] || { echo "two-guest run failed (A: $sa, B: $sb)"; return 1; }
}

cmd="${1:-}"; shift || true
case "$cmd" in
    packages) packages ;;
    initramfs) initramfs "$@" ;;
    run) run "$@" ;;
    run2) run2 "$@" ;;
    *) sed -n '2,16p' "$0"; exit 2 ;;
esac
