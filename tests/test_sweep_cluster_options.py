"""sweeps/full_grid.py options for a cluster run, checked without starting Ray: the tracking URI as a
head IP captured through a tty gives it (trailing '\\r'), a malformed one (exit 2, never an uncaught
http.client.InvalidURL), and the --dry-run cost estimate (--gpus, --price-per-gpu-hour)."""
from __future__ import annotations

import http.client
import re
import urllib.request
from pathlib import Path

import pytest

from sweeps import full_grid

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def run(argv, capsys):
    rc = full_grid.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("uri, says", [
    ("http://127.0.0.1\r:5000", r"holds \['\\r'\].*tr -d"),           # HEAD=10.0.0.5\r inside the URI
    ("http://10.0.0.5:50x0", "Port could not be cast"),
    ("http://:5000", "no host"),
    ("  ", "it is empty"),
])
def test_malformed_tracking_uri_is_exit_2_with_a_clear_message(uri, says, capsys, tmp_path):
    rc, out, err = run(["--preset", "quick", "--tracking-uri", uri, "--storage-path", str(tmp_path)], capsys)
    assert rc == 2, out + err
    assert re.search(says, err), err
    assert "Traceback" not in err and "InvalidURL" not in err


def test_the_raw_uri_would_crash_urllib():
    """Why the check exists: urllib raises http.client.InvalidURL (not a URLError/OSError/ValueError) for a
    host with a control character, which escaped the tracking check before."""
    with pytest.raises(http.client.InvalidURL):
        urllib.request.urlopen("http://127.0.0.1\r:5000/health", timeout=1)
    assert not issubclass(http.client.InvalidURL, (OSError, ValueError))


def test_trailing_carriage_return_is_stripped(capsys, tmp_path, monkeypatch):
    assert full_grid.normalize_tracking_uri("http://10.0.0.5:5000\r") == "http://10.0.0.5:5000"
    assert "surrounding whitespace removed" in capsys.readouterr().err
    # then the sweep goes on to the reachability check with the clean URI (nothing listens: exit 2)
    from cluster_harness import free_ports
    uri = f"http://127.0.0.1:{free_ports(1)[0]}"
    rc, out, err = run(["--preset", "quick", "--tracking-uri", uri + "\r", "--storage-path", str(tmp_path)], capsys)
    assert rc == 2 and f"tracking server {uri} is not reachable" in err, err
    # the same from $MLFLOW_TRACKING_URI
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/m.db\r\n")
    rc, out, err = run(["--preset", "quick", "--dry-run", "--storage-path", str(tmp_path)], capsys)
    assert rc == 0 and f"MLflow: sqlite:///{tmp_path}/m.db\n" in out, out + err


# --------------------------------------------------------------------------- --dry-run cost

def _figures(out: str) -> dict:
    gpu_hours = float(re.search(r"GPU-hours: ([\d,.]+)", out).group(1).replace(",", ""))
    m = re.search(r"on (\d+) GPUs?: (\d+) trials at once -> about \S+ wall time; cost about ([\d,.]+) US\$ "
                  r"\(\d+ GPUs? x ([\d,.]+) h x ([\d.]+) US\$", out)
    return {"gpu_hours": gpu_hours, "gpus": int(m.group(1)), "slots": int(m.group(2)),
            "cost": float(m.group(3).replace(",", "")), "wall_h": float(m.group(4).replace(",", "")),
            "price": float(m.group(5))}


@pytest.mark.slow
def test_dry_run_prints_gpu_hours_wall_time_and_cost(capsys, tmp_path):
    base = ["--preset", "mnist", "--data-dir", str(DATA), "--dry-run", "--gpu-memory-gb", "24",
            "--storage-path", str(tmp_path)]
    rc, out, err = run(base + ["--gpus", "8"], capsys)
    assert rc == 0, err
    assert "23,000 networks" in out and "auto: a 24 GB GPU" in out
    f8 = _figures(out)
    assert f8["gpus"] == 8 and f8["slots"] == 8 and f8["price"] == full_grid.DEFAULT_PRICE_PER_GPU_HOUR == 1.212
    assert f8["wall_h"] >= f8["gpu_hours"] / 8 * 0.999                  # never faster than perfect sharing
    assert f8["cost"] == pytest.approx(8 * f8["wall_h"] * 1.212, rel=2e-3)
    # one GPU: the wall time is the GPU-hours; the price scales the cost
    rc, out, _ = run(base + ["--gpus", "1", "--price-per-gpu-hour", "0.5"], capsys)
    f1 = _figures(out)
    assert f1["gpu_hours"] == f8["gpu_hours"] and f1["wall_h"] == pytest.approx(f1["gpu_hours"], rel=1e-3)
    assert f1["cost"] == pytest.approx(0.5 * f1["gpu_hours"], rel=2e-3) and "0.5 US$ per GPU-hour" in out
    # without --gpus: GPU-hours (for GPU trials) but no cluster line
    rc, out, _ = run(base + ["--gpus-per-trial", "1", "--address", "auto"], capsys)
    assert rc == 0 and "GPU-hours:" in out and " GPUs: " not in out


def test_dry_run_wall_time_follows_the_trials(capsys, tmp_path):
    """25 ImageNet trials on 8 GPUs: 4 rounds, so the wall time is well above GPU-hours / 8."""
    rc, out, err = run(["--preset", "imagenet", "--data-dir", str(DATA / "imagenette"), "--dry-run", "--gpus", "8",
                        "--gpu-memory-gb", "24", "--storage-path", str(tmp_path)], capsys)
    assert rc == 0, err
    f = _figures(out)
    assert f["wall_h"] > f["gpu_hours"] / 8 * 1.1


@pytest.mark.parametrize("extra, says", [
    (["--gpus", "0", "--dry-run"], "--gpus 0 is not allowed"),
    (["--gpus", "8"], "--gpus sizes the --dry-run estimate only"),
    (["--gpus", "2", "--gpus-per-trial", "4", "--dry-run"], "--gpus-per-trial 4 exceeds --gpus 2"),
    (["--price-per-gpu-hour", "-1", "--dry-run"], "--price-per-gpu-hour -1 is not allowed"),
    (["--gpu-memory-gb", "0", "--dry-run"], "--gpu-memory-gb 0 is not allowed"),
])
def test_bad_cost_options_are_refused(extra, says, capsys, tmp_path):
    rc, out, err = run(["--preset", "quick", "--storage-path", str(tmp_path), *extra], capsys)
    assert rc == 2 and says in err, err


def test_help_states_the_default_price(capsys):
    assert full_grid.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "default 1.212" in out and "g5.2xlarge" in out


def test_log_processes_below_one_is_refused_before_anything_starts(capsys, tmp_path):
    rc, out, err = run(["--preset", "quick", "--log-processes", "0", "--storage-path", str(tmp_path)], capsys)
    assert rc == 2 and "--log-processes 0 is not allowed: need an integer >= 1" in err, err
    assert not (tmp_path / "quick").exists()
