"""fastce: fast CPU softmax cross-entropy with PyTorch's semantics and a NumPy interface."""

from ._config import get_num_threads, set_num_threads, show_config
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
from .metrics import Accumulator, EvalResult, evaluate

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
    "get_num_threads",
    "log_softmax",
    "logsumexp",
    "nll_loss",
    "set_num_threads",
    "show_config",
    "softmax",
]
