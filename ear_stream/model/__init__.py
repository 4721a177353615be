"""Model wing: reference numerics, fused ops, U-Net, saliency, mosaic scale, RIAD, the artifact.

The lowest wing: it imports nothing from ``inspect``, ``stream`` or ``cli``.
"""
