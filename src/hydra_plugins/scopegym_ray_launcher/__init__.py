"""scopegym's Hydra launcher that runs each job of a multirun as a Ray task.

``scopegym-train -m hydra/launcher=ray seed=0,1,2,3 ...`` sends the jobs to a local Ray (started
on the loopback interface, shut down when the sweep ends) or, with
``hydra.launcher.address=auto``, to the Ray cluster this machine belongs to. See
:mod:`hydra_plugins.scopegym_ray_launcher.ray_launcher`.
"""
