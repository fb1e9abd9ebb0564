"""The command line (adv.cli): an end-to-end run on a tiny model, the report against the records and
an independent check, --help, and every bad input (exit code 2, a one-line message).

The model is a fixed linear classifier on 1x4x4 inputs (tests/adv/cli_models.py): its minimal lp
radius without the box is ``min_j (z_y - z_j) / ||w_y - w_j||_q`` (q the dual exponent), a lower
bound on every verified distance, which the records must respect.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import adv.cli as cli
from adv import records as rec_io
from adv.report import FIGURES, write_report

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import cli_models  # noqa: E402

MODEL = f"{HERE / 'cli_models.py'}:tiny_linear"
FAST = ["--restarts", "1", "--maxit", "20", "--restart-maxit", "20", "--min-restarts", "1", "--min-maxit", "40",
        "--apgd-iter", "10", "--threads", "1", "--quiet"]


@pytest.fixture
def data_npz(tmp_path):
    x, y = cli_models.make_data(24)
    p = tmp_path / "data.npz"
    np.savez(p, x=x, y=y)
    return p


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines() if line.strip()]


def _dual(p: float) -> float:
    return math.inf if p == 1 else (1.0 if math.isinf(p) else p / (p - 1))


def _radius_lower_bound(x: np.ndarray, y: np.ndarray, p: float) -> np.ndarray:
    """Minimal lp distance to the decision boundary of the linear model, ignoring the box."""
    lin = cli_models.tiny_linear()[1]
    W, b = lin.weight.detach().double(), lin.bias.detach().double()
    v = torch.from_numpy(x).double().reshape(len(x), -1)
    z = v @ W.T + b
    out = []
    for i in range(len(x)):
        yi = int(y[i])
        best = math.inf
        for j in range(W.shape[0]):
            if j == yi:
                continue
            gap = float(z[i, yi] - z[i, j])
            best = min(best, max(gap, 0.0) / float(torch.linalg.vector_norm(W[yi] - W[j], ord=_dual(p))))
        out.append(best)
    return np.array(out)


def _parse_pct(cell: str) -> tuple[int, int]:
    m = re.search(r"\((\d+)/(\d+)\)", cell)
    assert m, cell
    return int(m.group(1)), int(m.group(2))


# ------------------------------------------------------------------------------------------------
def test_help_documents_every_flag(capsys):
    assert cli.main(["evaluate", "--help"]) == 0
    text = capsys.readouterr().out
    for flag in ("--model", "--weights", "--data", "--threat", "--eps", "--attacks", "--min-distortion", "--n",
                 "--batch-size", "--device", "--seed", "--out", "--resume", "--quiet", "--restarts", "--maxit",
                 "--examples", "--overwrite", "--threads", "--box", "--dtype", "--apgd-iter"):
        assert flag in text, flag
    parser = cli.build_parser()
    ev = parser._subparsers._group_actions[0].choices["evaluate"]
    for action in ev._actions:
        if action.dest == "help":
            continue
        assert "e.g." in (action.help or ""), f"{action.option_strings} has no example"
    assert "torchrun" in text and "--resume" in text  # the epilog's examples


def test_no_command_is_a_usage_error(capsys):
    assert cli.main([]) == 2


def test_end_to_end_report_agrees_with_records_and_an_independent_check(tmp_path, data_npz, capsys):
    out = tmp_path / "rep"
    eps = [0.3, 0.6]
    code = cli.main(["evaluate", "--model", MODEL, "--data", str(data_npz), "--threat", "l2", "--eps", "0.6", "0.3",
                     "--min-distortion", "--n", "13", "--batch-size", "5", "--examples", "3", "--out", str(out), *FAST])
    assert code == 0
    for f in ("records.jsonl", "settings.json", "summary.md", "summary.json", *FIGURES):
        assert (out / f).is_file(), f
    for f in FIGURES:
        assert (out / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        import matplotlib.image

        assert matplotlib.image.imread(out / f).shape[0] > 100
    assert sorted(p.name for p in (out / "examples").iterdir()) == [f"sample{i:06d}.pt" for i in range(3)]
    assert not list(out.glob("records.rank*"))

    recs = _records(out)
    assert [r["index"] for r in recs] == list(range(13))
    assert [r["batch"] for r in recs] == [i // 5 for i in range(13)]
    settings = json.loads((out / "settings.json").read_text())
    assert settings["eps"] == eps and settings["attacks"] == list(cli.DEFAULT_ATTACKS_LP)
    assert settings["threat"] == "l2" and settings["n"] == 13 and settings["num_classes"] == 3

    # independent: clean predictions of the model, and the analytic lower bound on every distance
    x, y = cli_models.make_data(24)
    x, y = x[:13], y[:13]
    with torch.no_grad():
        z = cli_models.tiny_linear().double()(torch.from_numpy(x).double())
    for r in recs:
        i = r["index"]
        assert r["label"] == int(y[i]) and r["pred"] == int(z[i].argmax())
        others = torch.cat([z[i, : y[i]], z[i, y[i] + 1:]])
        assert r["correct"] == bool(z[i, y[i]] > others.max())
    assert sum(not r["correct"] for r in recs) == 2  # samples 0 and 7 carry a wrong label
    lb = _radius_lower_bound(x, y, 2.0)
    for r in recs:
        i = r["index"]
        md = r["min_distortion"]
        if not r["correct"]:
            assert md["found"] and md["radius"] == 0.0
            assert all(not a["ran"] and not a["success"] for pe in r["eps"] for a in pe["attacks"].values())
            continue
        if md["found"]:
            assert md["radius"] >= lb[i] * (1 - 1e-9)
            # the APGD bisection never reports a radius above PWCF's own
            assert md["pwcf_radius"] is not None and md["radius"] <= md["pwcf_radius"]
        else:
            assert md["radius"] is None
        for pe in r["eps"]:
            assert pe["union_success"] == any(a["success"] for a in pe["attacks"].values())
            assert pe["robust"] == (not pe["union_success"])
            for a in pe["attacks"].values():
                assert a["ran"]
                if a["success"]:
                    assert lb[i] * (1 - 1e-9) <= a["distance"] <= pe["eps"] * (1 + 1e-6)
                    assert a["margin"] >= 0
                else:
                    assert a["margin"] < 0 or a["distance"] > pe["eps"] * (1 + 1e-6)
            if lb[i] > pe["eps"] * (1 + 1e-6):
                assert not pe["union_success"]  # nothing can be verified inside the true radius

    # the summary's numbers are those of the records
    md_text = (out / "summary.md").read_text()
    assert "Status: **complete**, 13 of 13 samples" in md_text
    for key in ("python", "torch", "ncvx-core"):
        assert f"| {key} |" in md_text
    n_correct = sum(r["correct"] for r in recs)
    m = re.search(r"Clean accuracy: ([\d.]+) % \((\d+)/(\d+)\)", md_text)
    assert m and (int(m.group(2)), int(m.group(3))) == (n_correct, 13)
    assert float(m.group(1)) == pytest.approx(100 * n_correct / 13, abs=0.005)
    rows = [line for line in md_text.splitlines() if re.match(r"\| 0\.[36] \|", line)]
    assert len(rows) == 2
    header = next(line for line in md_text.splitlines() if line.startswith("| eps |"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert cols == ["eps", *cli.DEFAULT_ATTACKS_LP, "union", "from minimal radii"]
    for k, row in enumerate(rows):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[0]) == eps[k]
        for a, cell in zip(cli.DEFAULT_ATTACKS_LP, cells[1:4]):
            want = sum(r["correct"] and not r["eps"][k]["attacks"][a]["success"] for r in recs)
            assert _parse_pct(cell) == (want, 13), (a, eps[k])
        want = sum(r["correct"] and not r["eps"][k]["union_success"] for r in recs)
        assert _parse_pct(cells[4]) == (want, 13)
        want = sum(r["correct"] and not (r["min_distortion"]["found"] and r["min_distortion"]["radius"] <= eps[k])
                   for r in recs)
        assert _parse_pct(cells[5]) == (want, 13)
    radii = sorted(r["min_distortion"]["radius"] for r in recs if r["correct"] and r["min_distortion"]["found"])
    row = next(line for line in md_text.splitlines() if line.startswith("| radius |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert int(cells[1]) == len(radii)
    assert float(cells[2]) == pytest.approx(float(np.mean(radii)), rel=1e-5)
    assert float(cells[3]) == pytest.approx(float(np.median(radii)), rel=1e-5)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["min_distortion"]["q90"] == pytest.approx(float(np.quantile(radii, 0.9)))
    assert summary["time"]["total_seconds"] == pytest.approx(sum(r["seconds"]["total"] for r in recs))

    # the report is rebuilt from the records alone
    before = (out / "summary.md").read_text()
    for f in ("summary.md", "summary.json", *FIGURES):
        (out / f).unlink()
    assert cli.main(["report", str(out), "--quiet"]) == 0
    assert (out / "summary.md").read_text() == before
    assert all((out / f).is_file() for f in FIGURES)


def test_min_distortion_only_and_lp_threat(tmp_path, data_npz):
    out = tmp_path / "rep"
    code = cli.main(["evaluate", "--model", MODEL, "--data", str(data_npz), "--threat", "lp:1.5", "--min-distortion",
                     "--n", "4", "--batch-size", "4", "--examples", "1", "--out", str(out), *FAST])
    assert code == 0
    recs = _records(out)
    assert len(recs) == 4 and all(r["eps"] == [] for r in recs)
    settings = json.loads((out / "settings.json").read_text())
    assert settings["threat"] == "lp:1.5" and settings["attacks"] == []
    lb = _radius_lower_bound(*[a[:4] for a in cli_models.make_data(24)], 1.5)
    for r in recs:
        if r["correct"] and r["min_distortion"]["found"]:
            assert r["min_distortion"]["radius"] >= lb[r["index"]] * (1 - 1e-9)


def test_perceptual_threat_with_a_pt_file_and_weights(tmp_path):
    model = cli_models.tiny_cnn()
    x, y = cli_models.make_data(6, model=model)
    data = tmp_path / "d.pt"
    torch.save({"x": torch.from_numpy(x), "y": torch.from_numpy(y)}, data)
    weights = tmp_path / "w.pt"
    state = {k: v * 1.0 for k, v in model.state_dict().items()}
    torch.save(state, weights)
    out = tmp_path / "rep"
    code = cli.main(["evaluate", "--model", f"{HERE / 'cli_models.py'}:tiny_cnn", "--weights", str(weights),
                     "--data", str(data), "--threat", "perceptual", "--eps", "0.5", "--n", "3", "--batch-size", "3",
                     "--examples", "2", "--out", str(out), *FAST])
    assert code == 0
    recs = _records(out)
    assert len(recs) == 3
    assert list(recs[0]["eps"][0]["attacks"]) == ["pwcf-margin"]
    for r in recs:
        a = r["eps"][0]["attacks"]["pwcf-margin"]
        if a["success"]:
            assert a["distance"] <= 0.5 * (1 + 1e-6)
    assert "perceptual" in (out / "summary.md").read_text()


# ------------------------------------------------------------------------------------------------
# bad inputs: exit code 2 and a one-line message naming the problem
def _bad_inputs(tmp: Path, data: Path) -> list[tuple[list[str], str]]:
    x, y = cli_models.make_data(8)
    np.savez(tmp / "short_y.npz", x=x, y=y[:5])
    np.savez(tmp / "no_y.npz", x=x, labels_typo=y)
    np.savez(tmp / "y2d.npz", x=x, y=y[:, None])
    bad_lab = y.copy()
    bad_lab[3] = 7
    np.savez(tmp / "bad_labels.npz", x=x, y=bad_lab)
    np.savez(tmp / "range.npz", x=x * 255, y=y)
    np.savez(tmp / "shape.npz", x=np.full((8, 1, 5, 5), 0.5, np.float32), y=y)
    (tmp / "garbage.pt").write_bytes(b"this is not a torch file")
    torch.save({"0.weight": torch.zeros(2, 2)}, tmp / "wrong_weights.pt")
    d = ["--data", str(data)]
    m = ["--model", MODEL]
    return [
        ([*m, "--data", str(tmp / "missing.npz"), "--eps", "0.1"], "does not exist"),
        ([*m, "--data", str(tmp / "garbage.pt"), "--eps", "0.1"], "cannot read"),
        ([*m, "--data", str(tmp / "no_y.npz"), "--eps", "0.1"], "must hold arrays 'x' and 'y'"),
        ([*m, "--data", str(tmp / "short_y.npz"), "--eps", "0.1"], "x has 8 samples, y has 5 labels"),
        ([*m, "--data", str(tmp / "y2d.npz"), "--eps", "0.1"], "y must have shape (N,)"),
        ([*m, "--data", str(tmp / "bad_labels.npz"), "--eps", "0.1"], "labels out of range"),
        ([*m, "--data", str(tmp / "range.npz"), "--eps", "0.1"], "x must lie in [0, 1]"),
        ([*m, "--data", str(tmp / "shape.npz"), "--eps", "0.1"], "the model fails on inputs of shape"),
        (["--model", f"{HERE / 'cli_models.py'}:tiny_linearr", *d, "--eps", "0.1"], "did you mean 'tiny_linear'"),
        (["--model", "no_such_module_xyz:make", *d, "--eps", "0.1"], "cannot import module 'no_such_module_xyz'"),
        (["--model", str(tmp / "nofile.py") + ":make", *d, "--eps", "0.1"], "does not exist"),
        (["--model", f"{HERE / 'cli_models.py'}:not_a_model", *d, "--eps", "0.1"], "expected a torch.nn.Module"),
        (["--model", "tiny_linear", *d, "--eps", "0.1"], "MODULE:FACTORY"),
        ([*m, *d, "--weights", str(tmp / "nope.pt"), "--eps", "0.1"], "--weights"),
        ([*m, *d, "--weights", str(tmp / "wrong_weights.pt"), "--eps", "0.1"], "does not fit the model"),
        ([*m, *d, "--eps", "-0.1"], "eps must be > 0"),
        ([*m, *d, "--eps", "0"], "eps must be > 0"),
        ([*m, *d, "--eps", "0.1", "--threat", "linff"], "did you mean 'linf'"),
        ([*m, *d, "--eps", "0.1", "--threat", "lp:-1"], "must be > 0"),
        ([*m, *d, "--eps", "0.1", "--attacks", "apgd-cee"], "did you mean 'apgd-ce'"),
        ([*m, *d, "--eps", "0.1", "--attacks", "pwcf-margin,pwcf-margin"], "must not repeat"),
        ([*m, *d, "--eps", "0.1", "--threat", "lp:1.5", "--attacks", "apgd-ce"], "apgd-ce support(s) only"),
        ([*m, *d, "--eps", "0.1", "--threat", "perceptual"], "--threat perceptual"),
        ([*m, *d], "--eps is required"),
        ([*m, *d, "--eps", "0.1", "--n", "0"], "--n"),
        ([*m, *d, "--eps", "0.1", "--device", "tpu"], "--device"),
    ]


def test_bad_inputs_exit_2_with_a_message(tmp_path, data_npz, capsys):
    cases = _bad_inputs(tmp_path, data_npz)
    for args, expected in cases:
        code = cli.main(["evaluate", *args, "--out", str(tmp_path / "never"), "--quiet"])
        err = capsys.readouterr().err
        assert code == 2, (args, err)
        assert expected in err, (args, err)
        assert "Traceback" not in err
        assert not (tmp_path / "never" / "records.jsonl").exists()


def test_existing_run_needs_resume_or_overwrite_and_matching_settings(tmp_path, data_npz, capsys):
    out = tmp_path / "rep"
    base = ["evaluate", "--model", MODEL, "--data", str(data_npz), "--threat", "linf", "--n", "3",
            "--batch-size", "3", "--examples", "0", "--out", str(out), *FAST]
    assert cli.main([*base, "--eps", "0.05"]) == 0
    capsys.readouterr()
    assert cli.main([*base, "--eps", "0.05"]) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert cli.main([*base, "--eps", "0.07", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "settings differ" in err and "eps" in err
    # a resume of a finished run recomputes nothing and leaves the records as they are
    before = (out / "records.jsonl").read_bytes()
    assert cli.main([*base, "--eps", "0.05", "--resume"]) == 0
    assert (out / "records.jsonl").read_bytes() == before
    assert cli.main([*base, "--eps", "0.07", "--overwrite"]) == 0
    assert json.loads((out / "settings.json").read_text())["eps"] == [0.07]


def _refuses_resume(base, extra, key, capsys):
    """``--resume`` with ``extra`` flags exits with 2 and names the differing setting ``key``."""
    capsys.readouterr()
    assert cli.main([*base, *extra, "--resume"]) == 2
    assert key in capsys.readouterr().err


def test_class_order_flag_reaches_both_problems_and_guards_resume(tmp_path, data_npz, capsys, monkeypatch):
    """--class-order goes to adv.attack and adv.min_distortion and into settings.json (default
    mixed), --min-apgd-targets to adv.min_distortion (default 2); a resume with another value is
    refused, and settings written before the flags existed count as logit and 0 (what those runs
    used)."""
    import adv
    import adv.api

    seen: dict[str, list] = {"attack": [], "min_distortion": []}
    targets: list = []
    for mod, name in ((adv.api, "attack"), (adv, "min_distortion")):
        real = getattr(mod, name)

        def spy(*a, _real=real, _name=name, **k):  # type: ignore[no-untyped-def]
            seen[_name].append(k.get("class_order"))
            if _name == "min_distortion":
                targets.append(k.get("apgd_targets"))
            return _real(*a, **k)

        monkeypatch.setattr(mod, name, spy)
    out = tmp_path / "rep"
    base = ["evaluate", "--model", MODEL, "--data", str(data_npz), "--threat", "l2", "--n", "3", "--eps", "0.5",
            "--attacks", "pwcf-margin", "--min-distortion", "--batch-size", "3", "--examples", "0",
            "--out", str(out), *FAST]
    assert cli.main(base) == 0
    assert set(seen["attack"]) == {"mixed"} and set(seen["min_distortion"]) == {"mixed"}
    settings = json.loads((out / "settings.json").read_text())
    assert settings["class_order"] == "mixed"
    # --min-apgd-targets (default 2) likewise; settings without it resume as 0
    assert set(targets) == {2} and settings["min_apgd_targets"] == 2
    _refuses_resume(base, ["--min-apgd-targets", "0"], "min_apgd_targets", capsys)
    _refuses_resume(base, ["--class-order", "logit"], "class_order", capsys)
    del settings["class_order"]
    (out / "settings.json").write_text(json.dumps(settings))
    assert cli.main([*base, "--resume"]) == 2
    assert cli.main([*base, "--class-order", "logit", "--overwrite"]) == 0
    assert seen["attack"][-1] == "logit" and seen["min_distortion"][-1] == "logit"
    settings = json.loads((out / "settings.json").read_text())
    del settings["class_order"], settings["min_apgd_targets"]
    (out / "settings.json").write_text(json.dumps(settings))
    assert cli.main([*base, "--class-order", "logit", "--min-apgd-targets", "0", "--resume"]) == 0


def test_class_restarts_flag_reaches_the_attack_and_guards_resume(tmp_path, data_npz, capsys, monkeypatch):
    """--class-restarts goes to adv.attack and into settings.json; a resume with another value is
    refused, and a settings file written before the flag existed counts as 0 (what those runs used)."""
    import adv.api

    seen = []
    real = adv.api.attack

    def spy(*a, **k):  # type: ignore[no-untyped-def]
        seen.append(k.get("class_restarts"))
        return real(*a, **k)

    monkeypatch.setattr(adv.api, "attack", spy)
    out = tmp_path / "rep"
    base = ["evaluate", "--model", MODEL, "--data", str(data_npz), "--threat", "linf", "--n", "3", "--eps", "0.05",
            "--attacks", "pwcf-margin", "--batch-size", "3", "--examples", "0", "--out", str(out), *FAST]
    assert cli.main([*base, "--class-restarts", "1"]) == 0
    assert seen and set(seen) == {1}
    settings = json.loads((out / "settings.json").read_text())
    assert settings["class_restarts"] == 1
    _refuses_resume(base, ["--class-restarts", "2"], "class_restarts", capsys)
    # an older run's settings (no class_restarts key) resume only with --class-restarts 0
    del settings["class_restarts"]
    (out / "settings.json").write_text(json.dumps(settings))
    assert cli.main([*base, "--resume"]) == 2
    assert cli.main([*base, "--class-restarts", "0", "--resume"]) == 0


def test_report_of_a_directory_without_settings(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 2
    assert "no settings.json" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# records I/O
def test_records_survive_truncated_lines_and_partial_batches(tmp_path):
    f = tmp_path / "records.jsonl"
    rec_io.append_records(f, [{"index": i, "batch": i // 2, "v": float("inf") if i == 1 else 0.5} for i in range(4)])
    with open(f, "a") as fh:
        fh.write('{"index": 4, "batch": 2, "v"')  # a killed writer
    rec_io.append_records(f, [{"index": 5, "batch": 2}])
    recs = rec_io.read_records(f)
    assert [r["index"] for r in recs] == [0, 1, 2, 3, 5]
    assert recs[1]["v"] is None  # non-finite floats are written as null
    done = rec_io.complete_records(recs, batch_size=2, n=6)
    assert [r["index"] for r in done] == [0, 1, 2, 3]  # batch 2 lacks index 4
    merged = rec_io.merge_records(tmp_path, batch_size=2, n=6)
    assert [r["index"] for r in merged] == [0, 1, 2, 3]
    assert [r["index"] for r in rec_io.read_records(f)] == [0, 1, 2, 3]


def test_settings_mismatch_names_the_keys():
    old = {k: 1 for k in rec_io.RESULT_KEYS}
    new = dict(old, eps=[0.1], seed=2, device="cuda")
    diff = rec_io.settings_mismatch(old, new)
    assert any(d.startswith("eps:") for d in diff) and any(d.startswith("seed:") for d in diff)
    assert not any(d.startswith("device") for d in diff)
    # a run written before --parallel-restarts existed ran its restarts one after the other
    legacy = {k: v for k, v in old.items() if k != "parallel_restarts"}
    assert rec_io.settings_mismatch(legacy, old) == []
    assert [d.split(":")[0] for d in rec_io.settings_mismatch(legacy, dict(old, parallel_restarts=4))] == [
        "parallel_restarts"]
    # a run written before --min-apgd-steps existed had no APGD bisection (0); the setting only
    # matters when minimal distortion is computed
    pre = {k: v for k, v in old.items() if k != "min_apgd_steps"}
    assert rec_io.settings_mismatch(pre, dict(old, min_apgd_steps=0)) == []
    assert [d.split(":")[0] for d in rec_io.settings_mismatch(pre, dict(old, min_apgd_steps=8))] == ["min_apgd_steps"]
    pre_nomin = dict(pre, min_distortion=False)
    assert rec_io.settings_mismatch(pre_nomin, dict(old, min_distortion=False, min_apgd_steps=8)) == []


def test_batch_seed_depends_on_seed_and_first_index_only():
    from adv.shard import batch_seed

    assert batch_seed(0, 10) == batch_seed(0, 10)
    assert len({batch_seed(0, 0), batch_seed(0, 10), batch_seed(1, 0)}) == 3


def test_write_report_marks_a_partial_run(tmp_path, data_npz):
    out = tmp_path / "rep"
    assert cli.main(["evaluate", "--model", MODEL, "--data", str(data_npz), "--eps", "0.05", "--n", "6",
                     "--batch-size", "3", "--examples", "0", "--out", str(out), *FAST]) == 0
    lines = (out / "records.jsonl").read_text().splitlines()
    (out / "records.jsonl").write_text("\n".join(lines[:4]) + "\n")  # batch 1 incomplete
    stats = write_report(out)
    assert stats["samples"] == 3 and stats["partial"]
    assert "Status: **partial**, 3 of 6 samples" in (out / "summary.md").read_text()
    shutil.rmtree(out)


def test_restarts_default_is_the_attack_default_for_the_threat(tmp_path, data_npz):
    """Without --restarts the command line leaves the choice to adv.default_restarts (13 for l1,
    7 otherwise), and the settings record the number used."""
    import adv

    out = tmp_path / "rep"
    i = FAST.index("--restarts")
    fast = FAST[:i] + FAST[i + 2:]
    code = cli.main(["evaluate", "--model", MODEL, "--data", str(data_npz), "--threat", "l1", "--eps", "0.05",
                     "--attacks", "pwcf-margin", "--n", "2", "--batch-size", "2", "--examples", "0", "--out", str(out),
                     *fast])
    assert code == 0
    assert json.loads((out / "settings.json").read_text())["restarts"] == 13

    args = cli.build_parser().parse_args(["evaluate", "--model", MODEL, "--threat", "l1", "--eps", "0.1"])
    assert args.restarts is None
    assert adv.default_restarts("l1") == 13 and adv.default_restarts("l2") == 7
    args = cli.build_parser().parse_args(["evaluate", "--model", MODEL, "--threat", "l1", "--eps", "0.1",
                                          "--restarts", "3"])
    assert args.restarts == 3
