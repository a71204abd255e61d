"""Local copies of TFLM pieces: git repositories (bare or checkout), archives, plain folders.

A copy is matched to a piece by its content (marker files), then checked against the pin:
git copies by commit, GitHub archives by MD5 / embedded commit / folder name, plain folders
by folder name (or, for flatbuffers, the version in base.h).
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from toolchain.tflm.pieces import Pin, Piece

log = logging.getLogger("routevit")

ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")


def run(cmd, **kw) -> subprocess.CompletedProcess:
    """subprocess.run with logging; text mode, captured output unless told otherwise."""
    log.debug("run: %s", " ".join(str(c) for c in cmd))
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    return subprocess.run([str(c) for c in cmd], **kw)


@dataclass
class Match:
    """How a copy relates to a piece: 'ok' (right content, right version), 'wrong-version', 'no'."""

    status: str
    commit: str | None = None     # full sha when known
    verified: str | None = None   # how the version was checked
    detail: str = ""


class Copy:
    kind = "?"

    def __init__(self, path: Path):
        self.path = Path(path)

    def match(self, piece: Piece, pin: Pin) -> Match:
        raise NotImplementedError

    def export(self, piece: Piece, match: Match, dest: Path) -> None:
        raise NotImplementedError

    def __repr__(self):
        return f"{self.kind}:{self.path}"


class GitCopy(Copy):
    """A bare git dir or a checkout; files are taken from the pinned commit, not the work tree."""

    kind = "git"

    def __init__(self, path: Path):
        super().__init__(path)
        dot_git = self.path / ".git"
        self.git_dir = dot_git if dot_git.exists() else self.path

    def git(self, *args, **kw):
        return run(["git", "--git-dir", self.git_dir, *args], **kw)

    def resolve(self, ref: str) -> str | None:
        r = self.git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
        return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else None

    def has_files(self, commit: str, paths) -> bool:
        for p in paths:
            if self.git("cat-file", "-e", f"{commit}:{p}").returncode != 0:
                return False
        return True

    def match(self, piece, pin):
        commit = self.resolve(pin.ref)
        if commit and self.has_files(commit, piece.markers):
            return Match("ok", commit, "git")
        head = self.resolve("HEAD")
        if head and self.has_files(head, piece.markers):
            return Match("wrong-version", head, None,
                         f"{self.path} holds {piece.repo} but not {pin.short}")
        return Match("no")

    def export(self, piece, match, dest):
        dest.mkdir(parents=True, exist_ok=True)
        archive = subprocess.Popen(
            ["git", "--git-dir", str(self.git_dir), "archive", "--format=tar", match.commit],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        log.debug("run: git --git-dir %s archive %s | tar -x -C %s", self.git_dir, match.commit, dest)
        untar = subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout,
                               capture_output=True, text=True)
        archive.stdout.close()
        err = archive.stderr.read().decode(errors="replace")
        if archive.wait() != 0 or untar.returncode != 0:
            raise RuntimeError(f"git archive {match.commit} from {self.git_dir} failed: "
                               f"{err.strip() or untar.stderr.strip()}")


def _version_from_flatbuffers_base(text: str) -> str | None:
    parts = [re.search(rf"#define FLATBUFFERS_VERSION_{k}\s+(\d+)", text) for k in
             ("MAJOR", "MINOR", "REVISION")]
    return ".".join(p.group(1) for p in parts) if all(parts) else None


def _name_carries(name: str, piece: Piece, pin: Pin) -> bool:
    """Does a folder/archive name state this version (e.g. gemmlowp-719139ce..., flatbuffers-25.9.23)?"""
    name = name.lower()
    if pin.is_sha:
        return pin.ref[:12].lower() in name
    tag = re.sub(r"^v(?=\d)", "", pin.ref).lower()
    return name.endswith(tag) or name.endswith(pin.ref.lower())


class ArchiveCopy(Copy):
    """A .zip / .tar.* archive with one top folder, e.g. GitHub's `archive/<sha>.zip`."""

    kind = "archive"

    def __init__(self, path: Path):
        super().__init__(path)
        self._names = None
        self._top = None
        self._embedded_commit = None

    def _load(self):
        if self._names is not None:
            return
        try:
            if self.path.suffix == ".zip":
                with zipfile.ZipFile(self.path) as z:
                    names = z.namelist()
                    comment = z.comment.decode(errors="replace").strip()
            else:
                with tarfile.open(self.path) as t:
                    names = t.getnames()
                    comment = (t.pax_headers or {}).get("comment", "").strip()
        except (zipfile.BadZipFile, tarfile.TarError, OSError) as e:
            log.debug("%s: not a readable archive (%s)", self.path, e)
            names, comment = [], ""
        tops = {PurePosixPath(n).parts[0] for n in names if PurePosixPath(n).parts}
        self._top = tops.pop() if len(tops) == 1 else ""
        prefix = f"{self._top}/" if self._top else ""
        self._names = {n[len(prefix):].rstrip("/") for n in names if n.startswith(prefix)}
        # GitHub writes the commit sha as the zip comment / pax 'comment' header.
        self._embedded_commit = comment if re.fullmatch(r"[0-9a-f]{40}", comment) else None

    def _read(self, rel: str) -> str:
        inner = f"{self._top}/{rel}" if self._top else rel
        if self.path.suffix == ".zip":
            with zipfile.ZipFile(self.path) as z:
                return z.read(inner).decode(errors="replace")
        with tarfile.open(self.path) as t:
            return t.extractfile(inner).read().decode(errors="replace")

    def match(self, piece, pin):
        self._load()
        if not all(m in self._names for m in piece.markers):
            return Match("no")
        commit = self._embedded_commit
        if pin.md5 and _md5(self.path) == pin.md5:
            return Match("ok", commit or (pin.ref if pin.is_sha and len(pin.ref) == 40 else None),
                         "md5 (TFLM's checksum)")
        if commit and pin.is_sha:
            if commit.startswith(pin.ref):
                return Match("ok", commit, "archive commit")
            return Match("wrong-version", commit, None,
                         f"{self.path} is {piece.repo} at {commit[:8]}, not {pin.short}")
        if piece.name == "flatbuffers" and not pin.is_sha:
            version = _version_from_flatbuffers_base(self._read("include/flatbuffers/base.h"))
            if version and version == re.sub(r"^v", "", pin.ref):
                return Match("ok", commit, "version in base.h")
            return Match("wrong-version", commit, None,
                         f"{self.path} is flatbuffers {version}, not {pin.ref}")
        if _name_carries(self._top or self.path.name, piece, pin):
            return Match("ok", commit or (pin.ref if pin.is_sha and len(pin.ref) == 40 else None),
                         "archive folder name")
        return Match("wrong-version", commit, None,
                     f"{self.path} holds {piece.repo} but nothing shows it is {pin.short}")

    def export(self, piece, match, dest):
        self._load()
        dest.mkdir(parents=True, exist_ok=True)
        prefix = f"{self._top}/" if self._top else ""
        if self.path.suffix == ".zip":
            with zipfile.ZipFile(self.path) as z:
                for info in z.infolist():
                    rel = _safe_rel(info.filename, prefix)
                    if rel is None:
                        continue
                    target = dest / rel
                    if info.is_dir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with z.open(info) as src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out)
                    mode = (info.external_attr >> 16) & 0o777
                    if mode:
                        os.chmod(target, mode)
        else:
            with tarfile.open(self.path) as t:
                members = []
                for m in t.getmembers():
                    rel = _safe_rel(m.name, prefix)
                    if rel is None or not (m.isfile() or m.isdir() or m.issym()):
                        continue
                    m.name = rel
                    members.append(m)
                t.extractall(dest, members=members, filter="data")


