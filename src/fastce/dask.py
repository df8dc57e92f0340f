"""Cross-entropy and evaluation of Dask arrays, for data beyond one machine.

Needs ``dask[array]`` (``pip install ".[dask]"`` in fastce's checkout).  Each block of logits is
computed by fastce's own kernels into an :class:`fastce.Accumulator`, and the
blocks' accumulators are combined with :meth:`~fastce.Accumulator.merge` in a
fixed tree, so the result is the in-memory one (to float64 rounding, in
practice to the last bit) whatever the chunking, the scheduler or the number
of workers.

Logits split along the class axis (a vocabulary too wide for one worker)
are evaluated shard by shard without moving them: each shard gives its
samples' partial statistics -- the log-sum-exp, entropy, largest logit and
its class, the target's logit, the sums for label smoothing and the Brier
score, and its top-k candidates -- which are combined exactly into each
sample's loss, rank, confidence and entropy (equal to the unsharded values to
float64 rounding; the top-k counts exactly).  This covers the class weights,
``ignore_index``, label smoothing, ``topk``, ``bins`` and the z-loss; the other
options (a soft-cap, temperatures, equal-mass bins, segments, a reference)
need whole rows, so such logits are rechunked, with a
:class:`dask.array.PerformanceWarning`, as :func:`cross_entropy` does.  Targets are
rechunked to match the logits' blocks.  Targets are class indices; their
dtype and shape are checked when the graph is built, their values (a class
out of range) when it is computed.

Each block runs fastce's OpenMP kernels with ``num_threads`` threads (by
default all of them); on a cluster that runs one task per core, pass
``num_threads=1``.

Example
-------
>>> import numpy as np, dask.array as da, fastce, fastce.dask
>>> rng = np.random.default_rng(0)
>>> x = rng.standard_normal((10_000, 50)); t = rng.integers(0, 50, 10_000)
>>> r = fastce.dask.evaluate(da.from_array(x, chunks=(1_000, 50)), da.from_array(t, chunks=3_000))
>>> r.loss == fastce.evaluate(x, t).loss, r.count
(True, 10000)
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from typing import Any, Literal, NamedTuple, SupportsIndex, TypedDict, cast, overload

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

try:
    import dask.array as da
    from dask.array.core import PerformanceWarning
    from dask.delayed import Delayed, delayed
except ImportError as exc:  # pragma: no cover - exercised only without dask
    raise ImportError(
        "fastce.dask needs dask[array]; install it with: pip install 'dask[array]'"
    ) from exc

from ._eval_plan import check_eval_options
from ._eval_totals import totals_of_samples
from ._validate import (
    check_reduction,
    check_segments,
    check_target,
    check_weight,
    class_axis,
    native_float_array,
    result_dtype,
    view3,
)
from .functional import cross_entropy as _cross_entropy
from .metrics import Accumulator, EvalResult
from .metrics import evaluate as _evaluate

__all__ = ["accumulate", "cross_entropy", "evaluate", "from_npy"]

# accumulators merged per task of the combining tree
_FAN_IN = 8


class _Options(TypedDict):
    """The keyword arguments of every block's :class:`fastce.Accumulator`."""

    weight: ArrayLike | None
    ignore_index: int
    label_smoothing: float
    axis: SupportsIndex | None
    topk: int | Iterable[int]
    bins: int
    num_threads: int | None
    softcap: float | None
    temperature: float
    z_loss: float
    temperatures: Iterable[float] | None
    equal_mass: bool


def _placeholder(shape: tuple[int, ...], dtype: DTypeLike) -> NDArray[Any]:
    """An array of ``shape`` and ``dtype`` that takes no memory."""
    return np.broadcast_to(np.zeros((), dtype=dtype), shape)


