"""``sklearn.metrics``' ``log_loss`` and ``top_k_accuracy_score`` on fastce's kernels.

The signatures, defaults, results, warnings and errors are scikit-learn's
(1.9): labels of any sortable type (numbers or strings, inferred from
``y_true`` or given as ``labels``), a binary problem's one column of
positive-class scores, ``sample_weight``, ``normalize``.  Swap the import
and keep the call::

    from fastce.sklearn import log_loss, top_k_accuracy_score  # was sklearn.metrics

Both also take ``from_logits=True``: the scores are then logits (a binary
problem's one column the positive class's log-odds), read by the kernels
directly; no probability array is made.  ``log_loss(y, z, from_logits=True)``
is ``log_loss(y, softmax(z, axis=1))`` with the same clipping of each
probability to ``[eps, 1 - eps]``.

scikit-learn need not be installed.  Where it is, the warning of a ``k`` of
no meaning is its ``UndefinedMetricWarning``.

Where the results differ from scikit-learn's: per-sample losses are summed
in float64 (scikit-learn sums float32 and float16 losses in their own
dtype), and arrays of other array-API libraries are read through NumPy.
"""

from __future__ import annotations

import importlib
import math
import warnings
from numbers import Integral
from typing import Any

import numpy as np
import numpy.typing as npt
from numpy.typing import ArrayLike

from . import _kernels
from . import functional as _functional
from . import metrics as _metrics
from ._validate import as_array

__all__ = ["log_loss", "top_k_accuracy_score", "InvalidParameterError", "UndefinedMetricWarning"]

_Array = npt.NDArray[Any]


class InvalidParameterError(ValueError, TypeError):
    """A parameter of the wrong type or outside its range, as scikit-learn's
    own (both a ``ValueError`` and a ``TypeError``)."""


def _undefined_metric_warning() -> type[Warning]:
    try:
        exceptions = importlib.import_module("sklearn.exceptions")
    except ImportError:
        return _UndefinedMetricWarning
    warning: type[Warning] = exceptions.UndefinedMetricWarning
    return warning


class _UndefinedMetricWarning(UserWarning):
    """A metric of no meaning for its input (scikit-learn's warning, where it
    is not installed)."""


UndefinedMetricWarning = _undefined_metric_warning()


# ---- argument checks, as scikit-learn makes them -----------------------------


def _check_bool(value: object, name: str, function: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidParameterError(
            f"The '{name}' parameter of {function} must be an instance of 'bool' or an "
            f"instance of 'numpy.bool'. Got {value!r} instead."
        )
    return bool(value)


def _num_samples(x: _Array) -> int:
    return int(x.shape[0]) if x.ndim else 1


def _check_consistent_length(*arrays: _Array | None) -> None:
    lengths = [_num_samples(a) for a in arrays if a is not None]
    if len(set(lengths)) > 1:
        raise ValueError(f"Found input variables with inconsistent numbers of samples: {lengths}")


def _numbers(x: object, name: str | None, float_only: bool) -> _Array:
    """``check_array(x, ensure_2d=False)``: an array of at most two dimensions
    and at least one sample, of numbers (float only: integers become
    float64), whose finiteness is checked by the caller."""
    arr = as_array(x)
    if arr.dtype.kind == "c":
        raise ValueError(f"Complex data not supported\n{arr}\n")
    if arr.dtype.kind == "O":
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError) as e:
            raise ValueError(str(e)) from None
    if arr.dtype.kind in "US":
        try:
            arr = arr.astype(np.float64)
        except ValueError as e:
            raise ValueError(str(e)) from None
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name or 'Input'} must hold numbers; got dtype {arr.dtype}")
    if arr.dtype.kind == "f" and arr.dtype.itemsize > 8:
        arr = arr.astype(np.float64)
    if float_only and arr.dtype.kind != "f":
        arr = arr.astype(np.float64)
    if arr.ndim > 2:
        raise ValueError(f"Found array with dim {arr.ndim}, while dim <= 2 is required.")
    if arr.ndim == 0:
        raise ValueError(
            f"Input should have at least 1 dimension i.e. satisfy `len(x.shape) > 0`, got "
            f"scalar `{arr!r}` instead."
        )
    if arr.shape[0] == 0:
        raise ValueError(
            f"Found array with 0 sample(s) (shape={arr.shape}) while a minimum of 1 is required."
        )
    return arr


