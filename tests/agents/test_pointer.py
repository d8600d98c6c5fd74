"""The map pointer: goto cells scored where the map shows them, wired into the action logits."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.nn import functional

import scopegym  # noqa: F401  (registers the ids)
from scopegym.agents.pointer import (
    FRAME_POINTER_FROM_ACTION,
    MapPointer,
    MapPointerPolicy,
    PointerFeaturesExtractor,
)
from scopegym.envs.actions import ARGUMENTS
from scopegym.envs.episode_map import MAP_CHANNELS, MAP_PX, NEIGHBOURHOOD_PX

GRID = 64


def blank_map() -> np.ndarray:
    return np.zeros((len(MAP_CHANNELS), MAP_PX, MAP_PX), np.uint8)


def draw(episode_map: np.ndarray, channel: str, row: int, col: int, side: int = 1) -> None:
    episode_map[MAP_CHANNELS.index(channel), row : row + side, col : col + side] = 255


def overview_map(centre_row: int, centre_col: int) -> np.ndarray:
    """A map showing a 1024 nm overview (64 pixels) as present field, centred ``centre_*`` pixel
    edges from the map's corner; the map draws only its part on the map."""
    episode_map = blank_map()
    half = 32
    top, bottom = max(centre_row - half, 0), min(centre_row + half, MAP_PX)
    left, right = max(centre_col - half, 0), min(centre_col + half, MAP_PX)
    episode_map[MAP_CHANNELS.index("position"), top:bottom, left:right] = 255
    return episode_map


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


def _policy(
    env: gym.Env[Any, Any], frame_pointer_grid: int = 0, decide: bool = False
) -> MapPointerPolicy:
    return MapPointerPolicy(
        env.observation_space,
        env.action_space,
        lambda _: 1e-3,
        features_extractor_class=PointerFeaturesExtractor,
        features_extractor_kwargs={"pointer_grid": GRID, "frame_pointer_grid": frame_pointer_grid},
        net_arch=[32],
        pointers_decide=decide,
    )


@pytest.mark.parametrize(
    ("env_id", "frame_grid", "decide"),
    [
        ("scopegym/DefectSearch-v4", 0, False),
        ("scopegym/DefectSearch-v4", FRAME_POINTER_FROM_ACTION, False),
        ("scopegym/DefectSearch-v4", FRAME_POINTER_FROM_ACTION, True),
        ("scopegym/Survey-v4", FRAME_POINTER_FROM_ACTION, False),
    ],
)
def test_the_policy_adds_each_pointer_to_its_own_logits_only(
    env_id: str, frame_grid: int, decide: bool
) -> None:
    env = gym.make(env_id)
    obs, _ = env.reset(seed=0)
    policy = _policy(env, frame_grid, decide)
    tensor, _ = policy.obs_to_tensor(obs)
    nvec = env.action_space.nvec
    x_entry = 1 + ARGUMENTS.index("x")
    inspect = int(nvec[x_entry]) if frame_grid else 0  # 16 in DefectSearch, 8 in Survey
    assert policy.features_extractor.frame_pointer_dim == inspect**2
    extra = GRID**2 + inspect**2
    with torch.no_grad():
        features = policy.extract_features(tensor)
        # SB3 scales image entries to [0, 1] before the extractor sees them.
        scores = policy.features_extractor.pointer(tensor["map"].float() / 255.0)
        map_part = features[:, features.shape[1] - extra :][:, : GRID**2]
        np.testing.assert_allclose(map_part, scores.flatten(1), atol=1e-5)
        if inspect:
            cells = policy.features_extractor.frame_pointer(
                tensor["frame"], tensor["neighbourhood"]
            )
            assert cells.abs().max() > 0
            np.testing.assert_allclose(features[:, -(inspect**2) :], cells.flatten(1), atol=1e-5)
        latent = policy.mlp_extractor.forward_actor(features)
        distribution = policy._get_action_dist_from_latent(latent)
        logits = torch.cat([d.logits for d in distribution.distributions], dim=1)
        plain = policy.action_net(latent[:, :-extra])
    offsets = np.concatenate([[0], np.cumsum(nvec)])
    bias = policy.action_net.bias.detach()
    # (x entry, y entry, cell scores) of each pointed pair.
    pairs = [(len(nvec) - 2, len(nvec) - 1, scores)]
    if inspect:
        pairs.append((x_entry, x_entry + 1, cells))
    expected = plain.clone()
    for x, y, cell_scores in pairs:
        columns = slice(offsets[x], offsets[x + 1])
        rows = slice(offsets[y], offsets[y + 1])
        if decide:
            # Only the layer's bias, and inside the maxima: the MLP's latent has no say in
            # where to go, and a bin's bias cannot split a tie between two cells.
            joint = cell_scores + bias[columns] + bias[rows, None]
            marginals = MapPointer._marginals(joint)
            expected[:, columns], expected[:, rows] = marginals.split(joint.shape[-1], dim=1)
        else:
            marginals = MapPointer._marginals(cell_scores)
            side = cell_scores.shape[-1]
            expected[:, columns] += marginals[:, :side]
            expected[:, rows] += marginals[:, side:]
    for entry in range(len(nvec)):
        part = slice(offsets[entry], offsets[entry + 1])
        wanted = expected[:, part] - expected[:, part].logsumexp(-1, keepdim=True)
        np.testing.assert_allclose(logits[:, part], wanted, atol=1e-5)
    assert plain.shape[1] == offsets[-1]
    env.close()


