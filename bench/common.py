"""Helpers shared by the whole-run benchmark scripts in bench/.

Every script runs the release CLI (`target/release/timeprest`, or $TIMEPREST) with a run
directory, reads `metrics.jsonl`, and measures peak RSS with `/usr/bin/time -v`. Compared
configurations are always run alternately, repetition by repetition, so that the noise of the
shared machine falls on all of them alike; scripts report ratios of medians and their spread.
"""

import json
import multiprocessing
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BINARY = os.environ.get("TIMEPREST", str(ROOT / "target" / "release" / "timeprest"))

# The model of the reference measurements (spec "Reference measurements"): MLP 784-1024-1024-1024-10.
MLP = "1024,1024,1024"
DATASET = ["--dataset", "fashion-mnist"]


def _spin(queue, wall):
    start, cpu = time.perf_counter(), time.process_time()
    while time.perf_counter() - start < wall:
        pass
    queue.put(time.process_time() - cpu)


def free_cores(wall=0.3):
    """Cores this machine gives us right now: two processes spin for `wall` seconds and the CPU
    time they got is divided by `wall` (2.0 = both cores free)."""
    queue = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=_spin, args=(queue, wall)) for _ in range(2)]
    for p in procs:
        p.start()
    got = sum(queue.get() for _ in procs)
    for p in procs:
        p.join()
    return got / wall


def wait_quiet(min_cores=None, timeout=None):
    """Waits (up to `timeout` s) until at least `min_cores` cores are free; returns the last
    probe. Defaults from $BENCH_MIN_CORES (1.7) and $BENCH_QUIET_TIMEOUT (300)."""
    min_cores = float(os.environ.get("BENCH_MIN_CORES", "1.7")) if min_cores is None else min_cores
    timeout = float(os.environ.get("BENCH_QUIET_TIMEOUT", "300")) if timeout is None else timeout
    deadline = time.monotonic() + timeout
    while True:
        cores = free_cores()
        if cores >= min_cores or time.monotonic() > deadline:
            if cores < min_cores:
                print(f"warning: only {cores:.2f} cores free after waiting {timeout:.0f} s",
                      file=sys.stderr)
            return cores
        time.sleep(2.0)


def train(args, epochs=3, env=None):
    """Runs `timeprest train ARGS` (with extra environment `env`); returns (per-epoch metrics,
    peak RSS in KiB)."""
    with tempfile.TemporaryDirectory() as out:
        command = ["/usr/bin/time", "-v", BINARY, "train", "--quiet", "--epochs", str(epochs),
                   "--out", out] + list(args)
        done = subprocess.run(command, capture_output=True, text=True,
                              env=None if env is None else {**os.environ, **env})
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
        rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
        metrics = [json.loads(line) for line in Path(out, "metrics.jsonl").read_text().splitlines()
                   if line.strip()]
    return metrics, rss


def quiet_run(run, retries=3):
    """Runs `run()` (returning a figure) between two probes of the free cores; repeats it (up to
    `retries` times) when the machine got busy during it. Returns (figure, cores before, cores
    after) of the last attempt."""
    threshold = float(os.environ.get("BENCH_MIN_CORES", "1.7"))
    for attempt in range(retries):
        before = wait_quiet()
        figure = run()
        after = free_cores()
        if after >= threshold or attempt + 1 == retries:
            return figure, before, after
        print(f"machine got busy during a run ({after:.2f} cores free after it); repeating",
              file=sys.stderr)


def steady_throughput(metrics):
    """Samples/s over the epochs after the first (warm-up), total samples / total seconds."""
    later = metrics[1:] or metrics
    samples = sum(m["samples_per_second"] * m["epoch_seconds"] for m in later)
    return samples / sum(m["epoch_seconds"] for m in later)


def median(values):
    return statistics.median(values)


def spread(values):
    """(min, max) of a list."""
    return min(values), max(values)


def ratio_line(name, numerators, denominators, goal=None):
    """Median ratio of paired runs (rep by rep) with its range."""
    ratios = [n / d for n, d in zip(numerators, denominators)]
    lo, hi = spread(ratios)
    goal_text = "" if goal is None else f"  goal >= {goal}  {'MET' if median(ratios) >= goal else 'MISSED'}"
    return f"{name}: {median(ratios):.3f}x (range {lo:.3f}-{hi:.3f}, n={len(ratios)}){goal_text}"
