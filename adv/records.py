"""Per-sample records of a command-line evaluation: JSON lines, appended batch by batch.

Layout of an output directory (see docs/adv-report.md):

* ``settings.json`` -- the run settings (:func:`write_settings`); ``--resume`` compares the part
  that determines the results (:data:`RESULT_KEYS`) with the new command line.
* ``records.jsonl`` -- one JSON object per sample, sorted by ``index`` once a run has finished.
  A single process appends to it directly; under torchrun, process ``r`` appends to
  ``records.rank{r}.jsonl`` and rank 0 merges every file into ``records.jsonl`` at the end.
* ``examples/sample{index:06d}.pt`` -- clean and adversarial inputs of the first few samples,
  written before the sample's record, for the example grid of the report.

Durability: all records of a batch are written with one ``write`` call and ``fsync``-ed before the
next batch starts, so a finished batch is never lost. A process killed in the middle of a write can
leave a truncated last line or part of a batch: :func:`read_records` skips lines that are not
complete JSON objects, and :func:`complete_records` keeps only batches whose every sample is
present. Such a batch is computed again on ``--resume``; since its seed depends only on ``--seed``
and the batch's first index, the new records equal the ones an uninterrupted run writes.

Numbers: JSON has no infinity or NaN. Every non-finite float is written as ``null`` (a radius that
was not found, the distance of an attack that did not run); the accompanying boolean fields
(``found``, ``ran``) say which case it is. Finite floats are written with Python's shortest
round-trip representation, so reading a record back gives the identical float64.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

__all__ = [
    "RECORDS", "SETTINGS", "EXAMPLES", "RESULT_KEYS", "rank_file", "record_files", "jsonable",
    "append_records", "read_records", "complete_records", "load_records", "merge_records",
    "write_settings", "read_settings", "settings_mismatch", "batch_bounds", "atomic_write", "atomic_write_text",
]

logger = logging.getLogger("adv")

RECORDS = "records.jsonl"
SETTINGS = "settings.json"
EXAMPLES = "examples"

#: settings that determine the records; ``--resume`` requires them to be equal. The model and the
#: data are compared through their fingerprints (sha256 of the state dict, of x and y), so moved or
#: renamed files still resume, and changed ones do not.
RESULT_KEYS = (
    "model_fingerprint", "data_fingerprint", "num_samples", "input_shape",
    "num_classes", "threat", "eps", "attacks", "min_distortion", "n", "batch_size", "seed", "restarts",
    "maxit", "restart_maxit", "min_restarts", "min_maxit", "apgd_iter", "apgd_restarts", "box",
    "examples", "dtype", "parallel_restarts", "min_apgd_steps", "ce_restarts", "class_restarts", "class_order",
    "min_apgd_targets",
)
#: values of result keys added after a run format was first written (what older runs used)
_LEGACY_DEFAULTS: dict[str, Any] = {"parallel_restarts": 1, "min_apgd_steps": 0, "ce_restarts": 0,
                                     "class_restarts": 0, "class_order": "logit",
                                     "min_apgd_targets": 0}


def rank_file(out_dir: str | os.PathLike[str], rank: int) -> Path:
    """``records.rank{rank}.jsonl`` in ``out_dir`` (the records file of one torchrun process)."""
    return Path(out_dir) / f"records.rank{int(rank)}.jsonl"


def record_files(out_dir: str | os.PathLike[str]) -> list[Path]:
    """Every records file in ``out_dir``: ``records.jsonl`` first, then the per-rank files."""
    d = Path(out_dir)
    files = [d / RECORDS] if (d / RECORDS).is_file() else []
    ranks = sorted(d.glob("records.rank*.jsonl"), key=lambda p: p.name)
    return files + [p for p in ranks if p.is_file()]


def jsonable(v: Any) -> Any:
    """``v`` with every non-finite float replaced by None (recursively through dicts and lists)."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    return v


def _dumps(rec: dict[str, Any]) -> str:
    return json.dumps(jsonable(rec), allow_nan=False, separators=(",", ":"))


def append_records(path: str | os.PathLike[str], records: Iterable[dict[str, Any]]) -> int:
    """Append ``records`` as JSON lines with one ``write`` call, then flush and ``fsync``.

    If the file ends in a truncated line (a process was killed while writing), a newline is
    written first so that the new records start on a line of their own. Returns the count written.
    """
    lines = [_dumps(r) for r in records]
    if not lines:
        return 0
    data = ("\n".join(lines) + "\n").encode("utf-8")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size:
            with open(p, "rb") as fh:
                fh.seek(size - 1)
                if fh.read(1) != b"\n":
                    data = b"\n" + data
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)
    return len(lines)


