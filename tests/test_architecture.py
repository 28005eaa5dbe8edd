"""The import-linter contracts of pyproject.toml (docs/architecture.md) hold on this tree, and
each one breaks when the import it forbids is added (a contract that cannot fail protects
nothing). The tree is copied (Python files only) and one import is appended per case."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

LINT = Path(ROOT) / ".venv" / "bin" / "lint-imports"
PACKAGES = ("inspection", "annotations", "workers")


def lint(tree: Path) -> subprocess.CompletedProcess:
    exe = LINT if LINT.exists() else shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports is missing: ./loupe setup installs import-linter")
    return subprocess.run(
        [str(exe), "--no-cache"],
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tree")
    shutil.copy(Path(ROOT) / "pyproject.toml", out / "pyproject.toml")
    for package in PACKAGES:
        shutil.copytree(
            Path(ROOT) / package,
            out / package,
            ignore=lambda d, names: [
                n for n in names if not (n.endswith(".py") or (Path(d) / n).is_dir())
            ],
        )
    return out


def test_the_tree_keeps_every_contract(tree):
    result = lint(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("inspection/models.py", "from annotations import models as _labels", "Apps are layered"),
        ("inspection/services/jobs.py", "import workers.tasks.runner", "Apps are layered"),
        ("workers/anomaly/regions.py", "from django.conf import settings", "plain libraries"),
        ("workers/detection/nms.py", "import inspection.models", "plain libraries"),
        ("annotations/formats/coco.py", "from inspection import ziputil", "plain libraries"),
        ("workers/celery.py", "import annotations.models", "workers/celery.py is a leaf"),
        ("annotations/views.py", "import workers.anomaly", "never import job bodies"),
        ("annotations/services/labels.py", "from . import review", "imports one way"),
    ],
)
def test_a_forbidden_import_breaks_its_contract(tree, module, line, contract):
    path = tree / module
    original = path.read_text()
    path.write_text(f"{original}\n{line}  # noqa\n")
    try:
        result = lint(tree)
    finally:
        path.write_text(original)
    assert result.returncode != 0, result.stdout
    assert re.search(r"Contracts: \d kept, [1-5] broken\.", result.stdout), result.stdout
    broken = result.stdout.split("Broken contracts", 1)[1]
    assert contract in broken and line.split()[1].split(".")[0] in broken, result.stdout
