"""``python -m fastce evaluate``: the numbers of fastce.evaluate on the same
files, whatever blocks it reads them in, and clear errors."""

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from numpy.testing import assert_allclose

import fastce
from fastce import cli


def _run(*args):
    out, err = io.StringIO(), io.StringIO()
    code = cli.main([str(a) for a in args], stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 40)).astype(np.float32)
    t = rng.integers(0, 40, 3000)
    t[::13] = -100
    x[np.arange(3000), np.maximum(t, 0)] += 2.0
    seg = np.repeat(np.arange(60), 50)
    paths = {}
    for name, a in (("x", x), ("t", t), ("seg", seg)):
        paths[name] = tmp_path / f"{name}.npy"
        np.save(paths[name], a)
    return x, t, seg, paths, tmp_path


@pytest.mark.parametrize("step_bytes", [1 << 28, 40 * 4 * 7])
def test_equals_evaluate_in_any_blocks(files, monkeypatch, step_bytes):
    x, t, seg, paths, tmp = files
    monkeypatch.setattr(cli, "_STEP_BYTES", step_bytes)
    out_json = tmp / "r.json"
    code, out, err = _run(
        paths["x"],
        paths["t"],
        "--segments",
        paths["seg"],
        "--temperatures",
        "0.5,2",
        "--topk",
        "1,3",
        "--equal-mass",
        "--json",
        out_json,
        "--progress",
        "always",
    )
    assert code == 0, err
    r = fastce.evaluate(x, t, segments=seg, temperatures=[0.5, 2.0], topk=(1, 3), equal_mass=True)
    saved = json.loads(out_json.read_text())
    for name in (
        "loss",
        "loss_se",
        "perplexity",
        "top1",
        "top3",
        "brier",
        "ece",
        "ece_equal_mass",
        "macro_loss",
    ):
        assert_allclose(saved[name], r.as_dict()[name], rtol=1e-12, err_msg=name)
    assert saved["count"] == r.count
    assert_allclose(saved["groups"]["log_likelihood"], r.groups.log_likelihood, rtol=1e-12)
    assert_allclose(saved["by_temperature"]["0.5"]["loss"], r.by_temperature[0.5].loss, rtol=1e-12)
    assert f"{r.loss:.6f} ± {r.loss_se:.6f}" in out
    assert "macro perplexity" in out and "temperature" in out
    assert "100.0%" in err


def test_class_axis_first_and_three_dimensional_logits(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 50, 7))
    t = rng.integers(0, 7, (3, 50))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "t.npy", t)
    np.save(tmp_path / "xt.npy", np.ascontiguousarray(x.reshape(-1, 7).T))
    np.save(tmp_path / "t1.npy", t.reshape(-1))
    want = fastce.evaluate(x, t, axis=-1)
    code, out, err = _run(
        tmp_path / "x.npy", tmp_path / "t.npy", "--axis", "-1", "--json", tmp_path / "a.json"
    )
    assert code == 0, err
    assert_allclose(json.loads((tmp_path / "a.json").read_text())["loss"], want.loss, rtol=1e-12)
    code, out, err = _run(
        tmp_path / "xt.npy", tmp_path / "t1.npy", "--axis", "0", "--json", tmp_path / "b.json"
    )
    assert code == 0, err
    assert_allclose(json.loads((tmp_path / "b.json").read_text())["loss"], want.loss, rtol=1e-12)


def test_clear_errors(files, capsys):
    x, t, seg, paths, tmp = files
    with pytest.raises(SystemExit) as e:
        _run(tmp / "missing.npy", paths["t"])
    assert e.value.code == 2 and "no such logits file" in capsys.readouterr().err
    (tmp / "bad.npy").write_text("not an array")
    with pytest.raises(SystemExit):
        _run(tmp / "bad.npy", paths["t"])
    assert "as a .npy array" in capsys.readouterr().err
    code, out, err = _run(paths["x"], paths["seg"], "--axis", "0")
    assert code == 2 and "need (40,)" in err
    np.save(tmp / "ft.npy", t.astype(np.float64))
    code, out, err = _run(paths["x"], tmp / "ft.npy")
    assert code == 2 and "error:" in err and "float" in err
    code, out, err = _run(paths["x"], paths["t"], "--segments", tmp / "ft.npy")
    assert code == 2 and "segments" in err
    code, out, err = _run(paths["x"], paths["t"], "--temperatures", "0,1")
    assert code == 2 and "temperature" in err
    with pytest.raises(SystemExit):
        _run(paths["x"], paths["t"], "--topk", "one")
    assert "comma-separated ints" in capsys.readouterr().err


def test_the_module_entry_point(files):
    x, t, seg, paths, tmp = files
    done = subprocess.run(
        [sys.executable, "-m", "fastce", "evaluate", str(paths["x"]), str(paths["t"])],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "top-5 accuracy" in done.stdout and done.stderr == ""


def test_bfloat16_files(tmp_path, capsys):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((500, 20)).astype(ml_dtypes.bfloat16)
    t = rng.integers(0, 20, 500)
    np.save(tmp_path / "x.npy", x)  # saved as 2-byte records
    np.save(tmp_path / "t.npy", t)
    code, out, err = _run(tmp_path / "x.npy", tmp_path / "t.npy")
    assert code == 2 and "dtype" in err
    code, out, err = _run(
        tmp_path / "x.npy", tmp_path / "t.npy", "--bfloat16", "--json", tmp_path / "o.json"
    )
    assert code == 0, err
    saved = json.loads((tmp_path / "o.json").read_text())
    assert_allclose(saved["loss"], fastce.evaluate(x, t).loss, rtol=1e-12)
    with pytest.raises(SystemExit):
        _run(tmp_path / "t.npy", tmp_path / "t.npy", "--bfloat16")
    assert "not 2-byte values" in capsys.readouterr().err
