"""A category's key must reach the category in the workspace: the letters the workspace uses
itself are refused, with what they do, and that list is the workspace's own (keys.js)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError

from annotations.services.categories import WORKSPACE_KEYS, category_create, category_update

KEYS_JS = Path(__file__).resolve().parents[2] / "static" / "loupe" / "workspace" / "keys.js"


def test_the_refused_letters_are_the_workspaces_own_keys():
    source = KEYS_JS.read_text()
    actions = source[
        source.index("const actions = {") : source.index("};", source.index("const actions = {"))
    ]
    letters = set(re.findall(r"^\s*([a-z]):", actions, flags=re.M))
    assert letters == set(WORKSPACE_KEYS), "keys.js and WORKSPACE_KEYS disagree"


@pytest.mark.django_db
def test_a_workspace_key_is_refused_for_a_category_with_what_it_does(team):
    admin, project = team["admin"], team["project"]
    with pytest.raises(ValidationError) as refused:
        category_create(user=admin, project=project, name="flaw", shortcut="f")
    assert "flicker to the reference" in str(refused.value)
    crack = category_create(user=admin, project=project, name="crack", shortcut="c")
    with pytest.raises(ValidationError) as refused:
        category_update(user=admin, category=crack, shortcut=" H ")
    assert "heatmap" in str(refused.value)
    crack.refresh_from_db()
    assert crack.shortcut == "c"  # nothing changed
    assert category_update(user=admin, category=crack, shortcut="7").shortcut == "7"


@pytest.mark.django_db
def test_a_category_keyed_i_before_the_regions_layer_gets_a_free_digit(team):
    """Migration 0010: the workspace's I now toggles the regions; a category that had it is
    re-keyed to the first free digit (it could not be chosen by I any more)."""
    from importlib import import_module

    from django.apps import apps

    from annotations.models import DefectCategory

    migration = import_module("annotations.migrations.0010_free_the_regions_key")
    admin, project = team["admin"], team["project"]
    for k in "12":
        category_create(user=admin, project=project, name=f"c{k}", shortcut=k)
    keyed = category_create(user=admin, project=project, name="inclusion", shortcut="x")
    DefectCategory.objects.filter(pk=keyed.pk).update(shortcut="i")  # as stored before 0010
    migration.free_i(apps, None)
    keyed.refresh_from_db()
    assert keyed.shortcut == "3"
