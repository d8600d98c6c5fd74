"""The map pointer: goto cells scored where the map shows them, wired into the action logits."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

import scopegym  # noqa: F401  (registers the ids)
from scopegym.agents.pointer import MapPointer, MapPointerPolicy, PointerFeaturesExtractor
from scopegym.envs.episode_map import MAP_CHANNELS, MAP_PX

GRID = 64


def blank_map() -> np.ndarray:
    return np.zeros((len(MAP_CHANNELS), MAP_PX, MAP_PX), np.uint8)


def draw(episode_map: np.ndarray, channel: str, row: int, col: int, side: int = 1) -> None:
    episode_map[MAP_CHANNELS.index(channel), row : row + side, col : col + side] = 255


def best_cell(pointer: MapPointer, episode_map: np.ndarray) -> tuple[int, int]:
    """The (gx, gy) the marginals pick."""
    with torch.no_grad():
        marginals = pointer.marginals(torch.as_tensor(episode_map[None]))[0]
    return int(marginals[:GRID].argmax()), int(marginals[GRID:].argmax())


@pytest.mark.parametrize(
    ("position", "near", "far"),
    [
        ((60, 60), (70, 40), (10, 120)),  # near target up-right, far one down-left
        ((100, 20), (90, 30), (20, 100)),
        ((20, 110), (30, 126), (100, 4)),  # the other sign of both offsets
    ],
)
def test_untrained_pointer_picks_the_nearest_target_wherever_it_is(
    position: tuple[int, int], near: tuple[int, int], far: tuple[int, int]
) -> None:
    torch.manual_seed(0)
    pointer = MapPointer(MAP_CHANNELS, GRID)
    episode_map = blank_map()
    episode_map[0] = 128  # film seen everywhere
    draw(episode_map, "position", position[0] - 2, position[1] - 2, side=4)
    for row, col in (near, far):
        draw(episode_map, "targets", row, col)
    # Map pixels are 16 nm, cells 32 nm: cell = pixel // 2; (gx, gy) = (column, row).
    assert best_cell(pointer, episode_map) == (near[1] // 2, near[0] // 2)
    # Without the nearer target, the other one.
    episode_map[MAP_CHANNELS.index("targets"), near[0], near[1]] = 0
    assert best_cell(pointer, episode_map) == (far[1] // 2, far[0] // 2)


def test_the_pointer_reads_three_channel_maps_and_rejects_a_grid_that_does_not_tile() -> None:
    pointer = MapPointer(MAP_CHANNELS[:3], GRID)
    scores = pointer(torch.zeros(2, 3, MAP_PX, MAP_PX))
    assert scores.shape == (2, GRID, GRID)
    with pytest.raises(ValueError, match="position"):
        MapPointer(("overview", "visits"), GRID)
    with pytest.raises(ValueError, match="tile"):
        MapPointer(MAP_CHANNELS, 48)(torch.zeros(1, 4, MAP_PX, MAP_PX))


def _policy(env: gym.Env[Any, Any]) -> MapPointerPolicy:
    return MapPointerPolicy(
        env.observation_space,
        env.action_space,
        lambda _: 1e-3,
        features_extractor_class=PointerFeaturesExtractor,
        features_extractor_kwargs={"pointer_grid": GRID},
        net_arch=[32],
    )


def test_the_policy_adds_the_pointer_to_the_goto_logits_only() -> None:
    env = gym.make("scopegym/DefectSearch-v3")
    obs, _ = env.reset(seed=0)
    policy = _policy(env)
    tensor, _ = policy.obs_to_tensor(obs)
    nvec = env.action_space.nvec
    with torch.no_grad():
        features = policy.extract_features(tensor)
        # SB3 scales image entries to [0, 1] before the extractor sees them.
        pointer = policy.features_extractor.pointer.marginals(tensor["map"].float() / 255.0)
        np.testing.assert_allclose(features[:, -2 * GRID :], pointer, atol=1e-5)
        latent = policy.mlp_extractor.forward_actor(features)
        distribution = policy._get_action_dist_from_latent(latent)
        logits = torch.cat([d.logits for d in distribution.distributions], dim=1)
        plain = policy.action_net(latent[:, : -2 * GRID])
    offsets = np.concatenate([[0], np.cumsum(nvec)])
    for entry in range(len(nvec)):
        part = slice(offsets[entry], offsets[entry + 1])
        expected = plain[:, part]
        if entry >= len(nvec) - 2:
            which = slice(0, GRID) if entry == len(nvec) - 2 else slice(GRID, 2 * GRID)
            expected = expected + pointer[:, which]
        expected = expected - expected.logsumexp(-1, keepdim=True)
        np.testing.assert_allclose(logits[:, part], expected, atol=1e-5)
    assert plain.shape[1] == offsets[-1]
    env.close()


def test_the_policy_needs_goto_entries_and_the_pointer_extractor() -> None:
    legacy = gym.make("scopegym/DefectSearch-v3", version=2)  # no goto: no gx, gy entries
    with pytest.raises(ValueError, match="gx, gy"):
        _policy(legacy)
    legacy.close()


def test_a_temperature_divides_the_pointer_scores_with_the_action_layer() -> None:
    from types import SimpleNamespace

    from scopegym.agents.imitation import sharpen

    env = gym.make("scopegym/DefectSearch-v3")
    obs, _ = env.reset(seed=0)
    policy = _policy(env)
    tensor, _ = policy.obs_to_tensor(obs)
    pointer = policy.features_extractor.pointer
    with torch.no_grad():
        before = pointer(tensor["map"].float() / 255.0)
        sharpen(SimpleNamespace(policy=policy), 0.5)
        after = pointer(tensor["map"].float() / 255.0)
    torch.testing.assert_close(after, 2.0 * before)
    env.close()


def test_the_untrained_pointer_already_travels_where_the_rim_search_does() -> None:
    """The priors alone put the goto cell on the labeller's target in its travel steps."""
    from scopegym.agents.imitation import collect_demonstrations
    from scopegym.envs.actions import ARGUMENTS

    def make() -> gym.Env[Any, Any]:
        return gym.make("scopegym/DefectSearch-v3", samples="train")

    demonstrations = collect_demonstrations(make, ["reactive_shift_expert"], 2, gamma=0.99)
    env = make()
    verbs = env.unwrapped.codec.config.verbs
    policy = _policy(env)
    gx = 1 + ARGUMENTS.index("gx")
    travel = [
        i
        for i, action in enumerate(demonstrations.actions)
        if verbs[int(action[0])] == "goto"
        # toward a rim target (the overview travel goes where no target is drawn)
        and demonstrations.observations["map"][i][MAP_CHANNELS.index("targets")].max() == 255
    ]
    assert len(travel) >= 5
    observations = {key: value[travel] for key, value in demonstrations.observations.items()}
    tensor, _ = policy.obs_to_tensor(observations)
    with torch.no_grad():
        distribution = policy.get_distribution(tensor)
    chosen = np.stack([d.probs.argmax(-1).numpy() for d in distribution.distributions], axis=1)
    labels = demonstrations.actions[travel]
    cells_off = np.abs(chosen[:, gx : gx + 2] - labels[:, gx : gx + 2]).max(axis=1)
    assert np.mean(cells_off <= 1) >= 0.8, cells_off
    env.close()


def test_the_shipped_v3_policy_points_and_acts_on_defect_search_v3() -> None:
    from pathlib import Path

    from sb3_contrib import MaskablePPO

    shipped = (
        Path(__file__).resolve().parents[2] / "policies" / "defect_search_v3_pointer_clone.zip"
    )
    model = MaskablePPO.load(shipped, device="cpu")
    assert isinstance(model.policy, MapPointerPolicy)
    env = gym.make("scopegym/DefectSearch-v3")
    assert model.observation_space == env.observation_space
    assert model.action_space == env.action_space
    obs, _ = env.reset(seed=0)
    for _ in range(3):
        chosen, _ = model.predict(obs, action_masks=env.unwrapped.action_masks())
        obs, _, _, _, info = env.step(chosen)
        assert info["refused"] is None
    env.close()
