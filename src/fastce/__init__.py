"""fastce: fast CPU softmax cross-entropy with PyTorch's semantics and a NumPy interface."""

import os as _os

# GNU OpenMP's idle threads spin for about a millisecond after each parallel call; on a
# machine whose other cores are busy, that spinning holds up the next call more than the
# work does.  A short spin keeps an idle machine's speed.  Read when the runtime loads,
# which importing the kernels below does; a user's own setting wins.
if "OMP_WAIT_POLICY" not in _os.environ and "GOMP_SPINCOUNT" not in _os.environ:
    _os.environ["GOMP_SPINCOUNT"] = "10000"

from ._config import (
    get_num_threads,
    get_result_cache_bytes,
    set_num_threads,
    set_result_cache_bytes,
    show_config,
)
from .functional import (
    CrossEntropyLoss,
    binary_cross_entropy,
    binary_cross_entropy_grad,
    binary_cross_entropy_with_grad,
    binary_cross_entropy_with_logits,
    binary_cross_entropy_with_logits_grad,
    binary_cross_entropy_with_logits_with_grad,
    cross_entropy,
    cross_entropy_grad,
    cross_entropy_with_grad,
    log_softmax,
    logsumexp,
    nll_loss,
    softmax,
)
from .linear import linear_cross_entropy, linear_cross_entropy_with_grad
from .metrics import Accumulator, EvalResult, evaluate, evaluate_linear, fit_temperature

__version__ = "0.1.0"

__all__ = [
    "Accumulator",
    "CrossEntropyLoss",
    "EvalResult",
    "binary_cross_entropy",
    "binary_cross_entropy_grad",
    "binary_cross_entropy_with_grad",
    "binary_cross_entropy_with_logits",
    "binary_cross_entropy_with_logits_grad",
    "binary_cross_entropy_with_logits_with_grad",
    "cross_entropy",
    "cross_entropy_grad",
    "cross_entropy_with_grad",
    "evaluate",
    "evaluate_linear",
    "fit_temperature",
    "get_num_threads",
    "get_result_cache_bytes",
    "linear_cross_entropy",
    "linear_cross_entropy_with_grad",
    "log_softmax",
    "logsumexp",
    "nll_loss",
    "set_num_threads",
    "set_result_cache_bytes",
    "show_config",
    "softmax",
]
