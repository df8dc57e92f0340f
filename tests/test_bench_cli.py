"""``python -m fastce.bench``: the table users read, on the smallest workload."""

from fastce import bench


def test_summary_and_markdown(tmp_path, capsys):
    path = tmp_path / "speed.md"
    assert bench.main(["--workload", "W7a", "--repeats", "2", "--libraries", "numpy",
                       "--markdown", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "threads:" in printed and "vs numpy" in printed
    text = path.read_text()
    summary = [line for line in text.splitlines() if line.startswith("| W7a")]
    # one summary line per pass, then one detailed line per library and pass
    assert len(summary) == 2 + 4
    fastce_ms, numpy_ms, speedup = summary[0].split(" | ")[4:7]
    assert float(speedup.rstrip("x")) > 0 and float(fastce_ms) > 0 and float(numpy_ms) > 0
    assert abs(float(numpy_ms) / float(fastce_ms) - float(speedup.rstrip("x"))) < \
        0.05 * float(speedup.rstrip("x")) + 0.01
