"""The ``>>>`` examples in the package's docstrings run, on the installed modules.

Examples that need data or a trained run are plain code blocks instead. The examples are run with
``doctest`` on the ``medlens.*`` modules themselves (not through pytest's ``--doctest-modules``,
which would import ``models/losses.py`` a second time as ``models.losses`` and re-register its Keras
serialisables under the same names, breaking every later model load).
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import medlens.app
import medlens.models
import medlens.pipelines


def _modules() -> list[str]:
    names = []
    for package in (medlens.pipelines, medlens.models, medlens.app):
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}."):
            names.append(info.name)
    return sorted(names)


def _has_examples(name: str) -> bool:
    module = importlib.import_module(name)
    return any(test.examples for test in doctest.DocTestFinder().find(module))


MODULES = [name for name in _modules() if _has_examples(name)]


def test_the_examples_are_found() -> None:
    assert len(MODULES) >= 15 and "medlens.models.backbones" in MODULES and "medlens.pipelines.rundir" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False,
                             report=True)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
    assert result.attempted > 0
