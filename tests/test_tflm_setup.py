"""`routevit setup-tflm`: a TFLM tree with TFLM's pinned pieces, from local copies or a clone.

Most tests use small stand-in repositories made here (a TFLM tree whose download scripts pin
them, and one repo per piece), so they need neither the network nor the mirrors; one test
sets up the real tree from /work/.mirror into a temp cache when that folder exists.
"""
from __future__ import annotations

import difflib
import json
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tflm_support import mirror_root
from toolchain.cli import main as cli
from toolchain.tflm.pieces import DOWNLOADS, PINNED_COMMIT, read_pins

GIT_ID = ["-c", "user.name=routevit-test", "-c", "user.email=test@routevit.invalid"]
BASE_H = ("#ifndef FLATBUFFERS_BASE_H_\n#define FLATBUFFERS_BASE_H_\n"
          "#define FLATBUFFERS_VERSION_MAJOR 25\n#define FLATBUFFERS_VERSION_MINOR 9\n"
          "#define FLATBUFFERS_VERSION_REVISION 23\n#endif\n")
PATCHED_BASE_H = BASE_H.replace("#define FLATBUFFERS_BASE_H_\n",
                                "#define FLATBUFFERS_BASE_H_\n#define FLATBUFFERS_LOCALE_INDEPENDENT 0\n")

PIECE_FILES = {
    "google+flatbuffers": {"include/flatbuffers/flatbuffers.h": "// fb\n", "include/flatbuffers/base.h": BASE_H},
    "google+gemmlowp": {"fixedpoint/fixedpoint.h": "// fp\n", "internal/detect_platform.h": "// dp\n"},
    "google+ruy": {"ruy/profiler/instrumentation.h": "// ruy\n"},
    "ARM-software+CMSIS_6": {"CMSIS/Core/Include/cmsis_compiler.h": "// cc\n",
                             "CMSIS/Core/Include/core_cm4.h": "// cm4\n",
                             "CMSIS/Core/Include/m-profile/cmsis_gcc_m.h": "// m-profile\n"},
    "ARM-software+Cortex_DFP": {"Device/ARMCM4/Include/ARMCM4.h": "// ARMCM4\n"},
    "ARM-software+CMSIS-NN": {"Include/arm_nnfunctions.h": "// nn\n"},
}


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def git_repo(path: Path, files: dict, tag: str | None = None) -> str:
    """A one-commit repo holding `files`; returns the commit sha."""
    path.mkdir(parents=True)
    for rel, text in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    subprocess.run(["git", "-C", str(path), "add", "-A"], check=True)
    subprocess.run(["git", *GIT_ID, "-C", str(path), "commit", "-q", "-m", "stand-in"], check=True)
    if tag:
        subprocess.run(["git", "-C", str(path), "tag", tag], check=True)
    return subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()


def tflm_files(shas: dict, flatbuffers_tag: str = "v25.9.23") -> dict:
    """A stand-in TFLM tree whose download scripts pin `shas`, written the way TFLM writes them."""
    patch = "".join(difflib.unified_diff(BASE_H.splitlines(True), PATCHED_BASE_H.splitlines(True),
                                         "a/include/flatbuffers/base.h", "b/include/flatbuffers/base.h"))
    make = "tensorflow/lite/micro/tools/make"
    return {
        "tensorflow/lite/micro/micro_interpreter.h": "// interpreter\n",
        f"{make}/Makefile": "# stand-in\n",
        f"{make}/flatbuffers.patch": "diff --git a/include/flatbuffers/base.h b/include/flatbuffers/base.h\n" + patch,
        f"{make}/third_party_downloads.inc": (
            f'GEMMLOWP_URL := "https://github.com/google/gemmlowp/archive/{shas["google+gemmlowp"]}.zip"\n'
            'GEMMLOWP_MD5 := "00000000000000000000000000000000"\n\n'
            f'RUY_URL="https://github.com/google/ruy/archive/{shas["google+ruy"]}.zip"\n'
            'RUY_MD5="00000000000000000000000000000000"\n'),
        f"{make}/flatbuffers_download.sh": (
            "#!/usr/bin/env bash\nset -e\n"
            f'  ZIP_PREFIX="{flatbuffers_tag}"\n'
            '  FLATBUFFERS_URL="https://github.com/google/flatbuffers/archive/refs/tags/${ZIP_PREFIX}.zip"\n'
            '  FLATBUFFERS_MD5="00000000000000000000000000000000"\n'
            '  mv "${TEMPDIR}/flatbuffers-${ZIP_PREFIX#v}" x\n'),
        f"{make}/ext_libs/cmsis_download.sh": (
            f'  ZIP_PREFIX="{shas["ARM-software+CMSIS_6"]}"\n'
            '  CMSIS_URL="http://github.com/ARM-software/CMSIS_6/archive/${ZIP_PREFIX}.zip"\n'
            '  CMSIS_MD5="00000000000000000000000000000000"\n'
            f'  ZIP_PREFIX="{shas["ARM-software+Cortex_DFP"]}"\n'
            '  CMSIS_DFP_URL="http://github.com/ARM-software/Cortex_DFP/archive/${ZIP_PREFIX}.zip"\n'
            '  CMSIS_DFP_MD5="00000000000000000000000000000000"\n'),
        f"{make}/ext_libs/cmsis_nn_download.sh": (
            f'ZIP_PREFIX_NN="{shas["ARM-software+CMSIS-NN"]}"\n'
            'CMSIS_NN_URL="http://github.com/ARM-software/CMSIS-NN/archive/${ZIP_PREFIX_NN}.zip"\n'
            'CMSIS_NN_MD5="00000000000000000000000000000000"\n'),
    }


