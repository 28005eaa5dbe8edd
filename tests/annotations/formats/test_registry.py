"""The format registry: one table of exporters and importers, option checks, round trips through
registry lookups, and a registry that stays pure (no Django) whatever is imported first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from annotations.formats import Dataset, FormatError, ImportReport, Shape
from annotations.formats.registry import (
    EXPORTERS,
    FORMAT_MODULES,
    IMPORTERS,
    Option,
    OptionError,
    export_choices,
    exporter,
    find_root,
    get_exporter,
    get_importer,
    import_choices,
    importer,
)
from tests.conftest import run_python

from .conftest import geometry_by_name

ROOT = Path(__file__).resolve().parents[3]

EXPECTED_EXPORTS = [
    ("coco", "COCO JSON per split"),
    ("yolo_detect", "YOLO detection (Ultralytics)"),
    ("yolo_segment", "YOLO segmentation (Ultralytics)"),
    ("sliced_coco", "Sliced COCO (SAHI tiles)"),
    ("mvtec", "MVTec AD layout"),
]
EXPECTED_IMPORTS = {"coco": "import", "yolo": "import", "mvtec": "ground_truth"}


# --- the tables ----------------------------------------------------------------------------------


def test_every_format_is_registered_in_listing_order():
    assert export_choices() == EXPECTED_EXPORTS
    assert [(e.name, e.label) for e in EXPORTERS.values()] == EXPECTED_EXPORTS
    assert list(IMPORTERS) == list(EXPECTED_IMPORTS)
    assert {i.name: i.label_source for i in IMPORTERS.values()} == EXPECTED_IMPORTS
    assert [name for name, _ in import_choices()] == ["coco", "yolo", "mvtec"]
    for entry in [*EXPORTERS.values(), *IMPORTERS.values()]:
        assert entry.module in FORMAT_MODULES  # registered where the format is defined
        assert entry.label


@pytest.mark.parametrize("first", ["registry", *FORMAT_MODULES, "model"])
def test_tables_are_complete_and_pure_whatever_is_imported_first(first):
    code = (
        "import sys, json\n"
        f"import annotations.formats.{first}\n"
        "from annotations.formats import registry as r\n"
        "import annotations.formats.mvtec\n"
        "print(json.dumps([list(r.EXPORTERS), list(r.IMPORTERS),\n"
        "    sorted(m for m in sys.modules if m.split('.')[0] in ('django', 'celery',\n"
        "    'inspection', 'workers', 'torch'))]))\n"
    )
    done = run_python(code)
    exports, imports, impure = json.loads(done.stdout.strip().splitlines()[-1])
    assert exports == [name for name, _ in EXPECTED_EXPORTS]
    assert imports == list(EXPECTED_IMPORTS)
    assert impure == []


def test_unknown_names_say_which_are_known():
    with pytest.raises(OptionError) as exc:
        get_exporter("voc")
    assert exc.value.field == "format"
    assert str(exc.value) == (
        "Unknown export format 'voc'; use one of coco, yolo_detect, yolo_segment, sliced_coco, "
        "mvtec."
    )
    with pytest.raises(FormatError, match=r"Unknown import format 'yolo_detect'; use one of "):
        get_importer("yolo_detect")
    with pytest.raises(OptionError, match="coco, yolo, mvtec"):
        get_importer(None)  # type: ignore[arg-type]


def test_registering_twice_or_a_bad_spec_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        exporter("coco", label="again")(lambda dataset, out_dir: {})
    with pytest.raises(ValueError, match="already registered"):
        importer("mvtec", label="again", label_source="import")(lambda root: ImportReport())
    with pytest.raises(ValueError, match="fails its own check"):
        exporter("x", label="x", options=[Option("n", int, 0, lambda v: v > 0, "positive")])
    with pytest.raises(ValueError, match="label_source"):
        importer("x", label="x", label_source="manual")  # type: ignore[arg-type]
    assert "x" not in EXPORTERS and "x" not in IMPORTERS
    assert export_choices() == EXPECTED_EXPORTS


# --- options -------------------------------------------------------------------------------------


def test_sliced_options_defaults_and_conversion():
    sliced = get_exporter("sliced_coco")
    assert sliced.clean_options({}) == {
        "slice_size": 640,
        "overlap": 0.25,
        "min_area_ratio": 0.1,
        "negative_ratio": 0.1,
    }
    assert sliced.clean_options(None) == sliced.defaults()
    clean = sliced.clean_options({"slice_size": "320", "overlap": 0, "negative_ratio": 2})
    assert clean["slice_size"] == 320 and isinstance(clean["slice_size"], int)
    assert clean["overlap"] == 0.0 and isinstance(clean["overlap"], float)
    assert clean["negative_ratio"] == 2.0


@pytest.mark.parametrize(
    ("options", "field", "message"),
    [
        ({"overlap": 1.5}, "overlap", "overlap must be at least 0 and below 1."),
        ({"overlap": -0.1}, "overlap", "overlap must be at least 0 and below 1."),
        ({"slice_size": 16}, "slice_size", "slice_size must be between 32 and 8192."),
        ({"slice_size": 9000}, "slice_size", "slice_size must be between 32 and 8192."),
        (
            {"slice_size": "big"},
            "slice_size",
            "slice_size must be a number between 32 and 8192.",
        ),
        ({"slice_size": None}, "slice_size", "slice_size must be a number between 32 and 8192."),
        ({"min_area_ratio": 1.01}, "min_area_ratio", "min_area_ratio must be between 0 and 1."),
        ({"min_area_ratio": True}, "min_area_ratio", "min_area_ratio must be a number between"),
        ({"negative_ratio": -1}, "negative_ratio", "negative_ratio must be at least 0."),
        ({"negative_ratio": [1]}, "negative_ratio", "negative_ratio must be a number at least 0."),
        ({"overlap": float("nan")}, "overlap", "overlap must be at least 0 and below 1."),
        ({"slice_size": float("inf")}, "slice_size", "slice_size must be a number between"),
        ({"slices": 3, "tile": 1}, "options", "Unknown option(s) ['slices', 'tile']."),
    ],
)
def test_sliced_options_are_checked_with_plain_messages(options, field, message):
    with pytest.raises(OptionError) as exc:
        get_exporter("sliced_coco").clean_options(options)
    assert isinstance(exc.value, FormatError)
    assert exc.value.field == field
    assert str(exc.value).startswith(message)


@pytest.mark.parametrize("name", ["coco", "yolo_detect", "yolo_segment", "mvtec"])
def test_formats_without_options_take_none(name):
    assert get_exporter(name).clean_options({}) == {}
    with pytest.raises(OptionError, match=r"Unknown option\(s\) \['overlap'\]\.") as exc:
        get_exporter(name).clean_options({"overlap": 0.2})
    assert exc.value.field == "options"


def test_write_checks_options_too(sample: Dataset, tmp_path):
    with pytest.raises(OptionError, match="overlap"):
        get_exporter("sliced_coco").write(sample, tmp_path / "out", overlap=3)
    assert not (tmp_path / "out" / "annotations").exists()


# --- round trips through the registry ------------------------------------------------------------


def test_coco_round_trip_by_name(sample: Dataset, tmp_path):
    extra = get_exporter("coco").write(sample, tmp_path / "out")
    assert extra == {}
    # As an upload unpacks: everything in one top folder, next to ziputil's hidden work folder.
    (tmp_path / "up").mkdir()
    (tmp_path / "up" / ".flat").mkdir()
    (tmp_path / "out").rename(tmp_path / "up" / "export")
    report = get_importer("coco").read(tmp_path / "up")
    assert report.skipped == [] and report.adjusted == []
    assert geometry_by_name(report.dataset) == geometry_by_name(sample)
    assert {im.key for im in report.dataset.images} >= {"images/train/a.png"}


@pytest.mark.parametrize(("fmt", "as_boxes"), [("yolo_detect", True), ("yolo_segment", False)])
def test_yolo_round_trip_by_name(sample: Dataset, tmp_path, fmt, as_boxes):
    assert get_exporter(fmt).write(sample, tmp_path / "out") == {}
    report = get_importer("yolo").read(tmp_path / "out")
    assert report.skipped == [] and report.adjusted == []
    if as_boxes:
        shapes = [Shape.from_box(s.image_key, s.category, s.box) for s in sample.shapes]
    else:
        shapes = [Shape.from_polygon(s.image_key, s.category, s.polygon()) for s in sample.shapes]
    expected = Dataset(sample.images, sample.categories, shapes)
    assert geometry_by_name(report.dataset) == geometry_by_name(expected)
    assert {im.file_name: im.is_negative for im in report.dataset.images} == {
        im.file_name: im.is_negative for im in sample.images
    }


def test_sliced_export_by_name_reports_its_counts(sample: Dataset, tmp_path):
    extra = get_exporter("sliced_coco").write(
        sample, tmp_path / "out", slice_size=32, overlap=0.25, negative_ratio=0.5
    )
    slices = extra["slices"]
    assert set(slices) == {"positive", "negative_kept", "negative_candidates", "partial_only"}
    assert slices["positive"] > 0 and slices["negative_kept"] <= slices["negative_candidates"]
    data = json.loads((tmp_path / "out/annotations/instances_train.json").read_text())
    assert all(im["width"] <= 32 and im["height"] <= 32 for im in data["images"])
    report = get_importer("coco").read(tmp_path / "out")
    assert report.skipped == []
    assert len(report.dataset.shapes) == sum(
        len(json.loads(p.read_text())["annotations"])
        for p in (tmp_path / "out/annotations").glob("*.json")
    )


def test_mvtec_round_trip_by_name(sample: Dataset, tmp_path):
    extra = get_exporter("mvtec").write(sample, tmp_path / "out")
    assert extra == {
        "folders": {
            "test/combined": 1,
            "test/dent": 2,
            "test/scratch": 1,
            "train/good": 1,
            "test/good": 1,
        }
    }
    imp = get_importer("mvtec")
    assert imp.label_source == "ground_truth"
    report = imp.read(tmp_path / "out")
    assert report.skipped == [] and report.adjusted == []
    by_name = {im.file_name: im for im in report.dataset.images}
    assert by_name["good1.png"].is_negative and by_name["good1.png"].split == "train"
    assert by_name["good1.png"].group == "train/good"
    # test/good is for evaluation: neither a negative nor labelled
    assert not by_name["good2.png"].is_negative and by_name["good2.png"].group == "test/good"
    assert by_name["a.png"].group == "test/combined" and by_name["a.png"].split == "test"
    categories = {s.category for s in report.dataset.shapes}
    assert categories == {"combined", "dent", "scratch"}
    # The 3x4 dent box on d.png comes back exactly (its outline runs on the pixels' edges).
    (dent,) = [s for s in report.dataset.shapes if s.image_key == "test/dent/d.png"]
    assert dent.box == (30.0, 30.0, 3.0, 4.0)


# --- find_root -----------------------------------------------------------------------------------


def test_find_root_steps_into_one_top_folder(tmp_path):
    (tmp_path / "a" / "bottle" / "train").mkdir(parents=True)
    (tmp_path / "a" / "__MACOSX").mkdir()
    (tmp_path / "a" / ".DS_Store").write_bytes(b"")
    assert find_root(tmp_path / "a") == tmp_path / "a" / "bottle"
    # one level only
    assert find_root(tmp_path / "a" / "bottle") == tmp_path / "a" / "bottle" / "train"
    # a folder that is part of the layout is not stepped into
    assert find_root(tmp_path / "a" / "bottle", layout_names=("TRAIN",)) == tmp_path / "a/bottle"
    (tmp_path / "a" / "readme.txt").write_text("x")
    assert find_root(tmp_path / "a") == tmp_path / "a"
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "only.json").write_text("{}")
    assert find_root(tmp_path / "b") == tmp_path / "b"


def test_the_docs_example_registers_a_format(tmp_path):
    text = (ROOT / "docs" / "datasets.md").read_text(encoding="utf-8")
    section = text.split("## Adding a format", 1)[1]
    example = section.split("```python\n", 1)[1].split("```", 1)[0]
    code = (
        "import json, sys, types\n"
        "from annotations.formats import Dataset, ImportReport\n"
        "from annotations.formats import registry as r\n"
        "module = types.ModuleType('annotations.formats.labelme')\n"
        "module.__package__ = 'annotations.formats'\n"
        "sys.modules[module.__name__] = module\n"
        f"exec(compile({example!r}, 'docs/datasets.md', 'exec'), module.__dict__)\n"
        "e, i = r.get_exporter('labelme'), r.get_importer('labelme')\n"
        "try:\n"
        "    e.clean_options({'indent': 9})\n"
        "except r.OptionError as exc:\n"
        "    error = [exc.field, str(exc)]\n"
        f"written = e.write(Dataset(), {str(tmp_path / 'out')!r}, indent=2)\n"
        f"report = i.read({str(tmp_path)!r})\n"
        "print(json.dumps([list(r.EXPORTERS)[-1], e.label, e.clean_options({}), error, written,\n"
        "    i.label_source, isinstance(report, ImportReport)]))\n"
    )
    done = run_python(code)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [
        "labelme",
        "LabelMe JSON",
        {"indent": 0},
        ["indent", "indent must be between 0 and 8."],
        {},
        "import",
        True,
    ]
