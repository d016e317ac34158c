"""Pre-training objectives of the Adaptor on NIH (cached tokens, towers frozen): writes results/objectives.json.

Runs ``retune adaptor bench`` (configs/objectives-nih.yaml) through the Python API on one CPU thread, then derives
the masked-vs-CLIP speed check and the verdicts on the four findings of arXiv 2406.07450 from the measured numbers
by the rules written below. Usage (from the repo root): ``python results/make_objectives.py [--store S]``; the store
caches NIH's image tokens (embed them once, outside the repo).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import torch

CONFIG = "configs/objectives-nih.yaml"
OUT_JSON = Path("results/objectives.json")
FREEZE_JSON = Path("results/nih_peft.json")  # the freeze-k sweep of results/make_nih_peft.py
BACKBONE_NOTE = "default (general-domain: ImageNet EfficientNet-Lite0 + MiniLM)"
SPEED_TARGET, R10_TOLERANCE = 1.6, 0.02


def machine() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores ({platform.machine()}), {gpu}; run on 1 torch thread"


def mean(summary: dict, mix: str, key: str) -> float | None:
    return summary[mix].get(key, {}).get("mean")


def sd(summary: dict, mix: str, key: str) -> float:
    return summary[mix].get(key, {}).get("std") or 0.0


def compare(summary: dict, mix: str, base: str, key: str) -> dict:
    """Difference of seed means (mix - base) and the margin it is judged against: twice the larger seed sd."""
    difference = mean(summary, mix, key) - mean(summary, base, key)
    return {"metric": key, "mix": mix, "baseline": base, "difference": round(difference, 4),
            "margin": round(2 * max(sd(summary, mix, key), sd(summary, base, key)), 4)}


def cpu_epoch_seconds(config, seeds: list[int], epochs: int = 2) -> dict[str, list[float]]:
    """CPU seconds per epoch (median of ``epochs``) of clip and masked-50 trained in turn with each seed: on a shared
    machine wall-clock epochs measure the neighbours as much as the objective; this process's CPU time does not."""
    from retune.backbones.registry import create_backbone
    from retune.experiments.adaptor_bench import BenchData, train_mix

    probe = config.model_copy(update={
        "mixes": {name: config.mixes[name] for name in ("clip", "masked-50")},
        "optim": config.optim.model_copy(update={"epochs": epochs, "min_epochs": epochs}),
        "pairs": config.pairs.model_copy(update={"text_only": None}),
    })
    data = BenchData(probe, create_backbone(probe.backbone), False, training_only=True)
    cpu: dict[str, list[float]] = {name: [] for name in probe.mixes}
    for seed in seeds:
        for name in probe.mixes:
            cpu[name].append(train_mix(data, name, seed)[1]["cpu_seconds_per_epoch"])
    return cpu


def speed_check(summary: dict, cpu: dict[str, list[float]]) -> dict:
    clip_cpu, masked_cpu = (sum(cpu[name]) / len(cpu[name]) for name in ("clip", "masked-50"))
    wall = mean(summary, "clip", "seconds_per_epoch") / mean(summary, "masked-50", "seconds_per_epoch")
    r10 = {direction: mean(summary, "masked-50", f"{direction}.R@10") - mean(summary, "clip", f"{direction}.R@10")
           for direction in ("image_to_text", "text_to_image")}
    speedup = clip_cpu / masked_cpu
    return {"clip_cpu_seconds_per_epoch": cpu["clip"], "masked_cpu_seconds_per_epoch": cpu["masked-50"],
            "cpu_speedup": speedup, "wall_speedup_in_bench": wall, "r10_difference": r10,
            "speed_target_met": speedup >= SPEED_TARGET,
            "r10_target_met": all(v >= -R10_TOLERANCE for v in r10.values())}