def _not_finite_error(arr: _Array, name: str | None) -> ValueError:
    where = f"Input {name}" if name else "Input"
    if np.isnan(arr).any():
        return ValueError(f"{where} contains NaN.")
    return ValueError(f"{where} contains infinity or a value too large for {arr.dtype!r}.")


def _check_finite(arr: _Array, name: str | None) -> None:
    """scikit-learn's refusal of NaN and infinities; one sum over the array,
    which is finite when every element is (unless it overflows: then the
    elements are looked at)."""
    if arr.dtype.kind != "f":
        return
    with np.errstate(over="ignore", invalid="ignore"):
        total = float(np.add.reduce(arr, axis=None))
    if not math.isfinite(total) and not np.isfinite(arr).all():
        raise _not_finite_error(arr, name)


def _column_or_1d(y: _Array, name: str = "y") -> _Array:
    if y.ndim == 1:
        return y
    if y.ndim == 2 and y.shape[1] == 1:
        return y.ravel()
    raise ValueError(f"{name} should be a 1d array, got an array of shape {y.shape} instead.")


def _labels_array(y: object) -> _Array:
    """Labels as an array: strings or numbers, never a mix of the two
    (which NumPy would turn into strings)."""
    arr = as_array(y)
    if not isinstance(y, np.ndarray) and arr.dtype.kind in "US":
        as_objects = np.asarray(y, dtype=object)
        if as_objects.ndim >= 1 and as_objects.size:
            arr = as_objects
    if arr.dtype.kind == "O":
        kinds = {isinstance(v, str) for v in arr.ravel()}
        if kinds == {True}:
            arr = arr.astype(str)
        elif kinds == {True, False}:
            raise ValueError(
                f"Mix of label input types (string and number); Got {np.unique(arr.astype(str))}."
            )
    return arr


def _label_type(y: _Array) -> str:
    """scikit-learn's ``type_of_target`` for the labels these metrics take:
    'binary', 'multiclass', 'multilabel-indicator', 'continuous' or 'unknown'."""
    if y.dtype.kind == "O":
        return "unknown"
    if y.ndim == 2 and y.shape[1] > 1:
        if y.dtype.kind in "biu" or (y.dtype.kind == "f" and np.all(y == np.round(y))):
            if np.isin(y, (0, 1)).all():
                return "multilabel-indicator"
        return "unknown"
    flat = y.ravel()
    if flat.dtype.kind == "f" and flat.size and not np.all(flat == np.round(flat)):
        return "continuous"
    return "binary" if np.unique(flat).size <= 2 else "multiclass"


def _sample_weight(w: _Array | None, n: int) -> _Array | None:
    """scikit-learn's checks of sample weights (their length checked before)."""
    if w is None:
        return None
    if w.dtype.kind not in "biuf":
        w = w.astype(np.float64)
    w = w.astype(np.float64) if w.dtype.kind != "f" else w
    if w.ndim == 0:
        w = np.full(n, w)
    if w.ndim != 1:
        raise ValueError(f"Sample weights must be 1D array or scalar, got {w.ndim}D array.")
    if not np.isfinite(w).all():
        raise _not_finite_error(w, "sample_weight")
    return w


def _average(values: _Array, weights: _Array | None, normalize: bool) -> float:
    """np.average, np.sum or np.dot, as scikit-learn reduces a metric, in float64."""
    v = values.astype(np.float64, copy=False)
    if weights is None:
        return float(v.mean() if normalize else v.sum())
    w = weights.astype(np.float64, copy=False)
    total = float(np.dot(v, w))
    if not normalize:
        return total
    scale = float(w.sum())
    if scale == 0.0:
        raise ZeroDivisionError("Weights sum to zero, can't be normalized")
    return total / scale


# ---- log_loss ----------------------------------------------------------------


