"""Supervised denoisers: a pix2pix-style conditional GAN and the U-Net autoencoder (its generator alone).

Trained on (noisy, clean) pairs simulated from maps (:func:`iter_train_supervised`, ``cryoden
train-supervised``) or given by the user; saved as one model file (kinds "denoise/cgan",
"denoise/autoencoder"). Importing this package registers the methods "cgan" and "autoencoder".

A supervised denoiser is only as trustworthy as the simulation it was trained on; a GAN can add density
that is not there. See docs/denoise-classical.md.
"""

from .networks import PatchDiscriminator, UNetGenerator, build_discriminator, build_generator
from .predict import SupervisedParams, denoise_with_model, iter_autoencoder, iter_cgan, load_generator
from .train import KINDS, iter_train_supervised, lowpass, simulate_training_pairs

__all__ = [
    "KINDS",
    "PatchDiscriminator",
    "SupervisedParams",
    "UNetGenerator",
    "build_discriminator",
    "build_generator",
    "denoise_with_model",
    "iter_autoencoder",
    "iter_cgan",
    "iter_train_supervised",
    "load_generator",
    "lowpass",
    "simulate_training_pairs",
]