@pytest.fixture
def stand_ins(tmp_path):
    """tmp/copies/<owner>+<name>/: checkouts of TFLM and every piece; returns (folder, shas)."""
    root = tmp_path / "copies"
    shas = {name: git_repo(root / name, files, tag="v25.9.23" if name == "google+flatbuffers" else None)
            for name, files in PIECE_FILES.items()}
    shas["tensorflow+tflite-micro"] = git_repo(root / "tensorflow+tflite-micro", tflm_files(shas))
    return root, shas


def leftovers(cache: Path) -> list[str]:
    d = cache / "tflm"
    return sorted(p.name for p in d.iterdir() if p.name.startswith(".") and p.is_dir()) if d.is_dir() else []


def test_pins_come_from_the_trees_own_download_scripts(stand_ins):
    root, shas = stand_ins
    pins = read_pins(root / "tensorflow+tflite-micro")
    assert pins["flatbuffers"].ref == "v25.9.23"
    assert pins["gemmlowp"].ref == shas["google+gemmlowp"] and pins["ruy"].ref == shas["google+ruy"]
    assert pins["cmsis"].ref == shas["ARM-software+CMSIS_6"]
    assert pins["cortex_dfp"].ref == shas["ARM-software+Cortex_DFP"]
    assert pins["cmsis_nn"].ref == shas["ARM-software+CMSIS-NN"]


def test_setup_from_a_folder_of_local_copies(stand_ins, tmp_path):
    root, shas = stand_ins
    cache = tmp_path / "cache"
    tflm_sha = shas["tensorflow+tflite-micro"]
    result = invoke("setup-tflm", "--from", root, "--offline", "--commit", tflm_sha, "--cache", cache, "--json")
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    tree = Path(manifest["path"])
    assert tree == cache / "tflm" / tflm_sha
    assert json.loads((tree / "tree.json").read_text())["commit"] == tflm_sha
    pieces = manifest["pieces"]
    for name, piece in (("google+gemmlowp", "gemmlowp"), ("google+ruy", "ruy"), ("ARM-software+CMSIS_6", "cmsis"),
                        ("ARM-software+Cortex_DFP", "cortex_dfp"), ("ARM-software+CMSIS-NN", "cmsis_nn"),
                        ("google+flatbuffers", "flatbuffers")):
        assert pieces[piece]["commit"] == shas[name] and pieces[piece]["verified"] == "git"
        assert pieces[piece]["source"] == f"git:{root / name}"
    # Laid out where TFLM's Makefile expects its downloads; Cortex_DFP inside cmsis.
    assert (tree / DOWNLOADS / "gemmlowp/fixedpoint/fixedpoint.h").is_file()
    assert (tree / DOWNLOADS / "cmsis/Cortex_DFP/Device/ARMCM4/Include/ARMCM4.h").is_file()
    assert (tree / DOWNLOADS / "cmsis_nn/Include/arm_nnfunctions.h").is_file()
    # TFLM's flatbuffers patch is applied, as its download script does.
    assert (tree / DOWNLOADS / "flatbuffers/include/flatbuffers/base.h").read_text() == PATCHED_BASE_H
    assert pieces["flatbuffers"]["patch"].startswith("applied")
    # m-profile headers are reached through the CMSIS Core include dir, not copied elsewhere.
    assert f"{DOWNLOADS}/cmsis/CMSIS/Core/Include" in manifest["include_dirs"]
    assert (tree / DOWNLOADS / "cmsis/CMSIS/Core/Include/m-profile/cmsis_gcc_m.h").is_file()
    assert leftovers(cache) == []
    again = invoke("setup-tflm", "--from", root, "--offline", "--commit", tflm_sha, "--cache", cache)
    assert again.exit_code == 0 and "already set up" in again.stderr


