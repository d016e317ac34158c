"""Closed-ended VQA on NIH ChestX-ray14 questions built from its labels: every MILE-style variant, the baselines on the
same test patients, and the issue's targets -> results/vqa.json.

Run from the repository root (about half an hour of one CPU core; run it with `nice -n 10` on a shared machine):

    python results/make_vqa.py [--config configs/vqa-nih.yaml] [--work runs/vqa-nih]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
import yaml

from retune import api
from retune.config import DataConfig, absolute_paths
from retune.errors import ConfigError
from retune.io_utils import write_json_atomic

NAME = "vqa"
COMMAND = "python results/make_vqa.py"
BACKBONE_NOTE = "default (general-domain: ImageNet EfficientNet-Lite0 + MiniLM)"
SCORES = ("accuracy_seen", "paired_accuracy_seen", "accuracy_unseen_phrasing", "accuracy_unseen_finding")
ANSWERERS = {"classifier": "classifier as answerer (RE-tune, validation threshold)", "majority": "majority answer",
             "random": "random answer"}


def machine() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores ({platform.machine()}), {gpu}; shared with other jobs, run under nice -n 10"


def cell(scores: dict, key: str) -> str:
    value, interval = scores.get(key), scores.get(f"{key}_ci")
    if value is None:
        return "n/a"
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else f"{value:.3f}"


def variant_name(variant: dict) -> str:
    method = variant.get("method", "none")
    return "frozen" if method == "none" else f"{method}-{variant.get('tower', 'text')}"


def finished_run(run_dir: Path, config: dict) -> dict | None:
    """The metrics of a finished run made with exactly this config (else None: it is trained again)."""
    from retune.experiments.vqa import VqaExperimentConfig

    if not (run_dir / "metrics.json").is_file() or not (run_dir / "config.json").is_file():
        return None
    saved = json.loads((run_dir / "config.json").read_text()).get("train_config")
    wanted = VqaExperimentConfig.model_validate(config).model_dump(mode="json")
    return json.loads((run_dir / "metrics.json").read_text()) if saved == wanted else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/vqa-nih.yaml")
    parser.add_argument("--work", default="runs/vqa-nih", help="Where the question set and the runs are written.")
    parser.add_argument("--variants", default=None,
                        help="Comma-separated variant names to train now (default: all); finished runs with the same "
                             "config are reused, so several invocations can share the work. The JSON is written "
                             "when every variant is finished.")
    parser.add_argument("--partial", action="store_true",
                        help="Write the JSON now: variants not finished are listed as not run.")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core, as the budget says; other jobs share the machine
    settings = yaml.safe_load(Path(args.config).read_text())
    folder = Path(args.config).resolve().parent  # the config's own paths resolve against its folder, as everywhere
    data = absolute_paths(DataConfig.model_validate(settings["data"]), folder, only_set=True)
    settings["data"] = data.model_dump(mode="json")
    settings["run"]["store"] = os.path.abspath(folder / settings["run"]["store"])
    work = Path(args.work)
    questions = work / "qa.parquet"
    started = time.perf_counter()
    frame = api.vqa_build(settings["data"], questions, settings["questions"])
    print(f"{len(frame)} questions -> {questions}", flush=True)
    runs, skipped, pending = {}, {}, []
    wanted = None if args.variants is None else set(args.variants.split(","))
    for index, variant in enumerate(settings["variants"]):
        name = variant_name(variant)
        config = {**settings["run"], **variant, "questions": str(questions), "classifier": index == 0}
        if variant.get("method", "none") != "none":
            image = variant.get("tower") in ("image", "both") or variant.get("method") == "prompt"
            epochs = settings["image_tower_epochs" if image else "text_tower_epochs"]
            config["optim"] = {**settings["run"]["optim"], "epochs": epochs,
                               "min_epochs": min(settings["run"]["optim"]["min_epochs"], epochs)}
        finished = finished_run(work / name, config)
        if finished is not None:
            runs[name] = finished
            continue
        if wanted is not None and name not in wanted:
            pending.append(name)
            continue
        clock = time.perf_counter()
        try:
            runs[name] = api.vqa_train(config, work / name)
        except ConfigError as error:  # e.g. visual prompts on a convnet image tower
            skipped[name] = str(error)
            print(f"{name}: not applicable ({error})", flush=True)
            continue
        print(f"{name}: {time.perf_counter() - clock:.0f} s, seen accuracy "
              f"{runs[name]['test']['scores']['vqa']['accuracy_seen']}", flush=True)
    if pending and not args.partial:
        print(f"not written: variants {', '.join(pending)} are still to run", file=sys.stderr)
        return
    first = next(iter(runs.values()))
    baselines = first["test"]["scores"]
    variant_rows = [
        [name, f"{m['trainable_parameters']:,} ({m['trainable_percent']:.2f}%)", f"{m['peak_memory_mb']:.0f}",
         f"{m['seconds_per_epoch']:.1f}", str(m["epochs_run"]),
         *(cell(m["test"]["scores"]["vqa"], key) for key in SCORES)]
        for name, m in runs.items()
    ] + [[name, "n/a", "n/a", "n/a", "0", "not applicable", "", "", ""] for name in skipped] + [
        [name, "n/a", "n/a", "n/a", "0", "not run (compute budget)", "", "", ""] for name in pending]
    baseline_rows = [[label, *(cell(baselines[key], score) for score in SCORES)]
                     for key, label in ANSWERERS.items() if key in baselines]
    # chosen on validation (seen questions), never on test; the frozen run only when no tuned variant finished
    best_name = max(runs, key=lambda n: (n != "frozen", runs[n]["training"]["best_val_score"] or 0))
    best = runs[best_name]["test"]["scores"]["vqa"]
    classifier = baselines.get("classifier", {})
    majority = baselines["majority"]
    targets = [
        ["best PEFT variant >= classifier as answerer, seen findings (accuracy)", best_name,
         cell(best, "accuracy_seen"), cell(classifier, "accuracy_seen"),
         str((best["accuracy_seen"] or 0) >= (classifier.get("accuracy_seen") or 1))],
        ["best PEFT variant >= classifier as answerer, seen findings (paired accuracy)", best_name,
         cell(best, "paired_accuracy_seen"), cell(classifier, "paired_accuracy_seen"),
         str((best["paired_accuracy_seen"] or 0) >= (classifier.get("paired_accuracy_seen") or 1))],
        ["unseen phrasings within 0.02 of seen", best_name, cell(best, "accuracy_unseen_phrasing"),
         cell(best, "accuracy_seen"),
         str(abs((best["accuracy_unseen_phrasing"] or 0) - (best["accuracy_seen"] or 0)) <= 0.02)],
        ["unseen findings above the majority baseline", best_name, cell(best, "accuracy_unseen_finding"),
         cell(majority, "accuracy_unseen_finding"),
         str((best["accuracy_unseen_finding"] or 0) > (majority["accuracy_unseen_finding"] or 0))],
    ]
    counts = first["test"]["scores"]["vqa"]["n"]
    built = settings["questions"]
    payload = {
        "name": NAME,
        "command": COMMAND,
        "config": args.config,
        "machine": machine(),
        "backbone": BACKBONE_NOTE,
        "tables": [
            {"id": "variants", "title": "VQA variants (MILE-style): cost and test accuracy, NIH test patients",
             "columns": ["variant", "trainable parameters (% of model)", "peak memory (MB)", "seconds per epoch",
                         "epochs", "accuracy, seen [95% CI]", "paired accuracy, seen", "accuracy, unseen phrasings",
                         "accuracy, unseen findings"],
             "rows": variant_rows,
             "notes": f"Test split: {counts['accuracy_seen']} questions on seen findings and wording, "
                      f"{counts['accuracy_unseen_phrasing']} with held-out phrasings, "
                      f"{counts['accuracy_unseen_finding']} about held-out findings "
                      f"({', '.join(built['held_out_findings'])}); "
                      f"CIs resample patients. Tuned variants ran {settings['text_tower_epochs']} (text tower) or "
                      f"{settings['image_tower_epochs']} (image tower) epochs, LoRA / IA3 with the first blocks left "
                      "as they are (freeze_blocks in the config); peak memory is the whole process's RSS on CPU; "
                      "seconds per epoch are wall-clock on a machine shared with other jobs, so they compare variants "
                      "only roughly. The backbone is general-domain, not medical."},
            {"id": "baselines", "title": "Baselines on the same test questions",
             "columns": ["answerer", "accuracy, seen [95% CI]", "paired accuracy, seen", "accuracy, unseen phrasings",
                         "accuracy, unseen findings"],
             "rows": baseline_rows,
             "notes": "The classifier (retune train on the same training patients, the findings asked in training) "
                      "answers yes above its validation-chosen threshold; it cannot answer held-out findings (n/a). "
                      "Majority: the commonest training answer per question type."},
            {"id": "targets", "title": "The issue's targets, as measured",
             "columns": ["target", "variant", "measured", "compared with", "met"],
             "rows": targets,
             "notes": "Best PEFT variant: the tuned variant with the highest validation accuracy (seen questions), "
                      "chosen before looking at test. Reported as measured, met or not."},
        ],
        "data": {"runs": runs, "not_applicable": skipped, "not_run": pending,
                 "question_counts": {f"{split}/{kind}": int(n) for (split, kind), n in
                                     frame.groupby(["split", "type"]).size().items()},
                 "seconds": round(time.perf_counter() - started, 1)},
    }
    write_json_atomic(Path("results") / f"{NAME}.json", payload)
    print(f"results/{NAME}.json written in {payload['data']['seconds']} s", file=sys.stderr)


if __name__ == "__main__":
    main()
