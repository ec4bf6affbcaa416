"""Every benchmark script, run on a tiny setting: its smallest options, generated glyphs
data, results written to a temporary folder (never into benchmarks/results). Each test reads
what the script wrote and checks its rows, columns and numbers, so a script broken by a change
of the library fails here rather than on its next real run."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from metaprune.checkpoint import read_meta

ROOT = Path(__file__).parents[1]
BENCH = ROOT / "benchmarks"
GLYPHS = ["--set", "data.dataset=glyphs",
          "--set", "data.options={num_classes: 12, samples_per_class: 6, image_size: 16}",
          "--set", "data.train_split=train", "--set", "data.test_split=test",
          "--set", "model.kwargs={width: 4}", "--set", "train.meta_batch=2",
          "--set", "data.q_query=2", "--set", "eval.q_query=2"]
GLYPH_OPTIONS = ["--option", "num_classes=12", "--option", "samples_per_class=6",
                 "--option", "image_size=16"]
# a tiny setting A: 2 dense iterations, two rounds (50%, 70%) of 1 re-training iteration
CURVE = ["--setting", "A", *GLYPHS, "--iterations", "2", "--retrain-iters", "1", "--tasks", "4",
         "--score-tasks", "2", "--methods", "anp,lobs,magnitude", "--schedule", "0.5,0.2",
         "--report-at", "0.5,0.7", "--no-progress"]


def run_script(name: str, *args: str, results: Path | None = None) -> None:
    """``benchmarks/<name>.py args`` in this process (no second torch start-up), with the
    default results folder replaced by ``results`` (by default a temporary folder: never the
    committed one)."""
    sys.path.insert(0, str(BENCH))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before conftest's one-thread fixture
    with pytest.MonkeyPatch.context() as mp, tempfile.TemporaryDirectory() as spare:
        import _report

        mp.setattr(_report, "RESULTS", results or Path(spare))
        mp.setattr(sys, "argv", [str(BENCH / f"{name}.py"), *args])
        try:
            runpy.run_path(str(BENCH / f"{name}.py"), run_name="__main__")
        except SystemExit as e:
            assert e.code in (0, None), f"{name}.py exited with {e.code}"
        finally:
            sys.path.remove(str(BENCH))
            torch.set_num_threads(threads)


def rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


def finite(value: str) -> bool:
    return math.isfinite(float(value))


@pytest.fixture(autouse=True)
def _results_untouched() -> Iterator[None]:
    """No smoke run writes into the committed results (every output here is named *smoke*, or
    goes to a temporary folder by its script's --out; real runs of other people may write there
    at the same time, so only these names are checked)."""
    yield
    written = [p.name for p in (BENCH / "results").iterdir() if "smoke" in p.name]
    assert not written, f"a smoke run wrote into benchmarks/results: {written}"


@pytest.fixture(scope="module")
def curve(tmp_path_factory) -> tuple[Path, Path]:
    """A finished tiny sparsity_curve run: (run folder, results folder)."""
    root = tmp_path_factory.mktemp("curve")
    run_script("sparsity_curve", *CURVE, "--run-dir", str(root / "run"), "--results-dir",
               str(root / "results"), "--name", "smoke_curve")
    return root / "run", root / "results"


def test_sparsity_curve(curve) -> None:
    _, results = curve
    got = rows(results / "smoke_curve.csv")
    assert [(r["method"], r["target_sparsity"]) for r in got] == [
        ("dense", "0.0"), ("anp", "0.5"), ("anp", "0.7"), ("lobs", "0.5"), ("lobs", "0.7"),
        ("magnitude", "0.5"), ("magnitude", "0.7")]
    for r in got[1:]:
        assert abs(float(r["sparsity"]) - float(r["target_sparsity"])) < 0.01
        assert 0 <= float(r["accuracy"]) <= 100 and finite(r["diff_vs_dense"])
        assert r["tasks"] == "4"
    assert (results / "smoke_curve.md").read_text().startswith("# Accuracy vs sparsity")


def test_sparsity_curve_structured_memory_budget(tmp_path) -> None:
    """--memory-budget: the structured model and its scratch control are cached in folders
    named with the budget, and the structured model holds at most that share of the dense
    model's activations."""
    from metaprune.checkpoint import load_checkpoint
    from metaprune.pruning.structured import activation_bytes, example_input

    run = tmp_path / "run"
    args = [a for a in CURVE if a not in ("anp,lobs,magnitude", "0.5,0.7")]
    args[args.index("--methods") + 1:args.index("--methods") + 1] = [
        "anp-structured,scratch-structured"]
    args[args.index("--report-at") + 1:args.index("--report-at") + 1] = ["0.5"]
    run_script("sparsity_curve", *args, "--memory-budget", "0.6", "--run-dir", str(run),
               "--results-dir", str(tmp_path), "--name", "smoke_mem")
    got = rows(tmp_path / "smoke_mem.csv")
    assert [r["method"] for r in got] == ["dense", "anp-structured", "scratch-structured"]
    assert "--memory-budget 0.6" in (tmp_path / "smoke_mem.md").read_text()
    slim = load_checkpoint(run / "anp-structured-mem0.6" / "s50", with_optimizer=False)
    assert slim.meta["structured"]["memory_budget"] == 0.6
    assert (run / "scratch-structured-mem0.6" / "s50.json").exists()
    dense = load_checkpoint(run / "dense", with_optimizer=False).learner.model
    x = example_input(dense)
    assert activation_bytes(slim.learner.model, x) <= 0.6 * activation_bytes(dense, x)
    # paired against a reference folder whose name holds a dot: the file keeps the whole name
    run_script("paired_vs_anp", "--setting", "A", "--run-dir", str(run), "--reference",
               "anp-structured-mem0.6", "--name", "smoke_mem", "--results-dir", str(tmp_path))
    paired = rows(tmp_path / "smoke_mem_anp-structured-mem0.6_vs_baselines.csv")
    assert {r["baseline"] for r in paired} == {"scratch-structured-mem0.6"}
    # a budget out of reach is refused before the dense model is trained
    with pytest.raises(AssertionError, match="out of reach"):  # run_script: exit code != 0
        run_script("sparsity_curve", *args, "--memory-budget", "0.01", "--run-dir",
                   str(tmp_path / "run2"), "--results-dir", str(tmp_path), "--name", "smoke_m2")
    assert not (tmp_path / "run2" / "dense.json").exists()
    # --round-to: its own folder (the dense model is reused), every width a multiple
    args[args.index("--methods") + 1] = "anp-structured"
    run_script("sparsity_curve", *args, "--round-to", "2", "--run-dir", str(run),
               "--results-dir", str(tmp_path), "--name", "smoke_r2")
    rounded = load_checkpoint(run / "anp-structured-r2" / "s50", with_optimizer=False)
    assert rounded.meta["structured"]["round_to"] == 2
    assert all(w % 2 == 0 for w in rounded.meta["structured"]["widths"][-1])
    assert "multiples of 2" in (tmp_path / "smoke_r2.md").read_text()