@pytest.mark.parametrize("env_id", ["scopegym/DefectSearch-v4", "scopegym/Survey-v4"])
def test_a_deciding_policy_goes_to_one_of_two_tied_cells_whatever_its_bins_biases(
    env_id: str,
) -> None:
    env = gym.make(env_id)
    policy = _policy(env, FRAME_POINTER_FROM_ACTION, decide=True)
    nvec = env.action_space.nvec
    offsets = np.concatenate([[0], np.cumsum(nvec)])
    gx, gy = len(nvec) - 2, len(nvec) - 1
    upper, lower = (43, 44), (42, 45)  # tied; their crossing (42, 44) is the present cell
    scores = torch.zeros(1, GRID, GRID)
    scores[0, 44, 42] = -20.0
    for x, y in (upper, lower):
        scores[0, y, x] = 5.0
    extractor = policy.mlp_extractor
    latent = torch.zeros(1, extractor.latent_dim_pi + extractor.pointer_dim)
    latent[0, -extractor.pointer_dim :][: GRID**2] = scores.flatten()
    with torch.no_grad():
        bias = policy.action_net.bias
        bias.zero_()
        # The biases favour the lower cell's column and the upper cell's row: added after
        # the maxima they would join them into the present cell.
        bias[offsets[gx] + lower[0]] = 0.5
        bias[offsets[gy] + upper[1]] = 0.5
        distribution = policy._get_action_dist_from_latent(latent)
    chosen = distribution.mode()[0]
    assert (int(chosen[gx]), int(chosen[gy])) in (upper, lower)
    env.close()


def test_a_frame_pointer_must_fit_the_inspect_grid() -> None:
    env = gym.make("scopegym/Survey-v4")  # inspect on 8 x 8
    with pytest.raises(ValueError, match="frame_pointer_grid"):
        _policy(env, 16)
    env.close()


def test_the_policy_needs_goto_entries_and_the_pointer_extractor() -> None:
    legacy = gym.make("scopegym/DefectSearch-v4", version=2)  # no goto: no gx, gy entries
    with pytest.raises(ValueError, match="gx, gy"):
        _policy(legacy)
    legacy.close()


def test_a_temperature_divides_the_pointer_scores_with_the_action_layer() -> None:
    from types import SimpleNamespace

    from scopegym.agents.imitation import sharpen

    env = gym.make("scopegym/DefectSearch-v4")
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
        return gym.make("scopegym/DefectSearch-v4", samples="train")

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


