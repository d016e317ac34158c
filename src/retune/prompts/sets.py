"""Positive and negative text prompts for every class (finding).

RE-tune scores class ``c`` as ``tau * (cos(img, pos_c) - cos(img, neg_c))``, where ``pos_c`` / ``neg_c``
are the averaged embeddings of several prompts stating that the finding is present / absent.
This module turns a *prompt-set spec* plus the list of class names into those prompts.

A spec is either a registered set name or a path to a YAML file:

``template``
    Generic sentences built from the class name ("There is {finding}." / "There is no {finding}.").
``manual``
    Clinically phrased descriptions for the 14 NIH ChestX-ray14 findings, the 14 CheXpert observations
    and the synthetic phantom findings (shipped as ``retune/prompts/manual.yaml``). A class not covered
    falls back to the ``template`` prompts, with ``source="template"`` so callers can report it.
a path (``*.yaml`` / ``*.yml``, or any existing file)
    Your own prompts, in this format::

        Cardiomegaly:
          positive: ["Enlarged heart.", "Cardiomegaly."]
          negative: ["Normal heart size."]
        Pleural_Thickening:
          positive:
            - "Pleural thickening."
          negative:
            - "No pleural thickening."

    Every requested class must be present; keys are matched after name normalisation (case, ``_`` and
    spaces do not matter, so ``Pleural Thickening`` matches ``Pleural_Thickening``). Each side must be a
    non-empty list of non-empty strings, and no text may appear on both sides. Extra classes are ignored.
    These prompts get ``source="file:<path>"``.

Class names are normalised with :func:`normalise_class_name` (lowercase, ``_``/``-``/runs of spaces
become one space) so that NIH-style (``No_Finding``) and CheXpert-style (``No Finding``) names match.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from retune.errors import ConfigError, unknown_name
from retune.io_utils import MAX_TEXT_BYTES, read_text_checked

SIDES: tuple[str, str] = ("positive", "negative")
_NO_FINDING = "no finding"


@dataclass(frozen=True)
class ClassPrompts:
    """The prompts for one class: texts stating the finding is present / absent, and which set made them."""

    positive: tuple[str, ...]
    negative: tuple[str, ...]
    source: str


PromptSetFactory = Callable[[list[str]], dict[str, ClassPrompts]]

_PROMPT_SETS: dict[str, PromptSetFactory] = {}


# --------------------------------------------------------------------------------------------- names


def finding_phrase(class_name: str) -> str:
    """A human phrase from a label column name: lowercase, underscores to spaces.

    ``"Pleural_Thickening"`` -> ``"pleural thickening"``; ``"No Finding"`` -> ``"no finding"``.
    """
    return " ".join(class_name.replace("_", " ").lower().split())


def normalise_class_name(class_name: str) -> str:
    """The key used to match class names: lowercase with ``_``, ``-`` and whitespace runs made one space."""
    return " ".join(class_name.replace("_", " ").replace("-", " ").lower().split())


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


# ------------------------------------------------------------------------------------------ registry


def register_prompt_set(name: str) -> Callable[[PromptSetFactory], PromptSetFactory]:
    """Decorator: register ``factory(classes) -> {class: ClassPrompts}`` under ``name``."""

    def decorator(factory: PromptSetFactory) -> PromptSetFactory:
        _PROMPT_SETS[name] = factory
        return factory

    return decorator


def available_prompt_sets() -> list[str]:
    """The registered prompt-set names, sorted."""
    return sorted(_PROMPT_SETS)


def _looks_like_path(spec: str) -> bool:
    return spec.lower().endswith((".yaml", ".yml")) or Path(spec).is_file()


def build_prompts(spec: str, classes: list[str]) -> dict[str, ClassPrompts]:
    """Prompts for every class in ``classes`` (keyed by the class names as given) from a set name or YAML path."""
    classes = list(dict.fromkeys(classes))
    if spec in _PROMPT_SETS:
        factory = _PROMPT_SETS[spec]
    elif _looks_like_path(spec):
        return load_prompt_file(spec, classes)
    else:
        base = unknown_name("prompt set", spec, available_prompt_sets())
        raise ConfigError(f"{base} (or a path to a prompts .yaml/.yml file)")
    prompts = factory(classes)
    missing = [name for name in classes if name not in prompts]
    if missing:
        raise ConfigError(f"prompt set '{spec}' gave no prompts for class(es): {', '.join(missing)}")
    return {name: prompts[name] for name in classes}


def prompt_texts(prompts: dict[str, ClassPrompts]) -> list[str]:
    """Every prompt string once, in first-seen order (positives then negatives per class), for one embedding batch."""
    texts: dict[str, None] = {}
    for class_prompts in prompts.values():
        for text in (*class_prompts.positive, *class_prompts.negative):
            texts.setdefault(text, None)
    return list(texts)


# ------------------------------------------------------------------------------------------ template


def _template_one(class_name: str) -> ClassPrompts:
    if normalise_class_name(class_name) == _NO_FINDING:
        return ClassPrompts(
            positive=(
                "No acute cardiopulmonary abnormality.",
                "Normal chest radiograph.",
                "No acute cardiopulmonary process.",
            ),
            negative=(
                "Abnormal chest radiograph.",
                "There is an acute cardiopulmonary abnormality.",
                "Abnormal findings on the chest radiograph.",
            ),
            source="template",
        )
    finding = finding_phrase(class_name)
    big = _capitalise(finding)
    return ClassPrompts(
        positive=(finding, f"There is {finding}.", f"Findings consistent with {finding}.", f"{big} is present."),
        negative=(f"no {finding}", f"There is no {finding}.", f"No evidence of {finding}.", f"{big} is absent."),
        source="template",
    )


@register_prompt_set("template")
def template_prompts(classes: list[str]) -> dict[str, ClassPrompts]:
    """Generic present/absent sentences built from each class name."""
    return {name: _template_one(name) for name in classes}


# -------------------------------------------------------------------------------------------- manual


@functools.lru_cache(maxsize=1)
def _manual_table() -> dict[str, ClassPrompts]:
    resource = resources.files("retune.prompts") / "manual.yaml"
    raw = yaml.safe_load(resource.read_text(encoding="utf-8"))
    return _parse_table(raw, "manual.yaml", source=lambda _key: "manual")


def manual_prompt_classes() -> list[str]:
    """The normalised class names that the ``manual`` set covers."""
    return sorted(_manual_table())


@register_prompt_set("manual")
def manual_prompts(classes: list[str]) -> dict[str, ClassPrompts]:
    """Clinically phrased prompts; classes not in manual.yaml fall back to the template (``source="template"``)."""
    table = _manual_table()
    return {name: table.get(normalise_class_name(name)) or _template_one(name) for name in classes}


# ---------------------------------------------------------------------------------------- YAML files


def _side(value: Any, where: str, class_name: str, side: str) -> tuple[str, ...]:
    problem = f"{where}: class '{class_name}' {side}: must be a non-empty list of non-empty strings"
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{problem} (got {type(value).__name__}: {value!r:.60})")
    texts: list[str] = []
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise ConfigError(f"{problem} (item {index} is {item!r:.60})")
        texts.append(" ".join(item.split()))
    return tuple(dict.fromkeys(texts))


def _parse_table(raw: Any, where: str, source: Callable[[str], str]) -> dict[str, ClassPrompts]:
    """Validate a ``{class: {positive: [...], negative: [...]}}`` mapping; keys come back normalised."""
    if raw is None:
        raise ConfigError(f"{where}: the file is empty; expected a mapping of class name -> positive/negative lists")
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{where}: expected a mapping of class name -> positive/negative lists, got {type(raw).__name__}"
        )
    table: dict[str, ClassPrompts] = {}
    original: dict[str, str] = {}
    for key, entry in raw.items():
        class_name = str(key)
        norm = normalise_class_name(class_name)
        if norm in original:
            raise ConfigError(
                f"{where}: classes '{original[norm]}' and '{class_name}' are the same after normalisation"
            )
        original[norm] = class_name
        if not isinstance(entry, dict):
            raise ConfigError(
                f"{where}: class '{class_name}': expected a mapping with 'positive' and 'negative' lists, "
                f"got {type(entry).__name__}"
            )
        extra = sorted(str(k) for k in entry if k not in SIDES)
        if extra:
            raise ConfigError(
                f"{where}: class '{class_name}': unknown key(s) {', '.join(extra)}; expected 'positive' and 'negative'"
            )
        for side in SIDES:
            if side not in entry:
                raise ConfigError(f"{where}: class '{class_name}' {side}: missing (a non-empty list of strings)")
        positive = _side(entry["positive"], where, class_name, "positive")
        negative = _side(entry["negative"], where, class_name, "negative")
        both = [text for text in positive if text in negative]
        if both:
            raise ConfigError(f"{where}: class '{class_name}': text on both positive and negative sides: {both[0]!r}")
        table[norm] = ClassPrompts(positive=positive, negative=negative, source=source(class_name))
    return table


def load_prompt_file(path: str | Path, classes: list[str]) -> dict[str, ClassPrompts]:
    """Read a user prompts YAML file (format in the module docstring) and return prompts for ``classes``."""
    where = str(path)
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{where}: prompts file not found")
    text = read_text_checked(file, MAX_TEXT_BYTES, "prompts file")
    try:
        raw = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError) as exc:
        detail = " ".join(str(exc).split())
        raise ConfigError(f"{where}: not valid YAML: {detail}") from exc
    table = _parse_table(raw, where, source=lambda _key: f"file:{where}")
    names = [str(key) for key in raw]
    prompts: dict[str, ClassPrompts] = {}
    for class_name in classes:
        found = table.get(normalise_class_name(class_name))
        if found is None:
            raise ConfigError(f"{where}: no prompts for class '{class_name}' (has: {', '.join(names)})")
        prompts[class_name] = found
    return prompts