def spread(values: list[float]) -> str:
    mean_value = sum(values) / len(values)
    sd_value = (sum((v - mean_value) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
    return f"{mean_value:.2f} ± {sd_value:.2f}"


def freezing_finding(freeze: dict | None) -> dict:
    """Finding 1 from the freeze-k sweep: partial freezing (0 < k < every block) against tuning every block."""
    finding = {"finding": "Partially freezing early vision layers helps",
               "rule": "reproduced if freezing the first k blocks (0 < k < all) beats tuning every block (k = 0) on "
                       "NIH mean test AUROC under the RE-tune head by more than twice the larger seed sd (same epochs "
                       "and learning rate; results/make_nih_peft.py)"}
    if freeze is None:
        return {**finding, "verdict": "not run", "numbers": []}
    runs, ks = freeze["runs"], freeze["freeze_blocks"]
    full = runs["0"]
    numbers = [{"metric": "mean_auroc", "mix": f"k={k}", "baseline": "k=0",
                "difference": round(runs[str(k)]["mean_auroc"] - full["mean_auroc"], 4),
                "margin": round(2 * max(runs[str(k)]["sd"], full["sd"]), 4)} for k in ks if 0 < k < freeze["n_blocks"]]
    helps = [n for n in numbers if n["difference"] > n["margin"]]
    return {**finding, "verdict": "reproduced" if helps else "not reproduced", "numbers": numbers}


def masked_vqa_finding(summary: dict) -> dict:
    """Finding 4: masked contrastive pre-training against every other mix, on VQA accuracy."""
    from retune.experiments.adaptor_bench import BASELINE_ROW

    finding = {"finding": "Masked contrastive learning gives the best VQA",
               "rule": "reproduced if masked-50 has the highest seed-mean VQA accuracy of all mixes and beats clip by "
                       "more than twice the larger seed sd (the adaptor as the answerer's fusion module)"}
    if mean(summary, "masked-50", "vqa_accuracy") is None:
        return {**finding, "verdict": "not run", "numbers": []}
    mixes = [name for name in summary if name not in ("masked-50", BASELINE_ROW)
             and mean(summary, name, "vqa_accuracy") is not None]
    numbers = [compare(summary, "masked-50", name, "vqa_accuracy") for name in mixes]
    best = all(n["difference"] > 0 for n in numbers)
    beats_clip = any(n["baseline"] == "clip" and n["difference"] > n["margin"] for n in numbers)
    return {**finding, "verdict": "reproduced" if best and beats_clip else "not reproduced", "numbers": numbers}


def findings(summary: dict, freeze: dict | None) -> list[dict]:
    """The four findings, each judged by a rule fixed before the numbers were seen (see each 'rule')."""
    multimodal = ["image_to_text.R@10", "text_to_image.R@10", "zero_shot_auroc"]
    unimodal = [compare(summary, "clip+unimodal", "clip", key) for key in multimodal]
    helps = [c for c in unimodal if c["difference"] > c["margin"]]
    caption = [compare(summary, "clip+caption", "clip", key)
               for key in ("probe@1.0", "probe@0.1", "image_to_text.R@1", "text_to_image.R@1")]
    caption_helps = [c for c in caption if c["difference"] > c["margin"]]
    caption_hurts = [c for c in caption if c["difference"] < -c["margin"]]
    return [
        freezing_finding(freeze),
        {"finding": "Unimodal objectives do not help multimodal tasks",
         "verdict": "reproduced (no gain beyond the margin)" if not helps else "not reproduced",
         "rule": "reproduced unless clip+unimodal beats clip on a multimodal task (R@10 either way, zero-shot AUROC) "
                 "by more than twice the larger seed sd",
         "numbers": unimodal},
        {"finding": "Captioning helps fine-grained learning",
         "verdict": "reproduced" if caption_helps and not caption_hurts else "not reproduced",
         "rule": "reproduced if clip+caption beats clip on a fine-grained task (linear probe AUROC at 100% / 10% of "
                 "labels, R@1 either way) by more than twice the larger seed sd and loses none by that much",
         "numbers": caption},
        masked_vqa_finding(summary),
    ]


def bench_config(out: Path):
    """The config the bench in ``out`` was run with (``bench_config.json``)."""
    from retune.objectives import ObjectivesBenchConfig

    return ObjectivesBenchConfig.model_validate(json.loads((out / "bench_config.json").read_text()))


def resummarised(bench: dict, config) -> dict:
    """``bench`` with its summary and table rebuilt from its runs and baselines by the current code."""
    from retune.experiments.adaptor_bench import bench_table, summarise

    summary = summarise(bench["runs"], bench["frozen_probes"], config.label_fractions, bench.get("baselines", []))
    columns, rows = bench_table(summary, config.label_fractions)
    return {**bench, "summary": summary, "table": {"columns": columns, "rows": rows}}


def retrain(config, bench: dict, mixes: list[str], out: Path) -> dict:
    """``bench`` with the runs of ``mixes`` made again by the current code (same split, seeds and evaluation); the
    summary and table rebuilt; which mixes were redone is recorded."""
    from retune.api import adaptor_bench

    again = adaptor_bench(config.model_copy(update={"mixes": {name: config.mixes[name] for name in mixes}}),
                          out / "retrain", show_progress=True)
    runs = {name: again["runs"].get(name, old) for name, old in bench["runs"].items()}
    return resummarised({**bench, "runs": runs, "retrained": sorted({*bench.get("retrained", []), *mixes})}, config)


def repo_relative(facts: dict) -> dict:
    """Bench data facts with the paths of files beside the repository shown relative to it (../shared/...), as a
    user's checkout has them, not this machine's absolute paths."""
    root = Path.cwd().resolve()

    def shown(value):
        if isinstance(value, dict):
            return {key: shown(item) for key, item in value.items()}
        if isinstance(value, str) and value.startswith(str(root.parent) + os.sep):
            return os.path.relpath(value, root)
        return value

    return shown(facts)


def task_note(bench: dict) -> str:
    """What the VQA and Dice columns measure (or why they are empty)."""
    data, parts = bench["data"], []
    vqa, seg = data.get("vqa"), data.get("segmentation")
    if vqa:
        parts.append(
            f"VQA: accuracy on {vqa['n_questions']['test']} closed questions (yes/no and multiple choice, built from "
            "the labels) about the same test patients, answered by a model whose fusion towers start from the "
            f"adaptor and are fine-tuned {vqa['epochs']} epochs (majority answer: {vqa['majority_accuracy']:.3f})")
    if seg:
        parts.append(
            f"Dice: {seg['structure']} on {seg['n_test_images']} test images of {Path(seg['csv']).parent.name} (real "
            f"masks, its own patient split), a 1x1 linear head on the frozen adaptor's {seg['grid'][0]}x"
            f"{seg['grid'][1]} image token states, scored in the {seg['view']}-pixel centre crop the tower sees "
            "(the coarse grid caps Dice)")
    if vqa or seg:
        parts.append("the no-pre-training row's VQA and Dice are the same models without pre-training (fusion "
                     "towers from random initialisation; the linear head on the adaptor's input tokens, the frozen "
                     "tokens on their principal directions)")
    parts += [f"{key}: {reason}" for key, reason in bench.get("not_run", {}).items()]
    return "; ".join(parts) + "."


def complete_columns(columns: list[str], rows: list[list[str]], mixes: list[str]) -> tuple[list[str], list[list]]:
    """Leave out the columns no mix row fills in every seed-run (CPU seconds exist only for runs made after CPU timing
    was added)."""
    kept = [i for i, _ in enumerate(columns)
            if not any(row[i] == "-" for row in rows if row[0] in mixes)]
    return [columns[i] for i in kept], [[row[i] for i in kept] for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", default=None, help="Embedding store (default: the config's).")
    parser.add_argument("--out", default="runs/objectives-nih", help="Bench output folder (run folders, bench.json).")
    parser.add_argument("--reuse", action="store_true", help="Summarise OUT/bench.json again instead of re-running.")
    parser.add_argument("--retrain", action="append", default=[],
                        help="With --reuse: pre-train and evaluate this mix again (after a fix), replacing its runs.")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sys.path.insert(0, str(Path("src").resolve()))
    from retune.api import adaptor_bench
    from retune.config import load_yaml_config, override
    from retune.io_utils import write_json_atomic
    from retune.objectives import ObjectivesBenchConfig

    config = override(load_yaml_config(CONFIG, ObjectivesBenchConfig), {"store": args.store})
    bench_json = Path(args.out) / "bench.json"
    bench = (json.loads(bench_json.read_text()) if args.reuse and bench_json.exists()
             else adaptor_bench(config, args.out, show_progress=True))
    if args.retrain:
        bench = retrain(config, bench, args.retrain, Path(args.out))
        write_json_atomic(bench_json, bench)
    made_with = bench_config(Path(args.out))  # what the numbers were made with (--reuse: maybe not the config now)
    if args.reuse:  # the summary and table rebuilt from the saved runs by the current code
        bench = resummarised(bench, made_with)
    summary = bench["summary"]
    speed = speed_check(summary, cpu_epoch_seconds(config, bench["seeds"]))
    freeze = json.loads(FREEZE_JSON.read_text())["data"] if FREEZE_JSON.exists() else None
    verdicts = findings(summary, freeze)
    text_note = bench["data"]["text_note"]
    table = bench["table"]
    table_columns, table_rows = complete_columns(table["columns"], table["rows"], list(bench["runs"]))
    redone = bench.get("retrained", [])
    redone_note = (f" Runs of {', '.join(redone)} were made again after a fix (captioning's vocabulary counted "
                   "words once per distinct text, so most words were <unk>), when the shared machine was less busy: "
                   "their wall-clock s / epoch compares only roughly." if redone else "")
    tables = [
        {"id": "objectives", "title": "Objective mixes on NIH: same test patients, tasks and seeds",
         "columns": table_columns, "rows": table_rows,
         "notes": f"Mean ± sd over seeds {bench['seeds']} [95% patient-bootstrap CI of the first seed]; AUROC means "
                  f"cover classes with >= {made_with.min_positives} positive test images; {bench['epochs']} epochs "
                  "per run; text→image R@K has no CI (its queries are texts shared by many patients); "
                  f"{text_note}; the unimodal mix also sees {bench['data']['n_text_only']} real Open-i "
                  "reports (text only). " + task_note(bench) + redone_note},
        {"id": "speed", "title": "Masked contrastive (50% of tokens dropped) vs plain CLIP",
         "columns": ["CPU s / epoch CLIP", "CPU s / epoch masked-50", "speed-up (CPU)", f"target >= {SPEED_TARGET}x",
                     "speed-up (wall, in the bench)", "R@10 difference image→text", "R@10 difference text→image",
                     f"R@10 within {R10_TOLERANCE}"],
         "rows": [[spread(speed["clip_cpu_seconds_per_epoch"]), spread(speed["masked_cpu_seconds_per_epoch"]),
                   f"{speed['cpu_speedup']:.2f}x", "met" if speed["speed_target_met"] else "not met",
                   f"{speed['wall_speedup_in_bench']:.2f}x",
                   f"{speed['r10_difference']['image_to_text']:+.3f}",
                   f"{speed['r10_difference']['text_to_image']:+.3f}",
                   "met" if speed["r10_target_met"] else "not met"]],
         "notes": "CPU seconds of this process per training epoch (median of 2 epochs; mean ± sd over the seeds, the "
                  "two objectives trained in turn, one torch thread); the wall-clock ratio from the bench runs is "
                  "shown beside it (a shared machine: noisy). R@10 differences are masked minus CLIP seed means "
                  "from the bench (higher is better; the target allows at most 0.02 lower)."},
        {"id": "findings", "title": "The four findings of arXiv 2406.07450 in the frozen-tower setting",
         "columns": ["finding", "verdict", "numbers (difference / margin)", "rule"],
         "rows": [[f["finding"], f["verdict"],
                   "; ".join(f"{n['mix']} - {n['baseline']} {n['metric']}: {n['difference']:+.3f} / {n['margin']:.3f}"
                             for n in f["numbers"])
                   or "-", f["rule"]] for f in verdicts],
         "notes": f"Data caveat: {text_note}; real paired notes exist only for 257 cxr-seg images "
                  "(configs/objectives-cxr-seg.yaml). Margin: twice the larger seed sd of the two compared. Numbers "
                  "are differences of seed means: mix - clip (unimodal, caption), masked-50 - each other mix (VQA), "
                  "frozen k blocks - every block tuned (freezing, from results/nih_peft.json)."},
    ]
    write_json_atomic(OUT_JSON, {
        "name": "objectives", "command": "python results/make_objectives.py", "config": CONFIG,
        "machine": machine(), "backbone": BACKBONE_NOTE, "tables": tables,
        "data": {"summary": summary, "speed": speed, "findings": verdicts, "data": repo_relative(bench["data"]),
                 "split": bench["split"], "seeds": bench["seeds"], "epochs": bench["epochs"],
                 "retrained": redone, "seconds": bench["seconds"], "caption_samples": {
                     mix: runs[0].get("caption_samples") for mix, runs in bench["runs"].items()
                     if runs[0].get("caption_samples")}},
    })
    print(f"wrote {OUT_JSON}")


if __name__ == "__main__":
    main()
