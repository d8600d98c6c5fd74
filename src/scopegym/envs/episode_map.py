"""The episode map: a memory of where the specimen was seen, from reported positions only.

A policy that zooms in loses its overview, and a frame of 4 nm says nothing about the 2 µm
around it. :class:`EpisodeMap` keeps, for the whole episode, a picture of the area the
instrument can reach in one fixed frame of reported stage coordinates:

========  ===================================================================================
channel   content (uint8)
========  ===================================================================================
overview  every frame of at least two map pixels' field, as acquired, resampled into the map
          where it was taken (the latest on top); 0 where nothing has been seen, else
          1 + 254 × min(1, rate / (2 × reference)), where rate is the detector's counts per
          microsecond of dwell and the reference the mean rate of the first frame painted
          (mostly film): film near mid-grey, holes dark, contamination bright, and one grey
          scale for the whole episode, so that frames keep their brightness where they overlap
          whatever their dwell
visits    the fraction of each map pixel covered by atomic-resolution frames (pixels at most
          :data:`~scopegym.envs.core.ATOMIC_PIXEL_NM`), × 255, at most 255
position  255 over the present field of view (at least the pixel under its centre), else 0
targets   (v2 ids) the rim targets read from the episode's overviews that no localisation frame
          has looked at yet (:class:`~scopegym.envs.overview.RimTargets`): 255 on the map
          pixel under each, 128 on the eight around it (where no other target's 255 is), else 0
========  ===================================================================================

The map's close-up of the present view (:meth:`EpisodeMap.neighbourhood`, v4 ids) keeps what
the map's scale drops: three fields of view across, centred on the view, the atomic-resolution
frames' coverage and the centres of the frames taken at the present field, so that a policy
sees which fields beside this one were taken and how often this place was looked at.

Positions are the instrument's reported ones (stage plus beam shift), never the twin's truth:
the map is what an operator's own notes would hold. Frames are placed by the reported position
during the scan; the frame's columns run along +x and its rows along +y, as the scan does.

The map's frame is fixed for the episode: a square of ``extent_nm`` centred on the stage's range
when that range fits in it (the twin's 2 µm stage, in a 2048 nm map), otherwise centred on the
view of the first frame painted (an instrument whose stage travels millimetres);
:func:`map_origin_nm` gives it, so that a policy can place the map's pixels in nm.
"""

from __future__ import annotations

import numpy as np

from scopegym.envs.overview import RimTargets
from scopegym.instrument import Frame, InstrumentLimits, InstrumentState

#: Names of the map's channels, in order (v2 ids; v1's map has the first three).
MAP_CHANNELS = ("overview", "visits", "position", "targets")
#: Level of a target's own pixel in the ``targets`` channel, and of the ring around it.
TARGET_LEVEL, TARGET_RING_LEVEL = 255, 128
#: Side of the map [px].
MAP_PX = 128
#: Side of the area the map covers [nm]: the twin's 2 µm stage with a margin.
MAP_EXTENT_NM = 2048.0
#: Frames spanning fewer map pixels than this are not painted into the overview channel.
MIN_PAINTED_PX = 2.0
#: Names of the close-up's channels (:meth:`EpisodeMap.neighbourhood`), in order.
NEIGHBOURHOOD_CHANNELS = ("visits", "scans")
#: Side of the close-up [px]: 16 per field of view, so that its middle third has DefectSearch's
#: inspect grid, and at least the 36 that SB3's default image encoder (NatureCNN) takes.
NEIGHBOURHOOD_PX = 48
#: Side of the close-up in fields of view of the present field.
NEIGHBOURHOOD_FIELDS = 3
#: Level of one frame's centre in the close-up's ``scans`` channel; three saturate it.
SCAN_LEVEL = 85


def map_origin_nm(
    limits: InstrumentLimits, extent_nm: float, first_centre_nm: tuple[float, float]
) -> tuple[float, float]:
    """The reported (x, y) position of the map's corner (pixel row 0, column 0) [nm].

    Args:
        limits: The instrument's limits: a stage range that fits in the map centres it.
        extent_nm: Side of the map [nm].
        first_centre_nm: Centre of the episode's first frame painted, otherwise [nm].
    """
    half = 0.5 * extent_nm
    x, y = limits.stage_x_nm, limits.stage_y_nm
    centre_x, centre_y = first_centre_nm
    if x.high - x.low <= extent_nm and y.high - y.low <= extent_nm:
        centre_x, centre_y = 0.5 * (x.low + x.high), 0.5 * (y.low + y.high)
    return (centre_x - half, centre_y - half)


