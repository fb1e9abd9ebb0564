"""The report of a command-line evaluation, rebuilt from its records alone.

:func:`write_report` reads ``settings.json`` and the per-sample records of an output directory
(:mod:`adv.records`) and writes:

* ``summary.md`` -- settings, versions, clean accuracy, robust accuracy per attack and for the union
  at every eps (with the counts behind every percentage), the minimal-radius statistics, the
  distances of the adversarial examples found, the sparsity of the perturbations, and the time;
* ``summary.json`` -- the same numbers, machine-readable (:func:`summarize`);
* ``robust_accuracy_vs_eps.png`` -- robust accuracy as a function of eps computed from the minimal
  radii (``--min-distortion``), a dashed "best known" curve from the smallest verified distance of
  each sample (its radius or any successful attack's distance), and the attacks' robust accuracies
  at the given eps as markers;
* ``radii_histogram.png`` -- histograms of the minimal radii and, per attack, of the distance of
  the adversarial example it found (the smallest over the eps where it succeeded);
* ``sparsity_histogram.png`` -- histograms of ``||delta||_1 / ||delta||_2`` of the perturbations
  (the paper's Fig. 6, third row), per attack;
* ``examples.png`` -- the first few samples with their adversarial examples and perturbations.

Definitions (the same as :func:`adv.evaluate`): a sample is *clean-correct* when its label's
logit is strictly the largest (float64); it is *robust* at eps against an attack when it is
clean-correct and the judge did not confirm that attack's point at that eps; the *union* counts a
sample as broken when any attack broke it. Robust accuracy is the fraction of **all** evaluated
samples that are robust. From the minimal radii, a sample is robust at eps when it is
clean-correct and no point at distance ``<= eps`` was found (radius ``> eps``, or none found).

Plots use matplotlib's object API (``matplotlib.figure.Figure``, Agg canvas), so no GUI backend
is touched and the global pyplot state is left alone.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from adv import records as rec_io

__all__ = ["write_report", "summarize", "format_console", "FIGURES"]

logger = logging.getLogger("adv")

#: the PNG files of a report
FIGURES = ("robust_accuracy_vs_eps.png", "radii_histogram.png", "sparsity_histogram.png", "examples.png")
MIN_NAME = "min-distortion"


def _pct(k: int, n: int) -> float:
    return k / n if n else math.nan


def _quantile(sorted_vals: list[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default) of an ascending list."""
    if not sorted_vals:
        return math.nan
    pos = q * (len(sorted_vals) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


def _stats(vals: list[float]) -> dict[str, Any]:
    s = sorted(vals)
    n = len(s)
    if not n:
        return {"count": 0}
    mean = sum(s) / n
    var = sum((v - mean) ** 2 for v in s) / (n - 1) if n > 1 else 0.0
    return {"count": n, "mean": mean, "median": _quantile(s, 0.5), "std": math.sqrt(var), "min": s[0],
            "q10": _quantile(s, 0.1), "q25": _quantile(s, 0.25), "q75": _quantile(s, 0.75),
            "q90": _quantile(s, 0.9), "max": s[-1]}


def summarize(records: list[dict[str, Any]], settings: dict[str, Any]) -> dict[str, Any]:
    """The report's numbers from the records (see the module docstring for the definitions)."""
    N = len(records)
    total = int(settings.get("n", N))
    attacks = list(settings.get("attacks", []))
    eps_list = [float(e) for e in settings.get("eps", [])]
    correct = [bool(r["correct"]) for r in records]
    n_correct = sum(correct)
    out: dict[str, Any] = {
        "samples": N, "total": total, "complete": N == total,
        "threat": settings.get("threat"), "attacks": attacks, "eps": eps_list,
        "clean": {"count": n_correct, "accuracy": _pct(n_correct, N)},
    }
    per_eps = []
    for k, e in enumerate(eps_list):
        row: dict[str, Any] = {"eps": e, "robust": {}}
        for a in attacks:
            cnt = sum(1 for r, c in zip(records, correct)
                      if c and not r["eps"][k]["attacks"][a]["success"])
            row["robust"][a] = {"count": cnt, "accuracy": _pct(cnt, N)}
        cnt = sum(1 for r, c in zip(records, correct) if c and not r["eps"][k]["union_success"])
        row["union"] = {"count": cnt, "accuracy": _pct(cnt, N)}
        per_eps.append(row)
    out["robust_accuracy"] = per_eps

    # minimal radii (clean-correct samples only; a misclassified sample has radius 0)
    md = None
    if settings.get("min_distortion"):
        radii = [float(r["min_distortion"]["radius"]) for r, c in zip(records, correct)
                 if c and r["min_distortion"]["found"]]
        md = _stats(radii)
        md["attacked"] = n_correct
        md["found"] = len(radii)
        md["not_found"] = n_correct - len(radii)
        curve = []
        for e in eps_list:
            cnt = sum(1 for r, c in zip(records, correct)
                      if c and not (r["min_distortion"]["found"] and float(r["min_distortion"]["radius"]) <= e))
            curve.append({"eps": e, "count": cnt, "accuracy": _pct(cnt, N)})
        md["robust_at_eps"] = curve
    out["min_distortion"] = md

    # distance of the adversarial example each attack found (smallest over the eps where it succeeded)
    dist_found: dict[str, Any] = {}
    for a in attacks:
        vals = []
        for r, c in zip(records, correct):
            if not c:
                continue
            ds = [pe["attacks"][a]["distance"] for pe in r["eps"] if pe["attacks"][a]["success"]]
            ds = [float(d) for d in ds if d is not None]
            if ds:
                vals.append(min(ds))
        dist_found[a] = _stats(vals)
    out["attack_distance"] = dist_found

    # sparsity ||delta||_1 / ||delta||_2 of the returned perturbations (attacked samples, delta != 0)
    sparsity: dict[str, Any] = {}
    for k, e in enumerate(eps_list):
        for a in attacks:
            vals = [float(r["eps"][k]["attacks"][a]["sparsity"]) for r in records
                    if r["eps"][k]["attacks"][a]["ran"] and r["eps"][k]["attacks"][a]["sparsity"] is not None]
            succ = [float(r["eps"][k]["attacks"][a]["sparsity"]) for r in records
                    if r["eps"][k]["attacks"][a]["success"] and r["eps"][k]["attacks"][a]["sparsity"] is not None]
            sparsity[f"{a}@{e:g}"] = {"attack": a, "eps": e, "all": _stats(vals), "successful": _stats(succ)}
    if md is not None:
        vals = [float(r["min_distortion"]["sparsity"]) for r, c in zip(records, correct)
                if c and r["min_distortion"]["found"] and r["min_distortion"]["sparsity"] is not None]
        sparsity[MIN_NAME] = {"attack": MIN_NAME, "eps": None, "all": _stats(vals), "successful": _stats(vals)}
    out["sparsity"] = sparsity
    shape = settings.get("input_shape") or []
    out["n_features"] = math.prod(shape) if shape else None

    # time
    tot = sum(float(r.get("seconds", {}).get("total", 0.0)) for r in records)
    parts: dict[str, float] = {}
    for r in records:
        for key, v in r.get("seconds", {}).items():
            if key != "total":
                parts[key] = parts.get(key, 0.0) + float(v)
    out["time"] = {"total_seconds": tot, "per_sample_seconds": tot / N if N else math.nan, "per_method_seconds": parts}
    return out


# ------------------------------------------------------------------------------------------------
# markdown
def _fmt_acc(d: dict[str, Any], N: int) -> str:
    if not N:
        return "n/a"
    return f"{100 * d['accuracy']:.2f} % ({d['count']}/{N})"


def _g(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.6g}"


def _stats_row(name: str, s: dict[str, Any]) -> str:
    if not s.get("count"):
        return f"| {name} | 0 | n/a | n/a | n/a | n/a | n/a | n/a | n/a |"
    return (f"| {name} | {s['count']} | {_g(s['mean'])} | {_g(s['median'])} | {_g(s['std'])} | {_g(s['min'])} | "
            f"{_g(s['q25'])} | {_g(s['q75'])} | {_g(s['max'])} |")


_STATS_HEADER = ["| | count | mean | median | std | min | q25 | q75 | max |", "|---|---|---|---|---|---|---|---|---|"]

_SETTING_ROWS = (
    ("model", "model_description"), ("model fingerprint (sha256 of the state dict)", "model_fingerprint"),
    ("data", "data_description"), ("data fingerprint (sha256 of x and y)", "data_fingerprint"),
    ("samples evaluated (--n)", "n"), ("input shape", "input_shape"), ("classes", "num_classes"),
    ("threat (--threat)", "threat"), ("eps (--eps)", "eps"), ("attacks (--attacks)", "attacks"),
    ("minimal distortion (--min-distortion)", "min_distortion"),
    ("PWCF restarts / maxit / restart maxit", ("restarts", "maxit", "restart_maxit")),
    ("min-distortion restarts / maxit", ("min_restarts", "min_maxit")),
    ("PWCF restarts side by side (--parallel-restarts)", "parallel_restarts"),
    ("APGD iterations / restarts", ("apgd_iter", "apgd_restarts")), ("box (--box)", "box"),
    ("solver dtype (--dtype)", "dtype"), ("batch size (--batch-size)", "batch_size"), ("seed (--seed)", "seed"),
    ("device (--device)", "device"), ("processes (torchrun)", "world_size"), ("started", "started"),
    ("command", "command"),
)


def _setting(settings: dict[str, Any], key: Any) -> str:
    if isinstance(key, tuple):
        return " / ".join(str(settings.get(k)) for k in key)
    v = settings.get(key)
    if isinstance(v, list):
        return ", ".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v) or "-"
    return "-" if v is None else str(v).replace("|", "\\|")


