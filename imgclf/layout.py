"""Where everything lives: bucket names, prefixes and keys, spelled here and nowhere else.

The data bucket::

    incoming/<class>/<file>               an upload (the only prefix that triggers retraining)
    incoming/<any>.zip                    an archive of class folders: <class>/<file> entries
    incoming/_retrain/<any>               a retraining request; optional JSON {"mode": ...}
    train/<class>/<sha256>.<ext>          ingested images, named by their content
    test/<class>/<sha256>.<ext>           the fixed test split: seeded, never written by uploads
    rejected/<id>.json                    why an upload (or archive entry) was refused
    jobs/lock.json                        the lock that lets one training job run at a time
    jobs/<id>.json                        a job's record
    jobs/pending/<class>/<sha256>.<ext>   one empty marker per image ingested since the last job

The model registry (``MODEL_REGISTRY_URI``, a bucket prefix or a local folder)::

    <name>/versions/<NNNN>/<file>         an immutable published version (``imgclf.artifact``)
    <name>/aliases/<alias>.json           a pointer such as ``live``
"""

from __future__ import annotations

from imgclf.storage import Store, open_store

# The names the local stack creates, and the settings' defaults; template.yaml names its own.
DATA_BUCKET = "imgclf-data"
MODEL_BUCKET = "imgclf-models"
REGISTRY_URI = f"s3://{MODEL_BUCKET}/models"

INCOMING = "incoming/"
TRIGGER_PREFIX = f"{INCOMING}_retrain/"
TRAIN = "train/"
TEST = "test/"
REJECTED = "rejected/"
JOBS = "jobs/"
LOCK_KEY = f"{JOBS}lock.json"
PENDING = f"{JOBS}pending/"
# Where a SageMaker training job's own (empty) output goes.
SAGEMAKER_OUTPUT = f"{JOBS}sagemaker/"

LIVE_ALIAS = "live"


def data_store(bucket: str) -> Store:
    """Opens the data bucket ``bucket`` (on AWS, or wherever ``AWS_ENDPOINT_URL`` points)."""
    return open_store(bucket_uri(bucket))


def bucket_uri(bucket: str, prefix: str = "") -> str:
    """Returns ``s3://<bucket>/<prefix>``."""
    return f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"


def job_key(job_id: str) -> str:
    """The key of a job's record."""
    return f"{JOBS}{job_id}.json"


def versions_prefix(model: str) -> str:
    """The registry prefix under which a model's versions are."""
    return f"{model}/versions/"


def version_key(model: str, version: str, file: str = "") -> str:
    """The registry key of one file of a version (or, without ``file``, its folder)."""
    return f"{versions_prefix(model)}{version}/{file}"


def alias_key(model: str, alias: str) -> str:
    """The registry key of an alias."""
    return f"{model}/aliases/{alias}.json"
