"""Run by tests/core/test_distributed.py under ``torchrun --nproc_per_node=2`` (gloo on CPU).

Trains the three networks of the product for a few steps in a process group and saves, per rank, the
weights each process ends with (``<out>/<what>_rank<R>.pt``) and the first training sample it drew; rank 0
also saves the denoiser as a model file, as the CLI would.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from napari_cryoden import distributed
from napari_cryoden.align.udl import DeepAlignParams
from napari_cryoden.align.udl import iter_train as train_udl
from napari_cryoden.cluster.siamese import SiameseParams, iter_train_siamese
from napari_cryoden.denoise import engine
from napari_cryoden.denoise.engine import default_params, iter_train
from napari_cryoden.models import save_model
from napari_cryoden.progress import run


def main(out: Path) -> None:
    ctx = distributed.init_from_env("cpu")
    assert ctx.world_size == 2 and ctx.active, ctx
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)  # the same data on every rank
    volume = rng.normal(size=(16, 32, 32)).astype(np.float32)
    params = default_params("fourier-n2n", dims=3, patch_size=16, batch_size=2, epochs=1, base_channels=4,
                            depth=2, n_predictions=1, time_budget=120.0)
    # The learning rate follows the time budget: make rank 1's clock read 20 s more than rank 0's (a process
    # that started late or runs slower), which would give the two processes different rates, and so
    # different weights, if each acted on its own clock.
    if ctx.rank == 1:
        class _LateClock(engine.StageClock):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                self.start -= 20.0

        engine.StageClock = _LateClock
    model = run(iter_train(volume, params, method="fourier-n2n", seed=3, device="cpu"))
    torch.save({"state": model.net.state_dict(), "history": model.history}, out / f"denoise_rank{ctx.rank}.pt")
    if ctx.is_main:
        save_model(out / "denoiser.pt", model.to_model_file())

    images = rng.normal(size=(40, 32, 32)).astype(np.float32)
    labels = np.arange(40) % 2
    sp = SiameseParams(rounds=1, min_steps=4, max_steps=4, batch_size=8, prealign_iterations=0, refine_iterations=0)
    res = run(iter_train_siamese(images, 2, labels, sp, device="cpu"))
    torch.save({"state": res.model.state_dict["encoder"], "history": res.history}, out / f"siamese_rank{ctx.rank}.pt")

    dp = DeepAlignParams(epochs=1, steps_per_epoch=3, batch_size=4, max_images=40)
    m = run(train_udl(images, None, dp, device="cpu"))
    torch.save({"state": m.state_dict["net"], "history": m.extra["history"]}, out / f"udl_rank{ctx.rank}.pt")

    # The batch-run helpers: each rank its own share, and no synchronisation inside `independent`.
    share = distributed.shard(list(range(5)), ctx)
    with distributed.independent():
        solo = distributed.context()
    torch.save({"share": share, "solo_active": solo.active}, out / f"misc_rank{ctx.rank}.pt")
    distributed.barrier(ctx)
    distributed.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
