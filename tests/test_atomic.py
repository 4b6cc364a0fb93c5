"""prefopt.atomic: whole-or-absent writes that never follow a planted link, and JSON every parser reads."""

from __future__ import annotations

import os

import pytest

def test_an_atomic_write_never_writes_through_a_link_planted_at_its_temporary_name(tmp_path):
    """write_atomic's temporary name is predictable (.NAME.tmp-PID): a link planted there is replaced, not
    followed, so the bytes land in the file asked for and the link's target is untouched."""
    from prefopt.atomic import write_atomic

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    target = tmp_path / "run" / "eval.json"
    target.parent.mkdir()
    (target.parent / f".eval.json.tmp-{os.getpid()}").symlink_to(victim)
    write_atomic(target, b"{}\n")
    assert target.read_bytes() == b"{}\n" and not target.is_symlink()
    assert victim.read_text() == "keep me"
    assert sorted(p.name for p in target.parent.iterdir()) == ["eval.json"]


def test_a_failed_atomic_write_names_the_file_not_its_temporary(tmp_path, monkeypatch):
    from prefopt import atomic

    def read_only(path, *args):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(atomic, "open", read_only, raising=False)
    with pytest.raises(PermissionError) as raised:
        atomic.write_atomic(tmp_path / "bench.md", b"rows")
    assert raised.value.filename == str(tmp_path / "bench.md")


def test_a_write_to_a_read_only_file_system_names_the_file_not_its_temporary(tmp_path, monkeypatch):
    """On a read-only file system even the cleanup's unlink of the temporary fails: that second error must
    not replace the first, which names the file asked for."""
    import errno
    from pathlib import Path

    from prefopt.atomic import write_atomic

    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(Path, "unlink", read_only)
    with pytest.raises(OSError) as raised:
        write_atomic(tmp_path / "bench.md", b"rows")
    assert raised.value.errno == errno.EROFS and raised.value.filename == str(tmp_path / "bench.md")


def test_strict_json_writes_non_finite_numbers_as_null():
    import json

    from prefopt.atomic import strict_json

    text = strict_json({"score": float("nan"), "rows": [1.5, float("inf"), {"x": -float("inf")}], "n": 3})
    assert json.loads(text) == {"score": None, "rows": [1.5, None, {"x": None}], "n": 3}
    assert "NaN" not in text and "Infinity" not in text