def test_paired_vs_anp(curve) -> None:
    run, results = curve
    run_script("paired_vs_anp", "--setting", "A", "--run-dir", str(run), "--results-dir",
               str(results), "--name", "smoke_curve")
    got = rows(results / "smoke_curve_anp_vs_baselines.csv")
    assert {(r["baseline"], r["sparsity"]) for r in got} == {
        (b, s) for b in ("lobs", "magnitude") for s in ("0.5", "0.7")}
    assert all(finite(r["anp_minus_baseline"]) and float(r["ci95"]) >= 0 for r in got)


def test_oneshot_criteria(curve, tmp_path) -> None:
    run, _ = curve
    run_script("oneshot_criteria", "--run-dir", str(run), "--name", "smoke_oneshot",
               "--sparsity", "0.5", "--variants", "magnitude;anp;anp:compensation=none",
               "--tasks", "3", "--score-tasks", "2", "--results-dir", str(tmp_path),
               "--no-progress")
    got = rows(tmp_path / "smoke_oneshot.csv")
    assert [r["variant"] for r in got] == ["dense", "magnitude", "anp", "anp:compensation=none"]
    assert all(r["tasks"] == "3" for r in got)
    assert all(finite(r["diff_vs_dense"]) for r in got[1:])
    assert finite(got[3]["diff_vs_method"])  # paired against anp with its defaults


def test_mask_overlap(curve, tmp_path) -> None:
    run, _ = curve
    run_script("mask_overlap", "--run-dir", str(run), "--round", "2", "--methods",
               "lobs,magnitude", "--name", "smoke_overlap", "--results-dir", str(tmp_path))
    got = rows(tmp_path / "smoke_overlap.csv")
    assert {r["method"] for r in got} == {"anp", "lobs", "magnitude"}
    assert all(float(r["overlap_with_anp"]) == 1.0 for r in got if r["method"] == "anp")
    assert all(0 <= float(r["overlap_with_anp"]) <= 1 for r in got)
    assert all(int(r["kept"]) < int(r["weights"]) for r in got)