class EpisodeMap:
    """A persistent map of one episode (see the module docstring).

    Args:
        limits: The instrument's limits (its stage range fixes the map's frame).
        size_px: Side of the map [px].
        extent_nm: Side of the area it covers [nm].
        atomic_pixel_nm: Frames with pixels at most this size count as visits [nm].
        targets: Rim targets to draw as a fourth channel (v2); None keeps v1's three.
    """

    def __init__(
        self,
        limits: InstrumentLimits,
        size_px: int = MAP_PX,
        extent_nm: float = MAP_EXTENT_NM,
        atomic_pixel_nm: float = 0.05,
        targets: RimTargets | None = None,
    ) -> None:
        self.limits = limits
        self.targets = targets
        self.channels = MAP_CHANNELS if targets is not None else MAP_CHANNELS[:3]
        self.size_px = int(size_px)
        self.extent_nm = float(extent_nm)
        self.pixel_nm = self.extent_nm / self.size_px
        self.atomic_pixel_nm = float(atomic_pixel_nm)
        self.reset()

    def reset(self) -> None:
        """Forget everything; the frame is fixed again by the next frame painted."""
        n = self.size_px
        self.overview = np.zeros((n, n), np.uint8)
        self.coverage = np.zeros((n, n), np.float64)
        self.origin_nm: tuple[float, float] | None = None
        self._reference_rate: float | None = None
        # Every frame's reported centre x, y and field of view [nm], and whether it resolves
        # atoms, for the close-up (the map's 16 nm pixels cannot tell 4 nm fields apart).
        self._frames: list[tuple[float, float, float, bool]] = []
        if self.targets is not None:
            self.targets.reset()

    # -- geometry -------------------------------------------------------------------------

    def _fix_frame(self, centre_x_nm: float, centre_y_nm: float) -> tuple[float, float]:
        if self.origin_nm is None:
            self.origin_nm = map_origin_nm(self.limits, self.extent_nm, (centre_x_nm, centre_y_nm))
        return self.origin_nm

    def _pixel_span(self, low_nm: float, high_nm: float, origin_nm: float) -> tuple[int, int]:
        """Map pixels whose centres lie in [low, high), clipped to the map."""
        first = int(np.ceil((low_nm - origin_nm) / self.pixel_nm - 0.5))
        last = int(np.ceil((high_nm - origin_nm) / self.pixel_nm - 0.5))
        return max(first, 0), min(last, self.size_px)

    @staticmethod
    def _overlap(
        low: float | np.ndarray, high: float | np.ndarray, edges: np.ndarray
    ) -> np.ndarray:
        """Length of [low, high] inside each interval between consecutive ``edges``.

        ``low`` and ``high`` may be columns of several intervals, (k, 1): one row each.
        """
        return np.clip(np.minimum(edges[1:], high) - np.maximum(edges[:-1], low), 0.0, None)

    # -- painting -------------------------------------------------------------------------

    def add_frame(self, frame: Frame, image: np.ndarray | None = None) -> None:
        """Paint a frame where it was taken; count it as a visit if it resolves atoms.

        Args:
            frame: The frame as acquired.
            image: The frame as the observation shows it, from which rim targets are read
                (maps with a ``targets`` channel); the frame's counts if None.
        """
        cx = frame.stage_x_nm + frame.shift_x_nm
        cy = frame.stage_y_nm + frame.shift_y_nm
        ox, oy = self._fix_frame(cx, cy)
        if self.targets is not None:
            self.targets.add_frame(frame, frame.counts if image is None else image)
        half = 0.5 * frame.fov_nm
        self._frames.append((cx, cy, float(frame.fov_nm), frame.pixel_nm <= self.atomic_pixel_nm))
        if frame.pixel_nm <= self.atomic_pixel_nm:
            edges_x = ox + self.pixel_nm * np.arange(self.size_px + 1)
            edges_y = oy + self.pixel_nm * np.arange(self.size_px + 1)
            along_x = self._overlap(cx - half, cx + half, edges_x)
            along_y = self._overlap(cy - half, cy + half, edges_y)
            self.coverage += np.outer(along_y, along_x) / self.pixel_nm**2
        if frame.fov_nm < MIN_PAINTED_PX * self.pixel_nm:
            return
        rows = self._pixel_span(cy - half, cy + half, oy)
        cols = self._pixel_span(cx - half, cx + half, ox)
        if rows[0] >= rows[1] or cols[0] >= cols[1]:
            return  # wholly outside the map
        rate = np.asarray(frame.counts, dtype=np.float64) / max(frame.dwell_us, 1e-12)
        if self._reference_rate is None:
            self._reference_rate = max(float(np.mean(rate)), 1e-12)
        reference = self._reference_rate
        # Each map pixel takes the mean of the frame pixels whose centres fall in it, or the
        # frame pixel under its centre where the frame's pixels are the coarser.
        n = frame.size_px
        centres = (np.arange(n) + 0.5) / n * frame.fov_nm - half
        map_col = np.floor((cx + centres - ox) / self.pixel_nm).astype(int)
        map_row = np.floor((cy + centres - oy) / self.pixel_nm).astype(int)
        height, width = rows[1] - rows[0], cols[1] - cols[0]
        r = map_row - rows[0]
        c = map_col - cols[0]
        keep_r, keep_c = (r >= 0) & (r < height), (c >= 0) & (c < width)
        sums = np.zeros((height, width))
        counts = np.zeros((height, width))
        rr, cc = np.meshgrid(r[keep_r], c[keep_c], indexing="ij")
        block = rate[np.ix_(keep_r, keep_c)]
        np.add.at(sums, (rr, cc), block)
        np.add.at(counts, (rr, cc), 1.0)
        empty = counts == 0
        if empty.any():
            pixel_centres_y = oy + (np.arange(rows[0], rows[1]) + 0.5) * self.pixel_nm
            pixel_centres_x = ox + (np.arange(cols[0], cols[1]) + 0.5) * self.pixel_nm
            src_r = ((pixel_centres_y - (cy - half)) / frame.pixel_nm).astype(int)
            src_c = ((pixel_centres_x - (cx - half)) / frame.pixel_nm).astype(int)
            nearest = rate[np.ix_(np.clip(src_r, 0, n - 1), np.clip(src_c, 0, n - 1))]
            sums = np.where(empty, nearest, sums)
            counts = np.where(empty, 1.0, counts)
        level = (sums / counts) / (2.0 * reference)
        grey = 1.0 + 254.0 * np.clip(level, 0.0, 1.0)
        self.overview[rows[0] : rows[1], cols[0] : cols[1]] = np.round(grey).astype(np.uint8)

    # -- reading --------------------------------------------------------------------------

    def pixel_of(self, x_nm: float, y_nm: float) -> tuple[int, int]:
        """The (row, column) of the map pixel over a reported position [nm] (maybe off the map)."""
        ox, oy = self._fix_frame(x_nm, y_nm)
        row, col = np.floor((y_nm - oy) / self.pixel_nm), np.floor((x_nm - ox) / self.pixel_nm)
        return int(row), int(col)

    def _targets_channel(self) -> np.ndarray:
        n = self.size_px
        channel = np.zeros((n, n), np.uint8)
        assert self.targets is not None
        pixels = [self.pixel_of(float(t[0]), float(t[1])) for t in self.targets.pending]
        on_map = [(row, col) for row, col in pixels if 0 <= row < n and 0 <= col < n]
        for row, col in on_map:
            block = channel[max(row - 1, 0) : row + 2, max(col - 1, 0) : col + 2]
            np.maximum(block, TARGET_RING_LEVEL, out=block)
        # After every ring, so that no neighbour's ring covers a target's own pixel.
        for row, col in on_map:
            channel[row, col] = TARGET_LEVEL
        return channel

    def observation(self, state: InstrumentState) -> np.ndarray:
        """The map as a (channels, size_px, size_px) uint8 array, with the present field marked."""
        cx = state.stage_x_nm + state.shift_x_nm
        cy = state.stage_y_nm + state.shift_y_nm
        ox, oy = self._fix_frame(cx, cy)
        n = self.size_px
        position = np.zeros((n, n), np.uint8)
        half = 0.5 * state.fov_nm
        rows = self._pixel_span(cy - half, cy + half, oy)
        cols = self._pixel_span(cx - half, cx + half, ox)
        if rows[0] < rows[1] and cols[0] < cols[1]:
            position[rows[0] : rows[1], cols[0] : cols[1]] = 255
        else:  # a field smaller than a map pixel: the pixel under its centre
            row, col = self.pixel_of(cx, cy)
            if 0 <= row < n and 0 <= col < n:
                position[row, col] = 255
        visits = np.round(255.0 * np.clip(self.coverage, 0.0, 1.0)).astype(np.uint8)
        layers = [self.overview, visits, position]
        if self.targets is not None:
            layers.append(self._targets_channel())
        return np.stack(layers)

    def neighbourhood(
        self,
        state: InstrumentState,
        size_px: int = NEIGHBOURHOOD_PX,
        fields: float = NEIGHBOURHOOD_FIELDS,
    ) -> np.ndarray:
        """A close-up of what was taken around the present view, (2, size_px, size_px) uint8.

        The square of ``fields`` present fields of view centred on the present (reported)
        view, columns along +x and rows along +y as the map's; its middle third is the present
        field. Channels (:data:`NEIGHBOURHOOD_CHANNELS`):

        - ``visits``: the fraction of each pixel covered by atomic-resolution frames × 255, as
          the map's channel but at the present field's scale, where the present field is
          16 × 16 px (the map's 16 nm pixels cannot tell one 4 nm field from its neighbour);
        - ``scans``: the centres of the frames taken at the present field of view,
          :data:`SCAN_LEVEL` per frame (three saturate it), so that a field looked at again,
          and how often, shows.

        This is what an operator's notes of the last minutes hold and the map's scale drops:
        which of the fields beside this one were taken, and how often this place was looked at.
        """
        n = int(size_px)
        close_up = np.zeros((2, n, n), np.uint8)
        if not self._frames:
            return close_up
        view_x, view_y = state.view_nm
        side = float(fields) * state.fov_nm
        pixel = side / n
        low_x, low_y = view_x - 0.5 * side, view_y - 0.5 * side
        frames = np.asarray(self._frames, dtype=np.float64)
        centre_x, centre_y, fov, atomic = frames.T
        atomic = atomic > 0.5
        if atomic.any():
            edges = np.arange(n + 1) * pixel
            half = 0.5 * fov[atomic, None]
            x, y = centre_x[atomic, None], centre_y[atomic, None]
            # Each frame's overlap with every column and row, then their products summed.
            along_x = self._overlap(x - half, x + half, low_x + edges)
            along_y = self._overlap(y - half, y + half, low_y + edges)
            coverage = along_y.T @ along_x / pixel**2
            close_up[0] = np.round(255.0 * np.clip(coverage, 0.0, 1.0)).astype(np.uint8)
        same = np.isclose(fov, state.fov_nm, rtol=1e-3)
        cols = np.floor((centre_x[same] - low_x) / pixel).astype(int)
        rows = np.floor((centre_y[same] - low_y) / pixel).astype(int)
        inside = (rows >= 0) & (rows < n) & (cols >= 0) & (cols < n)
        counts = np.zeros((n, n))
        np.add.at(counts, (rows[inside], cols[inside]), 1.0)
        close_up[1] = np.minimum(SCAN_LEVEL * counts, 255).astype(np.uint8)
        return close_up


