"""Object storage: the S3-compatible endpoint that holds the DVC remote and the MLflow artifacts.

One home for what reaching S3 takes. The settings say where (`POSEOPS_S3_ENDPOINT_URL`, empty for
AWS itself; `POSEOPS_DVC_REMOTE`; `POSEOPS_ARTIFACTS_URL`); the credentials are the standard
`AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (and `AWS_DEFAULT_REGION`) of the environment.
Child processes never inherit the secret key (`settings.child_env`): those that talk to S3
(DVC, the MLflow server) get `s3_env(settings)` explicitly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from poseops.errors import PoseopsError
from poseops.settings import Settings

# What boto3 (DVC's s3fs, the MLflow server) reads from the environment to sign requests.
CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION",
                   "AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE")
LOCAL_REMOTE_NAME = "local"  # the default remote: a folder, <home>/dvc-remote unless POSEOPS_DVC_REMOTE says
S3_REMOTE_NAME = "storage"  # the remote POSEOPS_DVC_REMOTE=s3://… makes the default


class StorageError(PoseopsError, RuntimeError):
    """An S3 URL that cannot be used, or an endpoint/bucket that cannot be reached; the message says what to do."""


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str = ""

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")


def is_s3_url(url: str) -> bool:
    return url.startswith("s3://")


def parse_s3_url(url: str, key: str = "the URL") -> S3Location:
    """`s3://bucket/prefix` as bucket and prefix; StorageError naming `key` when it is not one."""
    parts = urlsplit(url.strip())
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise StorageError(f"{key}={url!r} is not an S3 URL: write it as s3://BUCKET/PATH (e.g. s3://poseops/dvc)")
    return S3Location(parts.netloc, parts.path.strip("/"))


def s3_credentials() -> dict[str, str]:
    """The AWS credentials (and region) of this process's environment, for a child that talks to S3."""
    return {key: os.environ[key] for key in CREDENTIAL_KEYS if os.environ.get(key)}


def s3_env(settings: Settings) -> dict[str, str]:
    """The environment a child process needs to reach S3: the AWS credentials this process has, and the endpoint.

    `AWS_ENDPOINT_URL` is read by boto3 and s3fs (DVC), `MLFLOW_S3_ENDPOINT_URL` by MLflow's artifact
    store; both only when `POSEOPS_S3_ENDPOINT_URL` is set (else boto3 goes to AWS itself).
    Give it to the child with `child_env(s3_env(settings))`.
    """
    env = s3_credentials()
    if settings.s3_endpoint_url:
        env |= {"AWS_ENDPOINT_URL": settings.s3_endpoint_url, "MLFLOW_S3_ENDPOINT_URL": settings.s3_endpoint_url}
    return env


def s3_client(settings: Settings):
    """A boto3 S3 client for the configured endpoint (AWS when none), with the environment's credentials."""
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=5, read_timeout=20, retries={"max_attempts": 2})  # a check, not a transfer
    return boto3.client("s3", endpoint_url=settings.s3_endpoint_url or None, config=config)


def _where(settings: Settings) -> str:
    return f"the S3 endpoint {settings.s3_endpoint_url}" if settings.s3_endpoint_url else "AWS S3"


def check_bucket(settings: Settings, url: str, key: str = "the URL") -> S3Location:
    """The bucket of `url` exists and these credentials may use it; else StorageError saying what to do."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    location = parse_s3_url(url, key)
    where = _where(settings)
    try:
        s3_client(settings).head_bucket(Bucket=location.bucket)
    except NoCredentialsError:
        raise StorageError(f"{key}={url}: no S3 credentials to reach bucket {location.bucket!r} at {where}: set "
                           "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (environment or .env)") from None
    except ClientError as e:
        code = str(e.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket"):
            make = f"aws s3 mb s3://{location.bucket}" + (
                f" --endpoint-url {settings.s3_endpoint_url}" if settings.s3_endpoint_url else "")
            raise StorageError(f"{key}={url}: bucket {location.bucket!r} does not exist at {where}: create it "
                               f"(`{make}`) or point {key} at an existing bucket") from None
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            raise StorageError(f"{key}={url}: {where} refused access to bucket {location.bucket!r} ({code}): check "
                               "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket's policy") from None
        raise StorageError(f"{key}={url}: bucket {location.bucket!r} at {where} answered {code}: {e}") from None
    except BotoCoreError as e:
        raise StorageError(f"{key}={url}: {where} cannot be reached for bucket {location.bucket!r} ({e}): start it, "
                           "or correct POSEOPS_S3_ENDPOINT_URL") from None
    return location


@dataclass(frozen=True)
class DvcRemote:
    """The DVC remote the settings ask for: its name in `.dvc/config`, URL and S3 endpoint (None: not S3/AWS)."""

    name: str
    url: str
    endpointurl: str | None = None


def wanted_dvc_remote(settings: Settings) -> DvcRemote:
    """POSEOPS_DVC_REMOTE as a DVC remote: s3:// (with the endpoint), a folder, or `<home>/dvc-remote` when empty."""
    value = settings.dvc_remote.strip()
    if is_s3_url(value):
        location = parse_s3_url(value, "POSEOPS_DVC_REMOTE")
        return DvcRemote(S3_REMOTE_NAME, location.url, settings.s3_endpoint_url or None)
    if "://" in value:
        raise StorageError(f"POSEOPS_DVC_REMOTE={value!r}: poseops sets up an s3:// URL or a folder; for another "
                           "kind, leave POSEOPS_DVC_REMOTE empty and add the remote with `dvc remote add -d`")
    folder = Path(value).expanduser() if value else settings.home / "dvc-remote"
    return DvcRemote(LOCAL_REMOTE_NAME, str(folder.resolve()))