def log_loss(
    y_true: ArrayLike,
    y_proba: ArrayLike | None = None,
    *,
    normalize: bool = True,
    sample_weight: ArrayLike | None = None,
    labels: ArrayLike | None = None,
    from_logits: bool = False,
    y_pred: Any = "deprecated",
) -> float:
    """Log loss (cross-entropy) of predicted probabilities, as
    ``sklearn.metrics.log_loss``.

    Parameters
    ----------
    y_true : array_like
        The true labels (numbers or strings), or a label indicator matrix.
    y_proba : array_like of shape (n_samples, n_classes) or (n_samples,)
        Predicted probabilities, the columns in the sorted order of the
        labels; one column is the positive class's probability.  Each is
        clipped to ``[eps, 1 - eps]``, ``eps`` the precision of its dtype.
    normalize : bool, default True
        The mean loss per sample, else the sum.
    sample_weight : array_like of shape (n_samples,), optional
    labels : array_like, optional
        The labels, when ``y_true`` does not hold every one.
    from_logits : bool, default False
        ``y_proba`` holds logits (one column: the positive class's log-odds):
        the loss of their softmax (sigmoid), computed from the logits by
        the kernels without a probability array.  Logits may be ``-inf``.
    y_pred : array_like
        Deprecated in scikit-learn 1.9: ``y_proba``'s former name.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        As scikit-learn: probabilities outside [0, 1], NaN or infinite
        scores, inconsistent lengths, labels that do not match the columns.

    Examples
    --------
    >>> from fastce.sklearn import log_loss
    >>> round(log_loss(["spam", "ham", "ham", "spam"],
    ...                [[.1, .9], [.9, .1], [.8, .2], [.35, .65]]), 5)
    0.21616
    >>> logits = [[2.0, 0.5, -1.0], [0.0, 0.0, 3.0]]
    >>> round(log_loss([0, 2], logits, labels=[0, 1, 2], from_logits=True), 5)
    0.16812
    """
    if not (isinstance(y_pred, str) and y_pred == "deprecated"):
        if y_proba is not None:
            raise ValueError(
                "Cannot use both `y_pred` and `y_proba`. `y_pred` is deprecated, "
                "use `y_proba` instead."
            )
        warnings.warn(
            "`y_pred` was renamed to `y_proba` in version 1.9 and will be removed "
            "in 1.11. Use `y_proba` instead.",
            FutureWarning,
            stacklevel=2,
        )
        y_proba = y_pred
    if y_proba is None:
        raise InvalidParameterError(
            "The 'y_proba' parameter of log_loss must be an array-like. Got None instead."
        )
    normalize = _check_bool(normalize, "normalize", "log_loss")
    from_logits = _check_bool(from_logits, "from_logits", "log_loss")
    scores = _numbers(y_proba, None, float_only=True)
    if from_logits:
        # NaN and +inf are found in the losses, which they make NaN
        if scores.dtype.kind != "f":
            scores = scores.astype(np.float64)
    else:
        _check_probabilities(scores)
    y = _labels_array(y_true)
    w = None if sample_weight is None else as_array(sample_weight)
    _check_consistent_length(scores, y, w)
    w = _sample_weight(w, _num_samples(scores))
    if w is not None and not np.any(w):
        raise ValueError("Sample weights must contain at least one non-zero number.")
    classes, target = _encoded_targets(y, labels, y_true)
    n_columns = 2 if scores.ndim == 1 or scores.shape[1] == 1 else scores.shape[1]
    if not from_logits:
        _warn_unless_normalised(scores)
    n_target_classes = target.shape[1] if target.ndim == 2 else max(classes.shape[0], 2)
    if classes.shape[0] != n_columns:
        if labels is None:
            raise ValueError(
                f"y_true and y_prob contain different number of classes: {n_target_classes} "
                f"vs {n_columns}. Please provide the true labels explicitly through the labels "
                f"argument. Classes found in y_true: {classes}"
            )
        raise ValueError(
            "The number of classes in labels is different from that in y_prob. "
            f"Classes found in labels: {classes}"
        )
    eps = float(np.finfo(scores.dtype).eps)
    if from_logits:
        losses = _losses_from_logits(scores, target)
        # log(clip(p, eps, 1 - eps)), as scikit-learn clips the probabilities
        np.clip(losses, -math.log1p(-eps), -math.log(eps), out=losses)
    else:
        losses = _losses_from_probabilities(scores, target, eps)
    return _average(losses, w, normalize)


