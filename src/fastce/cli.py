"""``python -m fastce evaluate LOGITS.npy TARGETS.npy``: every evaluation metric
of saved logits, read from a memory map block by block."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

import numpy as np
from numpy.typing import NDArray

from .metrics import Accumulator, EvalResult

# logits read per update: a progress step, and the most the evaluation holds of its own
_STEP_BYTES = 1 << 28
# files smaller than this are evaluated without a progress bar
_PROGRESS_BYTES = 1 << 30


def _numbers(kind: type, text: str) -> list[Any]:
    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated {kind.__name__}s, e.g. 1,5; got {text!r}"
        ) from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fastce evaluate",
        description=(
            "Evaluate saved logits against their targets in one pass: loss, perplexity, top-k "
            "accuracy, confidence, entropy, Brier score and calibration error, with standard "
            "errors. The .npy files are memory-mapped and read block by block."
        ),
    )
    p.add_argument("logits", help="a .npy file of logits (float16, float32, float64)")
    p.add_argument(
        "targets", help="a .npy file of class indices, the logits' shape without the class axis"
    )
    p.add_argument(
        "--axis", type=int, default=None, help="the class axis (default: 1 for 2-d or more, else 0)"
    )
    p.add_argument("--ignore-index", type=int, default=-100, help="targets to skip (default -100)")
    p.add_argument(
        "--segments",
        metavar="FILE",
        help="a .npy file of group ids (the targets' shape): per-group scores, macro figures "
        "and errors clustered by group",
    )
    p.add_argument(
        "--reference",
        metavar="FILE",
        help="a .npy file of a reference model's logits (the logits' shape): KL, top-1 "
        "agreement and the perplexity ratio against it",
    )
    p.add_argument(
        "--temperatures",
        type=lambda s: _numbers(float, s),
        default=None,
        metavar="T1,T2,...",
        help="also every metric at each temperature, from the same read",
    )
    p.add_argument("--temperature", type=float, default=1.0, help="divide the logits by this")
    p.add_argument("--softcap", type=float, default=None, help="soft-cap the logits first")
    p.add_argument(
        "--topk",
        type=lambda s: _numbers(int, s),
        default=[1, 5],
        metavar="K1,K2,...",
        help="the k of the top-k accuracies (default 1,5)",
    )
    p.add_argument("--bins", type=int, default=15, help="calibration bins (default 15)")
    p.add_argument("--equal-mass", action="store_true", help="also equal-mass calibration bins")
    p.add_argument(
        "--bfloat16",
        action="store_true",
        help="read logits of 2-byte records (as NumPy saves bfloat16 arrays) as bfloat16; "
        "needs ml_dtypes",
    )
    p.add_argument("--threads", type=int, default=None, help="threads (default: all)")
    p.add_argument("--json", metavar="FILE", help="also write every result to FILE as JSON")
    p.add_argument(
        "--progress",
        choices=("auto", "always", "never"),
        default="auto",
        help="a progress bar on stderr (auto: for files of 1 GiB or more)",
    )
    return p


def _load(path: str, what: str, parser: argparse.ArgumentParser) -> NDArray[Any]:
    if not os.path.exists(path):
        parser.error(f"no such {what} file: {path}")
    try:
        array: NDArray[Any] = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as e:
        parser.error(f"cannot read {what} file {path} as a .npy array: {e}")
    return array


def _as_bfloat16(a: NDArray[Any], what: str, parser: argparse.ArgumentParser) -> NDArray[Any]:
    """A file of 2-byte records (NumPy saves bfloat16 so) seen as bfloat16."""
    try:
        import ml_dtypes
    except ImportError:
        parser.error("--bfloat16 needs ml_dtypes: pip install ml_dtypes")
    if a.dtype.itemsize != 2 or a.dtype.kind not in "Vf":
        parser.error(f"--bfloat16: the {what} file holds {a.dtype}, not 2-byte values")
    return a.view(ml_dtypes.bfloat16)


Index = tuple[slice, ...]


def _blocks(shape: tuple[int, ...], class_axis: int, itemsize: int) -> list[tuple[Index, Index]]:
    """The logits cut into blocks of about ``_STEP_BYTES`` along an axis that
    is not the class axis: each block's index into the logits and into the
    targets."""
    if len(shape) < 2:
        return [((), ())]
    walk = 1 if class_axis == 0 else 0
    t_walk = walk if walk < class_axis else walk - 1  # the same axis of the targets
    per = max(1, math.prod(shape) // max(shape[walk], 1) * itemsize)
    step = max(1, _STEP_BYTES // per)
    starts = range(0, shape[walk], step) or range(1)
    return [
        (
            (slice(None),) * walk + (slice(a, a + step),),
            (slice(None),) * t_walk + (slice(a, a + step),),
        )
        for a in starts
    ]


class _Progress:
    """A one-line progress bar on ``stream``, redrawn in place."""

    def __init__(self, total: int, stream: TextIO, shown: bool) -> None:
        self.total, self.stream, self.shown = total, stream, shown
        self.done = 0
        self.start = time.perf_counter()

    def update(self, done: int) -> None:
        self.done = done
        if not self.shown:
            return
        fraction = done / self.total if self.total else 1.0
        bar = "#" * int(30 * fraction)
        elapsed = time.perf_counter() - self.start
        self.stream.write(
            f"\revaluating [{bar:<30}] {100 * fraction:5.1f}%  "
            f"{done / 2**30:.2f} of {self.total / 2**30:.2f} GiB  {elapsed:.1f} s"
        )
        self.stream.flush()

    def close(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()


def _table(rows: Sequence[tuple[str, str]]) -> str:
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _summary(r: EvalResult) -> str:
    low, high = r.perplexity_interval
    rows = [
        ("samples", f"{r.count}"),
        ("loss", f"{r.loss:.6f} ± {r.loss_se:.6f}"),
        ("perplexity", f"{r.perplexity:.4f}  (95 % interval {low:.4f} to {high:.4f})"),
    ]
    rows += [
        (f"top-{k} accuracy", f"{v:.6f} ± {r.accuracy_se[k]:.6f}") for k, v in r.accuracy.items()
    ]
    rows += [
        ("confidence", f"{r.confidence:.6f}"),
        ("entropy", f"{r.entropy:.6f}"),
        ("Brier score", f"{r.brier:.6f}"),
        (f"ECE ({r.bin_count.size} bins)", f"{r.ece:.6f}"),
    ]
    if r.mass_bins is not None:
        rows.append(("ECE, equal-mass bins", f"{r.ece_equal_mass:.6f}"))
    if r.groups is not None:
        rows += [
            ("groups", f"{r.groups.ids.size} ({int(np.sum(r.groups.count > 0))} with tokens)"),
            ("macro loss", f"{r.macro_loss:.6f}"),
            ("macro perplexity", f"{r.macro_perplexity:.4f}"),
            ("greedy groups", f"{int(np.sum(r.groups.greedy))}"),
        ]
    if r.paired is not None:
        q = r.paired
        rows += [
            ("KL(reference || model)", f"{q.kl:.6f}"),
            (
                "KL percentiles",
                "  ".join(f"{k} {v:.6f}" for k, v in q.kl_percentiles.items()),
            ),
            ("top-1 agreement", f"{q.top1_agreement:.6f}"),
            (
                "target probability change",
                f"{q.target_prob_change:+.6f} (sd {q.target_prob_change_sd:.6f})",
            ),
            ("reference perplexity", f"{q.reference_perplexity:.4f}"),
            (
                "log perplexity ratio",
                f"{q.log_perplexity_ratio:+.6f} ± {q.log_perplexity_ratio_se:.6f}",
            ),
        ]
    text = _table(rows)
    if r.by_temperature:
        ks = list(r.accuracy)
        head = ["temperature", "loss", "ECE", "Brier"] + [f"top-{k}" for k in ks[:1]]
        lines = ["  ".join(f"{h:>11}" for h in head)]
        for t, s in r.by_temperature.items():
            cells = [f"{t:g}", f"{s.loss:.6f}", f"{s.ece:.6f}", f"{s.brier:.6f}"]
            cells += [f"{s.accuracy[k]:.6f}" for k in ks[:1]]
            lines.append("  ".join(f"{c:>11}" for c in cells))
        text += "\n\n" + "\n".join(lines)
    return text


def _plain(value: Any) -> Any:
    """``value`` with NaN and infinities as None, which JSON can carry."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _jsonable(r: EvalResult) -> dict[str, Any]:
    out: dict[str, Any] = dict(r.as_dict())
    out["accuracy_se"] = {str(k): v for k, v in r.accuracy_se.items()}
    out["reliability"] = {
        "count": r.bin_count.tolist(),
        "accuracy": r.bin_accuracy.tolist(),
        "confidence": r.bin_confidence.tolist(),
    }
    if r.groups is not None:
        g = r.groups
        out["groups"] = {
            "ids": g.ids.tolist(),
            "count": g.count.tolist(),
            "log_likelihood": g.log_likelihood.tolist(),
            "loss": g.loss.tolist(),
            "greedy": g.greedy.tolist(),
            "accuracy": {str(k): v.tolist() for k, v in g.accuracy.items()},
        }
    if r.paired is not None:
        out["paired"] = dict(vars(r.paired))
    if r.by_temperature:
        out["by_temperature"] = {str(t): s.as_dict() for t, s in r.by_temperature.items()}
    return out


