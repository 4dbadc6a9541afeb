"""Where demo worlds live: the user cache dir, keyed by the world revision, size, seed, scenario.

``ensure_world`` returns a complete world directory, taking the first that applies:

1. the cache already holds it (``world.json`` present and its key matches);
2. the package ships it (``demo/assets/<key name>.tar.gz``, built by
   ``scripts/build_demo_assets.py``) and it is unpacked into the cache;
3. it is built (``build.build_world``), reusing the base model and original adapter of the same
   seed's other scenario when the cache has them (they do not depend on the scenario).

Every write goes to a temporary sibling directory that is renamed into place, so an interrupted
build never leaves a half-written world, and two processes building the same world at once
both end with one complete copy. The key holds the world's revision (``SYNTHETIC_REVISION``),
bumped with every change that alters records or weights, so a changed world is never mistaken
for a cached one.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from ucan_cli.progress import ProgressFactory

ASSETS = Path(__file__).with_name("assets")
REUSABLE = ("base", "original", "public.jsonl")


def cache_root() -> Path:
    """The ucan cache dir: ``$UCAN_CACHE_DIR``, else the platform's user cache dir + ``ucan``.

    Linux and others: ``$XDG_CACHE_HOME/ucan`` (default ``~/.cache/ucan``); macOS:
    ``~/Library/Caches/ucan``; Windows: ``%LOCALAPPDATA%\\ucan\\Cache``.
    """
    if os.environ.get("UCAN_CACHE_DIR"):
        return Path(os.environ["UCAN_CACHE_DIR"]).expanduser()
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "ucan" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "ucan"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ucan"


#: The revision of the synthetic world: its generator (``demo/world.py``) and its builder
#: (``demo/build.py`` and the trainer it calls). Bump it in the same commit as any change that
#: alters a world's records or weights, then run ``scripts/build_demo_assets.py``; moving or
#: renaming code does not change a world and needs no bump. (Until 2026-12 the key held a hash
#: of those source files, so that every refactor invalidated the shipped worlds.)
#: ``tests/test_demo_world.py`` pins the generator's records, which catches a forgotten bump there.
SYNTHETIC_REVISION = "1"


def versioned_key(name: str, revision: str = SYNTHETIC_REVISION) -> str:
    """A cache key: the world kind's revision, then the world's ``name``."""
    return f"rev{revision}/{name}"


def keyed_path(key: str, root: Path | None = None) -> Path:
    """Where the world of ``key`` lives in the cache (it may not exist yet)."""
    return (root or cache_root()) / "demo" / key


def world_name(seed: int, scenario: str, size: str = "default") -> str:
    """The directory (and asset) name of one world, e.g. ``world-default-seed0-group``."""
    return f"world-{size}-seed{seed}-{scenario}"


def world_key(seed: int, scenario: str, size: str = "default") -> str:
    """Everything a cached world must match: revision, size, seed, scenario."""
    return versioned_key(world_name(seed, scenario, size))


def world_path(seed: int, scenario: str, size: str = "default", root: Path | None = None) -> Path:
    """Where the world of this key lives in the cache (it may not exist yet)."""
    return keyed_path(world_key(seed, scenario, size), root)


def is_complete(path: Path, key: str) -> bool:
    """A world dir is complete when its manifest exists and carries ``key``."""
    try:
        manifest = json.loads((path / "world.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return manifest.get("key") == key


def asset_path(seed: int, scenario: str, size: str = "default") -> Path:
    """Where a shipped world archive would be."""
    return ASSETS / f"{world_name(seed, scenario, size)}.tar.gz"


@contextlib.contextmanager
def _staging(target: Path):
    """A temporary sibling of ``target``, removed unless the caller moved it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def install(tmp: Path, target: Path, *, replace: bool) -> None:
    """Rename a finished world into place; an existing complete one wins unless ``replace``."""
    os.chmod(tmp, 0o755)
    if target.exists():
        if not replace:
            return  # another process finished first; its copy is as good as ours
        trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, trash / "old")
        os.replace(tmp, target)
        shutil.rmtree(trash, ignore_errors=True)
        return
    try:
        os.replace(tmp, target)
    except OSError:
        if not target.exists():
            raise


def pack_world(world_dir: Path, archive: Path) -> Path:
    """A reproducible ``.tar.gz`` of a world dir (sorted names, zero times and owners)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(world_dir.rglob("*")):
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(world_dir)))
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            info.mode = 0o755 if path.is_dir() else 0o644
            if path.is_file():
                with open(path, "rb") as handle:
                    tar.addfile(info, handle)
            else:
                tar.addfile(info)
    archive.parent.mkdir(parents=True, exist_ok=True)
    with open(archive, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
        gz.write(buffer.getvalue())
    return archive


def _unpack(archive: Path, dest: Path) -> None:
    with tarfile.open(archive, mode="r:gz") as tar:
        for member in tar.getmembers():
            if not (member.isfile() or member.isdir()) or member.name.startswith(("/", "..")) or ".." in Path(member.name).parts:
                raise ValueError(f"{archive}: unexpected member {member.name!r}")
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
        else:  # Python < 3.10.12: members were checked above
            tar.extractall(dest)


def ensure_world(
    seed: int = 0,
    scenario: str = "group",
    size: str = "default",
    *,
    rebuild: bool = False,
    root: Path | None = None,
    use_assets: bool = True,
    progress: ProgressFactory | None = None,
    on_build: Callable[[str], None] | None = None,
) -> tuple[Path, str]:
    """A complete world directory for (seed, scenario, size) and how it was obtained.

    Returns ``(path, how)`` with ``how`` one of ``cached``, ``shipped`` (unpacked from package
    data) or ``built``. ``rebuild`` skips the cache and the shipped assets and builds afresh
    (replacing the cached copy). ``on_build`` is called with a one-line note before a build
    starts (the CLI shows it: a cold build takes tens of seconds).
    """
    from ucan_cli.demo.world import generate_world

    key = world_key(seed, scenario, size)
    target = world_path(seed, scenario, size, root)
    if not rebuild and is_complete(target, key):
        return target, "cached"
    archive = asset_path(seed, scenario, size)
    if not rebuild and use_assets and archive.is_file():
        with _staging(target) as tmp:
            _unpack(archive, tmp)
            if is_complete(tmp, key):
                install(tmp, target, replace=not is_complete(target, key))
                return target, "shipped"
    world = generate_world(seed, scenario, size)
    if on_build is not None:
        on_build(f"building the synthetic world (seed {seed}, {scenario}, {size}) into {target}")
    from ucan_cli.demo.build import build_world

    reuse = None
    if not rebuild:
        for other in _other_scenarios(scenario):
            sibling = world_path(seed, other, size, root)
            if is_complete(sibling, world_key(seed, other, size)):
                reuse = sibling
                break
    with _staging(target) as tmp:
        build_world(world, tmp, progress=progress, key=key, reuse=reuse)
        install(tmp, target, replace=rebuild or not is_complete(target, key))
    return target, "built"


def _other_scenarios(scenario: str) -> list[str]:
    from ucan_cli.demo.world import SCENARIOS

    return [s for s in SCENARIOS if s != scenario]
