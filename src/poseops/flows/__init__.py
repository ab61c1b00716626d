"""The Prefect flows: each one sequences the package's steps, with retries on I/O only.

    pull_labels   Label Studio → DVC-versioned YOLO-pose dataset        (steps: poseops.pull)
    train         DVC pipeline → MLflow run → registry → promotion      (steps: poseops.training)
    deploy        registered version → BentoML store → Bento → service  (steps: poseops.deploy)
    autolabel     the model pre-labels the tasks nobody labeled         (steps: poseops.autolabel)
    add_video     videos → diverse frames as pre-labeled tasks          (steps: poseops.frames, poseops.video_ingest)
    loop          pull → train → promote → deploy → autolabel
    serve         every flow as a deployment with its schedule

Prefect reads its settings when it is first imported: entry points call
`poseops.stack.connect_prefect(settings)` before importing a flow module, so runs
reach the Prefect server poseops runs and Prefect's state stays under POSEOPS_HOME.
What each run reports (its artifact's Markdown) is rendered by `poseops.reports`.
"""
