"""Denoising: self-supervised (Self2Self, Fourier N2N, even/odd N2N), classical and supervised methods."""

from .registry import DEFAULT_METHOD, DenoiseMethod, get_method, methods, register, unregister

__all__ = ["DEFAULT_METHOD", "DenoiseMethod", "get_method", "methods", "register", "unregister"]