def read_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of one file; lines that are not complete JSON objects are skipped (logged)."""
    out: list[dict[str, Any]] = []
    bad = 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(rec, dict) and isinstance(rec.get("index"), int):
                out.append(rec)
            else:
                bad += 1
    if bad:
        logger.warning("%s: skipped %d incomplete or malformed line(s) (an interrupted write)", path, bad)
    return out


def batch_bounds(batch: int, batch_size: int, n: int) -> range:
    """Sample indices of batch ``batch``: ``[batch * batch_size, min((batch + 1) * batch_size, n))``."""
    return range(batch * batch_size, min((batch + 1) * batch_size, n))


def complete_records(records: Iterable[dict[str, Any]], batch_size: int, n: int) -> list[dict[str, Any]]:
    """The records of complete batches only, one per index (the first one seen), sorted by index.

    A batch is complete when a record of every one of its indices is present. Records outside
    ``[0, n)`` are dropped.
    """
    by_index: dict[int, dict[str, Any]] = {}
    for r in records:
        i = r["index"]
        if 0 <= i < n and i not in by_index:
            by_index[i] = r
    done: list[dict[str, Any]] = []
    n_batches = -(-n // batch_size) if n else 0
    for b in range(n_batches):
        idx = batch_bounds(b, batch_size, n)
        if all(i in by_index for i in idx):
            done.extend(by_index[i] for i in idx)
    return done


def load_records(out_dir: str | os.PathLike[str], batch_size: int | None = None,
                 n: int | None = None) -> list[dict[str, Any]]:
    """Every record in ``out_dir`` (``records.jsonl`` and the per-rank files), one per index,
    sorted by index; with ``batch_size`` and ``n``, only complete batches (see
    :func:`complete_records`)."""
    recs: list[dict[str, Any]] = []
    for f in record_files(out_dir):
        recs.extend(read_records(f))
    if batch_size is not None and n is not None:
        return complete_records(recs, batch_size, n)
    by_index: dict[int, dict[str, Any]] = {}
    for r in recs:
        by_index.setdefault(r["index"], r)
    return [by_index[i] for i in sorted(by_index)]


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(fh)`` on a temporary binary file in the same directory, ``fsync`` it, then
    rename it over ``path`` (readers see either the old or the new file, never half of one)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=p.name + ".", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """:func:`atomic_write` of UTF-8 text."""
    data = text.encode("utf-8")
    atomic_write(path, lambda fh: fh.write(data))


def merge_records(out_dir: str | os.PathLike[str], batch_size: int, n: int) -> list[dict[str, Any]]:
    """Merge every records file of ``out_dir`` into ``records.jsonl`` (complete batches only, one
    record per index, sorted by index), written atomically; then remove the per-rank files.

    Returns the merged records. Used at the start of a resumed run (so that every process sees the
    same finished batches) and at the end of every run.
    """
    d = Path(out_dir)
    recs = load_records(d, batch_size, n)
    text = "".join(_dumps(r) + "\n" for r in recs)
    atomic_write_text(d / RECORDS, text)
    for f in d.glob("records.rank*.jsonl"):
        with contextlib.suppress(FileNotFoundError):
            f.unlink()
    return recs


def write_settings(out_dir: str | os.PathLike[str], settings: dict[str, Any]) -> None:
    """Write ``settings.json`` atomically."""
    atomic_write_text(Path(out_dir) / SETTINGS, json.dumps(jsonable(settings), indent=2, allow_nan=False) + "\n")


def read_settings(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``settings.json``.

    Raises:
        FileNotFoundError: no settings file. ValueError: not a JSON object.
    """
    p = Path(out_dir) / SETTINGS
    with open(p, encoding="utf-8") as fh:
        try:
            data = json.load(fh)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{p} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{p} must hold a JSON object, got {type(data).__name__}")
    return data


def settings_mismatch(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The :data:`RESULT_KEYS` whose values differ, as ``"key: old -> new"`` strings."""
    out = []
    new_j = json.loads(json.dumps(jsonable(new)))  # the form it takes in settings.json
    no_min = not old.get("min_distortion") and not new_j.get("min_distortion")
    for k in RESULT_KEYS:
        if no_min and k in ("min_apgd_steps", "min_apgd_targets"):
            continue  # added later; irrelevant without minimal distortion
        a, b = old.get(k, _LEGACY_DEFAULTS.get(k)), new_j.get(k)
        if a != b:
            out.append(f"{k}: {json.dumps(a)} there, {json.dumps(b)} now")
    return out


def iter_examples(out_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """The example files of ``out_dir`` in index order."""
    d = Path(out_dir) / EXAMPLES
    if d.is_dir():
        yield from sorted(d.glob("sample*.pt"))
