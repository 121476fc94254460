"""napari-cryoden: denoise, align and cluster cryo-EM / cryo-ET data.

The package root imports no Qt and no napari; the napari plugin lives in :mod:`napari_cryoden._plugin`.
"""

__version__ = "0.1.0"