def test_extra_retrain(curve, tmp_path) -> None:
    run, _ = curve
    work = tmp_path / "run"
    shutil.copytree(run, work)
    run_script("extra_retrain", "--run-dir", str(work), "--round", "2", "--iterations", "1",
               "--meta-batch", "2", "--methods", "anp,magnitude", "--name", "smoke_extra",
               "--results-dir", str(tmp_path), "--no-progress")
    got = rows(tmp_path / "smoke_extra.csv")
    assert [r["model"] for r in got] == ["dense", "dense+1", "anp", "anp+1", "magnitude",
                                         "magnitude+1"]
    assert all(finite(r["diff_vs_dense"]) for r in got[1:])
    versus = rows(tmp_path / "smoke_extra_anp_vs.csv")
    assert [r["baseline"] for r in versus] == ["dense+1", "magnitude+1"]


def test_h_adaptation(curve, tmp_path) -> None:
    run, _ = curve
    run_script("h_adaptation", "--run-dir", str(run), "--states", "dense",
               "--score-tasks", "2", "--name", "smoke_h", "--results-dir", str(tmp_path))
    got = rows(tmp_path / "smoke_h.csv")
    assert got and {r["state"] for r in got} == {"dense"}
    assert all(float(r["dH_adapt"]) >= 0 and 0 <= float(r["agree_adapt"]) <= 1 for r in got)


def test_compensation_by_layer(curve, tmp_path) -> None:
    run, _ = curve
    run_script("compensation_by_layer", "--run-dir", str(run), "--sparsity", "0.5",
               "--tasks", "3", "--name", "smoke_comp", "--results-dir", str(tmp_path))
    got = rows(tmp_path / "smoke_comp.csv")
    compensated = [r["compensated"] for r in got]
    assert compensated[0] == "none" and "all" in compensated and "head.weight" in compensated
    assert all(finite(r["diff_vs_none"]) for r in got[1:])


def test_dense_cpu_time(curve, tmp_path) -> None:
    run, _ = curve
    run_script("dense_cpu_time", "--run-dir", str(run), "--warmup", "1", "--iterations", "1",
               "--eval-tasks", "1", "--name", "smoke_cpu", results=tmp_path)
    (got,) = rows(tmp_path / "smoke_cpu.csv")
    per_iteration = float(got["cpu_seconds_per_iteration"])
    assert per_iteration > 0 and got["full_iterations"] == "2"
    assert float(got["estimated_cpu_minutes"]) == pytest.approx(2 * per_iteration / 60, abs=0.06)


TINY_CONFIG = """\
data: {dataset: glyphs, train_split: train, test_split: test, n_way: 5, k_shot: 1, q_query: 2,
       options: {num_classes: 12, samples_per_class: 6, image_size: 16}}
model: {name: conv4, kwargs: {width: 4}}
learner: {name: maml, inner_lr: 0.4, inner_steps: 1, eval_inner_steps: 1, meta_lr: 0.001}
train: {iterations: 2, meta_batch: 2, checkpoint_every: 100, seed: 0}
eval: {tasks: 3, seed: 12345, q_query: 2}
"""


@pytest.fixture
def tiny_config(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_CONFIG)
    return path


def test_determinism(tmp_path) -> None:
    run_script("determinism", "--iterations", "2", "--meta-batch", "2", "--threads", "1,1",
               "--name", "smoke_det", "--results-dir", str(tmp_path), *GLYPHS)
    got = rows(tmp_path / "smoke_det.csv")
    assert [r["run"] for r in got] == ["reference", "again", "killed after 1, resumed",
                                       "other thread count"]
    assert got[1]["bit_equal_to_reference"] == got[2]["bit_equal_to_reference"] == "True"
    assert got[1]["weights_sha256"] == got[0]["weights_sha256"]


def test_omniglot_maml(tmp_path, tiny_config) -> None:
    run_script("omniglot_maml", "--config", str(tiny_config), "--run-dir", str(tmp_path / "run"),
               "--tag", "smoke", "--results-dir", str(tmp_path), "--set", "train.iterations=2")
    (got,) = rows(tmp_path / "omniglot_maml_smoke.csv")
    assert got["iterations"] == "2" and got["test_tasks"] == "3"
    assert 0 <= float(got["accuracy"]) <= 100 and float(got["ci95"]) >= 0


