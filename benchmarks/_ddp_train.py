"""Worker of benchmarks/scaling.py: a fixed number of denoiser training steps under torchrun (any N).

Prints one JSON line on rank 0: processes, threads per process, steps, seconds (after a warm-up), and the
training samples (patches) per second summed over the processes.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from napari_cryoden import distributed
from napari_cryoden.denoise.engine import default_params, iter_train


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ctx = distributed.init_from_env("cpu")
    vol = np.random.default_rng(0).normal(size=(64, 128, 128)).astype(np.float32)
    params = default_params("fourier-n2n", dims=3, patch_size=32, batch_size=4, epochs=1000)
    gen = iter_train(vol, params, method="fourier-n2n", seed=0, device="cpu", preview_every=0)
    t0 = None
    for ev in gen:
        if ev.step == args.warmup:
            distributed.barrier(ctx)
            t0 = time.perf_counter()
        if ev.step >= args.warmup + args.steps:
            break
    distributed.barrier(ctx)
    seconds = time.perf_counter() - t0
    if ctx.is_main:
        print(json.dumps({"processes": ctx.world_size, "threads per process": args.threads, "steps": args.steps,
                          "seconds": seconds, "steps/s": args.steps / seconds,
                          "patches/s (all processes)": args.steps * params.batch_size * ctx.world_size / seconds}))
    gen.close()
    distributed.shutdown()


if __name__ == "__main__":
    main()
