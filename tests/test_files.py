"""Which files nodes may read and write: the host's folders, confinement, samples and numbering."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from graphrun import Folders, RunnerHost
from nst_nodes.files import FileRuleError, check_writable, input_path, output_paths, output_stem, write_atomically
from nst_nodes.host import Host, LocalHost


def host(tmp_path: Path, confined: bool) -> RunnerHost:
    (tmp_path / "in").mkdir(exist_ok=True)
    return RunnerHost("cpu", Folders(tmp_path / "in", tmp_path / "out", confined), threading.Event())


def test_both_hosts_of_the_runner_and_plain_python_fit_the_host_interface(tmp_path: Path) -> None:
    assert isinstance(host(tmp_path, True), Host) and isinstance(LocalHost(), Host)


@pytest.mark.parametrize("name", ["../secret.png", "/etc/passwd", "a/../../secret.png", "sub/../../../x.png"])
def test_a_confined_host_refuses_names_outside_its_input_folder(tmp_path: Path, name: str) -> None:
    with pytest.raises(FileRuleError, match="is outside the input folder; name a file inside"):
        input_path(host(tmp_path, confined=True), name)


@pytest.mark.parametrize("prefix", ["../../x", "/tmp/x", "nst/../../x"])
def test_a_confined_host_refuses_prefixes_outside_its_output_folder(tmp_path: Path, prefix: str) -> None:
    with pytest.raises(FileRuleError, match="filename_prefix: .* is outside the output folder"):
        output_stem(host(tmp_path, confined=True), prefix)


def test_names_inside_the_folders_resolve_there_and_the_owners_links_are_followed(tmp_path: Path) -> None:
    confined = host(tmp_path, confined=True)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "in" / "photos").symlink_to(tmp_path / "elsewhere")  # placed by the server's owner
    assert input_path(confined, "photos/a.png") == tmp_path / "in" / "photos" / "a.png"
    assert output_stem(confined, "nst/result") == tmp_path / "out" / "nst" / "result"


def test_plain_paths_without_confinement(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = host(tmp_path, confined=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert input_path(plain, "/etc/hostname") == Path("/etc/hostname")
    assert input_path(plain, "~/x.png") == tmp_path / "x.png"
    assert output_stem(plain, "../up") == tmp_path / "out" / ".." / "up"


def test_the_samples_answer_in_every_host_unless_the_folder_has_its_own(tmp_path: Path, samples: Path) -> None:
    for confined in (True, False):
        assert input_path(host(tmp_path, confined), "nst-samples/tubingen.jpg") == samples / "tubingen.jpg"
    own = tmp_path / "in" / "nst-samples" / "tubingen.jpg"
    own.parent.mkdir()
    own.write_bytes(b"mine")
    assert input_path(host(tmp_path, True), "nst-samples/tubingen.jpg") == own
    missing = input_path(host(tmp_path, True), "nst-samples/other.jpg")
    assert missing == tmp_path / "in" / "nst-samples" / "other.jpg"  # not a sample: reported as not found there


def test_numbering_follows_comfyuis_convention(tmp_path: Path) -> None:
    stem = tmp_path / "nst" / "result"
    assert output_paths(stem, "png", overwrite=False) == [tmp_path / "nst" / "result_00001_.png"]
    stem.parent.mkdir()
    for name in ("result_00001_.png", "result_00007_.png", "result_00009_.jpg", "other_00020_.png"):
        (stem.parent / name).write_text("x")
    assert [p.name for p in output_paths(stem, "png", False, count=2)] == ["result_00008_.png", "result_00009_.png"]
    assert [p.name for p in output_paths(stem, "png", True)] == ["result.png"]
    assert [p.name for p in output_paths(stem, "jpg", True, count=2)] == ["result_00.jpg", "result_01.jpg"]


@pytest.mark.parametrize("prefix", ["", "nst/", "..", "a\x00b"])
def test_unusable_prefixes_are_refused(tmp_path: Path, prefix: str) -> None:
    with pytest.raises(FileRuleError, match="filename_prefix"):
        output_stem(host(tmp_path, confined=False), prefix)


def test_files_are_written_whole_with_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b.png"
    previous = os.umask(0o027)
    try:
        write_atomically(path, lambda file: file.write(b"data"))
    finally:
        os.umask(previous)
    assert path.read_bytes() == b"data" and stat.S_IMODE(path.stat().st_mode) == 0o640

    def failing(file: object) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError):
        write_atomically(path, failing)
    assert path.read_bytes() == b"data" and sorted(p.name for p in path.parent.iterdir()) == ["b.png"]


def test_output_folders_that_cannot_be_written_are_refused_before_any_work(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(FileRuleError, match="afile is a file, so the folder .* cannot be made there"):
        check_writable(tmp_path / "afile" / "sub", "filename_prefix")
    monkeypatch.setattr("nst_nodes.files.os.access", lambda path, mode: False)  # what a read-only folder answers
    with pytest.raises(FileRuleError, match="is not writable; choose another output folder"):
        check_writable(tmp_path / "new" / "deeper", "filename_prefix")


def test_a_name_taken_by_what_a_save_cannot_replace_is_refused_before_any_work(tmp_path: Path) -> None:
    """A folder where a file goes (or a file where a folder of frames goes) passed validation, then failed after
    the work with the operating system's error."""
    from nst_nodes.nodes import NODE_CLASS_MAPPINGS

    runner = host(tmp_path, confined=False)
    (tmp_path / "out" / "clip.mp4").mkdir(parents=True)
    (tmp_path / "out" / "frames").write_text("a file")
    (tmp_path / "models" / "s.safetensors").mkdir(parents=True)
    runner.folders = Folders(tmp_path / "in", tmp_path / "out", False, tmp_path / "models")
    taken = "is a folder, where a file is to be written; remove it or choose another name"
    save_video = NODE_CLASS_MAPPINGS["NSTSaveVideo"].VALIDATE_INPUTS
    assert taken in save_video(filename_prefix="clip", format="mp4", context=runner)
    assert "is a file, where a folder of frames is to be written" in save_video(
        filename_prefix="frames", format="png frames", context=runner
    )
    assert save_video(filename_prefix="clip", format="gif", context=runner) is True
    save_stylizer = NODE_CLASS_MAPPINGS["NSTSaveStylizer"].VALIDATE_INPUTS
    assert taken in save_stylizer(filename_prefix="s", overwrite=True, context=runner)
    assert save_stylizer(filename_prefix="s", overwrite=False, context=runner) is True  # numbered names: s_00001_
    (tmp_path / "out" / "picture.png").mkdir()
    assert taken in NODE_CLASS_MAPPINGS["NSTSaveImage"].VALIDATE_INPUTS(
        filename_prefix="picture", format="png", overwrite=True, context=runner
    )


