"""The command line: help everywhere, clear one-line errors (offline)."""

from __future__ import annotations

import subprocess
import sys

import typer.main
import typer.testing
from conftest import PERSON_SPEC

from poseops.cli import app


def all_command_paths(group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            paths += all_command_paths(command, (*prefix, name))
        else:
            paths.append((*prefix, name))
    return paths


def poseops(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "poseops.cli", *args], capture_output=True, text=True, timeout=120)


def test_every_command_has_help():
    root = typer.main.get_command(app)
    paths = all_command_paths(root)
    assert ("labelstudio", "up") in paths and ("dataset", "upload") in paths and ("label-config",) in paths
    runner = typer.testing.CliRunner()
    for path in paths:
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage" in result.output


def test_label_config_prints_the_xml():
    result = poseops("label-config", str(PERSON_SPEC))
    assert result.returncode == 0
    assert result.stdout.startswith("<View>") and result.stdout.count("model_index=") == 17


def test_a_bad_spec_is_one_clear_line(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text("classes:\n  - name: a\n    keypoints: [x, y]\n    connections:\n      - [x, elbow]\n")
    result = poseops("label-config", str(spec))
    assert result.returncode == 1
    assert f"{spec}:5: connection [x, elbow] of class 'a' names unknown keypoint 'elbow'" in result.stderr
    assert "Traceback" not in result.stderr


def test_convert_an_export_from_the_command_line(tmp_path):
    from conftest import SHARED_DATASETS

    from poseops.coco import read_yolo_pose, to_label_studio_tasks
    from poseops.skeleton import load_skeleton

    coco8 = SHARED_DATASETS / "coco8-pose"
    images = read_yolo_pose(coco8, "train", ["person"])
    tasks = to_label_studio_tasks(load_skeleton(PERSON_SPEC), images, image_url=lambda im: f"/data/upload/3/0a1b2c3d-{im.file_name}")
    tasks.append({"id": 99, "data": {"image": "../../etc/passwd"}, "annotations": [{"id": 99, "result": []}]})
    export = tmp_path / "export.json"
    export.write_text(__import__("json").dumps(tasks))
    out = tmp_path / "dataset"
    result = poseops("convert", str(export), "--skeleton", str(PERSON_SPEC), "--images", str(coco8 / "images" / "train"),
                     "--out", str(out), "--val-fraction", "0.5")
    assert result.returncode == 0, result.stderr
    assert "no image in" in result.stderr and "99" in result.stderr
    labels = list((out / "labels").rglob("*.txt"))
    assert len(labels) == 4 and sum(len(p.read_text().splitlines()) for p in labels) == sum(len(i.poses) for i in images)
    assert result.stdout.startswith(f"wrote {out}")
    assert not any("passwd" in str(p) for p in out.rglob("*"))


def test_service_commands_say_when_nothing_is_deployed(tmp_path):
    from conftest import free_port

    env = {**__import__("os").environ, "POSEOPS_HOME": str(tmp_path / "home"),
           "POSEOPS_SERVICE_URL": f"http://127.0.0.1:{free_port()}"}
    run = [sys.executable, "-m", "poseops.cli", "service"]
    up = subprocess.run([*run, "up"], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert up.returncode == 1 and "Traceback" not in up.stderr
    assert "no Bento deployed yet" in up.stderr and "poseops deploy" in up.stderr
    status = subprocess.run([*run, "status"], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert status.returncode == 1 and "not answering" in status.stdout
    down = subprocess.run([*run, "down"], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert down.returncode == 0 and "nothing to stop: the detection service started by poseops is not running" in down.stdout


def test_every_command_exits_1_on_a_known_problem_and_prints_one_line(tmp_path):
    """One policy for every command: a PoseopsError is one `error:` line and exit 1 (predict, api-key, train, ...)."""
    keys = tmp_path / "keys.yaml"
    keys.write_text("keys: 5\n")
    cases = [
        ("predict", str(tmp_path / "nothing-here"), "--out", str(tmp_path / "x.jsonl")),
        ("api-key", "alice", "--keys-file", str(keys)),
        ("train", "--root", str(tmp_path)),
        ("deploy", "--params", str(tmp_path / "params.yaml"), "--model", "runs:/not-a-model"),
    ]
    (tmp_path / "nothing-here").mkdir()
    for args in cases:
        result = subprocess.run([sys.executable, "-m", "poseops.cli", *args], capture_output=True, text=True,
                                timeout=300, env={**__import__("os").environ, "POSEOPS_HOME": str(tmp_path / "home")},
                                cwd=tmp_path)
        lines = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("error:")]
        assert result.returncode == 1 and len(lines) == 1, (args, result.stdout[-2000:], result.stderr[-2000:])
        assert "Traceback" not in result.stderr, (args, result.stderr[-3000:])
