from django.db import migrations, models


def from_runs(apps, schema_editor):
    """Images a detection run looked at (a result that is not an error), dated by the run."""
    Image = apps.get_model("inspection", "Image")
    InspectionRun = apps.get_model("inspection", "InspectionRun")
    runs = InspectionRun.objects.filter(model_version__kind="detector").order_by("created_at")
    for run in runs.iterator():
        ids = [
            int(key)
            for key, result in (run.results or {}).items()
            if key.isdigit() and isinstance(result, dict) and "error" not in result
        ]
        for start in range(0, len(ids), 500):
            Image.objects.filter(pk__in=ids[start : start + 500]).update(
                detector_checked_at=run.created_at
            )


class Migration(migrations.Migration):
    dependencies = [
        ("inspection", "0013_inspectionregion"),
    ]

    operations = [
        migrations.AddField(
            model_name="image",
            name="detector_checked_at",
            field=models.DateTimeField(
                blank=True,
                help_text="When a detector last looked at the image, whatever it found (a "
                "detection run, or the active detector classifying an inspection's regions); "
                "written by annotations.services.image_state only.",
                null=True,
            ),
        ),
        migrations.RunPython(from_runs, migrations.RunPython.noop),
    ]
