"""Architecture contracts (pyproject's [tool.importlinter]) and the pane registry's promises."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT


def _lint_imports(cwd=ROOT, pythonpath: str | None = None):
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    env = dict(os.environ, PYTHONPATH=pythonpath) if pythonpath else None
    return subprocess.run([sys.executable, "-c", code, "--no-cache"], capture_output=True, text=True, cwd=cwd,
                          env=env)


def test_import_contracts_are_kept():
    r = _lint_imports()
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 kept, 0 broken" in r.stdout


def test_a_broken_contract_is_caught(tmp_path):
    """The contracts bite: a copy of the package whose render module imports rich breaks one."""
    pkg = tmp_path / "vitscope"
    shutil.copytree(ROOT / "vitscope", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (pkg / "render.py").write_text((pkg / "render.py").read_text() + "\nimport rich  # noqa\n")
    (pkg / "views" / "state.py").write_text((pkg / "views" / "state.py").read_text() + "\nimport vitscope.cli  # noqa\n")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    r = _lint_imports(tmp_path, pythonpath=str(tmp_path))
    assert r.returncode != 0
    assert "BROKEN" in r.stdout and "vitscope.render -> rich" in r.stdout
    assert "vitscope.views.state -> vitscope.cli" in r.stdout


def test_every_pane_is_bound_helped_and_exported():
    from vitscope.tui.screens.inspector import InspectorScreen
    from vitscope.views import PANES

    keys = [b.key for b in InspectorScreen.BINDINGS]
    assert len(keys) == len(set(keys)), "two bindings share a key"
    for p in PANES.values():
        assert p.help and p.title
        if p.key:
            assert any(b.action == f"pane('{p.name}')" and b.key == p.key for b in InspectorScreen.BINDINGS)
        assert p.export_name or p.name == "attention"  # attention is exported per layer (layers/)


@pytest.mark.parametrize("module", ["vitscope.tui", "vitscope.views", "vitscope.export"])
def test_no_module_imports_the_cli_at_runtime(module):
    code = f"import sys, importlib; importlib.import_module({module!r}); sys.exit(1 if 'vitscope.cli' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
