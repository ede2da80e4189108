"""Cost of one fine-tuning episode on the bundled digits set (docs/finetune.md).

Writes the imbalanced digits (``featkit.data.digits.write_digits``), builds a ViT-S sized
backbone (random weights: the cost does not depend on their values) and times one
episode per method at ``shots=all`` with the default schedule, as ``featkit finetune``
would run it::

    python benchmarks/finetune.py [--model timm:vit_small_patch16_224] [--image-size 32]
        [--methods lora,last-block,linear] [--max-per-class N] [--precision auto]
        [--shots all] [--steps N]

With ``--demo`` it measures learning instead, on what ``featkit demo`` tunes: the
pretrained featkit-tiny-dino on the demo's digits (32 px, imbalance 10, seed 0), every
draw of ``--shots`` × ``--episodes``, printing the final training loss (mean of the last
10 % of steps; chance is ln 10 = 2.30), the balanced accuracy and, on the same draws,
the logistic probe's (docs/finetune.md)::

    python benchmarks/finetune.py --demo --shots 10,all --episodes 3
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from featkit.backbones import create_backbone
from featkit.data.digits import write_digits
from featkit.evaluation.splits import Sweep, parse_shots
from featkit.metrics import balanced_accuracy
from featkit.tune import seeded
from featkit.tune.run import FinetuneSettings, labelled_images, run_finetune


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="timm:vit_small_patch16_224")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--methods", default="lora,last-block,linear")
    parser.add_argument("--max-per-class", type=int, default=None)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--shots", default="all")
    parser.add_argument("--demo", action="store_true", help="learning on the demo's backbone")
    parser.add_argument("--episodes", type=int, default=1)
    args = parser.parse_args()
    if args.demo:
        demo(args)
        return

    with tempfile.TemporaryDirectory() as tmp:
        root = write_digits(Path(tmp) / "digits", size=64, max_per_class=args.max_per_class)
        rows = labelled_images(root)
        print(
            f"digits: {len(rows.paths)} images; model {args.model} at {args.image_size} px",
            flush=True,
        )
        for method in args.methods.split(","):
            with seeded(0):
                backbone = create_backbone(args.model, pretrained=False, image_size=args.image_size)
            settings = FinetuneSettings(
                method=method, precision=args.precision, device=args.device, steps=args.steps
            )
            start, cpu = time.perf_counter(), time.process_time()
            run = run_finetune(rows, backbone, settings, Sweep(parse_shots(args.shots), episodes=1))
            total, cpu = time.perf_counter() - start, time.process_time() - cpu
            outcome = run.outcomes[-1]
            print(
                f"{method:>10}: {total:6.1f} s total ({cpu:.1f} CPU-s), "
                f"{outcome.seconds:6.1f} s training "
                f"({len(outcome.losses)} steps, {len(outcome.train_paths)} train images), "
                f"trainable {outcome.trainable:,} of {outcome.total:,} "
                f"({100 * outcome.trainable / outcome.total:.2f}%), "
                f"loss {outcome.losses[0]:.2f} -> {outcome.losses[-1]:.2f}, "
                f"balanced acc {balanced_accuracy(outcome.y_true, outcome.y_pred):.3f}",
                flush=True,
            )


def demo(args: argparse.Namespace) -> None:
    import numpy as np

    from featkit.evaluation.probe import EvalData, ProbeSettings, ProtocolSpec, evaluate_arrays
    from featkit.tune import load_images, predict_logits
    from featkit.tune.head import ClsOnly

    sweep = Sweep(parse_shots(args.shots), episodes=args.episodes)
    with tempfile.TemporaryDirectory() as tmp:
        rows = labelled_images(write_digits(Path(tmp) / "digits", size=32, imbalance=10.0))
        base = create_backbone("featkit-tiny-dino")
        images = load_images(rows.root, rows.paths, base.preprocessing)
        features = predict_logits(ClsOnly(base), images.evals).numpy()
        data = EvalData(
            rows.dataset, base.name, list(rows.paths), rows.labels, {"cls": features},
            list(rows.splits), rows.label_names,
        )  # fmt: skip
        probe = ProbeSettings(
            protocols=(ProtocolSpec.of("logistic"),),
            shots=sweep.shots,
            episodes=sweep.episodes,
            seed=sweep.seed,
            test_fraction=sweep.test_fraction,
        )
        table = evaluate_arrays(data, probe).results
        for row in table[table.metric == "balanced_accuracy"].itertuples():
            print(f"{'logistic':>10} {row.shots:>4}-shot ep {row.episode}: bal acc {row.value:.3f}")
        for method in args.methods.split(","):
            settings = FinetuneSettings(method=method, precision=args.precision, steps=args.steps)
            run = run_finetune(rows, create_backbone("featkit-tiny-dino"), settings, sweep)
            for o in run.outcomes:
                tail = o.losses[-max(1, len(o.losses) // 10) :]
                print(
                    f"{method:>10} {o.shots:>4}-shot ep {o.episode}: {len(o.losses)} steps, "
                    f"final loss {np.mean(tail):.3f}, "
                    f"bal acc {balanced_accuracy(o.y_true, o.y_pred):.3f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
