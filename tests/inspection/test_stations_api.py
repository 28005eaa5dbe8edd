"""The stations API: who may do what, and bad settings refused with a clear error."""

import pytest

from inspection.models import Station, StationResult
from inspection.services.stations import station_results_record

pytestmark = pytest.mark.django_db


def test_only_project_admins_add_and_change_stations(team, client_for):
    project = team["project"]
    body = {"project": project.pk, "name": "line-1", "source": "0"}
    r = client_for(team["reviewer"]).post("/api/stations/", body, format="json")
    assert r.status_code == 403
    r = client_for(team["outsider"]).post("/api/stations/", body, format="json")
    assert r.status_code == 404  # the project is not theirs to know of
    r = client_for(team["admin"]).post("/api/stations/", body, format="json")
    assert r.status_code == 201, r.content
    sid = r.json()["id"]
    assert r.json()["status"] == "stopped" and r.json()["ok_sample_rate"] == 0.01
    assert client_for(team["outsider"]).get(f"/api/stations/{sid}/").status_code == 404
    assert client_for(team["outsider"]).get(f"/api/stations/{sid}/live/").status_code == 404
    assert client_for(team["outsider"]).get("/api/stations/").json()["count"] == 0
    annotator = client_for(team["annotator"])
    assert annotator.get(f"/api/stations/{sid}/live/").status_code == 200
    assert annotator.patch(f"/api/stations/{sid}/", {"enabled": False}).status_code == 403
    r = client_for(team["admin"]).patch(
        f"/api/stations/{sid}/", {"enabled": False, "name": "renamed"}, format="json"
    )
    assert r.status_code == 200 and r.json()["enabled"] is False
    assert r.json()["name"] == "line-1"  # the name the process is started with stays
    assert client_for(team["reviewer"]).delete(f"/api/stations/{sid}/").status_code == 403
    assert client_for(team["admin"]).delete(f"/api/stations/{sid}/").status_code == 204
    assert client_for(team["admin"]).get("/api/stations/999999/").status_code == 404


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("name", "line 1", "letters, numbers"),
        ("source", "   ", "may not be blank"),
        ("unsure_margin", 0.7, "less than or equal to 0.49"),
        ("ok_sample_rate", 1.5, "less than or equal to 1"),
        ("sample_quota", -1, "greater than or equal to 0"),
        ("project", 999999, "Invalid pk"),
    ],
)
def test_bad_settings_are_refused_with_the_reason(team, client_for, field, value, says):
    body = {"project": team["project"].pk, "name": "line-1", "source": "0", field: value}
    r = client_for(team["admin"]).post("/api/stations/", body, format="json")
    assert r.status_code == 400
    assert says in str(r.json())
    assert not Station.objects.exists()


def test_a_name_is_one_station(team, client_for):
    admin = client_for(team["admin"])
    body = {"project": team["project"].pk, "name": "line-1", "source": "0"}
    assert admin.post("/api/stations/", body, format="json").status_code == 201
    r = admin.post("/api/stations/", body, format="json")
    assert r.status_code == 400 and "already exists" in str(r.json())


def test_results_by_time_range_and_verdict_and_rows_written_once(team, client_for):
    from datetime import UTC, datetime

    station = Station.objects.create(project=team["project"], name="line-1", source="0")
    rows = [
        {
            "key": f"v.avi#{i}",
            "at": datetime(2026, 12, 3, 10, i, tzinfo=UTC),
            "source_name": "v.avi",
            "frame_number": i,
            "verdict": "ng" if i == 2 else "ok",
            "score": 0.9 if i == 2 else 0.1,
            "latency_ms": 12.5,
        }
        for i in range(5)
    ]
    assert station_results_record(station=station, rows=rows) == 5
    assert station_results_record(station=station, rows=rows[3:]) == 0  # a redone batch
    assert StationResult.objects.filter(station=station).count() == 5
    c = client_for(team["annotator"])
    r = c.get(f"/api/stations/{station.pk}/results/", {"verdict": "ng"})
    assert [x["key"] for x in r.json()["results"]] == ["v.avi#2"]
    r = c.get(
        f"/api/stations/{station.pk}/results/",
        {"start": "2026-12-03T10:01:00Z", "end": "2026-12-03T10:03:00Z"},
    )
    assert sorted(x["frame_number"] for x in r.json()["results"]) == [1, 2]
    r = c.get(f"/api/stations/{station.pk}/results/", {"start": "yesterday"})
    assert r.status_code == 400 and "start" in r.json()["detail"]
    r = c.get(f"/api/stations/{station.pk}/results.csv", {"start": "2026-12-03T10:03:00Z"})
    lines = b"".join(r.streaming_content).decode().splitlines()
    assert len(lines) == 3 and lines[1].split(",")[1] == "v.avi#3"
    assert c.get(f"/api/stations/{station.pk}/results.csv", {"end": "x"}).status_code == 400
    assert c.get(f"/api/stations/{station.pk}/latest.jpg").status_code == 404  # no frame yet
    # the live figures: totals kept with the rows (a redone batch is not counted twice)
    live = c.get(f"/api/stations/{station.pk}/live/", {"minutes": 0}).json()
    assert live["counts"] == {
        "ok": 4,
        "ng": 1,
        "unsure": 0,
        "failed": 0,
        "sampled": 0,
        "total": 5,
    }
    assert live["yield"] == 0.8 and live["per_minute"] == []
    assert live["latency_ms"] == {"p50": 12.5, "p95": 12.5}
    assert live["frames_per_s"] == round(4 / 240, 2)  # 5 frames a minute apart
    for bad in ("abc", "-1", "1441"):
        r = c.get(f"/api/stations/{station.pk}/live/", {"minutes": bad})
        assert r.status_code == 400 and "minutes" in r.json()["detail"]


def test_the_stations_pages_show_what_each_role_may_do(team):
    from django.test import Client

    project = team["project"]
    station = Station.objects.create(project=project, name="line-1", source="/data/line1.avi")

    def page(user, url):
        c = Client()
        c.force_login(user)
        return c.get(url)

    assert page(team["outsider"], f"/projects/{project.pk}/stations/").status_code == 404
    assert page(team["outsider"], f"/stations/{station.pk}/").status_code == 404
    html = page(team["annotator"], f"/projects/{project.pk}/stations/").content.decode()
    assert "line-1" in html and "Not running" in html and "station-new" not in html
    assert "no active anomaly model" in html  # a station would only wait
    html = page(team["admin"], f"/projects/{project.pk}/stations/").content.decode()
    assert 'id="station-new"' in html
    html = page(team["annotator"], f"/stations/{station.pk}/").content.decode()
    assert "/data/line1.avi" in html and 'id="st-toggle"' not in html
    assert 'id="st-toggle"' in page(team["admin"], f"/stations/{station.pk}/").content.decode()