def test_gpu_omniglot_script_on_the_cpu(tmp_path, tiny_config) -> None:
    env = {**os.environ, "OUT": str(tmp_path), "DEVICE": "cpu", "MIN_ITERATIONS": "2",
           "RUN_ROOT": str(tmp_path / "runs"), "METAPRUNE_THREADS": "1", "OMP_NUM_THREADS": "1"}
    (tmp_path / "runs").mkdir()
    done = subprocess.run(["bash", str(BENCH / "gpu_omniglot.sh")], cwd=ROOT, env=env,
                          input=f"smoke {tiny_config} 0\n", capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "smoke:" in done.stdout and "-> 2 iterations" in done.stdout
    (got,) = rows(tmp_path / "omniglot_maml_smoke.csv")
    assert got["iterations"] == "2" and got["device"] == "cpu"
    assert (tmp_path / "smoke.tar").stat().st_size > 0


@pytest.mark.slow  # six metaprune processes (train, prune x 2, evaluate x 3): ~20 s alone
def test_out_of_the_box(tmp_path, tiny_config) -> None:
    run_script("out_of_the_box", "--config", str(tiny_config), "--run-dir", str(tmp_path / "run"),
               "--name", "smoke_ootb", "--sparsity", "0.5", "--prune-options",
               "--schedule 0.5x1 --retrain-iters 1 --tasks 2 --val-tasks 0 --workers 1",
               results=tmp_path)
    got = rows(tmp_path / "smoke_ootb.csv")
    assert [r["model"] for r in got] == ["dense", "anp", "magnitude"]
    assert all(r["tasks"] == "3" for r in got)
    assert finite(got[1]["diff_vs_dense"]) and finite(got[1]["diff_vs_magnitude"])
    # the time the runs' own records hold: the dense checkpoint's and every round's
    run = tmp_path / "run"
    dense = read_meta(run / "dense" / "model")
    assert float(got[0]["work_seconds"]) == round(dense["train_seconds"])
    state = json.loads((run / "anp" / "state.json").read_text())
    assert float(got[1]["work_seconds"]) == round(sum(r["round_seconds"] for r in state["rounds"]))


@pytest.mark.slow
def test_out_of_the_box_skip_baselines(tmp_path, tiny_config) -> None:
    """--skip-baselines: dense and the asked-for row only, with no magnitude comparison."""
    run_script("out_of_the_box", "--config", str(tiny_config), "--run-dir", str(tmp_path / "run"),
               "--name", "smoke_ootb", "--sparsity", "0.5", "--skip-baselines", "--also",
               "--retrain-iters 2", "--prune-options",
               "--schedule 0.5x1 --tasks 2 --val-tasks 0 --workers 1", results=tmp_path)
    got = rows(tmp_path / "smoke_ootb.csv")
    assert [r["model"] for r in got] == ["dense", "anp, --retrain-iters 2"]
    assert finite(got[1]["diff_vs_dense"]) and not got[1].get("diff_vs_magnitude")
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.is_dir()) == [
        "anp_retrain_iters_2", "dense"]
    with pytest.raises(AssertionError, match="exited with 2"):  # nothing asked for: refused
        run_script("out_of_the_box", "--config", str(tiny_config), "--run-dir",
                   str(tmp_path / "run2"), "--name", "smoke_ootb2", "--skip-baselines",
                   results=tmp_path)
    with pytest.raises(AssertionError, match="exited with 2"):  # dense only, yet pruning asked
        run_script("out_of_the_box", "--config", str(tiny_config), "--run-dir",
                   str(tmp_path / "run2"), "--name", "smoke_ootb2", "--dense-only", "--paper",
                   results=tmp_path)
    # --dense-only on the same run: its dense model and test result are reused, nothing pruned
    run_script("out_of_the_box", "--config", str(tiny_config), "--run-dir", str(tmp_path / "run"),
               "--name", "smoke_dense", "--dense-only", results=tmp_path)
    (dense,) = rows(tmp_path / "smoke_dense.csv")
    assert sorted(dense) == ["accuracy", "ci95", "model", "tasks", "work_seconds"]
    assert all(dense[k] == got[0][k] for k in ("model", "accuracy", "ci95", "tasks"))
    assert float(dense["work_seconds"]) == round(read_meta(tmp_path / "run" / "dense" / "model")
                                                 ["train_seconds"])


