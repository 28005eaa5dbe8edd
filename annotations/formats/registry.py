"""The one table of dataset formats (modelled on CVAT's ``dataset_manager/formats/registry.py``).

Each format module registers what it can do where it is defined::

    @exporter("coco", label="COCO JSON per split")
    def export_coco(dataset: Dataset, out_dir: Path) -> dict: ...

    @importer("coco", label="COCO JSON", label_source="import")
    def import_coco(root: Path) -> ImportReport: ...

and this module imports every module of ``FORMAT_MODULES`` at its end, so ``EXPORTERS`` and
``IMPORTERS`` are complete whenever the registry is imported (whatever was imported first).
Both tables list formats in ``FORMAT_MODULES`` order, then in the order a module registers them.

The app calls::

    get_exporter(name)                    -> Exporter (OptionError, field "format", if unknown)
    exporter.clean_options(options)       -> the options with defaults filled (OptionError)
    exporter.write(dataset, out_dir, **options) -> extra result facts (a dict, maybe empty)
    get_importer(name).read(root)         -> ImportReport of an already-extracted folder
    get_importer(name).label_source       -> "import" or "ground_truth" (the labels' source)

Pure: no Django, no Celery, no app imports (unpacking zips safely is ``inspection.ziputil``'s job,
before a folder reaches an importer).
"""

from __future__ import annotations

import importlib
import itertools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ._files import find_root
from .model import Dataset, FormatError, ImportReport

__all__ = [
    "EXPORTERS",
    "FORMAT_MODULES",
    "IMPORTERS",
    "Exporter",
    "Importer",
    "Option",
    "OptionError",
    "export_choices",
    "exporter",
    "find_root",
    "get_exporter",
    "get_importer",
    "import_choices",
    "importer",
]

# The format modules of this package, in the order their formats are listed.
FORMAT_MODULES = ("coco", "yolo", "sliced", "mvtec")

LabelSource = Literal["import", "ground_truth"]
WriteFn = Callable[..., dict[str, Any] | None]
ReadFn = Callable[[Path], ImportReport]


