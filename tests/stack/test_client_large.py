"""test.py with a photo larger than one request may carry: it goes through S3 by presigned POST.

Against the local stack: the same photo sent in the body is refused (413), while the client
uploads it to the data bucket's uploads/ and classifies it by its key.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import boto3
import numpy as np
import pytest
import requests
import skimage.data
from PIL import Image

from helpers import ROOT, RunningStack

pytestmark = pytest.mark.slow


def large_photo(path: Path) -> Path:
    """A real photo (skimage's chelsea) upscaled with sensor noise: about 6 MB as a JPEG."""
    size = (3600, 2400)
    image = Image.fromarray(skimage.data.chelsea()).resize(size, Image.Resampling.BICUBIC)
    noise = np.random.default_rng(0).normal(0, 6, (size[1], size[0], 3))
    pixels = np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, "JPEG", quality=98)
    return path


def test_a_file_over_the_body_limit_is_classified_through_s3(
    local_stack: RunningStack, tmp_path: Path
) -> None:
    photo = large_photo(tmp_path / "chelsea.jpg")
    assert 4_500_000 < photo.stat().st_size < 12_000_000
    # GIVEN that the API refuses it as a request body
    direct = requests.post(
        f"{local_stack.api_url}/predict",
        data=photo.read_bytes(),
        headers={"content-type": "image/jpeg"},
        timeout=60,
    )
    assert direct.status_code == 413
    # WHEN test.py sends it
    done = subprocess.run(
        [sys.executable, "test.py", "--url", local_stack.api_url, "--file", str(photo)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # THEN it is classified, after an upload under uploads/
    assert done.returncode == 0, done.stderr
    assert "v0001" in done.stdout
    s3 = boto3.client(
        "s3",
        endpoint_url=local_stack.endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    uploaded = s3.list_objects_v2(Bucket="imgclf-data", Prefix="uploads/").get("Contents", [])
    assert photo.stat().st_size in {item["Size"] for item in uploaded}
