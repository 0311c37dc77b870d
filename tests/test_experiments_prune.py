"""End-to-end tests of experiments.prune and experiments.early, in-process
(`run(config, workdir)`), plus the one thing that needs a process: `main`'s
usage-error output and --help."""

import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from experiments import cell, early, koopman_window, pipeline, prune, resources, workdir
from experiments.config import SGD, EarlyConfig, PruneConfig
from kpjax import flatten, pruning
from kpjax.flatten import count_params

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(model="mnistnet_tiny", max_train_examples=384, max_test_examples=200,
            batch_size=64, eval_batch_size=100, seeds=(0, 1))


def rows(path):
    return json.loads(path.read_text())["rows"]


def test_prune_end_to_end_files_compression_and_resume(tmp_path, monkeypatch):
    work = tmp_path / "prune"
    methods = ("kmp", "gmp", "kgp", "grad", "random")
    config = PruneConfig(**TINY, trajectory_steps=6, compressions=(2,), methods=methods)
    summary = prune.run(config, str(work))
    assert "kmp" in summary
    for name in ("results.csv", "results.json", "overlap.csv", "summary.md",
                 "fig_accuracy.png", "fig_overlap.png", "fig_spectrum.png", "config.json"):
        assert (work / name).stat().st_size > 0, name
    table = rows(work / "results.json")
    with open(work / "results.csv") as f:
        header = next(csv.reader(f))
    for column in ("model", "method", "rcond", "compression", "seed", "phase", "top1", "top5",
                   "loss", "compression_achieved", "speedup"):
        assert column in header
    assert header.index("rcond") == header.index("method") + 1
    # rcond: the cutoff of the fit the scores read; none for what reads no fit.
    assert {(r["method"], r["rcond"]) for r in table if r["rcond"] in (None, 1e-6)} == {
        ("dense", None), ("kmp", 1e-6), ("gmp", None), ("kgp", 1e-6), ("grad", None), ("random", None)}
    assert "seconds" not in header  # wall times live in timings.csv
    assert "seconds" in (work / "timings.csv").read_text().splitlines()[0]
    cells = [r for r in table if r["method"] != "dense" and r["rcond"] in (None, 1e-6)]
    assert len(cells) == 5 * 2 * 2  # methods × seeds × (pruned, finetuned)
    # The rank-cutoff sensitivity: KMP and KGP at the two other cutoffs, before refinement.
    sensitivity = {(r["method"], r["rcond"], r["phase"]) for r in table
                   if r["rcond"] not in (None, 1e-6)}
    assert sensitivity == {(m, c, "pruned") for m in ("kmp", "kgp") for c in (1e-7, 0.0)}
    summary_text = (work / "summary.md").read_text()
    assert "## Sensitivity to the rank cutoff" in summary_text
    # One windows row per seed and cutoff, the run's first.
    windows_rows = rows(work / "windows.json")
    assert [(w["seed"], w["rcond"]) for w in windows_rows] == [
        (s, r) for s in (0, 1) for r in (1e-6, 1e-7, 0.0)]
    assert not any("@" in k for w in windows_rows for k in w)
    assert (work / "cells" / "kmp-rcond1e-07-c2-seed0" / "metrics.json").exists()
    for r in cells:
        assert abs(r["compression_achieved"] - 2.0) < 0.01
        assert r["speedup"] > 1.0
        assert 0.0 <= r["top1"] <= r["top5"] <= 1.0
    # ShrinkBench's metrics.json per cell, consistent with the rows.
    shrinkbench = json.loads((work / "cells" / "kmp-c2-seed1" / "metrics.json").read_text())
    assert set(shrinkbench) >= {"size", "size_nz", "compression_ratio", "flops", "flops_nz",
                                "theoretical_speedup", "loss", "val_acc1", "val_acc5", "finetuned"}
    kmp = {r["phase"]: r for r in table if (r["method"], r["seed"]) == ("kmp", 1)}
    assert shrinkbench["val_acc1"] == kmp["pruned"]["top1"]
    assert shrinkbench["finetuned"]["val_acc1"] == kmp["finetuned"]["top1"]
    assert shrinkbench["compression_ratio"] == pytest.approx(kmp["pruned"]["compression_achieved"])
    assert shrinkbench["flops"] / shrinkbench["flops_nz"] == pytest.approx(kmp["pruned"]["speedup"])
    assert (work / "cells" / "dense-c1-seed0" / "metrics.json").exists()
    overlaps = rows(work / "overlap.json")
    assert {(r["method"], r["rcond"], r["other"]) for r in overlaps} == {
        (m, r, other) for m, other in (("kmp", "gmp"), ("kgp", "grad")) for r in (1e-6, 1e-7, 0.0)}
    assert all(0.0 <= r["jaccard"] <= 1.0 for r in overlaps)

    # A rerun with one more compression computes only the new cells, from
    # the cached windows (no training before them).
    computed = []
    real_cell = prune.cell.run_cell
    monkeypatch.setattr(prune.cell, "run_cell",
                        lambda *a, **k: computed.append(a[2:5]) or real_cell(*a, **k))
    monkeypatch.setattr(prune, "_dense_variables", lambda *a: pytest.fail("retrained"))
    prune.run(PruneConfig(**TINY, trajectory_steps=6, compressions=(2, 8), methods=methods), str(work))
    scored = [(m, 1e-6 if m in ("kmp", "kgp") else None) for m in methods] + [
        (m, c) for c in (1e-7, 0.0) for m in ("kmp", "kgp")]
    assert sorted(computed, key=str) == sorted(
        ((prune.pipeline.Variant(*v), 8.0, s) for v in scored for s in (0, 1)), key=str)
    again = rows(work / "results.json")
    assert again[:len(table)] == table
    assert {r["compression"] for r in again if r["method"] != "dense"} == {2.0, 8.0}

    # Other settings in the same workdir are refused.
    with pytest.raises(ValueError, match="other settings"):
        prune.run(PruneConfig(**TINY, trajectory_steps=7), str(work))
    # A workdir older than a setting resumes while the setting keeps its
    # default, and is refused otherwise.
    saved = json.loads((work / "config.json").read_text())
    del saved["score_batches"]
    (work / "config.json").write_text(json.dumps(saved))
    newer = PruneConfig(**TINY, trajectory_steps=6, compressions=(2, 8), methods=methods)
    with pytest.raises(ValueError, match="other settings.*score_batches"):
        prune.run(dataclasses.replace(newer, score_batches=2), str(work))
    prune.run(newer, str(work))
    assert json.loads((work / "config.json").read_text())["score_batches"] == 1

    # A CSV cut short is rewritten from results.json by a run with nothing to do;
    # --summarize_only rewrites summary and figures without touching config.json.
    whole_csv = (work / "results.csv").read_text()
    (work / "results.csv").write_text(whole_csv[:100])
    settings = (work / "config.json").read_bytes()
    (work / "summary.md").unlink()
    done = PruneConfig(**TINY, trajectory_steps=6, compressions=(2, 8), methods=methods)
    prune.run(dataclasses.replace(done, summarize_only=True), str(work))
    assert (work / "results.csv").read_text() == whole_csv
    assert (work / "summary.md").exists() and (work / "config.json").read_bytes() == settings

    # --summarize_only waits for no one: a workdir in use is refused, by the run's pid.
    with workdir.claim(str(work)):
        with pytest.raises(workdir.WorkdirInUseError, match=f"in use by pid {os.getpid()}"):
            prune.run(dataclasses.replace(done, summarize_only=True), str(work))

    # Damaged or missing cells/*/metrics.json are rebuilt from results.json, byte for byte,
    # by a resumed run and by --summarize_only (from the cached windows).
    metrics = sorted((work / "cells").glob("*/metrics.json"))
    assert len(metrics) == len({(r["method"], r["rcond"], r["compression"], r["seed"]) for r in again})
    whole = {p: p.read_bytes() for p in metrics}
    for summarize in (False, True):
        metrics[0].write_bytes(whole[metrics[0]][:40])
        metrics[-1].unlink()
        prune.run(dataclasses.replace(done, summarize_only=summarize), str(work))
        assert {p: p.read_bytes() for p in metrics} == whole

    # A damaged window cache is one clear error naming it.
    (work / "seed1" / "window.npz").write_bytes(b"PK\x03\x04 cut")
    with pytest.raises(ValueError, match=r"seed1/window.npz \(a cached window\) is damaged"):
        prune.run(done, str(work))


