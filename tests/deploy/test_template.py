"""template.yaml checked offline (no AWS account, no Docker), by the tools and against the code.

The tools (from ``.venv-sam``): ``sam validate --lint``; cfn-lint on the template and on SAM's own
transform of it (only the transformed template shows cycles through the resources SAM generates);
the SAM CLI's readers of what ``sam build`` and ``sam local start-api`` use. The contracts: every
setting is set on the function that reads it, and its value parses; the retrain trigger can never
fire on a key any function writes; serving can only read the model prefix; buckets, alarms and
outputs are what the scripts and clients expect. tests/test_dockerfile.py checks the images.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aws_lambda_powertools import Logger, Metrics

from helpers import ROOT, run_deploy_tool
from imgclf import captures, feedback, layout, settings
from imgclf.serving.app import build_router
from imgclf.serving.auth import ADMIN_ROUTES, PUBLIC_ROUTES
from imgclf.serving.uploads import UPLOADS_PREFIX
from imgclf.settings import RetrainSettings, ServeSettings

REGION = "us-east-1"
# What CloudFormation would substitute for the pseudo parameters.
PSEUDO = {
    "AWS::Partition": "aws",
    "AWS::Region": REGION,
    "AWS::AccountId": "123456789012",
    "AWS::StackName": "imgclf",
    "AWS::StackId": "arn:aws:cloudformation:us-east-1:123456789012:stack/imgclf/"
    "0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d",
    "AWS::URLSuffix": "amazonaws.com",
}
BASIC_EXECUTION_ROLE = "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"

# SAM's own transform (what CloudFormation runs on deploy), run in the SAM venv.
TRANSFORM = """
import json, os, sys
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse
template = yaml_parse(open(sys.argv[1]).read())
for resource in template["Resources"].values():
    if resource["Type"] == "AWS::Serverless::Function":
        # `sam build` fills ImageUri in; any URI stands in for it.
        resource["Properties"]["ImageUri"] = "123456789012.dkr.ecr.us-east-1.amazonaws.com/i:t"
class NoManagedPolicyNames:  # the template names no managed policy
    def load(self):
        return {}
print(json.dumps(transform(template, {}, NoManagedPolicyNames())))
"""

# What `sam build` and `sam local start-api --disable-authorizer` read from the template.
SAM_LOCAL_VIEW = """
import json, os, sys
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
from samcli.lib.providers.api_provider import ApiProvider
from samcli.lib.providers.sam_function_provider import SamFunctionProvider
from samcli.lib.providers.sam_stack_provider import SamLocalStackProvider
overrides = json.loads(sys.argv[2])
stacks, _ = SamLocalStackProvider.get_stacks(sys.argv[1], parameter_overrides=overrides)
api = ApiProvider(stacks, disable_authorizer=True).api
print(json.dumps({
    "stage": api.stage_name,
    "routes": sorted(
        [sorted(r.methods), r.path, r.function_name, r.event_type, r.payload_format_version]
        for r in api.routes
    ),
    "functions": {
        f.name: {"architecture": f.architecture, "metadata": f.metadata, "env": f.environment}
        for f in SamFunctionProvider(stacks).get_all()
    },
}))
"""


@pytest.fixture(scope="module")
def transformed() -> dict[str, Any]:
    """template.yaml after SAM's transform: the plain CloudFormation that gets deployed."""
    result = run_deploy_tool("python", "-c", TRANSFORM, ROOT / "template.yaml")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def sam_local_view(overrides: dict[str, str]) -> dict[str, Any]:
    """Routes and functions as the SAM CLI reads them, with these parameter values."""
    script = (SAM_LOCAL_VIEW, ROOT / "template.yaml", json.dumps(overrides))
    result = run_deploy_tool("python", "-c", *script)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def sam_view() -> dict[str, Any]:
    """``sam_local_view`` with the parameters' defaults."""
    return sam_local_view({})


def dockerfile_targets() -> set[str]:
    """The ``FROM ... AS <target>`` names of the Dockerfile."""
    return set(re.findall(r"^FROM \S+ AS (\S+)", (ROOT / "Dockerfile").read_text(), re.M))


