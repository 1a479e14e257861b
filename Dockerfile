# syntax=docker/dockerfile:1
# The two Lambda images of template.yaml, one target each (`sam build` picks them by
# DockerBuildTarget):
#   serve  PredictFunction: requirements-lambda.txt (LiteRT, Pillow, numpy, boto3, Powertools),
#          the core modules of imgclf with imgclf/registry/, imgclf/feedback/ and
#          imgclf/serving/, lambda_func.py
#          and the bundled model. No TensorFlow, and none of the pipeline or retrain code.
#   train  RetrainFunction, and the SageMaker training job it may launch: requirements-train.txt
#          (the serving set + TensorFlow, Keras, Keras Tuner), the whole package and the handler
#          (no bundled model: retraining starts from the registry's live version).
#
# AWS's Lambda base image for Python 3.12 (Amazon Linux 2023), pinned by tag. For bit-for-bit
# rebuilds pin its digest as well: `docker buildx imagetools inspect public.ecr.aws/lambda/python:3.12`
# prints it; then use BASE_IMAGE=public.ecr.aws/lambda/python:3.12@sha256:<digest>.
#
# Layer order: dependencies first (rebuilt only when a requirements file changes), then the
# bundled model (changes only with `make model`), then the code, so a code-only change rebuilds
# and pushes a few hundred kB.
# Packages go to ${LAMBDA_TASK_ROOT} (/var/task), first on sys.path, so the pinned boto3 wins
# over the copy the runtime ships in /var/runtime.
ARG BASE_IMAGE=public.ecr.aws/lambda/python:3.12

FROM ${BASE_IMAGE} AS serve
COPY requirements-lambda.txt ${LAMBDA_TASK_ROOT}/
RUN pip install --no-cache-dir --only-binary=:all: --target "${LAMBDA_TASK_ROOT}" \
        -r "${LAMBDA_TASK_ROOT}/requirements-lambda.txt"
COPY model/ ${LAMBDA_TASK_ROOT}/model/
# The core modules (imgclf/serving/__init__.py lists them; tests/deploy/test_dockerfile.py
# imports lambda_func from exactly these files, with the training stack blocked).
COPY imgclf/__init__.py imgclf/settings.py imgclf/errors.py imgclf/storage.py imgclf/layout.py \
     imgclf/preprocess.py imgclf/runtime.py imgclf/artifact.py imgclf/captures.py \
     ${LAMBDA_TASK_ROOT}/imgclf/
COPY imgclf/registry/ ${LAMBDA_TASK_ROOT}/imgclf/registry/
COPY imgclf/feedback/ ${LAMBDA_TASK_ROOT}/imgclf/feedback/
COPY imgclf/serving/ ${LAMBDA_TASK_ROOT}/imgclf/serving/
COPY lambda_func.py ${LAMBDA_TASK_ROOT}/
CMD ["lambda_func.lambda_handler"]

FROM ${BASE_IMAGE} AS train
COPY requirements-lambda.txt requirements-train.txt ${LAMBDA_TASK_ROOT}/
RUN pip install --no-cache-dir --only-binary=:all: --target "${LAMBDA_TASK_ROOT}" \
        -r "${LAMBDA_TASK_ROOT}/requirements-train.txt"
# Lambda's file system is read-only except /tmp: Matplotlib and Keras keep their caches there.
ENV MPLCONFIGDIR=/tmp/matplotlib \
    KERAS_HOME=/tmp/keras \
    TF_CPP_MIN_LOG_LEVEL=2
COPY imgclf/ ${LAMBDA_TASK_ROOT}/imgclf/
COPY retrain_handler.py ${LAMBDA_TASK_ROOT}/
CMD ["retrain_handler.lambda_handler"]
