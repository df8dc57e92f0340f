"""What a user's type checker sees: a small script that uses the public API
type-checks under ``mypy --strict``, and misuses of it are reported (so the
annotations are not ``Any`` in disguise)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("mypy")

SRC = Path(__file__).resolve().parents[1] / "src"

USER_SCRIPT = """
    import numpy as np
    import numpy.typing as npt

    import fastce

    logits = np.zeros((4, 3), np.float32)
    target = np.array([0, 1, 2, 0])
    mean: np.floating = fastce.cross_entropy(logits, target)
    per_sample: npt.NDArray[np.floating] = fastce.cross_entropy(logits, target, reduction="none")
    grad: npt.NDArray[np.floating] = fastce.cross_entropy_grad(logits, target, out=logits)
    loss, grad2 = fastce.cross_entropy_with_grad(logits, target, label_smoothing=0.1)
    total: float = float(loss) + float(grad2.sum())
    nll: np.floating = fastce.nll_loss(fastce.log_softmax(logits), target)
    bce: np.floating = fastce.binary_cross_entropy_with_logits(logits, np.ones_like(logits))
    loss_fn = fastce.CrossEntropyLoss(ignore_index=-1)
    same = loss_fn(logits, target)
    result = fastce.evaluate(logits, target, topk=(1, 2))
    perplexity: float = result.perplexity
    acc = fastce.Accumulator(topk=(1,))
    acc.update(logits, target)
    merged = acc.result()
    print(mean, per_sample, grad, total, nll, bce, same, perplexity, merged)
"""

# each must be reported, on its own line
MISUSES = [
    "fastce.cross_entropy(logits, target, reduction=3)",
    "fastce.softmax(logits, dim=1)",
    "fastce.cross_entropy(logits, target).no_such_attribute",
    "fastce.evaluate(logits, target).no_such_metric",
    "fastce.cross_entropy_with_grad(logits, target).shape",
]


def test_a_user_script_type_checks_and_its_misuses_are_reported(tmp_path):
    script = tmp_path / "user.py"
    lines = textwrap.dedent(USER_SCRIPT).splitlines()
    misuse_lines = []
    for k, misuse in enumerate(MISUSES):
        lines += ["", "", f"def misuse_{k}() -> None:", f"    {misuse}"]
        misuse_lines.append(len(lines))
    script.write_text("\n".join(lines) + "\n")
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(script)],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, MYPYPATH=str(SRC)),
        cwd=tmp_path,
    )
    reported = sorted(
        {int(line.split(":")[1]) for line in done.stdout.splitlines() if ": error:" in line}
    )
    assert reported == misuse_lines, done.stdout + done.stderr
