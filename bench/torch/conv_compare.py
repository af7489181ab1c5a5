#!/usr/bin/env python3
"""timeprest vs PyTorch 2.13 eager on the convolutional zoo models, batch 64, SGD momentum 0.9.

Usage: bench/torch/conv_compare.py [repetitions] [--large] [--width 0.25] [--threads 1,2]
                                   [--models lenet5,...] [--samples K]
       bench/torch/conv_compare.py --check-params [--check-widths 0.25,0.5,1]

Creates bench/.venv with torch==2.13.0 on first use (bench/torch/setup). For each model (lenet5,
alexnet, vgg11, resnet18 at --width 0.25; --large adds vgg16 and resnet50) and T in (1, 2)
intra-op threads, each repetition runs PyTorch eager (T threads, random 3x32x32 images, the
twin of bench/torch/zoo.py) and then `timeprest train --policy single --stages 1
--threads-per-stage T` on the synthetic data set (3 epochs of the model's sample count, the
first one discarded as warm-up); PyTorch takes one epoch's steps as warm-up and times two.
Ratios are timeprest / PyTorch samples/s, paired by repetition; the goal is 0.9.

Before any timing the parameter counts of timeprest's models (`timeprest partition`) and of
the PyTorch twins are checked equal; --check-params checks every model at widths 0.25, 0.5 and
1 on 3x32x32 inputs (and lenet5 on 1x28x28), then compares the tensors timeprest saves
(`--save-weights` after one step) with the twins' state dicts, weighted block by weighted
block (names and shapes, so layer order, biases and shortcuts too), and exits.
"""

import argparse
import json
import re
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import (BINARY, ROOT, free_cores, median, quiet_run, ratio_line,  # noqa: E402
                    spread, steady_throughput, train)

PYTHON = ROOT / "bench" / ".venv" / "bin" / "python"
HERE = ROOT / "bench" / "torch"
BATCH = 64
GOAL = 0.9
# Training samples per epoch (--limit-train, multiples of the batch; the synthetic set has
# 2048): an epoch of a few seconds on one free core.
SAMPLES = {"lenet5": 2048, "alexnet": 2048, "vgg11": 1024, "resnet18": 512,
           "vgg16": 512, "resnet50": 256}
MODELS = ["lenet5", "alexnet", "vgg11", "resnet18"]
LARGE = ["vgg16", "resnet50"]
ALL_MODELS = MODELS + LARGE
CIFAR = "3x32x32"