def test_setup_online_clones_through_the_url_template(stand_ins, tmp_path):
    root, shas = stand_ins
    cache = tmp_path / "cache"
    result = invoke("setup-tflm", "--commit", shas["tensorflow+tflite-micro"], "--cache", cache,
                    "--git-url", f"file://{root}/{{owner}}+{{name}}", "--json")
    assert result.exit_code == 0, result.output
    pieces = json.loads(result.stdout)["pieces"]
    assert pieces["ruy"]["commit"] == shas["google+ruy"]
    assert pieces["ruy"]["source"] == f"git clone file://{root}/google+ruy"
    assert "fetching google/ruy" in result.stderr


def test_missing_pieces_are_named_with_how_to_provide_them(stand_ins, tmp_path):
    root, shas = stand_ins
    cache = tmp_path / "cache"
    result = invoke("setup-tflm", "--from", root / "tensorflow+tflite-micro", "--from", root / "google+ruy",
                    "--offline", "--commit", shas["tensorflow+tflite-micro"], "--cache", cache)
    assert result.exit_code == 2
    error = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "Traceback" not in result.output
    message = error[0]
    for repo, name in (("google/gemmlowp", "google+gemmlowp"), ("ARM-software/CMSIS_6", "ARM-software+CMSIS_6"),
                       ("ARM-software/Cortex_DFP", "ARM-software+Cortex_DFP"),
                       ("ARM-software/CMSIS-NN", "ARM-software+CMSIS-NN")):
        assert f"{repo} @ {shas[name][:8]}" in message
    assert "google/flatbuffers @ v25.9.23" in message and "google/ruy" not in message
    assert "--from PATH" in message and "without --offline" in message
    assert not (cache / "tflm" / shas["tensorflow+tflite-micro"]).exists() and leftovers(cache) == []


