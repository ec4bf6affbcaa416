"""Write an episode folder as the raw arrays adapt_pte reads, and print what the Python
ExecuTorch runtime predicts for it (the C++ program's output should list the same classes).

    python make_inputs.py MODEL.pte EPISODE_DIR OUT_DIR

EPISODE_DIR has support/<class>/<image> and query/<image> (``metaprune export-episode``);
OUT_DIR gets support_x.f32 (N, C, H, W), support_y.i64 (N,), queries.f32 (Q, C, H, W),
little-endian, images scaled to [0, 1] as the runtime reads them, and classes.txt (label
order).
"""

from __future__ import annotations

import sys
from pathlib import Path

from metaprune.deploy.executorch_runtime import ExecuTorchModel


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__)
        return 2
    model, episode, out = ExecuTorchModel.load(argv[0]), Path(argv[1]), Path(argv[2])
    support = model.load_support(episode / "support")
    qx, files = model.load_queries([episode / "query"])
    out.mkdir(parents=True, exist_ok=True)
    support.x.numpy().astype("<f4").tofile(out / "support_x.f32")
    support.y.numpy().astype("<i8").tofile(out / "support_y.i64")
    qx.numpy().astype("<f4").tofile(out / "queries.f32")
    (out / "classes.txt").write_text("\n".join(support.class_names) + "\n")
    preds = model.adapt(support.x, support.y, class_names=support.class_names).predict(qx, files)
    print(f"wrote {out}/support_x.f32, support_y.i64, queries.f32, classes.txt")
    print("Python ExecuTorch runtime:")
    for i, p in enumerate(preds):
        print(f"query {i}: class {p.label}  ({p.class_name}, {Path(p.file).name})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