def timeprest_params(model, width, shape=CIFAR):
    """The parameter count `timeprest partition` prints for the model (one stage, one timed
    sample per block: the cheapest profiling it allows)."""
    command = [BINARY, "partition", "--model", model, "--width", str(width), "--input", shape,
               "--classes", "10", "--stages", "1", "--batch-size", "1", "--microbatches", "1",
               "--repeats", "1", "--minibatches", "1"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    found = re.search(r"([\d,]+) parameters", done.stdout)
    if found is None:
        raise RuntimeError(f"no parameter count in `{' '.join(command)}`:\n{done.stdout}")
    return int(found.group(1).replace(",", ""))


def torch_zoo(specs, state=False):
    """PyTorch twins' parameter counts (or state-dict shapes) for `MODEL:WIDTH:CxHxW` specs
    (bench/torch/zoo.py)."""
    flags = ["--state"] if state else []
    done = subprocess.run([str(PYTHON), str(HERE / "zoo.py")] + flags + specs,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def timeprest_state(model, width):
    """{name: shape} of the weights file timeprest saves after one step on 2 synthetic images
    (names `layers.<block>.<PyTorch attribute>`; BN running statistics included)."""
    with tempfile.TemporaryDirectory() as out:
        path = Path(out, "w.safetensors")
        command = [BINARY, "train", "--quiet", "--model", model, "--width", str(width),
                   "--dataset", "synthetic", "--policy", "single", "--stages", "1", "--epochs",
                   "1", "--batch-size", "2", "--limit-train", "2", "--limit-test", "2",
                   "--save-weights", str(path)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
        raw = path.read_bytes()
    size = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + size])
    return {name[len("layers."):]: info["shape"] for name, info in header.items()
            if name != "__metadata__"}


def by_block(state):
    """`BLOCK.rest` names -> per weighted block, in order, its sorted (rest, shape) pairs (the
    twins' Sequential also numbers weight-free layers, so only the order of blocks counts)."""
    blocks = {}
    for name, shape in state.items():
        index, rest = name.split(".", 1)
        blocks.setdefault(int(index), []).append((rest, list(shape)))
    return [sorted(blocks[i]) for i in sorted(blocks)]


def check_state(models, width):
    """Compares timeprest's saved tensors with the twins' state dicts, weighted block by
    weighted block (names and shapes); prints one line per model and returns whether all
    agree."""
    twins = torch_zoo([f"{m}:{width}:{CIFAR}" for m in models], state=True)
    ok = True
    for model in models:
        ours = by_block(timeprest_state(model, width))
        theirs = by_block(twins[f"{model}:{width}:{CIFAR}"])
        same = ours == theirs
        ok &= same
        tensors = sum(len(b) for b in ours)
        print(f"{model:<9} width {width:<5} {CIFAR:<8} {len(ours)} weighted blocks, {tensors} "
              f"tensors: {'same names and shapes' if same else 'MISMATCH'}", flush=True)
        if not same:
            first = next(i for i, (a, b) in enumerate(zip(ours + [[]], theirs + [[]])) if a != b)
            print(f"  first differing block {first}: timeprest {(ours + [[]])[first]}\n"
                  f"  PyTorch {(theirs + [[]])[first]}", flush=True)
    return ok


def check_params(cases):
    """Compares the counts for (model, width, shape) cases; prints one line each and returns
    whether all agree."""
    specs = [f"{m}:{w}:{s}" for m, w, s in cases]
    twins = torch_zoo(specs)
    ok = True
    for (model, width, shape), spec in zip(cases, specs):
        ours, theirs = timeprest_params(model, width, shape), twins[spec]
        same = ours == theirs
        ok &= same
        print(f"{model:<9} width {width:<5} {shape:<8} timeprest {ours:>11,}  PyTorch "
              f"{theirs:>11,}  {'equal' if same else 'MISMATCH'}", flush=True)
    return ok


def torch_run(model, width, threads, samples):
    """PyTorch eager samples/s: one epoch's steps of warm-up, two epochs' steps timed."""
    steps = samples // BATCH
    command = [str(PYTHON), str(HERE / "torch_bench.py"), "conv", "--model", model,
               "--width", str(width), "--threads", str(threads), "--batch", str(BATCH),
               "--steps", str(2 * steps), "--warmup", str(steps)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["samples_per_second"]


def tp_args(model, width, threads, samples):
    return ["--dataset", "synthetic", "--model", model, "--width", str(width),
            "--policy", "single", "--stages", "1", "--threads-per-stage", str(threads),
            "--batch-size", str(BATCH), "--limit-train", str(samples), "--limit-test", "64",
            "--lr", "0.01", "--momentum", "0.9"]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reps", nargs="?", type=int, default=3, help="repetitions (3)")
    parser.add_argument("--check-params", action="store_true",
                        help="only check the parameter counts (every model, --check-widths)")
    parser.add_argument("--check-widths", default="0.25,0.5,1",
                        help="widths of --check-params (0.25,0.5,1)")
    parser.add_argument("--large", action="store_true", help="also vgg16 and resnet50")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--threads", default="1,2", help="intra-op thread counts (1,2)")
    parser.add_argument("--models", help="comma-separated models instead of the default set")
    parser.add_argument("--samples", type=int,
                        help="training samples per epoch for every model (smoke tests)")
    args = parser.parse_args()
    args.threads = [int(t) for t in args.threads.split(",")]
    args.check_widths = [float(w) for w in args.check_widths.split(",")]
    args.models = (args.models.split(",") if args.models
                   else MODELS + (LARGE if args.large else []))
    unknown = [m for m in args.models if m not in ALL_MODELS]
    if unknown:
        parser.error(f"unknown models {unknown}; valid: {', '.join(ALL_MODELS)}")
    return args


def compare(args):
    """The timed comparison; prints medians and ratios."""
    pairs = [(m, t) for m in args.models for t in args.threads]
    results = {pair: ([], []) for pair in pairs}
    probes = []
    for rep in range(args.reps):
        for model, threads in pairs:
            samples = args.samples or SAMPLES[model]
            torch_value, *p1 = quiet_run(lambda: torch_run(model, args.width, threads, samples))
            tp_value, *p2 = quiet_run(lambda: steady_throughput(
                train(tp_args(model, args.width, threads, samples))[0]))
            results[(model, threads)][0].append(torch_value)
            results[(model, threads)][1].append(tp_value)
            probes += p1 + p2
            print(f"rep {rep} {model} {threads}t: torch {torch_value:.0f}, timeprest "
                  f"{tp_value:.0f} samples/s (free cores {p1[0]:.2f}/{p1[1]:.2f}, "
                  f"{p2[0]:.2f}/{p2[1]:.2f})", file=sys.stderr, flush=True)
    print(f"## free cores around the runs: min {min(probes):.2f}, median {median(probes):.2f}")
    print(f"## samples/s, median (range), width {args.width}, batch {BATCH}: PyTorch eager | "
          "timeprest single")
    for (model, threads), (torch_values, tp_values) in results.items():
        (tlo, thi), (plo, phi) = spread(torch_values), spread(tp_values)
        print(f"{model} {threads}t: {median(torch_values):.0f} ({tlo:.0f}-{thi:.0f}) | "
              f"{median(tp_values):.0f} ({plo:.0f}-{phi:.0f})")
    print("## timeprest / PyTorch eager (paired by repetition)")
    for (model, threads), (torch_values, tp_values) in results.items():
        print(ratio_line(f"{model} {threads}t", tp_values, torch_values, goal=GOAL))


def main():
    args = parse_args()
    subprocess.run([str(HERE / "setup")], check=True, stdout=sys.stderr)
    if args.check_params:
        cases = [(m, w, CIFAR) for m in ALL_MODELS for w in args.check_widths]
        cases += [("lenet5", w, "1x28x28") for w in args.check_widths]
        counts_ok = check_params(cases)
        print("## state dicts (parameters and BN running statistics), block by block")
        state_ok = all([check_state(ALL_MODELS, w) for w in args.check_widths])
        sys.exit(0 if counts_ok and state_ok else 1)
    print(f"## free cores at start: {free_cores():.2f}", flush=True)
    print("## parameter counts, timeprest vs PyTorch twin")
    if not check_params([(m, args.width, CIFAR) for m in args.models]):
        sys.exit("parameter counts differ: the PyTorch twins (bench/torch/zoo.py) no longer "
                 "match timeprest's zoo; not timing")
    compare(args)


if __name__ == "__main__":
    main()
