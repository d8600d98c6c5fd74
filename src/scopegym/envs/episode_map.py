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
========  ===================================================================================

Positions are the instrument's reported ones (stage plus beam shift), never the twin's truth:
the map is what an operator's own notes would hold. Frames are placed by the reported position
during the scan; the frame's columns run along +x and its rows along +y, as the scan does.

The map's frame is fixed for the episode: a square of ``extent_nm`` centred on the stage's range
when that range fits in it (the twin's 2 µm stage, in a 2048 nm map), otherwise centred on the
view of the first frame painted (an instrument whose stage travels millimetres).
"""

from __future__ import annotations

import numpy as np

from scopegym.instrument import Frame, InstrumentLimits, InstrumentState

#: Names of the map's channels, in order.
MAP_CHANNELS = ("overview", "visits", "position")
#: Side of the map [px].
MAP_PX = 128
#: Side of the area the map covers [nm]: the twin's 2 µm stage with a margin.
MAP_EXTENT_NM = 2048.0
#: Frames spanning fewer map pixels than this are not painted into the overview channel.
MIN_PAINTED_PX = 2.0


class EpisodeMap:
    """A persistent map of one episode (see the module docstring).

    Args:
        limits: The instrument's limits (its stage range fixes the map's frame).
        size_px: Side of the map [px].
        extent_nm: Side of the area it covers [nm].
        atomic_pixel_nm: Frames with pixels at most this size count as visits [nm].
    """

    def __init__(
        self,
        limits: InstrumentLimits,
        size_px: int = MAP_PX,
        extent_nm: float = MAP_EXTENT_NM,
        atomic_pixel_nm: float = 0.05,
    ) -> None:
        self.limits = limits
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

    # -- geometry -------------------------------------------------------------------------

    def _fix_frame(self, centre_x_nm: float, centre_y_nm: float) -> tuple[float, float]:
        if self.origin_nm is None:
            half = 0.5 * self.extent_nm
            x, y = self.limits.stage_x_nm, self.limits.stage_y_nm
            if x.high - x.low <= self.extent_nm and y.high - y.low <= self.extent_nm:
                centre_x_nm, centre_y_nm = 0.5 * (x.low + x.high), 0.5 * (y.low + y.high)
            self.origin_nm = (centre_x_nm - half, centre_y_nm - half)
        return self.origin_nm

    def _pixel_span(self, low_nm: float, high_nm: float, origin_nm: float) -> tuple[int, int]:
        """Map pixels whose centres lie in [low, high), clipped to the map."""
        first = int(np.ceil((low_nm - origin_nm) / self.pixel_nm - 0.5))
        last = int(np.ceil((high_nm - origin_nm) / self.pixel_nm - 0.5))
        return max(first, 0), min(last, self.size_px)

    @staticmethod
    def _overlap(low: float, high: float, edges: np.ndarray) -> np.ndarray:
        """Length of [low, high] inside each interval between consecutive ``edges``."""
        return np.clip(np.minimum(edges[1:], high) - np.maximum(edges[:-1], low), 0.0, None)

    # -- painting -------------------------------------------------------------------------

    def add_frame(self, frame: Frame) -> None:
        """Paint a frame where it was taken; count it as a visit if it resolves atoms."""
        cx = frame.stage_x_nm + frame.shift_x_nm
        cy = frame.stage_y_nm + frame.shift_y_nm
        ox, oy = self._fix_frame(cx, cy)
        half = 0.5 * frame.fov_nm
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

    def observation(self, state: InstrumentState) -> np.ndarray:
        """The map as a (3, size_px, size_px) uint8 array, with the present field marked."""
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
            row = int(np.floor((cy - oy) / self.pixel_nm))
            col = int(np.floor((cx - ox) / self.pixel_nm))
            if 0 <= row < n and 0 <= col < n:
                position[row, col] = 255
        visits = np.round(255.0 * np.clip(self.coverage, 0.0, 1.0)).astype(np.uint8)
        return np.stack([self.overview, visits, position])


__all__ = ["MAP_CHANNELS", "MAP_EXTENT_NM", "MAP_PX", "MIN_PAINTED_PX", "EpisodeMap"]
