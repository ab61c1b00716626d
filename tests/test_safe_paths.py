"""Safe names and paths: one validator refuses a dataset name before anything is created anywhere
(Label Studio project, record, folder, lock, .gitignore line); the data root and lock files stay
inside the project; a planted link is never followed; the swap into place removes only the folder
it moved aside, and never replaces a folder poseops did not make; records keep absolute spec paths.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest
from conftest import PERSON_SPEC

from poseops.datasets import create_dataset, load_record, record_path
from poseops.pull import dataset_lock
from poseops.safepaths import UnsafePath, check_dataset_name, swap_into_place
from poseops.settings import Settings

BAD_NAMES = ["a\nb", "a\\b", "/../x", "../x", "x/y", ".hidden", "-flag", "", "a b", "caf\u00e9", "x" * 65,
             "k" * 100_000, "a\x00b", "name.json"]


@pytest.mark.parametrize("name", BAD_NAMES, ids=range(len(BAD_NAMES)))
def test_bad_dataset_names_are_refused_saying_what_is_allowed(name):
    with pytest.raises(UnsafePath, match="use 1 to 64 letters, digits") as refused:
        check_dataset_name(name)
    assert len(str(refused.value)) < 400  # a huge name is not echoed whole


def test_good_names_pass():
    for name in ("demo-people", "a", "Mice_2024", "x" * 64):
        assert check_dataset_name(name) == name


class _Untouchable:
    """A Label Studio client that must not be used: any call fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"Label Studio was called ({name}) for a refused name")


def test_a_refused_name_creates_nothing_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = Settings(home=tmp_path / "home")
    for name in ("a\nb", "/../x"):
        with pytest.raises(UnsafePath):
            create_dataset(_Untouchable(), settings, name, PERSON_SPEC)
        with pytest.raises(UnsafePath):
            record_path(settings, name)
        with pytest.raises(UnsafePath), dataset_lock(Path("data"), name):
            pass
    assert list(tmp_path.iterdir()) == []  # no record, no data folder, no lock, no .gitignore


def test_the_data_root_must_be_inside_the_project(tmp_path, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    outside = tmp_path / "elsewhere"
    (outside / "people").mkdir(parents=True)
    (outside / "people" / "keep.txt").write_text("mine")
    monkeypatch.chdir(project)
    for root in (outside, Path("../elsewhere")):
        with pytest.raises(UnsafePath, match="outside the project"), dataset_lock(root, "people"):
            pass
    assert sorted(p.name for p in outside.iterdir()) == ["people"]
    assert (outside / "people" / "keep.txt").read_text() == "mine"
    with dataset_lock(Path("data"), "people"):
        assert (project / "data" / ".people.lock").is_file()


def test_a_link_planted_as_the_lock_file_is_refused_and_its_target_untouched(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    precious = tmp_path / "precious.txt"
    precious.write_text("do not truncate")
    (tmp_path / "data").mkdir()
    os.symlink(precious, tmp_path / "data" / ".people.lock")
    with pytest.raises(UnsafePath, match="link"), dataset_lock(Path("data"), "people"):
        pass
    assert precious.read_text() == "do not truncate"


def made_by_pull(folder: Path, marker: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"marker": marker}))
    return folder


def test_the_swap_removes_only_the_folder_it_moved_aside(tmp_path):
    data = tmp_path / "data"
    target = made_by_pull(data / "people", "old")
    someone_elses = data / ".people.old"  # the name an earlier version of the swap used: not ours to remove
    someone_elses.mkdir()
    (someone_elses / "keep.txt").write_text("mine")
    swap_into_place(made_by_pull(tmp_path / "new", "new"), target)
    assert json.loads((target / "manifest.json").read_text()) == {"marker": "new"}
    assert (someone_elses / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in data.iterdir()) == [".people.old", "people"]


def test_the_swap_never_replaces_a_folder_poseops_did_not_make(tmp_path):
    target = tmp_path / "data" / "people"
    target.mkdir(parents=True)
    (target / "notes.txt").write_text("mine")
    new = made_by_pull(tmp_path / "new", "new")
    with pytest.raises(UnsafePath, match="not made by `poseops pull`"):
        swap_into_place(new, target)
    assert (target / "notes.txt").read_text() == "mine" and new.is_dir()


@pytest.mark.integration
def test_the_record_keeps_the_specs_absolute_path(label_studio, tmp_path, monkeypatch):
    from poseops.labelstudio import LabelStudioClient

    monkeypatch.chdir(PERSON_SPEC.parent)
    name = f"abs-{uuid.uuid4().hex[:6]}"
    with LabelStudioClient(label_studio) as client:
        create_dataset(client, label_studio, name, Path(PERSON_SPEC.name))  # typed relative to this folder
    monkeypatch.chdir(tmp_path)  # a later command, run from elsewhere, finds the same spec
    record = load_record(label_studio, name)
    assert Path(record.skeleton).is_absolute() and Path(record.skeleton) == PERSON_SPEC.resolve()
    assert record.skeleton_spec().keypoint_count == 17
