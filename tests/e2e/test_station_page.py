"""An admin adds a station on the project's stations page; the station process inspects a
video of bottles at the line; the station page shows the counts, the latest frame with its
verdict and the NG frames live (no reload), and the NG frame opens in the workspace."""

import signal
from pathlib import Path

import pytest

from inspection.models import Job, Station, StationResult
from tests.conftest import PASSWORD
from tests.e2e.test_workspace import shot
from tests.integration.test_station_process import start_station
from tests.workers.tasks.test_stations import NG_FRAMES, line_video, trained  # noqa: F401
from workers.tasks.pyramid import build_pyramids
from workers.tasks.runner import run_job

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


@pytest.mark.django_db(transaction=True)
def test_the_station_page_shows_counts_and_ng_frames_live(page, trained, tmp_path):  # noqa: F811
    project, admin = trained["project"], trained["admin"]
    video = line_video(tmp_path / "line-5.avi", trained, length=14)

    page.goto("/login/")
    page.fill("input[name=username]", admin.username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.goto(f"/projects/{project.pk}/")
    page.click("text=Stations")
    form = page.locator("#station-new")
    form.locator("input[name=name]").fill("line 5")  # not a name a command line takes
    form.locator("input[name=source]").fill(str(video))
    form.locator("button[type=submit]").click()
    page.locator("#station-new-status").filter(has_text="name").wait_for()
    assert "letters, numbers" in page.locator("#station-new-status").inner_text()
    form.locator("input[name=name]").fill("line-5")
    form.locator("input[name=ok_sample_rate]").fill("0")
    form.locator("button[type=submit]").click()
    page.wait_for_url("**/stations/*/")
    station = Station.objects.get(name="line-5")
    assert station.source == str(video) and station.ok_sample_rate == 0
    page.locator("#st-status").filter(has_text="Not running").wait_for()

    proc = start_station("line-5", "--until-idle")
    try:
        assert proc.wait(timeout=180) == 0, Path(proc.log_path).read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
    # the page follows by itself: counts, yield, the latest frame and the NG frames
    page.locator("#st-total:text-is('14')").wait_for(timeout=30_000)
    counts = page.locator("#st-counts").inner_text()
    assert counts.split(" / ")[1] == "2", counts
    ok = int(counts.split(" / ")[0])
    assert page.locator("#st-yield").inner_text() == f"{ok / (ok + 2) * 100:.1f} %"
    # the latest frame comes with the heartbeat, which may be a poll behind the counts
    page.locator("#st-frame-caption", has_text="line-5.avi#13").wait_for(timeout=15_000)
    page.locator("#st-frame[src]").wait_for()
    for _ in range(50):  # the frame has loaded: a picture, not a broken image
        if page.locator("#st-frame").evaluate("e => e.complete && e.naturalWidth") > 0:
            break
        page.wait_for_timeout(100)
    assert page.locator("#st-frame").evaluate("e => e.naturalWidth") == 256
    assert page.locator("#st-verdict").inner_text().split(":")[0] in ("OK", "UNSURE")
    ng = page.locator("#st-ng li.ng-frame")
    assert ng.count() == 2
    assert {t.split(" · ")[0] for t in ng.all_inner_texts()} == {
        f"line-5.avi#{n}" for n in NG_FRAMES
    }
    # each NG frame shows its heatmap (stored by the station), coloured as in the workspace
    page.locator("#st-ng img.heat").nth(1).wait_for(timeout=15_000)
    heat = page.locator("#st-ng img.heat").first
    assert heat.get_attribute("src").startswith("data:image/png")
    assert heat.evaluate("e => e.naturalWidth") > 0
    page.locator("#st-plot rect.bar.ng").first.wait_for(timeout=15_000)  # redrawn every 10 s
    assert "started" in page.locator("#st-events").inner_text()

    # what a worker does meanwhile: thumbnails (and pyramids) of the frames sent to review; the
    # NG frames then show the frame with its heatmap over it
    jobs = Job.objects.filter(project=project, kind="pyramid", status=Job.Status.QUEUED)
    assert jobs.exists()
    for job in jobs:
        assert run_job(str(job.pk), build_pyramids.body) == "succeeded"
    page.reload()
    page.locator("#st-ng .ng-thumb img.thumb + img.heat").nth(1).wait_for(timeout=15_000)
    assert page.locator("#st-ng img.thumb").first.evaluate("e => e.naturalWidth") > 0
    shot(page, "station-page", full_page=True)  # docs/station-page.png (LOUPE_SCREENSHOTS=dir)

    # the results of a time range as CSV: everything up to now, nothing from tomorrow on
    with page.expect_download() as got:
        page.click("#st-csv")
    lines = Path(got.value.path()).read_text().splitlines()
    assert lines[0].startswith("at,key,source,frame,verdict") and len(lines) == 15
    page.fill("#st-export input[name=start]", "2099-01-01T00:00:00")
    href = page.locator("#st-csv").get_attribute("href")  # UTC: a day either side of local
    assert "start=2099-01-01T" in href or "start=2098-12-31T" in href
    with page.expect_download() as got:
        page.click("#st-csv")
    assert Path(got.value.path()).read_text().splitlines() == [lines[0]]

    # the NG frame opens in the workspace, with the station's suggestion on it
    image_id = StationResult.objects.get(station=station, frame_number=4).image_id
    page.click(f"#st-ng a[href='/images/{image_id}/']")
    page.wait_for_url(f"**/images/{image_id}/")

    # pause from the page: the station is told through its settings
    page.go_back()
    page.click("#st-toggle")
    page.locator("#st-toggle:text-is('Resume')").wait_for()
    station.refresh_from_db()
    assert station.enabled is False
