"""The workspace took the key I for its regions-of-interest layer: a category that had it (it
could no longer be chosen by that key) gets the first free digit, or no key."""

from django.db import migrations


def free_i(apps, schema_editor):
    DefectCategory = apps.get_model("annotations", "DefectCategory")
    for category in DefectCategory.objects.filter(shortcut="i"):
        taken = set(
            DefectCategory.objects.filter(project_id=category.project_id).values_list(
                "shortcut", flat=True
            )
        )
        category.shortcut = next((k for k in "123456789" if k not in taken), "")
        category.save(update_fields=["shortcut"])


class Migration(migrations.Migration):
    dependencies = [
        ("annotations", "0009_suggestion_category_margin"),
    ]

    operations = [migrations.RunPython(free_i, migrations.RunPython.noop)]
