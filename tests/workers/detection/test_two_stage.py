"""The two-stage change detector (workers/detection/two_stage.py) on synthetic scans: the
changed pixels propose, a small network names the category and corrects the box.

The boards are binary patterns (tracks), the tested copies carry two kinds of defect that only
the pair tells apart: "extra" copper (a white square on the background) and "missing" copper (a
black square cut out of a track), plus JPEG-like speckle that the opening removes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from workers.detection import (
    Cancelled,
    CheckpointError,
    DetectionDataError,
    DetectionError,
    load_detector,
    two_stage,
)
from workers.detection.two_stage import PairConfig, PairDetector, proposals

pytestmark = pytest.mark.usefixtures("torch_one_thread")

SIDE = 200


def template(seed: int) -> np.ndarray:
    """White tracks 20 px wide on black, two horizontal and two vertical."""
    rng = np.random.default_rng(seed)
    img = np.zeros((SIDE, SIDE), np.uint8)
    for y in rng.choice(np.arange(20, SIDE - 30, 40), 2, replace=False):
        img[y : y + 20, :] = 255
    for x in rng.choice(np.arange(20, SIDE - 30, 40), 2, replace=False):
        img[:, x : x + 20] = 255
    return img


def defective(ref: np.ndarray, seed: int) -> tuple[np.ndarray, list[tuple]]:
    """The template with one "extra" square on the background and one "missing" square in a
    track (8 px each), speckle, and a 3 px dot nobody labelled; returns the image and its
    labelled boxes (x, y, w, h, cat), drawn 3 px around the defect as an annotator would."""
    rng = np.random.default_rng(100 + seed)
    img = ref.copy()
    speckle = rng.random(img.shape) < 0.002
    img[speckle] = 255 - img[speckle]
    boxes = []
    for cat, want in ((1, 0), (2, 255)):  # extra copper on black, missing copper on white
        for _ in range(500):
            x, y = (int(v) for v in rng.integers(10, SIDE - 18, 2))
            window = ref[y - 4 : y + 12, x - 4 : x + 12]
            if (window == want).all() and all(
                abs(x - bx) > 30 or abs(y - by) > 30 for bx, by, *_ in boxes
            ):
                img[y : y + 8, x : x + 8] = 255 - want
                boxes.append((x - 3, y - 3, 14, 14, cat))
                break
    for _ in range(500):  # the dot: a change that is no defect
        x, y = (int(v) for v in rng.integers(10, SIDE - 18, 2))
        clear = (ref[y - 3 : y + 6, x - 3 : x + 6] == 0).all()
        if clear and all(abs(x - bx) > 30 or abs(y - by) > 30 for bx, by, *_ in boxes):
            img[y : y + 3, x : x + 3] = 255
            break
    return img, boxes


def write_set(folder: Path, seeds: range, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for seed in seeds:
        ref = template(seed)
        img, boxes = defective(ref, seed)
        Image.fromarray(img).save(folder / f"{seed}_test.png")
        Image.fromarray(ref).save(folder / f"{seed}_temp.png")
        images.append(
            {
                "id": seed + 1,
                "file_name": f"{seed}_test.png",
                "reference_file_name": f"{seed}_temp.png",
                "width": SIDE,
                "height": SIDE,
            }
        )
        for x, y, w, h, cat in boxes:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": seed + 1,
                    "category_id": cat,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    coco = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "extra"}, {"id": 2, "name": "missing"}],
    }
    path = folder / name
    path.write_text(json.dumps(coco))
    return path


CONFIG = PairConfig(
    epochs=30,
    batch_size=16,
    lr=4e-3,
    settings=((1, 2), (5, 2)),
    min_pixels=9,
    min_steps_per_epoch=4,
)


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("pairs")
    return {
        "root": root,
        "train": write_set(root, range(0, 16), "train.json"),
        "val": write_set(root, range(20, 23), "val.json"),
    }


@pytest.fixture(scope="module")
def trained(sets) -> tuple[Path, object]:
    out = sets["root"] / "model" / "pairs.pt"
    result = two_stage.train(
        sets["train"],
        out,
        image_root=sets["root"],
        config=CONFIG,
        val_json=sets["val"],
        eval_every=15,
    )
    return out, result


def test_proposals_are_the_changed_pixels_without_the_speckle() -> None:
    ref = template(3)
    img, boxes = defective(ref, 3)
    found = proposals(img, ref, CONFIG)
    # each 8 px defect is one proposal, exactly its pixels; the single-pixel speckle is gone,
    # the 3 px dot stays (9 changed pixels: it is for the network to call "no defect")
    want = [(x + 3, y + 3, x + 11, y + 11) for x, y, *_ in boxes]
    assert len(found) == 3 and set(want) < set(found)
    (dot,) = set(found) - set(want)
    assert (dot[2] - dot[0], dot[3] - dot[1]) == (3, 3)
    assert proposals(ref, ref, CONFIG) == []


def test_a_box_is_drawn_to_the_changed_pixels_inside_it_with_its_categorys_margins() -> None:
    changed = np.zeros((100, 100), np.uint8)
    changed[40:50, 30:36] = 1  # the defect: x 30..35, y 40..49
    changed[40:50, 58:60] = 1  # a neighbour's change, at the network box's right edge
    box = [22.0, 33.0, 60.0, 57.0]  # the network's frame, the neighbour's pixels inside it
    margins = [5.0, 4.0, 3.0, 2.0]
    # looked for inside the box less 0.6 of the margins (x up to 58.2): the neighbour stays out
    assert two_stage.snap(changed, box, margins, 0.6) == [25, 36, 39, 52]
    # without the inset the neighbour's pixels widen the frame
    assert two_stage.snap(changed, box, margins, 0.0) == [25, 36, 63, 52]
    assert two_stage.snap(np.zeros_like(changed), box, margins, 0.6) is None
    assert two_stage.snap(changed, [30, 40, 34, 44], margins, 0.6) is None  # inset to nothing
    # a labelled frame's sides around the changed pixels inside it; the medians per category
    assert two_stage.frame_sides(changed, [27, 38, 40, 51]) == (3.0, 2.0, 4.0, 1.0)
    assert two_stage.frame_sides(changed, [0, 0, 20, 20]) is None
    frames = [(0, (3.0, 2.0, 4.0, 1.0)), (0, (5.0, 2.0, 4.0, 3.0)), (0, (4.0, 9.0, 4.0, 2.0))]
    frames += [(0, (4.0, 2.0, 4.0, 2.0))] * 2 + [(1, (2.0, 2.0, 2.0, 2.0))]
    margins, spreads = two_stage.fit_category_margins(frames, 3, [1.0, 1.0, 1.0, 1.0])
    assert margins == [
        [4.0, 2.0, 4.0, 2.0],
        [2.0, 2.0, 2.0, 2.0],
        [1.0, 1.0, 1.0, 1.0],  # no frame of this category: the proposals' margins
    ]
    assert spreads[0] == pytest.approx(np.std([[3, 2, 4, 1], [5, 2, 4, 3], [4, 9, 4, 2],
                                               [4, 2, 4, 2], [4, 2, 4, 2]], axis=0).tolist())  # fmt: skip
    assert spreads[1:] == [None, None]  # too few frames to trust their spread: the network's box


def test_topology_tells_a_break_a_bridge_a_hole_stray_copper_and_a_spur_apart() -> None:
    ref = np.zeros((60, 60), np.uint8)
    ref[20:30, :] = 255  # a bright track
    ref[40:50, :] = 255  # another
    box = [10, 10, 50, 55]

    def told(edit) -> list[float]:
        img = ref.copy()
        edit(img)
        numbers = two_stage.topology(img, ref, box, CONFIG)
        # turned and flipped alike: the numbers are of the pieces, not of their orientation
        for k in range(1, 4):
            turned = two_stage.topology(np.rot90(img, k), np.rot90(ref, k), [0, 0, 60, 60], CONFIG)
            assert turned == two_stage.topology(img, ref, [0, 0, 60, 60], CONFIG)
        return numbers

    def cut(img):  # an open: the track broken through
        img[20:30, 28:32] = 0

    def bite(img):  # a mouse bite: a notch, the track still whole
        img[20:24, 28:32] = 0

    def bridge(img):  # a short: the two tracks joined
        img[30:40, 28:32] = 255

    def spur(img):  # a spur: copper grown from a track
        img[30:34, 28:32] = 255

    def stray(img):  # spurious copper: a new piece
        img[34:37, 14:17] = 255

    def hole(img):  # a pin-hole: a dark piece inside the track
        img[24:27, 40:43] = 0

    # all turned dark; one more bright piece, and the dark sides of the track joined
    assert told(cut) == [0.0, 0.5, -0.5]
    assert told(bite) == [0.0, 0.0, 0.0]
    assert told(bridge) == [1.0, -0.5, 0.5]  # one bright piece less; the dark gap split in two
    assert told(spur) == [1.0, 0.0, 0.0]
    assert told(stray) == [1.0, 0.5, 0.0]
    assert told(hole) == [0.0, 0.0, 0.5]
    assert two_stage.topology(ref, ref, [70, 70, 80, 80], CONFIG) == [0.5, 0.0, 0.0]  # outside
    # as the network's "wide" path reads them: one kind of each of the three, one-hot
    kinds = two_stage.topology_kinds(torch.tensor([told(cut), told(bridge), [0.5, 0.0, 0.0]]))
    assert kinds.shape == (3, two_stage.TOPOLOGY_KINDS) and kinds.sum(1).tolist() == [3, 3, 3]
    assert [torch.nonzero(k).flatten().tolist() for k in kinds] == [
        [0, 6, 9],  # mostly turned dark; one bright piece more; one dark piece less
        [2, 4, 11],  # mostly turned bright; one bright piece less; one dark piece more
        [1, 5, 10],  # mixed; no change in either
    ]


def test_a_reference_of_another_size_is_refused() -> None:
    ref = template(1)
    with pytest.raises(DetectionError, match="aligned to the image, at its size"):
        proposals(ref, ref[:100], CONFIG)


def test_trains_validates_and_finds_each_defect_with_its_category(sets, trained) -> None:
    path, result = trained
    assert result.epochs == CONFIG.epochs and result.resumed_from_epoch == 0
    evaluated = [h for h in result.history if "map50" in h]
    assert [h["epoch"] for h in evaluated] == [15, 30]
    assert evaluated[-1]["map50"] >= 0.8, evaluated[-1]
    assert set(evaluated[-1]["per_class_ap50"]) == {"extra", "missing"}
    assert result.history[-1]["loss"] < result.history[0]["loss"]

    detector = load_detector(path)  # the registry's one loader knows this artifact
    assert isinstance(detector, PairDetector) and detector.siamese
    ref = template(30)
    img, boxes = defective(ref, 30)
    rgb = np.repeat(img[..., None], 3, axis=2)
    found = detector.predict(rgb, score_threshold=0.3, reference=np.repeat(ref[..., None], 3, 2))
    assert len(boxes) == 2
    for x, y, w, h, cat in boxes:
        best = max(
            found, key=lambda d: two_stage.box_iou((d.x1, d.y1, d.x2, d.y2), (x, y, x + w, y + h))
        )
        assert two_stage.box_iou((best.x1, best.y1, best.x2, best.y2), (x, y, x + w, y + h)) >= 0.5
        assert best.category_name == ("extra" if cat == 1 else "missing")
        assert best.second_score is not None and best.second_score < best.score
    # the same through files, as a detection run passes them (sliced or not: one pass)
    Image.fromarray(img).save(sets["root"] / "p.png")
    Image.fromarray(ref).save(sets["root"] / "r.png")
    again = detector.predict_sliced(
        str(sets["root"] / "p.png"), slice_size=640, reference=str(sets["root"] / "r.png"),
        score_threshold=0.3,
    )  # fmt: skip
    assert [(d.category_name, round(d.x1, 3)) for d in again] == [
        (d.category_name, round(d.x1, 3)) for d in found
    ]
    with pytest.raises(DetectionError, match="reference"):
        detector.predict(rgb)


def test_boxes_follow_the_labelled_frames_around_the_changed_pixels(sets, trained) -> None:
    path, _ = trained
    detector = load_detector(path)
    # the synthetic labels are drawn 3 px around each 8 px defect: fitted exactly, per category,
    # with no spread (so the frame outweighs the network's box entirely)
    assert detector.category_margins == [[3.0, 3.0, 3.0, 3.0], [3.0, 3.0, 3.0, 3.0]]
    assert detector.category_spreads == [[0.0] * 4, [0.0] * 4]

    def ious(box_sd: float, inset: float = 0.6) -> list[float]:
        detector.config.box_sd, detector.config.snap_inset = box_sd, inset
        out = []
        for seed in range(30, 36):
            ref = template(seed)
            img, boxes = defective(ref, seed)
            found = detector.predict(img, score_threshold=0.3, reference=ref)
            for x, y, w, h, _ in boxes:
                frame = (x, y, x + w, y + h)
                out.append(max(two_stage.box_iou((d.x1, d.y1, d.x2, d.y2), frame) for d in found))
        return out

    network, drawn, whole = ious(0.0), ious(3.2), ious(3.2, inset=0.0)
    # looked for in the whole box, each box is the labelled frame; inset, nearly
    assert min(whole) == pytest.approx(1.0), whole
    assert np.mean(drawn) > np.mean(network) and min(drawn) >= 0.5, (drawn, network)
    # a spread as large as the network's error: half way
    detector.category_spreads = [[3.2] * 4, [3.2] * 4]
    halfway = ious(3.2, inset=0.0)
    assert all(n <= h <= 1.0 for n, h in zip(network, halfway, strict=True)), (network, halfway)
    assert np.mean(network) < np.mean(halfway) < np.mean(whole)

    # an artifact written before the category margins keeps the network's boxes
    payload = torch.load(path, weights_only=True)
    older = path.with_name("older.pt")
    older_payload = {
        k: v for k, v in payload.items() if not k.startswith("category_") and k != "state_dicts"
    }
    torch.save({**older_payload, "version": 2, "state_dict": payload["state_dicts"][0]}, older)
    detector = load_detector(older)
    assert detector.category_margins is None and detector.category_spreads is None
    assert ious(3.2) == network

    # an artifact of version 1 (no topology numbers: a network without their inputs) still loads
    config = {k: v for k, v in payload["config"].items() if k != "topology"}
    first = path.with_name("version1.pt")
    net = two_stage.PairNet(2)
    torch.save(
        {**older_payload, "version": 1, "config": config, "state_dict": net.state_dict()}, first
    )
    detector = load_detector(first)
    assert detector.config.topology is False and detector.net.extra == 0
    assert detector.net.wide is None
    ref = template(40)
    img, _ = defective(ref, 40)
    assert isinstance(detector.predict(img, score_threshold=0.0, reference=ref), list)


def test_a_lost_worker_resumes_from_the_last_epoch_exactly(sets, tmp_path) -> None:
    config = PairConfig(**{**CONFIG.to_dict(), "epochs": 3, "settings": CONFIG.settings})
    whole = two_stage.train(
        sets["train"], tmp_path / "a.pt", image_root=sets["root"], config=config
    )
    ckpt = tmp_path / "ckpt.pt"

    def lose_after_epoch_2(fraction, message, metrics):
        if metrics is not None and metrics["epoch"] == 2:
            raise Cancelled()

    with pytest.raises(Cancelled):
        two_stage.train(
            sets["train"], tmp_path / "b.pt", image_root=sets["root"], config=config,
            checkpoint=ckpt, progress=lose_after_epoch_2,
        )  # fmt: skip
    assert ckpt.is_file() and not (tmp_path / "b.pt").exists()
    resumed = two_stage.train(
        sets["train"], tmp_path / "b.pt", image_root=sets["root"], config=config, checkpoint=ckpt
    )
    assert resumed.resumed_from_epoch == 2
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    [a] = torch.load(whole.artifact, weights_only=True)["state_dicts"]
    [b] = torch.load(resumed.artifact, weights_only=True)["state_dicts"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)

    # another thread count continues it (not a setting of the run)
    threads = PairConfig(**{**config.to_dict(), "num_threads": 1, "settings": CONFIG.settings})
    again = two_stage.train(
        sets["train"], tmp_path / "d.pt", image_root=sets["root"], config=threads, checkpoint=ckpt
    )
    assert again.resumed_from_epoch == 3
    # a checkpoint written before networks were a setting (one network) continues too
    payload = torch.load(ckpt, weights_only=True)
    del payload["identity"]["config"]["networks"]
    torch.save(payload, ckpt)
    older = two_stage.train(
        sets["train"], tmp_path / "e.pt", image_root=sets["root"], config=config, checkpoint=ckpt
    )
    assert older.resumed_from_epoch == 3
    other = PairConfig(**{**config.to_dict(), "seed": 7, "settings": CONFIG.settings})
    with pytest.raises(CheckpointError, match="other images or settings"):
        two_stage.train(
            sets["train"], tmp_path / "c.pt", image_root=sets["root"], config=other,
            checkpoint=ckpt,
        )  # fmt: skip
    ckpt.write_bytes(b"PK\x03\x04 half a zip")  # a truncated upload
    with pytest.raises(CheckpointError, match="cannot read training checkpoint"):
        two_stage.train(
            sets["train"], tmp_path / "c.pt", image_root=sets["root"], config=config,
            checkpoint=ckpt,
        )  # fmt: skip


def test_an_ensemble_averages_the_networks_of_successive_seeds_and_resumes_exactly(
    sets, tmp_path
) -> None:
    base = {**CONFIG.to_dict(), "epochs": 2, "settings": CONFIG.settings}
    singles = [
        two_stage.train(
            sets["train"], tmp_path / f"seed{seed}.pt", image_root=sets["root"],
            config=PairConfig(**{**base, "seed": seed}),
        ).artifact
        for seed in (0, 1)
    ]  # fmt: skip
    config = PairConfig(**{**base, "networks": 2})
    ckpt = tmp_path / "ckpt.pt"
    seen = []

    def lose_after(epoch):
        def progress(fraction, message, metrics):
            seen.append(message)
            if metrics is not None and metrics["epoch"] == epoch:
                raise Cancelled()

        return progress

    # lost after the first network's last epoch, then within the second
    for epoch in (2, 3):
        with pytest.raises(Cancelled):
            two_stage.train(
                sets["train"], tmp_path / "both.pt", image_root=sets["root"], config=config,
                checkpoint=ckpt, progress=lose_after(epoch),
            )  # fmt: skip
    assert "network 2/2, epoch 1/2 done" in seen
    result = two_stage.train(
        sets["train"], tmp_path / "both.pt", image_root=sets["root"], config=config,
        checkpoint=ckpt, val_json=sets["val"], eval_every=1,
    )  # fmt: skip
    assert result.resumed_from_epoch == 3 and result.epochs == 4
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    assert [h["network"] for h in result.history] == [1, 1, 2, 2]
    assert "map50" in result.history[-1]

    # the ensemble is the two networks trained alone from seeds 0 and 1, resumed or not
    payload = torch.load(result.artifact, weights_only=True)
    assert payload["version"] == 3 and len(payload["state_dicts"]) == 2
    for single, state in zip(singles, payload["state_dicts"], strict=True):
        [alone] = torch.load(single, weights_only=True)["state_dicts"]
        for key in alone:
            torch.testing.assert_close(alone[key], state[key], rtol=1e-5, atol=1e-6)

    # and predicts their mean: probabilities, boxes and box IoUs
    ref = template(41)
    img, _ = defective(ref, 41)
    both = load_detector(result.artifact).outputs(img, ref)
    alone = [load_detector(path).outputs(img, ref) for path in singles]
    for name in ("probs", "offsets", "quality"):
        mean = (getattr(alone[0], name) + getattr(alone[1], name)) / 2
        np.testing.assert_allclose(getattr(both, name), mean, rtol=1e-4, atol=1e-6)
    assert len(load_detector(result.artifact).nets) == 2

    # a budget spent within the second network keeps the first alone
    stopped = two_stage.save_from_checkpoint(
        ckpt, tmp_path / "kept.pt", load_detector(singles[0]).categories, config
    )[0]
    assert len(torch.load(stopped, weights_only=True)["state_dicts"]) == 2  # both finished
    ckpt.unlink()
    with pytest.raises(Cancelled):
        two_stage.train(
            sets["train"], tmp_path / "x.pt", image_root=sets["root"], config=config,
            checkpoint=ckpt, progress=lose_after(3),
        )  # fmt: skip
    kept, history = two_stage.save_from_checkpoint(
        ckpt, tmp_path / "kept.pt", load_detector(singles[0]).categories, config
    )
    assert len(history) == 3
    [first] = torch.load(kept, weights_only=True)["state_dicts"]
    [alone] = torch.load(singles[0], weights_only=True)["state_dicts"]
    for key in alone:
        torch.testing.assert_close(alone[key], first[key], rtol=1e-5, atol=1e-6)


def test_bad_training_sets_fail_before_training(sets, tmp_path) -> None:
    coco = json.loads(sets["train"].read_text())
    no_boxes = tmp_path / "no_boxes.json"
    no_boxes.write_text(json.dumps({**coco, "annotations": []}))
    with pytest.raises(DetectionDataError, match="no labelled boxes"):
        two_stage.train(no_boxes, tmp_path / "x.pt", image_root=sets["root"], config=CONFIG)
    unpaired = tmp_path / "unpaired.json"
    images = [{k: v for k, v in im.items() if k != "reference_file_name"} for im in coco["images"]]
    unpaired.write_text(json.dumps({**coco, "images": images}))
    with pytest.raises(DetectionDataError, match="no reference"):
        two_stage.train(unpaired, tmp_path / "x.pt", image_root=sets["root"], config=CONFIG)
    same = tmp_path / "same.json"
    alike = [{**im, "reference_file_name": im["file_name"]} for im in coco["images"]]
    same.write_text(json.dumps({**coco, "images": alike}))
    with pytest.raises(DetectionDataError, match="no changed pixels"):
        two_stage.train(same, tmp_path / "x.pt", image_root=sets["root"], config=CONFIG)
    # labels drawn where nothing changed: nothing says what a defect looks like
    elsewhere = tmp_path / "elsewhere.json"
    moved = [{**a, "bbox": [0, 0, 6, 6]} for a in coco["annotations"]]
    elsewhere.write_text(json.dumps({**coco, "annotations": moved}))
    with pytest.raises(DetectionDataError, match="lies on a labelled defect"):
        two_stage.train(elsewhere, tmp_path / "x.pt", image_root=sets["root"], config=CONFIG)
    assert not (tmp_path / "x.pt").exists()
    with pytest.raises(DetectionError, match="not a two-stage"):
        two_stage.load(sets["train"])
