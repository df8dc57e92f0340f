"""ndarray subclasses never change the mathematics, and outputs are plain
arrays whose elements each have their own memory."""

import numpy as np
import pytest

import fastce
from fastce._validate import overlaps_itself

# np.matrix warns that it is not the recommended way to hold matrices: it is
# here because users still pass it
pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")

rng = np.random.default_rng(11)
X = rng.standard_normal((3, 4))
Y = rng.random((3, 4))
T = np.array([0, 3, 2])


class Tagged(np.ndarray):
    """A subclass whose operators are not NumPy's."""

    def __mul__(self, other):
        return np.asarray(self) @ np.ones((self.shape[-1], self.shape[-1]))

    __rmul__ = __mul__


def tagged(a):
    return np.asarray(a).view(Tagged)


# logits x, class indices t, probabilities y and one weight per class w
CALLS = {
    "cross_entropy": lambda x, t, y, w: fastce.cross_entropy(x, t, reduction="none"),
    "cross_entropy_with_grad": lambda x, t, y, w: fastce.cross_entropy_with_grad(x, t, weight=w),
    "cross_entropy probabilities": lambda x, t, y, w: fastce.cross_entropy(
        x, y, label_smoothing=0.1
    ),
    "nll_loss": lambda x, t, y, w: fastce.nll_loss(x, t, weight=w),
    "log_softmax": lambda x, t, y, w: fastce.log_softmax(x),
    "softmax": lambda x, t, y, w: fastce.softmax(x, axis=0),
    "logsumexp": lambda x, t, y, w: fastce.logsumexp(x),
    "bce with logits": lambda x, t, y, w: fastce.binary_cross_entropy_with_logits_with_grad(
        x, y, weight=y, pos_weight=w, reduction="sum"
    ),
    "bce": lambda x, t, y, w: fastce.binary_cross_entropy_with_grad(
        1 / (1 + np.exp(-x)), y, weight=y
    ),
    "evaluate": lambda x, t, y, w: fastce.evaluate(x, t, weight=w, per_sample=True).loss,
    "Accumulator": lambda x, t, y, w: (
        fastce.Accumulator(weight=w).update(x, t, per_sample=True).loss
    ),
}


def plain(value):
    if isinstance(value, tuple):
        return tuple(plain(v) for v in value)
    assert type(value) in (np.ndarray, np.float64, np.float32, float), type(value)
    return np.asarray(value)


@pytest.mark.parametrize("name", CALLS)
@pytest.mark.parametrize("wrap", [np.matrix, tagged], ids=["matrix", "subclass"])
def test_subclass_inputs_give_the_plain_arrays_results(name, wrap):
    w = Y[0]
    want = CALLS[name](X, T, Y, w)
    # a matrix is never 1-d: the weights are wrapped by the other subclass only
    ww = w if wrap is np.matrix else wrap(w)
    for args in ((wrap(X), T, Y, w), (X, T, wrap(Y), ww), (wrap(X), T, wrap(Y), ww)):
        got = CALLS[name](*args)
        for g, w in zip(
            np.atleast_1d(plain(got)) if not isinstance(got, tuple) else plain(got),
            np.atleast_1d(want) if not isinstance(want, tuple) else want,
        ):
            np.testing.assert_array_equal(g, w)


def test_memory_maps_are_read_and_written(tmp_path):
    x = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float32, shape=(3, 4))
    x[...] = X
    out = np.memmap(tmp_path / "out.bin", mode="w+", dtype=np.float32, shape=(3, 4))
    fastce.softmax(x, out=out)
    np.testing.assert_array_equal(out, fastce.softmax(X.astype(np.float32)))


@pytest.mark.parametrize("name", CALLS)
def test_masked_arrays_are_refused_not_read_without_their_mask(name):
    masked = np.ma.masked_array(X, mask=X > 1)
    with pytest.raises(TypeError, match="masked arrays"):
        CALLS[name](masked, T, Y, Y[0])


OUT_CALLS = {
    "softmax": lambda out: fastce.softmax(X, out=out),
    "log_softmax": lambda out: fastce.log_softmax(X, out=out),
    "cross_entropy_grad": lambda out: fastce.cross_entropy_grad(X, T, out=out),
    "cross_entropy_with_grad": lambda out: fastce.cross_entropy_with_grad(X, T, out=out),
    "bce_grad": lambda out: fastce.binary_cross_entropy_with_logits_grad(X, Y, out=out),
    "bce_with_grad": lambda out: fastce.binary_cross_entropy_with_grad(Y, Y, out=out),
}


@pytest.mark.parametrize("name", OUT_CALLS)
def test_outputs_that_are_not_plain_arrays_are_refused(name):
    for out in (
        np.matrix(np.zeros((3, 4))),
        tagged(np.zeros((3, 4))),
        np.ma.masked_array(np.zeros((3, 4))),
    ):
        with pytest.raises(TypeError, match="plain NumPy array"):
            OUT_CALLS[name](out)


@pytest.mark.parametrize("name", OUT_CALLS)
def test_outputs_whose_elements_share_memory_are_refused(name):
    base = np.zeros(64)
    for strides in ((8, 8), (0, 8), (16, 8), (8, 0)):
        out = np.lib.stride_tricks.as_strided(base, (3, 4), strides)
        with pytest.raises(ValueError, match="share memory"):
            OUT_CALLS[name](out)
        assert not base.any()


def test_overlap_is_found_exactly():
    a = np.zeros((6, 8))
    for view in (
        a,
        a.T,
        a[::2, 1::3],
        a[:, ::-1],
        a.reshape(2, 3, 8).transpose(2, 0, 1),
        np.zeros((1, 5)),
        np.zeros((0, 3)),
        np.zeros((4, 1, 3))[:, :, ::2],
    ):
        assert not overlaps_itself(view)
    # interleaved axes that never meet, and ones that do
    buf = np.zeros(100)
    assert not overlaps_itself(np.lib.stride_tricks.as_strided(buf, (2, 3), (8, 16)))
    assert overlaps_itself(np.lib.stride_tricks.as_strided(buf, (3, 3), (8, 16)))
    assert overlaps_itself(np.lib.stride_tricks.as_strided(buf, (2, 2), (0, 8)))
    # elements closer than their own size
    assert overlaps_itself(np.lib.stride_tricks.as_strided(buf, (2,), (4,)))
