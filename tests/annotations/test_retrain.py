"""The optional detector retrain trigger: off by default; once N approved labels were added since
the active detector's dataset version, a maintenance run freezes a new version and queues the
same training, once, and never again after a failure without a person."""

import pytest

from annotations.models import DatasetVersion
from annotations.services.categories import category_create
from annotations.services.dataset_versions import dataset_version_freeze
from annotations.services.detectors import detector_train
from annotations.services.labels import LabelIn, labels_import
from inspection.models import Image, Job, Membership, ModelVersion
from inspection.services.images import IncomingFile, image_store_one
from inspection.services.inspections import model_version_make_active
from inspection.services.maintenance import maintenance_run
from tests.conftest import image_bytes

pytestmark = pytest.mark.django_db

HOOK = "retrain detectors"


@pytest.fixture
def trained(team, tmp_path):
    """Three labelled images frozen as dataset v1, and detector v1 trained on it (its job
    finished as a worker finishes it), active."""
    project, admin = team["project"], team["admin"]
    crack = category_create(user=admin, project=project, name="crack")

    def add_labelled(n: int):
        path = tmp_path / f"p{n}.png"
        path.write_bytes(image_bytes(size=(96, 64), seed=n))
        out = image_store_one(
            project=project, user=admin, incoming=IncomingFile(path.name, path), split="train"
        )
        image = Image.objects.get(pk=out.image_id)
        labels_import(
            user=admin,
            image=image,
            labels=[LabelIn(crack, {"type": "box", "x": 5, "y": 5, "w": 10, "h": 10})],
            source="import",
        )

    for n in range(3):
        add_labelled(n)
    v1 = dataset_version_freeze(user=admin, project=project, seed=7)
    detector = detector_train(
        user=admin,
        project=project,
        version=v1,
        params={"backbone": "s", "input_size": 320, "epochs": 7, "batch_size": 2},
    )
    Job.objects.filter(pk=detector.job_id).update(status=Job.Status.SUCCEEDED)
    ModelVersion.objects.filter(pk=detector.pk).update(status=ModelVersion.Status.READY)
    detector.refresh_from_db()
    model_version_make_active(model_version=detector)
    return {"add_labelled": add_labelled, "v1": v1, "detector": detector, **team}


def state(client, project):
    r = client.get(f"/api/projects/{project.pk}/detector-retrain/")
    assert r.status_code == 200, r.content
    return r.json()


def test_off_by_default_and_set_by_project_admins_only(trained, client_for):
    project = trained["project"]
    for n in range(3, 8):
        trained["add_labelled"](n)
    assert maintenance_run()[HOOK] == []
    assert DatasetVersion.objects.filter(project=project).count() == 1
    reader = client_for(trained["annotator"])
    assert state(reader, project) == {
        "retrain_after_labels": None,
        "detector": 1,
        "dataset": 1,
        "new_labels": 5,
    }
    url = f"/api/projects/{project.pk}/"
    assert reader.patch(url, {"retrain_after_labels": 3}, format="json").status_code == 403
    admin = client_for(trained["admin"])
    for bad in (0, -1, "many", 2_000_000, True):
        r = admin.patch(url, {"retrain_after_labels": bad}, format="json")
        assert r.status_code == 400, (bad, r.content)
    project.refresh_from_db()
    assert project.retrain_after_labels is None
    r = admin.patch(url, {"retrain_after_labels": 50}, format="json")
    assert r.status_code == 200 and r.json()["retrain_after_labels"] == 50
    assert (
        admin.patch(url, {"retrain_after_labels": None}, format="json").json()[
            "retrain_after_labels"
        ]
        is None
    )
    assert (
        client_for(trained["outsider"])
        .get(f"/api/projects/{project.pk}/detector-retrain/")
        .status_code
        == 404
    )


def test_n_new_approved_labels_freeze_and_train_the_detector_again_once(trained, client_for):
    project, admin = trained["project"], client_for(trained["admin"])
    admin.patch(f"/api/projects/{project.pk}/", {"retrain_after_labels": 2}, format="json")
    trained["add_labelled"](3)
    assert maintenance_run()[HOOK] == []  # 1 of 2
    assert state(admin, project)["new_labels"] == 1
    trained["add_labelled"](4)
    queued = maintenance_run()[HOOK]
    assert [v.number for v in queued] == [2]
    v2 = queued[0]
    frozen = DatasetVersion.objects.get(project=project, number=2)
    assert frozen.note.startswith("Frozen automatically: 2 approved labels since detector v1")
    assert frozen.options["seed"] == 7  # the freeze options of the version it follows
    assert v2.params["dataset_version"] == frozen.pk
    assert {k: v2.params[k] for k in ("backbone", "input_size", "epochs", "batch_size")} == {
        "backbone": "s",
        "input_size": 320,
        "epochs": 7,
        "batch_size": 2,
    }
    job = Job.objects.get(pk=v2.job_id)
    assert (job.kind, job.status, job.created_by) == ("detection_train", "queued", trained["admin"])
    # while it trains, and after it failed, nothing more is queued: a person decides
    trained["add_labelled"](5)
    trained["add_labelled"](6)
    assert maintenance_run()[HOOK] == []
    Job.objects.filter(pk=v2.job_id).update(status=Job.Status.FAILED)
    ModelVersion.objects.filter(pk=v2.pk).update(status=ModelVersion.Status.FAILED)
    assert maintenance_run()[HOOK] == []
    assert DatasetVersion.objects.filter(project=project).count() == 2


def test_an_admin_who_lost_the_role_does_not_retrain(trained, client_for):
    project = trained["project"]
    client_for(trained["admin"]).patch(
        f"/api/projects/{project.pk}/", {"retrain_after_labels": 1}, format="json"
    )
    trained["add_labelled"](3)
    Membership.objects.filter(project=project, user=trained["admin"]).update(role="annotator")
    assert maintenance_run()[HOOK] == []  # logged, not raised: the other hooks still run
    assert DatasetVersion.objects.filter(project=project).count() == 1
