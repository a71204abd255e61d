"""`routevit setup-tflm`: a TFLM tree at a pinned commit, third-party pieces at TFLM's pins.

Result: `<cache>/tflm/<commit>/` = the TFLM source tree with its pieces laid out where TFLM's
Makefile would download them (`tensorflow/lite/micro/tools/make/downloads/...`), TFLM's
flatbuffers patch applied, and `tree.json` recording every piece's commit and how it was
verified. Built in a temp folder beside it and renamed into place.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import click

import toolchain
from toolchain.errors import RoutevitError
from toolchain.tflm import copies as copies_mod
from toolchain.tflm.copies import GitCopy, Match, run
from toolchain.tflm.pieces import (ALL_PIECES, DOWNLOADS, FLATBUFFERS_PATCH, PINNED_COMMIT,
                                   TFLM, THIRD_PARTY, Pin, Piece, read_pins)
from toolchain.tflm.tree import TREE_FORMAT, TflmTree, trees_dir

log = logging.getLogger("routevit")

DEFAULT_GIT_URL = "https://github.com/{owner}/{name}.git"


def _say(msg: str) -> None:
    click.echo(msg, err=True)


def _how_to_get(piece: Piece, pin: Pin) -> str:
    url = pin.url or f"https://github.com/{piece.repo}/archive/{pin.ref}.zip"
    return f"{piece.name} ({piece.repo} @ {pin.short}: git clone https://github.com/{piece.repo} or {url})"


class _Resolver:
    """Finds each piece in the given local copies, else (online) clones it."""

    def __init__(self, from_paths, git_url: str, offline: bool, workdir: Path):
        self.copies = []
        for p in from_paths:
            p = Path(p).expanduser()
            if not p.exists():
                raise RoutevitError(f"{p}: no such file or folder; give a TFLM checkout, a bare git "
                                    "dir, an archive (.tar.gz/.zip) or a folder holding such copies")
            found = copies_mod.find_copies(p, ALL_PIECES)
            if not found:
                raise RoutevitError(
                    f"{p}: holds no TFLM piece (looked for {', '.join(x.repo for x in ALL_PIECES)} "
                    "by their files); give git clones, bare git dirs or GitHub archives")
            self.copies += found
        log.debug("local copies: %s", self.copies)
        self.git_url = git_url
        self.offline = offline
        self.workdir = workdir
        self.notes: dict[str, list[str]] = {}

    def find(self, piece: Piece, pin: Pin):
        notes = self.notes.setdefault(piece.name, [])
        for copy in self.copies:
            m = copy.match(piece, pin)
            if m.status == "ok":
                return copy, m
            if m.status == "wrong-version":
                notes.append(m.detail)
        if self.offline:
            return None, None
        return self._clone(piece, pin, notes)

    def _clone(self, piece: Piece, pin: Pin, notes):
        url = self.git_url.format(owner=piece.owner, name=piece.repo_name, repo=piece.repo)
        git_dir = self.workdir / f"{piece.name}.git"
        if git_dir.exists():
            shutil.rmtree(git_dir)
        _say(f"  fetching {piece.repo} @ {pin.short} from {url}")
        init = run(["git", "init", "--quiet", "--bare", git_dir])
        if init.returncode != 0:
            notes.append(f"git init failed: {init.stderr.strip()}")
            return None, None
        copy = GitCopy(git_dir)
        refspec = f"refs/tags/{pin.ref}:refs/tags/{pin.ref}" if not pin.is_sha else pin.ref
        # A shallow fetch of exactly the pinned commit; servers refusing that get a full clone.
        r = copy.git("fetch", "--quiet", "--depth", "1", "--no-tags", url, refspec)
        if r.returncode != 0 or copy.resolve(pin.ref if not pin.is_sha else "FETCH_HEAD") is None:
            log.debug("shallow fetch failed: %s", r.stderr.strip())
            r = copy.git("fetch", "--quiet", "--tags", url, "+refs/heads/*:refs/heads/*")
            if r.returncode != 0:
                last = (r.stderr.strip().splitlines() or ["?"])[-1]
                notes.append(f"git fetch {url} failed ({last})")
                return None, None
        m = copy.match(piece, pin)
        if pin.is_sha and m.status != "ok":
            head = copy.resolve("FETCH_HEAD")
            if head and head.startswith(pin.ref) and copy.has_files(head, piece.markers):
                m = Match("ok", head, "git")
        if m.status != "ok":
            notes.append(m.detail or f"{url} has no {pin.short}")
            return None, None
        m.verified = "git"
        copy.origin = f"git clone {url}"
        return copy, m


def _apply_flatbuffers_patch(tree: Path) -> str:
    """Apply TFLM's own flatbuffers patch the way its download script does (git apply)."""
    patch = tree / FLATBUFFERS_PATCH
    target = tree / DOWNLOADS / "flatbuffers"
    if not patch.is_file():
        return "none (TFLM has no flatbuffers.patch)"
    # Keep git from treating an enclosing repository (e.g. a cache inside a checkout) as ours.
    env = dict(os.environ, GIT_CEILING_DIRECTORIES=str(target.parent))
    opts = ["--ignore-space-change", "--ignore-whitespace"]
    if run(["git", "apply", *opts, "--check", patch], cwd=target, env=env).returncode == 0:
        r = run(["git", "apply", *opts, patch], cwd=target, env=env)
        if r.returncode != 0:
            raise RuntimeError(f"applying {patch} failed: {r.stderr.strip()}")
        return f"applied {FLATBUFFERS_PATCH}"
    if run(["git", "apply", *opts, "--check", "--reverse", patch], cwd=target, env=env).returncode == 0:
        return f"already applied {FLATBUFFERS_PATCH}"
    raise RoutevitError(f"{target}: TFLM's {FLATBUFFERS_PATCH} does not apply to this flatbuffers; "
                        "give an unmodified flatbuffers copy at TFLM's pinned version")


