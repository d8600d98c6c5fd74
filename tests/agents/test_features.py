"""The per-entry features extractor: shapes, plain-torch use, Hydra selection, checkpoints."""

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from sb3_contrib import MaskablePPO
from stable_baselines3.common.torch_layers import CombinedExtractor

import scopegym  # noqa: F401  (registers the ids)
from scopegym.agents.features import FourierFeatures, ScopeFeaturesExtractor, SignedLogFeatures
from scopegym.agents.imitation import Demonstrations, agreement, clone

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "policies" / "defect_search_maskable_ppo.zip"


def _batch(space, size, rng):
    return {key: np.stack([sub.sample() for _ in range(size)]) for key, sub in space.spaces.items()}


@pytest.mark.parametrize(
    ("env_id", "images", "vectors"),
    [
        ("scopegym/DefectSearch-v4", ["frame", "map", "neighbourhood"], ["odometry", "state"]),
        (
            "scopegym/AutotuneRonchigram-v2",
            ["frame", "ronchigram"],  # each with its _previous image stacked in
            [
                "detector",
                "odometry",
                "ronchigram_detector",
                "ronchigram_tunes",
                "ronchigram_tunes_since",
                "state",
                "tunes",
                "tunes_since",
            ],
        ),
        ("scopegym/SpectrumDiscovery-v1", ["frame"], ["odometry", "spectra", "spectrum", "state"]),
    ],
)
def test_every_entry_gets_its_own_encoder_of_its_own_width(env_id, images, vectors):
    space = gym.make(env_id, frame_px=64, odometry=True).observation_space
    extractor = ScopeFeaturesExtractor(space, cnn_output_dim=24, vector_output_dim=16)
    assert sorted(extractor.encoders) == sorted(images + vectors)
    assert extractor.features_dim == 24 * len(images) + 16 * len(vectors)
    batch = _batch(space, 5, np.random.default_rng(0))
    features = extractor({key: torch.as_tensor(value) for key, value in batch.items()})
    assert features.shape == (5, extractor.features_dim)
    assert torch.isfinite(features).all()


def test_uint8_images_give_what_sb3s_scaled_floats_give_and_any_frame_size_fits():
    space = gym.make("scopegym/DefectSearch-v4", frame_px=64).observation_space
    extractor = ScopeFeaturesExtractor(space).eval()
    batch = {
        key: torch.as_tensor(v) for key, v in _batch(space, 3, np.random.default_rng(1)).items()
    }
    # What SB3's preprocessing hands on.
    scaled = {
        key: value.float() / 255.0 if value.dtype == torch.uint8 else value
        for key, value in batch.items()
    }
    with torch.no_grad():
        torch.testing.assert_close(extractor(batch), extractor(scaled))
        # The same weights read another frame size: the image encoders pool to a fixed grid.
        large = dict(batch, frame=torch.randint(0, 256, (3, 1, 128, 128), dtype=torch.uint8))
        assert extractor(large).shape == (3, extractor.features_dim)
        maps = extractor.feature_maps(large)
    assert list(maps) == ["frame", "map", "neighbourhood"]
    assert maps["frame"].shape == (3, 64, 8, 8)
    assert maps["map"].shape == (3, 64, 8, 8)  # the 128 px episode map, for a spatial head
    assert maps["neighbourhood"].shape == (3, 64, 3, 3)  # the 48 px close-up


def test_an_image_and_its_predecessor_share_one_encoder_that_reads_both():
    space = gym.make("scopegym/Autotune-v1", frame_px=64).observation_space
    extractor = ScopeFeaturesExtractor(space, cnn_output_dim=24, vector_output_dim=16).eval()
    assert extractor.paired == {"frame": "frame_previous"}
    assert "frame_previous" not in extractor.encoders
    batch = {
        key: torch.as_tensor(v) for key, v in _batch(space, 2, np.random.default_rng(2)).items()
    }
    other = dict(batch, frame_previous=torch.flip(batch["frame_previous"], dims=[-1]))
    with torch.no_grad():
        changed = (extractor(batch) - extractor(other)).abs()
    # Sorted keys: detector (16 features), frame (24), state (16), tunes (16).
    assert changed[:, 16:40].max() > 1e-3  # the frame's features see the previous frame
    assert changed[:, :16].max() == 0.0 and changed[:, 40:].max() == 0.0  # the vectors' do not


def test_fourier_features_keep_the_values_and_resolve_a_tile_on_the_stage():
    fourier = FourierFeatures(10)
    values = torch.tensor([[0.028], [0.032]])  # 28 and 32 nm over a stage half range of 1 µm
    features = fourier(values)
    assert features.shape == (2, fourier.output_dim(1)) == (2, 21)
    torch.testing.assert_close(features[:, :1], values)
    # The raw values differ by 0.004; the finest waves by a large part of their range.
    assert (features[0] - features[1]).abs().max() > 0.5
    assert FourierFeatures(0)(values) is values
    with pytest.raises(ValueError, match="octaves"):
        FourierFeatures(-1)


