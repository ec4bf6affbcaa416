"""Subcommands ``export``, ``export-episode``, ``adapt``, ``export-onnx`` and
``export-executorch``.

Imports are inside the handlers: ``adapt`` must not load the training stack.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..argtypes import NON_NEGATIVE, POSITIVE, integer


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a (pruned) checkpoint as a compact .mpz model")
    p.add_argument("checkpoint", help="checkpoint path (NAME, NAME.safetensors or NAME.json)")
    p.add_argument("--out", required=True, help="output file, e.g. model.mpz")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("export-episode", help="write one few-shot task as image folders: "
                       "OUT/support/<class>/*.png, OUT/query/*.png, OUT/answers.json")
    p.add_argument("--dataset", default="glyphs", help="dataset name (default: glyphs)")
    p.add_argument("--root", help="data root (not needed for glyphs; default $METAPRUNE_DATA)")
    p.add_argument("--split", default="test", help="split (default: test)")
    p.add_argument("--n-way", type=integer(2), default=5)
    p.add_argument("--k-shot", type=POSITIVE, default=1)
    p.add_argument("--queries", type=POSITIVE, default=5, help="query images per class")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0, help="task seed")
    p.add_argument("--index", type=NON_NEGATIVE, default=0, help="task index in the seeded stream")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="dataset option, e.g. --option image_size=28")
    p.add_argument("--out", required=True, help="output folder (must be empty or new)")
    p.set_defaults(func=cmd_export_episode)

    p = sub.add_parser("adapt", help="adapt an .mpz model on a support folder, predict queries")
    p.add_argument("model", help=".mpz model file (.pte program with --runtime executorch)")
    p.add_argument("--runtime", choices=["torch", "executorch"], default="torch",
                   help="torch: the PyTorch device runtime on an .mpz model (default); "
                   "executorch: the ExecuTorch runtime on a .pte program from "
                   "export-executorch")
    p.add_argument("--support", required=True,
                   help="folder with one sub-folder of images per class")
    p.add_argument("--query", required=True, nargs="+", metavar="DIR|FILE",
                   help="query image files and/or folders of images")
    p.add_argument("--steps", type=NON_NEGATIVE,
                   help="adaptation steps (default: the stored rule's)")
    p.add_argument("--bn", choices=["support", "batch"], default="support",
                   help="BatchNorm statistics for prediction: frozen support-set statistics "
                   "(default; each image independent) or the query batch's (as the library's "
                   "evaluation)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=cmd_adapt)

    p = sub.add_parser("export-onnx", help="adapt an .mpz model on a support folder and write "
                       "the adapted model as ONNX")
    p.add_argument("model", help=".mpz model file")
    p.add_argument("--support", required=True,
                   help="folder with one sub-folder of images per class")
    p.add_argument("--out", required=True, help="output file, e.g. model.onnx")
    p.add_argument("--steps", type=NON_NEGATIVE,
                   help="adaptation steps (default: the stored rule's)")
    p.add_argument("--no-fold", action="store_true",
                   help="keep BatchNorm nodes (frozen) instead of folding them into the convs")
    p.set_defaults(func=cmd_export_onnx)

    p = sub.add_parser("export-executorch", help="write an .mpz model as an ExecuTorch "
                       "program (.pte) that adapts (masked SGD steps) and predicts on the "
                       "device")
    p.add_argument("model", help=".mpz model file")
    p.add_argument("--out", required=True, help="output file, e.g. model.pte")
    p.add_argument("--k-shot", type=POSITIVE, default=1,
                   help="support images per class the program takes (default 1)")
    p.add_argument("--max-queries", type=POSITIVE, default=128,
                   help="most query images per predict call (default 128)")
    # executorch_export.DELEGATES / DEFAULT_DELEGATE, written out: this module stays torch-free
    p.add_argument("--delegate", choices=["xnnpack", "portable"], default="xnnpack",
                   help="xnnpack (default): the operations XNNPACK supports run in "
                   "ExecuTorch's XNNPACK backend (faster on a CPU: docs/deploy.md); "
                   "portable: ExecuTorch's own kernels only, for a runtime built without "
                   "XNNPACK")
    p.add_argument("--no-check", action="store_true",
                   help="skip comparing ExecuTorch with the PyTorch runtime on a random "
                   "support set")
    p.set_defaults(func=cmd_export_executorch)


# ---- export -----------------------------------------------------------------------------------
def cmd_export(args: argparse.Namespace) -> int:
    from ..checkpoint import load_checkpoint
    from .format import mpz_from_learner, save_mpz, size_report

    ckpt = load_checkpoint(args.checkpoint, with_optimizer=False)
    extra = {"source": {"checkpoint": str(args.checkpoint),
                        "git_commit": ckpt.meta.get("git_commit")}}
    mpz = mpz_from_learner(ckpt.learner, extra_meta=extra)
    out = save_mpz(args.out, mpz)
    rep = size_report(out)
    if args.json:
        print(json.dumps({"out": str(out), "dense_bytes": rep.dense_bytes,
                          "compact_bytes": rep.compact_bytes, "limit_bytes": rep.limit_bytes,
                          "ratio": rep.ratio, "prunable": rep.prunable, "kept": rep.kept},
                         allow_nan=False))
    else:
        print(f"wrote {out}")
        print("\n".join(rep.lines()))
    return 0


# ---- export-episode ---------------------------------------------------------------------------


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.@+" else "_" for c in name) or "class"


def cmd_export_episode(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from ..config import parse_key_value
    from ..data.registry import get_dataset
    from ..data.tasks import TaskSampler

    out = Path(args.out)
    for sub in ("support", "query"):
        d = out / sub
        if d.exists() and any(d.iterdir()):
            raise ValueError(f"output folder '{d}' is not empty: choose a new --out")
    options = dict(parse_key_value(o, "--option") for o in args.option)
    ds = get_dataset(args.dataset, args.split, args.root, **options)
    sampler = TaskSampler(ds, args.n_way, args.k_shot, args.queries, seed=args.seed,
                          name=f"{args.dataset}/{args.split}")
    spec = sampler.spec(args.index)
    task = sampler.task(args.index)
    names = [_safe_name(ds.class_names[c]) for c in spec.classes]
    if len(set(names)) != len(names):
        raise ValueError(f"class names {names} are not distinct as folder names")

    def save(img, path: Path) -> None:
        a = (img.clamp(0, 1) * 255).round().to(dtype=__import__("torch").uint8).numpy()
        Image.fromarray(a[0] if a.shape[0] == 1 else np.transpose(a, (1, 2, 0))).save(path)

    for name in names:
        (out / "support" / name).mkdir(parents=True, exist_ok=True)
    (out / "query").mkdir(parents=True, exist_ok=True)
    for i, (img, lab) in enumerate(zip(task.support_x, task.support_y.tolist(), strict=True)):
        save(img, out / "support" / names[lab] / f"{i % args.k_shot:03d}.png")
    order = np.random.default_rng([args.seed, args.index, 1]).permutation(len(task.query_y))
    answers = {}
    for j, q in enumerate(order):
        f = f"query/{j:03d}.png"
        save(task.query_x[q], out / f)
        answers[f] = names[int(task.query_y[q])]
    (out / "answers.json").write_text(json.dumps(
        {"dataset": args.dataset, "split": args.split, "seed": args.seed, "index": args.index,
         "classes": names, "answers": answers}, indent=1))
    print(f"wrote {args.n_way}-way {args.k_shot}-shot episode to {out}: "
          f"{len(task.support_y)} support images in {out / 'support'}/<class>/, "
          f"{len(answers)} query images in {out / 'query'}/, true classes in "
          f"{out / 'answers.json'}")
    return 0


# ---- adapt, export-onnx -----------------------------------------------------------------------
def cmd_adapt(args: argparse.Namespace) -> int:
    import time

    import torch

    from .executorch_runtime import ExecuTorchModel, is_pte, set_threads
    from .runtime import DeviceModel

    if args.runtime == "executorch":
        if args.bn != "support":
            raise ValueError("--runtime executorch predicts with --bn support only")
        dm = ExecuTorchModel.load(args.model)
        set_threads(torch.get_num_threads())  # the same thread count as torch's (--threads)
    else:
        path = Path(args.model)
        if path.is_file():
            with path.open("rb") as f:
                if is_pte(f.read(8)):
                    raise ValueError(f"'{path}' is an ExecuTorch program, not an .mpz model: "
                                     "adapt it with --runtime executorch")
        dm = DeviceModel.load(path)
    support = dm.load_support(args.support)
    t0 = time.perf_counter()
    adapted = dm.adapt(support.x, support.y, steps=args.steps, class_names=support.class_names)
    t_adapt = time.perf_counter() - t0
    qx, files = dm.load_queries(args.query)
    preds = adapted.predict(qx, files, bn=args.bn)
    rule = dm.rule
    steps = rule["steps"] if args.steps is None else args.steps
    lr = "per weight" if rule["per_weight_lr"] else rule["inner_lr"]
    how = ("prototypes" if rule["kind"] == "prototypes" else
           f"{steps} SGD step(s) on a {rule['context_dim']}-number context, lr {lr}"
           if rule["kind"] == "context" else f"{steps} masked SGD step(s), lr {lr}")
    if args.json:
        print(json.dumps({"model": str(args.model), "support": str(args.support),
                          "classes": support.class_names, "learner": rule["learner"],
                          "adaptation": how, "bn": args.bn, "adapt_seconds": t_adapt,
                          "predictions": [p.to_json() for p in preds]}, allow_nan=False))
        return 0
    print(f"adapted {args.model} ({rule['learner']}: {how}) on {len(support.class_names)} "
          f"classes, {len(support.y)} support images, in {1000 * t_adapt:.0f} ms")
    w = max(len(p.file) for p in preds)
    c = max(len(n) for n in support.class_names)
    print(f"{'file':<{w}}  {'class':<{c}}  probability")
    for p in preds:
        print(f"{p.file:<{w}}  {p.class_name:<{c}}  {p.probability:.3f}")
    sys.stdout.flush()
    return 0


def cmd_export_onnx(args: argparse.Namespace) -> int:
    try:
        import onnx  # noqa: F401
    except ImportError as e:
        raise ValueError("export-onnx needs the 'onnx' package: pip install "
                         "'metaprune[onnx]'") from e
    from .onnx_export import export_onnx
    from .runtime import DeviceModel

    dm = DeviceModel.load(args.model)
    support = dm.load_support(args.support)
    adapted = dm.adapt(support.x, support.y, steps=args.steps, class_names=support.class_names)
    out = export_onnx(adapted, args.out, support.x, fold_bn=not args.no_fold,
                      metadata={"source": Path(args.model).name})
    print(f"wrote {out} ({out.stat().st_size:,} bytes): input 'images' (B, "
          f"{dm.channels}, {dm.size}, {dm.size}) float in [0, 1], outputs 'logits' and "
          f"'probabilities' over {support.class_names}")
    try:
        from .onnx_export import onnx_max_abs_diff

        diff = onnx_max_abs_diff(out, adapted, support.x)
        print(f"onnxruntime check on the support images: max |ONNX - PyTorch| = {diff:.2e}")
    except ImportError:
        print("(onnxruntime not installed: output not checked)")
    return 0


def cmd_export_executorch(args: argparse.Namespace) -> int:
    from .executorch_export import compare_runtimes, export_executorch
    from .format import size_report

    out = export_executorch(args.model, args.out, k_shot=args.k_shot,
                            max_queries=args.max_queries, delegate=args.delegate)
    rep = size_report(args.model)
    pte = out.stat().st_size
    print(f"wrote {out}")
    print(f"ExecuTorch program bytes: {pte:>10,}  (.mpz {rep.compact_bytes:,}: "
          f"{pte / rep.compact_bytes:.2f}x; dense float32 {rep.dense_bytes:,}: "
          f"{pte / rep.dense_bytes:.2f}x; information limit {rep.limit_bytes:,})")
    if not args.no_check:
        print(compare_runtimes(args.model, out))
    return 0
