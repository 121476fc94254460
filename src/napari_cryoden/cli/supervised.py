"""`cryoden train-supervised {cgan,autoencoder}`: train a supervised denoiser on simulated or given pairs.

The model is then used with ``cryoden denoise IN -o OUT --method cgan --model MODEL.pt``. A supervised
model is only as trustworthy as the simulation it was trained on; a GAN can add density that is not there.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import CryodenInputError
from ._common import add_overwrite, check_outputs, load_maps, positive_float, positive_int


def cmd_train_supervised(args) -> int:
    from ..denoise.supervised import iter_train_supervised
    from ..models import save_model
    from ..progress import run_with_bar

    out = Path(args.output)
    inputs = list(args.map or []) + list(args.pairs or [])
    inputs = check_outputs([out], inputs=inputs, overwrite=args.overwrite)
    if args.epochs is None and args.time_budget is None:
        args.epochs = 20
    kwargs = dict(snr=args.snr, n_pairs=args.n, box=args.box, pixel_size=args.pixel_size, ctf_mode=args.ctf,
                  target_resolution=None if args.target_resolution <= 0 else args.target_resolution,
                  epochs=args.epochs, time_budget=args.time_budget, batch_size=args.batch_size,
                  channels=args.channels, seed=args.seed, device=args.device)
    if args.pairs:
        if args.map:
            raise CryodenInputError(None, "give either --map (simulated pairs) or --pairs NOISY CLEAN, not both")
        from ._common import read_array

        noisy_path, clean_path = args.pairs
        noisy, clean = read_array(noisy_path), read_array(clean_path)
        for m in (noisy, clean):
            if m.data.ndim != 3:
                raise CryodenInputError(m.path, f"training pairs must be (n, y, x) stacks, got shape {m.data.shape}")
        if noisy.data.shape != clean.data.shape:
            raise CryodenInputError(clean_path, f"must have the shape of {noisy_path} {noisy.data.shape}, got "
                                                f"{clean.data.shape}")
        kwargs["pixel_size"] = noisy.pixel_size
        gen = iter_train_supervised(args.kind, noisy=noisy.data, clean=clean.data, **kwargs)
    else:
        maps = load_maps(args.map)
        gen = iter_train_supervised(args.kind, maps=[m.data for m in maps], voxel_sizes=[m.pixel_size for m in maps],
                                    **kwargs)
    model = run_with_bar(gen, disable=args.quiet)
    save_model(out, model, inputs=inputs)
    hist = model.extra["history"]
    print(f"wrote {args.kind} model: {out}")
    print(f"{model.extra['training']['epochs']} epochs, {model.extra['training']['steps']} steps in "
          f"{model.extra['training']['elapsed_s']:.1f} s; final train loss {hist['train_loss'][-1]:.4g}, "
          f"validation L1 {hist['val_l1'][-1]:.4g}")
    print("note: a supervised denoiser is only as trustworthy as its training simulation; a GAN can add "
          "density that is not there")
    return 0


def register(commands: dict) -> None:
    root = commands["root"]
    p = root.add_parser("train-supervised",
                        help="train a supervised denoiser (cgan or autoencoder) on simulated or given pairs")
    p.add_argument("kind", choices=("cgan", "autoencoder"), help="pix2pix-style cGAN or the U-Net autoencoder")
    p.add_argument("-o", "--output", required=True, help="model file to write (.pt)")
    add_overwrite(p)
    p.add_argument("--map", action="append",
                   help="3D map to simulate particles from (repeat for several); default: built-in EMD-5625")
    p.add_argument("--pairs", nargs=2, metavar=("NOISY", "CLEAN"),
                   help="train on these (n, y, x) stacks instead of simulating (clean used as the target as is)")
    p.add_argument("--snr", type=positive_float, default=0.1,
                   help="SNR of the simulated pairs (signal variance / noise variance; default 0.1)")
    p.add_argument("-n", type=positive_int, default=1024, help="simulated pairs (default 1024)")
    p.add_argument("--box", type=positive_int, default=64, help="simulated image side in pixels (default 64)")
    p.add_argument("--pixel-size", type=positive_float, help="Å per pixel of the simulated images "
                                                              "(default: the first map's voxel size)")
    p.add_argument("--ctf", choices=("none", "full", "abs"), default="full", help="CTF of the simulation")
    p.add_argument("--target-resolution", type=float, default=10.0,
                   help="low-pass the clean targets to this resolution in Å (0: no low-pass; default 10)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=positive_int, help="passes over the training pairs (default 20)")
    budget.add_argument("--time-budget", type=positive_float, help="stop after this many seconds of training")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--channels", type=positive_int, default=16, help="generator base channels (default 16)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_train_supervised)
