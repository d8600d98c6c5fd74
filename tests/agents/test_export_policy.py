"""scripts/export_policy.py --extractor: a weightless extractor option set on a trained policy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf
from sb3_contrib import MaskablePPO

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "export_policy.py"
SHIPPED = ROOT / "policies" / "defect_search_v4_pointers_clone.zip"


def _export(output: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(SHIPPED), str(output), *extra],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_an_extractor_option_is_set_in_the_model_and_its_config(tmp_path):
    output = tmp_path / "with_field.zip"
    result = _export(output, "--extractor", "avoid_field=true")
    assert result.returncode == 0, result.stderr
    config = OmegaConf.load(output.with_suffix(".yaml"))
    kwargs = config.agent.model.policy_kwargs.features_extractor_kwargs
    assert kwargs.avoid_field is True and kwargs.avoid_here is True
    exported = MaskablePPO.load(output, device="cpu")
    original = MaskablePPO.load(SHIPPED, device="cpu")
    assert exported.policy.features_extractor.pointer.avoid_field
    assert not original.policy.features_extractor.pointer.avoid_field
    # The weights are the trained ones, every tensor.
    trained = original.policy.state_dict()
    for name, value in exported.policy.state_dict().items():
        torch.testing.assert_close(value, trained[name], rtol=0, atol=0)


def test_options_the_extractor_lacks_or_that_change_weights_are_refused(tmp_path):
    output = tmp_path / "refused.zip"
    unknown = _export(output, "--extractor", "bogus=1")
    assert unknown.returncode == 1 and "takes no ['bogus']" in unknown.stderr
    weights = _export(output, "--extractor", "avoid_here=false")
    assert weights.returncode == 1 and "changes the policy's weights" in weights.stderr
    malformed = _export(output, "--extractor", "avoid_field")
    assert malformed.returncode == 1 and "KEY=VALUE" in malformed.stderr
    assert not output.exists()
