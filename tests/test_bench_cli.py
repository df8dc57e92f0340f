"""``python -m fastce.bench``: the table users read, on the smallest workload."""

import dataclasses

import pytest

from fastce import bench


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
    fastce_ms, numpy_ms, speedup = summary[0].split(" | ")[4:7]
    assert float(speedup.rstrip("x")) > 0 and float(fastce_ms) > 0 and float(numpy_ms) > 0
    assert (
        abs(float(numpy_ms) / float(fastce_ms) - float(speedup.rstrip("x")))
        < 0.05 * float(speedup.rstrip("x")) + 0.01
    )


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
