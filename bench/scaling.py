#!/usr/bin/env python3
"""Pipeline scaling on this machine (issue 12, goals 2 and 3): two stages on one thread each
against one stage on one thread, MLP 784-1024-1024-1024-10 on Fashion-MNIST, batch 128.

Usage: bench/scaling.py [repetitions] [--model lenet5|resnet18|...]   (release binary built)

Goals, as ratios of throughput paired by repetition: N=4 micro-batches cost at most 1.2x per
sample of N=1 (single N=4 / N=1 >= 0.83); timeprest W=2 N=4 >= 1.6x single N=1 (on nf1b and on
nf1b-streamed, which reads the same weights and streams the backward's gradients); gpipe and
pipedream-flush W=2 N=4 >= 1.5x; pipedream W=2 on a balanced split >= 1.85x. Goal 4, the
simulator's fidelity, is read off the same pipeline runs: each epoch's `simulated_seconds` (the
makespan the cost-model simulator predicts for the epoch's schedule from the epoch's own mean
action durations per stage) over its measured `epoch_seconds`, within 5 %.

Each pipeline's speed-up over `single` N=1 is also split into the two factors it is made of:
speed-up = W x mean utilisation x work ratio, where the mean utilisation (busy / epoch time,
averaged over stages) is what the schedule, its bubble and the split's balance leave, and the
work ratio (single N=1's busy seconds / the pipeline's busy seconds summed over its stages, per
sample) is what the compute loses to micro-batches and to two cores running at once. A goal
missed with a utilisation near 1 is a compute problem; one missed with a work ratio near 1 is
the schedule's.

"two singles at once" runs two independent `single` trainings side by side and reports their
summed throughput over one alone: what this machine's two cores deliver to two threads that
never wait for each other, i.e. the ceiling of any two-stage pipeline here.

With --model, the same schedules train that zoo model at --width 0.25 on the synthetic 3x32x32
images (batch 128, 4 micro-batches where the schedule has them, the default partition; the
"streamed time" row splits by measured block times, `--partition time`).

The MLP's blocks cannot be split evenly in two: the best cut puts 784x1024 + 1024x1024 on
stage 0 and 1024x1024 + 1024x10 on stage 1 (64% / 36% of the arithmetic), which caps any
2-stage pipeline at 1.57x. The control model 784-1024-1024-1536-10 splits into two halves of
equal training work and shows what the runtime does when the partition is not the limit.
A training step multiplies each weight three times per row (forward, input gradient, weight
gradient), except the first layer, whose input gradient nobody needs: stage 0 does
2x784x1024 + 3x1024x1024 = 4.75 M multiply-adds per row and stage 1 3x1024x1536 + 3x1536x10
= 4.77 M. (Until the fifteenth session the control model was 784-1024-1024-1792-10, equal in
forward arithmetic only: its stage 1 did 17 % more work, which capped utilisation at 0.93.)
"""

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor

from common import DATASET, MLP, median, quiet_run, ratio_line, spread, steady_throughput, train

PARSER = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
PARSER.add_argument("reps", nargs="?", type=int, default=3, help="repetitions (3)")
PARSER.add_argument("--model", help="a zoo conv model at --width 0.25 instead of the MLP")
OPTIONS = PARSER.parse_args()
MODEL = OPTIONS.model
REPS = OPTIONS.reps
BALANCED = "1024,1024,1536"
BASE = DATASET + ["--batch-size", "128", "--limit-train", "3840", "--limit-test", "256", "--lr", "0.01"]
# Training samples per epoch of the conv models: a few seconds on one core.
CONV_SAMPLES = {"lenet5": 3840, "alexnet": 2048, "vgg11": 1536, "resnet18": 1536}


STREAMED = ["--schedule", "nf1b-streamed"]


def cfg(hidden, policy, stages, threads, microbatches, extra=()):
    return BASE + ["--hidden", hidden, "--policy", policy, "--stages", str(stages),
                   "--threads-per-stage", str(threads), "--microbatches", str(microbatches),
                   *extra]