# ---- a small evaluator of the intrinsic functions the template uses ----------------------------
class Stack:
    """The transformed template with one set of parameter values, its intrinsics evaluated."""

    def __init__(self, template: dict[str, Any], **parameters: str) -> None:
        self.template = template
        self.resources: dict[str, Any] = template["Resources"]
        unknown = set(parameters) - set(template["Parameters"])
        assert not unknown, f"no such parameters: {unknown}"
        self.parameters = {
            name: str(parameters.get(name, spec.get("Default", "")))
            for name, spec in template["Parameters"].items()
        }

    def condition(self, expression: Any) -> bool:
        """Evaluates a condition (by name or expression)."""
        if isinstance(expression, str):
            return self.condition(self.template["Conditions"][expression])
        (function, args), *_ = expression.items()
        if function == "Fn::Equals":
            return self.value(args[0]) == self.value(args[1])
        if function == "Fn::Not":
            return not self.condition(args[0])
        if function == "Fn::And":
            return all(self.condition(a) for a in args)
        if function == "Fn::Or":
            return any(self.condition(a) for a in args)
        if function == "Condition":
            return self.condition(args)
        raise NotImplementedError(function)

    def exists(self, logical_id: str) -> bool:
        """Whether the resource is created with these parameters."""
        condition = self.resources[logical_id].get("Condition")
        return condition is None or self.condition(condition)

    def ref(self, name: str) -> Any:
        if name in PSEUDO:
            return PSEUDO[name]
        if name == "AWS::NoValue":
            return None
        if name in self.parameters:
            if self.template["Parameters"][name]["Type"] == "CommaDelimitedList":
                return self.parameters[name].split(",")
            return self.parameters[name]
        resource = self.resources[name]
        if resource["Type"] == "AWS::S3::Bucket":
            return self.value(resource["Properties"]["BucketName"])
        return f"<{name}>"

    def attribute(self, name: str, attribute: str) -> str:
        if self.resources[name]["Type"] == "AWS::S3::Bucket" and attribute == "Arn":
            return f"arn:aws:s3:::{self.ref(name)}"
        return f"<{name}.{attribute}>"

    def substitute(self, text: str, variables: dict[str, Any]) -> str:
        def one(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in variables:
                return str(self.value(variables[name]))
            if "." in name and name not in PSEUDO:
                return self.attribute(*name.split(".", 1))
            return str(self.ref(name))

        return re.sub(r"\$\{([^}!]+)\}", one, text)

    def value(self, node: Any) -> Any:
        """Evaluates every intrinsic in ``node``; ``AWS::NoValue`` items disappear."""
        if isinstance(node, list):
            return [v for v in (self.value(n) for n in node) if v is not None]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (key, args), *_ = node.items()
            if key == "Ref":
                return self.ref(args)
            if key == "Fn::GetAtt":
                return self.attribute(*args)
            if key == "Fn::Sub":
                text, variables = (args, {}) if isinstance(args, str) else args
                return self.substitute(text, variables)
            if key == "Fn::Select":
                return self.value(args[1])[int(args[0])]
            if key == "Fn::Split":
                return self.value(args[1]).split(args[0])
            if key == "Fn::Join":
                return args[0].join(self.value(args[1]))
            if key == "Fn::If":
                return self.value(args[1] if self.condition(args[0]) else args[2])
        return {k: v for k, v in ((k, self.value(v)) for k, v in node.items()) if v is not None}

    def properties(self, logical_id: str) -> dict[str, Any]:
        return self.value(self.resources[logical_id].get("Properties", {}))

    def bucket_name(self, logical_id: str) -> str:
        return self.ref(logical_id)

    def environment(self, function: str) -> dict[str, str]:
        """A function's environment variables as deployed (SAM merged the Globals in)."""
        return self.properties(function)["Environment"]["Variables"]

    def statements(self, role: str) -> Iterator[dict[str, Any]]:
        """Every statement of a role's inline policies."""
        for policy in self.properties(role).get("Policies", []):
            yield from policy["PolicyDocument"]["Statement"]

    def roles(self) -> list[str]:
        return [
            name
            for name, resource in self.resources.items()
            if resource["Type"] == "AWS::IAM::Role" and self.exists(name)
        ]


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def allows(statement: dict[str, Any], action: str) -> bool:
    """Whether an Allow statement's actions cover ``action`` (wildcards included)."""
    return statement["Effect"] == "Allow" and any(
        fnmatch.fnmatchcase(action.lower(), pattern.lower())
        for pattern in as_list(statement["Action"])
    )


def overlaps(resource: str, prefix_arn: str) -> bool:
    """Whether an IAM resource pattern matches some object whose ARN starts with ``prefix_arn``."""
    literal = re.split(r"[*?]", resource, maxsplit=1)[0]
    if literal == resource:
        return resource.startswith(prefix_arn)
    return literal.startswith(prefix_arn) or prefix_arn.startswith(literal)


# ---- the tools ---------------------------------------------------------------------------------
@pytest.mark.slow  # 2-5 s
def test_sam_validate_lint_passes_offline() -> None:
    result = run_deploy_tool("sam", "validate", "--lint", "--region", REGION)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is a valid SAM Template" in result.stdout


@pytest.mark.slow  # 3-5 s
def test_cfn_lint_passes_on_the_template_and_on_its_transform(
    transformed: dict[str, Any], tmp_path: Path
) -> None:
    # cfn-lint transforms SAM templates itself, but sees no cycle through resources SAM adds
    # (an S3 trigger makes the bucket depend on the function): the transform's output does.
    deployed = tmp_path / "transformed.json"
    deployed.write_text(json.dumps(transformed))
    for template in (ROOT / "template.yaml", deployed):
        result = run_deploy_tool("cfn-lint", "--regions", REGION, "--", template)
        assert result.returncode == 0, f"{template.name}:\n{result.stdout}{result.stderr}"


def test_sam_local_start_api_routes_every_path_to_the_predict_function(
    sam_view: dict[str, Any],
) -> None:
    view = sam_view
    assert view["stage"] == "$default"
    expected = [
        ["GET"],
        ["GET", "POST"],  # /feedback: the list (GET) and new feedback (POST)
        ["POST"],
        ["X-AMAZON-APIGATEWAY-ANY-METHOD"],
    ]
    # The SAM CLI cannot evaluate the HttpApi's conditional CorsConfiguration (ApiCorsOrigins)
    # and answers CORS preflights itself on every route: OPTIONS is its own, not the template's.
    routes = {tuple(m for m in r[0] if m != "OPTIONS"): r for r in view["routes"]}
    assert sorted(routes) == [tuple(m) for m in expected]
    # Every route the handler's router has, and the catch-all for the JSON 404/405 answers.
    paths = sorted(r[1] for r in view["routes"])
    router = build_router(ServeSettings(), Logger(service="test"), Metrics(namespace="test"))
    assert paths == sorted(["$default", *router.routes])
    for _, _, function, event_type, payload in view["routes"]:
        assert (function, event_type, payload) == ("PredictFunction", "HttpApi", "2.0")


def test_sam_build_uses_the_dockerfile_targets_and_the_architecture_parameter(
    sam_view: dict[str, Any],
) -> None:
    arm = sam_local_view({"Architecture": "arm64"})["functions"]
    functions = sam_view["functions"]
    assert functions["PredictFunction"]["architecture"] == "x86_64"  # the default
    assert arm["PredictFunction"]["architecture"] == "arm64"
    # tensorflow-cpu has x86_64 wheels only.
    assert functions["RetrainFunction"]["architecture"] == "x86_64"
    assert arm["RetrainFunction"]["architecture"] == "x86_64"
    for function, target in (("PredictFunction", "serve"), ("RetrainFunction", "train")):
        metadata = functions[function]["metadata"]
        assert metadata["Dockerfile"] == "Dockerfile" and Path(metadata["DockerContext"]) == ROOT
        assert metadata["DockerBuildTarget"] == target
    assert dockerfile_targets() == {"serve", "train"}


# ---- the template and the code -------------------------------------------------------------------
class RecordingEnv(dict[str, str]):
    """An empty environment that records the names a settings class asks for."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.names.add(key)
        return super().get(key, default)


def names_read(settings_class: type[ServeSettings] | type[RetrainSettings]) -> set[str]:
    env = RecordingEnv()
    settings_class.from_env(env)
    return env.names


def test_every_setting_is_set_on_the_function_that_reads_it(transformed: dict[str, Any]) -> None:
    stack = Stack(transformed)
    predict, retrain = stack.environment("PredictFunction"), stack.environment("RetrainFunction")
    assert names_read(ServeSettings) - set(predict) == set()
    assert names_read(RetrainSettings) - set(retrain) == set()
    declared = {v for k, v in vars(settings).items() if k.startswith("ENV_")}
    assert declared - set(predict) - set(retrain) == set(), "a setting the template never sets"


def test_the_template_values_are_valid_settings(transformed: dict[str, Any]) -> None:
    stack = Stack(transformed)
    serve = ServeSettings.from_env(stack.environment("PredictFunction"))
    assert serve.model_registry_uri == f"s3://{stack.bucket_name('ModelBucket')}/models"
    # The serve image copies the bundled model to ${LAMBDA_TASK_ROOT}/model/ = /var/task/model.
    assert "COPY model/ ${LAMBDA_TASK_ROOT}/model/" in (ROOT / "Dockerfile").read_text()
    assert serve.model_dir == Path("/var/task/model")
    # The console's uploads go to the data bucket the retrain function ingests.
    assert serve.data_bucket == stack.bucket_name("DataBucket")
    allowed = transformed["Parameters"]["RetrainBackend"]["AllowedValues"]
    for backend in allowed:
        stack = Stack(transformed, RetrainBackend=backend, SageMakerImageUri="an-image-uri")
        retrain = RetrainSettings.from_env(stack.environment("RetrainFunction"))
        assert retrain.backend == backend
        assert retrain.data_bucket == stack.bucket_name("DataBucket")
        assert retrain.model_registry_uri == serve.model_registry_uri
        assert bool(retrain.sagemaker_role_arn) == (backend == "sagemaker")
    # Both functions see the same image limits: training accepts what serving accepts.
    assert retrain.image_limits == serve.image_limits


def test_sam_local_resolves_every_environment_variable_to_text(sam_view: dict[str, Any]) -> None:
    for function in sam_view["functions"].values():
        variables = function["env"]["Variables"]
        assert all(isinstance(v, str | int) for v in variables.values()), variables


def test_retrain_trigger_is_the_incoming_prefix_and_nothing_can_write_there(
    transformed: dict[str, Any],
) -> None:
    for backend in ("lambda", "sagemaker"):
        stack = Stack(transformed, RetrainBackend=backend, SageMakerImageUri="an-image-uri")
        bucket = stack.bucket_name("DataBucket")
        (trigger,) = stack.properties("DataBucket")["NotificationConfiguration"][
            "LambdaConfigurations"
        ]
        assert trigger["Function"] == "<RetrainFunction.Arn>"
        assert trigger["Event"] == "s3:ObjectCreated:*"
        (rule,) = trigger["Filter"]["S3Key"]["Rules"]
        assert rule == {"Name": "prefix", "Value": layout.INCOMING}
        incoming = f"arn:aws:s3:::{bucket}/{layout.INCOMING}"
        for role in stack.roles():
            for statement in stack.statements(role):
                if allows(statement, "s3:PutObject"):
                    for resource in as_list(statement["Resource"]):
                        if role == "PredictFunctionRole" and resource == f"{incoming}*":
                            continue  # it signs admins' presigned POSTs of training images
                        assert not overlaps(resource, incoming), f"{role} may write {resource}"
    # What the retrain code writes in the data bucket, by its own constants.
    written = (
        layout.TRAIN,
        layout.TEST,
        layout.REJECTED,
        layout.PENDING,
        layout.JOBS,
        layout.LOCKS,
    )
    for prefix in written:
        assert not (prefix.startswith(layout.INCOMING) or layout.INCOMING.startswith(prefix))


def serving_permissions(stack: Stack) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """PredictFunctionRole's S3 actions -> [(resource, condition)]."""
    granted: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for statement in stack.statements("PredictFunctionRole"):
        assert statement["Effect"] == "Allow"
        for action in as_list(statement["Action"]):
            for resource in as_list(statement["Resource"]):
                granted.setdefault(action, []).append((resource, statement.get("Condition", {})))
    return granted


def test_the_serving_role_reads_the_registry_and_writes_only_uploads_captures_and_the_alias(
    transformed: dict[str, Any],
) -> None:
    stack = Stack(transformed)
    models = f"arn:aws:s3:::{stack.bucket_name('ModelBucket')}"
    data = f"arn:aws:s3:::{stack.bucket_name('DataBucket')}"
    role = stack.properties("PredictFunctionRole")
    assert role["ManagedPolicyArns"] == [BASIC_EXECUTION_ROLE]  # its own logs, nothing else
    granted = serving_permissions(stack)
    assert set(granted) == {"s3:GetObject", "s3:ListBucket", "s3:PutObject", "s3:DeleteObject"}
    # The one delete: reviewed feedback leaves feedback/pending/ (for approved/ or rejected/).
    deletes = [resource for resource, _ in granted["s3:DeleteObject"]]
    assert deletes == [f"{data}/{feedback.FEEDBACK}{feedback.PENDING}/*"]
    writes = sorted(resource for resource, _ in granted["s3:PutObject"])
    # Presigned POSTs (uploads/ for anyone who may predict, incoming/ for admins), captured
    # answers and feedback, and the live alias an admin's promote or rollback moves; a
    # version's files never have that name, so published versions stay out of reach, and so
    # does the training data.
    assert writes == sorted(
        [
            f"{data}/{UPLOADS_PREFIX}*",
            f"{data}/{layout.INCOMING}*",
            f"{data}/{captures.CAPTURES}*",
            f"{data}/{feedback.FEEDBACK}*",
            f"{models}/models/*/aliases/live.json",
        ]
    )
    for never in (layout.TRAIN, layout.TEST, layout.JOBS, layout.REJECTED):
        assert not any(overlaps(w, f"{data}/{never}") for w in writes), never
    for file in ("manifest.json", "model.tflite", "labels.json", "metrics.json", "model.keras"):
        version_file = f"{models}/models/scene/versions/0001/{file}"
        assert not any(fnmatch.fnmatchcase(version_file, w) for w in writes), file
    reads = sorted(resource for resource, _ in granted["s3:GetObject"])
    read_prefixes = (
        UPLOADS_PREFIX,
        layout.REJECTED,
        layout.JOBS,
        captures.CAPTURES,
        feedback.FEEDBACK,
    )
    assert reads == sorted([f"{models}/models/*"] + [f"{data}/{p}*" for p in read_prefixes])
    listings = dict(granted["s3:ListBucket"])
    assert listings[models] == {}  # the bucket holds nothing but the registry
    prefixes = listings[data]["StringLike"]["s3:prefix"]
    listed = (layout.INCOMING, layout.REJECTED, layout.JOBS, layout.TRAIN, layout.TEST)
    assert sorted(prefixes) == sorted(
        f"{p}*" for p in (*listed, captures.CAPTURES, feedback.FEEDBACK)
    )


def test_write_routes_always_need_an_admin_jwt_and_the_console_is_public(
    transformed: dict[str, Any],
) -> None:
    issuer = {"JwtIssuer": "https://issuer.example", "JwtAudience": "console"}
    for parameters in ({}, {"AuthType": "JWT", **issuer}, {"AuthType": "AWS_IAM"}, issuer):
        stack = Stack(transformed, **parameters)
        routes = {
            stack.properties(name)["RouteKey"]: stack.properties(name)
            for name, resource in stack.resources.items()
            if resource["Type"] == "AWS::ApiGatewayV2::Route"
        }
        auth_type = stack.parameters["AuthType"]
        for key, route in routes.items():
            kind = route["AuthorizationType"]
            if key in ADMIN_ROUTES:
                if "JwtIssuer" in parameters:
                    assert kind == "JWT", key
                    assert route["AuthorizerId"] == "<JwtAuthorizer>"
                    assert route["AuthorizationScopes"] == ["imgclf/admin"]
                else:  # no identity provider: SigV4 only, never anonymous
                    assert kind == "AWS_IAM" and "AuthorizationScopes" not in route, key
            elif key in PUBLIC_ROUTES:
                assert kind == "NONE" and "AuthorizerId" not in route, key
            else:
                assert kind == auth_type and "AuthorizationScopes" not in route, key
        assert set(ADMIN_ROUTES) | set(PUBLIC_ROUTES) <= set(routes)
        assert stack.exists("JwtAuthorizer") == ("JwtIssuer" in parameters)
    # The handler checks the same scope again (ADMIN_SCOPE), as the template sets it.
    env = Stack(transformed, AdminScope="ops/admin").environment("PredictFunction")
    assert ServeSettings.from_env(env).admin_scope == "ops/admin"


def test_every_route_of_the_router_is_an_api_route(transformed: dict[str, Any]) -> None:
    stack = Stack(transformed)
    keys = {
        stack.properties(name)["RouteKey"]
        for name, resource in stack.resources.items()
        if resource["Type"] == "AWS::ApiGatewayV2::Route"
    }
    router = build_router(ServeSettings(), Logger(service="test"), Metrics(namespace="test"))
    served = {f"{method} {path}" for path, methods in router.routes.items() for method in methods}
    assert keys == served | {"$default"}


def test_the_data_bucket_takes_presigned_posts_from_the_console_and_expires_uploads(
    transformed: dict[str, Any],
) -> None:
    api_origin = "https://<HttpApi>.execute-api.us-east-1.amazonaws.com"
    for origins, expected in (("", [api_origin]), ("https://a.example,https://b.example", None)):
        stack = Stack(transformed, UploadCorsOrigins=origins)
        (rule,) = stack.properties("DataBucket")["CorsConfiguration"]["CorsRules"]
        assert rule["AllowedMethods"] == ["POST"]  # presigned POSTs, nothing else
        assert rule["AllowedOrigins"] == (expected or origins.split(","))
        assert "*" not in rule["AllowedOrigins"]
    rules = Stack(transformed).properties("DataBucket")["LifecycleConfiguration"]["Rules"]
    (expiry,) = [r for r in rules if r.get("Prefix") == UPLOADS_PREFIX]
    assert expiry["Status"] == "Enabled" and expiry["ExpirationInDays"] == 1
    # Captured answers expire after CaptureRetentionDays (30 by default).
    (kept,) = [r for r in rules if r.get("Prefix") == captures.CAPTURES]
    assert kept["Status"] == "Enabled" and kept["ExpirationInDays"] == "30"
    rules_21 = Stack(transformed, CaptureRetentionDays="21").properties("DataBucket")
    (kept_21,) = [
        r for r in rules_21["LifecycleConfiguration"]["Rules"] if r.get("Prefix") == "captures/"
    ]
    assert kept_21["ExpirationInDays"] == "21"
    # Nothing else expires: uploads under incoming/ wait for ingestion, the data is kept.
    assert all("ExpirationInDays" not in r for r in rules if r not in (expiry, kept))


def test_captures_are_off_by_default_and_feedback_is_throttled_on_its_route(
    transformed: dict[str, Any],
) -> None:
    env = Stack(transformed).environment("PredictFunction")
    serve = ServeSettings.from_env(env)
    assert serve.capture_fraction == 0.0 and not serve.feedback_auto_approve
    on = ServeSettings.from_env(
        Stack(transformed, CaptureFraction="0.25").environment("PredictFunction")
    )
    assert on.capture_fraction == 0.25
    resource = transformed["Resources"]["HttpApiStage"]
    assert "FeedbackRoute" in as_list(resource.get("DependsOn", []))
    stage = Stack(transformed).properties("HttpApiStage")
    assert stage["RouteSettings"] == {
        "POST /feedback": {"ThrottlingRateLimit": "5", "ThrottlingBurstLimit": "10"}
    }
    assert "POST /feedback" in ADMIN_ROUTES


def test_the_api_answers_other_origins_only_when_asked(transformed: dict[str, Any]) -> None:
    assert "CorsConfiguration" not in Stack(transformed).properties("HttpApi")
    cors = Stack(transformed, ApiCorsOrigins="https://app.example").properties("HttpApi")
    assert cors["CorsConfiguration"]["AllowOrigins"] == ["https://app.example"]
    assert "authorization" in cors["CorsConfiguration"]["AllowHeaders"]


def test_retrain_runs_one_at_a_time_and_keeps_failed_events(transformed: dict[str, Any]) -> None:
    stack = Stack(transformed)
    assert stack.properties("RetrainFunction")["ReservedConcurrentExecutions"] == 1
    invoke = stack.properties("RetrainFunctionEventInvokeConfig")
    assert invoke["DestinationConfig"]["OnFailure"]["Destination"] == "<RetrainFailureQueue.Arn>"


def test_sagemaker_permissions_exist_only_with_the_sagemaker_backend(
    transformed: dict[str, Any],
) -> None:
    for backend in ("lambda", "sagemaker"):
        stack = Stack(transformed, RetrainBackend=backend, SageMakerImageUri="an-image-uri")
        launches = [
            s
            for s in stack.statements("RetrainFunctionRole")
            if allows(s, "sagemaker:CreateTrainingJob") or allows(s, "iam:PassRole")
        ]
        assert len(launches) == (2 if backend == "sagemaker" else 0)
        assert stack.exists("SageMakerTrainingRole") == (backend == "sagemaker")


def test_buckets_are_private_encrypted_versioned_and_tls_only(transformed: dict[str, Any]) -> None:
    stack = Stack(transformed)
    policies = {
        stack.properties(name)["Bucket"]: stack.properties(name)["PolicyDocument"]
        for name, resource in stack.resources.items()
        if resource["Type"] == "AWS::S3::BucketPolicy"
    }
    for bucket in ("DataBucket", "ModelBucket"):
        properties = stack.properties(bucket)
        assert properties["VersioningConfiguration"] == {"Status": "Enabled"}
        assert properties["PublicAccessBlockConfiguration"] == dict.fromkeys(
            ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"),
            True,
        )
        (encryption,) = properties["BucketEncryption"]["ServerSideEncryptionConfiguration"]
        assert encryption["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms")
        assert stack.resources[bucket]["DeletionPolicy"] == "Retain"
        name = stack.bucket_name(bucket)
        (deny,) = policies[name]["Statement"]
        assert deny["Effect"] == "Deny" and deny["Action"] == "s3:*"
        assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        assert sorted(deny["Resource"]) == [f"arn:aws:s3:::{name}", f"arn:aws:s3:::{name}/*"]


def test_alarms_watch_5xx_errors_throttles_and_failed_retrains(
    transformed: dict[str, Any],
) -> None:
    stack = Stack(transformed)
    watched = set()
    for name, resource in stack.resources.items():
        if resource["Type"] != "AWS::CloudWatch::Alarm":
            continue
        alarm = stack.properties(name)
        metrics = [m["MetricStat"]["Metric"] for m in alarm.get("Metrics", []) if "MetricStat" in m]
        for metric in metrics or [alarm]:
            dimensions = {d["Name"]: d["Value"] for d in metric["Dimensions"]}
            watched.add((metric["MetricName"], next(iter(dimensions.values()))))
    assert {
        ("5xx", "<HttpApi>"),
        ("Errors", "<PredictFunction>"),
        ("Throttles", "<PredictFunction>"),
        ("Errors", "<RetrainFunction>"),
        ("ApproximateNumberOfMessagesVisible", "<RetrainFailureQueue.QueueName>"),
    } <= watched


def test_outputs_name_what_the_clients_and_scripts_read(transformed: dict[str, Any]) -> None:
    outputs = Stack(transformed).value(transformed["Outputs"])
    api = outputs["ApiUrl"]["Value"]  # test.py --stack reads this key
    assert api == "https://<HttpApi>.execute-api.us-east-1.amazonaws.com/"
    assert outputs["PredictUrl"]["Value"] == api + "predict"
    # scripts/publish_model.sh and `make retrain-image-uri` read these.
    for key in ("ModelRegistryUri", "ModelName", "RetrainFunctionArn"):
        assert key in outputs
    assert {"DataBucketName", "ModelBucketName", "PredictFunctionArn"} <= set(outputs)
