"""Positive / negative text prompts per class: the ``template`` and ``manual`` sets, user YAML files, a registry."""

from retune.prompts.sets import (
    ClassPrompts,
    PromptSetFactory,
    available_prompt_sets,
    build_prompts,
    finding_phrase,
    load_prompt_file,
    manual_prompt_classes,
    normalise_class_name,
    prompt_texts,
    register_prompt_set,
    template_prompts,
)

__all__ = [
    "ClassPrompts",
    "PromptSetFactory",
    "available_prompt_sets",
    "build_prompts",
    "finding_phrase",
    "load_prompt_file",
    "manual_prompt_classes",
    "normalise_class_name",
    "prompt_texts",
    "register_prompt_set",
    "template_prompts",
]