def test_a_second_run_on_a_busy_workdir_stops_and_the_first_completes(tmp_path):
    work = tmp_path / "busy"
    flags = ["--model=mnistnet_tiny", "--max_train_examples=384", "--max_test_examples=200",
             "--batch_size=64", "--eval_batch_size=100", "--methods=kmp,gmp", "--compressions=2,4",
             "--trajectory_steps=4", "--finetune_epochs=0", f"--workdir={work}"]
    first = subprocess.Popen([sys.executable, "-m", "experiments.prune", *flags], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (work / ".lock").exists() or (work / ".lock").read_text().strip() != str(first.pid):
            assert first.poll() is None and time.time() < deadline, "the first run never took the lock"
            time.sleep(0.05)
        config = PruneConfig(model="mnistnet_tiny", max_train_examples=384, max_test_examples=200,
                             batch_size=64, eval_batch_size=100, methods=("kmp", "gmp"),
                             compressions=(2, 4), trajectory_steps=4, finetune_epochs=0)
        with pytest.raises(ValueError, match=f"workdir {work} in use by pid {first.pid}"):
            prune.run(config, str(work))
    finally:
        _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr[-2000:]
    cells = {(r["method"], r["rcond"], r["compression"]) for r in rows(work / "results.json")
             if r["method"] != "dense"}
    scored = [("kmp", 1e-6), ("gmp", None), ("kmp", 1e-7), ("kmp", 0.0)]  # PruneConfig's cutoffs
    assert cells == {(m, r, c) for m, r in scored for c in (2.0, 4.0)}


def test_early_end_to_end(tmp_path):
    work = tmp_path / "early"
    config = EarlyConfig(**TINY, window_steps=4, prune_epochs=(0, 1), compressions=(4,),
                         finetune_epochs=0)
    early.run(config, str(work))
    for name in ("fig_accuracy_vs_epoch.png", "fig_overlap_vs_epoch.png",
                 "fig_lambda_vs_epoch.png", "fig_spectra.png", "summary.md", "windows.csv"):
        assert (work / name).stat().st_size > 0, name
    table = [r for r in rows(work / "results.json") if r["method"] != "dense"]
    # EarlyConfig's defaults: KMP, subspace KMP and GMP; the Koopman methods also
    # at the two other default cutoffs.
    koopman_methods = ("kmp", "kmp_subspace")
    scored = [(m, r) for m in koopman_methods for r in (1e-6, 1e-7, 0.0)] + [("gmp", None)]
    assert {(r["prune_epoch"], r["method"], r["rcond"], r["seed"]) for r in table} == {
        (e, m, r, s) for e in (0, 1) for m, r in scored for s in (0, 1)}
    assert all(r["phase"] == "pruned" for r in table)
    windows = rows(work / "windows.json")
    assert sorted((w["prune_epoch"], w["seed"], w["rcond"]) for w in windows) == sorted(
        (e, s, r) for e in (0, 1) for s in (0, 1) for r in (1e-6, 1e-7, 0.0))
    for w in windows:
        assert w["lambda1_separation"] > 0
        assert 0.0 < w["energy_kept"] <= 1.0
        assert w["cluster_size"] >= 1
        if w["rcond"] == 0.0:
            assert w["energy_kept"] == 1.0  # nothing but exact zeros dropped
    summary = (work / "summary.md").read_text()
    for section in ("## The Koopman fit at each rank cutoff", "## Sensitivity to the rank cutoff",
                    "subspace KMP vs GMP:", "## Early-bird tickets"):
        assert section in summary, section
    # Early-bird mask distances between the windows of epochs 0 and 1, per method and seed.
    distances = rows(work / "mask_distance.json")
    assert {(r["prune_epoch"], r["previous_epoch"], r["method"], r["seed"]) for r in distances} == {
        (1, 0, m, s) for m in ("kmp", "kmp_subspace", "gmp") for s in (0, 1)}
    assert all(0.0 <= r["distance"] <= 1.0 for r in distances)
    # Spline-EB: the code distance of the two window ends, per seed, in the summary and the map.
    codes = rows(work / "spline_distance.json")
    assert {(r["epoch"], r["other_epoch"], r["seed"]) for r in codes} == {(1, 0, s) for s in (0, 1)}
    assert all(0.0 < r["distance"] <= 1.0 for r in codes)
    assert "## Spline early-bird tickets" in summary
    assert (work / "fig_spline_distance.png").stat().st_size > 0


def test_early_recorded_once_equals_the_branch_windows_and_slides(tmp_path):
    """--window_stride: one recording of the run gives the same --prune_epochs
    windows as the branch recordings (same batches, same steps), and the
    sliding windows at those starts have their λ₁."""
    base = dict(**{**TINY, "seeds": (0,)}, window_steps=4, prune_epochs=(0, 1, 2),
                compressions=(4,), methods=("kmp", "gmp", "grad"), finetune_epochs=0,
                rcond=(1e-6,))
    branches, once = tmp_path / "branches", tmp_path / "once"
    early.run(EarlyConfig(**base), str(branches))
    config = EarlyConfig(**base, window_stride=2)
    summary = early.run(config, str(once))
    setup = pipeline.Setup(config)
    for e in (0, 1, 2):
        a, b = (koopman_window.cached_window(setup, str(w / "seed0" / f"window_epoch{e}.npz"))
                for w in (branches, once))
        for x, y in zip(jax.tree_util.tree_leaves(a.variables), jax.tree_util.tree_leaves(b.variables)):
            np.testing.assert_array_equal(x, y)
        for m in ("kmp", "gmp", "grad"):
            v = setup.variant(m)
            np.testing.assert_allclose(b.scores[v], a.scores[v], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(b.eigenvalues, a.eigenvalues, rtol=1e-8)
    top1 = {tuple(r[k] for k in ("prune_epoch", "method")): r["top1"] for r in rows(once / "results.json")}
    assert top1 == {tuple(r[k] for k in ("prune_epoch", "method")): r["top1"]
                    for r in rows(branches / "results.json")}
    assert not (once / "seed0" / "trajectory.kpt").exists()
    # 6 steps an epoch: the recording spans steps 0–16, windows of 4 every 2.
    sliding = rows(once / "sliding.json")
    assert [r["start_step"] for r in sliding] == [0, 2, 4, 6, 8, 10, 12]
    lam = {r["prune_epoch"]: r["lambda1_distance"] for r in rows(once / "windows.json")}
    by_start = {r["start_step"]: r for r in sliding}
    for e in (0, 1, 2):
        assert by_start[6 * e]["lambda1_distance"] == pytest.approx(lam[e], rel=1e-6)
    with np.load(once / "seed0" / "sliding_spectra.npz") as f:
        assert list(f["start_step"]) == [0, 2, 4, 6, 8, 10, 12] and f["eigenvalues"].shape == (7, 4)
        lam1 = np.abs(f["eigenvalues"][3][f["valid"][3]] - 1).min()
    assert lam1 == pytest.approx(lam[1], rel=1e-6)  # window 3 starts at epoch 1
    distances = rows(once / "sliding_distance.json")
    assert sorted((r["start_step"], r["method"], r["compression"]) for r in distances) == sorted(
        (s, m, 4.0) for s in (0, 2, 4, 6, 8, 10, 12) for m in ("kmp", "gmp"))
    assert all(np.isnan(r["distance"]) == (r["start_step"] == 0) for r in distances)
    assert all(0.0 <= r["distance"] <= 1.0 for r in distances if r["start_step"] > 0)
    assert "## Sliding windows" in summary and (once / "fig_sliding.png").stat().st_size > 0
    # A rerun finds everything done: nothing is recorded again.
    mtime = (once / "sliding.json").stat().st_mtime_ns
    assert "## Sliding windows" in early.run(config, str(once))
    assert (once / "sliding.json").stat().st_mtime_ns == mtime
    assert rows(once / "sliding.json") == sliding


def test_main_turns_bad_flags_into_one_usage_line_and_help_lists_every_flag(tmp_path):
    # What needs a process: main's output and exit status, and --help.
    result = subprocess.run(
        [sys.executable, "-m", "experiments.prune", "--compressions=2,1", f"--workdir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[0] == (
        "usage error: --compressions must be finite and > 1, got 1")
    assert "Traceback" not in result.stderr
    helped = subprocess.run([sys.executable, "-m", "experiments.early", "--help"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    # (absl exits 1 after --help)
    for flag in ("--model", "--workdir", "--seeds", "--compressions", "--data_dir",
                 "--finetune_lr", "--train_lr", "--prune_epochs", "resnet20", "kmp: Koopman"):
        assert flag in " ".join(helped.stdout.split()), flag  # absl wraps the help text
    assert "(default: 'runs/early')" in helped.stdout


def test_ctrl_c_says_how_to_resume_and_exits_130(tmp_path):
    work = tmp_path / "interrupted"
    # A shell's background job inherits SIGINT ignored, and Python then installs no
    # KeyboardInterrupt handler: the child puts Python's default back first.
    child = ("import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
             "runpy.run_module('experiments.prune', run_name='__main__', alter_sys=True)")
    run = subprocess.Popen([sys.executable, "-c", child, "--model=mnistnet_tiny",
                            "--max_train_examples=384", "--max_test_examples=200", "--batch_size=64",
                            "--methods=kmp,gmp", "--compressions=2", "--seeds=0",
                            # A window far longer than the wait below: on a loaded machine
                            # a short run could finish before the signal is sent.
                            "--trajectory_steps=3000", f"--workdir={work}"],
                           cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (work / ".lock").exists():  # running: the workdir is claimed
        assert run.poll() is None and time.time() < deadline
        time.sleep(0.05)
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 130, stderr[-2000:]
    assert "interrupted — rerun the same command to resume" in stderr
    assert "Traceback" not in stderr


def test_a_batch_larger_than_the_training_set_is_refused():
    with pytest.raises(ValueError, match="--batch_size 385 exceeds the 384 training examples; "
                                         "use --batch_size <= 384"):
        pipeline.Setup(PruneConfig(**{**TINY, "batch_size": 385}))


def test_seed_agreement_by_hand():
    from experiments import pipeline
    setup = pipeline.Setup(PruneConfig(**{**TINY, "seeds": (0, 1, 2)}, compressions=(2,),
                                       methods=("gmp",), rcond=(1e-6,)))
    n = setup.flat_spec.size
    assert count_params(setup.variables0["params"]) == n  # all prunable: c = 2 keeps n/2
    ramp = np.arange(n, dtype=np.float32)
    gmp = pipeline.Variant("gmp")
    windows = {seed: koopman_window.Window(setup.variables0, {gmp: scores}, np.ones(1), 0.0, {}, {})
               for seed, scores in ((0, ramp), (1, ramp.copy()), (2, ramp[::-1].copy()))}
    rows = cell.seed_agreement(setup, windows)
    assert {(r["method"], r["rcond"]) for r in rows} == {("gmp", None)}
    jaccard = {f"{r['seed_a']}~{r['seed_b']}": r["jaccard"] for r in rows}
    # Equal scores keep equal sets; reversed scores keep the top k from the other end.
    k = round(pruning.keep_fraction(2, n, n) * n)
    expected_other = max(0, 2 * k - n) / min(n, 2 * k)
    assert jaccard == {"0~1": 1.0, "0~2": pytest.approx(expected_other),
                       "1~2": pytest.approx(expected_other)}


def test_prune_runs_on_an_image_folder_with_its_own_classes_and_size(tmp_path, monkeypatch):
    from test_image_folder import png, write_zip
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    files = {f"{split}/{c}/{i}.png": png(rng.integers(0, 60, (28, 28), dtype=np.uint8) + 80 * k)
             for split, n in (("train", 32), ("test", 8)) for k, c in enumerate("abc") for i in range(n)}
    source = write_zip(str(tmp_path / "three.zip"), files)
    config = PruneConfig(model="mnistnet_tiny", data="imagefolder", data_dir=source, batch_size=16,
                         eval_batch_size=24, seeds=(0,), compressions=(2,), methods=("kmp", "gmp"),
                         trajectory_steps=4, finetune_epochs=0, rcond=(1e-6,))
    assert resources.model_spec(config).input_shape == (28, 28, 1)
    summary = prune.run(config, str(tmp_path / "work"))
    assert f"Data: imagefolder from the image folder {source}" in summary
    table = rows(tmp_path / "work" / "results.json")
    assert {r["data"] for r in table} == {"imagefolder"}
    # Three classes: top-5 is 1 whatever the model says.
    assert all(r["top5"] == 1.0 for r in table)
    with pytest.raises(ValueError, match="cannot take the image folder's 12×12×1 images"):
        small = {k: png(np.zeros((12, 12), np.uint8)) for k in files}
        resources.check_resources(PruneConfig(model="mnistnet_tiny", data="imagefolder",
                                              data_dir=write_zip(str(tmp_path / "small.zip"), small)))


def test_the_retrain_from_scratch_control(tmp_path):
    import jax
    from experiments import pipeline
    config = PruneConfig(**{**TINY, "seeds": (0,)}, trajectory_steps=4, compressions=(4,),
                         methods=("gmp",), finetune_epochs=0, pretrain_epochs=1, rcond=(1e-6,),
                         controls=("reinit", "small_dense"))
    summary = prune.run(config, str(tmp_path / "work"))
    assert "## Retrain from scratch" in summary and "## A small dense network" in summary
    controls = rows(tmp_path / "work" / "controls.json")
    assert [(r["method"], r["compression"], r["phase"]) for r in controls] == [
        ("gmp", 4.0, "reinit"), ("small_dense", 4.0, "small_dense")]
    assert abs(controls[0]["compression_achieved"] - 4.0) < 0.05
    # The small dense network has at most a quarter of the parameters, and not
    # far fewer (mnistnet_tiny's widths are 4, 8, 16: coarse steps).
    assert 4.0 <= controls[1]["compression_achieved"] < 6.0
    assert 0 < controls[1]["width_factor"] < 0.6 and controls[1]["speedup"] > 1
    # It really re-initializes (no kept weight is the pruned network's) and keeps the mask.
    setup = pipeline.Setup(config)
    window = koopman_window.cached_window(setup, str(tmp_path / "work" / "seed0" / "window.npz"))
    state, _ = cell.reinit_state(setup, window, setup.variant("gmp"), 4.0, 0)
    mask = window.mask(setup, setup.variant("gmp"), 4.0)
    for new, old, keep in zip(jax.tree_util.tree_leaves(state.params),
                              jax.tree_util.tree_leaves(window.variables["params"]),
                              jax.tree_util.tree_leaves(mask)):
        new, old, keep = np.asarray(new), np.asarray(old), np.asarray(keep)
        assert not np.any((new == old) & keep & (old != 0))
        assert np.all(new[~keep] == 0)


def test_input_shifts_and_prune_potential(tmp_path):
    config = PruneConfig(**{**TINY, "seeds": (0,)}, trajectory_steps=4, compressions=(2, 4),
                         methods=("gmp",), finetune_epochs=0, rcond=(1e-6,), eval_shifts=True,
                         shift_examples=50)
    summary = prune.run(config, str(tmp_path / "work"))
    assert "## Beyond accuracy: input shifts and prune potential" in summary
    table = rows(tmp_path / "work" / "results.json")
    assert not any("@" in k for r in table for k in r)
    shifted = rows(tmp_path / "work" / "shifts.json")
    # One row per cell's final phase, shift and severity: clean + 5 shifts × 5 severities.
    cells = {(r["method"], r["compression"], r["phase"]) for r in shifted}
    assert cells == {("dense", 1.0, "dense"), ("gmp", 2.0, "pruned"), ("gmp", 4.0, "pruned")}
    for c in cells:
        mine = [(r["shift"], r["severity"]) for r in shifted
                if (r["method"], r["compression"], r["phase"]) == c]
        assert len(mine) == len(set(mine)) == 1 + 5 * 5 and ("clean", 0) in mine
    assert all(0 <= r["top1"] <= 1 for r in shifted)


def test_prune_potential_table_by_hand():
    from experiments import report
    cells = [("dense", 1.0, 0.99, 0.90), ("gmp", 2.0, 0.99, 0.90), ("gmp", 4.0, 0.987, 0.80),
             ("kmp", 2.0, 0.95, 0.90), ("kmp", 4.0, 0.95, 0.899)]
    rows_ = [{"method": m, "compression": c, "phase": "finetuned", "top1": top1}
             for m, c, top1, _ in cells]
    shift_rows = [{"method": m, "compression": c, "phase": "finetuned", "shift": shift,
                   "severity": severity, "top1": value}
                  for m, c, top1, noise in cells
                  for shift, severity, value in (("clean", 0, top1), ("gaussian_noise", 1, noise),
                                                 ("gaussian_noise", 2, noise))]
    text = "\n".join(report.shift_section(rows_, shift_rows, ["gmp", "kmp"], [2.0, 4.0],
                                          "finetuned", 0.5, 50))
    # gmp: clean within 0.5 points up to 4, under noise only up to 2; kmp: never clean, 4 under noise.
    assert "| gmp | 4 | 2 |" in text and "| kmp | 1 | 4 |" in text


def test_prune_takes_the_seed_methods_by_name_and_synflow_is_iterative(tmp_path):
    from experiments import pipeline
    config = PruneConfig(**{**TINY, "seeds": (0,)}, trajectory_steps=4, compressions=(8,),
                         methods=("snip", "lp", "grasp", "gn", "synflow"), finetune_epochs=0,
                         rcond=(1e-6,), synflow_rounds=3, score_batches=2)
    prune.run(config, str(tmp_path / "work"))
    pruned = {r["method"]: r for r in rows(tmp_path / "work" / "results.json") if r["phase"] == "pruned"}
    assert set(pruned) == set(config.methods)
    assert all(abs(r["compression_achieved"] - 8.0) < 0.1 for r in pruned.values())
    setup = pipeline.Setup(config)
    window = koopman_window.cached_window(setup, str(tmp_path / "work" / "seed0" / "window.npz"))
    params = window.variables["params"]
    from kpjax.pruning import saliency
    objective = saliency.synflow_objective(setup.spec.module.apply, window.variables,
                                           setup.spec.input_shape)
    fraction = pruning.keep_fraction(8.0, count_params(params), setup.flat_spec.size)
    direct = pruning.synflow_iterative_mask(params, setup.select, objective, fraction, rounds=3)
    one_shot = pruning.method_flat_mask("synflow", window.scores[setup.variant("synflow")], setup.flat_spec,
                                        count_params(params), 8.0)
    import jax
    got = window.mask(setup, setup.variant("synflow"), 8.0)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(got),
                                                    jax.tree_util.tree_leaves(direct)))
    assert not np.array_equal(np.asarray(one_shot), np.asarray(
        flatten.ravel_with_spec(direct, setup.flat_spec)))  # iterative ≠ one shot here


def test_filter_granularity_prunes_whole_units(tmp_path):
    from experiments import pipeline
    from kpjax.pruning import structured
    config = PruneConfig(**{**TINY, "seeds": (0,)}, trajectory_steps=4, compressions=(2,),
                         methods=("kmp", "gmp", "l1"), finetune_epochs=0, rcond=(1e-6,),
                         granularity="filter")
    summary = prune.run(config, str(tmp_path / "work"))
    assert "measured" in summary
    pruned = [r for r in rows(tmp_path / "work" / "results.json") if r["phase"] == "pruned"]
    assert {r["method"] for r in pruned} == {"kmp", "gmp", "l1"}
    assert all(r["compression_achieved"] >= 2.0 and r["speedup"] > 1.0 and r["measured_speedup"] > 0
               for r in pruned)
    setup = pipeline.Setup(config)
    window = koopman_window.cached_window(setup, str(tmp_path / "work" / "seed0" / "window.npz"))
    mask = window.mask(setup, setup.variant("gmp"), 2.0)
    keep = structured.kept_units(setup.spec, mask)
    # Whole units: the mask is exactly the unit mask of the kept units.
    import jax
    expected = structured.unit_mask(setup.spec, window.variables["params"], keep)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(mask),
                                                    jax.tree_util.tree_leaves(expected)))
    # l1: Li et al.'s filter norm Σ|θ| over each filter, by hand.
    params = window.variables["params"]
    f = setup.filter_fraction(2.0)
    by_hand = {}
    for g in structured.declared_groups(setup.spec, params):
        kernel = np.abs(np.asarray(structured._get(params, g.producer)["kernel"]))
        norms = kernel.reshape(-1, kernel.shape[-1]).sum(axis=0)
        by_hand[g.name] = np.argsort(-norms, kind="stable")[:max(1, int(round(f * norms.size)))]
    got = structured.kept_units(setup.spec, window.mask(setup, setup.variant("l1"), 2.0))
    assert {k: sorted(np.flatnonzero(v)) for k, v in got.items()} == {
        k: sorted(v) for k, v in by_hand.items()}
    # Group KMP: the window's per-weight |b₁φ₁| (no new fit), L2 over each filter, by hand.
    phi = pruning.scores_from_flat(np.asarray(window.scores[setup.variant("kmp")]), setup.flat_spec, params)
    for g in structured.declared_groups(setup.spec, params):
        layer = structured._get(phi, g.producer)
        rows_ = [np.asarray(layer["kernel"]).reshape(-1, np.shape(layer["kernel"])[-1])]
        if "bias" in layer:
            rows_.append(np.asarray(layer["bias"])[None, :])
        norms = np.sqrt((np.concatenate(rows_) ** 2).sum(axis=0))
        by_hand[g.name] = np.argsort(-norms, kind="stable")[:max(1, int(round(f * norms.size)))]
    got = structured.kept_units(setup.spec, window.mask(setup, setup.variant("kmp"), 2.0))
    assert {k: sorted(np.flatnonzero(v)) for k, v in got.items()} == {
        k: sorted(v) for k, v in by_hand.items()}
    with pytest.raises(ValueError, match="out of reach of filter pruning"):
        resources.check_resources(PruneConfig(**TINY, compressions=(60,), granularity="filter"))


def test_filter_cells_refine_the_shrunk_network_as_the_masked_one(tmp_path):
    """Oracle: refining the shrunk network (what run_cell does) ends where
    masked refinement of the full network does, on the same batches."""
    from experiments import common, pipeline
    config = PruneConfig(**{**TINY, "seeds": (0,)}, trajectory_steps=4, compressions=(2,),
                         methods=("gmp",), finetune_epochs=1, rcond=(1e-6,), granularity="filter",
                         finetune=SGD(lr=0.05, momentum=0.9, nesterov=True))
    setup = pipeline.Setup(config)
    window = prune.seed_window(setup, 0, 4, str(tmp_path))
    rows_ = cell.run_cell(setup, window, setup.variant("gmp"), 2.0, 0).rows
    assert [r["phase"] for r in rows_] == ["pruned", "finetuned"]
    mask = window.mask(setup, setup.variant("gmp"), 2.0)
    state = setup.state(window.variables, 0, mask=mask)
    state = common.run_steps(setup.finetune_step, state, setup.stream(0, pipeline.FINETUNE),
                             setup.steps_per_epoch, "masked")
    masked = setup.evaluate(state)
    assert rows_[1]["top1"] == pytest.approx(masked["top1"], abs=1 / 200)  # one test image at most
    # Other batches end 1e-4 apart here; the same computation agrees to rounding.
    assert rows_[1]["loss"] == pytest.approx(masked["loss"], rel=2e-6)
    assert rows_[1]["loss"] != pytest.approx(rows_[0]["loss"], rel=1e-3)  # it did train
    assert rows_[1]["compression_achieved"] == rows_[0]["compression_achieved"] >= 2.0
