"""Where everything lives: bucket names, prefixes and keys, spelled here and nowhere else.

The data bucket::

    incoming/<model>/<class>/<file>        an upload (the only prefix that triggers retraining)
    incoming/<model>/<any>.zip             an archive of class folders: <class>/<file> entries
    incoming/_retrain/<model>[.json|/<any>]  a retraining request; optional JSON {"mode": ...}
    train/<model>/<class>/<sha256>.<ext>   ingested images, named by their content
    test/<model>/<class>/<sha256>.<ext>    the held-out split: an image's hash decides its split
    rejected/<id>.json                     why an upload (or archive entry) was refused
    jobs/locks/<model>.json                the lock that lets one job per model run at a time
    jobs/<id>.json                         a job's record
    jobs/pending/<model>/<class>/<sha256>.<ext>  a marker per image ingested since the last job
    embeddings/<model>/<cache key>/<shard>.npz  backbone features of the images, by their
                                           sha256 (``imgclf.pipeline.embeddings``)
    captures/...                           sampled predict answers and their images
                                           (``imgclf.captures``)
    feedback/<pending|approved|rejected>/<request id>.json  corrected labels (``imgclf.feedback``)

The model registry (``MODEL_REGISTRY_URI``, a bucket prefix or a local folder)::

    <name>/versions/<NNNN>/<file>         an immutable published version (``imgclf.artifact``)
    <name>/aliases/<alias>.json           a pointer such as ``live``
"""

from __future__ import annotations

import re

from imgclf.storage import Store, open_store

# A model or class name: lowercase, digits, "-" and "_"; safe as an S3 key part, a folder name, a
# URL path segment and a label. Names starting with "_" are reserved (``incoming/_retrain/``).
NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")

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
LOCKS = f"{JOBS}locks/"
PENDING = f"{JOBS}pending/"
# Where a SageMaker training job's own (empty) output goes.
SAGEMAKER_OUTPUT = f"{JOBS}sagemaker/"
# Cached backbone features, one folder per model and backbone + framing (retraining only).
EMBEDDINGS = "embeddings/"

LIVE_ALIAS = "live"


def data_store(bucket: str) -> Store:
    """Opens the data bucket ``bucket`` (on AWS, or wherever ``AWS_ENDPOINT_URL`` points)."""
    return open_store(bucket_uri(bucket))


def bucket_uri(bucket: str, prefix: str = "") -> str:
    """Returns ``s3://<bucket>/<prefix>``."""
    return f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"


def lock_key(model: str) -> str:
    """The key of a model's job lock."""
    return f"{LOCKS}{model}.json"


def model_prefix(split: str, model: str) -> str:
    """``train/<model>/``, ``test/<model>/`` or ``jobs/pending/<model>/``."""
    return f"{split}{model}/"


def embeddings_prefix(model: str) -> str:
    """``embeddings/<model>/``: a model's cached backbone features, one sub-folder per cache key."""
    return f"{EMBEDDINGS}{model}/"


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
