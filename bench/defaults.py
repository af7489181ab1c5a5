#!/usr/bin/env python3
"""Defaults that train, at full size: every policy on each (model, data set) pair at the default
flags (the model's recipe), reporting the final test accuracy and whether the training loss
fell well below chance.

    bench/defaults.py [--epochs E] [--limit-train K] [--pairs mlp:fashion-mnist,lenet5:fashion-mnist]

The CLI test `every_policy_reaches_80_percent_on_digits_at_the_default_flags` checks the small
case on every run of the test suite; this script is the full-size check (minutes per pair on 2
cores). Accuracy does not depend on the machine's load, so it needs no quiet machine. A pair
whose data set is not installed is skipped with a note.
"""

import argparse
import math
import sys

from common import train

POLICIES = ["single", "naive", "gpipe", "pipedream", "pipedream-flush", "timeprest",
            "v-timeprest", "i-timeprest", "nwpt", "variant1", "variant2", "pipedream-2bw"]
PAIRS = "mlp:fashion-mnist,lenet5:fashion-mnist,resnet18:synthetic"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--limit-train", type=int, default=None)
    parser.add_argument("--pairs", default=PAIRS)
    args = parser.parse_args()
    failed = 0
    print("| model | data set | policy | final test accuracy | final train loss | trains |")
    print("|---|---|---|---|---|---|")
    for pair in args.pairs.split(","):
        model, dataset = pair.split(":")
        extra = ["--model", model, "--dataset", dataset]
        if model.startswith("resnet") or model.startswith("vgg") or model == "alexnet":
            extra += ["--width", "0.25"]
        if args.limit_train:
            extra += ["--limit-train", str(args.limit_train)]
        for policy in POLICIES:
            try:
                metrics, _ = train(extra + ["--policy", policy], epochs=args.epochs)
            except RuntimeError as error:
                if "no such file" in str(error).lower() or "not found" in str(error).lower():
                    print(f"skipped {pair}: data set not installed", file=sys.stderr)
                    break
                raise
            last = metrics[-1]
            # Chance is ln(classes); "trains" = the loss fell below half of it.
            classes = 10
            trains = last["train_loss"] < 0.5 * math.log(classes)
            failed += not trains
            print(f"| {model} | {dataset} | {policy} | {100 * last['test_accuracy']:.2f}% | "
                  f"{last['train_loss']:.3f} | {'yes' if trains else '**no**'} |", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