def test_a_prefix_too_long_for_a_file_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FileRuleError, match="is too long; use at most 240 bytes"):
        output_stem(host(tmp_path, confined=False), "x" * 300)


def test_a_numbered_name_taken_meanwhile_moves_on_to_the_next(tmp_path: Path) -> None:
    taken = tmp_path / "result_00004_.png"
    taken.write_bytes(b"another writer's")  # between our choice of the number and our write
    written = write_atomically(taken, lambda file: file.write(b"ours"), overwrite=False)
    assert written.name == "result_00005_.png" and written.read_bytes() == b"ours"
    assert taken.read_bytes() == b"another writer's"


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_a_folder_that_refuses_new_files_is_refused_even_for_root(tmp_path: Path, capsys) -> None:
    from graphrun.cli import main

    with pytest.raises(FileRuleError, match="the folder /proc is not writable; choose another output folder"):
        check_writable(Path("/proc/nst"), "filename_prefix")
    check_writable(tmp_path / "new", "filename_prefix")
    assert list(tmp_path.iterdir()) == []  # the probe is removed
    assert main(["validate", "graphs/gatys.json", "--output-dir", "/proc"]) == 2
    assert "node 17 (NSTSaveImage): filename_prefix: the folder /proc is not writable" in capsys.readouterr().err
