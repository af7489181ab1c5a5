#!/usr/bin/env python3
"""Issue 13's reading path, counted: the functions one reads to follow one mini-batch of the
default `timeprest train` (MLP, timeprest, threads) from the CLI through a forward, a backward
and an update down to the layer kernels, and how many lines and files they span. A function is
counted whole, from its `fn` line to its closing brace; comments and types it uses are not.
Run from the repository root: `python3 bench/reading_path.py`."""
import re

PATH = [("crates/cli/src/main.rs","fn main"),("crates/cli/src/main.rs","fn run"),
("crates/cli/src/train.rs","pub fn run"),("crates/cli/src/train.rs","fn train"),
("crates/train/src/run.rs","pub fn run_until_stopped"),
("crates/train/src/trainer.rs","pub fn run_epoch_with_stop"),
("crates/train/src/pipeline.rs","pub fn epoch_work"),("crates/train/src/pipeline.rs","pub fn epoch_batches"),
("crates/runtime/src/threaded.rs","pub fn run_threaded"),
("crates/runtime/src/worker.rs","pub fn run_stage"),("crates/runtime/src/worker.rs","fn run"),
("crates/nn/src/stage.rs","fn forward"),("crates/nn/src/stage.rs","fn run"),("crates/nn/src/stage.rs","fn backward"),
("crates/nn/src/stage.rs","fn backward_stacked"),("crates/nn/src/stage.rs","fn take_saved"),("crates/nn/src/stage.rs","fn per_block_vjp"),
("crates/nn/src/stage.rs","fn accumulate"),("crates/nn/src/stage.rs","fn update"),
("crates/nn/src/block/linear.rs","fn forward_weighted"),("crates/nn/src/block/linear.rs","fn closed_form_vjp"),
("crates/nn/src/optim.rs","pub fn step"),("crates/nn/src/optim.rs","fn step_one"),
]
tot=0; files=set()
for f, name in PATH:
    L=open(f).read().split("\n")
    idx=[i for i,l in enumerate(L) if re.match(r"\s*"+re.escape(name)+r"\b",l) or re.match(r"\s*(pub(\(crate\))? )?"+re.escape(name.replace("pub ",""))+r"\b",l)]
    if not idx: print("missing",f,name); continue
    i=idx[0]; depth=0; started=False
    for j in range(i,len(L)):
        depth+=L[j].count("{")-L[j].count("}")
        if "{" in L[j]: started=True
        if started and depth==0: break
    n=j-i+1; tot+=n; files.add(f); print(f"{f}:{i+1}-{j+1} {name} {n}")
print("files",len(files),"lines",tot)