def _check_probabilities(p: _Array) -> None:
    """scikit-learn's checks of probabilities: finite, at most 1, at least 0;
    one pass of the kernels, which find the first value outside [0, 1]."""
    flat = np.ascontiguousarray(p).reshape(-1)
    if _kernels.first_outside_unit(flat) < 0:
        return
    _check_finite(p, None)
    if p.max() > 1:
        raise ValueError(f"y_prob contains values greater than 1: {p.max()}")
    raise ValueError(f"y_prob contains values lower than 0: {p.min()}")


def _warn_unless_normalised(p: _Array) -> None:
    if p.ndim == 1 or p.shape[1] == 1:
        return  # made of p and 1 - p
    eps = float(np.finfo(p.dtype).eps)
    if p.dtype.itemsize >= 4:
        # a matrix-vector product: one read at the memory's speed, in threads
        sums = p @ np.ones(p.shape[1], dtype=p.dtype)
    else:
        sums = p.sum(axis=1)
    if not np.all(np.abs(sums.astype(np.float64) - 1.0) <= 1e-8 + math.sqrt(eps)):
        warnings.warn(
            "The y_prob values do not sum to one. Make sure to pass probabilities.",
            UserWarning,
            stacklevel=3,
        )


def _encoded_targets(y: _Array, labels: object, given: object) -> tuple[_Array, _Array]:
    """The sorted classes, and ``y`` as class indices (1-D) or, for a label
    indicator matrix, the matrix itself; scikit-learn's ``LabelBinarizer``'s
    rules and errors."""
    kind = _label_type(y)
    if kind == "multilabel-indicator" and labels is None:
        return np.arange(y.shape[1]), y
    if kind in ("continuous", "unknown") or y.ndim > 2 or (y.ndim == 2 and y.shape[1] > 1):
        if y.ndim == 2 and y.shape[1] > 1 and kind not in ("continuous", "unknown"):
            raise ValueError("Multioutput target data is not supported with label binarization")
        raise ValueError(f"Unknown label type: {(given,)!r}")
    y = y.ravel()
    if labels is not None:
        label_values = _labels_array(labels).ravel()
        classes = np.unique(label_values)
        if classes.shape != label_values.shape or not np.all(classes == label_values):
            warnings.warn(
                f"Labels passed were {labels}. But this function assumes labels are ordered "
                f"lexicographically. Pass the ordered labels={classes.tolist()} and ensure "
                f"that the columns of y_prob correspond to this ordering.",
                UserWarning,
                stacklevel=3,
            )
        if not np.isin(y, classes).all():
            undeclared = set(as_array(y).tolist()) - set(label_values.tolist())
            raise ValueError(
                f"y_true contains values {undeclared} not belonging to the passed labels {labels}."
            )
    else:
        classes = np.unique(y)
    if classes.shape[0] == 1:
        if labels is None:
            raise ValueError(
                f"y_true contains only one label ({classes[0]}). Please provide the list of all "
                "expected class labels explicitly through the labels argument."
            )
        raise ValueError(f"The labels array needs to contain at least two labels, got {classes}.")
    return classes, np.searchsorted(classes, y)


def _losses_from_probabilities(p: _Array, target: _Array, eps: float) -> _Array:
    """``-log(clip(p_t, eps, 1 - eps))`` per sample (summed over the true
    labels of an indicator matrix)."""
    n = p.shape[0]
    if target.ndim == 2:
        clipped = np.clip(p, eps, 1 - eps)
        losses: _Array = -(target * np.log(clipped)).sum(axis=1)
        return losses
    if p.ndim == 1 or p.shape[1] == 1:
        positive = p.reshape(n)
        p_t = np.where(target == 1, positive, np.subtract(1, positive, dtype=p.dtype))
    else:
        p_t = p[np.arange(n), target]
    return -np.log(np.clip(p_t, eps, 1 - eps).astype(np.float64))