def test_signed_log_features_space_octave_thresholds_evenly_and_keep_the_sign():
    features = SignedLogFeatures(span=16.0, resolution=1.0 / 16.0)
    values = torch.tensor([[0.125, -0.875, 3.875, -100.0, 0.0]])
    out = features(values)
    assert out.shape == (1, features.output_dim(5)) == (1, 15)
    linear, signed, magnitude = out[0, :5], out[0, 5:10], out[0, 10:]
    torch.testing.assert_close(linear, torch.tensor([0.125, -0.875, 3.875, -16.0, 0.0]) / 16.0)
    assert (magnitude >= 0).all() and (magnitude <= 1).all() and magnitude[3] == 1.0
    torch.testing.assert_close(signed, torch.sign(values[0]) * magnitude)
    # The bin thresholds 1/8, 7/8 and 31/8 of a tune scale, a factor of 7 and 4.4 apart, sit
    # 0.29 and 0.26 of the range apart: about even, where the linear value crowds them at 0.
    assert torch.allclose(magnitude[1] - magnitude[0], magnitude[2] - magnitude[1], atol=0.05)
    assert magnitude[0] > 0.19 and linear[0] < 0.01
    with pytest.raises(ValueError, match="resolution"):
        SignedLogFeatures(span=1.0, resolution=2.0)


def test_a_state_bit_is_learned_beside_a_frame_of_noise():
    """The issue's diagnosis, reduced: the command depends on one state entry only.

    Frames are noise and the other state entries random; a policy that reads its state learns
    the rule and carries it to observations it never saw. SB3's CombinedExtractor (NatureCNN
    features of the frame beside the raw state) learns it more slowly. The observation is the
    frame and the state alone, as the issue measured it (the legacy v0 interface).
    """
    env = gym.make("scopegym/DefectSearch-v4", frame_px=64, version=0)
    space, rng = env.observation_space, np.random.default_rng(0)

    def demonstrations(size):
        obs = _batch(space, size, rng)
        current = rng.integers(0, 2, size)
        obs["state"][:, -1] = current
        actions = np.zeros((size, len(env.action_space.nvec)), dtype=np.int64)
        actions[:, 0] = np.where(current == 1, 2, 0)  # move on from a current frame, else scan
        relevant = np.zeros_like(actions, dtype=bool)
        relevant[:, 0] = True
        masks = np.ones((size, int(np.sum(env.action_space.nvec))), dtype=bool)
        returns = np.zeros(size, np.float32)
        return Demonstrations(obs, actions, masks, relevant, returns, np.zeros(1))

    seen, unseen = demonstrations(256), demonstrations(256)
    scores = {}
    for name, kwargs in {
        "scope": {"features_extractor_class": ScopeFeaturesExtractor},
        "combined": {"features_extractor_kwargs": {"cnn_output_dim": 128}},
    }.items():
        model = MaskablePPO(
            "MultiInputPolicy",
            env,
            policy_kwargs={**kwargs, "net_arch": [64]},
            learning_rate=1e-3,
            seed=0,
            device="cpu",
        )
        clone(model, seen, epochs=8, batch_size=32, value_coef=0.0)
        scores[name] = agreement(model, unseen)["agreement"]
    assert scores["scope"] == 1.0, scores
    assert scores["combined"] < scores["scope"], scores


@pytest.mark.parametrize("agent", ["ppo", "maskable_ppo"])
def test_the_agent_configs_select_the_extractor_and_can_go_back_to_sb3s(agent):
    env = gym.make("scopegym/DefectSearch-v4", frame_px=64)
    with initialize_config_module(config_module="scopegym.configs", version_base="1.3"):
        default = compose("train", overrides=[f"agent={agent}"])
        combined = compose(
            "train",
            overrides=[f"agent={agent}", "~agent.model.policy_kwargs.features_extractor_class"],
        )
    model = instantiate(default.agent.model, env=env, device="cpu", _convert_="all")
    assert isinstance(model.policy.features_extractor, ScopeFeaturesExtractor)
    old = instantiate(combined.agent.model, env=env, device="cpu", _convert_="all")
    assert isinstance(old.policy.features_extractor, CombinedExtractor)


def test_a_saved_model_loads_with_its_extractor_and_the_shipped_checkpoint_still_loads(tmp_path):
    env = gym.make("scopegym/DefectSearch-v4", frame_px=96)
    obs, _ = env.reset(seed=0)
    masks = env.unwrapped.action_masks()
    model = MaskablePPO(
        "MultiInputPolicy",
        env,
        policy_kwargs={"features_extractor_class": ScopeFeaturesExtractor},
        seed=0,
        device="cpu",
    )
    model.save(tmp_path / "scope.zip")
    loaded = MaskablePPO.load(tmp_path / "scope.zip", device="cpu")
    assert isinstance(loaded.policy.features_extractor, ScopeFeaturesExtractor)
    for a, b in zip(model.policy.parameters(), loaded.policy.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    action, _ = loaded.predict(obs, deterministic=True, action_masks=masks)
    expected, _ = model.predict(obs, deterministic=True, action_masks=masks)
    np.testing.assert_array_equal(action, expected)
    # Trained before the extractor existed, on DefectSearch-v0: it keeps SB3's, saved in the
    # checkpoint, and acts in the legacy v0 interface (env=defect_search_v0).
    legacy = gym.make("scopegym/DefectSearch-v4", frame_px=96, version=0)
    obs, _ = legacy.reset(seed=0)
    shipped = MaskablePPO.load(SHIPPED, device="cpu")
    assert isinstance(shipped.policy.features_extractor, CombinedExtractor)
    masks = legacy.unwrapped.action_masks()
    action, _ = shipped.predict(obs, deterministic=True, action_masks=masks)
    assert legacy.action_space.contains(np.asarray(action))
