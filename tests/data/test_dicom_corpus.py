"""Every DICOM file that pydicom ships (files written by other people) goes through ``retune embed``:
each one is embedded or recorded with a reason, and none crashes the run."""

from __future__ import annotations

import warnings

import pandas as pd
import pytest
from typer.testing import CliRunner

from retune.backbones.registry import create_backbone
from retune.cli import app
from retune.data.images import file_content_hash
from retune.errors import DataError
from retune.store import EmbeddingStore

pydicom_data = pytest.importorskip("pydicom.data")


def test_every_pydicom_test_file_is_embedded_or_recorded(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        files = sorted(set(pydicom_data.get_testdata_files()))
    assert len(files) > 100  # pydicom ships well over a hundred test files
    csv = tmp_path / "pydicom.csv"
    pd.DataFrame({"path": files, "patient_id": [f"p{i}" for i in range(len(files))]}).to_csv(csv, index=False)
    store = tmp_path / "store"
    result = CliRunner().invoke(
        app,
        ["embed", str(csv), "--store", str(store), "--allow-outside-root", "--batch-size", "8"],
        env={"COLUMNS": "1000"},
    )
    assert result.exit_code in (0, 1) and isinstance(result.exception, (SystemExit, type(None))), result.output
    assert "Traceback" not in result.output
    errors = (
        pd.concat([pd.read_csv(p) for p in (store / "errors").glob("*.csv")])
        if (store / "errors").exists()
        else pd.DataFrame(columns=["path"])
    )
    recorded = set(errors["path"])
    assert errors["reason"].notna().all() and (errors["reason"].str.len() > 0).all()
    assert (
        not errors["reason"].str.contains("plugins are missing dependencies:$", regex=True).any()
    )  # whole reasons, not cut
    fingerprint = create_backbone("default").fingerprint
    stored = EmbeddingStore(store, create=False).keys("images", fingerprint)
    embedded = set()
    for path in files:
        try:
            if file_content_hash(path) in stored:
                embedded.add(path)
        except DataError:
            pass
    assert embedded | recorded == set(files)
    assert len(embedded) >= 80  # with the JPEG / JPEG-LS / JPEG 2000 / RLE decoders of the dicom extra