def _safe_rel(name: str, prefix: str) -> str | None:
    if not name.startswith(prefix):
        return None
    rel = name[len(prefix):]
    if not rel or rel.startswith("/") or ".." in PurePosixPath(rel).parts:
        return None
    return rel


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class DirCopy(Copy):
    """A plain folder (no git): versions can only be read from its name or version headers."""

    kind = "dir"

    def match(self, piece, pin):
        if not all((self.path / m).is_file() for m in piece.markers):
            return Match("no")
        if piece.name == "flatbuffers" and not pin.is_sha:
            version = _version_from_flatbuffers_base(
                (self.path / "include/flatbuffers/base.h").read_text(errors="replace"))
            if version == re.sub(r"^v", "", pin.ref):
                return Match("ok", None, "version in base.h")
            return Match("wrong-version", None, None,
                         f"{self.path} is flatbuffers {version}, not {pin.ref}")
        if _name_carries(self.path.name, piece, pin):
            return Match("ok", pin.ref if pin.is_sha and len(pin.ref) == 40 else None, "folder name")
        return Match("wrong-version", None, None,
                     f"{self.path} holds {piece.repo} but nothing shows it is {pin.short} "
                     f"(name the folder {pin.archive_dir(piece)} or give a git clone)")

    def export(self, piece, match, dest):
        shutil.copytree(self.path, dest, symlinks=True, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(".git"))


def _is_git(path: Path) -> bool:
    if (path / ".git").exists():
        return True
    return (path / "HEAD").is_file() and (path / "objects").is_dir() and (path / "refs").is_dir()


def _is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _looks_like_piece(path: Path, pieces) -> bool:
    return any(all((path / m).is_file() for m in p.markers) for p in pieces)


def find_copies(path: Path, pieces, depth: int = 2) -> list[Copy]:
    """Copies at `path`: the path itself if it is one, else the ones in its subfolders."""
    path = Path(path)
    if _is_archive(path):
        return [ArchiveCopy(path)]
    if not path.is_dir():
        return []
    if _is_git(path):
        return [GitCopy(path)]
    if _looks_like_piece(path, pieces):
        return [DirCopy(path)]
    found: list[Copy] = []
    if depth > 0:
        for child in sorted(path.iterdir()):
            if child.name.startswith(".") or child.is_symlink():
                continue
            found += find_copies(child, pieces, depth - 1)
    return found