CONFIGS = {
    "single 1t N=1": cfg(MLP, "single", 1, 1, 1),
    "single 1t N=4": cfg(MLP, "single", 1, 1, 4),
    "single 2t N=1": cfg(MLP, "single", 1, 2, 1),
    "gpipe W=2 N=4": cfg(MLP, "gpipe", 2, 1, 4),
    "pipedream-flush W=2 N=4": cfg(MLP, "pipedream-flush", 2, 1, 4),
    "pipedream W=2 N=1": cfg(MLP, "pipedream", 2, 1, 1),
    "timeprest W=2 N=4": cfg(MLP, "timeprest", 2, 1, 4),
    "timeprest streamed W=2 N=4": cfg(MLP, "timeprest", 2, 1, 4, STREAMED),
    "balanced single 1t N=1": cfg(BALANCED, "single", 1, 1, 1),
    "balanced single 1t N=4": cfg(BALANCED, "single", 1, 1, 4),
    "balanced gpipe W=2 N=4": cfg(BALANCED, "gpipe", 2, 1, 4),
    "balanced pipedream W=2 N=1": cfg(BALANCED, "pipedream", 2, 1, 1),
    "balanced timeprest W=2 N=4": cfg(BALANCED, "timeprest", 2, 1, 4),
    "balanced timeprest streamed W=2 N=4": cfg(BALANCED, "timeprest", 2, 1, 4, STREAMED),
}

GOALS = [
    ("single 1t N=4", "single 1t N=1", 1 / 1.2),
    ("timeprest W=2 N=4", "single 1t N=1", 1.6),
    ("timeprest streamed W=2 N=4", "single 1t N=1", 1.6),
    ("gpipe W=2 N=4", "single 1t N=1", 1.5),
    ("pipedream-flush W=2 N=4", "single 1t N=1", 1.5),
    ("pipedream W=2 N=1", "single 1t N=1", None),
    ("two singles at once", "single 1t N=1", None),
    ("single 2t N=1", "single 1t N=1", None),
    ("gpipe W=2 N=4", "single 1t N=4", None),
    ("balanced single 1t N=4", "balanced single 1t N=1", 1 / 1.2),
    ("balanced timeprest W=2 N=4", "balanced single 1t N=1", 1.6),
    ("balanced timeprest streamed W=2 N=4", "balanced single 1t N=1", 1.6),
    ("balanced gpipe W=2 N=4", "balanced single 1t N=1", 1.5),
    ("balanced pipedream W=2 N=1", "balanced single 1t N=1", 1.85),
]

if MODEL is not None:
    conv_base = ["--dataset", "synthetic", "--model", MODEL, "--width", "0.25", "--batch-size",
                 "128", "--limit-train", str(CONV_SAMPLES.get(MODEL, 512)), "--limit-test", "64",
                 "--lr", "0.01"]

    def conv(policy, stages, threads, microbatches, extra=()):
        return conv_base + ["--policy", policy, "--stages", str(stages), "--threads-per-stage",
                            str(threads), "--microbatches", str(microbatches), *extra]

    CONFIGS = {
        "single 1t N=1": conv("single", 1, 1, 1),
        "single 1t N=4": conv("single", 1, 1, 4),
        "timeprest W=2 N=4": conv("timeprest", 2, 1, 4),
        "timeprest streamed W=2 N=4": conv("timeprest", 2, 1, 4, STREAMED),
        "timeprest streamed time W=2 N=4": conv("timeprest", 2, 1, 4,
                                               STREAMED + ["--partition", "time"]),
        "gpipe W=2 N=4": conv("gpipe", 2, 1, 4),
        "pipedream-flush W=2 N=4": conv("pipedream-flush", 2, 1, 4),
        "pipedream W=2 N=1": conv("pipedream", 2, 1, 1),
    }
    GOALS = [
        ("single 1t N=4", "single 1t N=1", 1 / 1.2),
        ("timeprest W=2 N=4", "single 1t N=1", 1.6),
        ("timeprest streamed W=2 N=4", "single 1t N=1", 1.6),
        ("timeprest streamed time W=2 N=4", "single 1t N=1", 1.6),
        ("gpipe W=2 N=4", "single 1t N=1", 1.5),
        ("pipedream-flush W=2 N=4", "single 1t N=1", 1.5),
        ("pipedream W=2 N=1", "single 1t N=1", 1.85),
        ("two singles at once", "single 1t N=1", None),
    ]


