"""Hydra configs of ``scopegym-train``, ``-eval`` and ``-run``, packaged as data.

``train.yaml``, ``eval.yaml`` and ``run.yaml`` compose the groups ``env``, ``agent``, ``reward``,
``samples``, ``instrument`` and ``safety``, and put a user config directory on Hydra's search
path: ``./scopegym_configs`` or the directory named by ``SCOPEGYM_CONFIG_DIR``, whose
``<group>/<name>.yaml`` files are chosen with ``<group>=<name>``.
"""
