"""Training through the DVC pipeline, tracked in MLflow: real DVC in a real git repo, a real MLflow
SQLite store, real (tiny, CPU) Ultralytics trainings.

Trainings are shared through module-scoped fixtures, each done once:
- `pipeline`: `dvc repro` in a fresh git+DVC repo, 1 epoch at imgsz 160 from the COCO-pretrained
  yolo11n-pose with default (aggressive) warm-up: a poor model, registered as a version.
- `resumed`: 2 epochs with a learning rate near 0 (so the pretrained quality stays), interrupted
  after epoch 1 and resumed from last.pt in a new run: a good model, registered as a version.
- `fine_tuned`: 1 epoch from `models:/…@champion`, recorded as its parent.
"""

from __future__ import annotations

import ast
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import SHARED_DATASETS

from poseops import tracking, training
from poseops.dvc import run_dvc
from poseops.params import load_params
from poseops.skeleton import load_skeleton

ROOT = Path(__file__).resolve().parents[1]
MODEL = "poseops-pose"
FLIP_IDX = [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]
TINY = {"train.epochs": 1, "train.batch": 4, "train.imgsz": 160, "train.workers": 0, "mlflow.registered_model": MODEL}
# Keeps the pretrained weights almost unchanged: a model that is clearly better than `pipeline`'s.
GENTLE = {"train.optimizer": "SGD", "train.lr0": 0.00001, "train.warmup_epochs": 0.0, "export.simplify": False}


# --- fast, offline -----------------------------------------------------------------------------------


def test_ultralytics_columns_get_clean_metric_names():
    assert tracking.metric_name("metrics/mAP50-95(P)") == "pose_mAP50-95"
    assert tracking.metric_name("metrics/precision(B)") == "box_precision"
    assert tracking.metric_name("  train/pose_loss") == "train/pose_loss"
    assert tracking.metric_name("epoch") is None
    assert tracking.fitness({"box_mAP50-95": 0.25, "pose_mAP50-95": 0.5, "pose_mAP50": 0.9}) == 0.75


@pytest.mark.parametrize(("candidate", "champion", "min_improvement", "promoted"), [
    (0.5, None, 0.0, True),
    (0.5, 0.5, 0.0, True),   # at least as good
    (0.49, 0.5, 0.0, False),
    (0.52, 0.5, 0.01, True),
    (0.505, 0.5, 0.01, False),
    (0.48, 0.5, -0.05, True),
])
def test_promotion_rule(candidate, champion, min_improvement, promoted):
    assert training.better_enough(candidate, champion, min_improvement) is promoted


def test_prepare_refuses_a_dataset_made_with_another_skeleton(tmp_path):
    root = make_project(tmp_path / "p", git=False)
    data = root / "data" / "coco8-pose" / "data.yaml"
    data.write_text(data.read_text().replace("kpt_shape: [17, 3]", "kpt_shape: [5, 3]"))
    with pytest.raises(training.TrainingError, match=r"kpt_shape \[5, 3\] has 5 keypoints but the skeleton spec"):
        training.prepare(load_params(root / "params.yaml"), root)
    (root / "data" / "coco8-pose" / "data.yaml").unlink()
    with pytest.raises(training.TrainingError, match="data.yaml is missing: pull the dataset first"):
        training.prepare(load_params(root / "params.yaml"), root)


def test_prepare_writes_typed_dataset_info_and_redacts_secrets(tmp_path):
    root = make_project(tmp_path / "p", git=False)
    info = training.prepare(load_params(root / "params.yaml"), root)
    assert info.splits["train"].images == 4 and info.splits["val"].instances > 0
    assert info.source["export_snapshot_id"] == 42 and info.pull["label_studio_token"] == "***"
    written = json.loads((root / "data" / "prepared" / "dataset.json").read_text())
    assert list(written) == ["name", "dir", "dvc_hash", "manifest", "pull", "splits", "kpt_shape", "skeleton",
                            "kpt_oks_sigmas"]
    assert training.read_dataset_info(training.Layout().under(root)) == info


# --- dvc.yaml: stages depend on the code they run --------------------------------------------------------


