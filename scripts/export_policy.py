"""Export a scopegym-train checkpoint as a small policy file to ship or share.

The optimiser's moment estimates (Adam keeps two per weight) are dropped, which roughly halves
the file; the policy acts exactly as before, and a resumed training run restarts Adam's moments.
The run's composed config is written beside the zip as ``<name>.yaml`` so that scopegym-eval and
scopegym-run rebuild the same observation and action encodings.

    python scripts/export_policy.py outputs/<run>/checkpoints/model_400000_steps.zip \\
        policies/defect_search_maskable_ppo.zip
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from omegaconf import OmegaConf

from scopegym.agents.eval_cli import _run_config, load_checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="a .zip written by scopegym-train")
    parser.add_argument("output", type=Path, help="where to write the exported .zip")
    args = parser.parse_args(argv)
    run_cfg = _run_config(args.checkpoint)
    if run_cfg is None:
        print(f"no run config found for {args.checkpoint}", file=sys.stderr)
        return 1
    model, _, _ = load_checkpoint(args.checkpoint)
    optimizer = model.policy.optimizer
    optimizer.state.clear()
    if hasattr(model, "actor"):  # SAC: actor, critic and entropy optimisers
        for name in ("actor", "critic"):
            getattr(model, name).optimizer.state.clear()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    # The replay buffer is not part of the zip; the rollout buffer is rebuilt on load.
    model.save(str(args.output))
    OmegaConf.save(run_cfg, args.output.with_suffix(".yaml"))
    digest = hashlib.sha256(args.output.read_bytes()).hexdigest()
    size_mb = args.output.stat().st_size / 1e6
    print(f"{args.output}: {size_mb:.2f} MB, sha256 {digest[:16]}…  (from {args.checkpoint})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
