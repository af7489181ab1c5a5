#!/usr/bin/env python3
"""Memory per policy at W=4: peak RSS (/usr/bin/time -v) and weight-version bytes per stage
(metrics.jsonl stages[].peak_weight_bytes), next to the simulator's prediction
(`timeprest analyze versions --format json`: stored versions per stage x the stage's parameter
bytes) and the papers' ordering PipeDream > I-TiMePReSt > V-TiMePReSt.

Peak RSS is given twice: as the process runs by default, and with glibc's mmap threshold
pinned (MALLOC_MMAP_THRESHOLD_=131072), which returns freed weight-sized buffers to the system at
once; the default dynamic threshold keeps them in the heap, so the default RSS measures
allocator retention as much as live data.

Usage: bench/memory.py
MLP 784-1024-1024-1024-10 (one linear block per stage), Fashion-MNIST, batch 128, each policy
with its own schedule and default N (1 on 1f1b, 3 otherwise). Memory figures are not timing
figures: they do not depend on the machine's load.
"""

import argparse
import json
import subprocess

from common import BINARY, DATASET, MLP, train

argparse.ArgumentParser(description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()

POLICIES = ["gpipe", "pipedream-flush", "pipedream", "timeprest", "v-timeprest", "i-timeprest",
            "nwpt", "variant1", "variant2", "naive", "pipedream-2bw"]
ONE_F_ONE_B = {"pipedream", "nwpt", "variant2"}
WIDTHS = [784] + [int(h) for h in MLP.split(",")] + [10]
STAGE_BYTES = [4 * (WIDTHS[i] * WIDTHS[i + 1] + WIDTHS[i + 1]) for i in range(4)]
BASE = DATASET + ["--hidden", MLP, "--batch-size", "128", "--limit-train", "2560",
                  "--limit-test", "256", "--lr", "0.01", "--stages", "4"]


def predicted_versions(policy, microbatches):
    out = subprocess.run([BINARY, "analyze", "versions", "--policy", policy, "--stages", "4",
                          "--microbatches", str(microbatches), "--format", "json"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)["stored_versions"]


PINNED = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def main():
    single_args = DATASET + ["--hidden", MLP, "--batch-size", "128", "--limit-train", "2560",
                             "--limit-test", "256", "--lr", "0.01", "--policy", "single",
                             "--stages", "1", "--microbatches", "1"]
    _, single_rss = train(single_args, epochs=1)
    _, single_pinned = train(single_args, epochs=1, env=PINNED)
    print(f"stage parameter bytes: {STAGE_BYTES} (one set of all stages: {sum(STAGE_BYTES)})")
    print(f"single W=1: peak RSS {single_rss / 1024:.1f} MiB, pinned threshold "
          f"{single_pinned / 1024:.1f} MiB")
    print("policy | N | peak RSS MiB (vs single) | pinned-threshold RSS (vs single) | measured sets/stage | predicted sets/stage | "
          "measured weight MiB (sum) | predicted weight MiB (sum) | match")
    rows = {}
    for policy in POLICIES:
        n = 1 if policy in ONE_F_ONE_B else 3
        args = BASE + ["--policy", policy, "--microbatches", str(n)]
        metrics, rss = train(args, epochs=1)
        _, pinned = train(args, epochs=1, env=PINNED)
        stages = metrics[-1]["stages"]
        measured_bytes = [s["peak_weight_bytes"] for s in stages]
        measured_sets = [s["peak_weight_sets"] for s in stages]
        predicted = predicted_versions(policy, n)
        predicted_bytes = [v * b for v, b in zip(predicted, STAGE_BYTES)]
        rows[policy] = sum(measured_bytes)
        print(f"{policy} | {n} | {rss / 1024:.1f} ({(rss - single_rss) / 1024:+.1f}) | "
              f"{pinned / 1024:.1f} ({(pinned - single_pinned) / 1024:+.1f}) | {measured_sets} | {predicted} | {sum(measured_bytes) / 2**20:.1f} | "
              f"{sum(predicted_bytes) / 2**20:.1f} | "
              f"{'yes' if measured_bytes == predicted_bytes else 'NO'}", flush=True)
    order = rows["pipedream"] > rows["i-timeprest"] > rows["v-timeprest"]
    print(f"papers' ordering PipeDream > I-TiMePReSt > V-TiMePReSt on weight bytes: "
          f"{rows['pipedream'] / 2**20:.1f} > {rows['i-timeprest'] / 2**20:.1f} > "
          f"{rows['v-timeprest'] / 2**20:.1f} MiB: {'holds' if order else 'DOES NOT HOLD'}")


if __name__ == "__main__":
    main()
