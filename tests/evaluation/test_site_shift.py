"""The data-site shift report: image sizes and colours of scored images against the training images."""

from __future__ import annotations

from PIL import Image

from retune.data.image_stats import image_summary, shift_report


def write_images(folder, size: int, mode: str, count: int, value: int) -> list[str]:
    folder.mkdir()
    paths = []
    for index in range(count):
        path = folder / f"{index}.png"
        Image.new(mode, (size, size), value if mode == "L" else (value, value, value)).save(path)
        paths.append(str(path))
    return paths


def test_images_of_another_size_and_mode_are_reported_loudly(tmp_path):
    training = image_summary(write_images(tmp_path / "train", 64, "L", 6, 120))
    same = image_summary(write_images(tmp_path / "same", 64, "L", 4, 120))
    other = image_summary(write_images(tmp_path / "other", 160, "RGB", 4, 200))
    assert training["sizes"] == {"64x64": 6} and training["modes"] == {"L": 6} and training["grey_share"] == 1.0

    report, warnings = shift_report(training, other)
    assert report["checked"] and len(report["large_differences"]) == 4  # side, sizes, modes, intensity
    assert warnings[0].startswith("DATA-SITE SHIFT") and "160 px here vs 64 px" in warnings[0]
    assert shift_report(training, same)[1] == []
    assert shift_report(None, other) == ({"checked": False, "scored": other}, [])
