"""The built wheel works outside the checkout: installed in a fresh virtual environment,
imported from there (not from engine/), its CLI runs the demo from package data.

The fresh environment installs the wheel without dependencies and borrows the test
environment's packages through a .pth line (so torch and the model are not installed a
second time). Entries added by a .pth line are not site directories, so the editable
install's finder in the test environment is never activated.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(REPO)], check=True, cwd=out
    )
    (built,) = out.glob("probewatch-*.whl")
    return built


@pytest.fixture(scope="module")
def fresh_env(tmp_path_factory, wheel) -> Path:
    root = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=True).create(root)
    python = root / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(site, "borrowed-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", str(wheel)], check=True)
    return root


def run_outside(env: Path, *args: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return subprocess.run(list(args), cwd=env, env=clean, capture_output=True, text=True, timeout=300)


def test_wheel_holds_the_package_data_and_no_repository_code(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "probewatch/data/default_calibration.npz" in names
    assert "probewatch/cli/data/demo_scenario.json" in names
    for layer in ("backend", "detect", "io", "serve", "integrations", "cli", "kernels"):
        assert f"probewatch/{layer}/__init__.py" in names, layer
    assert not [n for n in names if n.startswith(("bench/", "tests/", "engine/", "kernels/"))]


def test_installed_package_imports_from_the_fresh_environment(fresh_env):
    probe = (
        "import probewatch, probewatch.cli, probewatch.serve, probewatch.kernels; "
        "print(probewatch.__file__); print(probewatch.kernels.__file__)"
    )
    result = run_outside(fresh_env, str(fresh_env / "bin" / "python"), "-c", probe)
    assert result.returncode == 0, result.stderr
    for line in result.stdout.split():
        assert Path(line).resolve().is_relative_to(fresh_env.resolve()), line
    result = run_outside(fresh_env, str(fresh_env / "bin" / "python"), "-c", "import bench")
    assert result.returncode != 0  # the benchmark lives in the repository only


def test_installed_cli_runs_the_demo(fresh_env):
    result = run_outside(fresh_env, str(fresh_env / "bin" / "probewatch"), "demo", "--quiet", "--device", "cpu")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "extracting accounts: " in result.stdout and "ranked no higher" not in result.stdout
    assert "perturb-bot" in result.stdout and "FLAG  perturb-bot" in result.stdout
    assert "ordinary accounts flagged: 0/5" in result.stdout
