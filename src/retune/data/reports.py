"""Radiology report parsing: sectioned free text (MIMIC-CXR style), Open-i XML, and label-built sentences.

Contrastive image-text pre-training needs one text per image. Reports give findings and impression
(:attr:`ParsedReport.text`); images without a report (NIH ChestX-ray14) get a short sentence built from
their labels by :func:`label_sentence`. De-identification placeholders ("XXXX", "___") are kept verbatim.
"""

from __future__ import annotations

import math
import os
import re
import tarfile
import warnings
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from retune.errors import DataError
from retune.prompts import finding_phrase, normalise_class_name

__all__ = [
    "ParsedReport",
    "iter_openi_archive",
    "label_sentence",
    "parse_openi_xml",
    "parse_report_text",
    "reports_table",
]

SECTIONS: tuple[str, ...] = ("findings", "impression", "indication", "comparison")
TABLE_COLUMNS: tuple[str, ...] = ("source", *SECTIONS, "mesh", "text")

# Header name -> section it starts; ``None`` marks a known header whose text is not kept (it still ends
# the section before it, so e.g. TECHNIQUE text does not leak into INDICATION).
_HEADERS: dict[str, str | None] = {
    "FINDINGS": "findings",
    "FINDING": "findings",
    "IMPRESSION": "impression",
    "IMPRESSIONS": "impression",
    "CONCLUSION": "impression",
    "CONCLUSIONS": "impression",
    "INDICATION": "indication",
    "INDICATIONS": "indication",
    "HISTORY": "indication",
    "CLINICAL HISTORY": "indication",
    "CLINICAL INDICATION": "indication",
    "CLINICAL INFORMATION": "indication",
    "REASON FOR EXAM": "indication",
    "REASON FOR EXAMINATION": "indication",
    "REASON FOR STUDY": "indication",
    "COMPARISON": "comparison",
    "COMPARISONS": "comparison",
    "TECHNIQUE": None,
    "EXAMINATION": None,
    "EXAM": None,
    "PROCEDURE": None,
    "FINAL REPORT": None,
    "WET READ": None,
    "NOTIFICATION": None,
    "RECOMMENDATION": None,
    "RECOMMENDATIONS": None,
    "ADDENDUM": None,
}
_NAMES = "|".join(
    name.replace(" ", r"[ \t]+") for name in sorted(_HEADERS, key=len, reverse=True)
)
# A header is (a) at line start in any case, followed by a colon or alone on its line, or (b) an
# upper-case header with a colon inside a line, as in reports flattened to one line.
_HEADER_RE = re.compile(
    rf"(?m)^[ \t]*(?i:(?P<line>{_NAMES}))[ \t]*(?::|$)|(?<=\s)(?P<inline>{_NAMES}):"
)

_OPENI_SECTIONS = {
    "FINDINGS": "findings",
    "IMPRESSION": "impression",
    "INDICATION": "indication",
    "COMPARISON": "comparison",
}
_MAX_MEMBER_BYTES = 10_000_000  # an Open-i report is a few kB; anything this large is not one

_NO_FINDING_SENTENCE = "No acute cardiopulmonary abnormality."
# Label names whose plain phrase reads badly in a report sentence.
_PHRASES = {"effusion": "pleural effusion", "pleural other": "other pleural abnormality"}


@dataclass
class ParsedReport:
    """One report's sections (whitespace-normalised, ``None`` when absent), MeSH major terms and origin."""

    findings: str | None = None
    impression: str | None = None
    indication: str | None = None
    comparison: str | None = None
    mesh: list[str] = field(default_factory=list)
    source: str = ""

    @property
    def text(self) -> str | None:
        """Findings then impression, the text paired with the image in contrastive training; ``None`` if both
        absent."""
        parts = [part for part in (self.findings, self.impression) if part]
        return " ".join(parts) if parts else None


def _normalise(text: str | None) -> str | None:
    """Collapse whitespace runs to one space; ``None`` for empty text."""
    joined = " ".join((text or "").split())
    return joined or None


def parse_report_text(text: str, source: str = "") -> ParsedReport:
    """Split a free-text report at its section headers (FINDINGS:, Impression, HISTORY: ...).

    Text before the first header and under headers not kept (TECHNIQUE, EXAMINATION ...) is dropped;
    a section given twice is joined. A report without headers yields all sections ``None``.
    """
    chunks: dict[str, list[str]] = {}
    matches = list(_HEADER_RE.finditer(text))
    for match, following in zip(matches, [*matches[1:], None]):
        name = " ".join((match.group("line") or match.group("inline")).upper().split())
        section = _HEADERS[name]
        end = following.start() if following else len(text)
        if section is not None:
            chunks.setdefault(section, []).append(text[match.end() : end])
    return ParsedReport(**{name: _normalise(" ".join(chunks.get(name, []))) for name in SECTIONS}, source=source)


class _DoctypeForbidden(Exception):
    """Raised from inside the XML parser when a DOCTYPE (and so any ENTITY declaration) is met."""


class _SafeTreeBuilder(ET.TreeBuilder):
    """A tree builder that refuses DOCTYPE declarations, the carrier of entity-expansion and external-entity
    attacks."""

    def doctype(self, name: str, pubid: str | None, system: str | None) -> None:
        raise _DoctypeForbidden(name)


