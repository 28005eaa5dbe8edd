"""Zip uploads: unsafe entries are refused one by one; bombs are refused whole."""

import io
import stat
import zipfile

import pytest

from inspection.ziputil import ZipRejected, safe_extract, safe_extract_tree

LIMITS = {"max_entries": 100, "max_total_bytes": 50 * 1024 * 1024, "max_ratio": 100}


def make_zip(entries) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data, *mode in entries:
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if mode:
                info.external_attr = mode[0] << 16
            zf.writestr(info, data)
    return buf.getvalue()


def test_traversal_absolute_and_symlink_entries_are_refused_alone(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(
        make_zip(
            [
                ("good/one.txt", b"1"),
                ("../evil.txt", b"x"),
                ("/etc/evil.txt", b"x"),
                ("a/../../evil2.txt", b"x"),
                ("link", b"/etc/passwd", stat.S_IFLNK | 0o777),
                ("__MACOSX/._one.txt", b"junk"),
            ]
        )
    )
    out = safe_extract(archive, tmp_path / "out", **LIMITS)
    assert [n for n, _ in out.files] == ["good/one.txt"]
    reasons = dict(out.skipped)
    assert "'..'" in reasons["../evil.txt"] and "'..'" in reasons["a/../../evil2.txt"]
    assert "absolute" in reasons["/etc/evil.txt"]
    assert "symbolic link" in reasons["link"]
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "evil2.txt").exists()
    for _, path in out.files:
        assert (tmp_path / "out") in path.parents


def test_zip_bomb_is_refused_whole(tmp_path):
    archive = tmp_path / "bomb.zip"
    archive.write_bytes(make_zip([("zeros.bin", b"\0" * (60 * 1024 * 1024))]))
    with pytest.raises(ZipRejected, match="limit|bomb"):
        safe_extract(archive, tmp_path / "out", **LIMITS)
    assert not any((tmp_path / "out").rglob("*.bin")) if (tmp_path / "out").exists() else True


def test_high_ratio_is_refused_even_under_the_size_cap(tmp_path):
    archive = tmp_path / "bomb.zip"
    archive.write_bytes(make_zip([("zeros.bin", b"\0" * (20 * 1024 * 1024))]))
    with pytest.raises(ZipRejected, match="expands"):
        safe_extract(archive, tmp_path / "out", **LIMITS)


def test_too_many_entries(tmp_path):
    archive = tmp_path / "many.zip"
    archive.write_bytes(make_zip([(f"f{i}.txt", b"x") for i in range(101)]))
    with pytest.raises(ZipRejected, match="101 entries"):
        safe_extract(archive, tmp_path / "out", **LIMITS)


def test_not_a_zip(tmp_path):
    archive = tmp_path / "fake.zip"
    archive.write_bytes(b"PK but not really")
    with pytest.raises(ZipRejected, match="not a readable zip"):
        safe_extract(archive, tmp_path / "out", **LIMITS)


def test_a_damaged_entry_is_refused_alone(tmp_path):
    data = bytearray(make_zip([("a.txt", b"a" * 5000), ("b.txt", b"b" * 5000)]))
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        info = zf.getinfo("a.txt")
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start : start + info.compress_size] = b"\xff" * info.compress_size
    archive = tmp_path / "d.zip"
    archive.write_bytes(bytes(data))
    out = safe_extract(archive, tmp_path / "out", **LIMITS)
    assert [n for n, _ in out.files] == ["b.txt"]
    assert "damaged" in dict(out.skipped)["a.txt"]
    assert not any(p.name == "a.txt" for p in (tmp_path / "out").rglob("*"))


def test_tree_extraction_keeps_folders_and_refuses_the_same_entries(tmp_path):
    archive = tmp_path / "t.zip"
    archive.write_bytes(
        make_zip(
            [
                ("bottle/train/good/0.png", b"0"),
                ("bottle/test/crack/c.png", b"c"),
                ("bottle/../../evil.txt", b"x"),
                ("bottle/link", b"/etc/passwd", stat.S_IFLNK | 0o777),
            ]
        )
    )
    out = safe_extract_tree(archive, tmp_path / "out", **LIMITS)
    root = (tmp_path / "out").resolve()
    assert [(n, p) for n, p in out.files] == [
        ("bottle/train/good/0.png", root / "bottle/train/good/0.png"),
        ("bottle/test/crack/c.png", root / "bottle/test/crack/c.png"),
    ]
    assert (root / "bottle/test/crack/c.png").read_bytes() == b"c"
    assert sorted(dict(out.skipped)) == ["bottle/../../evil.txt", "bottle/link"]
    assert not (tmp_path / "evil.txt").exists()
    # nothing but the dataset is left (the work folder of the flat extraction is removed)
    assert sorted(p.name for p in root.iterdir()) == ["bottle"]
