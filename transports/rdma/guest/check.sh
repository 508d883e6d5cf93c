#!/usr/bin/env bash
# Everything laggard-rdma checks, on the host and then on real verbs in
# soft-RoCE guests. Installs what it needs (Debian packages, as root).
#
#   check.sh          host checks, then the guests: the tests (unit,
#                     conformance, verbs), the training demo in one guest,
#                     the demo split across two guests (servers on one,
#                     workers on the other), and a smoke run of the benchmarks
#   check.sh bench    the same, with the full benchmarks against perftest
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
crate="$(dirname "$here")"
cd "$crate"
export CARGO_TERM_COLOR=never
step() { printf '\n==> rdma: %s\n' "$*"; }

step "Debian packages (QEMU, kernel, rdma-core, perftest, build dependencies)"
"$here/guest.sh" packages

step "format, clippy (warnings denied), docs"
cargo fmt --check
cargo clippy --all-targets -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps

step "host tests (no device here: handshake, ring bookkeeping, preflight's message, fuzz corpus)"
cargo test --release --lib --test preflight --test fuzz_corpus

step "build the binaries the guests run"
bins="$(mktemp -d)"
trap 'rm -rf "$bins"' EXIT
cargo test --release --no-run --message-format=json 2>/dev/null | python3 -c '
import json, shutil, sys
dest = sys.argv[1]
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        name = m["target"]["name"]
        shutil.copy(m["executable"], dest + "/test-" + name)
' "$bins"
cargo build --release --example train_rdma
cp target/release/examples/train_rdma "$bins/"
cargo bench --no-run --message-format=json 2>/dev/null | python3 -c '
import json, shutil, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and "bench" in m["target"]["kind"]:
        shutil.copy(m["executable"], sys.argv[1] + "/bench-" + m["target"]["name"])
' "$bins"
ls "$bins"
image="$bins/guest.cpio.gz"
"$here/guest.sh" initramfs "$image" "$bins"/*

step "guest: unit, conformance and verbs tests on soft-RoCE"
# (The corpus replay reads the source tree, so it runs on the host only.)
tests="$(cd "$bins" && ls test-* | grep -v fuzz_corpus | tr '\n' ' ')"
# shellcheck disable=SC2086
"$here/guest.sh" run "$image" tests $tests

step "guest: the training demo, 2 servers and 4 workers, one process each; worker 3's process exits at clock 15 and a new one takes its place"
"$here/guest.sh" run "$image" demo --servers 2 --workers 4 --clocks 40 --crash-at 15

step "two guests: servers on 10.0.0.1, workers on 10.0.0.2, rxe on eth0"
"$here/guest.sh" run2 "$image" "servers --servers 2 --workers 2 --clocks 30" "workers --servers 2 --workers 2 --clocks 30"

if [ "${1:-}" = bench ]; then
    step "guest: benchmarks against perftest (ratios)"
    "$here/guest.sh" run "$image" bench
else
    step "guest: benchmarks run once (smoke)"
    "$here/guest.sh" run "$image" bench smoke
fi

step "rdma checks passed"
