"""``python -m fastce.bench``: the table users read, on the smallest workload."""

import dataclasses
import importlib.util
import sys

import numpy as np
import pytest

from fastce import _kernels, bench


def test_summary_and_markdown(tmp_path, capsys):
    path = tmp_path / "speed.md"
    assert (
        bench.main(
            ["--workload", "W7a", "--repeats", "2", "--libraries", "numpy", "--markdown", str(path)]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "threads:" in printed and "vs numpy" in printed
    text = path.read_text()
    summary = [line for line in text.splitlines() if line.startswith("| W7a")]
    # one summary line per pass, then one detailed line per library and pass
    assert len(summary) == 2 + 4
    # each median with its interquartile range as a percentage of it
    fastce_ms, numpy_ms, speedup = (cell.split(" (")[0] for cell in summary[0].split(" | ")[4:7])
    assert all(cell.endswith("%)") for cell in summary[0].split(" | ")[4:6])
    assert float(speedup.rstrip("x")) > 0 and float(fastce_ms) > 0 and float(numpy_ms) > 0
    assert (
        abs(float(numpy_ms) / float(fastce_ms) - float(speedup.rstrip("x")))
        < 0.05 * float(speedup.rstrip("x")) + 0.01
    )
    # the detailed lines give the quartiles around each median
    for line in summary[2:]:
        ms, quartiles = line.split(" | ")[5:7]
        q1, q3 = (float(q) for q in quartiles.split("-"))
        assert q1 <= float(ms) <= q3


def _row(library, ms, q1, q3, workload="W1", kind="forward", speedup=1.0):
    return dict(
        workload=workload,
        title="",
        shape=bench.WORKLOADS[workload].shape,
        dtype="float32",
        kind=kind,
        library=library,
        ms=ms,
        q1_ms=q1,
        q3_ms=q3,
        gelem=1.0,
        speedup=speedup,
    )


def test_busy_warnings(monkeypatch):
    monkeypatch.setattr(bench.os, "cpu_count", lambda: 4)
    quiet = [_row("fastce", 1.0, 0.98, 1.03), _row("torch 2.13.0", 3.0, 2.9, 3.15)]
    assert bench.busy_warnings(quiet, 0.3, threads=4) == []
    # two idle cores for two threads: quiet enough
    assert bench.busy_warnings(quiet, 2.4, threads=2) == []
    # one row's rounds spread over 20% of its median: that row is named
    spread = quiet + [_row("jax 0.10.2", 2.0, 1.8, 2.2, kind="forward+backward")]
    (warning,) = bench.busy_warnings(spread, None, threads=4)
    assert "in 1 of 3 rows" in warning and "W1 forward+backward jax 20%" in warning
    assert "torch" not in warning
    # a load average of 1.2 leaves fewer than 4 idle cores for 4 threads
    (warning,) = bench.busy_warnings(quiet, 1.2, threads=4)
    assert "load average was 1.20" in warning and "4 logical cores" in warning
    assert len(bench.busy_warnings(spread, 3.5, threads=2)) == 2
    # one thread needs one idle core of the four
    assert bench.busy_warnings(quiet, 3.4, threads=1) == []
    (warning,) = bench.busy_warnings(quiet, 3.6, threads=1)
    assert "4 logical cores and 1 thread for the bench" in warning


def test_busy_warning_printed(tmp_path, capsys, monkeypatch):
    # the load average is read before the timings, and its warning reaches
    # the printed output and the Markdown file
    monkeypatch.setattr(bench.os, "getloadavg", lambda: (64.0, 64.0, 64.0))
    path = tmp_path / "speed.md"
    argv = ["--workload", "W7a", "--repeats", "2", "--libraries", "", "--forward-only"]
    assert bench.main(argv + ["--markdown", str(path)]) == 0
    assert "load average was 64.00" in capsys.readouterr().out
    assert "load average was 64.00" in path.read_text()


def test_family_and_busy_tables(tmp_path, capsys, monkeypatch):
    # every public function, on a small shape; and the busy-core table
    monkeypatch.setattr(bench, "FAMILY_SHAPES", [((64, 40), bench.np.float32)])
    path = tmp_path / "speed.md"
    assert (
        bench.main(
            [
                "--workload",
                "W7a",
                "--repeats",
                "2",
                "--libraries",
                "",
                "--family",
                "--busy",
                "--markdown",
                str(path),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "With another process spinning on a core:" in printed
    text = path.read_text()
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| ")]
    family = [
        r
        for r in rows
        if len(r) == 7
        and r[0] in ("| cross_entropy", "| nll_loss", "| evaluate", "| binary_cross_entropy_grad")
    ]
    assert len(family) == 4
    for r in family:
        assert float(r[4]) > 0
        if r[5]:  # torch installed: its time and the ratio agree
            assert (
                abs(float(r[5]) / float(r[4]) - float(r[6].rstrip("x |")))
                < 0.05 * float(r[6].rstrip("x |")) + 0.01
            )
    busy = [r for r in rows if r[0] == "| cross_entropy" and len(r) == 6]
    assert len(busy) == 1 and float(busy[0][5].rstrip(" |")) > 0


def test_half_table(tmp_path, capsys, monkeypatch):
    # every public function on float16 (and bfloat16, where ml_dtypes is
    # installed) beside float32, on a small shape: times and their ratios
    monkeypatch.setattr(bench, "HALF_SHAPES", [(64, 40)])
    path = tmp_path / "speed.md"
    argv = ["--workload", "W7a", "--repeats", "2", "--libraries", "", "--half"]
    assert bench.main(argv + ["--markdown", str(path)]) == 0
    assert "Half precision" in capsys.readouterr().out
    rows = [line.split(" | ") for line in path.read_text().splitlines() if line.startswith("| ")]
    halves = len(bench.half_dtypes())
    table = [r for r in rows if len(r) == 4 + 2 * halves and r[2] == "64x40"]
    names = {r[0].lstrip("| ") for r in table}
    assert {"cross_entropy", "nll_loss", "evaluate", "binary_cross_entropy_grad"} <= names
    for r in table:
        f32 = float(r[3])
        for k in range(halves):
            t, ratio = float(r[4 + 2 * k]), float(r[5 + 2 * k].rstrip(" |"))
            assert f32 > 0 and t > 0
            assert abs(t / f32 - ratio) < 0.05 * ratio + 0.01


def test_linear_head_table(tmp_path, capsys, monkeypatch):
    # the linear-head workloads on a small shape: every library's row, with
    # time and (where Linux tells) peak extra memory
    monkeypatch.setattr(bench, "LINEAR_WORKLOADS", {"L1": (64, 16, 300)})
    path = tmp_path / "speed.md"
    argv = ["--workload", "W7a", "--repeats", "1", "--libraries", "", "--linear"]
    assert bench.main(argv + ["--markdown", str(path)]) == 0
    assert "Linear heads" in capsys.readouterr().out
    rows = [
        line.strip("| ").split(" | ")
        for line in path.read_text().splitlines()
        if line.startswith("| L1")
    ]
    libraries = {(r[2], r[3]) for r in rows}
    assert ("forward", "fastce") in libraries and ("forward+backward", "fastce") in libraries
    assert ("forward", "numpy matmul + fastce") in libraries
    for r in rows:
        assert float(r[4]) > 0
        if r[3] != "fastce":
            assert float(r[6].rstrip("x")) > 0
    fastce_rows = [r for r in rows if r[3] == "fastce"]
    for r in fastce_rows:
        assert r[5] == "" or float(r[5]) < 64


def _markdown_rows(tmp_path, monkeypatch, flag, shape, keys=("W1", "W3")):
    """The rows of workloads ``keys`` of the Markdown table ``flag`` adds, on small shapes."""
    small = {k: dataclasses.replace(w, shape=shape) for k, w in bench.WORKLOADS.items()}
    monkeypatch.setattr(bench, "WORKLOADS", small)
    path = tmp_path / "speed.md"
    argv = ["--workload", "W7a", "--repeats", "1", "--libraries", "", flag]
    assert bench.main(argv + ["--markdown", str(path)]) == 0
    prefix = "x".join(map(str, shape))
    return [
        line.strip("| ").split(" | ")
        for line in path.read_text().splitlines()
        if line.startswith(tuple(f"| {key} | {prefix}" for key in keys))
    ]


def test_transform_table(tmp_path, capsys, monkeypatch):
    # each logit transform beside the plain call, on small shapes
    rows = _markdown_rows(tmp_path, monkeypatch, "--transforms", (64, 300))
    assert "Logit transforms" in capsys.readouterr().out
    fastce_rows = {(r[0], r[3]) for r in rows if r[2] == "fastce"}
    assert fastce_rows == {(w, t) for w in ("W1", "W3") for t in bench.TRANSFORMS}
    for r in rows:
        assert float(r[4]) > 0 and float(r[5].rstrip("x")) > 0


def test_evaluation_table(tmp_path, capsys, monkeypatch):
    # evaluate's optional outputs beside the plain call, on small shapes
    rows = _markdown_rows(tmp_path, monkeypatch, "--evaluation", (128, 300))
    assert "Evaluation outputs" in capsys.readouterr().out
    # fit_temperature's row names its passes
    assert [r[2].split(" (", 1)[0] if r[2].startswith("fit") else r[2] for r in rows] == 2 * [
        "evaluate",
        "segments",
        "temperatures, one",
        "equal_mass",
        "reference (paired)",
        "fit_temperature",
    ]
    for r in rows:
        assert float(r[3]) > 0 and float(r[4].rstrip("x")) > 0


def test_faces_table(tmp_path, capsys, monkeypatch):
    # a row per function of fastce.scipy and fastce.sklearn, on small shapes
    pytest.importorskip("scipy")
    pytest.importorskip("sklearn")
    rows = _markdown_rows(tmp_path, monkeypatch, "--faces", (64, 30), bench.FACE_WORKLOADS)
    assert "The SciPy and scikit-learn faces" in capsys.readouterr().out
    functions = [
        "logsumexp(axis=1)",
        "softmax(axis=1)",
        "log_softmax(axis=1)",
        "log_loss",
        "log_loss(from_logits=True)",
        "top_k_accuracy_score(k=5)",
    ]
    assert [(r[0], r[3]) for r in rows] == [
        (key, f) for key in bench.FACE_WORKLOADS for f in functions
    ]
    for r in rows:
        fastce_ms, rival_ms, speedup = float(r[5]), float(r[6]), float(r[7].rstrip("x"))
        assert fastce_ms > 0 and rival_ms > 0
        assert abs(rival_ms / fastce_ms - speedup) < 0.05 * speedup + 0.1


def _chart_rows():
    """fastce and three rivals on W1 and W7a, the ONNX Runtime one forward only;
    each rival's median is ``speedup`` times fastce's, its quartiles 10% around it."""
    rows = []
    for workload in ("W1", "W7a"):
        for kind in ("forward", "forward+backward"):
            rows.append(_row("fastce", 2.0, 1.9, 2.2, workload, kind))
            for library, speedup in [("torch 2.13.0", 3.0), ("onnxruntime 1.32.0", 0.5)] + [
                ("numpy", 40.0)
            ]:
                if library.startswith("onnxruntime") and kind != "forward":
                    continue
                ms = 2.0 * speedup
                rows.append(_row(library, ms, 0.9 * ms, 1.1 * ms, workload, kind, speedup))
    return rows


def test_plot_structure():
    BarContainer = pytest.importorskip("matplotlib.container").BarContainer
    fig = bench.plot_figure(_chart_rows(), threads=2)
    # one panel per pass, on a shared log axis with a line at 1x
    assert len(fig.axes) == 2
    assert [ax.get_title() for ax in fig.axes] == [
        "forward",
        "forward+backward (no onnxruntime pass)",
    ]
    for ax in fig.axes:
        assert ax.get_yscale() == "log"
        assert any(list(line.get_ydata()) == [1.0, 1.0] for line in ax.get_lines())
        labels = [t.get_text() for t in ax.get_xticklabels()]
        assert labels == ["W1\n4096x1000", "W7a\n32x10"]
    assert fig.axes[0].get_ylabel().startswith("fastce's speed-up")
    # one colour per rival, named in one legend
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == [
        "torch 2.13.0",
        "onnxruntime 1.32.0",
        "numpy",
    ]
    bar_sets = [[c for c in ax.containers if isinstance(c, BarContainer)] for ax in fig.axes]
    assert [len(bars) for bars in bar_sets] == [3, 2]
    colours = [bars.patches[0].get_facecolor() for bars in bar_sets[0]]
    assert len(set(colours)) == 3
    title = fig.get_suptitle()
    for fact in (bench.cpu_name(), _kernels.simd_isa(), "2 threads", "fastce ", "torch 2.13.0"):
        assert fact in title
    # each bar rises from 1x to the speed-up, its error bar spans the
    # rival's quartiles over fastce's: (0.9 to 1.1) x 2 s over 2.2 to 1.9
    for bars, speedup in zip(bar_sets[0], (3.0, 0.5, 40.0)):
        for patch in bars.patches:
            assert patch.get_y() == 1.0
            assert patch.get_y() + patch.get_height() == pytest.approx(speedup)
        assert bars.errorbar is not None
        (segments,) = [c.get_segments() for c in bars.errorbar.lines[2]]
        for segment in segments:
            low, high = sorted(segment[:, 1])
            assert low == pytest.approx(0.9 * 2 * speedup / 2.2)
            assert high == pytest.approx(1.1 * 2 * speedup / 1.9)
    # the shared range holds every error bar
    low, high = fig.axes[1].get_ylim()
    assert low < 0.9 * 2 * 0.5 / 2.2 and high > 1.1 * 2 * 40 / 1.9
    assert "WARNING" not in fig.get_supxlabel()
    warned = bench.plot_figure(_chart_rows(), threads=2, warnings=["WARNING: busy"])
    assert "WARNING" in warned.get_supxlabel()


def test_plot_file(tmp_path):
    # the CLI's chart, on the smallest workload: a PNG that fits a laptop screen
    image = pytest.importorskip("matplotlib.image")
    path = tmp_path / "speed.png"
    argv = ["--workload", "W7a", "--repeats", "2", "--libraries", "numpy", "--plot", str(path)]
    assert bench.main(argv) == 0
    height, width = image.imread(path).shape[:2]
    assert width <= 1400 and height <= 600


# small shapes that keep each workload's class axis, dtype and ignored targets
SMALL_SHAPES = {"W1": (64, 30), "W4": (2, 5, 4, 6), "W5": (2, 8, 50), "W6": (64, 30)}


def test_rivals_agree_with_fastce(monkeypatch):
    # every rival installed computes fastce's loss and gradient (classes on
    # axis 1 of a 4-d array, on the last axis with ignored targets, float64),
    # ONNX Runtime forward only; each one missing says so
    small = {k: dataclasses.replace(bench.WORKLOADS[k], shape=s) for k, s in SMALL_SHAPES.items()}
    monkeypatch.setattr(bench, "WORKLOADS", small)
    said = []
    rows = bench.run(
        list(small),
        threads=2,
        repeats=1,
        passes=("forward", "forward+backward"),
        libraries=tuple(bench.RIVALS),
        min_time=0.0,
        out=said.append,
    )
    assert not [line for line in said if "differ" in line]
    timed = {r["library"].split()[0] for r in rows}
    for name in bench.RIVALS:
        installed = importlib.util.find_spec(name) is not None
        assert (name in timed) == installed
        assert (f"{name}: not installed, not timed" in said) == (not installed)
    passes = {(r["library"].split()[0], r["kind"]) for r in rows}
    if "onnxruntime" in timed:
        assert ("onnxruntime", "forward+backward") not in passes
        assert "onnxruntime: forward only (an inference session computes no gradient)" in said
    if "tensorflow" in timed:
        assert ("tensorflow", "forward+backward") in passes
    assert len(rows) == len(small) * (2 * len(timed) - ("onnxruntime" in timed))


def test_missing_rivals_skipped(monkeypatch, capsys):
    # a rival that cannot be imported is left out with a note, not an error
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    argv = ["--workload", "W7a", "--repeats", "1", "--libraries", "onnxruntime,tensorflow"]
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    assert "onnxruntime: not installed, not timed" in printed
    assert "tensorflow: not installed, not timed" in printed
    assert "vs onnxruntime" not in printed and "vs tensorflow" not in printed


def test_unknown_rival_refused(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--workload", "W7a", "--libraries", "torch,mxnet"])
    assert "no rival mxnet" in capsys.readouterr().err


def test_disagreement_found():
    # a rival whose loss or gradient is off, or NaN, is named
    w = dataclasses.replace(bench.WORKLOADS["W1"], shape=(16, 7))
    x, t = bench.make_inputs(w)
    fastce = bench.fastce_contender(w, x, t)
    loss, grad = bench.fastce.cross_entropy_with_grad(x, t)
    rivals = [
        bench.Contender("close", lambda: loss * (1 + 1e-6), lambda: (loss, grad * (1 + 1e-6))),
        bench.Contender("scaled", lambda: loss * 1.01, lambda: (loss, grad * 1.01)),
        bench.Contender("nan", lambda: np.float32("nan"), lambda: (np.nan * loss, grad)),
        # the gradient of the loss summed, not averaged
        bench.Contender("summed", lambda: loss, lambda: (loss, grad * len(t))),
    ]
    assert bench.disagreements([fastce, *rivals], "forward", x.dtype) == [
        "scaled's loss",
        "nan's loss",
    ]
    assert bench.disagreements([fastce, *rivals], "forward+backward", x.dtype) == [
        "scaled's gradient",
        "nan's loss",
        "summed's gradient",
    ]