def poseops_imports(path: Path, src: Path) -> set[str]:
    """The poseops modules a file imports (anywhere in it, functions included), as module names."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    return {m for m in found if m.split(".")[0] == "poseops" and module_file(m, src)}


def module_file(module: str, src: Path) -> Path | None:
    base = src.joinpath(*module.split("."))
    return next((p for p in (base / "__init__.py", base.with_suffix(".py")) if p.is_file()), None)


def code_closure(script: Path, src: Path) -> set[str]:
    """Every poseops module file a stage script runs: its imports, theirs, and the packages around them."""
    seen: set[str] = set()
    todo = poseops_imports(script, src)
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            parts = module.split(".")
            todo |= {".".join(parts[:i]) for i in range(1, len(parts))}
            todo |= poseops_imports(module_file(module, src), src)
    return {module_file(m, src).relative_to(src.parent).as_posix() for m in seen}


def test_each_stage_depends_on_the_package_modules_it_imports():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    src = ROOT / "src"
    for name, stage in stages.items():
        listed = {d for d in stage["deps"] if d.startswith("src/")}
        needed = code_closure(ROOT / "pipelines" / f"{name}.py", src)
        assert listed == needed, (f"dvc.yaml stage {name}: add {sorted(needed - listed)}, "
                                  f"remove {sorted(listed - needed)}")
    assert "src/poseops/training/fit.py" not in stages["prepare"]["deps"]  # precise: training code reruns train only
    assert "src/poseops/training/promotion.py" not in {d for s in stages.values() for d in s["deps"]}


@pytest.mark.integration
def test_a_package_change_makes_dvc_status_report_the_stages_it_affects(tmp_path):
    root = tmp_path / "repo"
    package = tmp_path / "package" / "poseops"  # a copy of the package of its own, so that the test can change it
    shutil.copytree(Path(training.__file__).parents[1], package, ignore=shutil.ignore_patterns("__pycache__"))
    training.link_package(root, package)
    make_project(root, git=True)
    run_dvc(["repro", "prepare"], root)

    def changed() -> dict:
        return json.loads(run_dvc(["status", "--json"], root).stdout or "{}")

    assert "prepare" not in changed()
    with (package / "training" / "fit.py").open("a") as f:
        f.write("# a change to the train stage's code\n")
    assert "prepare" not in changed() and "train" in changed()
    with (package / "training" / "dataset.py").open("a") as f:
        f.write("# a change to the prepare stage's code\n")
    status = changed()
    assert {"changed deps": {"src/poseops/training/dataset.py": "modified"}} in status["prepare"], status


# --- helpers -------------------------------------------------------------------------------------------


def make_dataset(dest: Path) -> Path:
    """The dataset contract (what the pull flow writes) built from coco8-pose."""
    src = SHARED_DATASETS / "coco8-pose"
    for part in ("images", "labels"):
        shutil.copytree(src / part, dest / part, ignore=shutil.ignore_patterns("*.cache"))
    (dest / "data.yaml").write_text(
        f"path: .\ntrain: images/train\nval: images/val\nnames: {{0: person}}\nkpt_shape: [17, 3]\nflip_idx: {FLIP_IDX}\n")
    (dest / "manifest.json").write_text(json.dumps({
        "dataset": dest.name, "label_studio_project_id": 7, "labeled_tasks": 8, "train_images": 4, "val_images": 4,
        "conversion": {"keypoints": {"nose": 8}, "dropped": []}}))
    dest.with_name(f"{dest.name}.pull.json").write_text(json.dumps({  # what the pull writes beside the dataset
        "dataset": dest.name, "label_studio_url": "http://127.0.0.1:8080", "label_studio_project_id": 7,
        "export_snapshot_id": 42, "tasks": 8, "labeled_tasks": 8, "label_studio_token": "must-not-leak"}))
    return dest


def make_project(root: Path, git: bool = True, overrides: dict | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(ROOT / "pipelines", root / "pipelines", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, root)
    (root / "label_config" / "skeletons").mkdir(parents=True)
    shutil.copy(ROOT / "label_config" / "skeletons" / "person.yaml", root / "label_config" / "skeletons")
    make_dataset(root / "data" / "coco8-pose")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for dotted, value in {**TINY, **(overrides or {})}.items():
        node = params
        *path, key = dotted.split(".")
        for k in path:
            node = node[k]
        node[key] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / ".gitignore").write_text("__pycache__/\n")
    training.link_package(root, package_snapshot())  # dvc.yaml's stages depend on the package modules
    if git:
        for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "project"],
                    [*DVC, "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "dvc init"]):
            subprocess.run(cmd, cwd=root, check=True, capture_output=True, env=GIT_ENV)
    return root


def package_snapshot() -> Path:
    """A copy of the poseops package, made once per test run, that the test projects' `src/poseops` links to.

    The stages depend on those files: a copy keeps edits made to the checkout while the tests run
    from changing the dependencies of a project between two of its runs.
    """
    if not _SNAPSHOT:
        folder = Path(tempfile.mkdtemp(prefix="poseops-package-"))
        atexit.register(shutil.rmtree, folder, True)
        shutil.copytree(Path(training.__file__).parents[1], folder / "poseops", ignore=shutil.ignore_patterns("__pycache__"))
        _SNAPSHOT.append(folder / "poseops")
    return _SNAPSHOT[0]


_SNAPSHOT: list[Path] = []
DVC = [sys.executable, "-m", "dvc"]
GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "poseops tests", "GIT_AUTHOR_EMAIL": "tests@poseops.local",
           "GIT_COMMITTER_NAME": "poseops tests", "GIT_COMMITTER_EMAIL": "tests@poseops.local"}


def champion(mlc) -> str:
    return str(mlc.get_model_version_by_alias(MODEL, "champion").version)  # the SQLite store answers an int


def versions_of(mlc, run_id: str) -> list:
    return list(mlc.search_model_versions(f"run_id='{run_id}'"))


# --- shared trainings ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    home = tmp_path_factory.mktemp("poseops-home")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    mp.setenv("POSEOPS_HOME", str(home))
    mp.setenv("YOLO_OFFLINE", "true")
    mp.setenv("YOLO_CONFIG_DIR", str(home / "ultralytics"))
    mp.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    mp.delenv("MLFLOW_RUN_ID", raising=False)
    yield SimpleNamespace(home=home, mlc=tracking.client())
    mp.undo()


@pytest.fixture(scope="module")
def pipeline(env, tmp_path_factory):
    repo = make_project(tmp_path_factory.mktemp("pipeline") / "repo")
    out = training.dvc_repro(repo, stream=False)
    version = json.loads((repo / "models" / "model_version.json").read_text())
    return SimpleNamespace(repo=repo, output=out.stdout + out.stderr, version=version["version"],
                           run_id=version["run_id"], mlc=env.mlc)


@pytest.fixture(scope="module")
def resumed(env, tmp_path_factory):
    """A 2-epoch training interrupted after epoch 1, then resumed; what was seen in between is recorded."""
    root = make_project(tmp_path_factory.mktemp("resume") / "root", git=False)
    params = load_params(root / "params.yaml", {**GENTLE, "train.epochs": 2, "mlflow.run_name": "resumed"})
    training.prepare(params, root)

    def interrupt(trainer):
        if trainer.epoch == 0:
            raise KeyboardInterrupt("simulated Ctrl-C after epoch 1")

    with pytest.raises(KeyboardInterrupt):
        training.train(params, root, callbacks={"on_fit_epoch_end": interrupt})
    state = training.read_state(root / "runs" / "train")
    seen = SimpleNamespace(state=state, status=env.mlc.get_run(state["run_id"]).info.status,
                           versions=versions_of(env.mlc, state["run_id"]),
                           rows=len(tracking.read_epochs(root / "runs" / "train" / "results.csv")))
    result = training.train(params, root)
    training.evaluate(params, root)
    ref = training.export(params, root)
    return SimpleNamespace(root=root, params=params, interrupted=seen, result=result, version=ref.version, ref=ref)


# --- the DVC pipeline ------------------------------------------------------------------------------------


@pytest.mark.integration
def test_pipeline_tracks_the_run_in_mlflow(pipeline):
    mlc, repo = pipeline.mlc, pipeline.repo
    run = mlc.get_run(pipeline.run_id)
    assert run.info.status == "FINISHED"
    assert mlc.get_experiment(run.info.experiment_id).name == "poseops"
    # params: the resolved params.yaml, secrets never
    assert run.data.params["train.epochs"] == "1" and run.data.params["train.imgsz"] == "160"
    assert run.data.params["train.augment.fliplr"] == "0.5"
    # per-epoch metrics, with our names
    for key in ("fitness", "pose_mAP50", "pose_mAP50-95", "box_mAP50-95", "train/pose_loss", "val/pose_loss"):
        assert [m.step for m in mlc.get_metric_history(pipeline.run_id, key)] == [1], key
    assert "eval/pose_mAP50-95" in run.data.metrics
    # lineage: git commit, dataset hash as DVC records it, Label Studio snapshot from the manifest
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    dataset_hash = next(d["md5"] for d in lock["stages"]["prepare"]["deps"] if d["path"] == "data/coco8-pose")
    assert run.data.tags["git_commit"] == head and run.data.tags["mlflow.source.git.commit"] == head
    assert run.data.tags["poseops.dataset_dvc_hash"] == dataset_hash
    assert run.data.tags["poseops.label_studio_snapshot"] == "42" and run.data.tags["poseops.label_studio_project"] == "7"
    assert run.inputs.dataset_inputs[0].dataset.digest == dataset_hash
    # artifacts
    artifacts = {a.path for d in ("weights", "model", "plots/train", "dataset") for a in mlc.list_artifacts(pipeline.run_id, d)}
    for path in ("weights/best.pt", "weights/last.pt", "model/best.pt", "model/model.onnx", "model/data.yaml",
                 "model/skeleton.yaml", "dataset/dataset.json", "plots/train/results.png"):
        assert path in artifacts, path
    logged = json.loads(Path(tracking.download(f"runs:/{pipeline.run_id}/dataset/dataset.json", repo.parent / "dl")).read_text())
    assert logged["manifest"]["labeled_tasks"] == 8 and logged["pull"]["export_snapshot_id"] == 42
    assert logged["pull"]["label_studio_token"] == "***"  # a secret never reaches MLflow
    # the registered version and its lineage tags
    mv = mlc.get_model_version(MODEL, pipeline.version)
    assert mv.run_id == pipeline.run_id and mv.source == f"runs:/{pipeline.run_id}/model"
    assert mv.tags["dataset_dvc_hash"] == dataset_hash and mv.tags["git_commit"] == head
    assert mv.tags["run_id"] == pipeline.run_id and "parent_model_version" not in mv.tags
    assert mv.tags["label_studio_snapshot"] == "42"
    assert float(mv.tags["metrics.pose_mAP50-95"]) == json.loads((repo / "reports" / "metrics.json").read_text())["pose_mAP50-95"]


@pytest.mark.integration
def test_pipeline_outputs_metrics_plots_and_onnx(pipeline):
    repo = pipeline.repo
    metrics = json.loads((repo / "reports" / "metrics.json").read_text())
    assert {"fitness", "pose_mAP50", "pose_mAP50-95", "box_mAP50", "box_mAP50-95"} <= set(metrics)
    shown = json.loads(subprocess.run([*DVC, "metrics", "show", "--json"], cwd=repo, capture_output=True, text=True,
                                      check=True).stdout)
    assert "pose_mAP50-95" in json.dumps(shown)
    rows = tracking.read_epochs(repo / "runs" / "train" / "results.csv")
    plotted = (repo / "reports" / "epochs.csv").read_text().splitlines()
    assert plotted[0].startswith("epoch,fitness,pose_mAP50,pose_mAP50-95,box_mAP50,box_mAP50-95") and len(plotted) == 2
    plots = subprocess.run([*DVC, "plots", "show", "--json"], cwd=repo, capture_output=True, text=True, check=True).stdout
    assert '"field": "fitness"' in plots and '"field": "pose_mAP50-95"' in plots
    # the fitness we log is the one Ultralytics trained with (its checkpoint keeps it)
    import torch

    ckpt = torch.load(repo / "runs" / "train" / "weights" / "last.pt", map_location="cpu", weights_only=False)
    assert rows[-1]["fitness"] == pytest.approx(ckpt["train_metrics"]["fitness"], abs=2e-5)
    # ONNX runs, with 5 + 17 × 3 values per candidate
    import numpy as np
    import onnxruntime

    session = onnxruntime.InferenceSession(str(repo / "models" / "model.onnx"), providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {session.get_inputs()[0].name: np.zeros((1, 3, 160, 160), np.float32)})
    assert output.shape[1] == 5 + 17 * 3


@pytest.mark.integration
def test_second_repro_with_nothing_changed_does_nothing(pipeline):
    before = len(pipeline.mlc.search_runs([r.experiment_id for r in pipeline.mlc.search_experiments()]))
    versions = len(pipeline.mlc.search_model_versions(f"name='{MODEL}'"))
    out = training.dvc_repro(pipeline.repo, stream=False)
    text = out.stdout + out.stderr
    assert "Running stage" in pipeline.output
    assert "Running stage" not in text
    for stage in ("prepare", "train", "evaluate"):
        assert f"Stage '{stage}' didn't change, skipping" in text
    assert len(pipeline.mlc.search_runs([r.experiment_id for r in pipeline.mlc.search_experiments()])) == before
    assert len(pipeline.mlc.search_model_versions(f"name='{MODEL}'")) == versions
    status = subprocess.run([*DVC, "status", "--json"], cwd=pipeline.repo, capture_output=True, text=True, check=True)
    assert json.loads(status.stdout) == {}


@pytest.mark.integration
def test_cli_promotes_and_refuses_bad_params_in_one_line(pipeline):
    import typer
    import typer.testing

    from poseops.cli_train import register

    app = typer.Typer()
    register(app)
    runner = typer.testing.CliRunner()
    result = runner.invoke(app, ["promote", "--version", pipeline.version, "--root", str(pipeline.repo)])
    assert result.exit_code == 0 and f"version {pipeline.version}:" in result.output
    result = runner.invoke(app, ["promote", "--version", "999", "--root", str(pipeline.repo)])
    assert result.exit_code == 1 and f"registered model '{MODEL}' has no version 999" in result.output
    result = runner.invoke(app, ["train", "--set", "train.epoch=3", "--root", str(pipeline.repo)])
    assert result.exit_code == 1 and "did you mean 'train.epochs'?" in result.output
    assert "Traceback" not in result.output


# --- resume, fine-tune, promotion ------------------------------------------------------------------------


@pytest.mark.integration
def test_interrupted_training_resumes_from_last_pt(resumed, env):
    seen = resumed.interrupted
    assert seen.state["status"] == "interrupted" and seen.rows == 1
    assert seen.status == "KILLED"
    assert seen.versions == []  # an interrupted training registers nothing
    interrupted = env.mlc.get_run(seen.state["run_id"])
    assert interrupted.data.tags["poseops.interrupted"].startswith("simulated Ctrl-C after epoch 1 after 1 epoch(s)")
    result = resumed.result
    assert result.resumed and result.run_id != seen.state["run_id"]  # a new run, naming the interrupted one
    assert interrupted.data.tags["poseops.resumed_by_run"] == result.run_id
    assert [int(r["epoch"]) for r in result.epochs] == [1, 2]
    assert [m.step for m in env.mlc.get_metric_history(result.run_id, "fitness")] == [1, 2]
    run = env.mlc.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["poseops.resumed_from"].endswith("last.pt")
    assert run.data.tags["poseops.resumed_from_run"] == seen.state["run_id"]
    assert run.data.tags["poseops.resumed_at_epoch"] == "2"
    assert env.mlc.get_run(seen.state["run_id"]).info.status == "KILLED" and versions_of(env.mlc, seen.state["run_id"]) == []
    assert run.data.tags["git_commit"] == "none"  # not a git repo: said, not invented
    assert [str(v.version) for v in versions_of(env.mlc, result.run_id)] == [resumed.version]
    # the per-epoch fitness is Ultralytics' formula: box mAP50-95 + pose mAP50-95 (pose > 0 here)
    last = result.epochs[-1]
    assert last["pose_mAP50-95"] > 0 and last["fitness"] == pytest.approx(last["box_mAP50-95"] + last["pose_mAP50-95"])


@pytest.mark.integration
def test_first_version_becomes_champion_when_above_the_floor(pipeline, resumed, env):
    mlc = env.mlc
    if tracking.version_for_alias(mlc, MODEL, "champion") is not None:
        mlc.delete_registered_model_alias(MODEL, "champion")
    # "no champion yet" is not "anything goes": below promote.min_metric nothing is promoted
    strict = resumed.params.replace(**{"promote.min_metric": 0.99})
    p = training.promote(strict, resumed.root, version=pipeline.version, mlc=mlc)
    assert not p.promoted and "< promote.min_metric 0.99: too poor to serve, no champion yet" in p.reason
    assert tracking.version_for_alias(mlc, MODEL, "champion") is None
    assert mlc.get_model_version(MODEL, pipeline.version).tags["promotion.min_metric"] == "0.99"
    p = training.promote(resumed.params, resumed.root, version=resumed.version, mlc=mlc)
    assert p.promoted and p.champion_version is None and "no champion yet" in p.reason
    assert champion(mlc) == resumed.version
    tags = mlc.get_model_version(MODEL, resumed.version).tags
    assert tags["promotion.champion_value"] == "none"
    assert tags["skeleton_fingerprint"] == tags["promotion.skeleton"] == training.skeleton_fingerprint(
        load_skeleton(resumed.root / "label_config" / "skeletons" / "person.yaml"))


@pytest.mark.integration
def test_a_champion_of_another_dataset_never_competes(resumed, env):
    """A far better version of another dataset holds the alias: the candidate is refused, naming both."""
    mlc = env.mlc
    mine = mlc.get_model_version(MODEL, resumed.version)
    other = mlc.create_model_version(MODEL, source=mine.source, run_id=mine.run_id,
                                     tags={**mine.tags, "dataset": "rodents", "metrics.pose_mAP50-95": "0.0001"})
    try:
        mlc.set_registered_model_alias(MODEL, "champion", str(other.version))
        p = training.promote(resumed.params, resumed.root, version=resumed.version, mlc=mlc)
        assert not p.promoted and p.champion_value is None
        assert f"the champion (version {other.version}) was trained for dataset 'rodents'" in p.reason
        assert "this version for dataset 'coco8-pose'" in p.reason and "never compete" in p.reason
        assert champion(mlc) == str(other.version)
        with pytest.raises(training.TrainingError, match="was trained for dataset 'coco8-pose'.* but this workspace "
                                                         "evaluates dataset 'people'"):
            training.promote(resumed.params.replace(**{"dataset.name": "people"}), resumed.root,
                             version=resumed.version, mlc=mlc)
    finally:
        mlc.set_registered_model_alias(MODEL, "champion", resumed.version)
        mlc.delete_model_version(MODEL, str(other.version))


@pytest.mark.integration
def test_better_version_takes_the_champion_alias(pipeline, resumed, env):
    mlc = env.mlc
    mlc.set_registered_model_alias(MODEL, "champion", pipeline.version)
    p = training.promote(resumed.params, resumed.root, version=resumed.version, mlc=mlc)
    assert p.promoted, p
    assert p.candidate_value > p.champion_value and p.champion_version == pipeline.version
    assert champion(mlc) == resumed.version
    tags = mlc.get_model_version(MODEL, resumed.version).tags
    assert tags["promotion.decision"] == "promoted"
    assert float(tags["promotion.candidate_value"]) == pytest.approx(p.candidate_value, abs=1e-6)
    assert float(tags["promotion.champion_value"]) == pytest.approx(p.champion_value, abs=1e-6)
    assert mlc.get_run(resumed.ref.run_id).data.tags["promotion.champion_version"] == pipeline.version


@pytest.mark.integration
def test_worse_version_leaves_the_alias_where_it_is(pipeline, resumed, env):
    """Under other eval settings neither version's recorded figure applies: both are measured anew."""
    mlc = env.mlc
    mlc.set_registered_model_alias(MODEL, "champion", resumed.version)
    params = resumed.params.replace(**{"evaluate.iou": 0.6})
    p = training.promote(params, resumed.root, version=pipeline.version, mlc=mlc)
    assert not p.promoted and p.candidate_value < p.champion_value
    assert champion(mlc) == resumed.version
    tags = mlc.get_model_version(MODEL, pipeline.version).tags
    assert tags["promotion.decision"] == "kept" and tags["promotion.champion_version"] == resumed.version
    assert tags["promotion.eval_key"] != tags["eval_key"]
    assert mlc.get_run(pipeline.run_id).data.tags["promotion.decision"] == "kept"


