"""Denoising: self-supervised (Self2Self, Fourier N2N, even/odd N2N), classical and supervised methods."""

from .registry import DenoiseMethod, get_method, methods, register

__all__ = ["DenoiseMethod", "get_method", "methods", "register"]
