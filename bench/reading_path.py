#!/usr/bin/env python3
"""Issue 13's reading path, counted: the functions one reads to follow one mini-batch of the
default `timeprest train` (MLP, timeprest, threads) from the CLI through a forward, a backward
and an update down to the layer kernels, and how many lines and files they span. A function is
counted whole, from its `fn` line to its closing brace (the first function of that name in the
file); the types and helpers it uses are not. Run from the repository root:
`python3 bench/reading_path.py`."""
import re

PATH = [
    ("crates/cli/src/main.rs", ["main", "run"]),
    ("crates/cli/src/train.rs", ["run", "train"]),
    ("crates/train/src/run.rs", ["run_until_stopped"]),
    ("crates/train/src/trainer.rs", ["run_epoch_with_stop"]),
    ("crates/train/src/pipeline.rs", ["epoch_work", "epoch_batches"]),
    ("crates/runtime/src/threaded.rs", ["run_threaded"]),
    ("crates/runtime/src/worker.rs", ["run_stage", "run"]),
    ("crates/nn/src/stage.rs", ["forward", "run", "backward", "backward_stacked", "take_saved",
                                "per_block_vjp", "accumulate", "update"]),
    ("crates/nn/src/block/linear.rs", ["forward_weighted", "closed_form_vjp"]),
    ("crates/nn/src/optim.rs", ["step", "step_one"]),
    ("crates/nn/src/elementwise_kernel.rs", ["sgd_step", "momentum_chunk"]),
]


def span(lines, name):
    """First and last line (0-based) of the first function `name` in `lines`."""
    start = next(i for i, line in enumerate(lines)
                 if re.match(r"\s*(pub(\([a-z]+\))?\s+)?fn " + name + r"\b", line))
    depth, opened = 0, False
    for end in range(start, len(lines)):
        depth += lines[end].count("{") - lines[end].count("}")
        opened = opened or "{" in lines[end]
        if opened and depth == 0:
            return start, end
    raise ValueError(f"fn {name} never closes")


def main():
    total = 0
    for path, names in PATH:
        lines = open(path).read().split("\n")
        for name in names:
            start, end = span(lines, name)
            total += end - start + 1
            print(f"{path}:{start + 1}-{end + 1} fn {name} {end - start + 1}")
    print("files", len(PATH), "lines", total)


if __name__ == "__main__":
    main()
