"""Staging a file too large for one device call: split here, received part by part, joined and checked there."""

from __future__ import annotations

import hashlib
import shutil

import pytest

from benchmarks.device_stage import main, receive, split


def _source(tmp_path, size=10_000):
    data = hashlib.sha256(b"seed").digest() * (size // 32 + 1)
    path = tmp_path / "blob.npz"
    path.write_bytes(data[:size])
    return path


def _call(tmp_path, staged, index):
    """What one device call sees: only part folder ``index`` travelled."""
    travelled = tmp_path / f"call{index}" / staged.name
    shutil.copytree(staged / f"{index:02d}", travelled / f"{index:02d}", dirs_exist_ok=True)
    return travelled


def test_parts_sent_over_separate_calls_in_any_order_rebuild_the_file(tmp_path):
    source = _source(tmp_path)
    manifest = split(source, tmp_path / "stage", 3_000, relative="cifar-10")
    assert [p["bytes"] for p in manifest["parts"]] == [3000, 3000, 3000, 1000]
    staged = tmp_path / "stage" / source.name
    store, root = tmp_path / "store", tmp_path / "data"
    missing = []
    for index in (2, 0, 3):
        status = receive(_call(tmp_path, staged, index), store, root)
        assert status["assembled"] is None
        missing.append(status["missing"])
    assert missing == [[0, 1, 3], [1, 3], [1]]
    status = receive(_call(tmp_path, staged, 1), store, root)
    target = root / "cifar-10" / "blob.npz"
    assert status == {"stored": [0, 1, 2, 3], "missing": [], "assembled": str(target)}
    assert target.read_bytes() == source.read_bytes()
    again = receive(_call(tmp_path, staged, 1), store, root)  # a repeated call changes nothing
    assert again["assembled"] == str(target) and target.read_bytes() == source.read_bytes()


def test_a_corrupt_part_is_refused_and_nothing_is_stored(tmp_path):
    source = _source(tmp_path)
    split(source, tmp_path / "stage", 4_000)
    staged = tmp_path / "stage" / source.name
    travelled = _call(tmp_path, staged, 1)
    part = next((travelled / "01").glob("*.part01"))
    part.write_bytes(b"x" + part.read_bytes()[1:])
    with pytest.raises(ValueError, match="part 1 .* does not match its SHA-256"):
        receive(travelled, tmp_path / "store", tmp_path / "data")
    assert not list((tmp_path / "store").rglob("*.part01"))


def test_a_folder_without_a_manifest_says_what_to_carry(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="carry one of its numbered folders"):
        receive(tmp_path / "empty", tmp_path / "store", tmp_path / "data")


def test_the_command_line_exits_3_until_every_part_arrived(tmp_path, capsys):
    source = _source(tmp_path, 5_000)
    assert main(["split", str(source), "--out", str(tmp_path / "stage"), "--part-mib", str(3_000 / (1 << 20))]) == 0
    staged = tmp_path / "stage" / source.name
    common = ["--store", str(tmp_path / "store"), "--data-root", str(tmp_path / "data")]
    assert main(["receive", str(_call(tmp_path, staged, 0)), *common]) == 3
    assert "still missing [1]" in capsys.readouterr().out
    assert main(["receive", str(_call(tmp_path, staged, 1)), *common]) == 0
    assert (tmp_path / "data" / "blob.npz").read_bytes() == source.read_bytes()


def test_auto_parts_fill_what_a_call_leaves_beside_the_tree(tmp_path):
    import subprocess

    from benchmarks.device_stage import CALL_LIMIT, MARGIN, auto_part_bytes

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "tracked.bin").write_bytes(b"t" * 5000)
    (tmp_path / ".gitignore").write_text("ignored/\n")
    (tmp_path / "ignored").mkdir()
    (tmp_path / "ignored" / "big.bin").write_bytes(b"i" * 70_000)  # ignored and not carried: does not travel
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "pkg.py").write_bytes(b"s" * 3000)
    tree = 5000 + len("ignored/\n")
    assert auto_part_bytes(tmp_path, []) == CALL_LIMIT - MARGIN - tree - 3000  # site/ is untracked, not ignored
    (tmp_path / ".gitignore").write_text("ignored/\nsite/\n")
    assert auto_part_bytes(tmp_path, [tmp_path / "site"]) == CALL_LIMIT - MARGIN - len("ignored/\nsite/\n") - 5000 - 3000
