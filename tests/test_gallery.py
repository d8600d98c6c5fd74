"""Smoke test of the first-run command: the gallery from the embedded twin."""

import subprocess
import sys

from PIL import Image


def test_gallery_writes_every_picture(tmp_path):
    out = tmp_path / "gallery"
    completed = subprocess.run(
        [sys.executable, "-m", "scopegym.gallery", "--out", str(out), "--seed", "0"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    names = sorted(path.name for path in out.glob("*.png"))
    assert names == [
        "1_overview.png",
        "2_atomic_focus.png",
        "3_c10.png",
        "4_c12a.png",
        "5_eels_dopant.png",
        "6_damage_before.png",
        "7_damage_after.png",
        "8_ronchigrams.png",
    ]
    for name in names:
        with Image.open(out / name) as image:
            assert image.size[0] > 300 and image.size[1] > 300
            assert len(set(image.convert("L").getdata())) > 16  # a picture, not a blank
    assert "gallery written in" in completed.stdout
