"""The `poseops` command line: one entry point over the package.

Each command is thin: it reads settings, calls the package, and prints what a
person needs (URLs, counts, what to do next). Known failures print one clear
line and exit 1, without a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from poseops import labelstudio_server
from poseops.cli_common import console, err_console, fail, flow, progress_bar, user_errors
from poseops.settings import apply_env_file, ensure_label_studio_credentials, load_settings, quiet_telemetry
from poseops.skeleton import load_skeleton

app = typer.Typer(help="poseops: skeleton spec → Label Studio → dataset → YOLO-pose → service → pre-labels.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
labelstudio_app = typer.Typer(help="Run a local Label Studio server (its own virtualenv, 127.0.0.1).", no_args_is_help=True)
dataset_app = typer.Typer(help="Datasets: one Label Studio project each, made from a skeleton spec.", no_args_is_help=True)
app.add_typer(labelstudio_app, name="labelstudio")
app.add_typer(dataset_app, name="dataset")


@app.callback()
def settings_first() -> None:
    """Every command obeys the same settings: the environment, then `.env`, then the defaults."""
    apply_env_file()
    quiet_telemetry()


# --- skeleton and labeling config ---------------------------------------------------


@app.command("label-config")
@user_errors
def label_config(
    spec: Annotated[Path, typer.Argument(help="Skeleton spec YAML, e.g. label_config/skeletons/person.yaml")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the XML here instead of printing it")] = None,
) -> None:
    """Print the Label Studio labeling config (XML) generated from a skeleton spec."""
    from poseops.label_config import label_config_xml

    xml = label_config_xml(load_skeleton(spec))
    if out is None:
        typer.echo(xml, nl=False)
    else:
        out.write_text(xml, encoding="utf-8")
        err_console.print(f"wrote {out}")


@app.command("check-skeleton")
@user_errors
def check_skeleton(
    spec: Annotated[Path, typer.Argument(help="Skeleton spec YAML")],
    params: Annotated[Path, typer.Option(help="params.yaml whose train.augment.fliplr the flip pairs are checked against (defaults when absent)")] = Path("params.yaml"),
) -> None:
    """Validate a skeleton spec and summarize it."""
    from poseops.params import load_params
    from poseops.training.dataset import flip_warning

    skeleton = load_skeleton(spec)
    for cls in skeleton.classes:
        console.print(f"[bold]{cls.name}[/] {cls.color}: {len(cls.keypoints)} keypoints, "
                      f"{len(cls.connections)} connections, {len(cls.flip_pairs)} flip pairs, box: {cls.box}"
                      + (f" (padding {cls.box_padding:g})" if cls.box_derivable else ""))
    console.print(f"kpt_shape: [{skeleton.keypoint_count}, 3]  flip_idx: {skeleton.flip_idx}")
    console.print(f"kpt_oks_sigmas: {[round(s, 4) for s in skeleton.oks_sigmas]}")
    if warning := flip_warning(skeleton, load_params(params, missing_ok=True).train.augment.fliplr):
        err_console.print(f"[yellow]warning: {escape(warning)}[/]")


# --- Label Studio server --------------------------------------------------------------


@labelstudio_app.command("up")
@user_errors
def labelstudio_up(
    timeout: Annotated[float, typer.Option(help="Seconds to wait for it to answer (the first start migrates ~90 s)")] = 600,
) -> None:
    """Start Label Studio (or find the running one) and wait until it answers."""
    settings = ensure_label_studio_credentials()
    before = labelstudio_server.status(settings)
    if not before.running:
        err_console.print(f"starting Label Studio at {settings.label_studio_url} (log: {labelstudio_server.log_file(settings)}) ...")
    with err_console.status("waiting for Label Studio to answer"):
        status = labelstudio_server.up(settings, timeout=timeout)
    how = "already running" if before.running else "started"
    console.print(f"Label Studio {how}: {status.url}  (user {settings.label_studio_username}; password and token in .env)")


@labelstudio_app.command("down")
@user_errors
def labelstudio_down() -> None:
    """Stop the Label Studio server that `up` started (and only that one)."""
    settings = load_settings()
    stopped = labelstudio_server.down(settings)
    console.print("Label Studio stopped" if stopped else "no Label Studio started by poseops is running")


@labelstudio_app.command("status")
@user_errors
def labelstudio_status() -> None:
    """Tell whether Label Studio answers at the configured URL."""
    s = labelstudio_server.status(load_settings())
    console.print(f"{s.url}: {'answering' if s.running else 'not answering'}"
                  + (f" (started by poseops, pid {s.pid})" if s.started_here else ""))
    if not s.running:
        raise typer.Exit(1)


# --- the Prefect server and the MLflow UI ----------------------------------------------------------


def server_commands(name: str, factory_name: str, what: str) -> typer.Typer:
    """`up` / `down` / `status` for one of the servers in poseops.stack."""
    group = typer.Typer(help=f"Run {what} on 127.0.0.1 (state under .poseops/).", no_args_is_help=True)

    def server():
        from poseops import stack

        return getattr(stack, factory_name)(load_settings())

    @group.command("up")
    @user_errors
    def up(timeout: Annotated[float, typer.Option(help="Seconds to wait for it to answer")] = 180) -> None:
        """Start it (or find the running one) and wait until it answers."""
        s = server()
        already = s.status().running
        with err_console.status(f"waiting for {s.name} to answer"):
            s.up(timeout)
        console.print(f"{s.name} {'already running' if already else 'started'}: {s.url}")

    @group.command("down")
    @user_errors
    def down() -> None:
        """Stop the one poseops started (and only that one)."""
        s = server()
        console.print(f"{s.name} stopped" if s.down() else f"nothing to stop: {s.name} started by poseops is not running")

    @group.command("status")
    @user_errors
    def status() -> None:
        """Tell whether it answers."""
        st = server().status()
        console.print(f"{st.url}: {'answering' if st.running else 'not answering'}")
        if not st.running:
            raise typer.Exit(1)

    app.add_typer(group, name=name)
    return group


server_commands("prefect", "prefect_server", "the Prefect server (API, UI, schedules)")
server_commands("mlflow", "mlflow_ui", "the MLflow UI over the tracking store")
server_commands("service", "detection_service", "the deployed detection service (`poseops deploy` starts it)")
server_commands("ml-backend", "ml_backend", "the champion as Label Studio's ML backend (predictions as tasks open)")


@app.command("serve-flows")
@user_errors
def serve_flows() -> None:
    """Serve every flow as a Prefect deployment with its schedule (params.yaml `schedules`); runs until stopped."""
    from poseops.stack import connect_prefect

    settings = load_settings()
    if not connect_prefect(settings):
        raise fail("no Prefect server answers: start one with `poseops prefect up` (or set PREFECT_API_URL)")
    serve_all = flow("serve.serve_all")
    console.print(f"serving the flows; see them at {settings.prefect_url}/deployments (Ctrl-C stops)")
    serve_all()


# --- datasets -----------------------------------------------------------------------------


def _client():
    from poseops.labelstudio import LabelStudioClient

    client = LabelStudioClient(load_settings())
    client.check()
    return client


@dataset_app.command("create")
@user_errors
def dataset_create(
    name: Annotated[str, typer.Argument(help="Dataset name (= Label Studio project title)")],
    skeleton: Annotated[Path, typer.Option(help="Skeleton spec YAML")] = Path("label_config/skeletons/person.yaml"),
    template_class: Annotated[str | None, typer.Option(help="Class whose skeleton the template pre-label places (default: the first)")] = None,
) -> None:
    """Create the Label Studio project for a dataset, or update its labeling config."""
    from poseops.datasets import create_dataset

    with _client() as client:
        project, created = create_dataset(client, load_settings(), name, skeleton, template_class)
    console.print(f"{'created' if created else 'updated'} dataset {name!r}: {project.url}")


@dataset_app.command("upload")
@user_errors
def dataset_upload(
    name: Annotated[str, typer.Argument(help="Dataset name")],
    paths: Annotated[list[Path], typer.Argument(help="Image files or folders (jpg, png, webp, bmp, tif)")],
    workers: Annotated[int, typer.Option(help="Parallel uploads")] = 4,
) -> None:
    """Upload images as tasks, each with a template pre-label; duplicates and unreadable files are skipped."""
    from poseops.datasets import upload_images

    settings = load_settings()
    with _client() as client, progress_bar() as bar:
        job = bar.add_task("uploading", total=None)
        report = upload_images(client, settings, name, paths, workers=workers,
                               on_progress=lambda n: bar.advance(job, n), on_total=lambda n: bar.update(job, total=n))
    for path, reason in report.unreadable:
        err_console.print(f"[yellow]skipped[/] {escape(str(path))}: {escape(reason)}", highlight=False)
    for path, task_id in report.duplicates:
        err_console.print(f"[dim]duplicate[/] {escape(str(path))} (same content as task {task_id})", highlight=False)
    console.print(f"uploaded {len(report.uploaded)}, duplicates {len(report.duplicates)}, "
                  f"unreadable {len(report.unreadable)}: {report.project.url}")


@dataset_app.command("set-template")
@user_errors
def dataset_set_template(
    name: Annotated[str, typer.Argument(help="Dataset name")],
    task_id: Annotated[int, typer.Argument(help="A task you labeled by hand")],
    apply: Annotated[bool, typer.Option(help="Also replace the template pre-label of tasks nobody annotated yet")] = True,
) -> None:
    """Use a hand-labeled task's pose (normalized to its box) as the template for pre-labels."""
    from poseops.datasets import set_template

    with _client() as client:
        _, refreshed = set_template(client, load_settings(), name, task_id, apply=apply)
    console.print(f"template of {name!r} taken from task {task_id}; refreshed {refreshed} unlabeled task(s)")


