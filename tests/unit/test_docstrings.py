"""The examples in probewatch's docstrings run, under each module's installed name.

Doctests are collected here rather than with ``--doctest-modules``: the source folders
(``engine/``, ``kernels/``) are not named like the package they install as, so pytest
would import a second copy of every module under the folder's name.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import probewatch
import probewatch.kernels

# Every module of the package, extras included: a missing extra fails here as it does in
# that layer's tests. probewatch.kernels is mapped from its own folder, so it is walked too.
MODULES = sorted(
    info.name
    for package in (probewatch, probewatch.kernels)
    for info in pkgutil.walk_packages(package.__path__, prefix=package.__name__ + ".")
    if not info.name.endswith(".__main__")
)


def test_every_layer_is_listed():
    layers = {name.split(".")[1] for name in MODULES}
    assert {"backend", "detect", "io", "serve", "integrations", "cli", "kernels", "engine", "types"} <= layers


@pytest.mark.parametrize("name", ["probewatch", "probewatch.kernels", *MODULES])
def test_docstring_examples(name):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, name, globs=dict(vars(module))):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples in {name} failed (see above)"