class OptionError(FormatError):
    """A format name or option that cannot be used. ``field`` says which: ``"format"``,
    ``"options"`` (unknown option names) or the option's own name; the message is plain words
    an API can show as it is."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Option:
    """One export option: its type (``int`` or ``float``), default and allowed range.

    ``words`` finishes the sentences of the errors: "<name> must be <words>." for a value out of
    range, "<name> must be a number <words>." for one that is not a number.
    """

    name: str
    type: type[int] | type[float]
    default: int | float
    check: Callable[[Any], bool]
    words: str

    def clean(self, raw: Any) -> int | float:
        """``raw`` converted and checked (``OptionError`` with this option's name as field)."""
        try:
            if isinstance(raw, bool):  # JSON true is not a number, whatever Python thinks
                raise TypeError
            value = self.type(raw)
        except (TypeError, ValueError, OverflowError):
            raise OptionError(self.name, f"{self.name} must be a number {self.words}.") from None
        if not self.check(value):
            raise OptionError(self.name, f"{self.name} must be {self.words}.")
        return value


@dataclass(frozen=True)
class Exporter:
    """A registered export format: ``name`` (API value), ``label`` (what people read), options."""

    name: str
    label: str
    options: tuple[Option, ...]
    func: WriteFn
    module: str

    def defaults(self) -> dict[str, Any]:
        """Every option with its default value."""
        return {o.name: o.default for o in self.options}

    def clean_options(self, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Every declared option, given or default, converted and checked.

        Raises ``OptionError``: field ``"options"`` for names this format does not have (an
        exporter without options accepts none), else the option's name.
        """
        given = dict(options or {})
        unknown = set(given) - {o.name for o in self.options}
        if unknown:
            raise OptionError("options", f"Unknown option(s) {sorted(unknown)}.")
        return {o.name: o.clean(given.get(o.name, o.default)) for o in self.options}

    def write(self, dataset: Dataset, out_dir: str | Path, **options: Any) -> dict[str, Any]:
        """Write ``dataset`` under ``out_dir`` (created if needed); return extra result facts
        (e.g. ``{"slices": {...}}`` or ``{"folders": {...}}``; ``{}`` when there are none).

        The options are cleaned again here, so a stored job payload cannot smuggle bad values in.
        """
        clean = self.clean_options(options)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        return dict(self.func(dataset, out, **clean) or {})


@dataclass(frozen=True)
class Importer:
    """A registered import format. ``label_source`` is the source the app gives the labels it
    reads: ``"import"`` (someone's labels, stored approved) or ``"ground_truth"`` (MVTec masks)."""

    name: str
    label: str
    label_source: LabelSource
    func: ReadFn
    module: str

    def read(self, root: str | Path) -> ImportReport:
        """Read an already-extracted folder. Bad items are in the report; ``FormatError`` only
        when the folder cannot be read at all. When everything sits in one top-level folder the
        importer reads that folder (``find_root``)."""
        return self.func(Path(root))


EXPORTERS: dict[str, Exporter] = {}
IMPORTERS: dict[str, Importer] = {}
_sequence = itertools.count()
_rank: dict[str, tuple[int, int]] = {}


def _short_module(module: str) -> str:
    prefix = f"{__package__}."
    return module[len(prefix) :] if module.startswith(prefix) else module


def _register(table: dict[str, Any], entry: Exporter | Importer, kind: str) -> None:
    if entry.name in table:
        raise ValueError(f"{kind} format {entry.name!r} is already registered")
    module = entry.module
    position = FORMAT_MODULES.index(module) if module in FORMAT_MODULES else len(FORMAT_MODULES)
    _rank[f"{kind}:{entry.name}"] = (position, next(_sequence))
    # Keep the table in listing order however the modules were imported (importing one format
    # module first imports the registry, which imports the others before that one registers).
    items = sorted([*table.values(), entry], key=lambda e: _rank[f"{kind}:{e.name}"])
    table.clear()
    table.update((e.name, e) for e in items)


def exporter(
    name: str, *, label: str, options: Iterable[Option] = ()
) -> Callable[[WriteFn], WriteFn]:
    """Register ``write(dataset, out_dir, **options) -> dict | None`` as export format ``name``.

    ``options`` declares every option the function takes (with defaults and checks); the
    function gets them cleaned, as keyword arguments.
    """
    spec = tuple(options)
    for option in spec:
        if not option.check(option.default):
            raise ValueError(f"{name}: the default of {option.name} fails its own check")

    def register(func: WriteFn) -> WriteFn:
        entry = Exporter(name, label, spec, func, _short_module(func.__module__))
        _register(EXPORTERS, entry, "export")
        return func

    return register


def importer(name: str, *, label: str, label_source: LabelSource) -> Callable[[ReadFn], ReadFn]:
    """Register ``read(root: Path) -> ImportReport`` as import format ``name``."""
    if label_source not in ("import", "ground_truth"):
        raise ValueError(f"{name}: label_source must be 'import' or 'ground_truth'")

    def register(func: ReadFn) -> ReadFn:
        entry = Importer(name, label, label_source, func, _short_module(func.__module__))
        _register(IMPORTERS, entry, "import")
        return func

    return register


def get_exporter(name: str) -> Exporter:
    """The export format ``name``; ``OptionError`` (field ``"format"``) naming the known ones."""
    try:
        return EXPORTERS[name]
    except (KeyError, TypeError):
        raise OptionError(
            "format", f"Unknown export format '{name}'; use one of {', '.join(EXPORTERS)}."
        ) from None


def get_importer(name: str) -> Importer:
    """The import format ``name``; ``OptionError`` (field ``"format"``) naming the known ones."""
    try:
        return IMPORTERS[name]
    except (KeyError, TypeError):
        raise OptionError(
            "format", f"Unknown import format '{name}'; use one of {', '.join(IMPORTERS)}."
        ) from None


def export_choices() -> list[tuple[str, str]]:
    """``(name, label)`` of every export format, in listing order (for forms and serializers)."""
    return [(e.name, e.label) for e in EXPORTERS.values()]


def import_choices() -> list[tuple[str, str]]:
    """``(name, label)`` of every import format, in listing order."""
    return [(i.name, i.label) for i in IMPORTERS.values()]


# Last, so the decorators above exist when a format module imports them (the import is circular
# on purpose, as in CVAT: a format module imports the registry, the registry imports them all).
# So a format module that uses another one imports the module (``from . import coco``) and looks
# names up when called: when that other module is imported first, it is still half-initialised
# while the registry imports the rest.
for _module in FORMAT_MODULES:
    importlib.import_module(f"{__package__}.{_module}")