def _losses_from_logits(z: _Array, target: _Array) -> _Array:
    """The cross-entropy of each sample's logits (the binary one of a
    column of log-odds) from the kernels; NaN and +inf logits refused."""
    n = z.shape[0]
    if z.ndim == 1 or z.shape[1] == 1:
        if target.ndim == 2:
            target = target[:, 1]
        y = target.astype(z.dtype if z.dtype.itemsize >= 4 else np.float32)
        losses = _functional.binary_cross_entropy_with_logits(
            z.reshape(n), y.reshape(n), reduction="none"
        )
    elif target.ndim == 2:
        logp = _functional.log_softmax(z, axis=1)
        losses = -(target * logp).sum(axis=1)
    else:
        losses = _functional.cross_entropy(z, target, reduction="none", axis=1)
    losses = np.asarray(losses, dtype=np.float64)
    if np.isnan(losses).any():
        rows = np.isnan(losses)
        _check_finite(np.where(np.isneginf(z[rows]), 0, z[rows]), None)
    return losses


# ---- top_k_accuracy_score ----------------------------------------------------


def top_k_accuracy_score(
    y_true: ArrayLike,
    y_score: ArrayLike,
    *,
    k: int = 2,
    normalize: bool = True,
    sample_weight: ArrayLike | None = None,
    labels: ArrayLike | None = None,
    from_logits: bool = False,
) -> float:
    """The fraction of samples whose true label is among the ``k`` highest
    scores, as ``sklearn.metrics.top_k_accuracy_score``.

    Ties are scikit-learn's: of equal scores, the label of the higher index
    ranks higher.

    Parameters
    ----------
    y_true : array_like of shape (n_samples,)
    y_score : array_like of shape (n_samples, n_classes) or (n_samples,)
        Scores (probabilities or decision values), the columns in the sorted
        order of the labels; a binary problem's one column scores the
        positive class.
    k : int >= 1, default 2
    normalize : bool, default True
        The fraction of hits, else their (weighted) count.
    sample_weight : array_like of shape (n_samples,), optional
    labels : array_like of shape (n_classes,), optional
        The sorted labels, when ``y_true`` does not hold every one.
    from_logits : bool, default False
        The scores are logits: ranked as they are (the ranks of their
        softmax), and a binary column of log-odds is positive above 0 at
        ``k=1`` (scikit-learn's threshold is 0.5 for scores in [0, 1]).

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np
    >>> from fastce.sklearn import top_k_accuracy_score
    >>> y_score = np.array([[0.5, 0.2, 0.2], [0.3, 0.4, 0.2], [0.2, 0.4, 0.3], [0.7, 0.2, 0.1]])
    >>> top_k_accuracy_score([0, 1, 2, 2], y_score, k=2)
    0.75
    """
    if (
        isinstance(k, (bool, np.bool_))
        or not isinstance(k, Integral)
        or k < 1  # a bool is an int to scikit-learn too
    ) and not (isinstance(k, (bool, np.bool_)) and k):
        raise InvalidParameterError(
            "The 'k' parameter of top_k_accuracy_score must be an int in the range [1, inf). "
            f"Got {k!r} instead."
        )
    normalize = _check_bool(normalize, "normalize", "top_k_accuracy_score")
    from_logits = _check_bool(from_logits, "from_logits", "top_k_accuracy_score")
    y = _labels_array(y_true)
    if y.ndim == 0 or y.shape[0] == 0:
        raise ValueError(
            f"Found array with 0 sample(s) (shape={y.shape}) while a minimum of 1 is required."
        )
    y = _column_or_1d(y)
    kind = _label_type(y)
    if kind == "binary" and labels is not None and len(as_array(labels).ravel()) > 2:
        kind = "multiclass"
    if kind not in ("binary", "multiclass"):
        raise ValueError(f"y type must be 'binary' or 'multiclass', got '{kind}' instead.")
    scores = _numbers(y_score, None, float_only=False)
    _check_finite(scores, None)
    if kind == "binary":
        if scores.ndim == 2 and scores.shape[1] != 1:
            raise ValueError(
                "`y_true` is binary while y_score is 2d with"
                f" {scores.shape[1]} classes. If `y_true` does not contain all the"
                " labels, `labels` must be provided."
            )
        scores = scores.reshape(-1)
    elif scores.ndim != 2:
        raise ValueError(
            "`y_score` needs to be of shape `(n_samples, n_classes)`, since "
            "`y_true` contains multiple classes. Got "
            f"`y_score.shape={scores.shape}`."
        )
    w = None if sample_weight is None else as_array(sample_weight)
    _check_consistent_length(y, scores, w)
    w = _sample_weight(w, y.shape[0])
    n_score_classes = scores.shape[1] if scores.ndim == 2 else 2
    classes = _top_k_classes(y, labels, n_score_classes)
    n_classes = classes.shape[0]
    if k >= n_classes:
        warnings.warn(
            f"'k' ({k}) greater than or equal to 'n_classes' ({n_classes}) "
            "will result in a perfect score and is therefore meaningless.",
            UndefinedMetricWarning,
            stacklevel=2,
        )
    target = np.searchsorted(classes, y)
    if kind == "binary":
        if k == 1:
            threshold = 0.0 if from_logits or not (scores.min() >= 0 and scores.max() <= 1) else 0.5
            hits = (scores > threshold).astype(np.int64) == target
        else:
            hits = np.ones(y.shape[0], dtype=bool)
    else:
        hits = _target_ranks(scores, target) < k
    return _average(hits, w, normalize)


