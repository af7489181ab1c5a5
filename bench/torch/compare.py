#!/usr/bin/env python3
"""timeprest vs PyTorch 2.13 on the MLP 784-1024-1024-1024-10, batch 128, SGD momentum 0.9.

Usage: bench/torch/compare.py [repetitions]
Creates bench/.venv with torch==2.13.0 on first use (bench/torch/setup). Each repetition runs
every pair back to back (PyTorch, then timeprest), so that the shared machine's noise hits
both alike; ratios are timeprest / PyTorch samples/s, paired by repetition.

Pairs: eager 1 thread vs `single` 1 thread (N=1); eager 2 threads vs `single` 2 threads;
torch.distributed.pipelining 2 ranks x 1 thread, gloo, 4 micro-batches, GPipe vs timeprest
`gpipe` W=2 N=4, and Schedule1F1B vs `pipedream-flush` W=2 N=4 (both synchronous, same split
2+2 blocks). timeprest trains Fashion-MNIST, PyTorch random data of the same shape.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import (DATASET, MLP, ROOT, median, quiet_run, ratio_line,  # noqa: E402
                    spread, steady_throughput, train)

PARSER = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
PARSER.add_argument("reps", nargs="?", type=int, default=3, help="repetitions (3)")
REPS = PARSER.parse_args().reps
PYTHON = ROOT / "bench" / ".venv" / "bin" / "python"
TORCH = [str(PYTHON), str(ROOT / "bench" / "torch" / "torch_bench.py")]
BASE = DATASET + ["--hidden", MLP, "--batch-size", "128", "--limit-train", "3840",
                  "--limit-test", "256", "--lr", "0.01"]


def tp(policy, stages, threads, microbatches):
    return BASE + ["--policy", policy, "--stages", str(stages), "--threads-per-stage",
                   str(threads), "--microbatches", str(microbatches)]


PAIRS = {
    "eager 1t vs single 1t": (["eager", "--threads", "1"], tp("single", 1, 1, 1)),
    "eager 2t vs single 2t": (["eager", "--threads", "2"], tp("single", 1, 2, 1)),
    "pipelining GPipe vs gpipe W=2 N=4": (["pipe", "--schedule", "gpipe"], tp("gpipe", 2, 1, 4)),
    "pipelining 1F1B vs pipedream-flush W=2 N=4": (["pipe", "--schedule", "1f1b"],
                                                   tp("pipedream-flush", 2, 1, 4)),
}
# Not a pair: what timeprest's asynchronous schedules do on the same split, for context.
EXTRA = {"pipedream W=2 N=1 (async)": tp("pipedream", 2, 1, 1),
         "timeprest W=2 N=4 (async)": tp("timeprest", 2, 1, 4)}


def torch_run(args):
    done = subprocess.run(TORCH + args, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["samples_per_second"]


def main():
    subprocess.run([str(ROOT / "bench" / "torch" / "setup")], check=True)
    results = {name: ([], []) for name in PAIRS}
    extra = {name: [] for name in EXTRA}
    probes = []
    for rep in range(REPS):
        for name, (torch_args, tp_args) in PAIRS.items():
            torch_value, *p1 = quiet_run(lambda: torch_run(torch_args))
            tp_value, *p2 = quiet_run(lambda: steady_throughput(train(tp_args)[0]))
            results[name][0].append(torch_value)
            results[name][1].append(tp_value)
            probes += p1 + p2
            print(f"rep {rep} {name}: torch {torch_value:.0f}, timeprest {tp_value:.0f} "
                  f"samples/s (free cores {p1[0]:.2f}/{p1[1]:.2f}, {p2[0]:.2f}/{p2[1]:.2f})",
                  file=sys.stderr, flush=True)
        for name, args in EXTRA.items():
            extra[name].append(quiet_run(lambda: steady_throughput(train(args)[0]))[0])
    print(f"## free cores around the runs: min {min(probes):.2f}, median {median(probes):.2f}")
    print("## samples/s, median (range): PyTorch | timeprest")
    for name, (torch_values, tp_values) in results.items():
        (tlo, thi), (plo, phi) = spread(torch_values), spread(tp_values)
        print(f"{name}: {median(torch_values):.0f} ({tlo:.0f}-{thi:.0f}) | "
              f"{median(tp_values):.0f} ({plo:.0f}-{phi:.0f})")
    for name, values in extra.items():
        lo, hi = spread(values)
        print(f"{name}: timeprest {median(values):.0f} ({lo:.0f}-{hi:.0f})")
    print("## timeprest / PyTorch (paired by repetition)")
    for name, (torch_values, tp_values) in results.items():
        print(ratio_line(name, tp_values, torch_values))


if __name__ == "__main__":
    main()