def target_positions_nm(
    channel: np.ndarray, limits: InstrumentLimits, first_centre_nm: tuple[float, float]
) -> np.ndarray:
    """The reported (x, y) positions [nm] of the targets a ``targets`` channel marks.

    Each target is its pixel's centre, within half a map pixel (8 nm) of where it was read.

    Args:
        channel: The map's ``targets`` channel, (size_px, size_px).
        limits: The instrument's limits (they fix the map's frame, :func:`map_origin_nm`).
        first_centre_nm: Centre of the episode's first frame [nm] (used only where the stage's
            range does not fit in the map).

    Returns:
        (count, 2) array, in row-major order of the pixels.
    """
    n = channel.shape[-1]
    pixel_nm = MAP_EXTENT_NM / n
    ox, oy = map_origin_nm(limits, MAP_EXTENT_NM, first_centre_nm)
    rows, cols = np.nonzero(np.asarray(channel) == TARGET_LEVEL)
    return np.stack([ox + (cols + 0.5) * pixel_nm, oy + (rows + 0.5) * pixel_nm], axis=-1)


__all__ = [
    "MAP_CHANNELS",
    "MAP_EXTENT_NM",
    "MAP_PX",
    "MIN_PAINTED_PX",
    "NEIGHBOURHOOD_CHANNELS",
    "NEIGHBOURHOOD_FIELDS",
    "NEIGHBOURHOOD_PX",
    "SCAN_LEVEL",
    "TARGET_LEVEL",
    "TARGET_RING_LEVEL",
    "EpisodeMap",
    "map_origin_nm",
    "target_positions_nm",
]