def test_deploy_bn_modes(curve, capsys) -> None:
    run, _ = curve
    run_script("deploy_bn_modes", str(run / "dense"), "--tasks", "2", "--queries", "2",
               *GLYPH_OPTIONS)
    out = capsys.readouterr().out
    for mode in ("library (query batch)", "runtime bn=batch", "runtime bn=support"):
        assert mode in out


def test_device_report(curve, tmp_path) -> None:
    run, _ = curve
    run_script("device_report", "--model", f"anp={run / 'anp' / 'round02'}", "--tasks", "2",
               "--queries", "2", "--mem-reps", "1", "--reps-adapt", "1", "--reps-infer", "1",
               "--out", str(tmp_path / "smoke_report"), *GLYPH_OPTIONS)
    (anp,) = rows(tmp_path / "smoke_report.csv")  # one model: one memory-probe process
    assert anp["model"] == "anp" and int(anp["nonzero_params"]) < 0.4 * int(anp["params"])
    assert float(anp["mflops_nonzero"]) < float(anp["mflops_dense"])
    assert int(anp["stored_bytes"]) > 0 and int(anp["dense_bytes"]) == 4 * int(anp["params"])
    assert float(anp["latency_ms_b1"]) > 0 and int(anp["adapt_peak_rss_kb"]) >= 0
    assert float(anp["latency_ms_b1_bn"]) > 0
    assert float(anp["latency_vs_first"]) == float(anp["latency_bn_vs_first"]) == 1.0
    if importlib.util.find_spec("onnxruntime"):  # the onnx extra: timed in its own process
        assert float(anp["ort_latency_ms_b1"]) > 0 and float(anp["ort_latency_vs_first"]) == 1.0
    assert finite(anp["accuracy"])


def test_anp_timing(tmp_path) -> None:
    run_script("anp_timing", "--out", str(tmp_path), "--repeats", "1", "--tasks", "2",
               "--width", "4", "--classes", "10", "--woodbury-max-rows", "50")
    got = rows(tmp_path / "anp_timing.csv")
    assert [r["layer"] for r in got] == ["features.0.0", "features.1.0", "features.2.0",
                                         "features.3.0", "head"]
    assert all(float(r["speedup"]) > 0 and float(r["max_rel_diff"]) < 1e-3 for r in got)


def test_anp_h_data(tmp_path) -> None:
    run_script("anp_h_data", "--iterations", "1", "--width", "4", "--meta-batch", "2",
               "--eval-tasks", "2", "--sparsities", "0.5", "--retrain-iters", "1",
               "--classes", "10,5", "--score-tasks", "2", "--work", str(tmp_path / "work"),
               "--out", str(tmp_path))
    got = rows(tmp_path / "anp_h_data.csv")
    assert {(r["setting"], r["method"], r["h_data"]) for r in got} >= {
        ("dense", "dense", ""), ("one-shot", "anp", "support"), ("iterative", "magnitude", "")}
    assert len(got) == 1 + 2 * 5 and all(finite(r["accuracy"]) for r in got)


def test_maxpool(tmp_path) -> None:
    run_script("maxpool", "--shapes", "2", "--budget", "0.01", "--name", "smoke_pool",
               results=tmp_path)
    got = rows(tmp_path / "smoke_pool.csv")
    assert [r["shape"] for r in got] == ["5x32x28x28", "5x32x14x14"]
    assert all(float(r["no_grad_speedup"]) > 0 and float(r["grad_speedup"]) > 0 for r in got)


def test_demo_time(tmp_path) -> None:
    run_script("demo_time", "--out", str(tmp_path / "demo"), "--name", "smoke_demo", "--",
               "--iterations", "2", "--retrain-iters", "1", "--tasks", "3", "--width", "4",
               "--sparsity", "0.5", "--methods", "anp,magnitude", "--workers", "1",
               results=tmp_path)
    got = rows(tmp_path / "smoke_demo.csv")
    assert [r["model"] for r in got][0] == "dense" and len(got) == 3
    assert "took **" in (tmp_path / "smoke_demo.md").read_text()


