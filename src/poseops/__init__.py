"""poseops: self-hosted pose-estimation MLOps.

The shared logic of the flows, the DVC stages, the service and the `poseops` CLI.
"""

__version__ = "0.1.0"
