"""README's set-up commands and .ci/run stay in agreement, and the core stays free of the TUI stack."""
from __future__ import annotations

import re
import subprocess
import sys

from conftest import ROOT

CORE = ["vitscope", "vitscope.loaders", "vitscope.tracing", "vitscope.analysis", "vitscope.render",
        "vitscope.export", "vitscope.cli", "vitscope.data.images", "vitscope.data.idx"]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    setup = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", setup)


def test_ci_runs_readme_test_command():
    cmds = readme_commands()
    assert len(cmds) == 2 and "pytest" in cmds[1]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert cmds[1] in ci


def test_readme_first_command_uses_a_bundled_sample():
    first = readme_commands()[0]
    paths = [w for w in first.split() if w.startswith("samples/")]
    assert paths and all((ROOT / p).exists() for p in paths)


def test_core_imports_without_textual_or_rich():
    code = ("import sys, importlib\n"
            f"for m in {CORE!r}: importlib.import_module(m)\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'rich', 'textual_image'))\n"
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_import_vitscope_does_not_import_torch():
    code = "import sys, vitscope; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_tui_module_does_not_import_torch_before_first_paint():
    """The app module (and what composing the first screen needs) must not pull in torch."""
    code = ("import sys\n"
            "from vitscope.tui.app import InspectorApp, Options\n"
            "import vitscope.cli\n"
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