@pytest.mark.integration
def test_fine_tune_from_champion_records_its_parent(resumed, env, tmp_path):
    mlc = env.mlc
    mlc.set_registered_model_alias(MODEL, "champion", resumed.version)
    root = make_project(tmp_path / "ft", git=False)
    params = load_params(root / "params.yaml", {**GENTLE, "train.init_weights": f"models:/{MODEL}@champion",
                                                "mlflow.run_name": "fine-tune"})
    ref = training.run_stages(params, root, mlc=mlc)
    run = mlc.get_run(ref.run_id)
    parent = f"{MODEL}/{resumed.version}"
    assert run.data.tags["poseops.parent_model_version"] == parent
    assert run.data.tags["poseops.parent_run_id"] == resumed.ref.run_id
    tags = mlc.get_model_version(MODEL, ref.version).tags
    assert tags["parent_model_version"] == parent and tags["parent_run_id"] == resumed.ref.run_id
    # as good as its parent, but not by the margin asked for: the alias stays
    demanding = params.replace(**{"promote.min_improvement": 0.5})
    p = training.promote(demanding, root, version=ref.version, mlc=mlc)
    assert not p.promoted and "+ 0.5" in p.reason
    assert champion(mlc) == resumed.version


# --- the Prefect flow ------------------------------------------------------------------------------------