@dataset_app.command("info")
@user_errors
def dataset_info(name: Annotated[str, typer.Argument(help="Dataset name")]) -> None:
    """Show a dataset's project URL and how many of its tasks are labeled."""
    from poseops.datasets import dataset_summary

    with _client() as client:
        console.print_json(json.dumps(dataset_summary(client, name)))


@app.command("convert")
@user_errors
def convert(
    export: Annotated[Path, typer.Argument(help="Label Studio JSON export (a list of tasks)")],
    skeleton: Annotated[Path, typer.Option(help="Skeleton spec YAML")] = Path("label_config/skeletons/person.yaml"),
    images: Annotated[Path, typer.Option(help="Folder with the tasks' image files (matched by file name)")] = Path("."),
    out: Annotated[Path, typer.Option(help="Empty folder for the YOLO-pose dataset")] = Path("dataset"),
    val_fraction: Annotated[float, typer.Option(help="Share of images for validation (by content hash)")] = 0.2,
) -> None:
    """Convert a Label Studio export into a YOLO-pose dataset (labels, images, data.yaml)."""
    from poseops.conversion.coco_export import CocoExportError, write_coco_export
    from poseops.convert import convert_export, load_export, match_images

    tasks = load_export(export)
    spec = load_skeleton(skeleton)
    paths, missing = match_images(tasks, images)
    labeled = [t for t in tasks if t.get("id") in paths]
    from poseops.conversion.unplaced import unplaced_keypoints

    unplaced = unplaced_keypoints(spec, labeled)  # refused before anything is written
    if unplaced:
        raise fail(unplaced.message(str(skeleton), "export and convert again"))
    try:
        report = convert_export(labeled, spec, paths, out, val_fraction=val_fraction)
    except (FileExistsError, NotADirectoryError) as e:
        raise fail(str(e)) from None
    formats = "YOLO-pose, and COCO keypoints in annotations/"
    try:  # the same labels as COCO keypoints JSON
        write_coco_export(spec, out)
    except CocoExportError as e:
        formats = "YOLO-pose only"
        err_console.print(f"[yellow]warning:[/] no COCO keypoints files written: {escape(str(e))}", highlight=False)
    if missing:
        err_console.print(f"[yellow]warning:[/] no image in {escape(str(images))} for {len(missing)} task(s): "
                          f"{', '.join(map(str, missing[:20]))}{' ...' if len(missing) > 20 else ''}", highlight=False)
    for problem in [*report.problems, *report.skipped_tasks]:
        err_console.print(f"[yellow]{problem.kind}[/] task {problem.task_id}: {escape(problem.message)}", highlight=False)
    d = report.to_dict()
    console.print(f"wrote {out}: {d['images']['train']} train / {d['images']['val']} val images, {d['objects']} objects, "
                  f"{d['keypoints']} keypoints ({formats}); "
                  f"{len(report.problems)} problems, {len(report.skipped_tasks)} tasks skipped")