def test_a_missing_tflm_needs_no_copies_to_be_reported(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = invoke("setup-tflm", "--from", empty, "--offline", "--cache", tmp_path / "cache")
    assert result.exit_code == 2 and "holds no TFLM piece" in result.stderr
    result = invoke("setup-tflm", "--offline", "--cache", tmp_path / "cache")
    assert result.exit_code == 2 and "--offline needs --from" in result.stderr
    result = invoke("setup-tflm", "--from", tmp_path / "nowhere", "--cache", tmp_path / "cache")
    assert result.exit_code == 2 and "does not exist" in result.stderr


def test_a_copy_at_another_version_is_refused(stand_ins, tmp_path):
    root, shas = stand_ins
    # TFLM at a second commit pins a ruy commit the ruy copy does not have.
    tflm = root / "tensorflow+tflite-micro"
    pinned = dict(shas, **{"google+ruy": "ab" * 20})
    for rel, text in tflm_files(pinned).items():
        (tflm / rel).write_text(text)
    subprocess.run(["git", *GIT_ID, "-C", str(tflm), "commit", "-q", "-am", "pin another ruy"], check=True)
    result = invoke("setup-tflm", "--from", root, "--offline", "--commit", "HEAD", "--cache", tmp_path / "cache")
    assert result.exit_code == 2
    assert f"{root / 'google+ruy'} holds google/ruy but not abababab" in result.stderr


def test_archives_are_identified_by_content_and_verified(stand_ins, tmp_path):
    root, shas = stand_ins
    archives = tmp_path / "archives"
    archives.mkdir()
    for i, (name, sha) in enumerate(sorted(shas.items())):
        repo = name.split("+")[1]
        top = f"{repo}-25.9.23" if repo == "flatbuffers" else f"{repo}-{sha}"
        fmt = "zip" if i % 2 else "tar.gz"
        # Named unlike GitHub on purpose: the content identifies the piece.
        subprocess.run(["git", "-C", str(root / name), "archive", f"--format={fmt}", f"--prefix={top}/",
                        "-o", str(archives / f"download{i}.{fmt}"), sha], check=True)
    cache = tmp_path / "cache"
    result = invoke("setup-tflm", "--from", archives, "--offline", "--commit", shas["tensorflow+tflite-micro"],
                    "--cache", cache, "--json")
    assert result.exit_code == 0, result.output
    pieces = json.loads(result.stdout)["pieces"]
    assert pieces["gemmlowp"]["verified"] == "archive commit"    # git archive stores the commit id
    assert pieces["gemmlowp"]["commit"] == shas["google+gemmlowp"]
    assert pieces["flatbuffers"]["verified"] == "version in base.h"
    tree = Path(json.loads(result.stdout)["path"])
    assert (tree / DOWNLOADS / "ruy/ruy/profiler/instrumentation.h").is_file()


def test_a_plain_folder_must_say_its_version(stand_ins, tmp_path):
    root, shas = stand_ins
    plain = tmp_path / "plain" / "gemmlowp"
    subprocess.run(["git", "clone", "-q", str(root / "google+gemmlowp"), str(plain)], check=True)
    subprocess.run(["rm", "-rf", str(plain / ".git")], check=True)
    others = [root / n for n in shas if n != "google+gemmlowp"]
    args = ["setup-tflm", "--offline", "--commit", shas["tensorflow+tflite-micro"], "--cache", tmp_path / "cache"]
    result = invoke(*args, *sum((["--from", p] for p in others), []), "--from", plain)
    assert result.exit_code == 2
    assert f"name the folder gemmlowp-{shas['google+gemmlowp']}" in result.stderr
    named = plain.with_name(f"gemmlowp-{shas['google+gemmlowp']}")
    plain.rename(named)
    result = invoke(*args, *sum((["--from", p] for p in others), []), "--from", named, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["pieces"]["gemmlowp"]["verified"] == "folder name"


@pytest.mark.skipif(mirror_root() is None, reason="no local TFLM copies: set ROUTEVIT_TFLM_FROM=DIR (CI: "
                    "../shared/third_party) or ROUTEVIT_TFLM_MIRROR to a folder of owner+name/repo bare git dirs")
def test_setup_the_real_tree_from_the_mirrors(tmp_path):
    cache = tmp_path / "cache"
    started = time.monotonic()
    result = invoke("setup-tflm", "--from", mirror_root(), "--offline", "--cache", cache, "--json")
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    tree = Path(manifest["path"])
    assert manifest["commit"] == PINNED_COMMIT
    # TFLM's own pins (ARCHITECTURE.md), recorded as full commits.
    commits = {k: v["commit"] for k, v in manifest["pieces"].items()}
    assert commits["flatbuffers"].startswith("18724097") and manifest["pieces"]["flatbuffers"]["pin"] == "v25.9.23"
    assert commits["gemmlowp"].startswith("719139ce") and commits["ruy"].startswith("d3712831")
    assert commits["cmsis"].startswith("5782d6f8") and commits["cortex_dfp"].startswith("c2c70a97")
    assert commits["cmsis_nn"].startswith("4ab83cc3")
    pins = read_pins(tree)
    assert pins["gemmlowp"].md5 == "7e8191b24853d75de2af87622ad293ba"
    base_h = (tree / DOWNLOADS / "flatbuffers/include/flatbuffers/base.h").read_text()
    assert "#define FLATBUFFERS_LOCALE_INDEPENDENT 0" in base_h        # TFLM's patch
    assert "FLATBUFFERS_VERSION_MINOR 9" in base_h
    # core_cm4.h includes m-profile/ headers relative to CMSIS/Core/Include: all present there.
    core = tree / DOWNLOADS / "cmsis/CMSIS/Core/Include"
    assert (core / "m-profile/cmsis_gcc_m.h").is_file() and (core / "m-profile/armv7m_mpu.h").is_file()
    assert time.monotonic() - started < 120
    again = invoke("setup-tflm", "--from", mirror_root(), "--offline", "--cache", cache)
    assert again.exit_code == 0 and "already set up" in again.stderr and leftovers(cache) == []
