"""Nothing touches the network; PatchCore's coreset stays in bounded memory."""

from __future__ import annotations

import os
import socket
import textwrap
from pathlib import Path

import pytest
import torch

from tests.conftest import run_python
from workers.anomaly import PredictConfig, TrainConfig, predict, train
from workers.anomaly.models.patchcore import greedy_coreset

pytestmark = pytest.mark.ml

ROOT = Path(__file__).resolve().parents[3]


def test_train_and_predict_never_touch_the_network(monkeypatch, rgb_normals, tmp_path: Path):
    attempts = []

    def refuse(self, address, *args, **kwargs):  # noqa: ANN001, ANN202
        attempts.append(address)
        raise OSError(f"network access attempted: {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: refuse(None, a))
    # PatchCore builds the ImageNet backbone from the PyPI file: the part most likely to
    # reach for a hub download if the offline wiring broke.
    config = TrainConfig(model="patchcore", input_size=64, scale=1.0)
    result = train(config, rgb_normals, tmp_path)
    predict(result.artifact_path, rgb_normals[0], PredictConfig())
    assert attempts == []
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_network_guard_itself_works(monkeypatch):
    """The guard above must really catch a connection attempt (else that test proves nothing)."""

    def refuse(self, address, *args, **kwargs):  # noqa: ANN001, ANN202
        raise OSError("blocked")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    with pytest.raises(OSError, match="blocked"), socket.socket() as s:
        s.connect(("127.0.0.1", 9))


@pytest.mark.parametrize("env", ["home", "xdg", "empty"])
def test_models_and_caches_default_outside_the_checkout(monkeypatch, tmp_path: Path, env: str):
    """Without LOUPE_MODELS_DIR (or with it empty, as a .env copied from .env.example has it),
    weights and library caches go to $XDG_CACHE_HOME/loupe/models (~/.cache/loupe/models), never
    into <checkout>/var/models, and stay there on later calls (configure_offline points
    XDG_CACHE_HOME inside that folder)."""
    for name in ("LOUPE_MODELS_DIR", "XDG_CACHE_HOME", "TORCH_HOME", "HF_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    if env == "xdg":
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if env == "empty":
        monkeypatch.setenv("LOUPE_MODELS_DIR", "")
    code = (
        "import os; from workers.anomaly.offline import configure_offline as c, "
        "distilled_teacher_path as d; "
        "print(c(), c(), d().parent, os.environ['TORCH_HOME'], sep='\\n')"
    )
    lines = run_python(code).stdout.split()
    expected = tmp_path / ("xdg" if env == "xdg" else "home/.cache") / "loupe" / "models"
    assert lines == [
        str(expected),
        str(expected),
        str(expected / "teachers"),
        str(expected / "torch"),
    ]


def test_coreset_picks_one_point_per_cluster():
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(8, 152, generator=gen) * 50
    points = (centres[:, None, :] + torch.randn(8, 200, 152, generator=gen)).reshape(-1, 152)
    chosen = greedy_coreset(points, 8)
    clusters = {int(i) // 200 for i in chosen}
    assert clusters == set(range(8))


def test_coreset_memory_is_bounded():
    """100k x 152 embeddings (58 MB) -> a 500-row coreset; peak RSS must stay small.

    Run in a fresh interpreter, its peak measured by ``workers.memory`` (``ru_maxrss`` would
    report the pytest process's own peak, larger than this, and the growth would read 0 whatever
    the coreset did). anomalib's KCenterGreedy was seen at 24 GiB on this machine for a pool of
    this order.
    """
    code = textwrap.dedent(
        """
        import torch
        torch.set_num_threads(1)
        from workers.anomaly.models.patchcore import greedy_coreset
        from workers.memory import peak_rss_mb
        x = torch.randn(100_000, 152)
        base = peak_rss_mb()
        idx = greedy_coreset(x, 500)
        assert len(set(idx.tolist())) == 500
        print(round(peak_rss_mb() - base))
        """
    )
    out = run_python(code)
    grown_mb = int(out.stdout.strip().splitlines()[-1])
    assert grown_mb < 600, f"coreset grew RSS by {grown_mb} MB"


def test_library_imports_neither_django_nor_celery():
    code = (
        "import sys, workers.anomaly, workers.anomaly.__main__, workers.anomaly.training, "
        "workers.anomaly.pipeline, workers.anomaly.export, workers.anomaly.teacher, "
        "workers.anomaly.models.padim, workers.anomaly.models.patchcore; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'django', 'celery'}))"
    )
    out = run_python(code, drop_env=("DJANGO_SETTINGS_MODULE",))
    assert out.stdout.strip() == "[]"


def test_int8_export_sends_no_telemetry(rgb_normals, tmp_path: Path):
    """NNCF phones home with usage telemetry unless told not to. Outside pytest (which NNCF
    detects and stays quiet in) the export must neither enable it nor open a connection."""
    config = TrainConfig(model="efficientad", input_size=256, steps=1, teacher="random")
    model = train(config, rgb_normals, tmp_path / "m").artifact_path
    code = textwrap.dedent(
        f"""
        import socket, sys
        attempts = []
        def refuse(self, address, *a, **k):
            attempts.append(address)
            raise OSError("network access attempted")
        socket.socket.connect = refuse
        socket.socket.connect_ex = refuse
        from workers.anomaly import export_openvino_int8
        export_openvino_int8({str(model)!r}, {[str(p) for p in rgb_normals]!r})
        import nncf.telemetry.wrapper as wrapper
        print(isinstance(wrapper.telemetry, wrapper.NNCFTelemetryStub), attempts)
        """
    )
    out = run_python(code, drop_env=("NNCF_CI", "CI"), timeout=300)
    assert out.stdout.strip().splitlines()[-1] == "True []"
    assert (model.parent / "model_int8.xml").is_file()
