"""The Siamese detector: an image and its aligned reference through one backbone, fused per level.

Shapes, the identity start of the fusion, pair data and augmentation, a short training run that
checkpoints and resumes, sliced prediction with a reference, the two-input ONNX export against
torch, and the errors a caller meets. Tiny networks and synthetic pairs: accuracy is measured in
benchmarks/siamese.py, not here.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from workers.detection import Cancelled, DetectionDataError, DetectionError
from workers.detection.artifact import load_artifact, read_artifact, save_artifact
from workers.detection.config import ModelConfig, TrainConfig
from workers.detection.data import (
    Category,
    CocoDetectionDataset,
    collate_train,
    random_crop,
    random_flip,
)
from workers.detection.inference import Detector
from workers.detection.model import build_model
from workers.detection.trainer import _augment, train

from .conftest import tiny_model_config

pytestmark = pytest.mark.ml

CATS = [Category(1, "spot", 0), Category(2, "gap", 1)]


def make_pairs(root: Path, n: int = 6, size: int = 128, seed: int = 0) -> Path:
    """``n`` templates (grey board with light tracks) and test copies with painted defects: a
    dark 'spot' on the board and a 'gap' cut into a track. COCO with ``reference_file_name``."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    (root / "ref").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(n):
        template = np.full((size, size, 3), 70, np.uint8)
        for _ in range(4):  # horizontal and vertical tracks
            k = int(rng.integers(8, size - 16))
            if rng.random() < 0.5:
                template[k : k + 6, :] = 200
            else:
                template[:, k : k + 6] = 200
        test = template.copy()
        for cat in (1, 2):
            s = int(rng.integers(10, 18))
            x, y = (int(v) for v in rng.integers(0, size - s, 2))
            test[y : y + s, x : x + s] = 20 if cat == 1 else 140
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": cat,
                    "bbox": [x, y, s, s],
                    "area": s * s,
                    "iscrowd": 0,
                }
            )
        Image.fromarray(test).save(root / "img" / f"{i}.png")
        Image.fromarray(template).save(root / "ref" / f"{i}.png")
        images.append(
            {
                "id": i + 1,
                "file_name": f"img/{i}.png",
                "reference_file_name": f"ref/{i}.png",
                "width": size,
                "height": size,
            }
        )
    ann = root / "pairs.json"
    categories = [{"id": 1, "name": "spot"}, {"id": 2, "name": "gap"}]
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
    return ann


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pairs(tmp_path_factory.mktemp("pairs"))


def siamese_config(**overrides: Any) -> ModelConfig:
    return tiny_model_config(reference="siamese", **overrides)


def short_train(**overrides: Any) -> TrainConfig:
    kw: dict[str, Any] = {
        "epochs": 2,
        "batch_size": 3,
        "max_iters_per_epoch": 1,
        "train_sizes": (96, 128),
        "log_every": 1000,
    }
    kw.update(overrides)
    return TrainConfig(**kw)


def randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BN statistics, fusion scales and head weights, so every path carries signal
    and a fusion that did nothing, or the wrong thing, would show in the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
        for name, p in model.yolo_head.named_parameters():
            if "pred_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


# --- model ---------------------------------------------------------------------------------