def setup_tree(from_paths=(), commit: str = PINNED_COMMIT, *, offline: bool = False,
               git_url: str | None = None, cache: Path | None = None, force: bool = False) -> TflmTree:
    """Put a TFLM tree at `commit` with TFLM's pinned pieces into the cache; return it."""
    started = time.monotonic()
    root = trees_dir(cache)
    git_url = git_url or os.environ.get("ROUTEVIT_TFLM_GIT_URL") or DEFAULT_GIT_URL
    if not from_paths and offline:
        raise RoutevitError("setup-tflm: --offline needs --from PATH (local copies of TFLM and its "
                            "pieces); or run without --offline to git clone them")
    if len(commit) == 40:
        existing = root / commit
        if (existing / "tree.json").is_file() and not force:
            tree = TflmTree.load(existing)
            _say(f"TFLM tree {commit[:8]} already set up at {existing} (use --force to redo)")
            return tree

    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".setup-", dir=root))
    try:
        resolver = _Resolver(from_paths, git_url, offline, work / "git")
        (work / "git").mkdir()
        tflm_pin = Pin(commit)
        _say(f"[1/{len(ALL_PIECES) + 1}] TFLM {tflm_pin.short}")
        tflm_copy, tflm_match = resolver.find(TFLM, tflm_pin)
        if tflm_copy is None:
            raise RoutevitError(_missing_message({TFLM.name: (TFLM, tflm_pin)}, resolver))
        full_commit = tflm_match.commit or commit
        final = root / full_commit
        if (final / "tree.json").is_file() and not force:
            _say(f"TFLM tree {full_commit[:8]} already set up at {final} (use --force to redo)")
            return TflmTree.load(final)
        tree_dir = work / "tree"
        tflm_copy.export(TFLM, tflm_match, tree_dir)
        # A user's checkout may carry its own downloads: ours replace them whole.
        shutil.rmtree(tree_dir / DOWNLOADS, ignore_errors=True)
        (tree_dir / DOWNLOADS).mkdir(parents=True)

        pins = read_pins(tree_dir)
        found, missing = {}, {}
        for i, piece in enumerate(THIRD_PARTY, start=2):
            pin = pins[piece.name]
            _say(f"[{i}/{len(ALL_PIECES) + 1}] {piece.name} {pin.short}")
            copy, m = resolver.find(piece, pin)
            if copy is None:
                missing[piece.name] = (piece, pin)
            else:
                found[piece.name] = (piece, pin, copy, m)
        if missing:
            raise RoutevitError(_missing_message(missing, resolver))

        manifest_pieces = {TFLM.name: _record(TFLM, tflm_pin, tflm_copy, tflm_match, full_commit)}
        # cmsis before cortex_dfp: Cortex_DFP lives inside the cmsis folder, as TFLM lays it out.
        for name, (piece, pin, copy, m) in found.items():
            copy.export(piece, m, tree_dir / piece.dest)
            manifest_pieces[name] = _record(piece, pin, copy, m, m.commit)
        _say(f"[{len(ALL_PIECES) + 1}/{len(ALL_PIECES) + 1}] patching flatbuffers, writing tree.json")
        manifest_pieces["flatbuffers"]["patch"] = _apply_flatbuffers_patch(tree_dir)

        manifest = {
            "format": TREE_FORMAT,
            "routevit_version": toolchain.__version__,
            "commit": full_commit,
            "pieces": manifest_pieces,
            "include_dirs": TflmTree.INCLUDE_DIRS,
            "note": "CMSIS m-profile headers are reached through the include dirs "
                    "(CMSIS/Core/Include), not copied; kissfft and pigweed are not set up.",
        }
        (tree_dir / "tree.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if final.exists():
            old = root / f".old-{full_commit}-{os.getpid()}"
            os.rename(final, old)
            os.rename(tree_dir, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tree_dir, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _say(f"TFLM tree {full_commit[:8]} ready at {final} ({time.monotonic() - started:.1f} s)")
    return TflmTree.load(final)


def _record(piece: Piece, pin: Pin, copy, m: Match, commit) -> dict:
    source = getattr(copy, "origin", None) or f"{copy.kind}:{copy.path}"
    return {"repo": piece.repo, "pin": pin.ref, "commit": commit, "path": piece.dest,
            "source": source, "verified": m.verified}


def _missing_message(missing: dict, resolver: _Resolver) -> str:
    parts = []
    for name, (piece, pin) in missing.items():
        notes = [n for n in resolver.notes.get(name, []) if n]
        parts.append(_how_to_get(piece, pin) + (f" [{'; '.join(notes)}]" if notes else ""))
    how = ("give each with --from PATH (a git clone, a bare git dir, the GitHub archive .zip/.tar.gz, "
           "or a folder holding several)")
    if resolver.offline:
        how += ", or run online without --offline"
    return f"TFLM pieces missing: {'; '.join(parts)}; {how}"


# Where `ensure_tree` looks for local copies when no tree is set up (CI and offline machines:
# e.g. ROUTEVIT_TFLM_FROM=../shared/third_party).
LOCAL_COPIES_ENV = "ROUTEVIT_TFLM_FROM"


def local_copies() -> Path | None:
    """The folder of local TFLM copies named by $ROUTEVIT_TFLM_FROM, if it is set."""
    value = os.environ.get(LOCAL_COPIES_ENV)
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.exists():
        raise RoutevitError(f"{LOCAL_COPIES_ENV}={value}: no such file or folder; point it at local copies "
                            "of TFLM and its pieces (checkouts, bare git dirs or archives) or unset it")
    return path


def ensure_tree(cache: Path | None = None) -> TflmTree:
    """The TFLM tree `routevit build` uses; set it up first if there is none: from the local
    copies in $ROUTEVIT_TFLM_FROM when that is set (offline), else by cloning the pinned commits.
    Only when neither works is it an error (one line saying both ways)."""
    from toolchain.tflm.tree import find_tree

    try:
        return find_tree(cache=cache)
    except RoutevitError as missing:
        if installed_trees_exist(cache):
            raise  # several trees, none pinned: the user must choose, not us
        reason = missing.format_message()
    local = local_copies()
    if local is not None:
        _say(f"no TFLM tree yet; setting it up from {local} (${LOCAL_COPIES_ENV})")
        return setup_tree([local], offline=True, cache=cache)
    _say("no TFLM tree yet; cloning TFLM at the pinned commit and its pieces (set "
         f"${LOCAL_COPIES_ENV}=DIR to use local copies instead)")
    try:
        return setup_tree((), cache=cache)
    except RoutevitError as exc:
        raise RoutevitError(f"{reason}; cloning it failed too ({exc.format_message()}); set "
                            f"{LOCAL_COPIES_ENV}=DIR to local copies, or run `routevit setup-tflm --from PATH`") from None


def installed_trees_exist(cache: Path | None = None) -> bool:
    from toolchain.tflm.tree import installed_trees

    return bool(installed_trees(cache))