def _markdown(stats: dict[str, Any], settings: dict[str, Any], figures: list[str], partial: bool) -> str:
    N, total = stats["samples"], stats["total"]
    L = ["# Robustness report", ""]
    if stats["complete"] and not partial:
        L.append(f"Status: **complete**, {N} of {total} samples.")
    else:
        L.append(f"Status: **partial**, {N} of {total} samples (run the same command with `--resume` to "
                 "continue; the numbers below cover the finished samples only).")
    L += ["", "## Settings", "", "| setting | value |", "|---|---|"]
    for label, key in _SETTING_ROWS:
        L.append(f"| {label} | {_setting(settings, key)} |")
    L += ["", "## Versions", "", "| package | version |", "|---|---|"]
    for k, v in (settings.get("versions") or {}).items():
        L.append(f"| {k} | {v} |")
    L += ["", "## Clean accuracy", "", f"Clean accuracy: {_fmt_acc(stats['clean'], N)}", ""]
    attacks = stats["attacks"]
    md = stats["min_distortion"]
    if stats["robust_accuracy"]:
        L += ["## Robust accuracy", "",
              "Fraction of the evaluated samples that are classified correctly and that the attack did not break "
              "at that eps (every success is the judge's float64 verdict on the returned point). The union "
              "counts a sample as broken when any attack broke it."
              + (" The last column is computed from the minimal radii." if md else ""), ""]
        head = ["eps", *attacks, "union"] + (["from minimal radii"] if md else [])
        L.append("| " + " | ".join(head) + " |")
        L.append("|" + "---|" * len(head))
        for k, row in enumerate(stats["robust_accuracy"]):
            cells = [f"{row['eps']:g}"] + [_fmt_acc(row["robust"][a], N) for a in attacks] + [_fmt_acc(row["union"], N)]
            if md:
                cells.append(_fmt_acc(md["robust_at_eps"][k], N))
            L.append("| " + " | ".join(cells) + " |")
        L.append("")
    if md:
        L += ["## Minimal distortion radius", "",
              f"PWCF minimal-distortion problems ({settings.get('threat')}) on the {md['attacked']} clean-correct "
              f"samples: a radius was found (and confirmed by the judge) for {md['found']}, none for "
              f"{md['not_found']} (those count as robust at every eps). Radius statistics over the found ones:", ""]
        L += _STATS_HEADER + [_stats_row("radius", md)]
        if md.get("count"):
            L.append("")
            L.append(f"Deciles: q10 {_g(md['q10'])}, q90 {_g(md['q90'])}.")
        L.append("")
    if attacks:
        L += ["## Distance of the adversarial examples found", "",
              "Per attack, over the clean-correct samples it broke at some eps: the distance of its adversarial "
              "example (the smallest over the eps where it succeeded), an upper bound on the sample's minimal "
              "radius.", ""]
        L += _STATS_HEADER + [_stats_row(a, stats["attack_distance"][a]) for a in attacks]
        L.append("")
    if stats["sparsity"]:
        nf = stats.get("n_features")
        L += ["## Sparsity of the perturbations", "",
              "`||delta||_1 / ||delta||_2` of the returned perturbations (1 = one nonzero entry"
              + (f", {math.sqrt(nf):.4g} = sqrt(n) for n = {nf} equal entries" if nf else "")
              + "; larger is denser), over the attacked samples with a nonzero perturbation "
              "(minimal distortion: the found radii):", ""]
        L += ["| method | eps | count | mean | median | successful: count | mean | median |",
              "|---|---|---|---|---|---|---|---|"]
        for s in stats["sparsity"].values():
            a, e = s["attack"], s["eps"]
            al, su = s["all"], s["successful"]
            L.append(f"| {a} | {'-' if e is None else f'{e:g}'} | {al['count']} | {_g(al.get('mean'))} | "
                     f"{_g(al.get('median'))} | {su['count']} | {_g(su.get('mean'))} | {_g(su.get('median'))} |")
        L.append("")
    t = stats["time"]
    L += ["## Time", "", f"Total {t['total_seconds']:.2f} s of computation for {N} samples, "
          f"{_g(t['per_sample_seconds'])} s per sample"
          + (f" (per process; {settings.get('world_size')} processes)" if (settings.get("world_size") or 1) > 1 else "")
          + ".", ""]
    if t["per_method_seconds"]:
        L += ["| method | seconds | per sample |", "|---|---|---|"]
        for k, v in t["per_method_seconds"].items():
            L.append(f"| {k} | {v:.2f} | {_g(v / N if N else math.nan)} |")
        L.append("")
    if figures:
        L += ["## Figures", ""]
        for f in figures:
            L += [f"![{f}]({f})", ""]
    L += ["## Files", "",
          "* `records.jsonl`: one JSON object per sample (see docs/adv-report.md for the fields).",
          "* `settings.json`: the settings of the run; `summary.json`: the numbers of this page.",
          "* `examples/`: the inputs and adversarial examples of the first samples.", ""]
    return "\n".join(L)


