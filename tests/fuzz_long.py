"""A long run of the fuzzer in tests/test_fuzz.py: the same properties, many more examples.

    python tests/fuzz_long.py                          # 20,000 examples per property
    python tests/fuzz_long.py --examples 100000 --rounds 3 --seed 1
    python tests/fuzz_long.py -k cross_entropy         # some of the properties only

Each round runs pytest on tests/test_fuzz.py in a child process with its own
Hypothesis seed.  The child writes every case to a log file just before
calling fastce, so when it dies of a signal (a crash of the extension) the case
that killed it is printed.  Prints the examples run per property and in all,
and exits non-zero on any failure or crash.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
STAT_HEADER = re.compile(r"^(\S+\.py::\S+):\s*$")
# "- 300 passing examples, 0 failing examples" in older Hypothesis releases,
# "- 300 passing, 0 failing, and 0 invalid test cases" in newer ones
STAT_LINE = re.compile(r"- (\d+) passing(?: examples)?, (\d+) failing")


def count_examples(output: str) -> dict:
    """Examples run per property, from Hypothesis's statistics."""
    counts: dict = {}
    current = None
    for line in output.splitlines():
        header = STAT_HEADER.match(line.strip())
        if header:
            current = header.group(1).split("::")[-1]
            counts.setdefault(current, 0)
            continue
        found = STAT_LINE.search(line)
        if found and current is not None:
            counts[current] += int(found.group(1)) + int(found.group(2))
    return counts


def run_round(examples: int, seed: int, keyword: str | None, log_path: str):
    env = dict(os.environ, FASTCE_FUZZ_EXAMPLES=str(examples), FASTCE_FUZZ_LOG=log_path)
    command = [
        sys.executable,
        "-m",
        "pytest",
        os.path.join(HERE, "test_fuzz.py"),
        "-q",
        "-p",
        "no:cacheprovider",
        f"--hypothesis-seed={seed}",
        "--hypothesis-show-statistics",
        "-W",
        "ignore::DeprecationWarning",
    ]
    if keyword:
        command += ["-k", keyword]
    return subprocess.run(
        command, env=env, capture_output=True, text=True, cwd=os.path.dirname(HERE)
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--examples",
        type=int,
        default=20_000,
        help="examples per property in each round (default 20000)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="rounds, each with a new seed")
    parser.add_argument(
        "--seed", type=int, default=None, help="the first round's Hypothesis seed (default: random)"
    )
    parser.add_argument(
        "-k",
        dest="keyword",
        default=None,
        help="only the properties this pytest -k expression selects",
    )
    args = parser.parse_args(argv)

    seed = args.seed if args.seed is not None else random.randrange(2**32)
    totals: dict = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        log_path = os.path.join(tmp, "current_case.txt")
        for r in range(args.rounds):
            round_seed = seed + r
            print(
                f"== round {r + 1}/{args.rounds}: {args.examples} examples per property, "
                f"--hypothesis-seed={round_seed}",
                flush=True,
            )
            done = run_round(args.examples, round_seed, args.keyword, log_path)
            for name, n in count_examples(done.stdout).items():
                totals[name] = totals.get(name, 0) + n
            if done.returncode < 0:
                case = open(log_path).read() if os.path.exists(log_path) else "(no case logged)"
                print(done.stdout[-5000:], done.stderr[-5000:], sep="\n")
                print(
                    f"== CRASH: the test process died of signal {-done.returncode} "
                    f"while running this case:\n{case}"
                )
                return 1
            if done.returncode != 0:
                print(done.stdout[-20000:], done.stderr[-5000:], sep="\n")
                print(f"== FAILED in round {r + 1} (--hypothesis-seed={round_seed})")
                return 1
    seconds = time.monotonic() - started
    for name, n in sorted(totals.items()):
        print(f"  {n:>9,}  {name}")
    if not sum(totals.values()):
        print("== NO EXAMPLES COUNTED: Hypothesis's statistics were not read (a new format?)")
        return 1
    print(f"== OK: {sum(totals.values()):,} examples run, none failing, in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
