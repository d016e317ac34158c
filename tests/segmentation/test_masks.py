"""Mask readers: cxr-seg's masks.csv (blank = not annotated, 127 = ignore), SIIM run-length, a mask folder, and the
one-line errors for bad masks and images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retune.data.masks import IGNORE, decode_siim_rle, encode_siim_rle, read_masks
from retune.data.phantoms import write_mask_phantoms
from retune.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    return write_mask_phantoms(tmp_path_factory.mktemp("phantoms"), n=8, size=32)


def _write(path: Path, array: np.ndarray, mode: str | None = None) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)
    return str(path)


def test_masks_csv_keeps_not_annotated_apart_from_empty_and_maps_127_to_ignore(phantoms):
    table = read_masks(phantoms)
    assert table.structures == ["lungs", "nodule"]
    annotated = table.annotated("nodule")
    assert annotated.tolist() == [index % 4 != 3 for index in range(8)]
    assert table.load_mask(3, "nodule") is None  # blank cell: not annotated
    empty = table.load_mask(1, "nodule")  # annotated, absent
    assert empty.shape == (32, 32) and not (empty == 1).any()
    lungs = table.load_mask(0, "lungs")
    assert (lungs == IGNORE).sum() == 16 and (lungs == 1).sum() > 100
    assert set(np.unique(table.load_mask(1, "lungs")).tolist()) == {0, 1}


def test_unknown_structure_names_the_known_ones(phantoms):
    with pytest.raises(ConfigError, match="unknown structure 'heart'.*lungs, nodule"):
        read_masks(phantoms).only(["heart"])


def _one_row_csv(tmp_path: Path, mask_cell: str, image: np.ndarray | None = None) -> Path:
    _write(tmp_path / "image.png", np.zeros((16, 16), np.uint8) if image is None else image)
    csv = tmp_path / "masks.csv"
    csv.write_text(f"path,patient_id,mask_lungs\nimage.png,p1,{mask_cell}\n")
    return csv


@pytest.mark.parametrize(
    ("mask", "mode", "message"),
    [
        (np.zeros((8, 16), np.uint8), None, r"masks.csv row 2, column 'mask_lungs': mask .* is 16 x 8, its image"),
        (np.zeros((16, 16, 3), np.uint8), None, "row 2.*is RGB; expected one 8-bit channel"),
    ],
)
def test_bad_mask_size_or_colour_is_one_line_naming_file_and_row(tmp_path, mask, mode, message):
    _write(tmp_path / "m.png", mask, mode)
    with pytest.raises(DataError, match=message) as error:
        table = read_masks(_one_row_csv(tmp_path, "m.png"))
        table.load_mask(0, "lungs")
    assert "\n" not in str(error.value)


def test_non_binary_values_are_refused_when_decoded(tmp_path):
    values = np.zeros((16, 16), np.uint8)
    values[0, :4] = [0, 255, 127, 40]
    _write(tmp_path / "m.png", values)
    table = read_masks(_one_row_csv(tmp_path, "m.png"))
    with pytest.raises(DataError, match=r"masks.csv row 2, structure 'lungs': mask .* has values \[40\]"):
        table.load_mask(0, "lungs")


def test_missing_mask_absurd_image_and_layout_errors(tmp_path):
    with pytest.raises(DataError, match=r"row 2, column 'mask_lungs': mask .*absent.png does not exist"):
        read_masks(_one_row_csv(tmp_path, "absent.png"))
    with pytest.raises(DataError, match="row 2: .* 20000 x 1 pixels is more elongated"):
        read_masks(_one_row_csv(tmp_path, "", image=np.zeros((1, 20000), np.uint8)))
    (tmp_path / "plain.csv").write_text("path,patient_id,lungs\nimage.png,p1,1\n")
    with pytest.raises(DataError, match="unknown mask layout"):
        read_masks(tmp_path / "plain.csv")
    with pytest.raises(DataError, match="no mask_\\* column"):
        read_masks(tmp_path / "plain.csv", format="masks_csv")


def test_a_mask_that_is_a_fifo_or_a_device_is_refused_in_one_line_without_blocking(tmp_path):
    import os

    os.mkfifo(tmp_path / "fifo.png")
    with pytest.raises(DataError, match=r"row 2, column 'mask_lungs': mask .*fifo.png: not a regular file"):
        read_masks(_one_row_csv(tmp_path, "fifo.png"))
    _write(tmp_path / "m.png", np.zeros((16, 16), np.uint8))
    table = read_masks(_one_row_csv(tmp_path, "m.png"))
    (tmp_path / "m.png").unlink()
    (tmp_path / "m.png").symlink_to("/dev/zero")  # swapped after reading the table: decoding checks again
    with pytest.raises(DataError, match=r"structure 'lungs': mask .*m.png: not a regular file"):
        table.load_mask(0, "lungs")


def test_siim_rle_matches_a_hand_decoded_mask_and_unites_instances(tmp_path):
    # 4 wide x 3 high, column-major: pixel index = column * 3 + row
    assert decode_siim_rle("1 2", (4, 3), "x").tolist() == [[0, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]]
    mask = np.zeros((5, 7), np.int8)
    mask[1:4, 2] = 1
    mask[0, 5:7] = 1
    assert (decode_siim_rle(encode_siim_rle(mask), (7, 5), "x") == mask).all()
    assert encode_siim_rle(np.zeros((3, 3))) == "-1"
    _write(tmp_path / "a.png", np.zeros((3, 4), np.uint8))
    _write(tmp_path / "b.png", np.zeros((3, 4), np.uint8))
    (tmp_path / "train-rle.csv").write_text("ImageId, EncodedPixels\na,1 1\na,3 1\nb,-1\n")
    table = read_masks(tmp_path / "train-rle.csv")
    assert table.structures == ["pneumothorax"]
    # each instance counts from 0: pixels 1 and 3
    assert table.load_mask(0, "pneumothorax").T.reshape(-1).tolist()[:6] == [0, 1, 0, 1, 0, 0]
    assert not table.load_mask(1, "pneumothorax").any()
    (tmp_path / "bad-rle.csv").write_text("ImageId,EncodedPixels\na,1 2 3\n")
    with pytest.raises(DataError, match="bad-rle.csv row 2, column 'EncodedPixels'"):
        read_masks(tmp_path / "bad-rle.csv")


def test_mask_folder_pairs_masks_with_images_by_name(tmp_path):
    _write(tmp_path / "images" / "x1.jpg", np.zeros((8, 8, 3), np.uint8))
    mask = np.zeros((8, 8), np.uint8)
    mask[2:4, 2:4] = 255
    _write(tmp_path / "heart" / "x1.png", mask)
    table = read_masks(tmp_path / "heart", image_root=tmp_path / "images")
    assert table.structures == ["heart"] and table.load_mask(0, "heart").sum() == 4
    _write(tmp_path / "images" / "x2.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError, match=r"row 2, column 'heart/<image name>.png': mask .*x2.png does not exist"):
        read_masks(tmp_path / "heart", image_root=tmp_path / "images")
