"""PyTorch side of the comparisons: training-step throughput of the MLP of the reference
measurements, in eager mode or with torch.distributed.pipelining over 2 ranks (gloo), and of
the convolutional zoo models (bench/torch/zoo.py) in eager mode.

Run with bench/.venv/bin/python (see bench/torch/setup). Prints one JSON line:
{"samples_per_second": ..., ...}. Random data (the step costs the same as on Fashion-MNIST or
the synthetic images). SGD lr 0.01, momentum 0.9, cross-entropy, batch norms in training mode.

  torch_bench.py eager --threads 1 [--batch 128] [--steps 60] [--hidden 1024,1024,1024]
  torch_bench.py pipe --schedule gpipe|1f1b [--microbatches 4] [--batch 128] [--steps 60]
  torch_bench.py conv --model resnet18 [--width 0.25] [--input 3x32x32] --threads 1
                      [--batch 64] [--steps 60] [--warmup 10]
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


def image_batches(batch, count, shape, seed=0):
    """`count` distinct random batches of images (cycled through by the steps)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(count, batch, *shape, generator=g)
    y = torch.randint(0, 10, (count, batch), generator=g)
    return x, y


def timed_steps(model, x, y, args):
    """Runs `args.warmup` then `args.steps` SGD steps on the batches `x[i % len(x)]`; returns
    the seconds of the timed steps."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    def step(i):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x[i % len(x)]), y[i % len(y)])
        loss.backward()
        opt.step()

    for i in range(args.warmup):
        step(i)
    start = time.perf_counter()
    for i in range(args.warmup, args.warmup + args.steps):
        step(i)
    return time.perf_counter() - start


def conv(args):
    """A zoo model (bench/torch/zoo.py) trained in eager mode on random images."""
    from zoo import build, param_count

    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    shape = tuple(int(s) for s in args.input.split("x"))
    model = build(args.model, args.width, shape)
    model.train()
    x, y = image_batches(args.batch, min(args.steps + args.warmup, 8), shape)
    seconds = timed_steps(model, x, y, args)
    return {"mode": "conv", "model": args.model, "width": args.width, "input": args.input,
            "params": param_count(model), "threads": args.threads, "batch": args.batch,
            "samples_per_second": args.steps * args.batch / seconds}


def eager(args):
    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    model = mlp(args.hidden)
    x, y = batches(args.batch, args.steps + args.warmup)
    seconds = timed_steps(model, x, y, args)
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
    parser.add_argument("mode", choices=["eager", "pipe", "conv"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, help="default: 128 (eager, pipe), 64 (conv)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--microbatches", type=int, default=4)
    parser.add_argument("--schedule", choices=["gpipe", "1f1b"], default="gpipe")
    parser.add_argument("--hidden", default="1024,1024,1024")
    parser.add_argument("--model", default="resnet18", help="conv: a zoo model (zoo.py)")
    parser.add_argument("--width", type=float, default=0.25, help="conv: channel multiplier")
    parser.add_argument("--input", default="3x32x32", help="conv: sample shape CxHxW")
    args = parser.parse_args()
    args.hidden = [int(h) for h in args.hidden.split(",")]
    if args.batch is None:
        args.batch = 64 if args.mode == "conv" else 128
    run = {"eager": eager, "pipe": pipe, "conv": conv}[args.mode]
    print(json.dumps(run(args)), flush=True)


if __name__ == "__main__":
    main()