# --- pulling labels ----------------------------------------------------------------------------


@app.command("pull")
@user_errors
def pull(
    name: Annotated[str, typer.Argument(help="Dataset name")],
    allow_unlabeled: Annotated[bool, typer.Option(help="Go on when some tasks are unlabeled (they are left out)")] = False,
    version: Annotated[bool, typer.Option(help="Record the dataset with DVC (+ push) and commit its .dvc file")] = True,
    params: Annotated[Path, typer.Option(help="params.yaml with the `pull` section")] = Path("params.yaml"),
) -> None:
    """Pull a dataset's labels from Label Studio into data/NAME (YOLO-pose), checked and versioned with DVC."""
    from poseops.pull_unchanged import unchanged_pull  # nothing changed: found without Prefect, no flow run

    summary = unchanged_pull(name, str(params), allow_unlabeled or None, version) or flow("pull_labels.pull_labels")(
        dataset=name, params_file=str(params), allow_unlabeled=allow_unlabeled or None, version=version, check_first=False)
    for warning in summary["warnings"]:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    kept = " (no change since the last pull: kept, nothing rebuilt)" if summary.get("unchanged") else ""
    console.print(f"dataset {name!r} → {summary['dataset_dir']}: {summary['train_images']} train / "
                  f"{summary['val_images']} val images, DVC version {summary.get('dvc_md5')}{kept}")


# --- autolabel ------------------------------------------------------------------------------------


