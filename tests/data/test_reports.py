"""Report parsing: free-text section headers, Open-i XML (with DOCTYPE refusal), archive streaming, label sentences."""

from __future__ import annotations

import io
import math
import tarfile
from pathlib import Path

import pandas as pd
import pytest

from retune.data.reports import (
    ParsedReport,
    iter_openi_archive,
    label_sentence,
    parse_openi_xml,
    parse_report_text,
    reports_table,
)
from retune.errors import DataError

MIMIC_STYLE = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with new onset ascites  // eval for infection

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  None.

 FINDINGS:

 There is no focal consolidation, pleural effusion or pneumothorax.  Bilateral
 nodular opacities.

 IMPRESSION:

 No acute cardiopulmonary process.
"""

OPENI_XML = b"""<?xml version="1.0" encoding="utf-8"?>
<eCitation>
  <uId id="CXR7"/>
  <MedlineCitation><Article><Abstract>
    <AbstractText Label="COMPARISON">None.</AbstractText>
    <AbstractText Label="INDICATION">Positive   TB test</AbstractText>
    <AbstractText Label="FINDINGS"/>
    <AbstractText Label="IMPRESSION">Normal chest x-XXXX.</AbstractText>
  </Abstract></Article></MedlineCitation>
  <MeSH>
    <major>Cardiomegaly/mild</major>
    <major>Opacity/lung/base</major>
    <automatic>not a major term</automatic>
  </MeSH>
