"""Deploy every flow to a Prefect work pool, for workers on one machine or many.

    poseops prefect up                                   # or PREFECT_API_URL pointing at a shared server
    poseops deploy-flows --pool cpu [--train-pool gpu]   # this: the deployments, then it exits
    prefect worker start --pool cpu                      # on each machine that runs flows (from the project)

The deployments are those of `serve-flows` (`poseops.flows.serve.flow_deployments`: pull-labels,
train, autolabel, improvement-loop/loop with its concurrency limit of 1, schedules from params.yaml
`schedules`), so the ML backend's retraining trigger and `LOOP_DEPLOYMENT` work the same. A pool
that does not exist is created as a process pool; a Docker or Kubernetes pool made beforehand takes
the same deployments (its job template then decides where the project is).

How a worker finds the project and its settings:
- the code source is the project folder where `deploy-flows` runs (`--source` names another folder,
  or a git URL the worker clones); each run starts in it (Prefect's `set_working_directory` step), so
  params.yaml, dvc.yaml and data/ resolve as on the command line. A worker on another machine needs
  the project at the same path (a checkout, a shared disk) or a git source;
- then the step `use_project_settings` reads that folder's `.env` into the run's environment below
  what the worker's environment already says, as every poseops command does: POSEOPS_PROFILE,
  POSEOPS_HOME, LABEL_STUDIO_URL, MLFLOW_TRACKING_URI... Secrets stay in `.env` (or the worker's
  environment) and are read where they are used; nothing secret is stored on the Prefect server.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefect.runner.storage import GitRepository, LocalStorage

from poseops.errors import PoseopsError
from poseops.flows.serve import flow_deployments
from poseops.params import load_params
from poseops.settings import ENV_FILE

SETTINGS_STEP = {"poseops.flows.pool.use_project_settings": {}}
TRAIN_DEPLOYMENT = "train"  # the GPU-heavy one: `--train-pool` sends it to its own pool


class PoolError(PoseopsError, RuntimeError):
    pass


@dataclass(frozen=True)
class PoolDeployment:
    flow: str  # the flow's name
    name: str  # the deployment's name: run it as "<flow>/<name>"
    pool: str
    cron: str | None
    id: str


class ProjectFolder(LocalStorage):
    """The project folder as the deployments' code: runs start there and read its `.env`."""

    def to_pull_step(self) -> list[dict]:
        return [super().to_pull_step(), SETTINGS_STEP]


class ProjectRepository(GitRepository):
    """A git repository of the project as the deployments' code: cloned by the worker, then its `.env` read."""

    def to_pull_step(self) -> list[dict]:
        return [super().to_pull_step(), SETTINGS_STEP]


def use_project_settings() -> dict[str, str]:
    """A deployment's pull step, run in each flow run: the project's `.env` (in the working directory the step
    before set) into the run's environment, below the worker's own (`poseops.settings.apply_env_file`)."""
    from poseops.settings import apply_env_file, quiet_telemetry

    apply_env_file()
    quiet_telemetry()
    return {"settings_file": str(Path(ENV_FILE).resolve())}


def project_source(source: str | Path) -> LocalStorage | GitRepository:
    """The deployments' code source: a git URL (https://, ssh://, git@host:...), else an existing project folder."""
    text = str(source)
    if "://" in text or text.startswith("git@"):
        return ProjectRepository(url=text)
    folder = Path(text).resolve()
    if not (folder / "params.yaml").is_file() and not (folder / "dvc.yaml").is_file():
        raise PoolError(f"{folder} is not a poseops project (no params.yaml or dvc.yaml): run deploy-flows from the "
                        "project folder, or name it with --source")
    return ProjectFolder(folder)


def ensure_pool(name: str) -> bool:
    """Create the work pool `name` as a process pool unless it exists; True when it was created."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
            return False
        except ObjectNotFound:
            pass
        try:
            client.create_work_pool(WorkPoolCreate(name=name, type="process",
                                                   base_job_template=ProcessWorker.get_default_base_job_template()))
        except ObjectAlreadyExists:
            return False
    return True


def deploy_to_pools(pool: str, train_pool: str | None = None, params_file: str = "params.yaml",
                    source: str | Path = ".", service_url: str | None = None) -> list[PoolDeployment]:
    """Every flow deployed to `pool` (train to `train_pool` when given), pools created when missing."""
    from prefect import Flow
    from prefect.utilities.importtools import import_object

    from poseops.settings import load_settings

    config = load_params(params_file, missing_ok=True).schedules
    storage = project_source(source)
    for name in dict.fromkeys([pool, train_pool or pool]):
        ensure_pool(name)
    done = []
    for d in flow_deployments(config, service_url or config.service_url or load_settings().service_url):
        target = train_pool if train_pool and d.name == TRAIN_DEPLOYMENT else pool
        flow = Flow.from_source(source=storage, entrypoint=d.flow)
        # to_deployment + apply is what Flow.deploy does, less its look for the pool's workers (Prefect 3.8.8 asks
        # that without the paging the server requires: 422) and less building an image (a process pool has none)
        deployment = flow.to_deployment(name=d.name, work_pool_name=target, cron=d.cron,
                                        parameters=d.parameters or None, description=d.description,
                                        concurrency_limit=d.concurrency_limit)
        deployment_id = deployment.apply(work_pool_name=target)
        done.append(PoolDeployment(import_object(d.flow).name, d.name, target, d.cron, str(deployment_id)))
    return done


def worker_command(pool: str) -> str:
    return f"prefect worker start --pool {pool}"
