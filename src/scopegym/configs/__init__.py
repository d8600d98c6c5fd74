"""Hydra configs of ``scopegym-train``, packaged as data so that an installed scopegym finds them.

``train.yaml`` composes the groups ``env``, ``agent``, ``reward``, ``samples`` and ``instrument``.
"""