</eCitation>
"""

DOCTYPE_XML = b"""<?xml version="1.0"?>
<!DOCTYPE eCitation [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>
<eCitation><MeSH><major>&b;</major></MeSH></eCitation>
"""


# ------------------------------------------------------------------------------------------ free text


def test_mimic_style_sections_split_and_other_headers_dropped() -> None:
    report = parse_report_text(MIMIC_STYLE, source="s1.txt")
    assert (
        report.findings
        == "There is no focal consolidation, pleural effusion or pneumothorax. Bilateral nodular opacities."
    )
    assert report.impression == "No acute cardiopulmonary process."
    assert report.indication == "___F with new onset ascites // eval for infection"  # placeholder kept verbatim
    assert report.comparison == "None."
    assert report.source == "s1.txt"
    assert report.mesh == []
    assert report.text == report.findings + " " + report.impression


def test_title_case_headers_without_colon_alone_on_their_line() -> None:
    report = parse_report_text("Findings\nHeart size normal.\nImpression\nNormal. Findings are stable.\n")
    assert report.findings == "Heart size normal."
    # "Findings are stable." is a sentence, not a header: a header without colon must be alone on its line.
    assert report.impression == "Normal. Findings are stable."


def test_lowercase_headers_with_colon_and_synonyms() -> None:
    report = parse_report_text(
        "clinical history: cough\nfinding: clear lungs\nConclusion: no XXXX disease\nComparisons: 2010"
    )
    assert (report.indication, report.findings, report.impression, report.comparison) == (
        "cough",
        "clear lungs",
        "no XXXX disease",
        "2010",
    )


def test_flattened_one_line_report_with_uppercase_inline_headers() -> None:
    report = parse_report_text("HISTORY: cough. FINDINGS: Clear lungs. TECHNIQUE: PA. IMPRESSION: Normal.")
    assert report.indication == "cough."
    assert report.findings == "Clear lungs."
    assert report.impression == "Normal."


def test_missing_sections_are_none_and_text_uses_what_exists() -> None:
    only_impression = parse_report_text("INDICATION: fever\nIMPRESSION: No pneumonia.")
    assert only_impression.findings is None and only_impression.comparison is None
    assert only_impression.text == "No pneumonia."
    unsectioned = parse_report_text("The lungs are clear.")
    assert unsectioned == ParsedReport()
    assert unsectioned.text is None
    assert parse_report_text("FINDINGS:\n   \nIMPRESSION: ok").findings is None


def test_repeated_section_is_joined() -> None:
    report = parse_report_text("FINDINGS: Left effusion.\nTECHNIQUE: AP\nFINDINGS: Right clear.")
    assert report.findings == "Left effusion. Right clear."


# ------------------------------------------------------------------------------------------ Open-i XML


def test_openi_xml_sections_and_major_mesh_terms() -> None:
    report = parse_openi_xml(OPENI_XML)
    assert report.source == "CXR7"  # bytes without a source fall back to the uId
    assert report.findings is None  # empty AbstractText
    assert report.impression == "Normal chest x-XXXX."
    assert report.indication == "Positive TB test"
    assert report.comparison == "None."
    assert report.mesh == ["Cardiomegaly/mild", "Opacity/lung/base"]
    assert report.text == "Normal chest x-XXXX."


def test_openi_xml_from_path_uses_path_as_source(tmp_path: Path) -> None:
    path = tmp_path / "7.xml"
    path.write_bytes(OPENI_XML)
    assert parse_openi_xml(path).source == str(path)
    assert parse_openi_xml(path, source="id7").source == "id7"


def test_doctype_and_entities_are_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "evil.xml"
    path.write_bytes(DOCTYPE_XML)
    with pytest.raises(DataError, match=r"evil\.xml.*DOCTYPE"):
        parse_openi_xml(path)
    external = b'<!DOCTYPE eCitation SYSTEM "http://example.invalid/x.dtd"><eCitation/>'
    with pytest.raises(DataError, match=r"^named\.xml: .*DOCTYPE"):
        parse_openi_xml(external, source="named.xml")


def test_bad_xml_and_wrong_root_and_missing_file_raise_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"broken\.xml: not well-formed"):
        parse_openi_xml(b"<eCitation><oops></eCitation>", source="broken.xml")
    with pytest.raises(DataError, match=r"other\.xml: not an Open-i report"):
        parse_openi_xml(b"<html/>", source="other.xml")
    with pytest.raises(DataError, match=r"absent\.xml: cannot read"):
        parse_openi_xml(tmp_path / "absent.xml")


# ------------------------------------------------------------------------------------------ archives


def _make_archive(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        folder = tarfile.TarInfo("ecgen-radiology")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_archive_streams_reports_and_records_bad_members(tmp_path: Path) -> None:
    archive = _make_archive(
        tmp_path / "r.tgz",
        {
            "ecgen-radiology/1.xml": OPENI_XML,
            "ecgen-radiology/README.txt": b"not a report",
            "ecgen-radiology/2.xml": DOCTYPE_XML,
            "ecgen-radiology/3.XML": OPENI_XML.replace(b"CXR7", b"CXR8"),
        },
    )
    errors: list[str] = []
    reports = list(iter_openi_archive(archive, errors))
    assert [report.source for report in reports] == ["ecgen-radiology/1.xml", "ecgen-radiology/3.XML"]
    assert len(errors) == 1 and "r.tgz" in errors[0] and "ecgen-radiology/2.xml" in errors[0]
    with pytest.warns(RuntimeWarning, match=r"2\.xml"):
        assert len(list(iter_openi_archive(archive))) == 2


def test_unreadable_archive_raises_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"missing\.tgz: report archive not found"):
        list(iter_openi_archive(tmp_path / "missing.tgz"))
    junk = tmp_path / "junk.tgz"
    junk.write_bytes(b"this is not a tar archive at all" * 20)
    with pytest.raises(DataError, match=r"junk\.tgz: cannot read report archive"):
        list(iter_openi_archive(junk))


# ------------------------------------------------------------------------------------------ table


def test_reports_table_columns_and_values() -> None:
    reports = [parse_openi_xml(OPENI_XML), parse_report_text("FINDINGS: Clear.", source="b.txt")]
    table = reports_table(iter(reports))
    assert list(table.columns) == ["source", "findings", "impression", "indication", "comparison", "mesh", "text"]
    assert table["source"].tolist() == ["CXR7", "b.txt"]
    assert table.loc[0, "mesh"] == "Cardiomegaly/mild; Opacity/lung/base"
    assert pd.isna(table.loc[1, "mesh"]) and pd.isna(table.loc[1, "impression"])
    assert table["text"].tolist() == ["Normal chest x-XXXX.", "Clear."]
    empty = reports_table([])
    assert len(empty) == 0 and list(empty.columns) == list(table.columns)


# ------------------------------------------------------------------------------------------ label sentences


def test_label_sentence_positives_then_negatives_in_class_order() -> None:
    labels = {"Cardiomegaly": 0.0, "Effusion": 1.0, "Mass": math.nan, "No_Finding": 0.0, "Pleural_Thickening": 1.0}
    classes = ["Cardiomegaly", "Effusion", "Mass", "No_Finding", "Pleural_Thickening"]
    assert label_sentence(labels, classes) == "Pleural effusion. Pleural thickening. No cardiomegaly."
    # Order follows ``classes``, not the dict.
    assert label_sentence(labels, list(reversed(classes))) == "Pleural thickening. Pleural effusion. No cardiomegaly."


def test_label_sentence_no_finding() -> None:
    assert label_sentence({"No_Finding": 1.0}, ["No_Finding"]) == "No acute cardiopulmonary abnormality."
    assert (
        label_sentence({"No Finding": 1, "Pleural Effusion": 0}, ["No Finding", "Pleural Effusion"])
        == "No acute cardiopulmonary abnormality. No pleural effusion."
    )
    # A contradictory positive finding wins over "No Finding".
    assert label_sentence({"No_Finding": 1.0, "Nodule": 1.0}, ["No_Finding", "Nodule"]) == "Nodule."


def test_label_sentence_all_nan_is_empty_and_bad_input_raises() -> None:
    assert label_sentence({"Edema": math.nan}, ["Edema"]) == ""
    with pytest.raises(DataError, match="'Hernia' has no label"):
        label_sentence({"Edema": 1.0}, ["Edema", "Hernia"])
    with pytest.raises(DataError, match="'Edema' is 0.5"):
        label_sentence({"Edema": 0.5}, ["Edema"])
