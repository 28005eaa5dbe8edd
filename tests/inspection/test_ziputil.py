"""Zip uploads: unsafe entries are refused one by one; bombs are refused whole."""

import io
import stat
import zipfile

import pytest

from inspection.ziputil import ZipRejected, safe_extract

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