@app.command("autolabel")
@user_errors
def autolabel(
    name: Annotated[str, typer.Argument(help="Dataset name")],
    url: Annotated[str | None, typer.Option(help="The deployed service's URL (e.g. http://127.0.0.1:3000)")] = None,
    weights: Annotated[str | None, typer.Option(help="Or a weights file, run in-process")] = None,
    model_version: Annotated[str | None, typer.Option(help="Label for the predictions (default: the service's registered version)")] = None,
    redo: Annotated[bool, typer.Option(help="Also replace this version's earlier predictions")] = False,
    params: Annotated[Path, typer.Option(help="params.yaml with the `autolabel` section")] = Path("params.yaml"),
) -> None:
    """Pre-label every task nobody labeled with the model's predictions; least confident first in the queue."""
    if not url and not weights:
        raise fail("give the service's URL (--url) or a weights file (--weights)")
    autolabel_flow = flow("autolabel.autolabel")
    summary = autolabel_flow(dataset=name, service_url=url, weights=weights, model_version=model_version, redo=redo,
                             params_file=str(params))
    console.print(f"{summary['model_version']}: pre-labeled {summary['predicted']} task(s) of {name!r}; "
                  f"{summary['skipped_labeled']} labeled and {summary['skipped_done']} already pre-labeled were left; "
                  f"{len(summary['failed'])} failed")


# --- deploy and the loop ---------------------------------------------------------------------------


@app.command("deploy")
@user_errors
def deploy(
    model: Annotated[str | None, typer.Option(help="Registered version: models:/NAME@ALIAS or models:/NAME/VERSION (default: the champion of params.yaml's registered model)")] = None,
    runtime: Annotated[str, typer.Option(help="auto (the best the version has for the CPU: openvino, else onnx), openvino, onnx or torch")] = "auto",
    params: Annotated[Path, typer.Option(help="params.yaml (mlflow.registered_model, promote.alias)")] = Path("params.yaml"),
) -> None:
    """Serve a registered model version (restarting the running service); a version that does not load changes nothing."""
    deploy_flow = flow("deploy.deploy")
    done = deploy_flow(model_uri=model, runtime=runtime, params_file=str(params))
    console.print(f"serving {done['model']} (Bento {done['bento']}) at {done['url']}  "
                  f"(playground {done['url']}/, API docs {done['url']}/docs)")


@app.command("loop")
@user_errors
def loop(
    name: Annotated[str, typer.Argument(help="Dataset name")],
    override: Annotated[list[str] | None, typer.Option("--set", "-S", help="params override, e.g. train.epochs=3")] = None,
    autolabel_new: Annotated[bool, typer.Option("--autolabel/--no-autolabel", help="Pre-label new tasks at the end")] = True,
) -> None:
    """The improvement loop once: pull → train → promote if better → deploy → autolabel."""
    improvement_loop = flow("loop.improvement_loop")
    summary = improvement_loop(dataset=name, overrides=override or [], autolabel_new=autolabel_new)
    for step, result in summary["steps"]:
        console.print(f"{step:<12} {result}", highlight=False)
    console.print(f"loop {summary['outcome']}")


# --- the demo ---------------------------------------------------------------------------------


@app.command("demo")
@user_errors
def demo() -> None:
    """Run the system end to end on the bundled defaults and print where to look."""
    from poseops.cli_stack import stack_settings
    from poseops.demo import run_demo

    settings = stack_settings(None, start=True)  # credentials (and, on the server profile, a database) into .env
    result = run_demo(settings, say=lambda line: err_console.print(escape(line), highlight=False))
    console.rule("poseops demo")
    for what, url in result.urls.items():
        console.print(f"{what:<24} {url}")
    for what, value in result.facts.items():
        console.print(f"{what:<24} {value}")
    console.print(f"Label Studio login       {settings.label_studio_username} (password: LABEL_STUDIO_PASSWORD in .env)")


@app.command("demo-down")
@user_errors
def demo_down() -> None:
    """Stop every server the demo started (the service, MLflow UI, Prefect server, Label Studio)."""
    from poseops.demo import stop_demo

    stopped = stop_demo(load_settings())
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing started by the demo was running")


def _register_commands() -> None:
    from poseops.cli_backend import register as register_backend
    from poseops.cli_flows import register as register_flows
    from poseops.cli_import import register as register_import
    from poseops.cli_labels import register as register_labels
    from poseops.cli_predict import register as register_predict
    from poseops.cli_serve import register as register_serve
    from poseops.cli_stack import register as register_stack
    from poseops.cli_train import register as register_train
    from poseops.cli_video import register as register_video

    register_backend(app)
    register_flows(app)
    register_import(app)
    register_labels(app)
    register_serve(app)
    register_stack(app)
    register_predict(app)
    register_train(app)
    register_video(app)


_register_commands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
