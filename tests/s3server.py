"""A real S3-compatible server on loopback for tests and benchmarks: moto in server mode.

`running_moto()` starts `python -m moto.server` on a free loopback port, waits until it
answers, and stops it at the end. Buckets are made by the caller (`make_bucket`).

What moto (5.x, server mode) checks and does not, found by reading
`moto/s3/responses.py`, `moto/core/authorization.py` and `moto/iam/access_control.py`
and by trying it:

- By default no signature is verified: any `Authorization` header is accepted, with any
  access key, secret or region. `require_signatures` turns on moto's IAM checking
  (the `reset-auth` API); from then on header-signed requests are verified as SigV4
  against moto's IAM users, and a wrong secret is refused with 403.
- Presigned URLs are never verified. With default settings moto only looks for the
  substring `Signature=` in the URL: a tampered signature, a wrong secret and an
  `X-Amz-Expires` long past are all served with 200 for an existing key. With
  signature checking on, every presigned or anonymous GET fails with a 500 (moto reads
  an `Authorization` header that such requests do not have). So `verify_presigned`
  below checks presigned URLs in the test instead (the SigV4 query signature
  recomputed from the secret, the expiry against a clock), and a test asserts moto's
  laxness so that this note cannot go stale unseen.
- What moto does check with default settings: an unsigned request for an object is
  refused (403) unless the bucket policy allows it or the object's ACL is public-read,
  so a `public/` prefix opened by a bucket policy behaves as on AWS; bucket names are
  validated; ranged GETs, user metadata, versioning and deletes behave as S3's.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import attrs

ACCESS_KEY_ID = "AKIATESTORCHESTRATOR"
SECRET_ACCESS_KEY = "test-secret-not-a-real-one"  # noqa: S105  (moto checks none)
REGION = "eu-west-3"


@attrs.frozen
class MotoServer:
    endpoint: str
    pid: int


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_moto(timeout_s: float = 30.0) -> Iterator[MotoServer]:
    """A moto S3 server on a free loopback port, for the duration of the block."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(endpoint, process, timeout_s)
        yield MotoServer(endpoint=endpoint, pid=process.pid)
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_up(endpoint: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"moto server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1) as response:  # noqa: S310
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"moto server at {endpoint} did not answer in {timeout_s}s")
        time.sleep(0.05)


def client(endpoint: str):
    """A boto3 client for setting up and inspecting the test server (not the code under test).

    Imported here, not at the top, so that a benchmark worker measuring another client's
    import time and memory does not load boto3 by importing this module.
    """
    import boto3  # noqa: PLC0415
    from botocore.config import Config  # noqa: PLC0415

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
        region_name=REGION,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )


def make_bucket(endpoint: str, bucket: str, *, public_prefix: str = "public/") -> None:
    """A versioned bucket whose `public_prefix` anyone may read, as an operator would set it.

    Versioning lets a test count writes: every PUT makes a version, so an idempotent
    repeat that rewrote nothing leaves the count unchanged.
    """
    s3 = client(endpoint)
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": "*",
                "Action": "s3:GetObject",
                "Resource": f"arn:aws:s3:::{bucket}/{public_prefix}*",
            }
        ],
    }
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))


def versions(endpoint: str, bucket: str, key: str) -> int:
    """How many times `key` was written (object versions, delete markers excluded)."""
    listing = client(endpoint).list_object_versions(Bucket=bucket, Prefix=key)
    return sum(1 for v in listing.get("Versions", []) if v["Key"] == key)


def verify_presigned(url: str, *, secret: str, now: dt.datetime) -> str | None:
    """Check a SigV4 presigned GET URL as S3 would; None when valid, else the reason.

    Moto does not do this (see the module docstring), so the S3 contract test does.
    Only the shape S3 clients produce for a GET is handled: `host` the one signed header,
    an unsigned payload.
    """
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    params = dict(query)
    if params.get("X-Amz-Algorithm") != "AWS4-HMAC-SHA256":
        return "not SigV4"
    if params.get("X-Amz-SignedHeaders") != "host":
        return f"unexpected signed headers {params.get('X-Amz-SignedHeaders')!r}"
    signed_at = dt.datetime.strptime(params["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    expires = int(params["X-Amz-Expires"])
    if now > signed_at + dt.timedelta(seconds=expires):
        return "expired"
    _, day, region, service, _ = params["X-Amz-Credential"].split("/")
    canonical_query = "&".join(
        f"{_quote(k)}={_quote(v)}" for k, v in sorted(query) if k != "X-Amz-Signature"
    )
    canonical_request = "\n".join(
        [
            "GET",
            parts.path,
            canonical_query,
            f"host:{parts.netloc}\n",
            "host",
            "UNSIGNED-PAYLOAD",
        ]
    )
    scope = f"{day}/{region}/{service}/aws4_request"
    to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            params["X-Amz-Date"],
            scope,
            hashlib.sha256(canonical_request.encode()).hexdigest(),
        ]
    )
    key = f"AWS4{secret}".encode()
    for part in (day, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, params.get("X-Amz-Signature", "")):
        return "signature does not match"
    return None


def _quote(value: str) -> str:
    return urllib.parse.quote(value, safe="-_.~")


def require_signatures(endpoint: str) -> tuple[str, str]:
    """Make an IAM user allowed all of S3, then make moto verify every signature.

    Returns the user's access key id and secret. For a server of its own: it stays on.
    """
    import boto3  # noqa: PLC0415

    iam = boto3.client(
        "iam",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
    )
    iam.create_user(UserName="orchestrator")
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
    }
    iam.put_user_policy(UserName="orchestrator", PolicyName="s3", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="orchestrator")["AccessKey"]
    request = urllib.request.Request(  # noqa: S310  (loopback, our own server)
        f"{endpoint}/moto-api/reset-auth",
        data=b"0",
        method="POST",
        headers={"Content-Type": "text/plain"},  # a form body would be parsed away
    )
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
        response.read()
    return key["AccessKeyId"], key["SecretAccessKey"]
