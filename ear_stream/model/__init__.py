"""Model wing: reference numerics, fused ops, U-Net, saliency (its registry of variants), learned head,
mosaic scale, RIAD, the model container, its artifact, and the factory that builds a container from a config
or an artifact.

The lowest wing: it imports nothing from ``inspect``, ``stream`` or ``cli``.
"""
