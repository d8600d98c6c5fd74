"""Pictures for people watching training videos: overview, current frame, spectrum, Ronchigram.

The overview and the current frame carry a scale bar; a spectrum panel appears only for tasks
that take spectra, and a Ronchigram panel only for tasks that record Ronchigrams.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

from scopegym.envs.core import contrast_stretch
from scopegym.instrument import Frame

if TYPE_CHECKING:
    from scopegym.envs.core import MicroscopeEnv

PANEL = 256
_BACKGROUND = (24, 24, 28)
_VISITED = (80, 170, 255)
_CURRENT = (255, 200, 40)
_DEFECT = (255, 80, 80)
_TRACE = (120, 230, 120)
_SCALE = (255, 255, 255)
_SCALE_BACKDROP = (0, 0, 0)
#: Scale bar: at most this fraction of the panel wide, its left end this far in [px].
_SCALE_MAX_FRACTION = 0.3
SCALE_BAR_MARGIN_PX = 8
SCALE_BAR_HEIGHT_PX = 3


def scale_bar(fov_nm: float, panel_px: int = PANEL) -> tuple[float, int, str]:
    """The longest 1, 2 or 5 x 10^k nm bar that fits in 30 % of a panel.

    Args:
        fov_nm: Width of the field the panel shows [nm].
        panel_px: Width of the panel [px].

    Returns:
        ``(length_nm, length_px, label)``, e.g. ``(1.0, 64, "1 nm")`` for a 4 nm field, and
        ``(200.0, 50, "200 nm")`` for a 1024 nm overview, ``"1 um"`` from 1000 nm on.
    """
    longest_nm = _SCALE_MAX_FRACTION * fov_nm
    exponent = int(np.floor(np.log10(longest_nm)))
    length_nm = max(
        step * 10.0**exponent for step in (1.0, 2.0, 5.0) if step * 10.0**exponent <= longest_nm
    )
    length_px = int(round(length_nm / fov_nm * panel_px))
    if length_nm >= 1000.0:
        label = f"{length_nm / 1000.0:g} um"  # PIL's default font has no µ
    else:
        label = f"{length_nm:g} nm"
    return length_nm, length_px, label


def _draw_scale_bar(image: Image.Image, fov_nm: float) -> None:
    _, length_px, label = scale_bar(fov_nm, image.width)
    draw = ImageDraw.Draw(image)
    x0 = SCALE_BAR_MARGIN_PX
    y0 = image.height - SCALE_BAR_MARGIN_PX - SCALE_BAR_HEIGHT_PX
    # A dark backdrop keeps the bar and its label legible on bright frames.
    draw.rectangle(
        (x0 - 3, y0 - 14, x0 + max(length_px, 6 * len(label)) + 3, y0 + SCALE_BAR_HEIGHT_PX + 2),
        fill=_SCALE_BACKDROP,
    )
    draw.rectangle((x0, y0, x0 + length_px - 1, y0 + SCALE_BAR_HEIGHT_PX - 1), fill=_SCALE)
    draw.text((x0, y0 - 13), label, fill=_SCALE)


def _gray_panel(counts: np.ndarray) -> Image.Image:
    return (
        Image.fromarray(contrast_stretch(counts))
        .resize((PANEL, PANEL), Image.Resampling.NEAREST)
        .convert("RGB")
    )


def _overview_panel(env: MicroscopeEnv) -> Image.Image:
    overview = env._overview
    if overview is None:
        return Image.new("RGB", (PANEL, PANEL), _BACKGROUND)
    image = _gray_panel(overview.counts)
    draw = ImageDraw.Draw(image)
    scale = PANEL / overview.fov_nm
    truth = env.truth
    if truth is not None and env._overview_view is not None:
        # Twin: place everything by true world position.
        ox0, oy0 = env._overview_view[0], env._overview_view[1]

        def world_box(bounds: tuple[float, float, float, float]) -> tuple[float, ...]:
            x0, y0, x1, y1 = bounds
            return (
                (x0 - ox0) * scale,
                (y0 - oy0) * scale,
                max((x1 - ox0) * scale, (x0 - ox0) * scale + 2),
                max((y1 - oy0) * scale, (y0 - oy0) * scale + 2),
            )

        for bounds in env._atomic_views:
            draw.rectangle(world_box(bounds), outline=_VISITED)
            for defect in truth.defects_in(*bounds)[:50]:
                x, y = (defect.x_nm - ox0) * scale, (defect.y_nm - oy0) * scale
                draw.ellipse((x - 2, y - 2, x + 2, y + 2), outline=_DEFECT)
        draw.rectangle(world_box(truth.view_bounds_nm()), outline=_CURRENT)
        _draw_scale_bar(image, overview.fov_nm)
        return image
    # Real instrument: reported positions relative to the overview's.
    ox, oy = overview.stage_x_nm, overview.stage_y_nm

    def box(x_nm: float, y_nm: float, fov_nm: float) -> tuple[float, float, float, float]:
        cx = (x_nm - ox) * scale + PANEL / 2
        cy = (y_nm - oy) * scale + PANEL / 2
        half = max(fov_nm * scale / 2, 1.5)
        return cx - half, cy - half, cx + half, cy + half

    for item in env.history:
        if isinstance(item, Frame):
            draw.rectangle(box(item.stage_x_nm, item.stage_y_nm, item.fov_nm), outline=_VISITED)
    state = env.instrument.state()
    draw.rectangle(box(state.stage_x_nm, state.stage_y_nm, state.fov_nm), outline=_CURRENT)
    _draw_scale_bar(image, overview.fov_nm)
    return image


def _spectrum_panel(env: MicroscopeEnv) -> Image.Image:
    image = Image.new("RGB", (PANEL, PANEL), _BACKGROUND)
    spectrum = env._last_spectrum
    draw = ImageDraw.Draw(image)
    if spectrum is None:
        draw.text((8, 8), "no spectrum yet", fill=(160, 160, 160))
        return image
    energy = np.asarray(spectrum.energy_eV)
    keep = energy >= 50.0  # core-loss region; the zero-loss peak would flatten everything
    bands = 8  # channels summed per plotted point, so counting noise does not hide the edges
    usable = int(keep.sum()) // bands * bands
    energy = energy[keep][:usable].reshape(-1, bands).mean(1)
    counts = np.log1p(
        np.maximum(np.asarray(spectrum.counts)[keep][:usable], 0.0).reshape(-1, bands).sum(1)
    )
    x = (energy - energy[0]) / max(energy[-1] - energy[0], 1e-9) * (PANEL - 16) + 8
    span = max(float(counts.max() - counts.min()), 1e-9)
    y = PANEL - 24 - (counts - counts.min()) / span * (PANEL - 48)
    draw.line(list(zip(x.tolist(), y.tolist(), strict=True)), fill=_TRACE, width=1)
    draw.text((8, 8), f"EELS {energy[0]:.0f}-{energy[-1]:.0f} eV (log)", fill=(200, 200, 200))
    for onset, label in ((99.0, "Si"), (188.0, "B"), (284.0, "C"), (401.0, "N"), (532.0, "O")):
        if energy[0] <= onset <= energy[-1]:
            px = (onset - energy[0]) / (energy[-1] - energy[0]) * (PANEL - 16) + 8
            draw.line([(px, PANEL - 22), (px, PANEL - 16)], fill=(150, 150, 150))
            draw.text((px - 4, PANEL - 14), label, fill=(150, 150, 150))
    return image


def _ronchigram_panel(env: MicroscopeEnv) -> Image.Image:
    ronchigram = env._last_ronchigram
    if ronchigram is None:
        image = Image.new("RGB", (PANEL, PANEL), _BACKGROUND)
        ImageDraw.Draw(image).text((8, 8), "no Ronchigram yet", fill=(160, 160, 160))
        return image
    image = _gray_panel(ronchigram.counts)
    ImageDraw.Draw(image).text(
        (8, 8), f"Ronchigram ±{ronchigram.max_angle_mrad:.0f} mrad", fill=(200, 200, 200)
    )
    return image


def _current_panel(env: MicroscopeEnv) -> Image.Image:
    frame = env._last_frame
    if frame is None:
        return Image.new("RGB", (PANEL, PANEL), _BACKGROUND)
    image = _gray_panel(frame.counts)
    _draw_scale_bar(image, frame.fov_nm)
    return image


def render_panels(env: MicroscopeEnv) -> np.ndarray:
    """The task's panels side by side as a (256, 256 x panels, 3) uint8 array.

    The overview with visited fields (blue), the present field (yellow) and found defects (red);
    the current frame; then the latest Ronchigram for tasks that record Ronchigrams and the
    latest spectrum for tasks that take spectra (two to four panels). The overview and the
    frame carry a scale bar.
    """
    panels = [_overview_panel(env), _current_panel(env)]
    if env.task.uses_ronchigram:
        panels.append(_ronchigram_panel(env))
    if env.task.uses_spectrum:
        panels.append(_spectrum_panel(env))
    canvas = Image.new("RGB", (len(panels) * PANEL, PANEL), _BACKGROUND)
    for index, panel in enumerate(panels):
        canvas.paste(panel, (index * PANEL, 0))
    draw = ImageDraw.Draw(canvas)
    state = env.instrument.state()
    draw.text(
        (PANEL + 6, 4), f"fov {state.fov_nm:.0f} nm  t {state.elapsed_s:.0f} s", fill=_CURRENT
    )
    return np.asarray(canvas, dtype=np.uint8)
