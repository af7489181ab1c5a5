"""PyTorch side of the comparison: training-step throughput of the MLP of the reference
measurements, in eager mode or with torch.distributed.pipelining over 2 ranks (gloo).

Run with bench/.venv/bin/python (see bench/torch/setup). Prints one JSON line:
{"samples_per_second": ..., ...}. Random data (the step costs the same as on Fashion-MNIST).

  torch_bench.py eager --threads 1 [--batch 128] [--steps 60] [--hidden 1024,1024,1024]
  torch_bench.py pipe --schedule gpipe|1f1b [--microbatches 4] [--batch 128] [--steps 60]
"""

import argparse
import json
import socket
import time

import torch
import torch.nn as nn


def mlp(hidden, features=784, classes=10):
    widths = [features] + hidden + [classes]
    layers = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i + 2 < len(widths):
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def batches(batch, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(steps, batch, 784, generator=g)
    y = torch.randint(0, 10, (steps, batch), generator=g)
    return x, y


def eager(args):
    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    model = mlp(args.hidden)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    x, y = batches(args.batch, args.steps + args.warmup)

    def step(i):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x[i]), y[i])
        loss.backward()
        opt.step()

    for i in range(args.warmup):
        step(i)
    start = time.perf_counter()
    for i in range(args.warmup, args.warmup + args.steps):
        step(i)
    seconds = time.perf_counter() - start
    return {"mode": "eager", "threads": args.threads, "batch": args.batch,
            "samples_per_second": args.steps * args.batch / seconds}


def pipe_rank(rank, args, port, queue):
    import torch.distributed as dist
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.manual_seed(1)
    full = mlp(args.hidden)
    # The same split as timeprest's uniform partition of the 4 linear blocks: 2 and 2.
    cut = 4  # Linear, ReLU, Linear, ReLU | Linear, ReLU, Linear
    part = full[:cut] if rank == 0 else full[cut:]
    micro = args.batch // args.microbatches
    width = args.hidden[1]
    example = torch.randn(micro, 784) if rank == 0 else torch.randn(micro, width)
    stage = PipelineStage(part, rank, 2, torch.device("cpu"), input_args=(example,))
    loss_fn = nn.CrossEntropyLoss()
    kind = ScheduleGPipe if args.schedule == "gpipe" else Schedule1F1B
    schedule = kind(stage, n_microbatches=args.microbatches, loss_fn=loss_fn)
    opt = torch.optim.SGD(part.parameters(), lr=0.01, momentum=0.9)
    x, y = batches(args.batch, args.steps + args.warmup)

    def step(i):
        opt.zero_grad(set_to_none=True)
        if rank == 0:
            schedule.step(x[i])
        else:
            schedule.step(target=y[i], losses=[])
        opt.step()

    for i in range(args.warmup):
        step(i)
    dist.barrier()
    start = time.perf_counter()
    for i in range(args.warmup, args.warmup + args.steps):
        step(i)
    dist.barrier()
    seconds = time.perf_counter() - start
    if rank == 0:
        queue.put({"mode": "pipe", "schedule": args.schedule, "microbatches": args.microbatches,
                   "batch": args.batch, "samples_per_second": args.steps * args.batch / seconds})
    dist.destroy_process_group()


def pipe(args):
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=pipe_rank, args=(r, args, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    result = queue.get(timeout=600)
    for p in procs:
        p.join()
    return result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["eager", "pipe"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--microbatches", type=int, default=4)
    parser.add_argument("--schedule", choices=["gpipe", "1f1b"], default="gpipe")
    parser.add_argument("--hidden", default="1024,1024,1024")
    args = parser.parse_args()
    args.hidden = [int(h) for h in args.hidden.split(",")]
    print(json.dumps(eager(args) if args.mode == "eager" else pipe(args)), flush=True)


if __name__ == "__main__":
    main()
