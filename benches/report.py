#!/usr/bin/env python3
"""Prints each laggard benchmark as a ratio to the baselines measured in the
same `cargo bench` run, from criterion's estimates under target/criterion."""
import json
import pathlib
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/criterion")


def mean(group, bench):
    """Criterion's mean estimate: nanoseconds, or for a `_paired` group
    multiples of the ping-pong timed beside each slice."""
    f = root / group / bench / "new" / "estimates.json"
    return json.loads(f.read_text())["mean"]["point_estimate"] if f.exists() else None


for group_dir in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "report"):
    benches = sorted(p.name for p in group_dir.iterdir() if p.is_dir() and p.name != "report")
    if group_dir.name.endswith("_paired"):
        # Already ratios: each slice was divided by its own ping-pongs.
        for b in benches:
            m = mean(group_dir.name, b)
            if m:
                print(f"{group_dir.name:24} {b:38} {m:6.2f}x the ping-pong timed beside it")
        continue
    ours = [b for b in benches if b.startswith("laggard")]
    bases = [b for b in benches if b.startswith("baseline")]
    for o in ours:
        t = mean(group_dir.name, o)
        for b in bases:
            tb = mean(group_dir.name, b)
            if t and tb:
                # Same work per iteration, so the speed ratio is time_base / time_ours.
                print(f"{group_dir.name:24} {o:22} vs {b:24} {tb / t:6.2f}x the baseline's rate"
                      f"  ({t:12.1f} ns vs {tb:12.1f} ns per iteration)")
