"""Deterministic, seeded, category-stratified train/val/test assignment.

``assign_splits`` is a pure function over ``SplitItem(key, group, categories)``:

* **Groups stay together.** Items sharing a ``group`` (an image's tiles, frames of one part) get
  one split; an item without a group is its own group.
* **Deterministic and seeded.** Groups are visited in the order of a SHA-256 hash of
  ``(seed, group)``, so the result depends only on the items and the seed, never on input order.
* **Stratified.** Each group belongs to the stratum of its rarest category (the one fewest groups
  have; negatives form their own stratum). Within a stratum, each group in hash order goes to the
  split furthest below its target share (ties: the split named first), so a stratum of 10 groups
  splits exactly 8/1/1 for the default ratios and every category is spread in proportion, rare
  ones included (a category on only 3 images stays in train: too few to spare one).
* **Stable when images are added.** Pass the previous assignment as ``previous`` (key -> split):
  those items keep their split (a group takes the split most of its already-assigned members
  had), count towards the targets, and only new groups are placed. Without ``previous`` the
  function is still deterministic, but adding items can move others, as with any stratified
  split; the freeze service should always pass the last version's splits.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = ["SplitItem", "assign_splits", "DEFAULT_RATIOS", "NEGATIVE_STRATUM"]

DEFAULT_RATIOS: dict[str, float] = {"train": 0.8, "val": 0.1, "test": 0.1}
NEGATIVE_STRATUM = ""  # groups with no categories (negatives) are stratified among themselves


@dataclass(frozen=True)
class SplitItem:
    """One image (or tile): its stable key, its group (``None`` = itself), its categories."""

    key: str
    group: str | None = None
    categories: frozenset[str] = field(default_factory=frozenset)


def _hash(seed: int | str, group: str) -> str:
    return hashlib.sha256(f"{seed}\x00{group}".encode("utf-8", "surrogatepass")).hexdigest()


def assign_splits(
    items: Iterable[SplitItem],
    *,
    ratios: Mapping[str, float] | None = None,
    seed: int | str = 0,
    previous: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Return key -> split for every item. See the module docstring for the rules.

    ``ratios`` maps split name -> weight (normalised; zero weights allowed, e.g. no test set).
    Raises ``ValueError`` for empty or negative ratios or duplicate keys.
    """
    ratios = dict(DEFAULT_RATIOS if ratios is None else ratios)
    if not ratios or any(v < 0 for v in ratios.values()) or sum(ratios.values()) <= 0:
        raise ValueError("ratios must be non-negative weights with a positive sum")
    total = sum(ratios.values())
    share = {s: v / total for s, v in ratios.items()}
    order = list(share)  # ties go to the split named first (train by default)
    previous = previous or {}

    groups: dict[str, list[SplitItem]] = defaultdict(list)
    for item in items:
        groups[item.group if item.group is not None else f"\x00{item.key}"].append(item)
    keys = [it.key for members in groups.values() for it in members]
    if len(keys) != len(set(keys)):
        dupes = sorted(k for k, c in Counter(keys).items() if c > 1)
        raise ValueError(f"duplicate item keys: {dupes[:5]}")

    group_cats = {g: frozenset().union(*(it.categories for it in m)) for g, m in groups.items()}
    freq = Counter(c for cats in group_cats.values() for c in cats)

    def stratum(g: str) -> str:
        cats = group_cats[g]
        if not cats:
            return NEGATIVE_STRATUM
        return min(cats, key=lambda c: (freq[c], c))

    counts: dict[str, Counter[str]] = defaultdict(Counter)
    result: dict[str, str] = {}
    new_groups = []
    for g, members in groups.items():
        before = Counter(previous[it.key] for it in members if it.key in previous)
        if before:
            # Most common earlier split wins (ties: split order), so the group stays together.
            split = max(before, key=lambda s: (before[s], -order.index(s) if s in order else -99))
            counts[stratum(g)][split] += 1
            for it in members:
                result[it.key] = split
        else:
            new_groups.append(g)

    new_groups.sort(key=lambda g: (stratum(g), _hash(seed, g)))
    for g in new_groups:
        c = counts[stratum(g)]
        n = sum(c.values()) + 1
        split = max(order, key=lambda s: (share[s] * n - c[s], -order.index(s)))
        c[split] += 1
        for it in groups[g]:
            result[it.key] = split
    return result
