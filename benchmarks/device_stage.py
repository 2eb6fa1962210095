"""Move a file larger than one device call's transfer onto a lent accelerator, in parts, over several calls.

A call to the accelerator carries the working tree and at most 64 MiB in all; the repository alone is about 35 MB,
and CIFAR-10 (``cifar-10/cifar10-uint8.npz``, 170 MB, already deflate-compressed: a further zstd or lzma pass saves
under a third) cannot travel in one call. Files written outside the repository on a warm machine stay there until
it is handed back, so the file travels in parts:

1. here, ``split`` cuts it into numbered folders of one part each, with a manifest of SHA-256 sums
   (``.devcarry/stage/<name>/00``, ``01``, ...; keep ``.devcarry`` in ``.git/info/exclude``);
2. call k carries folder k and runs ``receive``, which checks the part's sum and copies it into a store outside
   the repository (``/tmp/bcstage`` by default); a part already stored is not copied again;
3. when the store holds every part, ``receive`` joins them, checks the whole file's sum and puts it where the data
   loader looks (``--data-root``/``<relative path>``); ``$BAYESCOMP_DATA`` then points at that root, and the
   loader checks the file's published checksum once more.

Calls must follow each other while the machine is warm (it is handed back after about 30 idle seconds), or the
store is lost and ``receive`` says which parts are missing. Nothing here runs code from the parts: they are bytes.

    python -m benchmarks.device_stage split ../shared/data/cifar-10/cifar10-uint8.npz --relative cifar-10 \\
        --out .devcarry/stage --also-carry .devcarry/site   # parts sized to what a call leaves (auto)
    # on the device, call k (carry .devcarry/stage/cifar10-uint8.npz/0k):
    python -m benchmarks.device_stage receive .devcarry/stage/cifar10-uint8.npz --data-root /tmp/bcdata
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

MANIFEST = "manifest.json"
CHUNK = 1 << 20
CALL_LIMIT = 64 << 20  # what one call carries: the working tree that travels plus the carried paths
MARGIN = 2 << 20


def travelling_bytes(repo: Path, carried: list[Path]) -> int:
    """Bytes a call sends besides the part: the files git tracks, the untracked ones it does not ignore, and the
    other carried paths."""
    listed = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            check=True, capture_output=True).stdout.split(b"\0")
    total = sum((repo / name.decode()).stat().st_size for name in listed if name and (repo / name.decode()).is_file())
    for path in carried:
        total += sum(f.stat().st_size for f in ([path] if path.is_file() else path.rglob("*")) if f.is_file())
    return total


def auto_part_bytes(repo: Path, carried: list[Path]) -> int:
    """The largest part that fits one call beside everything else that travels (2 MiB kept spare)."""
    room = CALL_LIMIT - MARGIN - travelling_bytes(repo, carried)
    if room < (1 << 20):
        raise ValueError(f"the working tree and the carried paths leave {room / (1 << 20):.1f} MiB of a call's "
                         f"{CALL_LIMIT >> 20} MiB: carry less")
    return room


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def split(source: Path, out: Path, part_bytes: int, relative: str = "") -> dict:
    """Cut ``source`` into parts of at most ``part_bytes``, each in its own numbered folder under
    ``out/<file name>/`` with a copy of the manifest (so any one folder is enough to receive its part)."""
    if part_bytes <= 0:
        raise ValueError(f"part size must be positive, got {part_bytes}")
    root = out / source.name
    if root.exists():
        shutil.rmtree(root)
    parts = []
    with source.open("rb") as handle:
        while block := handle.read(part_bytes):
            index = len(parts)
            folder = root / f"{index:02d}"
            folder.mkdir(parents=True)
            name = f"{source.name}.part{index:02d}"
            (folder / name).write_bytes(block)
            parts.append({"index": index, "file": name, "bytes": len(block),
                          "sha256": hashlib.sha256(block).hexdigest()})
    if not parts:
        raise ValueError(f"{source} is empty: nothing to stage")
    manifest = {"name": source.name, "relative": relative, "bytes": source.stat().st_size,
                "sha256": sha256_of(source), "parts": parts}
    for part in parts:
        (root / f"{part['index']:02d}" / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def _manifest_of(staged: Path) -> dict:
    """The manifest of a staged file: from any of its part folders that travelled with this call."""
    for candidate in sorted(staged.glob(f"*/{MANIFEST}")):
        return json.loads(candidate.read_text())
    raise FileNotFoundError(f"no part folder with a {MANIFEST} under {staged}: carry one of its numbered folders")


def receive(staged: Path, store: Path, data_root: Path) -> dict:
    """Store the parts that came with this call (each checked against the manifest), and join them once all are
    stored. Returns ``{"stored": [...], "missing": [...], "assembled": path or None}``; raises on a corrupt part
    or a joined file whose sum differs (the corrupt pieces are deleted, so a rerun with good parts recovers)."""
    manifest = _manifest_of(staged)
    store = store / manifest["name"]
    store.mkdir(parents=True, exist_ok=True)
    (store / MANIFEST).write_text(json.dumps(manifest, indent=1))
    for part in manifest["parts"]:
        kept = store / part["file"]
        if kept.exists() and kept.stat().st_size == part["bytes"]:
            continue
        arrived = staged / f"{part['index']:02d}" / part["file"]
        if not arrived.exists():
            continue
        if sha256_of(arrived) != part["sha256"]:
            raise ValueError(f"part {part['index']} ({arrived}) does not match its SHA-256 in the manifest: "
                             "split the file again and resend that part")
        tmp = kept.with_suffix(".tmp")
        shutil.copyfile(arrived, tmp)
        tmp.replace(kept)
    stored = [p["index"] for p in manifest["parts"] if (store / p["file"]).exists()]
    missing = [p["index"] for p in manifest["parts"] if p["index"] not in stored]
    target = data_root / manifest.get("relative", "") / manifest["name"]
    if missing:
        return {"stored": stored, "missing": missing, "assembled": None}
    if not (target.exists() and target.stat().st_size == manifest["bytes"] and sha256_of(target) == manifest["sha256"]):
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        with tmp.open("wb") as out:
            for part in manifest["parts"]:
                with (store / part["file"]).open("rb") as handle:
                    shutil.copyfileobj(handle, out, CHUNK)
        if sha256_of(tmp) != manifest["sha256"]:
            tmp.unlink()
            for part in manifest["parts"]:
                (store / part["file"]).unlink()
            raise ValueError(f"the joined {manifest['name']} does not match its SHA-256: every stored part was "
                             "deleted; send them again")
        tmp.replace(target)
    return {"stored": stored, "missing": [], "assembled": str(target)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cut = sub.add_parser("split", help="cut a file into numbered part folders (here)")
    cut.add_argument("source", type=Path)
    cut.add_argument("--out", type=Path, default=Path(".devcarry/stage"))
    cut.add_argument("--part-mib", default="auto",
                     help="part size in MiB, or auto: what a call leaves beside the working tree and --also-carry")
    cut.add_argument("--also-carry", type=Path, nargs="*", default=[],
                     help="the other paths each call will carry (counted by --part-mib auto)")
    cut.add_argument("--relative", default="", help="folder under the data root the file belongs in (cifar-10)")
    get = sub.add_parser("receive", help="store this call's parts and join them when complete (on the device)")
    get.add_argument("staged", type=Path, help="the staged file's folder (.devcarry/stage/<name>)")
    get.add_argument("--store", type=Path, default=Path("/tmp/bcstage"))
    get.add_argument("--data-root", type=Path, default=Path("/tmp/bcdata"))
    args = parser.parse_args(argv)
    if args.command == "split":
        part = (auto_part_bytes(Path.cwd(), args.also_carry) if args.part_mib == "auto"
                else int(float(args.part_mib) * (1 << 20)))
        manifest = split(args.source, args.out, part, args.relative)
        print(f"{manifest['name']}: {len(manifest['parts'])} parts in {args.out / manifest['name']}/NN "
              f"(sha256 {manifest['sha256'][:12]}...)")
        return 0
    status = receive(args.staged, args.store, args.data_root)
    if status["assembled"]:
        print(f"complete: {status['assembled']}")
        return 0
    print(f"stored parts {status['stored']}; still missing {status['missing']}")
    return 3


if __name__ == "__main__":
    sys.exit(main())