@pytest.mark.parametrize("hw", [(128, 128), (96, 160)])
def test_fused_model_shapes(hw: tuple[int, int]) -> None:
    h, w = hw
    model = build_model(siamese_config()).eval()
    single = build_model(tiny_model_config()).eval()
    images, refs = torch.rand(2, 3, h, w), torch.rand(2, 3, h, w)
    with torch.no_grad():
        fused = model.features(images, refs)
        plain = single.features(images)
        scores, boxes = model(images, refs)
    assert [f.shape for f in fused] == [f.shape for f in plain]  # the neck sees what it expects
    cells = sum((h // s) * (w // s) for s in (8, 16, 32))
    assert scores.shape == (2, cells, 2) and boxes.shape == (2, cells, 4)
    assert len(model.fusion.levels) == 3
    assert [lv.mix.conv.in_channels for lv in model.fusion.levels] == [
        2 * c for c in model.backbone.out_channels
    ]
    assert single.fusion is None


def test_fusion_starts_as_the_single_image_network() -> None:
    """Same seed, same weights: at initialisation the Siamese network computes exactly what the
    single-image one does, whatever the reference (the fusion's BN scale starts at zero)."""
    torch.manual_seed(3)
    single = build_model(tiny_model_config()).eval()
    torch.manual_seed(3)
    siamese = build_model(siamese_config()).eval()
    own = siamese.state_dict()
    assert all(torch.equal(v, own[k]) for k, v in single.state_dict().items())
    randomised(single)  # a head that is not all zeros, so the outputs say something
    siamese.load_state_dict(single.state_dict(), strict=False)
    images, refs = torch.rand(2, 3, 128, 128), torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        a = single(images)
        b = siamese(images, refs)
        assert a[0].std() > 1e-3
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
        for f, g in zip(siamese.features(images, refs), single.features(images), strict=True):
            assert torch.equal(f, g)
        # and the fusion does carry the change once it has learned a scale
        for level in siamese.fusion.levels:
            level.mix.bn.weight.fill_(1.0)
        c = siamese(images, refs)
    assert (c[0] - a[0]).abs().max() > 1e-3


def test_config_round_trip_and_single_image_form_unchanged() -> None:
    cfg = siamese_config()
    assert cfg.siamese and cfg.to_dict()["reference"] == "siamese"
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    plain = tiny_model_config()
    assert "reference" not in plain.to_dict()  # artifacts/checkpoints of one image: as before
    assert ModelConfig.from_dict(plain.to_dict()).reference == "none"
    with pytest.raises(ValueError, match="reference must be one of"):
        tiny_model_config(reference="twin")


# --- data ----------------------------------------------------------------------------------


def test_dataset_reads_references_and_names_images_without_one(pairs: Path, tmp_path: Path) -> None:
    ds = CocoDetectionDataset(pairs, references=True)
    s = ds[0]
    assert s.reference is not None and s.reference.shape == s.image.shape
    assert not np.array_equal(s.reference, s.image)  # the defects differ
    assert CocoDetectionDataset(pairs)[0].reference is None  # single-image: not read

    data = json.loads(pairs.read_text())
    # DeepPCB's field, resolved against another root
    for img in data["images"]:
        img["template_file_name"] = img.pop("reference_file_name").removeprefix("ref/")
    deeppcb = tmp_path / "deeppcb.json"
    deeppcb.write_text(json.dumps(data))
    other = CocoDetectionDataset(
        deeppcb, pairs.parent, references=True, reference_root=pairs.parent / "ref"
    )
    assert np.array_equal(other[0].reference, s.reference)

    del data["images"][2]["template_file_name"]
    deeppcb.write_text(json.dumps(data))
    with pytest.raises(DetectionDataError, match=r"1 of 6 images .* no reference .*img/2\.png"):
        CocoDetectionDataset(deeppcb, pairs.parent, references=True)

    data["images"][2]["template_file_name"] = "small.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(pairs.parent / "small.png")
    deeppcb.write_text(json.dumps(data))
    with pytest.raises(DetectionDataError, match=r"small\.png of image img/2\.png is 64x64"):
        CocoDetectionDataset(deeppcb, pairs.parent, references=True)[2]


def test_augmentation_moves_image_and_reference_alike(pairs: Path) -> None:
    ds = CocoDetectionDataset(pairs, references=True)
    s = ds[1]
    s.reference = s.image.copy()  # a reference equal to the image must stay equal to it
    rng = random.Random(0)
    for _ in range(10):
        t = random_flip(random_crop(s, 80, rng, object_prob=0.5), rng, 0.5)
        assert t.image.shape == (80, 80, 3) and np.array_equal(t.reference, t.image)
    batch = collate_train([s, s], 96, random.Random(1))
    assert batch.references is not None and torch.equal(batch.references, batch.images)

    # colour distortion draws the same values for both, then the reference differs slightly
    cfg = TrainConfig(crop_size=96, distort=True, flip_prob=0.5)
    gaps = []
    for seed in range(8):
        t = _augment(s, cfg, random.Random(seed), siamese=True)
        gaps.append(np.abs(t.image.astype(int) - t.reference.astype(int)).mean())
    assert 0 < max(gaps) < 0.12 * 255, gaps


# --- training ------------------------------------------------------------------------------


def test_training_checkpoints_and_resumes_exactly(pairs: Path, tmp_path: Path) -> None:
    def run(out: Path, ckpt: Path, progress: Any = None) -> Any:
        return train(
            pairs,
            out,
            model_config=siamese_config(),
            train_config=short_train(),
            progress=progress,
            val_json=pairs,
            eval_every=2,
            eval_slice_size=128,
            checkpoint=ckpt,
        )

    whole = run(tmp_path / "a.pt", tmp_path / "a.ckpt")
    assert whole.iterations == 2 and whole.resumed_from_epoch == 0
    assert "map50" in whole.history[-1]  # validation ran with the references

    def cancel(fraction: float, message: str, metrics: dict | None) -> None:
        if metrics is not None and metrics["epoch"] == 1:
            raise Cancelled("worker lost")

    with pytest.raises(Cancelled):
        run(tmp_path / "b.pt", tmp_path / "b.ckpt", cancel)
    resumed = run(tmp_path / "b.pt", tmp_path / "b.ckpt")
    assert resumed.resumed_from_epoch == 1
    a, b = read_artifact(whole.artifact), read_artifact(resumed.artifact)
    assert a["model_config"]["reference"] == "siamese"
    assert any(k.startswith("fusion.levels.") for k in a["state_dict"])
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k

    # a single-image run cannot continue the Siamese checkpoint
    from workers.detection import CheckpointError

    with pytest.raises(CheckpointError, match="model config reference"):
        train(
            pairs,
            tmp_path / "c.pt",
            model_config=tiny_model_config(),
            train_config=short_train(),
            checkpoint=tmp_path / "a.ckpt",
        )

    model, cats, _ = load_artifact(whole.artifact)
    assert model.cfg.siamese and model.fusion is not None
    assert [c.name for c in cats] == ["spot", "gap"]


def test_siamese_starts_from_a_single_image_artifact(tmp_path: Path) -> None:
    """``TrainConfig(pretrained=<single-image artifact>)``: every tensor but the fusion's is
    taken, and the fusion's identity start keeps that detector's outputs."""
    from workers.detection.trainer import _load_initial_weights

    torch.manual_seed(5)
    single = randomised(build_model(tiny_model_config()))
    path = save_artifact(tmp_path / "single.pt", single, CATS)
    torch.manual_seed(6)  # other initial weights
    siamese = build_model(siamese_config())
    _load_initial_weights(siamese, str(path))
    siamese.eval()
    images = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(
            siamese(images, torch.rand(1, 3, 128, 128)), single(images), rtol=0, atol=1e-6
        )


def test_siamese_training_set_without_references_fails_before_training(
    pairs: Path, tmp_path: Path
) -> None:
    data = json.loads(pairs.read_text())
    for img in data["images"][:2]:
        del img["reference_file_name"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(DetectionDataError, match=r"img/0\.png, img/1\.png"):
        train(
            bad,
            tmp_path / "m.pt",
            image_root=pairs.parent,
            model_config=siamese_config(),
            train_config=short_train(),
        )
    assert not (tmp_path / "m.pt").exists()


# --- prediction ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def siamese_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = randomised(build_model(siamese_config(eval_size=64)))
    for level in model.fusion.levels:  # a fusion that has learned something
        torch.nn.init.uniform_(level.mix.bn.weight, 0.5, 1.5)
    return save_artifact(tmp_path_factory.mktemp("siamese") / "model.pt", model, CATS)


def board(seed: int, h: int = 160, w: int = 224) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    reference = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    image = reference.copy()
    image[40:60, 100:124] = 255 - image[40:60, 100:124]
    return image, reference


def test_sliced_prediction_cuts_the_reference_at_the_same_windows(
    siamese_artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    det = Detector.load(siamese_artifact, device="cpu")
    assert det.siamese and det.eval_size == 64
    image, reference = board(0)
    seen: list[tuple[np.ndarray, np.ndarray]] = []
    original = Detector.predict_batch

    def spy(self: Detector, images: list, score_threshold: float = 0.25, references=None):
        seen.extend(zip(images, references, strict=True))
        return original(self, images, score_threshold, references=references)

    monkeypatch.setattr(Detector, "predict_batch", spy)
    inverted = 255 - reference
    dets = det.predict_sliced(
        image, slice_size=64, overlap=0.25, score_threshold=0.05, reference=inverted
    )
    # SAHI's windows, in SAHI's order: 160 x 224 at 64 px, overlap 0.25 -> 3 rows x 5 columns
    from sahi.slicing import get_slice_bboxes

    windows = get_slice_bboxes(160, 224, 64, 64, True, 0.25, 0.25)
    assert len(seen) == len(windows) == 15
    for (crop, ref), (x0, y0, x1, y1) in zip(seen, windows, strict=True):
        assert np.array_equal(crop, image[y0:y1, x0:x1])
        assert np.array_equal(ref, inverted[y0:y1, x0:x1])
    assert dets and all(0 <= d.x1 < d.x2 <= 224 and 0 <= d.y1 < d.y2 <= 160 for d in dets)
    # the reference matters: another one gives other detections
    monkeypatch.setattr(Detector, "predict_batch", original)
    other = det.predict_sliced(
        image, slice_size=64, overlap=0.25, score_threshold=0.05, reference=reference
    )
    assert [(d.x1, d.score) for d in other] != [(d.x1, d.score) for d in dets]


def test_pair_slicing_is_sahis_slicing_and_merge() -> None:
    """The pair path re-implements ``get_sliced_prediction``'s loop (SAHI takes one image);
    run without a reference on a single-image network it gives SAHI's detections exactly."""
    torch.manual_seed(1)
    det = Detector(randomised(build_model(tiny_model_config(eval_size=64))), CATS, "cpu")
    image, _ = board(1)
    kw = {
        "slice_size": 64,
        "overlap": 0.25,
        "score_threshold": 0.05,
        "batch_size": 3,
        "postprocess_type": "NMS",
        "match_metric": "IOS",
        "match_threshold": 0.6,
        "class_agnostic": True,
    }
    for standard in (False, True):
        sahi = det.predict_sliced(image, perform_standard_pred=standard, **kw)
        ours = det._from_object_predictions(
            det._sliced_pairs(image, None, perform_standard_pred=standard, **kw)
        )
        assert len(sahi) > 5
        assert [(d.x1, d.y1, d.x2, d.y2, d.score, d.category_id) for d in ours] == [
            (d.x1, d.y1, d.x2, d.y2, d.score, d.category_id) for d in sahi
        ]


def assert_onnx_agrees_with_torch(artifact: Path, onnx_path: Path, seed: int) -> None:
    """The two-input export's raw outputs equal the torch network's on random pairs, and its
    sliced detections on a board equal torch's (category, score, box)."""
    from workers.detection import load_detector
    from workers.detection.onnx_export import OnnxDetector

    ort = OnnxDetector(onnx_path)
    assert ort.siamese and ort.size == 64
    model, _, _ = load_artifact(artifact)
    model.convert_to_deploy().eval()
    images, refs = torch.rand(3, 3, 64, 64), torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        scores, boxes = model(images, refs)
    o_scores, o_boxes = ort.raw(images.numpy(), refs.numpy())
    np.testing.assert_allclose(o_scores, scores.numpy(), atol=1e-5)
    np.testing.assert_allclose(o_boxes, boxes.numpy(), atol=1e-3)

    image, reference = board(seed)
    kw = {"slice_size": 64, "overlap": 0.25, "score_threshold": 0.05}
    a = load_detector(artifact, "torch", device="cpu").predict_sliced(
        image, reference=reference, **kw
    )
    b = load_detector(artifact, "onnx").predict_sliced(image, reference=reference, **kw)
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        assert x.category_id == y.category_id and abs(x.score - y.score) < 1e-4
        assert max(abs(u - v) for u, v in zip(x.bbox_xywh, y.bbox_xywh, strict=True)) < 1e-2


def test_onnx_two_input_export_matches_torch(siamese_artifact: Path, tmp_path: Path) -> None:
    import onnx

    from workers.detection.onnx_export import export_onnx, read_export_metadata

    path = export_onnx(siamese_artifact, tmp_path / "model.64.onnx")
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["image", "reference"]
    meta = read_export_metadata(path)
    assert meta["loupe_reference"] == "siamese"
    assert json.loads(meta["loupe_model_config"])["reference"] == "siamese"
    assert_onnx_agrees_with_torch(siamese_artifact, path, seed=2)


def test_missing_or_unexpected_reference_is_a_clear_error(
    siamese_artifact: Path, tmp_path: Path
) -> None:
    from workers.detection import load_detector

    image, reference = board(3, 64, 64)
    for runtime in ("torch", "onnx"):
        det = load_detector(siamese_artifact, runtime, device="cpu")
        with pytest.raises(DetectionError, match="Siamese model: pass each image's reference"):
            det.predict(image)
        with pytest.raises(DetectionError, match="Siamese model"):
            det.predict_sliced(np.zeros((200, 200, 3), np.uint8), slice_size=64)
        with pytest.raises(DetectionError, match="warp the reference onto the image"):
            det.predict(image, reference=reference[:32])
        assert isinstance(det.predict(image, 0.05, reference=reference), list)
    model = build_model(siamese_config(eval_size=64)).eval()
    with pytest.raises(DetectionError, match="needs the reference image"):
        model(torch.rand(1, 3, 64, 64))

    single = Detector(build_model(tiny_model_config(eval_size=64)), CATS, "cpu")
    with pytest.raises(DetectionError, match="single-image model: it takes no reference"):
        single.predict(image, reference=reference)


def test_int8_check_calibrates_and_judges_with_references(
    siamese_artifact: Path, pairs: Path, tmp_path: Path
) -> None:
    """The INT8 check runs for a two-input export: calibrated on (image, reference) slices,
    judged with the references. This random network finds nothing, so nothing is kept."""
    import shutil

    from workers.detection.quantize import check_int8, int8_export_path
    from workers.detection.runtimes import onnx_export_path

    artifact = Path(shutil.copy(siamese_artifact, tmp_path / "model.pt"))
    result = check_int8(artifact, pairs, slice_size=None, min_speedup=0.0)
    assert result["images"] == 6 and result["ms_int8"] > 0 and result["ms_fp32"] > 0
    assert not result["passed"] and "nothing to compare" in result["reason"]
    assert not int8_export_path(onnx_export_path(artifact, 64)).exists()


def test_cli_predicts_with_a_reference_per_image(
    siamese_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from workers.detection.__main__ import main

    image, reference = board(4)
    Image.fromarray(image).save(tmp_path / "a.png")
    Image.fromarray(reference).save(tmp_path / "a_ref.png")
    args = ["predict", str(siamese_artifact), str(tmp_path / "a.png"), "--slice-size", "64"]
    assert main([*args, "--reference", str(tmp_path / "a_ref.png"), "--score", "0.05"]) == 0
    line = json.loads(capsys.readouterr().out.splitlines()[0])
    assert line["detections"]
    assert main(args) == 2
    assert "Siamese model" in capsys.readouterr().err


# --- stacked: the reference as input channels ----------------------------------------------


def test_stacked_input_is_grey_reference_and_difference() -> None:
    """``reference="stacked"``: one backbone pass over (grey, reference grey, |difference|), no
    fusion layers; a reference equal to the image leaves the third channel at zero."""
    from workers.detection.model import stack_reference

    images = torch.rand(2, 3, 64, 64)
    refs = images.clone()
    refs[:, :, 10:20, 30:40] = 1 - refs[:, :, 10:20, 30:40]
    stacked = stack_reference(images, refs)
    grey = images.mean(1)
    assert stacked.shape == (2, 3, 64, 64)
    torch.testing.assert_close(stacked[:, 0], grey)
    torch.testing.assert_close(stacked[:, 1], refs.mean(1))
    assert stacked[:, 2, 10:20, 30:40].min() > 0  # the change is there at full resolution
    outside = stacked[:, 2].clone()
    outside[:, 10:20, 30:40] = 0
    assert torch.equal(outside, torch.zeros_like(outside))  # and only there
    assert torch.equal(stack_reference(images, images)[:, 2], torch.zeros(2, 64, 64))

    cfg = tiny_model_config(reference="stacked")
    assert cfg.siamese and ModelConfig.from_dict(cfg.to_dict()) == cfg
    model = build_model(cfg).eval()
    assert model.fusion is None
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for p in build_model(tiny_model_config()).parameters()
    )  # the single-image network's weights, nothing added
    with torch.no_grad():
        feats = model.features(images, refs)
        expected = model.backbone(stack_reference(images, refs))
        other = model.features(images, images)
    assert all(torch.equal(f, g) for f, g in zip(feats, expected, strict=True))
    assert any(not torch.equal(f, g) for f, g in zip(feats, other, strict=True))
    with pytest.raises(DetectionError, match="needs the reference image"):
        model(images)


def test_stacked_trains_on_pairs_exports_and_predicts(pairs: Path, tmp_path: Path) -> None:
    """A short stacked training on the synthetic pairs (with defects copied along the
    references: the copies go into the image, the reference stays the golden sample), then the
    two-input ONNX export against torch and sliced prediction that needs the reference."""
    from workers.detection import load_detector
    from workers.detection.onnx_export import export_onnx, read_export_metadata

    result = train(
        pairs,
        tmp_path / "stacked.pt",
        model_config=tiny_model_config(reference="stacked", eval_size=64),
        train_config=short_train(reference_transplant=1.0),
        val_json=pairs,
        eval_every=2,
        eval_slice_size=128,
    )
    assert "map50" in result.history[-1]
    saved = read_artifact(result.artifact)
    assert saved["model_config"]["reference"] == "stacked"
    assert not any(k.startswith("fusion.") for k in saved["state_dict"])

    path = export_onnx(result.artifact, tmp_path / "model.64.onnx")
    assert read_export_metadata(path)["loupe_reference"] == "stacked"
    # two iterations leave every score at the head's prior (ties): the runtimes are compared
    # on a network with spread-out weights, as for the Siamese export
    torch.manual_seed(0)
    spread = randomised(build_model(tiny_model_config(reference="stacked", eval_size=64)))
    spread_path = save_artifact(tmp_path / "spread.pt", spread, CATS)
    assert_onnx_agrees_with_torch(
        spread_path, export_onnx(spread_path, tmp_path / "spread.64.onnx"), seed=5
    )

    image, _ = board(5)
    for runtime in ("torch", "onnx"):
        det = load_detector(result.artifact, runtime, device="cpu")
        with pytest.raises(DetectionError, match="stacked model: pass each image's reference"):
            det.predict(image[:64, :64])


def test_cli_train_builds_the_stacked_or_siamese_network() -> None:
    from workers.detection.__main__ import _model_config, build_parser

    parser = build_parser()
    base = ["train", "coco.json", "--output", "out.pt", "--model", "lite0"]
    for flag, reference in (("--stacked", "stacked"), ("--siamese", "siamese"), (None, "none")):
        args = parser.parse_args(base + ([flag] if flag else []))
        assert _model_config(args, 6).reference == reference
    with pytest.raises(SystemExit):  # one or the other
        parser.parse_args([*base, "--stacked", "--siamese"])
