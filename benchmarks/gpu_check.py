"""GPU readiness in one command (``benchmarks/gpu_check.sh``): the issue-16 checks on one CUDA device, < 8 minutes.

1. Embedding throughput per input kind (256/1024 px PNG, 2048 px 16-bit DICOM; real NIH images) against the encoder's
   forward limit measured in the same run, with bf16 (fp16) autocast and channels_last as ``embed_table`` runs them.
2. Equality of the embedding paths on the device: a store written with decoding workers equals one written without
   (same content hashes, vectors within 1e-5), and the device's vectors match the CPU's (cosine >= 0.999; autocast).
3. A 224k-row epoch of RE-tune's adaptor training (batch 4096) in fp32 and bf16 on the device, counting the host
   syncs it makes (``torch.cuda.set_sync_debug_mode``: none per step is the goal, one per epoch is the loss).
4. Equality of training precisions: the same seeds in fp32 and bf16 reach the same held-out AUROC (within 0.01).
5. PEFT LoRA on the image tower (NIH subset, 1 epoch): peak ``torch.cuda.max_memory_allocated``.

Writes ``benchmarks/results/gpu.json`` and exits non-zero when a check fails or any CUDA error is raised.
``--device cpu --smoke`` runs the same code on tiny sizes, to check the script itself on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
import warnings
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import NIH_CSV, NIH_FINDINGS, ROOT, Context, machine, timed  # noqa: E402


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # surfaces asynchronous CUDA errors here, inside the check that caused them


def check_embedding(ctx: Context, device: torch.device, n_images: int) -> tuple[dict, list]:
    """(1) and (2): throughput vs the encoder limit per input kind, and equality of the embedding paths."""
    from benchmarks.bench_embed import KINDS, compare, embed_run, pick_images, prepare_inputs
    from retune.backbones.registry import create_backbone
    from retune.data.images import load_image

    originals = pick_images(n_images)
    inputs = prepare_inputs(ctx, originals)
    backbone = create_backbone("default", device=str(device))
    pixels = torch.stack([backbone.preprocess(load_image(path)) for path in originals])
    scratch = ctx.workdir / "gpu-check"
    scratch.mkdir(parents=True, exist_ok=True)
    results = {kind: compare(inputs[kind], backbone, scratch, 1, 64, pixels) for kind in KINDS}
    synchronize(device)
    _, with_workers = embed_run(inputs["png1024"], backbone, scratch, 64, None)
    _, without_workers = embed_run(inputs["png1024"], backbone, scratch, 64, 0)
    cpu_backbone = create_backbone("default", device="cpu")
    _, on_cpu = embed_run(inputs["png256"], cpu_backbone, scratch, 64, None)
    _, on_device = embed_run(inputs["png256"], backbone, scratch, 64, None)
    cosine = torch.nn.functional.cosine_similarity(torch.from_numpy(on_cpu), torch.from_numpy(on_device)).min().item()
    workers_difference = float(np.abs(with_workers - without_workers).max())
    checks = [
        ("embedding: store with workers == without (max |diff|)", workers_difference, workers_difference <= 1e-5),
        (f"embedding: {device.type} vs cpu vectors, min cosine", cosine, cosine >= 0.999),
    ]
    for kind in KINDS:
        share = results[kind]["embed_vs_encoder_limit"]
        checks.append((f"embedding {kind}: embed / encoder limit", share, share >= 0.8))
    return {"per_kind": results, "workers_max_abs_difference": workers_difference, "cpu_min_cosine": cosine}, checks


def epoch_on(device: torch.device, n_rows: int, precision: str, x: torch.Tensor, y: torch.Tensor) -> dict:
    """One epoch of ``fit`` at batch 4096 on ``device``: seconds and the host syncs it made."""
    from benchmarks.bench_training import IMAGE_DIM, TEXT_DIM, prompt_bank, retune_config
    from retune.losses import masked_bce
    from retune.methods.retune import ReTuneModel
    from retune.training.loop import fit

    config = retune_config(1, 4096, precision)
    torch.manual_seed(0)
    model = ReTuneModel(IMAGE_DIM, TEXT_DIM, config).to(device)
    model.add_prompts(*prompt_bank().matrices(NIH_FINDINGS))
    model.to(device)

    def loss_fn(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return masked_bce(model(xb), yb)

    fit(model, model.parameters(), loss_fn, x[:8192], y[:8192], config.optim, None, 0)  # warm-up (kernels, caches)
    synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode("warn")
        try:
            seconds, _ = timed(lambda: (fit(model, model.parameters(), loss_fn, x, y, config.optim, None, 0),
                                        synchronize(device)))
        finally:
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode("default")
    syncs = sum("synchroniz" in str(w.message) for w in caught)
    return {"seconds": seconds, "host_syncs": syncs, "steps": -(-n_rows // 4096)}


def check_training(device: torch.device, n_rows: int) -> tuple[dict, list]:
    """(3) and (4): the 224k-row epoch per precision with its host syncs, and fp32 vs bf16 AUROC on held-out rows."""
    from benchmarks.bench_training import method_context, retune_config, synthetic_vectors
    from retune.devices import bf16_supported
    from retune.evaluation import fast_mean_auroc
    from retune.methods.base import TaskData
    from retune.methods.retune import ReTune

    x_all, y_all = synthetic_vectors(n_rows + 20_000)
    x, y = torch.from_numpy(x_all[:n_rows]).to(device), torch.from_numpy(y_all[:n_rows]).to(device)
    precisions = ["fp32", "bf16"] if bf16_supported(device) else ["fp32"]
    epochs = {precision: epoch_on(device, n_rows, precision, x, y) for precision in precisions}
    aurocs = {}
    for precision in precisions:  # the method path trains on the CPU copy; the loop is what differs by precision
        method = ReTune(method_context(), retune_config(5, 4096, precision))
        method.learn(TaskData(tuple(NIH_FINDINGS), x_all[:n_rows], y_all[:n_rows]))
        aurocs[precision] = fast_mean_auroc(method.predict(x_all[n_rows:]), y_all[n_rows:])
    checks = [(f"epoch {p}: host syncs in {r['steps']} steps", r["host_syncs"], r["host_syncs"] <= 2)
              for p, r in epochs.items()]
    if "bf16" in aurocs:
        difference = abs(aurocs["bf16"] - aurocs["fp32"])
        checks.append(("training: |AUROC bf16 - fp32| (same seeds)", difference, difference <= 0.01))
    return {"epochs": epochs, "held_out_auroc": aurocs}, checks


def check_peft(ctx: Context, device: torch.device, smoke: bool) -> tuple[dict, list]:
    """(5): PEFT LoRA on the default image tower over the NIH subset, one epoch: peak memory."""
    from retune.config import DataConfig, PeftExperimentConfig
    from retune.experiments.peft import run_peft_experiment

    csv = NIH_CSV
    if smoke:  # 80 images: enough to run every stage
        import pandas as pd

        csv = ctx.workdir / "gpu-check" / "nih-80.csv"
        pd.read_csv(NIH_CSV).head(80).to_csv(csv, index=False)
    config = PeftExperimentConfig(
        method="lora", tower="image", epochs=1, device=str(device), store=ctx.workdir / "stores" / "nih",
        data=DataConfig(csv=csv, image_root=NIH_CSV.parent), n_bootstrap=20 if smoke else 200,
    )
    metrics = run_peft_experiment(config, ctx.workdir / "gpu-check" / "peft-lora")
    synchronize(device)
    peak = metrics.get("peak_memory_mb")
    kept = ("peak_memory_mb", "peak_memory_above_start_mb", "train_seconds", "mean_auroc")
    return {key: metrics.get(key) for key in kept}, [("PEFT LoRA: peak memory (MB)", peak, peak is not None)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/gpu_check.sh", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (with --smoke: checks the script)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (script check, not a measurement)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    ctx = Context(quick=True, workdir=ROOT / "benchmarks" / "work", results_dir=ROOT / "benchmarks" / "results")
    started = time.perf_counter()
    report: dict = {"device": str(device), "smoke": args.smoke}
    checks: list = []
    try:
        for name, run in (
            ("embedding", lambda: check_embedding(ctx, device, 8 if args.smoke else 500)),
            ("training", lambda: check_training(device, 8_192 if args.smoke else 224_000)),
            ("peft_lora", lambda: check_peft(ctx, device, args.smoke)),
        ):
            ctx.log(f"gpu_check: {name}")
            report[name], found = run()
            checks.extend(found)
    except Exception:  # noqa: BLE001 - a CUDA error (or any other) must fail the script loudly, with its traceback
        traceback.print_exc()
        print("gpu_check: FAILED with the error above", file=sys.stderr)
        return 1
    report["checks"] = [{"name": n, "value": v, "ok": ok} for n, v, ok in checks]
    report["seconds"] = time.perf_counter() - started
    report["machine"] = machine()
    if not args.smoke:
        (ctx.results_dir / "gpu.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    for name, value, ok in checks:
        print(f"{'ok  ' if ok else 'FAIL'}  {name}: {value:.4g}" if isinstance(value, float) else
              f"{'ok  ' if ok else 'FAIL'}  {name}: {value}")
    print(f"gpu_check: {report['seconds']:.0f} s on {report['machine'].get('gpu') or device}")
    return 0 if all(ok for _, _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