def _top_k_classes(y: _Array, labels: object, n_score_classes: int) -> _Array:
    if labels is None:
        classes = np.unique(y)
        if classes.shape[0] != n_score_classes:
            raise ValueError(
                f"Number of classes in 'y_true' ({classes.shape[0]}) not equal "
                f"to the number of classes in 'y_score' ({n_score_classes})."
                "You can provide a list of all known classes by assigning it "
                "to the `labels` parameter."
            )
        return classes
    label_values = _column_or_1d(_labels_array(labels))
    if label_values.dtype.kind != "O" and bool(np.all(label_values[1:] > label_values[:-1])):
        classes = label_values  # increasing: unique and ordered, without a sort
    else:
        classes = np.unique(label_values)
    if classes.shape[0] != label_values.shape[0]:
        raise ValueError("Parameter 'labels' must be unique.")
    if not np.array_equal(classes, label_values):
        raise ValueError("Parameter 'labels' must be ordered.")
    if classes.shape[0] != n_score_classes:
        raise ValueError(
            f"Number of given labels ({classes.shape[0]}) not equal to the "
            f"number of classes in 'y_score' ({n_score_classes})."
        )
    if not np.isin(y, classes).all():
        raise ValueError("'y_true' contains labels not in parameter 'labels'.")
    return classes


# the negated scores are made this many bytes of rows at a time, in one buffer
# that stays in the caches
_BLOCK_BYTES = 16 << 20


def _target_ranks(scores: _Array, target: _Array) -> _Array:
    """Each target's rank among its row's scores, ties going to the higher
    index as in scikit-learn.  The evaluation kernel's rank counts the
    larger scores and the equal ones at a lower index; of the negated
    scores, it counts the smaller ones and the equal ones at a lower index,
    which are exactly the classes that do not rank above the target in
    scikit-learn's order: that rank is ``C - 1`` less it."""
    n, n_classes = scores.shape
    x = scores if scores.dtype.kind == "f" else scores.astype(np.float64)
    ranks = np.empty(n, dtype=np.int64)
    rows = max(1, _BLOCK_BYTES // (n_classes * x.itemsize))
    buffer = np.empty((min(rows, n), n_classes), dtype=x.dtype)
    for start in range(0, n, rows):
        block = x[start : start + rows]
        negated = np.negative(block, out=buffer[: block.shape[0]])
        per_sample = _metrics.evaluate(
            negated, target[start : start + rows], topk=1, bins=1, per_sample=True
        ).per_sample
        assert per_sample is not None  # asked for
        ranks[start : start + rows] = (n_classes - 1) - per_sample.target_rank
    return ranks