def test_the_shipped_v3_policy_points_and_acts_on_the_v3_interface() -> None:
    from pathlib import Path

    from sb3_contrib import MaskablePPO

    shipped = (
        Path(__file__).resolve().parents[2] / "policies" / "defect_search_v3_pointer_clone.zip"
    )
    model = MaskablePPO.load(shipped, device="cpu")
    assert isinstance(model.policy, MapPointerPolicy)
    env = gym.make("scopegym/DefectSearch-v4", version=3)
    assert model.observation_space == env.observation_space
    assert model.observation_space != gym.make("scopegym/DefectSearch-v4").observation_space
    assert model.action_space == env.action_space
    obs, _ = env.reset(seed=0)
    for _ in range(3):
        chosen, _ = model.predict(obs, action_masks=env.unwrapped.action_masks())
        obs, _, _, _, info = env.step(chosen)
        assert info["refused"] is None
    env.close()


def _rim_scene(rng: np.random.Generator, grid: int = 16) -> tuple[np.ndarray, np.ndarray, int, int]:
    """A frame with a hole, a close-up with a rim cell taken or not, the cell to inspect.

    The label is the rim cell (hole and film both in it) nearest the centre that no atomic
    field covers, as the rim search picks it; a third of the scenes cover the nearest rim cell,
    so the close-up must be read. Returns the frame, the close-up, the label's cell and the
    taken cell's (-1 if none), cells numbered row-major.
    """
    n, side = 96, NEIGHBOURHOOD_PX
    y, x = np.mgrid[0:n, 0:n] + 0.5
    centre = rng.uniform(10, 86, 2)
    radius = rng.uniform(14, 30)
    hole = np.hypot(x - centre[0], y - centre[1]) < radius
    frame = np.where(hole, 10.0, 130.0) + rng.normal(0, 12, (n, n))
    cell = n // grid
    dark = hole.reshape(grid, cell, grid, cell).mean(axis=(1, 3))
    rim = (dark > 0.1) & (dark < 0.9)
    rows, cols = np.nonzero(rim)
    distance = np.hypot(cols + 0.5 - grid / 2, rows + 0.5 - grid / 2)
    order = np.argsort(distance)
    close_up = np.zeros((2, side, side))
    taken = set()
    if rng.random() < 1 / 3 and len(order) > 1:
        taken.add(int(order[0]))
    label = next((int(i) for i in order if int(i) not in taken), int(order[0]))
    for i in taken:
        # The close-up spans three fields, 16 px each: its middle third is the frame's grid.
        close_up[0, side // 3 + rows[i], side // 3 + cols[i]] = 255
    image = np.clip(frame, 0, 255).astype(np.uint8)[None]
    covered = [int(rows[i] * grid + cols[i]) for i in taken] or [-1]
    return image, close_up.astype(np.uint8), int(rows[label] * grid + cols[label]), covered[0]


def test_the_frame_pointer_learns_the_nearest_rim_point_not_taken() -> None:
    from scopegym.agents.pointer import FramePointer

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    pointer = FramePointer(16, close_up=True)
    optimiser = torch.optim.Adam(pointer.parameters(), lr=3e-3)

    def batch(size: int) -> tuple[torch.Tensor, ...]:
        scenes = [_rim_scene(rng) for _ in range(size)]
        frames, close_ups, labels, taken = zip(*scenes, strict=True)
        return (
            torch.as_tensor(np.stack(frames)),
            torch.as_tensor(np.stack(close_ups)),
            torch.as_tensor(labels),
            torch.as_tensor(taken),
        )

    for _ in range(300):
        frames, close_ups, labels, _ = batch(32)
        loss = functional.cross_entropy(pointer(frames, close_ups).flatten(1), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    frames, close_ups, labels, taken = batch(300)
    with torch.no_grad():
        chosen = pointer(frames, close_ups).flatten(1).argmax(1)
        blind = pointer(frames, torch.zeros_like(close_ups)).flatten(1).argmax(1)
    off = torch.maximum((chosen // 16 - labels // 16).abs(), (chosen % 16 - labels % 16).abs())
    assert (off <= 1).float().mean() >= 0.8, off
    # Where the nearest rim cell is taken, the pointer leaves it, and only by the close-up:
    # shown none, it goes back to that cell.
    scenes = taken >= 0
    assert scenes.sum() >= 60
    assert (chosen[scenes] == taken[scenes]).float().mean() <= 0.2
    assert (blind[scenes] == taken[scenes]).float().mean() >= 0.5


def _pointers_with_and_without_avoid_here() -> tuple[MapPointer, MapPointer]:
    """A pointer and the same one scoring the present cell down (same seeded weights)."""
    torch.manual_seed(0)
    plain = MapPointer(MAP_CHANNELS, GRID)
    avoiding = MapPointer(MAP_CHANNELS, GRID, avoid_here=True)
    avoiding.load_state_dict(plain.state_dict(), strict=False)
    return plain, avoiding


def _avoid_here_change(episode_map: np.ndarray) -> torch.Tensor:
    """What avoid_here changes in the cell scores of one map, ``(grid, grid)`` [logit]."""
    plain, avoiding = _pointers_with_and_without_avoid_here()
    tensor = torch.as_tensor(episode_map[None])
    with torch.no_grad():
        return (avoiding(tensor) - plain(tensor))[0]


@pytest.mark.parametrize(("row", "col"), [(40, 90), (100, 12)])
def test_avoiding_here_scores_only_the_present_cell_down(row: int, col: int) -> None:
    from scopegym.agents.pointer import HERE_PRIOR

    plain, avoiding = _pointers_with_and_without_avoid_here()
    episode_map = blank_map()
    draw(episode_map, "position", row, col, side=4)  # a 64 nm field: 4 map pixels
    draw(episode_map, "targets", row + 20, col - 10)
    change = _avoid_here_change(episode_map)
    # The field's centre is a corner of four cells (16 nm pixels, 32 nm cells): each is
    # "here"; every other cell keeps its score.
    here = change.nonzero().tolist()
    rows, cols = {r for r, _ in here}, {c for _, c in here}
    assert rows == {(row + 2) // 2 - 1, (row + 2) // 2}
    assert cols == {(col + 2) // 2 - 1, (col + 2) // 2}
    torch.testing.assert_close(change[change != 0], torch.full((4,), HERE_PRIOR))
    assert (
        best_cell(avoiding, episode_map)
        == best_cell(plain, episode_map)
        == (
            (col - 10) // 2,
            (row + 20) // 2,
        )
    )


@pytest.mark.parametrize(
    ("centre_row", "centre_col", "rows", "cols"),
    [
        (60, 3, {29, 30}, {1}),  # cut by the left edge
        (60, 125, {29, 30}, {62}),  # the right edge
        (3, 60, {1}, {29, 30}),  # the top edge (row 0)
        (125, 68, {62}, {33, 34}),  # the bottom edge
    ],
)
def test_avoiding_here_finds_the_centre_of_a_field_the_map_edge_cuts(
    centre_row: int, centre_col: int, rows: set[int], cols: set[int]
) -> None:
    from scopegym.agents.pointer import HERE_PRIOR

    # The map draws only the overview's part on the map, 35 pixels of it across the cut axis.
    change = _avoid_here_change(overview_map(centre_row, centre_col))
    here = change.nonzero().tolist()
    # The cells under the true centre (32 nm cells are 2 pixels), not under the drawn part's.
    assert {r for r, _ in here} == rows
    assert {c for _, c in here} == cols
    torch.testing.assert_close(change[change != 0], torch.full((len(here),), HERE_PRIOR))


def _avoid_field_change(episode_map: np.ndarray) -> torch.Tensor:
    """What avoid_field adds to avoid_here in the cell scores of one map [logit]."""
    torch.manual_seed(0)
    here = MapPointer(MAP_CHANNELS, GRID, avoid_here=True)
    field = MapPointer(MAP_CHANNELS, GRID, avoid_here=True, avoid_field=True)
    field.load_state_dict(here.state_dict())
    tensor = torch.as_tensor(episode_map[None])
    with torch.no_grad():
        return (field(tensor) - here(tensor))[0]


@pytest.mark.parametrize(("centre_row", "centre_col"), [(64, 64), (3, 90), (70, 125)])
def test_avoiding_the_field_scores_down_the_cells_within_its_reach(
    centre_row: int, centre_col: int
) -> None:
    from scopegym.agents.pointer import FIELD_AVOIDED, HERE_PRIOR

    # 32 cells across, cut by the top or the right edge in two cases (not at a corner, where
    # the drawn side is short: clipped_field_centre).
    change = _avoid_field_change(overview_map(centre_row, centre_col))
    avoided = change.nonzero()
    torch.testing.assert_close(change[change != 0], torch.full((len(avoided),), HERE_PRIOR))
    # Cells within 0.375 of the field's side (12 cells) of the true centre, on the map only.
    centre = torch.tensor([centre_row, centre_col]) / 2.0  # in cells
    offsets = (avoided + 0.5 - centre).abs()
    assert offsets.max() <= FIELD_AVOIDED * 32 + 1e-6
    rows = {int(r) for r in avoided[:, 0]}
    cols = {int(c) for c in avoided[:, 1]}
    expected_rows = {r for r in range(GRID) if abs(r + 0.5 - centre_row / 2) <= 12}
    expected_cols = {c for c in range(GRID) if abs(c + 0.5 - centre_col / 2) <= 12}
    assert rows == expected_rows and cols == expected_cols


def test_a_small_field_avoids_only_its_own_cells() -> None:
    # A 64 nm field (4 pixels, 2 cells): 0.375 of it is less than a cell, so avoid_field adds
    # nothing to avoid_here; and a map with no field drawn yet is left alone.
    episode_map = blank_map()
    draw(episode_map, "position", 40, 90, side=4)
    assert not _avoid_field_change(episode_map).any()
    assert not _avoid_field_change(blank_map()).any()


def test_avoid_field_needs_avoid_here() -> None:
    with pytest.raises(ValueError, match="avoid_here"):
        MapPointer(MAP_CHANNELS, GRID, avoid_field=True)


def test_a_cut_field_measures_distances_from_its_true_centre() -> None:
    # Two targets 12 cells either side of a field cut by the left edge: the one on the side of
    # the drawn part is nearer the drawn part's centroid, the other nearer the true centre.
    torch.manual_seed(0)
    pointer = MapPointer(MAP_CHANNELS, GRID)
    episode_map = blank_map()
    episode_map[MAP_CHANNELS.index("position"), 28:92, 0:35] = 255  # true centre: pixel edge 3
    draw(episode_map, "targets", 60, 3 + 26)  # 13 cells right of the true centre
    draw(episode_map, "targets", 60 - 24, 2)  # 12 cells above it
    assert best_cell(pointer, episode_map) == (1, 18)


def _pulled_towards_here(**options: Any) -> MapPointer:
    """A pointer whose learnt part scores cells by nearness to the present field alone."""
    pointer = MapPointer(MAP_CHANNELS, GRID, **options)
    # Inputs per cell: the map's four channel means, the targets maximum, x, y, distance.
    near = torch.nn.Conv2d(len(MAP_CHANNELS) + 4, 1, 1)
    with torch.no_grad():
        near.weight.zero_()
        near.bias.zero_()
        near.weight[0, len(MAP_CHANNELS) + 3] = -60.0
        pointer.learnt_scale.fill_(1.0)
    pointer.scorer = torch.nn.Sequential(near)
    return pointer


@pytest.mark.parametrize(
    ("row", "col", "target_row", "target_col"), [(50, 78, 46, 53), (100, 100, 80, 75)]
)
def test_targets_first_keeps_a_pull_towards_here_from_outscoring_a_far_target(
    row: int, col: int, target_row: int, target_col: int
) -> None:
    from scopegym.agents.pointer import ELSEWHERE_PRIOR

    torch.manual_seed(0)
    plain = _pulled_towards_here()
    first = _pulled_towards_here(targets_first=True)
    first.load_state_dict(plain.state_dict(), strict=False)
    episode_map = blank_map()
    episode_map[0] = 128
    draw(episode_map, "position", row, col, side=4)
    target_cell = (target_col // 2, target_row // 2)
    # Without a target drawn, targets_first changes nothing.
    tensor = torch.as_tensor(episode_map[None])
    with torch.no_grad():
        torch.testing.assert_close(first(tensor), plain(tensor))
    # A target 25 to 32 map pixels away: the pull towards here wins without targets_first
    # (the held-out episode's hop between neighbouring cells), the target wins with it.
    draw(episode_map, "targets", target_row, target_col)
    episode_map[MAP_CHANNELS.index("targets"), target_row - 1 : target_row + 2, target_col] |= 128
    tensor = torch.as_tensor(episode_map[None])
    with torch.no_grad():
        change = (first(tensor) - plain(tensor))[0]
    gx, gy = best_cell(plain, episode_map)
    assert max(abs(gx - (col + 2) // 2), abs(gy - (row + 2) // 2)) <= 2
    assert best_cell(first, episode_map) == target_cell
    # Every cell but the target's (its ring's cells included) is scored down, by the prior.
    assert change[target_cell[1], target_cell[0]] == 0
    assert int((change == 0).sum()) == 1
    torch.testing.assert_close(change[change != 0], torch.full((GRID * GRID - 1,), ELSEWHERE_PRIOR))


@pytest.mark.parametrize(("upper", "lower"), [((15, 22), (14, 23)), ((50, 10), (3, 60))])
def test_the_marginals_pick_one_of_two_tied_cells_not_their_crossing(
    upper: tuple[int, int], lower: tuple[int, int]
) -> None:
    from scopegym.agents.pointer import TIE_BREAK

    # Held-out episode 3: two tied cells, one up-right of the other; each axis's argmax of
    # the plain maxima joins the left one's column to the upper one's row, (14, 22) there:
    # the present cell, scored down.
    scores = torch.zeros(1, GRID, GRID)
    scores[0, upper[1], lower[0]] = -20.0
    for gx, gy in (upper, lower):
        scores[0, gy, gx] = 5.0
    plain = torch.cat([scores[0].amax(0), scores[0].amax(1)])
    assert (int(plain[:GRID].argmax()), int(plain[GRID:].argmax())) == (lower[0], upper[1])

    def picked(scores: torch.Tensor) -> tuple[int, int]:
        marginals = MapPointer._marginals(scores)[0]
        return int(marginals[:GRID].argmax()), int(marginals[GRID:].argmax())

    # Tied: the first in row-major order, the upper one; either one, once it leads.
    assert picked(scores) == upper
    marginals = MapPointer._marginals(scores)[0]
    assert float((marginals - plain).abs().max()) == pytest.approx(TIE_BREAK, rel=1e-3)
    for leader in (upper, lower):
        ahead = scores.clone()
        ahead[0, leader[1], leader[0]] += 0.01
        assert picked(ahead) == leader


@pytest.mark.parametrize(
    ("env_id", "shipped", "inspect_grid", "avoid_field"),
    [
        ("scopegym/DefectSearch-v4", "defect_search_v4_pointers_clone.zip", 16, False),
        # Set on the trained Survey network with export_policy.py --extractor (README).
        ("scopegym/Survey-v4", "survey_v4_pointers_clone.zip", 8, True),
    ],
)
def test_a_shipped_v4_policy_points_with_both_pointers_and_acts_on_its_id(
    env_id: str, shipped: str, inspect_grid: int, avoid_field: bool
) -> None:
    from pathlib import Path

    from sb3_contrib import MaskablePPO

    model = MaskablePPO.load(
        Path(__file__).resolve().parents[2] / "policies" / shipped, device="cpu"
    )
    policy = model.policy
    assert isinstance(policy, MapPointerPolicy) and policy.pointers_decide
    extractor = policy.features_extractor
    assert extractor.frame_pointer is not None and extractor.frame_pointer.grid == inspect_grid
    assert extractor.pointer.here_weight is not None
    assert extractor.pointer.elsewhere_weight is not None
    assert extractor.pointer.avoid_field is avoid_field
    env = gym.make(env_id)
    assert model.observation_space == env.observation_space
    obs, _ = env.reset(seed=0)
    for _ in range(3):
        chosen, _ = model.predict(obs, action_masks=env.unwrapped.action_masks())
        obs, _, _, _, info = env.step(chosen)
        assert info["refused"] is None
    env.close()
