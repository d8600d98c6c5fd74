"""Export a scopegym-train checkpoint as a small policy file to ship or share.

The optimiser's moment estimates (Adam keeps two per weight) are dropped, which roughly halves
the file; the policy acts exactly as before, and a resumed training run restarts Adam's moments.
The run's composed config is written beside the zip as ``<name>.yaml`` so that scopegym-eval and
scopegym-run rebuild the same observation and action encodings.

    python scripts/export_policy.py outputs/<run>/checkpoints/model_400000_steps.zip \\
        policies/defect_search_maskable_ppo.zip

``--extractor KEY=VALUE`` (repeatable) sets an argument of the policy's features extractor in
the exported model and its config, for options that add no weights, such as the map pointer's
``avoid_field`` (:mod:`scopegym.agents.pointer`): the trained weights load unchanged, and the
export fails where the option would need weights the checkpoint lacks.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import inspect
import sys
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from scopegym.agents.eval_cli import _run_config, load_checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="a .zip written by scopegym-train")
    parser.add_argument("output", type=Path, help="where to write the exported .zip")
    parser.add_argument(
        "--extractor",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a features-extractor argument that adds no weights (YAML value)",
    )
    args = parser.parse_args(argv)
    run_cfg = _run_config(args.checkpoint)
    if run_cfg is None:
        print(f"no run config found for {args.checkpoint}", file=sys.stderr)
        return 1
    model, _, _ = load_checkpoint(args.checkpoint)
    if args.extractor:
        try:
            settings = extractor_settings(args.extractor)
            model = with_extractor_settings(model, args.checkpoint, settings)
        except ValueError as error:
            print(f"--extractor: {error}", file=sys.stderr)
            return 1
        for key, value in settings.items():
            OmegaConf.update(
                run_cfg, f"agent.model.policy_kwargs.features_extractor_kwargs.{key}", value
            )
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


def extractor_settings(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings as a dict, each value read as YAML (``true``, ``0.5``, ``name``).

    Raises:
        ValueError: An item has no ``=`` or no key.
    """
    settings: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        settings[key.strip()] = yaml.safe_load(value)
    return settings


def with_extractor_settings(model: Any, checkpoint: Path, settings: dict[str, Any]) -> Any:
    """The checkpoint loaded again with its features extractor's arguments updated.

    Raises:
        ValueError: The extractor does not take an argument, or it changes the weights.
    """
    from stable_baselines3.common.save_util import load_from_zip_file

    data, _, _ = load_from_zip_file(str(checkpoint), device="cpu", load_data=True)
    policy_kwargs = copy.deepcopy((data or {}).get("policy_kwargs", {}))
    extractor_class = policy_kwargs.get("features_extractor_class")
    accepted = inspect.signature(extractor_class).parameters if extractor_class else {}
    unknown = sorted(set(settings) - set(accepted))
    if unknown:
        name = getattr(extractor_class, "__name__", "the policy's features extractor")
        raise ValueError(f"{name} takes no {unknown}")
    policy_kwargs["features_extractor_kwargs"] = {
        **policy_kwargs.get("features_extractor_kwargs", {}),
        **settings,
    }
    try:
        return type(model).load(
            str(checkpoint), device="cpu", custom_objects={"policy_kwargs": policy_kwargs}
        )
    except RuntimeError as error:  # load_state_dict: missing or unexpected weights
        raise ValueError(f"{settings} changes the policy's weights ({error})") from None


if __name__ == "__main__":
    sys.exit(main())
