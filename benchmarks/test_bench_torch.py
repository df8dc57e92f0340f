"""A CPU training step and an eval step with fastce's loss against torch's.

Two models, each trained and evaluated with ``torch.nn.CrossEntropyLoss`` and
with ``fastce.torch.CrossEntropyLoss``:

- ``digits``: the small MLP of the digits test (64-128-64-10), a training step
  on a batch of 64 and an eval step over the 450 test images;
- ``logits``: the loss alone, on 4096 x 1000 logits that are themselves the
  trained parameter;
- ``head``: a linear classifier over 1000 classes, a training step on a batch
  of 1024 feature vectors of 512 and an eval step over 4096;
- ``vocab``: a 32000-class output layer (a language model's last layer), a
  training step on 256 positions of 256 features and an eval step on 1024;
- ``gpt2``: a GPT-2 built from its config with random weights (2 layers of
  256, GPT-2's 50257-token vocabulary), a batch of 4 sequences of 128 tokens
  with padding labelled -100, its loss transformers' own causal-LM loss or
  ``fastce.torch.causal_lm_loss`` (``model.loss_function``); only where
  transformers is installed.

A training step is ``zero_grad``, forward, loss, ``backward`` and an SGD
step; an eval step is forward and loss under ``torch.no_grad()``.

Run with pytest-benchmark (``python -m pytest benchmarks/test_bench_torch.py``),
or as a script for the README's table: ``python benchmarks/test_bench_torch.py``
times the two losses interleaved, repeat by repeat, so a noisy machine slows
both alike, and prints the medians and torch's time over fastce's.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import time

import pytest

torch = pytest.importorskip("torch")

import fastce  # noqa: E402
import fastce.torch as ft  # noqa: E402

LOSSES = {"torch": torch.nn.CrossEntropyLoss, "fastce": ft.CrossEntropyLoss}

# name: (layer widths, training batch, eval batch)
WORKLOADS = {
    "digits": ((64, 128, 64, 10), 64, 450),
    "logits": ((1000,), 4096, 4096),
    "head": ((512, 1000), 1024, 4096),
    "vocab": ((256, 32000), 256, 1024),
    "gpt2": ((256, 50257), 4, 4),
}
CAUSAL_LM = {"layers": 2, "heads": 4, "tokens": 128}


class Bench:
    """One model, its optimizer and fixed data, stepped with one loss."""

    def __init__(self, workload: str, loss: str):
        widths, train_batch, eval_batch = WORKLOADS[workload]
        torch.manual_seed(0)
        layers = []
        for n_in, n_out in zip(widths[:-1], widths[1:]):
            layers += [torch.nn.Linear(n_in, n_out), torch.nn.ReLU()]
        self.model = torch.nn.Sequential(*layers[:-1])
        self.criterion = LOSSES[loss]()
        g = torch.Generator().manual_seed(1)
        classes = widths[-1]
        self.x_train = torch.randn(train_batch, widths[0], generator=g)
        parameters = list(self.model.parameters())
        if not parameters:  # no layers: the logits are what is trained
            self.x_train = torch.nn.Parameter(self.x_train)
            parameters = [self.x_train]
        self.optimizer = torch.optim.SGD(parameters, lr=1e-3)
        self.y_train = torch.randint(0, classes, (train_batch,), generator=g)
        self.x_eval = torch.randn(eval_batch, widths[0], generator=g)
        self.y_eval = torch.randint(0, classes, (eval_batch,), generator=g)

    def train_step(self) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.criterion(self.model(self.x_train), self.y_train)
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def eval_step(self) -> float:
        with torch.no_grad():
            return self.criterion(self.model(self.x_eval), self.y_eval).item()


class CausalLMBench(Bench):
    """A config-built GPT-2, stepped with transformers' loss or fastce's."""

    def __init__(self, workload: str, loss: str):
        transformers = pytest.importorskip("transformers")
        (width, vocab), batch, _ = WORKLOADS[workload]
        torch.manual_seed(0)
        config = transformers.GPT2Config(
            vocab_size=vocab, n_positions=CAUSAL_LM["tokens"], n_embd=width,
            n_layer=CAUSAL_LM["layers"], n_head=CAUSAL_LM["heads"], bos_token_id=0,
            eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        )  # fmt: skip
        self.model = transformers.GPT2LMHeadModel(config)
        if loss == "fastce":
            self.model.loss_function = ft.causal_lm_loss
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(0, vocab, (batch, CAUSAL_LM["tokens"]), generator=g)
        mask = torch.ones_like(ids)
        mask[::2, CAUSAL_LM["tokens"] * 3 // 4 :] = 0  # every other sequence padded
        self.inputs = dict(
            input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)
        )

    def train_step(self) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.model(**self.inputs).loss
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def eval_step(self) -> float:
        with torch.no_grad():
            return self.model(**self.inputs).loss.item()


def make_bench(workload: str, loss: str) -> Bench:
    return (CausalLMBench if workload == "gpt2" else Bench)(workload, loss)


CASES = [(w, s, loss) for w in WORKLOADS for s in ("train", "eval") for loss in LOSSES]


@pytest.mark.parametrize(
    "workload, step, loss", CASES, ids=[f"{w}-{s}-{loss}" for w, s, loss in CASES]
)
def test_step(benchmark, workload, step, loss):
    benchmark.group = f"{workload}-{step}"
    bench = make_bench(workload, loss)
    reference = make_bench(workload, "torch")
    run = bench.train_step if step == "train" else bench.eval_step
    want = reference.train_step() if step == "train" else reference.eval_step()
    first = run()
    assert abs(first - want) <= 1e-5 * abs(want)  # the same loss from the same model
    benchmark(run)


def interleaved(workload: str, step: str, repeats: int, min_time: float):
    """Median seconds per step for each loss, timed in alternation."""
    benches = {loss: make_bench(workload, loss) for loss in LOSSES}
    runs = {loss: getattr(b, f"{step}_step") for loss, b in benches.items()}
    for run in runs.values():  # warm up, and size the inner loop
        run()
    start = time.perf_counter()
    runs["torch"]()
    inner = max(1, int(min_time / max(time.perf_counter() - start, 1e-7)))
    samples = {loss: [] for loss in LOSSES}
    for _ in range(repeats):
        for loss, run in runs.items():
            start = time.perf_counter()
            for _ in range(inner):
                run()
            samples[loss].append((time.perf_counter() - start) / inner)
    return {loss: statistics.median(s) for loss, s in samples.items()}


def _format(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms" if seconds < 0.1 else f"{seconds * 1e3:.1f} ms"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument(
        "--min-time", type=float, default=0.05, help="seconds each timed sample lasts at least"
    )
    parser.add_argument("--workloads", nargs="*", default=list(WORKLOADS))
    args = parser.parse_args(argv)
    if "gpt2" in args.workloads and importlib.util.find_spec("transformers") is None:
        print('gpt2 skipped: transformers is not installed (pip install ".[transformers]")')
        args.workloads.remove("gpt2")
    info = fastce._config.config()
    print(
        f"fastce {info['version']} (openmp {'on' if info['openmp'] else 'off'}, "
        f"{info['simd']}), torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"median of {args.repeats} interleaved samples\n"
    )
    print("| model | step | torch's loss | fastce's loss | speed-up |")
    print("|---|---|---:|---:|---:|")
    for workload in args.workloads:
        widths, train_batch, eval_batch = WORKLOADS[workload]
        for step in ("train", "eval"):
            times = interleaved(workload, step, args.repeats, args.min_time)
            batch = train_batch if step == "train" else eval_batch
            shape = "-".join(map(str, widths))
            if workload == "gpt2":
                shape = f"{CAUSAL_LM['layers']} layers of {widths[0]}, vocabulary {widths[1]}"
                batch = f"{batch} x {CAUSAL_LM['tokens']}"
            print(
                f"| {workload} ({shape}), batch {batch} | {step} | {_format(times['torch'])} "
                f"| {_format(times['fastce'])} | {times['torch'] / times['fastce']:.2f}x |",
                flush=True,
            )
    if hasattr(os, "getloadavg"):
        print(
            f"\nload average over the last minute: {os.getloadavg()[0]:.2f} "
            f"on {os.cpu_count()} CPUs (other work on the machine skews the figures)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
