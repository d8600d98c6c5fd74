"""A policy head that points at the episode map: the ``goto`` cell is chosen where the map shows it.

With ``goto`` (DefectSearch-v4, Survey-v4) travel is one choice of a map cell, but an MLP over
pooled CNN features has to read a place off a 4 × 4 summary of the map and write it into 64
logits per axis: cloning the rim search that way left its travel unlearned (the v2 clone
oscillated between tiles). :class:`MapPointer` scores every ``goto`` cell with a small
fully-convolutional network at the cells' own resolution, so a target drawn on the map raises
the score of the cell under it wherever it is (the convolution is the same everywhere), and
:class:`MapPointerPolicy` adds those scores to the ``gx`` and ``gy`` logits.

The action's entries are independent categoricals, so the cell scores enter as two
max-marginals, the best cell of each column for ``gx`` and of each row for ``gy``: both then
pick the best cell, whatever else lies in its row and column. Where the pointers decide
(``pointers_decide``), each bin's learnt bias joins the cell's score before the maxima are
taken, and tied cells resolve to the first, so that the two most likely entries are one cell.

Inputs of the scorer, per cell (the map's 16 nm pixels pooled 2 × 2 to the 32 nm cells): the
mean of every map channel, the maximum of the ``targets`` channel (a target's own pixel is not
averaged away), the cell's coordinates, and its distance from the present field (the
``position`` channel's centroid, or, where the map's edge cuts the field, its centre from the
drawn far edge: :func:`clipped_field_centre`), which a search needs to prefer the nearest of
several targets. Two learnt scalars score the cells that hold a target directly, by the ``targets``
maximum and, on those cells, the distance, initialised so that the untrained head already
points at the nearest target. Optional learnt priors score the present cell down
(``avoid_here``; with ``avoid_field``, every cell within :data:`FIELD_AVOIDED` of the present
field's side) and, while any target is pending, every cell without one (``targets_first``).
Tied cells resolve to one: the first best cell's column and row win the marginals' ties.

Plain torch besides the SB3 policy class that wires it in; select it with
``agent=maskable_ppo_pointer``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from sb3_contrib.common.maskable.distributions import MaskableDistribution
from sb3_contrib.common.maskable.policies import MaskableMultiInputActorCriticPolicy
from stable_baselines3.common.torch_layers import MlpExtractor
from torch import nn
from torch.nn import functional

from scopegym.agents.features import ScopeFeaturesExtractor
from scopegym.envs.actions import ARGUMENTS
from scopegym.envs.episode_map import MAP_CHANNELS

#: Initial score of a cell holding a target (its ``targets`` maximum, in [0, 1], times it)
#: [logit].
TARGET_PRIOR = 12.0
#: Initial change of a target cell's score per map width of distance from the present field
#: [logit]: 0.25 per 64 nm, so that the nearest of several targets wins.
DISTANCE_PRIOR = -8.0
#: Initial score of the cell under the present field's centre (each of the four where the
#: centre is their common corner) where the pointer avoids it [logit]: a ``goto`` there moves
#: the view by less than half a cell and scans the same field, which the rim search never
#: does; a clone that does it sees the same observation again and repeats itself to the end of
#: the budget (measured: 589 steps of one validation episode).
HERE_PRIOR = -20.0
#: Initial score of every cell holding no target while some cell holds one, where the pointer
#: puts targets first [logit]: the rim search travels to its nearest pending target whenever
#: there is one, but the learnt part of the score, which must place overviews where no target
#: is drawn, learnt a pull towards cells beside the present field that outscored a target 13
#: cells away; the clone then hopped between two neighbouring cells to the end of the budget
#: (measured: 524 steps of held-out episode 18, shipped v4 policy).
ELSEWHERE_PRIOR = -10.0
#: Where the pointer avoids the present field (``avoid_field``), the cells within this fraction
#: of the field's side of its centre (Chebyshev) are scored down with the present cell: a
#: ``goto`` that near rescans most of the field, which the rim search never does (its overviews
#: lie half a field apart, and a target within 0.375 of a localisation field counts as reached),
#: while a Survey clone hopped between two cells beside its 1024 nm overview at the stage's edge
#: for hundreds of steps (validation episode 0, shipped v4 policy).
FIELD_AVOIDED = 0.375
#: What the best cell's column and row get over tied ones in the marginals [logit].
TIE_BREAK = 1e-3
#: Values of :meth:`MapPointer.read`'s summary of the pending targets.
SUMMARY_SIZE = 4
#: ``frame_pointer_grid`` that :class:`MapPointerPolicy` replaces by the action's inspect grid.
FRAME_POINTER_FROM_ACTION = -1


def cell_scorer(inputs: int, hidden: int) -> nn.Sequential:
    """Three 3 × 3 convolutions dilated 1, 2 and 4 (a 15-cell field), then one score per cell.

    Args:
        inputs: Channels per cell.
        hidden: Channels of the convolutions.
    """
    layers: list[nn.Module] = []
    previous = inputs
    for dilation in (1, 2, 4):
        layers += [nn.Conv2d(previous, hidden, 3, padding=dilation, dilation=dilation), nn.ReLU()]
        previous = hidden
    layers.append(nn.Conv2d(previous, 1, 1))
    return nn.Sequential(*layers)


def clipped_field_centre(
    position: torch.Tensor, centre_x: torch.Tensor, centre_y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The present field's centre where the map's edge cuts its footprint, and its side.

    The ``position`` channel draws the field only where it lies on the map, so near an edge the
    footprint's centroid sits inside the field's true centre: at a 1024 nm overview 1.5 cells
    from the left edge it fell seven cells to the right, the present cell went unmarked, and a
    Survey clone sent ``goto`` to its own cell from step 95 on (validation episode 0). The field
    is square and its centre lies on the map, so its far edge on each axis is drawn; the side is
    the longer of the two drawn extents (short only where both axes are cut, at a corner).

    Args:
        position: The ``position`` channel, ``(batch, side, side)`` in [0, 1], rows along y.
        centre_x: The footprint's centroid along x, ``(batch, 1, 1)`` [map widths], kept where
            no edge cuts the footprint.
        centre_y: The same along y.

    Returns:
        The centre along x and along y and the field's side, each ``(batch, 1, 1)`` [map
        widths]; the side is 0 where nothing is drawn.
    """
    side = position.shape[-1]
    drawn = position > 0.5
    spans = []
    for occupied in (drawn.any(1), drawn.any(2)):  # columns (x), rows (y)
        occupied = occupied.float()
        first = occupied.argmax(1).float()
        last = side - 1 - occupied.flip(1).argmax(1).float()
        spans.append((first, last, occupied.amax(1) > 0))
    field = torch.maximum(spans[0][1] - spans[0][0], spans[1][1] - spans[1][0]) + 1.0
    centres = []
    for (first, last, any_drawn), centroid in zip(spans, (centre_x, centre_y), strict=True):
        cut_low = any_drawn & (first == 0) & (last < side - 1)
        cut_high = any_drawn & (last == side - 1) & (first > 0)
        centre = torch.where(cut_low, last + 1.0 - 0.5 * field, first + 0.5 * field)
        cut = (cut_low | cut_high).view(-1, 1, 1)
        centres.append(torch.where(cut, (centre / side).view(-1, 1, 1), centroid))
    field = torch.where(spans[0][2], field, torch.zeros_like(field))
    return centres[0], centres[1], (field / side).view(-1, 1, 1)


