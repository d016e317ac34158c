"""Property-based tests (hypothesis) of the CSV readers and the label parser, against their documented contract:
labels are 1, 0, -1 or blank (also 1.0, 0.0, -1.0, with spaces around); -1 follows the uncertainty policy and
blank is NaN (masked); any other value, and any path that escapes the image root, is one DataError naming
the file, the spreadsheet row (the header is row 1) and the column."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retune.data.readers import NIH_FINDINGS, UNCERTAINTY_POLICIES, read_csv_table, read_nih
from retune.errors import DataError

VALUE_OF = {"1": 1.0, "1.0": 1.0, "0": 0.0, "0.0": 0.0, "-1": -1.0, "-1.0": -1.0, "": np.nan}
CLASSES = ["Mass", "Nodule", "Effusion"]
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

tokens = st.sampled_from(sorted(VALUE_OF))
padding = st.sampled_from(["", " ", "  "])
padded_tokens = st.tuples(padding, tokens, padding).map("".join)
names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=8)
# Printable text that is not a label once stripped (no control characters, which no CSV writer round-trips).
not_labels = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=6).filter(
    lambda text: text.strip() not in VALUE_OF
)


@contextmanager
def written(frame: pd.DataFrame) -> Iterator[Path]:
    """``frame`` as ``labels.csv`` in a temporary folder (removed afterwards; hypothesis calls a test many times)."""
    with tempfile.TemporaryDirectory(prefix="retune-prop-") as folder:
        frame.to_csv(Path(folder) / "labels.csv", index=False)
        yield Path(folder) / "labels.csv"


@st.composite
def label_tables(draw) -> pd.DataFrame:
    n_rows = draw(st.integers(1, 12))
    frame = pd.DataFrame(
        {
            "path": [f"{draw(names)}/{i}.png" for i in range(n_rows)],
            "patient_id": [draw(names) for _ in range(n_rows)],
        }
    )
    for name in CLASSES:
        frame[name] = draw(st.lists(padded_tokens, min_size=n_rows, max_size=n_rows))
    return frame


@PROPERTY
@given(label_tables(), st.sampled_from(sorted(UNCERTAINTY_POLICIES)))
def test_valid_labels_map_to_their_documented_values(frame, policy):
    with written(frame) as csv:
        table = read_csv_table(csv, classes=CLASSES, uncertainty=policy)
    assert len(table) == len(frame) and table.classes == CLASSES
    for name in CLASSES:
        expected = np.array([VALUE_OF[value.strip()] for value in frame[name]])
        expected[expected == -1.0] = UNCERTAINTY_POLICIES[policy]
        np.testing.assert_array_equal(table.labels([name])[:, 0], expected.astype(np.float32))
    root = table.image_root
    assert table.paths == [str(root / path) for path in frame["path"]]


@PROPERTY
@given(label_tables(), st.data(), not_labels)
def test_any_other_label_value_names_file_row_and_column(frame, data, bad):
    row = data.draw(st.integers(0, len(frame) - 1))
    column = data.draw(st.sampled_from(CLASSES))
    frame.loc[row, column] = bad
    with written(frame) as csv, pytest.raises(DataError) as caught:
        read_csv_table(csv, classes=CLASSES)
    message = str(caught.value)
    assert message.startswith("labels.csv row ") and f", column '{column}': " in message and "\n" not in message
    assert message.startswith(f"labels.csv row {row + 2}, ")  # the header is row 1


@PROPERTY
@given(label_tables(), st.data(), st.integers(1, 4))
def test_paths_that_climb_out_of_the_root_are_refused_with_their_row(frame, data, depth):
    row = data.draw(st.integers(0, len(frame) - 1))
    frame.loc[row, "path"] = "../" * depth + "outside.png"
    with (
        written(frame) as csv,
        pytest.raises(DataError, match=rf"^labels.csv row {row + 2}, column 'path': .* escapes the image root"),
    ):
        read_csv_table(csv, classes=CLASSES, image_root=csv.parent / "images")


@PROPERTY
@given(st.lists(st.sets(st.sampled_from(NIH_FINDINGS), max_size=4), min_size=1, max_size=10))
def test_nih_finding_labels_become_membership(findings):
    frame = pd.DataFrame(
        {
            "Image Index": [f"{i:08d}_000.png" for i in range(len(findings))],
            "Finding Labels": ["|".join(sorted(found)) or "No Finding" for found in findings],
            "Patient ID": [str(i) for i in range(len(findings))],
        }
    )
    with written(frame) as csv:
        table = read_nih(csv)
    for column, name in enumerate(table.classes):
        assert table.labels()[:, column].tolist() == [float(name in found) for found in findings]