def two_at_once(args):
    """Summed steady throughput of two `train ARGS` runs started together (no fidelity)."""
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda _: steady_throughput(train(args)[0]), range(2)))
    return sum(runs), None


def alone(args):
    """Steady throughput of one `train ARGS` run, and what its steady epochs say of it: the
    simulator's fidelity (the makespan the cost-model simulator predicts from the run's own
    measured action durations, `simulated_seconds` in metrics.jsonl, over the measured epoch
    time), the mean utilisation of its stages, and its busy seconds per sample summed over
    stages."""
    metrics = train(args)[0]
    steady = metrics[1:] or metrics
    seconds = sum(m["epoch_seconds"] for m in steady)
    samples = sum(m["samples_per_second"] * m["epoch_seconds"] for m in steady)
    busy = sum(s["busy_seconds"] for m in steady for s in m["stages"])
    stages = len(steady[0]["stages"])
    facts = {
        "fidelity": sum(m["simulated_seconds"] for m in steady) / seconds,
        "utilisation": busy / (stages * seconds),
        "busy_per_sample": busy / samples,
    }
    return steady_throughput(metrics), facts


TWO_AT_ONCE = {"two singles at once": CONFIGS["single 1t N=1"]}
results = {name: [] for name in list(CONFIGS) + list(TWO_AT_ONCE)}
facts = {name: [] for name in CONFIGS}
probes = []
for rep in range(REPS):
    for name, args in list(CONFIGS.items()) + list(TWO_AT_ONCE.items()):
        measure = two_at_once if name in TWO_AT_ONCE else alone
        (value, run_facts), before, after = quiet_run(lambda: measure(args))
        results[name].append(value)
        if name in facts:
            facts[name].append(run_facts)
        probes += [before, after]
        print(f"rep {rep} {name}: {value:.0f} samples/s (free cores {before:.2f} / {after:.2f})",
              file=sys.stderr, flush=True)

print(f"## free cores around the runs: min {min(probes):.2f}, median {median(probes):.2f}")
print("## throughput (samples/s, median and range over repetitions)")
for name, values in results.items():
    lo, hi = spread(values)
    print(f"{name}: {median(values):.0f} ({lo:.0f}-{hi:.0f})")
print("## ratios (paired by repetition)")
r = results
for num, den, goal in GOALS:
    print(ratio_line(f"{num} / {den}", r[num], r[den], goal))
PIPELINES = [name for name in CONFIGS if "W=2" in name]
print("## where each pipeline's speed-up goes: W x mean utilisation x work ratio (medians;")
print("## work ratio = the single N=1 run's busy seconds per sample / the pipeline's, same model)")
for name in PIPELINES:
    single = "balanced single 1t N=1" if name.startswith("balanced") else "single 1t N=1"
    work = [s["busy_per_sample"] / p["busy_per_sample"] for p, s in zip(facts[name], facts[single])]
    utilisation = median([p["utilisation"] for p in facts[name]])
    print(f"{name}: 2 x {utilisation:.3f} x {median(work):.3f} = {2 * utilisation * median(work):.3f}")
print("## simulator fidelity (goal 4: within 5 %): simulated / measured epoch seconds")
for name in PIPELINES:
    values = [run["fidelity"] for run in facts[name]]
    lo, hi = spread(values)
    verdict = "MET" if abs(median(values) - 1) <= 0.05 else "MISSED"
    print(f"{name}: {median(values):.3f} (range {lo:.3f}-{hi:.3f}, n={len(values)})  {verdict}")