class MapPointer(nn.Module):
    """Scores of every cell of a ``grid`` × ``grid`` tiling of the map (see the module docstring).

    Args:
        channels: Names of the map's channels, in order (``position`` is required; ``targets``
            is used where present).
        grid: Cells per axis; the map's side must be a multiple of it.
        hidden: Channels of the convolutions.
        avoid_here: Score the cell under the present field's centre down by a learnt weight
            that starts at :data:`HERE_PRIOR`.
        targets_first: While any cell holds a target, score the cells that hold none down by a
            learnt weight that starts at :data:`ELSEWHERE_PRIOR`.
        avoid_field: With ``avoid_here``, score down by the same weight every cell within
            :data:`FIELD_AVOIDED` of the present field's side from its centre, not only the
            cell under it. No parameter of its own: a trained pointer can take it on.

    Raises:
        ValueError: No ``position`` channel, or ``avoid_field`` without ``avoid_here``.
    """

    def __init__(
        self,
        channels: Sequence[str],
        grid: int,
        hidden: int = 16,
        avoid_here: bool = False,
        targets_first: bool = False,
        avoid_field: bool = False,
    ) -> None:
        super().__init__()
        if "position" not in channels:
            raise ValueError(f"the map needs a 'position' channel to point from, got {channels}")
        if avoid_field and not avoid_here:
            raise ValueError("avoid_field widens avoid_here's cell; set avoid_here too")
        self.avoid_field = bool(avoid_field)
        self.channels = tuple(channels)
        self.grid = int(grid)
        self.position_index = self.channels.index("position")
        self.targets_index = self.channels.index("targets") if "targets" in self.channels else None
        inputs = len(self.channels) + 1 + 3  # means, targets max, x, y, distance
        self.scorer = cell_scorer(inputs, hidden)
        # The learnt part starts small beside the priors (SB3's orthogonal initialisation
        # rescales the convolutions' weights, not this factor).
        self.learnt_scale = nn.Parameter(torch.tensor(0.01))
        self.target_weight = nn.Parameter(torch.tensor(TARGET_PRIOR))
        self.distance_weight = nn.Parameter(torch.tensor(DISTANCE_PRIOR))
        self.here_weight = nn.Parameter(torch.tensor(HERE_PRIOR)) if avoid_here else None
        self.elsewhere_weight = (
            nn.Parameter(torch.tensor(ELSEWHERE_PRIOR)) if targets_first else None
        )
        axis = (torch.arange(self.grid, dtype=torch.float32) + 0.5) / self.grid
        self.cell_x: torch.Tensor
        self.cell_y: torch.Tensor
        self.register_buffer("cell_x", axis.expand(self.grid, -1).clone(), persistent=False)
        self.register_buffer(
            "cell_y", axis.unsqueeze(1).expand(-1, self.grid).clone(), persistent=False
        )

    def divide_scores(self, temperature: float) -> None:
        """Divide every cell's score by ``temperature`` (its three terms are linear in it)."""
        with torch.no_grad():
            for parameter in (self.learnt_scale, self.target_weight, self.distance_weight):
                parameter.div_(temperature)
            for optional in (self.here_weight, self.elsewhere_weight):
                if optional is not None:
                    optional.div_(temperature)

    def forward(self, episode_map: torch.Tensor) -> torch.Tensor:
        """Cell scores ``(batch, grid, grid)`` [logit], rows along y, columns along x."""
        return self.read(episode_map)[0]

    def read(self, episode_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cell scores and a summary of the pending targets, ``(batch, SUMMARY_SIZE)``.

        The summary (whether any target is pending, how many cells hold one / 16, the distance
        from the present field to the nearest [map widths; 1.5 with none], and the atomic
        fields taken within 64 nm of the present field / 16) is what the choice of verb turns
        on (look here again, travel on, or a new overview), and is hard to read off pooled
        features of a map whose targets are single pixels and whose visits are faint.
        """
        if episode_map.dtype == torch.uint8:
            episode_map = episode_map.float() / 255.0
        episode_map = episode_map.float()
        side = int(episode_map.shape[-1])
        if side % self.grid:
            raise ValueError(f"a map of {side} px does not tile into {self.grid} cells")
        factor = side // self.grid
        means = functional.avg_pool2d(episode_map, factor)
        if self.targets_index is not None:
            index = self.targets_index
            targets = functional.max_pool2d(episode_map[:, index : index + 1], factor)
        else:
            targets = torch.zeros_like(means[:, :1])
        position = means[:, self.position_index]
        weight = position.flatten(1)
        total = weight.sum(1, keepdim=True)
        # No present field drawn (nothing observed yet): distances from the map's centre.
        weight = torch.where(total > 0, weight / total.clamp(min=1e-9), 1.0 / weight.shape[1])
        centre_x = (weight * self.cell_x.flatten()).sum(1).view(-1, 1, 1)
        centre_y = (weight * self.cell_y.flatten()).sum(1).view(-1, 1, 1)
        centre_x, centre_y, field = clipped_field_centre(
            episode_map[:, self.position_index], centre_x, centre_y
        )
        distance = torch.sqrt((self.cell_x - centre_x) ** 2 + (self.cell_y - centre_y) ** 2)
        batch = episode_map.shape[0]
        coordinates = torch.stack(
            [self.cell_x.expand(batch, -1, -1), self.cell_y.expand(batch, -1, -1), distance], dim=1
        )
        inputs = torch.cat([means, targets, coordinates], dim=1)
        # The learnt part runs on cells twice as wide (a quarter of the cost; it shapes the
        # scores, which the priors place to the cell).
        learnt = self.scorer(functional.avg_pool2d(inputs, 2))
        learnt = functional.interpolate(learnt, scale_factor=2.0, mode="nearest").squeeze(1)
        marked = targets.squeeze(1)
        scores = self.learnt_scale * learnt + marked * (
            self.target_weight + self.distance_weight * distance
        )
        if self.here_weight is not None:
            reach = torch.full_like(field, 0.5 / self.grid)
            if self.avoid_field:
                # Nothing drawn yet (side 0): no field to avoid beyond the centre's cell.
                reach = torch.maximum(reach, FIELD_AVOIDED * field)
            off_x, off_y = (self.cell_x - centre_x).abs(), (self.cell_y - centre_y).abs()
            here = ((off_x <= reach) & (off_y <= reach)).float()
            scores = scores + self.here_weight * here
        # A target's own pixel is 255, its ring 128: cells at 1 hold a target.
        held = (marked > 0.99).flatten(1).float()
        if self.elsewhere_weight is not None:
            elsewhere = held.amax(1, keepdim=True) * (1.0 - held)
            scores = scores + self.elsewhere_weight * elsewhere.view_as(scores)
        nearest = torch.where(held > 0, distance.flatten(1), torch.full_like(held, 1.5))
        # Atomic-resolution fields taken within 64 nm of the present field: a 4 nm field covers
        # 1/64 of a cell, so 64 x the covered fraction counts fields; 16 of them read as 1.
        visits = means[:, self.channels.index("visits")] if "visits" in self.channels else None
        if visits is None:
            taken_here = torch.zeros_like(held[:, 0])
        else:
            near = (distance < 2.0 / self.grid).float()
            taken_here = ((visits * near).flatten(1).sum(1) * 64.0 / 16.0).clamp(max=1.0)
        summary = torch.stack(
            [held.amax(1), (held.sum(1) / 16.0).clamp(max=1.0), nearest.amin(1), taken_here],
            dim=1,
        )
        return scores, summary

    def marginals(self, episode_map: torch.Tensor) -> torch.Tensor:
        """The scores' ``gx`` and ``gy`` marginals, ``(batch, 2 · grid)`` (maxima over y, x)."""
        return self._marginals(self.forward(episode_map))

    @staticmethod
    def _marginals(scores: torch.Tensor) -> torch.Tensor:
        # The maximum, not the logsumexp: a column crossing several targets and their rings
        # would otherwise outscore the column of the best single cell, and gx and gy would
        # point at different targets.
        columns, rows = scores.amax(dim=1), scores.amax(dim=2)
        # Cells tie (the learnt part is computed on cells twice as wide), and the most likely
        # gx and gy of tied cells may join to a third cell: two tied cells beside the present
        # one made a clone pick its own, scored down, cell for 240 steps (held-out episode 3).
        # The first best cell's column and row win ties, so that the two argmaxes are one cell.
        grid = scores.shape[-1]
        best = scores.detach().flatten(1).argmax(1)
        columns = columns + TIE_BREAK * functional.one_hot(best % grid, grid)
        rows = rows + TIE_BREAK * functional.one_hot(best // grid, scores.shape[-2])
        return torch.cat([columns, rows], dim=1)


class FramePointer(nn.Module):
    """Scores of every ``inspect`` point of the present field, a ``grid`` × ``grid`` tiling.

    ``inspect`` brings one point of the present frame to the centre and resolves it, so its
    (x, y) is a place on the frame, as ``goto``'s is on the map. Per cell the scorer reads the
    frame pooled to the cell (mean, spread, minimum and maximum: a hole's rim is where a dark
    cell meets a grey one), the middle third of the map's close-up resampled to the cells (the
    atomic-resolution fields taken there, and the frames centred there: v4 ids), the cell's
    coordinates and its distance from the centre, through the same dilated convolutions as
    :class:`MapPointer`'s learnt part, at full cell resolution. No prior: it starts near zero
    beside the policy's own ``x``/``y`` logits and learns where a rim point not yet taken lies.

    Args:
        grid: Cells per axis (the action's ``x``/``y`` bins).
        hidden: Channels of the convolutions.
        close_up: Whether the observation has the map's close-up (``neighbourhood``).
    """

    def __init__(self, grid: int, hidden: int = 16, close_up: bool = True) -> None:
        super().__init__()
        self.grid = int(grid)
        self.close_up = bool(close_up)
        inputs = 4 + (2 if self.close_up else 0) + 3  # frame statistics, close-up, x, y, distance
        self.scorer = cell_scorer(inputs, hidden)
        self.learnt_scale = nn.Parameter(torch.tensor(1.0))
        axis = (torch.arange(self.grid, dtype=torch.float32) + 0.5) / self.grid
        cell_x = axis.expand(self.grid, -1)
        cell_y = axis.unsqueeze(1).expand(-1, self.grid)
        distance = torch.sqrt((cell_x - 0.5) ** 2 + (cell_y - 0.5) ** 2)
        self.coordinates: torch.Tensor
        self.register_buffer(
            "coordinates", torch.stack([cell_x, cell_y, distance]).clone(), persistent=False
        )

    def divide_scores(self, temperature: float) -> None:
        """Divide every cell's score by ``temperature``."""
        with torch.no_grad():
            self.learnt_scale.div_(temperature)

    def forward(
        self, frame: torch.Tensor, neighbourhood: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Cell scores ``(batch, grid, grid)`` [logit], rows along y, columns along x."""
        frame = _unit(frame)[:, :1]
        cells = self.grid
        mean = functional.adaptive_avg_pool2d(frame, cells)
        square = functional.adaptive_avg_pool2d(frame**2, cells)
        spread = torch.sqrt((square - mean**2).clamp(min=0.0) + 1e-8)
        low = -functional.adaptive_max_pool2d(-frame, cells)
        high = functional.adaptive_max_pool2d(frame, cells)
        layers = [mean, spread, low, high]
        if self.close_up:
            if neighbourhood is None:
                raise ValueError("this FramePointer reads the 'neighbourhood' observation")
            wide = functional.adaptive_avg_pool2d(_unit(neighbourhood), 3 * cells)
            layers.append(wide[:, :, cells : 2 * cells, cells : 2 * cells])
        batch = frame.shape[0]
        layers.append(self.coordinates.expand(batch, -1, -1, -1))
        return self.learnt_scale * self.scorer(torch.cat(layers, dim=1)).squeeze(1)


def _unit(image: torch.Tensor) -> torch.Tensor:
    """An image as floats in [0, 1] (uint8 scaled; SB3 scales image entries itself)."""
    return image.float() / 255.0 if image.dtype == torch.uint8 else image.float()


class PointerFeaturesExtractor(ScopeFeaturesExtractor):
    """:class:`ScopeFeaturesExtractor`'s features, a summary of the targets, the cells' scores.

    After the encoders' features come the pointer's summary of the pending targets (see
    :meth:`MapPointer.read`), which the policy's MLPs read; the last ``pointer_dim`` features
    are the map pointer's cell scores (``pointer_grid`` squared, row by row), which
    :class:`MapPointerPolicy` turns into the ``gx`` and ``gy`` logits instead of feeding them
    to its MLPs.

    With ``frame_pointer_grid`` the :class:`FramePointer`'s cell scores follow, which the
    policy turns into the ``inspect`` point's logits.

    Args:
        observation_space: A Dict observation with a ``map`` entry.
        pointer_grid: ``goto`` cells per axis (the action's ``gx``/``gy`` bins).
        pointer_hidden: Channels of the pointer's convolutions.
        avoid_here: The map pointer scores the present cell down (:data:`HERE_PRIOR`).
        targets_first: The map pointer scores cells without a target down while any holds one
            (:data:`ELSEWHERE_PRIOR`).
        avoid_field: The map pointer's avoided cells span :data:`FIELD_AVOIDED` of the present
            field (with ``avoid_here``; see :class:`MapPointer`).
        frame_pointer_grid: ``inspect`` points per axis (the action's ``x``/``y`` bins: 16 in
            DefectSearch, 8 in Survey); 0 leaves the frame pointer out;
            :data:`FRAME_POINTER_FROM_ACTION` lets :class:`MapPointerPolicy` read it off the
            action space.
        **kwargs: Passed to :class:`ScopeFeaturesExtractor`.
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        pointer_grid: int = 64,
        pointer_hidden: int = 16,
        frame_pointer_grid: int = 0,
        avoid_here: bool = False,
        targets_first: bool = False,
        avoid_field: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(observation_space, **kwargs)
        map_space = observation_space.spaces.get("map")
        if map_space is None:
            raise ValueError(
                "PointerFeaturesExtractor points at the 'map' observation; there is none"
            )
        count = int(map_space.shape[0])  # type: ignore[index]
        self.pointer = MapPointer(
            MAP_CHANNELS[:count],
            pointer_grid,
            pointer_hidden,
            avoid_here,
            targets_first,
            avoid_field,
        )
        self.map_pointer_dim = int(pointer_grid) ** 2
        self.frame_pointer: FramePointer | None = None
        self.frame_pointer_dim = 0
        if frame_pointer_grid:
            close_up = "neighbourhood" in observation_space.spaces
            self.frame_pointer = FramePointer(frame_pointer_grid, pointer_hidden, close_up)
            self.frame_pointer_dim = int(frame_pointer_grid) ** 2
        self.pointer_dim = self.map_pointer_dim + self.frame_pointer_dim
        self._features_dim += SUMMARY_SIZE + self.pointer_dim

    def forward(self, observations: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Features ``(batch, features_dim)``: the encoders', the summary, the cell scores."""
        scores, summary = self.pointer.read(observations["map"])
        parts = [super().forward(observations), summary, scores.flatten(1)]
        if self.frame_pointer is not None:
            cells = self.frame_pointer(observations["frame"], observations.get("neighbourhood"))
            parts.append(cells.flatten(1))
        return torch.cat(parts, dim=1)


class PointerMlpExtractor(nn.Module):
    """SB3's :class:`MlpExtractor` on all features but the trailing pointer scores.

    The actor's latent is the MLP's output followed by the pointer scores, passed through
    untouched; the critic's is the MLP's alone.
    """

    def __init__(self, features_dim: int, pointer_dim: int, **kwargs: Any) -> None:
        super().__init__()
        self.pointer_dim = int(pointer_dim)
        self.inner = MlpExtractor(features_dim - self.pointer_dim, **kwargs)
        self.latent_dim_pi = self.inner.latent_dim_pi
        self.latent_dim_vf = self.inner.latent_dim_vf

    def _split(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return features[:, : -self.pointer_dim], features[:, -self.pointer_dim :]

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(actor latent with the pointer scores, critic latent)."""
        return self.forward_actor(features), self.forward_critic(features)

    def forward_actor(self, features: torch.Tensor) -> torch.Tensor:
        """The actor MLP's output, then the pointer scores."""
        base, pointer = self._split(features)
        return torch.cat([self.inner.forward_actor(base), pointer], dim=1)

    def forward_critic(self, features: torch.Tensor) -> torch.Tensor:
        """The critic MLP's output."""
        return self.inner.forward_critic(self._split(features)[0])


class MapPointerPolicy(MaskableMultiInputActorCriticPolicy):
    """MaskablePPO policy whose ``gx``/``gy`` logits include the map pointer's cell scores.

    Needs :class:`PointerFeaturesExtractor` (``policy_kwargs.features_extractor_class``) and
    an action whose last two entries are ``gx`` and ``gy`` with ``pointer_grid`` bins each
    (DefectSearch-v3 and v4, Survey-v3 and v4). The other entries' logits come from the action
    layer on the MLP's latent, as in ``MultiInputPolicy``; ``gx`` and ``gy`` get the same plus
    the pointer's marginals (and ``x`` and ``y`` the frame pointer's, where the extractor has
    one).

    Args:
        observation_space: The Dict observation space.
        action_space: The MultiDiscrete action space.
        *args: Passed to ``MaskableMultiInputActorCriticPolicy``.
        pointers_decide: The pointed entries' logits are the max-marginals of the cell scores
            with each bin's bias from the action layer added to its cells (not the layer's
            weights on the MLP's latent), ties resolved to one cell.
        **kwargs: Passed to ``MaskableMultiInputActorCriticPolicy``.
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        action_space: spaces.Space[Any],
        *args: Any,
        pointers_decide: bool = False,
        **kwargs: Any,
    ) -> None:
        self.pointers_decide = bool(pointers_decide)
        extractor_kwargs = dict(kwargs.get("features_extractor_kwargs") or {})
        if extractor_kwargs.get("frame_pointer_grid") == FRAME_POINTER_FROM_ACTION:
            # The task's inspect grid (16 in DefectSearch, 8 in Survey), so that one config
            # serves both; the saved kwargs keep the marker and resolve the same way on load.
            nvec = np.asarray(getattr(action_space, "nvec", []), dtype=np.int64).reshape(-1)
            x_entry = 1 + ARGUMENTS.index("x")
            grid = int(nvec[x_entry]) if len(nvec) > x_entry else 0
            extractor_kwargs["frame_pointer_grid"] = grid
            kwargs["features_extractor_kwargs"] = extractor_kwargs
        super().__init__(observation_space, action_space, *args, **kwargs)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        parameters = super()._get_constructor_parameters()
        parameters["pointers_decide"] = self.pointers_decide
        return parameters

    def _build_mlp_extractor(self) -> None:
        extractor = self.features_extractor
        pointer_dim = int(getattr(extractor, "pointer_dim", 0))
        frame_dim = int(getattr(extractor, "frame_pointer_dim", 0))
        map_dim = pointer_dim - frame_dim
        nvec = np.asarray(getattr(self.action_space, "nvec", []), dtype=np.int64).reshape(-1)
        if (
            not pointer_dim
            or len(nvec) < 2
            or int(nvec[-1]) ** 2 != map_dim
            or nvec[-1] != nvec[-2]
        ):
            raise ValueError(
                "MapPointerPolicy needs PointerFeaturesExtractor (features_extractor_class) "
                f"and an action ending in gx, gy entries of pointer_grid bins; got nvec "
                f"{nvec.tolist()} and {map_dim} map pointer features"
            )
        # The inspect point's x and y entries, adjacent in the action (ARGUMENTS).
        x_entry = 1 + ARGUMENTS.index("x")
        # (first logit, cells per axis) of each pointed pair of entries, in the order of their
        # cell scores at the end of the features: the map's gx, gy, then inspect's x, y.
        self._pointed: list[tuple[int, int]] = [(int(nvec[:-2].sum()), int(nvec[-1]))]
        if frame_dim:
            self._pointed.append((int(nvec[:x_entry].sum()), int(nvec[x_entry])))
        if frame_dim and (len(nvec) <= x_entry + 1 or int(nvec[x_entry]) ** 2 != frame_dim):
            side = round(frame_dim**0.5)
            raise ValueError(
                f"the frame pointer scores {side} x {side} inspect points; "
                f"the action's x, y entries have {nvec.tolist()[x_entry : x_entry + 2]} bins "
                "(frame_pointer_grid must match the task's inspect grid)"
            )
        self.mlp_extractor = PointerMlpExtractor(  # type: ignore[assignment]
            self.features_dim,
            pointer_dim,
            net_arch=self.net_arch,
            activation_fn=self.activation_fn,
            device=self.device,
        )

    def _get_action_dist_from_latent(self, latent_pi: torch.Tensor) -> MaskableDistribution:
        extractor = self.mlp_extractor
        assert isinstance(extractor, PointerMlpExtractor)
        pointer_dim = extractor.pointer_dim
        base, pointer = latent_pi[:, :-pointer_dim], latent_pi[:, -pointer_dim:]
        logits = self.action_net(base).clone()
        biases: torch.Tensor | None = None
        if self.pointers_decide:
            # A place is the pointers' choice plus a learnt bias per bin: the MLP, which sees
            # the present position too, would otherwise pick each axis on its own and may
            # join a column and a row to a cell no pointer scored (the present one, say).
            action_net = self.action_net
            assert isinstance(action_net, nn.Linear) and action_net.bias is not None
            biases = action_net.bias
        offset = 0
        for first, side in self._pointed:
            cells = pointer[:, offset : offset + side * side].view(-1, side, side)
            offset += side * side
            span = slice(first, first + 2 * side)
            if biases is not None:
                # The bins' biases belong to the cell's score before the maxima are taken:
                # added after them, a column's bias could outweigh a tie between two cells
                # and the two argmaxes join the column of one to the row of the other.
                bias = biases[span]
                logits[:, span] = MapPointer._marginals(cells + bias[:side] + bias[side:, None])
            else:
                logits[:, span] = logits[:, span] + MapPointer._marginals(cells)
        return self.action_dist.proba_distribution(action_logits=logits)


__all__ = [
    "DISTANCE_PRIOR",
    "ELSEWHERE_PRIOR",
    "FRAME_POINTER_FROM_ACTION",
    "FramePointer",
    "HERE_PRIOR",
    "SUMMARY_SIZE",
    "TIE_BREAK",
    "TARGET_PRIOR",
    "cell_scorer",
    "clipped_field_centre",
    "MapPointer",
    "MapPointerPolicy",
    "PointerFeaturesExtractor",
    "PointerMlpExtractor",
]