def _parse_xml(data: bytes, source: str) -> ET.Element:
    """Parse untrusted XML bytes, rejecting DOCTYPE/ENTITY declarations with a DataError naming ``source``."""
    parser = ET.XMLParser(target=_SafeTreeBuilder())
    try:
        parser.feed(data)
        return parser.close()
    except _DoctypeForbidden:
        raise DataError(f"{source}: XML has a DOCTYPE/ENTITY declaration, which is refused for safety") from None
    except ET.ParseError as exc:
        raise DataError(f"{source}: not well-formed XML ({exc})") from None


def parse_openi_xml(xml: bytes | str | os.PathLike[str], source: str | None = None) -> ParsedReport:
    """Parse one Open-i / Indiana University report (``eCitation`` XML) given as bytes or a file path.

    ``source`` defaults to the path, or for bytes to the report's ``uId`` (e.g. ``CXR1``).
    """
    if isinstance(xml, bytes):
        data, name = xml, source or "<xml bytes>"
    else:
        name = source or str(xml)
        try:
            data = Path(xml).read_bytes()
        except OSError as exc:
            raise DataError(f"{name}: cannot read report ({exc.strerror or exc})") from None
    root = _parse_xml(data, name)
    if root.tag != "eCitation":
        raise DataError(f"{name}: not an Open-i report (root element <{root.tag}>, expected <eCitation>)")
    if source is None and isinstance(xml, bytes):
        uid = root.find("uId")
        name = uid.get("id", "") if uid is not None else ""
    sections = {
        _OPENI_SECTIONS[label]: _normalise("".join(node.itertext()))
        for node in root.iter("AbstractText")
        if (label := (node.get("Label") or "").upper()) in _OPENI_SECTIONS
    }
    mesh = [term for node in root.findall("MeSH/major") if (term := _normalise("".join(node.itertext())))]
    return ParsedReport(**sections, mesh=mesh, source=name)


def iter_openi_archive(tgz_path: str | os.PathLike[str], errors: list[str] | None = None) -> Iterator[ParsedReport]:
    """Stream the reports of an Open-i ``.tgz`` in archive order, reading each XML member in memory.

    Non-XML members are skipped. A member that fails to parse yields nothing: its message is appended
    to ``errors`` when given, else issued as a ``RuntimeWarning``. An unreadable archive raises DataError.
    """
    archive = str(tgz_path)
    try:
        with tarfile.open(archive, "r|*") as tar:
            for member in tar:
                if not member.isfile() or not member.name.lower().endswith(".xml"):
                    continue
                try:
                    if member.size > _MAX_MEMBER_BYTES:
                        raise DataError(f"{member.name}: {member.size} bytes is too large for a report")
                    data = tar.extractfile(member).read()  # a file member always has a reader
                    yield parse_openi_xml(data, source=member.name)
                except DataError as exc:
                    message = f"{archive}: {exc}"
                    if errors is None:
                        warnings.warn(message, RuntimeWarning, stacklevel=2)
                    else:
                        errors.append(message)
    except FileNotFoundError:
        raise DataError(f"{archive}: report archive not found") from None
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DataError(f"{archive}: cannot read report archive ({exc})") from None


def reports_table(parsed: Iterable[ParsedReport]) -> pd.DataFrame:
    """One row per report: source, the four sections, MeSH terms joined with "; " and the training text.

    Absent sections, an empty MeSH list and an absent text are missing values (``isna()``).
    """
    rows = [
        {
            "source": report.source,
            **{name: getattr(report, name) for name in SECTIONS},
            "mesh": "; ".join(report.mesh) or None,
            "text": report.text,
        }
        for report in parsed
    ]
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))


def _phrase(class_name: str) -> str:
    """The phrase for a label in a sentence: ``finding_phrase`` with a few names made report-like."""
    phrase = finding_phrase(class_name)
    return _PHRASES.get(phrase, phrase)


def label_sentence(labels: dict[str, float], classes: list[str]) -> str:
    """A short report-like text from 1/0/NaN labels, for images without a report.

    Positives come first ("Pleural effusion."), then negatives ("No cardiomegaly."), each in ``classes``
    order; NaN labels are omitted. A positive "No Finding" gives "No acute cardiopulmonary abnormality."
    unless another class is positive. Returns "" when every label is NaN.
    """
    positives: list[str] = []
    negatives: list[str] = []
    no_finding = False
    for class_name in classes:
        if class_name not in labels:
            raise DataError(f"label_sentence: class '{class_name}' has no label; labels given: {', '.join(labels)}")
        value = float(labels[class_name])
        if math.isnan(value):
            continue
        if value not in (0.0, 1.0):
            raise DataError(f"label_sentence: label of '{class_name}' is {value:g}; expected 1, 0 or NaN")
        if normalise_class_name(class_name) == "no finding":
            no_finding = no_finding or value == 1.0
            continue
        phrase = _phrase(class_name)
        if value == 1.0:
            positives.append(phrase[:1].upper() + phrase[1:] + ".")
        else:
            negatives.append(f"No {phrase}.")
    if no_finding and not positives:
        positives.append(_NO_FINDING_SENTENCE)
    return " ".join(positives + negatives)