def _prepare(
    logits: da.Array | ArrayLike,
    target: da.Array | ArrayLike,
    axis: SupportsIndex | None,
    stacklevel: int,
    sharded: bool = False,
) -> tuple[da.Array, da.Array, int]:
    """Validated dask arrays: the class axis in one chunk (or in several,
    when the caller evaluates shards), the target's chunks matching the
    logits' blocks."""
    x: da.Array = da.asarray(logits)
    t: da.Array = da.asarray(target)
    native_float_array(np.empty(0, dtype=x.dtype), "logits")
    ax = class_axis(axis, x.ndim)
    if any(np.isnan(s) for s in x.shape + t.shape):
        raise ValueError(
            "logits and target need known chunk sizes; call .compute_chunk_sizes() on them first"
        )
    # the target's dtype and shape, checked as cross_entropy checks them, on
    # stand-ins that hold no data (its values are checked block by block)
    kind = np.dtype(t.dtype).kind
    stand_in = np.int64 if kind in "iu" else (x.dtype if kind == "f" else t.dtype)
    xs = _placeholder(x.shape, x.dtype)
    plan = check_target(_placeholder(t.shape, stand_in), xs, ax, view3(xs, ax))
    if not plan.is_index:
        raise TypeError(
            "fastce.dask needs class indices (an integer target of shape "
            f"{x.shape[:ax] + x.shape[ax + 1 :]}); got probabilities of shape {t.shape}."
        )
    if len(x.chunks[ax]) > 1 and not sharded:
        warnings.warn(
            f"the logits are split along the class axis ({ax}) into {len(x.chunks[ax])} "
            "chunks; rechunking them so that each block holds whole rows of classes. "
            f"Chunk them with the class axis whole (e.g. chunks={{{ax}: -1}}) to avoid "
            "the copy.",
            PerformanceWarning,
            stacklevel=stacklevel,
        )
        x = x.rechunk({d: (-1 if d == ax else "auto") for d in range(x.ndim)})
    expected = x.chunks[:ax] + x.chunks[ax + 1 :]
    if t.chunks != expected:
        t = t.rechunk(expected)
    return x, t, ax


# ---- a vocabulary in shards ----------------------------------------------------


class _Shard(NamedTuple):
    """One shard's statistics of a block's samples (in the target's order)."""

    lse: NDArray[np.float64]  # log-sum-exp over the shard's classes
    entropy: NDArray[np.float64]  # of the distribution over the shard alone
    top: NDArray[np.float64]  # the largest logit
    top_class: NDArray[np.int64]  # its first class (global index)
    target_logit: NDArray[np.float64]  # NaN where the target is elsewhere or ignored
    weighted_sum: NDArray[np.float64]  # sum_c w_c x_c, for label smoothing
    squares: NDArray[np.float64]  # sum_c q_c^2 of the shard's distribution q
    candidates: NDArray[np.float64]  # (n, k) the largest logits, in class order at ties
    candidate_classes: NDArray[np.int64]


def _top_candidates(x: NDArray[np.float64], k: int) -> tuple[NDArray[Any], NDArray[Any]]:
    """Each row's ``k`` largest values and their columns, ties to the lower
    column (a row with a NaN: its NaN-free order does not matter, the row
    never counts as correct)."""
    n, c = x.shape
    k = min(k, c)
    keyed = np.where(np.isnan(x), -np.inf, x)
    kth = -np.partition(-keyed, k - 1, axis=1)[:, k - 1 : k]
    above = keyed > kth
    # of the values equal to the k-th, the first columns that complete k
    room = k - above.sum(axis=1, keepdims=True)
    equal = keyed == kth
    chosen = above | (equal & (np.cumsum(equal, axis=1) <= room))
    cols = np.nonzero(chosen)[1].reshape(n, k)
    return np.take_along_axis(keyed, cols, axis=1), cols


# float64 values a shard's statistics are computed over at once (a slice of its rows)
_SHARD_SLICE_BYTES = 1 << 24


