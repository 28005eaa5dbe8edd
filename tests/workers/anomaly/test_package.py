"""The package's shape: a lazy ``__init__`` (no torch for the web process), one model table that
training and prediction use without naming a model, and no import cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import run_python
from workers.anomaly import models

from .conftest import add_defect, save, texture

pytestmark = pytest.mark.ml

ROOT = Path(__file__).resolve().parents[3]
PACKAGE = ROOT / "workers" / "anomaly"


def test_importing_the_package_and_its_light_modules_does_not_load_torch():
    code = (
        "import sys, workers.anomaly, workers.anomaly.regions, workers.anomaly.errors, "
        "workers.anomaly.config, workers.anomaly.models; "
        "from workers.anomaly import AnomalyError, Cancelled, PredictConfig, RegionConfig, Region; "
        "workers.anomaly.models.names(); "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    run_python(code, drop_env=("DJANGO_SETTINGS_MODULE",))


def test_reading_mvtec_folders_does_not_load_the_formats_registry():
    """The MVTec rules come from annotations.formats.mvtec_layout: the CLI's train/predict must not
    need the registry's other formats (SAHI, shapely, YAML are not anomaly requirements)."""
    code = (
        "import sys, workers.anomaly.datasets; "
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('sahi', 'shapely', 'yaml', 'torch', 'django') or m == 'annotations.formats.registry'); "
        "assert not heavy, heavy"
    )
    run_python(code, drop_env=("DJANGO_SETTINGS_MODULE",))


def test_every_public_name_resolves():
    import workers.anomaly as anomaly

    for name in anomaly.__all__:
        assert getattr(anomaly, name) is not None, name
    with pytest.raises(AttributeError):
        anomaly.no_such_name  # noqa: B018


def test_every_model_module_registers_itself_under_its_name():
    assert set(models.names()) == {
        "autoencoder",
        "cflow",
        "efficientad",
        "fastflow",
        "lbp",
        "lbp_image",
        "lines",
        "padim",
        "patchcore",
        "patchcore_fine",
        "stfpm",
    }
    for name in models.names():
        spec = models.get(name)
        assert spec.name == name and callable(spec.build) and callable(spec.fit)
    from workers.anomaly.errors import IncompatibleModelError

    with pytest.raises(IncompatibleModelError, match="unknown model kind"):
        models.get("no-such-model")


def test_a_model_names_defaults_only_for_the_fields_that_have_them():
    spec = models.ModelSpec(
        name="typo", build=lambda a, p: None, fit=lambda *a: None, train_defaults={"stepz": 9}
    )
    with pytest.raises(ValueError, match="stepz"):
        models.register(spec)
    assert "typo" not in models.MODELS


class _ToyNet(torch.nn.Module):
    """Distance of each pixel from mid-grey, averaged over channels: enough to see a dark disc."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("level", torch.tensor(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.level).abs().mean(1, keepdim=True)


def test_a_model_is_one_registration(tmp_path: Path):
    """A model registered in the table trains, saves, loads and predicts through the common
    code, which never names a model."""
    from workers.anomaly import PredictConfig, TrainConfig, load_model, predict, train

    def fit(config, data, device, progress):  # noqa: ANN001, ANN202
        net = _ToyNet().to(device)
        net.level.fill_(
            float(np.mean([data.images.get(i).mean() for i in range(len(data.images))]))
        )
        return models.Fitted(net, {}, {"toy": True})

    spec = models.register(
        models.ModelSpec(name="toy", build=lambda args, pretrained: _ToyNet(), fit=fit)
    )
    try:
        normals = [save(texture(96, 96, 30 + i), tmp_path / f"n{i}.png") for i in range(4)]
        result = train(TrainConfig(model="toy", input_size=64), normals, tmp_path / "m")
        assert result.metrics["toy"] is True
        model = load_model(result.artifact_path, device="cpu", backend="torch")
        assert model.kind == "toy" and model.backend == "torch"
        defect = save(add_defect(texture(96, 96, 99), 48, 48, 14), tmp_path / "d.png")
        pred = predict(model, defect, PredictConfig())
        assert pred.model_kind == "toy" and pred.is_anomalous and pred.regions
    finally:
        assert models.MODELS.pop("toy") is spec


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, known: set[str]) -> set[str]:
    """Every module of ``known`` that ``path`` imports anywhere (top level, in functions, or for
    type checking)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {m for m in found if m in known and m != module}


def test_no_import_cycles():
    files = [*PACKAGE.rglob("*.py"), ROOT / "workers" / "lite0.py"]
    known = {_module_name(f) for f in files}
    graph = {_module_name(f): _imports(f, known) for f in files}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for other in sorted(graph[module]):
            if state.get(other) == 1:
                cycle = path[path.index(other) :] + [other]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if other not in state:
                visit(other, [*path, other])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