def test_speed_worker_anchor_and_report(tmp_path, monkeypatch) -> None:
    """The measuring worker and the anchor in this process, then the report from their
    output (the real run starts them as processes, in several modes)."""
    run_script("speed", "--worker", "--smoke", "--grid", "--anp", "--default-malloc",
               "--json", str(tmp_path / "w.json"), "--seconds", "0", "--eval-cap", "0")
    ours = json.loads((tmp_path / "w.json").read_text())
    assert len(ours["train"]) == 2 and ours["eval"]["tasks"] == 4 and len(ours["anp"]) == 2
    per_it = {k: v["seconds"] / v["iterations"] for k, v in ours["train"].items()}
    run_script("speed", "--anchor", "--smoke", "--json", str(tmp_path / "a.json"),
               "--seconds", "0", "--ours", json.dumps(per_it))
    anchor = json.loads((tmp_path / "a.json").read_text())
    assert anchor["train"].keys() == ours["train"].keys()
    monkeypatch.syspath_prepend(str(BENCH))
    import speed

    monkeypatch.setattr(speed, "RESULTS", tmp_path)
    for name in ("DEMO", "GRID", "EVAL_TASKS", "ANP_WIDTH"):  # restored after the test
        monkeypatch.setattr(speed, name, getattr(speed, name))
    speed.shrink()
    modes = ["1 process x 1 thread", "2 workers x 1 thread", "before (defaults)",
             "1 process x 1 thread, glibc's default allocator"]
    results = {(m, load): ours for m in modes for load in ("idle", "one busy process")}
    args = speed.argparse.Namespace(name="smoke_speed", seconds=0.0, eval_cap=0.0,
                                    device="cpu", default_malloc=False)
    speed.write(args, results, anchor, modes[0], modes[1], modes[2])
    got = rows(tmp_path / "smoke_speed.csv")
    assert {r["mode"] for r in got} == set(modes) | {"higher (anchor), 1 x 1"}
    assert all(float(r["vs_1p1t_idle"]) > 0 for r in got)
    assert "## Summary" in (tmp_path / "smoke_speed.md").read_text()


def test_anchor_higher(capsys) -> None:
    pytest.importorskip("higher")
    run_script("anchor_higher")
    out = capsys.readouterr().out
    diff = float(out.split("meta-gradient max |higher - functional_call| = ")[1].split()[0])
    assert diff < 1e-4
    assert out.count("ms/iteration") == 2 and "ms/task" in out


def test_dense_budget(tmp_path) -> None:
    # it reads the committed results and writes to --out-dir
    run_script("dense_budget", "--name", "smoke_budget", "--out-dir", str(tmp_path),
               results=BENCH / "results")
    got = rows(tmp_path / "smoke_budget.csv")
    assert got and {r["n_way"] for r in got} == {"5", "20"}
    assert all(int(r["tasks_seen"]) > 0 and finite(r["gap_to_published"]) for r in got)
    assert "per doubling" in (tmp_path / "smoke_budget.md").read_text()


def test_make_readme_pages() -> None:
    """The generator renders every page from the committed results (the pages themselves are
    compared in tests/test_regenerated_pages.py): contents, grouped settings, verdict words."""
    sys.path.insert(0, str(BENCH))
    try:
        import make_readme

        page = make_readme.render()
        assert page.startswith("# Benchmarks") and "## Results: accuracy vs sparsity" in page
        # a table of contents whose every entry is a heading of the page; settings grouped
        contents = page.split("## Contents\n", 1)[1].split("\n\n## ", 2)[0]
        anchors = {make_readme.anchor(h) for h in
                   (line.lstrip("#").strip() for line in page.splitlines()
                    if line.startswith(("## ", "### ")))}
        entries = [line.split("](#")[1].rstrip(")") for line in contents.splitlines()
                   if "](#" in line]
        assert entries and set(entries) <= anchors
        settings = [line for line in page.splitlines() if line.startswith("### Setting ")]
        assert len(settings) == len(set(settings)) and "### Setting A" in settings
        assert "met by the CI only" not in page
        for templated in make_readme.TEMPLATED_PAGES:
            assert "{{" not in make_readme.render_templated(templated)
    finally:
        sys.path.remove(str(BENCH))