def format_console(stats: dict[str, Any]) -> str:
    """A few lines for the terminal: clean and robust accuracy, radii, where the report is."""
    N = stats["samples"]
    L = [f"{N} samples, {stats['threat']}: clean accuracy {_fmt_acc(stats['clean'], N)}"]
    for row in stats["robust_accuracy"]:
        cells = [f"{a} {100 * row['robust'][a]['accuracy']:.2f}%" for a in stats["attacks"]]
        L.append(f"  eps {row['eps']:g}: " + ", ".join(cells) + f", union {100 * row['union']['accuracy']:.2f}%")
    md = stats["min_distortion"]
    if md:
        L.append(f"  minimal radius: found {md['found']}/{md['attacked']}, median {_g(md.get('median'))}, "
                 f"mean {_g(md.get('mean'))}")
    if stats.get("report"):
        L.append(f"report: {stats['report']}")
    return "\n".join(L)


# ------------------------------------------------------------------------------------------------
# figures
def _figure(w: float, h: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=100, layout="constrained")


def _plot_curve(path: Path, records: list[dict], stats: dict, settings: dict) -> None:
    fig = _figure(6.4, 4.4)
    ax = fig.add_subplot(1, 1, 1)
    N = stats["samples"]
    md = stats["min_distortion"]
    eps_list = stats["eps"]
    xmax = max(eps_list) if eps_list else 0.0
    if md and N:
        correct = [r for r in records if r["correct"]]
        radii = sorted(float(r["min_distortion"]["radius"]) for r in correct if r["min_distortion"]["found"])
        never = len(correct) - len(radii)
        if radii:
            xmax = max(xmax, radii[-1])
        xmax = xmax * 1.05 if xmax > 0 else 1.0
        xs, ys = [0.0], [(len(radii) - sum(1 for v in radii if v <= 0) + never) / N]
        for k, v in enumerate(radii):
            if v <= 0:
                continue
            xs.append(v)
            ys.append((len(radii) - (k + 1) + never) / N)
        xs.append(xmax)
        ys.append(ys[-1])
        ax.step(xs, [100 * v for v in ys], where="post", color="black", lw=1.8,
                label=f"from minimal radii ({md['found']} found)")
        if stats["attacks"]:
            best = sorted(_best_known(r, stats["attacks"]) for r in correct)
            bx, by = [0.0], [(len(best) - bisect.bisect_right(best, 0.0)) / N]
            for v in best:
                if 0 < v < math.inf:
                    bx.append(v)
                    by.append((len(best) - bisect.bisect_right(best, v)) / N)
            bx.append(xmax)
            by.append(by[-1])
            ax.step(bx, [100 * v for v in by], where="post", color="tab:purple", lw=1.2, ls="--",
                    label="best known (radii and attack distances)")
    else:
        xmax = xmax * 1.05 if xmax > 0 else 1.0
        ax.text(0.5, 0.5, "no minimal radii (run with --min-distortion)", transform=ax.transAxes, ha="center",
                va="center", color="grey")
    markers = "osD^v<>p*h"
    for j, a in enumerate(stats["attacks"]):
        ax.plot(eps_list, [100 * row["robust"][a]["accuracy"] for row in stats["robust_accuracy"]],
                marker=markers[j % len(markers)], ls="none", ms=7, mfc="none", label=a)
    if stats["robust_accuracy"]:
        ax.plot(eps_list, [100 * row["union"]["accuracy"] for row in stats["robust_accuracy"]], marker="x", ls="none",
                ms=9, color="red", label="union")
    if N:
        ax.axhline(100 * stats["clean"]["accuracy"], color="grey", ls=":", lw=1, label="clean accuracy")
    ax.set_xlim(0, xmax)
    ax.set_ylim(-2, 102)
    ax.set_xlabel(f"eps ({settings.get('threat')})")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_title(f"Robust accuracy versus eps ({N} samples)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    fig.savefig(path)


def _best_known(r: dict, attacks: list[str]) -> float:
    """The smallest verified distance of a clean-correct sample: its minimal radius or the distance
    of any successful attack (inf if none)."""
    vals = [math.inf]
    md = r.get("min_distortion")
    if md and md.get("found") and md.get("radius") is not None:
        vals.append(float(md["radius"]))
    for pe in r["eps"]:
        for a in attacks:
            e = pe["attacks"][a]
            if e["success"] and e["distance"] is not None:
                vals.append(float(e["distance"]))
    return min(vals)


def _hist_panels(path: Path, series: list[tuple[str, list[float]]], xlabel: str, title: str,
                 vline: float | None = None) -> None:
    k = max(1, len(series))
    cols = min(k, 3)
    rows = -(-k // cols)
    fig = _figure(3.6 * cols, 2.8 * rows + 0.4)
    allv = [v for _, vals in series for v in vals]
    lo, hi = (min(allv), max(allv)) if allv else (0.0, 1.0)
    if vline is not None:
        hi = max(hi, vline)
    if hi <= lo:
        hi = lo + 1.0
    bins = [lo + (hi - lo) * i / 30 for i in range(31)]
    for j, (name, vals) in enumerate(series or [("(nothing to show)", [])]):
        ax = fig.add_subplot(rows, cols, j + 1)
        if vals:
            ax.hist(vals, bins=bins, color=f"C{j % 10}", alpha=0.85)
        else:
            ax.text(0.5, 0.5, "no values", transform=ax.transAxes, ha="center", va="center", color="grey")
        if vline is not None:
            ax.axvline(vline, color="grey", ls=":", lw=1)
        ax.set_title(f"{name} ({len(vals)})", fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path)


def _plot_radii(path: Path, records: list[dict], stats: dict, settings: dict) -> None:
    series: list[tuple[str, list[float]]] = []
    correct = [r for r in records if r["correct"]]
    if stats["min_distortion"]:
        series.append(("minimal radius (PWCF)",
                       [float(r["min_distortion"]["radius"]) for r in correct if r["min_distortion"]["found"]]))
    for a in stats["attacks"]:
        vals = []
        for r in correct:
            ds = [pe["attacks"][a]["distance"] for pe in r["eps"] if pe["attacks"][a]["success"]]
            ds = [float(d) for d in ds if d is not None]
            if ds:
                vals.append(min(ds))
        series.append((f"{a}: distance found", vals))
    _hist_panels(path, series, f"{settings.get('threat')} distance",
                 "Minimal radii and distances of the adversarial examples found (clean-correct samples)")


def _plot_sparsity(path: Path, records: list[dict], stats: dict, settings: dict) -> None:
    series: list[tuple[str, list[float]]] = []
    eps_list = stats["eps"]
    if eps_list:
        k = len(eps_list) - 1  # the largest budget
        for a in stats["attacks"]:
            vals = [float(r["eps"][k]["attacks"][a]["sparsity"]) for r in records
                    if r["eps"][k]["attacks"][a]["ran"] and r["eps"][k]["attacks"][a]["sparsity"] is not None]
            series.append((f"{a}, eps {eps_list[k]:g}", vals))
    if stats["min_distortion"]:
        series.append(("minimal distortion (PWCF)",
                       [float(r["min_distortion"]["sparsity"]) for r in records
                        if r["correct"] and r["min_distortion"]["found"] and r["min_distortion"]["sparsity"] is not None]))
    nf = stats.get("n_features")
    _hist_panels(path, series, "||delta||_1 / ||delta||_2 (larger = denser)",
                 "Sparsity of the perturbations (as in the paper's Fig. 6)"
                 + ("; dotted: sqrt(n), all entries equal" if nf else ""), vline=math.sqrt(nf) if nf else None)


def _to_image(t: Any) -> tuple[Any, str | None]:
    """A tensor sample as an array for imshow: (H, W) grey, (H, W, 3) colour, or a 1 x n strip."""
    a = t.detach().double().cpu().numpy()
    if a.ndim == 3 and a.shape[0] in (1, 3):
        return (a[0], "gray") if a.shape[0] == 1 else (a.transpose(1, 2, 0), None)
    if a.ndim == 2:
        return a, "gray"
    return a.reshape(1, -1), "gray"


def _plot_examples(path: Path, out_dir: Path, settings: dict) -> bool:
    import torch

    files = list(rec_io.iter_examples(out_dir))
    payloads = []
    for f in files[: int(settings.get("examples", 8)) or 0]:
        try:
            payloads.append(torch.load(f, map_location="cpu", weights_only=True))
        except Exception as exc:  # a corrupt example file only loses its row
            logger.warning("report: cannot read %s (%s)", f, exc)
    n_max = int(settings.get("n", 0))
    payloads = [p for p in payloads if p["index"] < n_max]
    if not payloads:
        return False
    cols_spec: list[tuple[str, str | None]] = [("clean", None)]
    atts = settings.get("attacks", [])
    if payloads[0]["attacks"]:
        for a in atts:
            cols_spec += [(a, "adv"), (a, "delta")]
    if payloads[0].get("min_distortion") is not None:
        cols_spec += [(MIN_NAME, "adv"), (MIN_NAME, "delta")]
    rows, cols = len(payloads), len(cols_spec)
    fig = _figure(1.45 * cols + 0.4, 1.55 * rows + 0.6)
    for i, p in enumerate(payloads):
        x = p["x"]
        for j, (name, kind) in enumerate(cols_spec):
            ax = fig.add_subplot(rows, cols, i * cols + j + 1)
            ax.set_xticks([])
            ax.set_yticks([])
            if name == "clean":
                img, cmap = _to_image(x)
                ax.imshow(img.clip(0, 1), cmap=cmap, vmin=0, vmax=1)
                ax.set_title(f"#{p['index']} y={p['label']} pred={p['pred']}", fontsize=7)
                continue
            if name == MIN_NAME:
                entry = p["min_distortion"]
                xa, pred, ok = entry["x_adv"], entry["pred"], entry["found"]
                extra = f" r={entry['radius']:.3g}" if ok and entry.get("radius") is not None else ""
            else:
                last = p["attacks"][-1]
                xa, pred, ok = last["x_adv"][name], last["pred"][name], last["success"][name]
                extra = f" eps={last['eps']:g}" if i == 0 else ""
            clean_wrong = p["pred"] != p["label"]
            if kind == "adv":
                img, cmap = _to_image(xa)
                ax.imshow(img.clip(0, 1), cmap=cmap, vmin=0, vmax=1)
                verdict = "misclassified clean" if clean_wrong else ("broken" if ok else "held")
                ax.set_title(f"{name}{extra}\npred={pred} {verdict}", fontsize=6)
            else:
                img, _ = _to_image(xa.double() - x.double())
                if img.ndim == 3:
                    img = img.mean(axis=2)
                m = float(abs(img).max())
                ax.imshow(img, cmap="seismic", vmin=-(m or 1.0), vmax=m or 1.0)
                ax.set_title("delta = 0" if m == 0 else f"delta (max |d| {m:.2g})", fontsize=6)
    fig.suptitle("Examples: clean input, adversarial example and perturbation per method"
                 + (f" (attacks at eps {payloads[0]['attacks'][-1]['eps']:g})" if payloads[0]["attacks"] else ""),
                 fontsize=9)
    fig.savefig(path)
    return True


def write_report(out_dir: str | os.PathLike[str], *, partial: bool = False) -> dict[str, Any]:
    """Rebuild the report of ``out_dir`` from ``settings.json`` and the records (complete batches).

    Writes ``summary.md``, ``summary.json`` and the PNG figures (:data:`FIGURES`; the example grid
    only when example files exist). ``partial=True`` marks the summary as partial even if every
    sample is present. Returns the numbers of :func:`summarize` plus ``report`` (the path of
    ``summary.md``) and ``figures``.

    Raises:
        FileNotFoundError: no ``settings.json``. ValueError: malformed settings.
    """
    out = Path(out_dir)
    settings = rec_io.read_settings(out)
    try:
        bs, n = int(settings["batch_size"]), int(settings["n"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{out / rec_io.SETTINGS} lacks batch_size or n") from exc
    records = rec_io.load_records(out, bs, n)
    stats = summarize(records, settings)
    figures: list[str] = []
    plotters = (("robust_accuracy_vs_eps.png", _plot_curve), ("radii_histogram.png", _plot_radii),
                ("sparsity_histogram.png", _plot_sparsity))
    for name, fn in plotters:
        fn(out / name, records, stats, settings)
        figures.append(name)
    if _plot_examples(out / "examples.png", out, settings):
        figures.append("examples.png")
    stats["figures"] = figures
    rec_io.atomic_write_text(out / "summary.md", _markdown(stats, settings, figures, partial))
    stats["partial"] = bool(partial or not stats["complete"])
    stats["report"] = str(out / "summary.md")
    rec_io.atomic_write_text(out / "summary.json", json.dumps(rec_io.jsonable(stats), indent=2, allow_nan=False) + "\n")
    logger.info("report: %d records, written to %s", len(records), out / "summary.md")
    return stats