def _shard(
    xb: NDArray[Any],
    tb: NDArray[Any],
    offset: int,
    ax: int,
    weight: NDArray[np.float64] | None,
    options: _Options,
) -> _Shard:
    """The statistics of the classes ``[offset, offset + C_j)`` of a block,
    computed in float64 by fastce's kernels (and NumPy for the candidates and
    the smoothing sums), a slice of rows at a time so that the float64
    temporaries stay small."""
    c = np.shape(xb)[ax]
    rows = np.moveaxis(np.asarray(xb), ax, -1).reshape(-1, c)
    n = rows.shape[0]
    t = np.asarray(tb).astype(np.int64).reshape(-1)
    inside = (t >= offset) & (t < offset + c) & (t != options["ignore_index"])
    # each sample's target where it lies in this shard, else the shard's
    # first class: every sample then has the kernel's Brier score, from which
    # sum_c q_c^2 = brier + 2 q_t - 1 (the other per-sample values do not
    # depend on the target)
    local = np.where(inside, t - offset, 0)
    k = min(max(_topk_of(options)), c)
    out = _Shard(
        lse=np.empty(n),
        entropy=np.empty(n),
        top=np.empty(n),
        top_class=np.empty(n, dtype=np.int64),
        target_logit=np.full(n, np.nan),
        weighted_sum=np.zeros(n),
        squares=np.empty(n),
        candidates=np.empty((n, k)),
        candidate_classes=np.empty((n, k), dtype=np.int64),
    )
    step = max(1, _SHARD_SLICE_BYTES // (8 * c))
    for a in range(0, n, step):
        b = min(n, a + step)
        part = rows[a:b].astype(np.float64)
        r = _evaluate(
            part,
            local[a:b],
            topk=1,
            bins=1,
            per_sample=True,
            num_threads=options["num_threads"],
        )
        ps = r.per_sample
        assert ps is not None
        pred = ps.prediction
        out.lse[a:b] = ps.lse
        out.entropy[a:b] = ps.entropy
        out.top[a:b] = part[np.arange(b - a), pred]
        out.top_class[a:b] = pred + offset
        here = np.flatnonzero(inside[a:b])
        out.target_logit[a + here] = part[here, local[a + here]]
        with np.errstate(all="ignore"):
            out.squares[a:b] = ps.brier + 2.0 * np.exp(ps.target_logprob) - 1.0
            # a zero weight adds nothing, even against a -inf logit
            if options["label_smoothing"]:
                out.weighted_sum[a:b] = (
                    part.sum(axis=1)
                    if weight is None
                    else np.sum(np.where(weight != 0, part * weight, 0.0), axis=1)
                )
        values, cols = _top_candidates(part, k)
        out.candidates[a:b] = values
        out.candidate_classes[a:b] = cols + offset
    return out


def _topk_of(options: _Options) -> tuple[int, ...]:
    topk = options["topk"]
    return (topk,) if isinstance(topk, (int, np.integer)) else tuple(topk)


def _combine(tb: NDArray[Any], n_classes: int, options: _Options, *shards: _Shard) -> Accumulator:
    """A block's accumulator from its shards' statistics, in class order:
    each sample's log-sum-exp, loss, rank, confidence, entropy and Brier
    score as one row's kernel computes them from all its classes."""
    acc = Accumulator(**options)
    t = np.asarray(tb).astype(np.int64).reshape(-1)
    counted = t != options["ignore_index"]
    if not counted.any():
        return acc
    lse_j = np.stack([sh.lse for sh in shards])  # (shards, n)
    with np.errstate(all="ignore"):
        top = np.max(lse_j, axis=0)
        lse = top + np.log(np.sum(np.exp(lse_j - top), axis=0))
        share = np.exp(lse_j - lse)  # each shard's probability mass
        # a shard with nothing above -inf has no mass, and adds nothing (not its NaN)
        massive = share > 0
        entropy = np.sum(
            np.where(massive, share * (np.stack([sh.entropy for sh in shards]) + lse - lse_j), 0),
            axis=0,
        )
        tops = np.stack([sh.top for sh in shards])
        best = np.max(tops, axis=0)
        confidence = np.exp(best - lse)
        target_logit = np.nansum(np.stack([sh.target_logit for sh in shards]), axis=0)
        w = check_weight(options["weight"], n_classes)
        w_all = w if w.size else np.ones(n_classes)
        eps = float(options["label_smoothing"])
        w_t = w_all[np.where(counted, t, 0)]
        weighted_sum = np.sum(np.stack([sh.weighted_sum for sh in shards]), axis=0)
        # a target of zero weight adds nothing, even at a -inf logit (as the kernels)
        loss = np.where(w_t != 0, (1.0 - eps) * w_t * (lse - target_logit), 0.0)
        if eps:
            loss = loss + eps / n_classes * (float(w_all.sum()) * lse - weighted_sum)
        p_t = np.exp(target_logit - lse)
        squares = np.sum(
            np.where(massive, share * share * np.stack([sh.squares for sh in shards]), 0), axis=0
        )
        brier = squares - 2.0 * p_t + 1.0
        valid = ~np.isnan(lse) & ~np.isnan(tops).any(axis=0)
        # the rank from the candidates: exact below the largest k asked for
        cand = np.concatenate([sh.candidates for sh in shards], axis=1)
        cand_class = np.concatenate([sh.candidate_classes for sh in shards], axis=1)
        above = (cand > target_logit[:, None]) | (
            (cand == target_logit[:, None]) & (cand_class < t[:, None])
        )
    rank = np.where(valid, above.sum(axis=1), n_classes)
    confidence = np.where(valid, confidence, np.nan)
    entropy = np.where(valid, entropy, np.nan)
    # a row of -inf and +inf only, or nothing above -inf, has NaN probabilities
    loss = np.where(valid | np.isnan(loss), loss, np.nan)
    keep = np.flatnonzero(counted)
    totals = totals_of_samples(
        acc.topk,
        acc.bins,
        n_classes,
        loss[keep],
        w_t[keep].astype(np.float64),
        confidence[keep],
        entropy[keep],
        lse[keep],
        brier[keep],
        rank[keep].astype(np.int64),
    )
    acc.n_classes = n_classes
    acc.grouped = acc.paired = False
    acc._totals = totals
    return acc


def _accumulate_shards(x: da.Array, t: da.Array, ax: int, options: _Options) -> Delayed:
    """The accumulator of logits split along the class axis ``ax``."""
    n_classes = x.shape[ax]
    w = check_weight(options["weight"], n_classes)
    offsets = np.concatenate([[0], np.cumsum(x.chunks[ax])])
    xblocks = x.to_delayed()
    tblocks = t.to_delayed()
    parts: list[Delayed] = []
    for tidx in np.ndindex(*t.numblocks):
        shards = []
        for j in range(len(x.chunks[ax])):
            idx = tidx[:ax] + (j,) + tidx[ax:]
            w_j = w[offsets[j] : offsets[j + 1]] if w.size else None
            shards.append(
                delayed(_shard, pure=True)(
                    xblocks[idx], tblocks[tidx], int(offsets[j]), ax, w_j, options
                )
            )
        parts.append(delayed(_combine, pure=True)(tblocks[tidx], n_classes, options, *shards))
    return _merge_tree(parts, options)


def _block(
    xb: NDArray[Any],
    tb: NDArray[Any],
    sb: NDArray[Any] | None,
    rb: NDArray[Any] | None,
    options: _Options,
) -> Accumulator:
    acc = Accumulator(**options)
    acc.update(xb, tb, segments=sb, reference=rb)
    return acc


def _merge(options: _Options, *parts: Accumulator) -> Accumulator:
    total = Accumulator(**options)
    for part in parts:
        total.merge(part)
    return total


def _accumulate(
    logits: da.Array | ArrayLike,
    target: da.Array | ArrayLike,
    segments: da.Array | ArrayLike | None,
    options: _Options,
    reference: da.Array | ArrayLike | None = None,
) -> Delayed:
    # blocks keep the logits' number of dimensions, so ``axis`` (None included)
    # names the same class axis in each of them
    whole_rows = (
        segments is not None
        or reference is not None
        or options["softcap"] is not None
        or options["temperature"] != 1.0
        or bool(options["temperatures"])
        or options["equal_mass"]
    )
    x, t, ax = _prepare(logits, target, options["axis"], stacklevel=5, sharded=not whole_rows)
    if len(x.chunks[ax]) > 1:
        return _accumulate_shards(x, t, ax, options)
    check_weight(options["weight"], x.shape[ax])
    xblocks = x.to_delayed()
    tblocks = t.to_delayed()
    sblocks = None
    if segments is not None:
        s: da.Array = da.asarray(segments)
        # dtype and shape checked on a stand-in; the ids are read block by block
        check_segments(_placeholder(s.shape, s.dtype), t.shape)
        sblocks = s.rechunk(t.chunks).to_delayed()
    rblocks = None
    if reference is not None:
        r: da.Array = da.asarray(reference)
        native_float_array(np.empty(0, dtype=r.dtype), "reference")
        if r.shape != x.shape:
            raise ValueError(
                f"reference logits must have the logits' shape {x.shape}; got {r.shape}"
            )
        rblocks = r.rechunk(x.chunks).to_delayed()
    parts: list[Delayed] = []
    for idx in np.ndindex(*x.numblocks):
        tidx = idx[:ax] + idx[ax + 1 :]
        sb = None if sblocks is None else sblocks[tidx]
        rb = None if rblocks is None else rblocks[idx]
        parts.append(delayed(_block, pure=True)(xblocks[idx], tblocks[tidx], sb, rb, options))
    return _merge_tree(parts, options)


def _merge_tree(parts: list[Delayed], options: _Options) -> Delayed:
    """The blocks' accumulators merged in a fixed tree."""
    while len(parts) > 1:
        parts = [
            delayed(_merge, pure=True)(options, *parts[i : i + _FAN_IN])
            for i in range(0, len(parts), _FAN_IN)
        ]
    return parts[0]


def _options(
    weight: ArrayLike | None,
    ignore_index: int,
    label_smoothing: float,
    axis: SupportsIndex | None,
    topk: int | Iterable[int],
    bins: int,
    num_threads: int | None,
    softcap: float | None = None,
    temperature: float = 1.0,
    z_loss: float = 0.0,
    temperatures: Iterable[float] | None = None,
    equal_mass: bool = False,
) -> _Options:
    options: _Options = dict(
        weight=weight,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        axis=axis,
        topk=topk,
        bins=bins,
        num_threads=num_threads,
        softcap=softcap,
        temperature=temperature,
        z_loss=z_loss,
        temperatures=temperatures,
        equal_mass=equal_mass,
    )
    check_eval_options(**options)  # every option is checked before the graph is built
    return options


def accumulate(
    logits: da.Array | ArrayLike,
    target: da.Array | ArrayLike,
    weight: ArrayLike | None = None,
    *,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    axis: SupportsIndex | None = None,
    topk: int | Iterable[int] = (1, 5),
    bins: int = 15,
    segments: da.Array | ArrayLike | None = None,
    reference: da.Array | ArrayLike | None = None,
    num_threads: int | None = None,
    softcap: float | None = None,
    temperature: float = 1.0,
    z_loss: float = 0.0,
    temperatures: Iterable[float] | None = None,
    equal_mass: bool = False,
) -> Delayed:
    """A :class:`dask.delayed.Delayed` that computes to the
    :class:`fastce.Accumulator` of every block, merged; for evaluations that
    go on adding data, or several evaluations computed together
    (``dask.compute(a, b)``).  Arguments as :func:`evaluate`."""
    options = _options(
        weight,
        ignore_index,
        label_smoothing,
        axis,
        topk,
        bins,
        num_threads,
        softcap,
        temperature,
        z_loss,
        temperatures,
        equal_mass,
    )
    return _accumulate(logits, target, segments, options, reference)


def _result(acc: Accumulator) -> EvalResult:
    return acc.result()


@overload
def evaluate(
    logits: da.Array | ArrayLike,
    target: da.Array | ArrayLike,
    weight: ArrayLike | None = ...,
    *,
    topk: int | Iterable[int] = ...,
    bins: int = ...,
    ignore_index: int = ...,
    label_smoothing: float = ...,
    axis: SupportsIndex | None = ...,
    segments: da.Array | ArrayLike | None = ...,
    reference: da.Array | ArrayLike | None = ...,
    num_threads: int | None = ...,
    softcap: float | None = ...,
    temperature: float = ...,
    z_loss: float = ...,
    temperatures: Iterable[float] | None = ...,
    equal_mass: bool = ...,
    compute: Literal[True] = ...,
) -> EvalResult: ...
@overload
def evaluate(
    logits: da.Array | ArrayLike,
    target: da.Array | ArrayLike,
    weight: ArrayLike | None = ...,
    *,
    topk: int | Iterable[int] = ...,
    bins: int = ...,
    ignore_index: int = ...,
    label_smoothing: float = ...,
    axis: SupportsIndex | None = ...,
    segments: da.Array | ArrayLike | None = ...,
    reference: da.Array | ArrayLike | None = ...,
    num_threads: int | None = ...,
    softcap: float | None = ...,
    temperature: float = ...,
    z_loss: float = ...,
    temperatures: Iterable[float] | None = ...,
    equal_mass: bool = ...,
    compute: Literal[False],
) -> Delayed: ...
@overload
def evaluate(
    logits: da.Array | ArrayLike,
    target: da.Array | ArrayLike,
    weight: ArrayLike | None = ...,
    *,
    topk: int | Iterable[int] = ...,
    bins: int = ...,
    ignore_index: int = ...,
    label_smoothing: float = ...,
    axis: SupportsIndex | None = ...,
    segments: da.Array | ArrayLike | None = ...,
    reference: da.Array | ArrayLike | None = ...,
    num_threads: int | None = ...,
    softcap: float | None = ...,
    temperature: float = ...,
    z_loss: float = ...,
    temperatures: Iterable[float] | None = ...,
    equal_mass: bool = ...,
    compute: bool = ...,
) -> EvalResult | Delayed: ...
def evaluate(
    logits: da.Array | ArrayLike,
    target: da.Array | ArrayLike,
    weight: ArrayLike | None = None,
    *,
    topk: int | Iterable[int] = (1, 5),
    bins: int = 15,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    axis: SupportsIndex | None = None,
    segments: da.Array | ArrayLike | None = None,
    reference: da.Array | ArrayLike | None = None,
    num_threads: int | None = None,
    softcap: float | None = None,
    temperature: float = 1.0,
    z_loss: float = 0.0,
    temperatures: Iterable[float] | None = None,
    equal_mass: bool = False,
    compute: bool = True,
) -> EvalResult | Delayed:
    """:func:`fastce.evaluate` of dask arrays (or anything ``dask.array.asarray``
    takes): the same :class:`fastce.EvalResult`, without per-sample arrays.

    With ``compute=False`` returns a :class:`dask.delayed.Delayed` of the
    result instead of computing it on the current scheduler.
    """
    options = _options(
        weight,
        ignore_index,
        label_smoothing,
        axis,
        topk,
        bins,
        num_threads,
        softcap,
        temperature,
        z_loss,
        temperatures,
        equal_mass,
    )
    result: Delayed = delayed(_result, pure=True)(
        _accumulate(logits, target, segments, options, reference)
    )
    return cast(EvalResult, result.compute()) if compute else result


def _reduced_loss(
    acc: Accumulator, reduction: str, dtype: np.dtype[np.float32] | np.dtype[np.float64]
) -> NDArray[np.float32 | np.float64]:
    return np.asarray(acc.loss_sum if reduction == "sum" else acc.loss, dtype=dtype)


def _loss_none(
    xb: NDArray[Any],
    tb: NDArray[Any],
    weight: NDArray[np.float64] | None,
    ignore_index: int,
    label_smoothing: float,
    axis: int,
    num_threads: int | None,
) -> NDArray[np.float32 | np.float64]:
    return _cross_entropy(
        xb,
        tb,
        weight,
        ignore_index=ignore_index,
        reduction="none",
        label_smoothing=label_smoothing,
        axis=axis,
        num_threads=num_threads,
    )


def cross_entropy(
    logits: da.Array | ArrayLike,
    target: da.Array | ArrayLike,
    weight: ArrayLike | None = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    axis: SupportsIndex | None = None,
    num_threads: int | None = None,
) -> da.Array:
    """:func:`fastce.cross_entropy` of dask arrays, as a lazy dask array.

    ``"mean"`` and ``"sum"`` give a 0-d array (float32 for float16, bfloat16
    and float32 logits, float64 for float64, as in memory) reduced through the
    accumulators; ``"none"`` gives the per-sample losses, blockwise, with the
    target's shape and the logits' chunks.  Class-index targets only.
    """
    reduction = check_reduction(reduction)
    x, t, ax = _prepare(logits, target, axis, stacklevel=3)
    dtype = result_dtype(x.dtype)
    if weight is not None:
        weight = check_weight(weight, x.shape[ax])
    if reduction == "none":
        check_eval_options(
            weight,
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
            num_threads=num_threads,
        )  # the options' checks
        index = tuple(range(x.ndim))
        tindex = index[:ax] + index[ax + 1 :]
        return cast(
            da.Array,
            da.blockwise(
                _loss_none,
                tindex,
                x,
                index,
                t,
                tindex,
                dtype=dtype,
                concatenate=True,
                meta=np.empty((0,) * len(tindex), dtype=dtype),
                weight=weight,
                ignore_index=ignore_index,
                label_smoothing=label_smoothing,
                axis=ax - x.ndim,
                num_threads=num_threads,
            ),
        )
    options = _options(weight, ignore_index, label_smoothing, ax - x.ndim, 1, 1, num_threads)
    acc = _accumulate(x, t, None, options)
    value: Delayed = delayed(_reduced_loss, pure=True)(acc, reduction, dtype)
    return cast(da.Array, da.from_delayed(value, shape=(), dtype=dtype))


def _read_rows(path: str, start: int, stop: int) -> NDArray[Any]:
    return np.array(np.load(path, mmap_mode="r")[start:stop])


def from_npy(path: str | os.PathLike[str], rows_per_chunk: int | None = None) -> da.Array:
    """A dask array of a ``.npy`` file, read by each task from its own memory
    map, ``rows_per_chunk`` rows (along axis 0) at a time; by default about
    128 MiB per chunk.  Every worker must see the file at ``path``."""
    path = str(path)
    mm = np.load(path, mmap_mode="r")
    shape, dtype = mm.shape, mm.dtype
    del mm
    if not shape:
        raise ValueError(f"{path} holds a 0-d array; there is nothing to chunk")
    row_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize)
    if rows_per_chunk is None:
        rows_per_chunk = max(1, (128 << 20) // row_bytes)
    if int(rows_per_chunk) < 1:
        raise ValueError(f"rows_per_chunk must be a positive integer; got {rows_per_chunk!r}")
    rows_per_chunk = int(rows_per_chunk)
    blocks: list[da.Array] = []
    for start in range(0, max(shape[0], 1), rows_per_chunk):
        stop = min(start + rows_per_chunk, shape[0])
        part = delayed(_read_rows, pure=True)(path, start, stop)
        blocks.append(da.from_delayed(part, shape=(stop - start,) + shape[1:], dtype=dtype))
    return cast(da.Array, da.concatenate(blocks, axis=0))