@pytest.mark.slow  # exports a .pte program (torch.export + ExecuTorch lowering) and probes
# memory in two processes: ~20 CPU-seconds (tests/test_deploy_executorch.py covers the export)
def test_executorch_report(curve, tmp_path) -> None:
    pytest.importorskip("executorch.exir")
    run, _ = curve
    run_script("executorch_report", "--model", f"anp={run / 'anp' / 'round02'}",
               "--dataset", "glyphs", *GLYPH_OPTIONS, "--tasks", "2", "--queries", "2",
               "--reps", "1", "--mem-reps", "1", "--out", str(tmp_path / "smoke_et"))
    (got,) = rows(tmp_path / "smoke_et.csv")
    assert got["model"] == "anp" and got["tasks"] == "2" and int(got["pte_bytes"]) > 0
    assert got["delegate"] == "xnnpack"  # the default export
    assert float(got["max_logit_diff"]) < 1e-2  # the two runtimes compute the same thing
    # against float64, each runtime errs about as little as float32 rounding can
    assert float(got["weight_err_f64_torch"]) < 1e-4
    assert float(got["weight_err_f64_executorch"]) < 1e-4
    assert float(got["weight_err_f64_exported_eager"]) < 1e-4
    assert float(got["max_weight_diff_torch_backends"]) < 1e-4
    assert 0 <= int(got["tasks_weight_diff_over_tol"]) <= 2
    assert 0 <= int(got["tasks_same_classes"]) <= 2
    assert finite(got["acc_torch"]) and float(got["adapt_ms_executorch"]) > 0


@pytest.mark.parametrize("recipe, n_commands", [("structured_D.sh", 3),
                                                ("structured_D_memory.sh", 4)])
def test_structured_d_recipe_calls_existing_scripts_with_their_flags(recipe: str,
                                                                    n_commands: int) -> None:
    """The structured_D recipes need real data and hours, so they are not run here: every
    ``python benchmarks/X.py`` command in one must name a script whose --help lists each of the
    flags the recipe passes (a renamed or removed flag fails here, not after an hour)."""
    text = (BENCH / recipe).read_text().replace("\\\n", " ")
    commands = [shlex.split(line, comments=True) for line in map(str.strip, text.splitlines())
                if line.startswith("python benchmarks/")]
    assert len(commands) == n_commands
    for cmd in commands:
        script = ROOT / cmd[1]
        assert script.exists(), f"{recipe} calls a missing script: {cmd[1]}"
        shown = subprocess.run([sys.executable, str(script), "--help"], capture_output=True,
                               text=True, timeout=120, cwd=ROOT)
        assert shown.returncode == 0, shown.stderr
        flags = {t for t in cmd[2:] if t.startswith("--")}
        missing = [f for f in flags if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])",
                                                     shown.stdout)]
        assert not missing, f"{cmd[1]} does not take {missing}"


def test_validation_curves(tmp_path, tiny_config) -> None:
    from metaprune.cli import main as cli
    from metaprune.evaluation import EvalResult, paired_difference

    assert cli(["train", "--config", str(tiny_config), "--out", str(tmp_path / "d"),
                "--workers", "1", "--no-progress"]) == 0
    prune = ["prune", str(tmp_path / "d" / "model"), "--schedule", "0.3x2", "--sparsity", "0.6",
             "--retrain-iters", "1", "--tasks", "2", "--val-tasks", "0", "--workers", "1",
             "--no-progress"]
    for method in ("anp", "magnitude"):
        assert cli([*prune, "--method", method, "--out", str(tmp_path / method)]) == 0
    run_script("validation_curves", "--run", f"a={tmp_path / 'anp'}",
               "--run", f"m={tmp_path / 'magnitude'}", "--tasks", "8", "--no-progress",
               "--name", "smoke_val", results=tmp_path)
    got = rows(tmp_path / "smoke_val.csv")
    assert [(r["run"], r["round"]) for r in got] == [("a", "1"), ("a", "2"), ("m", "1"), ("m", "2")]
    # the cached evaluations are what the rows say: drop = dense minus the round, paired
    v = tmp_path / "magnitude" / "validation"
    dense, r2 = EvalResult.load(v / "dense.json"), EvalResult.load(v / "round02.json")
    assert float(got[3]["drop"]) == round(100 * paired_difference(dense, r2).mean, 2)
    a2 = EvalResult.load(tmp_path / "anp" / "validation" / "round02.json")
    assert float(got[3]["second_minus_first"]) == round(100 * paired_difference(r2, a2).mean, 2)
    assert r2.task_fingerprint == a2.task_fingerprint and r2.accuracies.size == 8