def main(argv: Sequence[str], stdout: TextIO = sys.stdout, stderr: TextIO = sys.stderr) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logits = _load(args.logits, "logits", parser)
    targets = _load(args.targets, "targets", parser)
    segments = None if args.segments is None else _load(args.segments, "segments", parser)
    reference = None if args.reference is None else _load(args.reference, "reference", parser)
    if args.bfloat16:
        logits = _as_bfloat16(logits, "logits", parser)
        if reference is not None:
            reference = _as_bfloat16(reference, "reference", parser)
    try:
        acc = Accumulator(
            ignore_index=args.ignore_index,
            axis=args.axis,
            topk=args.topk,
            bins=args.bins,
            num_threads=args.threads,
            softcap=args.softcap,
            temperature=args.temperature,
            temperatures=args.temperatures,
            equal_mass=args.equal_mass,
        )
        ndim = logits.ndim
        class_axis = (1 if ndim >= 2 else 0) if args.axis is None else args.axis % max(ndim, 1)
        expected = logits.shape[:class_axis] + logits.shape[class_axis + 1 :]
        for name, a in (("targets", targets), ("segments", segments)):
            if a is not None and a.shape != expected:
                raise ValueError(
                    f"{name} have shape {a.shape}, but logits of shape {logits.shape} with "
                    f"classes on axis {class_axis} need {expected}"
                )
        total = logits.nbytes
        shown = args.progress == "always" or (args.progress == "auto" and total >= _PROGRESS_BYTES)
        progress = _Progress(total, stderr, shown)
        for index, t_index in _blocks(logits.shape, class_axis, logits.dtype.itemsize):
            block = logits[index]
            acc.update(
                block,
                np.asarray(targets[t_index]),
                segments=None if segments is None else np.asarray(segments[t_index]),
                reference=None if reference is None else reference[index],
            )
            progress.update(progress.done + block.nbytes)
        progress.close()
    except (TypeError, ValueError, IndexError) as e:
        print(f"error: {e}", file=stderr)
        return 2
    result = acc.result()
    print(_summary(result), file=stdout)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(_plain(_jsonable(result)), f, indent=1)
    return 0
