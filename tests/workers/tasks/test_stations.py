"""A line station end to end with the app: a video made from real bottle photos with defective
ones at known frames, a model trained in the test, the station process writing result rows,
sampling NG frames into the project with their heatmaps and suggestions."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from django.test import Client

from annotations.models import Suggestion
from inspection.models import Image, ImageHeatmap, StationResult
from inspection.services.inspections import model_version_train
from inspection.services.stations import station_create
from tests.conftest import dataset

# the station's reader and writer threads: an error there fails the test, not just a warning
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")

SIDE = 256  # bottle photos are 900 px: a quarter keeps the test fast, the defects stay visible
NG_FRAMES = {4, 9}
TRAINED = 28


def bottle(path: Path) -> np.ndarray:
    """A bottle photo as a BGR frame of SIDE x SIDE."""
    return cv2.resize(cv2.imread(str(path)), (SIDE, SIDE), interpolation=cv2.INTER_AREA)


def png(frame: np.ndarray) -> bytes:
    return cv2.imencode(".png", frame)[1].tobytes()


@pytest.fixture
def trained(team, client_for, upload):
    """The Bottles project with an active PaDiM trained on 28 normal photos (4 of them held out
    for calibration: with 16, two held-out maxima made a threshold that normals crossed)."""
    from workers.tasks.anomaly import train_anomaly_model
    from workers.tasks.runner import run_job

    root = dataset("mvtec_bottle")
    normals = sorted((root / "train" / "good").glob("*.png"))
    project, admin = team["project"], team["admin"]
    files = [upload(f"n{i}.png", png(bottle(p))) for i, p in enumerate(normals[:TRAINED])]
    r = client_for(admin).post(
        f"/api/projects/{project.pk}/images/",
        {"files": files, "is_normal": "true"},
        format="multipart",
    )
    assert r.status_code == 201, r.content
    version = model_version_train(
        user=admin, project=project, architecture="padim", params={"input_size": SIDE}
    )
    assert run_job(str(version.job_id), train_anomaly_model.body) == "succeeded"
    team["version"] = version
    team["root"] = root
    team["unseen_normals"] = normals[TRAINED:] + sorted((root / "test" / "good").glob("*.png"))
    return team


def line_video(path: Path, team: dict, length: int = 14) -> Path:
    """Unseen normal bottles, with broken ones at NG_FRAMES (MJPG, as cameras record)."""
    root, normals = team["root"], team["unseen_normals"]
    broken = sorted((root / "test" / "broken_large").glob("*.png"))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (SIDE, SIDE))
    writer.set(cv2.VIDEOWRITER_PROP_QUALITY, 95)
    b = iter(broken)
    for i in range(length):
        writer.write(bottle(next(b)) if i in NG_FRAMES else bottle(normals[i % len(normals)]))
    writer.release()
    return path


@pytest.mark.django_db(transaction=True)  # rows are stored by the station's writer thread
def test_a_station_inspects_a_video_and_sends_the_ng_frames_to_review(trained, tmp_path):
    from workers.tasks.stations import StationProcess

    project, admin = trained["project"], trained["admin"]
    video = line_video(tmp_path / "line-3.avi", trained)
    station = station_create(
        user=admin, project=project, name="line-3", source=str(video), ok_sample_rate=0.0
    )
    assert StationProcess("line-3", until_idle=True).run() == 0

    rows = list(StationResult.objects.filter(station=station).order_by("frame_number"))
    assert [r.frame_number for r in rows] == list(range(14))  # one row per frame
    assert [r.key for r in rows] == [f"line-3.avi#{i}" for i in range(14)]
    verdicts = {r.frame_number: r.verdict for r in rows}
    assert {n for n, v in verdicts.items() if v == "ng"} == NG_FRAMES, verdicts
    assert all(r.model_version_id == trained["version"].pk for r in rows)
    assert all(r.latency_ms > 0 for r in rows)
    for r in rows:
        if r.verdict == "ng":
            assert r.regions and r.image_id is not None
    # the NG frames are project images now, with their heatmaps and pending suggestions
    sampled = Image.objects.filter(station_results__station=station)
    assert sampled.count() == sum(v in ("ng", "unsure") for v in verdicts.values())
    ng_image = Image.objects.get(station_results__station=station, station_results__frame_number=4)
    assert ng_image.original_name == "line-3-line-3-f000004.png"
    assert ng_image.source_group == "station line-3" and not ng_image.is_normal
    assert ImageHeatmap.objects.filter(image=ng_image, run__station=station).exists()
    assert Suggestion.objects.filter(image=ng_image, status="pending").exists()
    station.refresh_from_db()
    assert station.status == "stopped" and station.message == "the video ended"
    assert station.latest["key"] == "line-3.avi#13" and station.latest_frame.endswith(".jpg")

    # the page's live data: counts, yield, latency, the last NG frames linking to the workspace
    c = Client()
    c.force_login(trained["reviewer"])
    live = c.get(f"/api/stations/{station.pk}/live/").json()
    assert live["counts"]["total"] == 14 and live["counts"]["ng"] == 2
    assert live["latency_ms"]["p50"] > 0 and live["latency_ms"]["p95"] >= live["latency_ms"]["p50"]
    assert {x["image"] for x in live["last_ng"]} == {r.image_id for r in rows if r.verdict == "ng"}
    answer = c.get(f"/api/stations/{station.pk}/results.csv")
    csv = b"".join(answer.streaming_content).decode().splitlines()
    assert csv[0].startswith("at,key,source,frame,verdict,score")
    assert len(csv) == 15 and sum(",ng," in line for line in csv) == 2

    # run again: the video was used up; nothing is inspected or written twice
    assert StationProcess("line-3", until_idle=True).run() == 0
    assert StationResult.objects.filter(station=station).count() == 14


@pytest.mark.django_db(transaction=True)
def test_a_station_registers_each_frame_and_applies_the_regions(trained, tmp_path):
    """The project's regions hold at the line too: with the bottle's whole area excluded, the
    broken bottle is no longer NG (the station registers each frame onto the golden sample);
    a frame that cannot be registered fails with the reason instead of being judged unmasked."""
    from inspection.services.references import image_mark_reference
    from inspection.services.regions import region_create
    from workers.tasks.stations import StationProcess

    project, admin = trained["project"], trained["admin"]
    golden = Image.objects.filter(project=project, is_normal=True).order_by("id").first()
    image_mark_reference(user=admin, image=golden, is_reference=True)
    region_create(
        user=admin,
        project=project,
        name="bottle",
        reference=golden,
        polygon=[[16, 16], [240, 16], [240, 240], [16, 240]],
        mode="exclude",
    )
    project.inspection = {"outside_regions": "ignore"}
    project.save(update_fields=["inspection"])
    folder = tmp_path / "press"
    folder.mkdir()
    broken = sorted((trained["root"] / "test" / "broken_large").glob("*.png"))[0]
    cv2.imwrite(str(folder / "a-broken.png"), bottle(broken))
    noise = np.random.default_rng(0).integers(0, 255, (SIDE, SIDE, 3), np.uint8)
    cv2.imwrite(str(folder / "b-noise.png"), noise)
    station = station_create(
        user=admin, project=project, name="press-2", source=str(folder), ok_sample_rate=0.0
    )
    assert StationProcess("press-2", until_idle=True).run() == 0

    rows = {r.source_name: r for r in StationResult.objects.filter(station=station)}
    assert rows["a-broken.png"].verdict == "ok" and rows["a-broken.png"].regions == []
    assert rows["b-noise.png"].verdict == "failed"
    assert "could not be registered onto n0.png" in rows["b-noise.png"].error


def ng_result(key: str, grey: int, regions: list):
    """A sampled NG frame as the loop hands it to the writer, with a prediction of the engine
    (made here: these tests are about what the writer stores, not about the model)."""
    from workers.anomaly import Prediction
    from workers.station import loop, sources

    prediction = Prediction(
        image_path=key,
        image_size=(128, 128),
        image_score=0.9,
        is_anomalous=True,
        heatmap=np.zeros((32, 32), np.uint8),
        regions=regions,
        model_id="m",
        model_kind="padim",
        params={},
        timings={},
    )
    return loop.FrameResult(
        key=key,
        name=key,
        number=None,
        captured_at=time.time(),
        verdict=loop.NG,
        score=0.9,
        regions=[{"box": r.box, "score": r.peak_score} for r in regions],
        latency_ms=20.0,
        sample=True,
        frame=sources.Frame(key=key, name=key, image=np.full((128, 128, 3), grey, np.uint8)),
        inference=loop.Inference(0.9, [], prediction),
    )


@pytest.fixture
def writer_setup(team, tmp_path):
    from inspection.models import ModelVersion
    from inspection.services.stations import station_run_for

    project, admin = team["project"], team["admin"]
    version = ModelVersion.objects.create(
        project=project, number=1, architecture="padim", status="ready", is_active=True
    )
    station = station_create(user=admin, project=project, name="press-1", source=str(tmp_path))
    run = station_run_for(station=station, model_version=version, params={})
    return station, version, run


@pytest.mark.django_db
def test_ng_rows_carry_the_category_the_active_detector_gives_their_regions(team, writer_setup):
    """The station's writer classifies the regions of the frames it stores with the active
    detector (here a stand-in for one: its boxes are given): the row says what went wrong."""
    from annotations.services.categories import category_create
    from workers.anomaly.regions import Region
    from workers.detection import Detection
    from workers.tasks.stations import ResultSink

    station, version, run = writer_setup
    category_create(user=team["admin"], project=team["project"], name="dent")
    regions = [
        Region(box=[10, 10, 20, 20], polygon=[], area=400, peak_score=0.9, mean_score=0.7),
        Region(box=[100, 100, 8, 8], polygon=[], area=64, peak_score=0.8, mean_score=0.6),
    ]
    dent = Detection(0, 0, 40, 40, 0.95, 2, "dent")  # covers the first region, not the second
    ResultSink(station, version, run, lambda path: [dent]).flush(
        [ng_result("part.png", 90, regions)]
    )
    row = StationResult.objects.get(station=station)
    assert [r.get("category") for r in row.regions] == ["dent", None]
    assert row.image.suggestions.get(category__name="dent").category_score == 0.95


@pytest.mark.django_db
def test_a_station_stores_no_more_frames_than_its_quota(writer_setup):
    from workers.tasks.stations import ResultSink

    station, version, run = writer_setup
    station.sample_quota = 2
    station.save()
    ResultSink(station, version, run, None).flush(
        [ng_result("a.png", 10, []), ng_result("b.png", 20, [])]
    )
    # a new writer (the station started again) knows what is left of the quota
    ResultSink(station, version, run, None).flush([ng_result("c.png", 30, [])])
    rows = {r.key: r.image_id for r in StationResult.objects.filter(station=station)}
    assert rows["a.png"] and rows["b.png"] and rows["c.png"] is None  # recorded, not stored
    station.refresh_from_db()
    assert station.count_sampled == 2 and station.count_ng == 3
    assert Image.objects.filter(source_group="station press-1").count() == 2


@pytest.mark.django_db
def test_a_new_active_detector_sets_the_station_up_again(team, writer_setup):
    """The loop is set up with the active models: a detector trained or activated meanwhile
    must classify the next stored frames, as a new anomaly model or new settings do."""
    from inspection.models import ModelVersion
    from workers.tasks.stations import StationProcess

    station, version, _ = writer_setup
    process = StationProcess(station.name)
    process.settings = process._settings_of(station, version)
    assert not process._changed(station)
    ModelVersion.objects.create(
        project=team["project"],
        number=1,
        kind="detector",
        architecture="ppyoloe-sod-s",
        status="ready",
        is_active=True,
    )
    assert process._changed(station)
    station.ok_sample_rate = 0.5  # and the station's own settings, as before
    process.settings = process._settings_of(station, version)
    station.ok_sample_rate = 0.01
    assert process._changed(station)