def test_dense_extension(tmp_path, tiny_config) -> None:
    from metaprune.cli import main as cli
    from metaprune.evaluation import EvalResult, paired_difference

    start = ["--set", "train.iterations=2"]
    assert cli(["train", "--config", str(tiny_config), "--out", str(tmp_path / "d"), *start,
                "--workers", "1", "--no-progress"]) == 0
    run_script("dense_extension", "--config", str(tiny_config), *start, "--start",
               str(tmp_path / "d"), "--to", "3,4", "--run-dir", str(tmp_path / "ext"),
               "--tasks", "5", "--workers", "1", "--no-progress", "--name", "smoke_ext",
               results=tmp_path)
    got = rows(tmp_path / "smoke_ext.csv")
    assert [r["iterations"] for r in got] == ["2", "3", "4"] and got[0]["test_gain"] == ""
    assert read_meta(tmp_path / "ext" / "d4" / "model")["extended_from"] == [2, 3]
    # the rows are the cached evaluations: a paired gain on the same test tasks; `train` made
    # the extended models' (on --tasks), the start's 3 config tasks are not reused for 5
    d3, d4 = (EvalResult.load(tmp_path / "ext" / f"d{n}" / "eval_test.json") for n in (3, 4))
    assert (tmp_path / "d" / "extension_test.json").exists()
    assert not (tmp_path / "ext" / "d4" / "extension_test.json").exists()
    assert float(got[2]["test_gain"]) == round(100 * paired_difference(d4, d3).mean, 2)
    train4 = EvalResult.load(tmp_path / "ext" / "d4" / "extension_train.json")
    assert train4.accuracies.size == 5 and float(got[2]["train_split_accuracy"]) == round(
        100 * train4.accuracy, 2)
    assert (train4.meta["tasks_source"], d4.meta["tasks_source"]) == ("glyphs/train",
                                                                      "glyphs/test")
    # run again: every model is there and evaluated, so no train command runs
    log = tmp_path / "ext" / "commands.log"
    before = log.read_text()
    run_script("dense_extension", "--config", str(tiny_config), *start, "--start",
               str(tmp_path / "d"), "--to", "3,4", "--run-dir", str(tmp_path / "ext"),
               "--tasks", "5", "--workers", "1", "--no-progress", "--name", "smoke_ext",
               results=tmp_path)
    assert log.read_text() == before and rows(tmp_path / "smoke_ext.csv") == got


def test_activation_memory(curve, tmp_path) -> None:
    run, _ = curve
    report = tmp_path / "smoke_dev.csv"
    report.write_text("model,checkpoint,adapt_peak_rss_kb\n"
                      f"dense,{run / 'dense'},400\nanp,{run / 'anp' / 'round02'},100\n")
    run_script("activation_memory", "--report", "smoke_dev", "--support", "5", "--name",
               "smoke_act", results=tmp_path)
    dense, anp = rows(tmp_path / "smoke_act.csv")
    # masks zero weights but keep every channel: the same activations, the report's peaks
    assert int(dense["activation_kib"]) > 0 and dense["activation_kib"] == anp["activation_kib"]
    assert (anp["activations_vs_first"], anp["peak_vs_first"]) == ("1.0", "0.25")
    assert dense["params"] == anp["params"]


def test_memory_budget(tmp_path) -> None:
    run_script("memory_budget", "--widths", "6,8,10,12", "--image-size", "16", "--support", "3",
               "--sparsities", "0.7", "--budgets", "0.45,0.01", "--name", "smoke_mb",
               results=tmp_path)
    uniform, budget, unreachable = rows(tmp_path / "smoke_mb.csv")
    assert uniform["memory_budget"] == "" and budget["memory_budget"] == "0.45"
    assert float(budget["activations_vs_full"]) <= 0.45 < float(uniform["activations_vs_full"])
    assert float(budget["weights_vs_full"]) <= float(uniform["weights_vs_full"])
    assert "out of reach" in unreachable["widths"]


def test_interleaved_medians_visits_every_function_in_turns(monkeypatch) -> None:
    """Timings taken in turns: the calls of each function are spread over all the rounds (the
    order of calls is round by round), each is called warmup + rounds x (reps // rounds)
    times, and a slower function gets the larger median."""
    monkeypatch.syspath_prepend(str(BENCH))
    import _report

    calls: list[str] = []

    def fn(name: str, spin: int):
        def run() -> None:
            calls.append(name)
            sum(range(spin))
        return run

    medians = _report.interleaved_medians({"fast": fn("fast", 10), "slow": fn("slow", 200_000)},
                                          reps=9, rounds=3, warmup=2)
    assert calls[:4] == ["fast", "fast", "slow", "slow"]  # warm-up, then turns of 3 calls
    assert calls[4:] == (["fast"] * 3 + ["slow"] * 3) * 3
    assert medians["slow"] > medians["fast"] > 0