@pytest.mark.integration
def test_flow_reports_the_run_and_promotes(pipeline, resumed, env):
    import httpx
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from poseops.flows import train as flows_train

    env.mlc.set_registered_model_alias(MODEL, "champion", resumed.version)
    runs_before = len(env.mlc.search_runs([e.experiment_id for e in env.mlc.search_experiments()]))
    with prefect_test_harness():
        result = flows_train.train_flow(root=str(pipeline.repo), promote=True)
        artifact = httpx.get(f"{PREFECT_API_URL.value()}/artifacts/{flows_train.REPORT_KEY}/latest").json()
    assert result["run_id"] == pipeline.run_id and result["version"] == pipeline.version  # DVC: nothing to redo
    assert len(env.mlc.search_runs([e.experiment_id for e in env.mlc.search_experiments()])) == runs_before
    assert result["promotion"]["promoted"] is False  # the pipeline's poor model does not beat the champion
    assert artifact["type"] == "markdown"
    assert f"/runs/{pipeline.run_id})" in artifact["data"] and "| pose_mAP50-95 |" in artifact["data"]
    assert f"models:/{MODEL}/{pipeline.version}" in artifact["data"]


@pytest.mark.integration
def test_a_set_override_lasts_one_run_and_leaves_params_yaml_byte_identical(pipeline, env):
    """`poseops train -S` runs `dvc exp run -S`, which writes the override into params.yaml; the file comes back."""
    params_file = pipeline.repo / "params.yaml"
    original = params_file.read_bytes()
    annotated = original + b"# a comment DVC would drop, and a quoted cron it would unquote:\n"
    params_file.write_bytes(annotated.replace(b"loop: 0 3 * * *", b"loop: '0 3 * * *'"))
    subprocess.run(["git", "commit", "-qam", "annotate params"], cwd=pipeline.repo, check=True, env=GIT_ENV)
    before = params_file.read_bytes()
    try:
        done = subprocess.run([sys.executable, "-m", "poseops.cli", "train", "--root", str(pipeline.repo),
                               "-S", "schedules.loop=0 4 * * *", "--no-promote"],
                              capture_output=True, text=True, timeout=600, env={**os.environ, **GIT_ENV})
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert params_file.read_bytes() == before
    finally:
        params_file.write_bytes(original)
        subprocess.run(["git", "commit", "-qam", "params back"], cwd=pipeline.repo, check=True, env=GIT_ENV)
