"""From a checkout, the repository root is on ``sys.path`` and the folder ``kernels/`` (installed
as ``probewatch.kernels``) could shadow an installed top-level ``kernels``: Hugging Face's kernel
loader, which transformers >= 5.25 requires and imports on ``import sentence_transformers``.
These run fresh interpreters from the repository root, as pytest and ``python -m`` do.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(300)


def python_at_the_root(code: str, *first_on_path: Path) -> subprocess.CompletedProcess:
    """Run ``code`` with the checkout root first on sys.path, then ``first_on_path``, then the rest."""
    prelude = f"import sys; sys.path[:0] = {[str(REPO), *map(str, first_on_path)]!r}\n"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "-c", prelude + code], cwd=REPO, env=env, capture_output=True, text=True, timeout=240
    )


@pytest.fixture
def installed_kernels(tmp_path) -> Path:
    """A stand-in for an installed ``kernels`` distribution, with a submodule."""
    package = tmp_path / "site" / "kernels"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("WHO = 'installed'\n")
    (package / "layer.py").write_text("from . import WHO\n")
    return tmp_path / "site"


def test_an_installed_kernels_wins_over_the_checkout_folder(installed_kernels):
    run = python_at_the_root(
        "import kernels, kernels.layer, probewatch.kernels as ours\n"
        "print(kernels.WHO, kernels.layer.WHO, callable(ours.segmented_topk), ours.__name__)",
        installed_kernels,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["installed", "installed", "True", "probewatch.kernels"]


def test_a_bare_folder_named_kernels_elsewhere_is_not_taken_for_a_distribution(tmp_path):
    # Without an installed distribution the checkout's folder answers, as before; with one, that
    # one does. The bare folder (a namespace portion, no __init__.py) never does.
    (tmp_path / "kernels").mkdir()
    run = python_at_the_root("import kernels\nprint(kernels.__file__)", tmp_path)
    assert run.returncode == 0, run.stderr
    answered = Path(run.stdout.strip())
    assert answered.name == "__init__.py"
    assert tmp_path not in answered.parents


def test_sentence_transformers_imports_and_embeds_from_the_checkout_root():
    # The failure this guards against: transformers' hub-kernel integration importing the checkout's
    # folder as Hugging Face's package and failing on its names.
    run = python_at_the_root(
        "import sentence_transformers, transformers.modeling_utils\n"
        "from probewatch.backend.embedder import Embedder\n"
        "print(*Embedder().encode(['probewatch from a checkout']).shape)"
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split()[-2:] == ["1", "384"]
