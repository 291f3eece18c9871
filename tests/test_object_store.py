"""The object store: one contract for files, S3 and the twin, then what each adds.

S3 is moto in server mode on loopback (tests/s3server.py says what moto does not
check, and how these tests make up for it). The file store is served by the daemon's
own `HttpApp` with `FileRoutes`, over real HTTP from hypercorn.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import httpx
import hypercorn.config
import hypercorn.trio
import obstore
import pytest
import trio

from orchestrator.asgi import lifespan, read_body
from orchestrator.http import HttpApp
from orchestrator.metrics import Metrics
from orchestrator.outputs import (
    MAX_PRESIGN_S,
    FileLocation,
    FileObjects,
    FileRoutes,
    ForeignLocation,
    InputKey,
    InvalidKey,
    ObjectNotFound,
    ObjectStore,
    RenderKey,
    Retries,
    S3Access,
    S3Location,
    S3Objects,
    StorageError,
    StorageRefused,
    StorageUnavailable,
    StorageUrlError,
    input_key,
    parse_input_key,
    parse_render_key,
    parse_storage_url,
    render_key,
)
from orchestrator.outputs.testing import MemoryObjects

from . import s3server

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 30
SIGNING_KEY = b"0123456789abcdef0123456789abcdef"
FAST = Retries(attempts=3, wait_initial_s=0.001, wait_max_s=0.005, timeout_s=10.0)
PREFIX = "pfx/"


class Clock:
    """Unix time that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now


Fetch = Callable[[str], Awaitable[tuple[int, bytes, str | None]]]


@attrs.define
class Harness:
    """A store under test, and how to see it from outside."""

    kind: str
    store: ObjectStore
    fetch: Fetch  # GET a URL: status, body, content type
    version: Callable[[str], Awaitable[object]]  # changes exactly when the key is written
    clock: Clock


@pytest.fixture(scope="session")
def signing_moto() -> Iterator[tuple[s3server.MotoServer, str, str]]:
    """A second moto that verifies every header signature, with its one user's keys."""
    with s3server.running_moto() as server:
        bucket = "signed-bucket"
        s3server.client(server.endpoint).create_bucket(
            Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": s3server.REGION}
        )
        key_id, secret = s3server.require_signatures(server.endpoint)
        yield server, key_id, secret


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        yield client


def _fetcher(http: httpx.AsyncClient) -> Fetch:
    async def fetch(url: str) -> tuple[int, bytes, str | None]:
        response = await http.get(url)
        return response.status_code, response.content, response.headers.get("content-type")

    return fetch


@asynccontextmanager
async def serve(app: object) -> AsyncIterator[str]:
    config = hypercorn.config.Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.graceful_timeout = 0.1
    async with trio.open_nursery() as server:
        binds = await server.start(functools.partial(hypercorn.trio.serve, app, config))
        try:
            yield binds[0]
        finally:
            server.cancel_scope.cancel()


async def _no_readiness() -> dict[str, bool]:
    return {}


def daemon_app(routes: FileRoutes | None) -> HttpApp:
    return HttpApp(metrics=Metrics(), readiness=_no_readiness, webhooks=None, files=routes)


@asynccontextmanager
async def file_store(root: Path, clock: Clock) -> AsyncIterator[tuple[FileObjects, str]]:
    """A FileObjects whose base URL is the daemon's HttpApp serving its routes."""
    routes = FileRoutes(root, signing_key=SIGNING_KEY, clock=clock)
    async with serve(daemon_app(routes)) as base:
        yield FileObjects(root, base_url=base, signing_key=SIGNING_KEY, clock=clock), base


def s3_store(moto: s3server.MotoServer, **kwargs: object) -> tuple[S3Objects, str]:
    bucket = f"t-{uuid.uuid4().hex[:16]}"
    s3server.make_bucket(moto.endpoint, bucket, public_prefix=f"{PREFIX}public/")
    store = S3Objects(
        S3Location(bucket, PREFIX),
        access=S3Access(
            endpoint=moto.endpoint,
            region=s3server.REGION,
            access_key_id=s3server.ACCESS_KEY_ID,
            secret_access_key=s3server.SECRET_ACCESS_KEY,
        ),
        retries=FAST,
        **kwargs,  # type: ignore[arg-type]
    )
    return store, bucket


@pytest.fixture(params=["files", "s3", "memory"])
async def harness(
    request: pytest.FixtureRequest, tmp_path: Path, http: httpx.AsyncClient, moto
) -> AsyncIterator[Harness]:
    clock = Clock()
    if request.param == "files":
        async with file_store(tmp_path / "objects", clock) as (files, _):

            async def file_version(key: str) -> object:
                stat = files.path_of(key).stat()
                return stat.st_ino, stat.st_mtime_ns

            yield Harness("files", files, _fetcher(http), file_version, clock)
    elif request.param == "s3":
        store, bucket = s3_store(moto)

        async def s3_version(key: str) -> object:
            return await trio.to_thread.run_sync(
                s3server.versions, moto.endpoint, bucket, PREFIX + key
            )

        yield Harness("s3", store, _fetcher(http), s3_version, clock)
    else:
        twin = MemoryObjects(clock=clock)

        async def twin_fetch(url: str) -> tuple[int, bytes, str | None]:
            body = twin.fetch(url)
            return (404, b"", None) if body is None else (200, body, None)

        async def twin_version(key: str) -> object:
            return twin.writes[key]

        yield Harness("memory", twin, twin_fetch, twin_version, clock)


def a_render() -> str:
    return render_key(uuid.uuid4(), 0, "png")


# The contract: every store.


async def test_a_repeated_put_succeeds_and_rewrites_nothing(harness: Harness):
    """The same bytes again return the same StoredObject and leave the object untouched."""
    key = a_render()
    first = await harness.store.put(key, PNG, content_type="image/png")
    assert first.key == key
    assert first.size_bytes == len(PNG)
    assert first.sha256 == hashlib.sha256(PNG).hexdigest()
    assert first.content_type == "image/png"
    before = await harness.version(key)
    again = await harness.store.put(key, PNG, content_type="image/png")
    assert again == first
    assert await harness.version(key) == before


async def test_different_bytes_replace_the_object(harness: Harness):
    """A put of other bytes under a used key replaces them, for head and reads alike."""
    key = a_render()
    first = await harness.store.put(key, PNG, content_type="image/png")
    before = await harness.version(key)
    other = PNG + b"more"
    second = await harness.store.put(key, other, content_type="image/png")
    assert second.location == first.location
    assert second.sha256 == hashlib.sha256(other).hexdigest()
    assert await harness.version(key) != before
    info = await harness.store.head(key)
    assert info is not None
    assert info.size_bytes == len(other)
    assert info.sha256 == second.sha256
    assert await harness.store.read_prefix(key, len(other)) == other


async def test_head_tells_size_type_and_hash_and_none_when_missing(harness: Harness):
    """What a user's input is, before it is charged for; nothing for a key never put."""
    key = input_key("ada", "face.jpg")
    assert await harness.store.head(key) is None
    await harness.store.put(key, JPEG, content_type="image/jpeg")
    info = await harness.store.head(key)
    assert info is not None
    assert (info.key, info.size_bytes, info.content_type) == (key, len(JPEG), "image/jpeg")
    assert info.sha256 == hashlib.sha256(JPEG).hexdigest()


async def test_read_prefix_returns_the_first_bytes(harness: Harness):
    """Enough to sniff magic bytes; a longer ask gets the whole object; none is an error."""
    key = input_key("ada", "face.png")
    await harness.store.put(key, PNG, content_type="image/png")
    assert await harness.store.read_prefix(key, 8) == b"\x89PNG\r\n\x1a\n"
    assert await harness.store.read_prefix(key, len(PNG) + 100) == PNG
    empty = input_key("ada", "empty.png")
    await harness.store.put(empty, b"", content_type="image/png")
    assert await harness.store.read_prefix(empty, 8) == b""
    with pytest.raises(ObjectNotFound):
        await harness.store.read_prefix(input_key("ada", "missing.png"), 8)
    with pytest.raises(ValueError, match="at least 1"):
        await harness.store.read_prefix(key, 0)


async def test_delete_counts_what_existed_and_refuses_foreign_locations(harness: Harness):
    """Delete by location: existing ones count, gone ones do not, others' are refused first."""
    keys = [render_key(uuid.uuid4(), idx, "png") for idx in range(3)]
    stored = [await harness.store.put(k, PNG, content_type="image/png") for k in keys]
    foreign = {
        "files": "/etc/passwd",
        "s3": "s3://another-bucket/pfx/public/x.png",
        "memory": "s3://bucket/key",
    }[harness.kind]
    with pytest.raises(ForeignLocation):
        await harness.store.delete([stored[0].location, foreign])
    assert await harness.store.head(keys[0]) is not None  # refused as a whole
    assert await harness.store.delete([s.location for s in stored[:2]]) == 2
    assert await harness.store.delete([s.location for s in stored]) == 1
    assert [await harness.store.head(k) for k in keys] == [None, None, None]


async def test_a_public_url_serves_the_same_bytes(harness: Harness):
    """public/ objects are fetchable by anyone with the URL, byte for byte."""
    key = a_render()
    await harness.store.put(key, PNG, content_type="image/png")
    url = harness.store.public_url(key)
    assert url.startswith(("http://", "https://"))
    status, body, content_type = await harness.fetch(url)
    assert status == 200
    assert body == PNG
    if harness.kind != "memory":
        assert content_type == "image/png"


async def test_a_presigned_url_serves_a_private_input(harness: Harness):
    """The provider can GET a user's input through the short-lived URL handed to it."""
    key = input_key("user@example.com", "in put+1.jpg")
    await harness.store.put(key, JPEG, content_type="image/jpeg")
    url = await harness.store.presign_get(key, 60)
    status, body, _ = await harness.fetch(url)
    assert (status, body) == (200, JPEG)


async def test_presigning_refuses_long_expiries_and_public_keys(harness: Harness):
    """At most fifteen minutes, and only private/ keys; public/ ones are public already."""
    key = input_key("ada", "face.png")
    with pytest.raises(ValueError, match="900"):
        await harness.store.presign_get(key, MAX_PRESIGN_S + 1)
    with pytest.raises(ValueError, match="900"):
        await harness.store.presign_get(key, 0)
    with pytest.raises(InvalidKey, match="private"):
        await harness.store.presign_get(a_render(), 60)
    with pytest.raises(InvalidKey, match="public"):
        harness.store.public_url(key)


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/etc/passwd",
        "../escape.png",
        "public/renders/../../escape.png",
        "public/./renders/x.png",
        "public//renders/x.png",
        "public/renders/x\x00.png",
        "public\\renders\\x.png",
        "public/renders/x\n.png",
        "public/" + "x" * 1100 + ".png",
    ],
)
async def test_bad_keys_are_refused_before_anything_is_touched(harness: Harness, key: str):
    """No key leaves the store or its layout, on any backend, for any operation."""
    with pytest.raises(InvalidKey):
        await harness.store.put(key, PNG, content_type="image/png")
    with pytest.raises(InvalidKey):
        await harness.store.head(key)
    with pytest.raises(InvalidKey):
        await harness.store.read_prefix(key, 4)


# The file store, and its routes in the daemon's HTTP app.


async def test_signed_input_urls_are_refused_expired_tampered_unsigned_or_elsewhere(
    tmp_path: Path, http: httpx.AsyncClient
):
    """Only the exact signed URL, before its expiry, reads a private input: else 403."""
    clock = Clock()
    async with file_store(tmp_path, clock) as (files, base):
        key = input_key("ada", "face.png")
        await files.put(key, PNG, content_type="image/png")
        url = await files.presign_get(key, 2)
        ok = await http.get(url)
        assert ok.status_code == 200
        assert ok.content == PNG
        assert ok.headers["cache-control"] == "private, no-store"
        parts = urllib.parse.urlsplit(url)
        query = dict(urllib.parse.parse_qsl(parts.query))
        flipped = ("0" if query["sig"][0] != "0" else "1") + query["sig"][1:]
        later = int(query["expires"]) + 60
        refused = {
            "unsigned": f"{base}{parts.path}",
            "tampered": f"{base}{parts.path}?expires={query['expires']}&sig={flipped}",
            "extended": f"{base}{parts.path}?expires={later}&sig={query['sig']}",
            "another user": f"{base}/inputs/bob/face.png?{parts.query}",
            "twice": f"{url}&sig={query['sig']}",
            "garbled": f"{base}{parts.path}?expires=soon&sig=%FF",
            "too many fields": f"{url}&a=1&b=2&c=3&d=4",
        }
        for why, bad in refused.items():
            assert (await http.get(bad)).status_code == 403, why
        clock.now += 2
        assert (await http.get(url)).status_code == 200  # the last second still counts
        clock.now += 1
        assert (await http.get(url)).status_code == 403
        missing = await files.presign_get(input_key("ada", "gone.png"), 60)
        assert (await http.get(missing)).status_code == 404


async def test_the_renders_route_serves_only_canonical_render_paths(
    tmp_path: Path, http: httpx.AsyncClient
):
    """Immutable caching for real renders; 404 for any other spelling; 405 for writes."""
    async with file_store(tmp_path, Clock()) as (files, base):
        job = uuid.uuid4()
        stored = await files.put(render_key(job, 7, "png"), PNG, content_type="image/png")
        (tmp_path / "private" / "ada" / "inputs").mkdir(parents=True)
        (tmp_path / "private" / "ada" / "inputs" / "secret.png").write_bytes(b"secret")
        url = files.public_url(stored.key)
        assert url == f"{base}/renders/{job}/7.png"
        response = await http.get(url)
        assert response.status_code == 200
        assert response.content == PNG
        assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert response.headers["x-content-type-options"] == "nosniff"
        head = await http.head(url)
        assert head.status_code == 200
        assert head.headers["content-length"] == str(len(PNG))
        assert head.content == b""
        for bad in [
            f"/renders/{job}/8.png",
            f"/renders/{job}/07.png",
            f"/renders/{str(job).upper()}/7.png",
            f"/renders/{job.hex}/7.png",
            f"/renders/{job}/7.txt",
            f"/renders/{job}/7.PNG",
            "/renders/..%2F..%2Fprivate/ada/inputs/secret.png",
            "/renders/%2e%2e/%2e%2e/private/ada/inputs/secret.png",
            f"/renders/{job}/7.png/..",
            f"/renders/{job}",
        ]:
            answer = await http.get(base + bad)
            assert answer.status_code == 404, bad
            assert b"secret" not in answer.content
        assert (await http.post(url)).status_code == 405


async def test_without_file_routes_the_daemon_answers_404_as_before(http: httpx.AsyncClient):
    """Object storage on S3 leaves the daemon's HTTP surface as it was."""
    async with serve(daemon_app(None)) as base:
        assert (await http.get(f"{base}/renders/{uuid.uuid4()}/0.png")).status_code == 404
        assert (await http.get(f"{base}/inputs/ada/face.png")).status_code == 404
        assert (await http.get(f"{base}/healthz")).status_code == 200


async def test_file_bodies_stream_in_chunks(tmp_path: Path):
    """A large render goes out 64 KiB at a time, never as one 20 MiB message."""
    files = FileObjects(tmp_path, base_url="http://d.test", signing_key=SIGNING_KEY)
    data = bytes(range(256)) * 1024 * 3  # 768 KiB
    key = render_key(uuid.uuid4(), 0, "webp")
    await files.put(key, data, content_type="image/webp")
    routes = FileRoutes(tmp_path, signing_key=SIGNING_KEY)
    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {
        "type": "http",
        "method": "GET",
        "path": key.removeprefix("public"),
        "query_string": b"",
    }
    await routes(scope, receive, send)  # type: ignore[arg-type]
    start, *bodies = sent
    assert start["status"] == 200
    assert (b"content-type", b"image/webp") in start["headers"]  # type: ignore[operator]
    assert len(bodies) == 12
    assert all(len(b["body"]) <= 64 * 1024 for b in bodies)  # type: ignore[arg-type]
    assert [b["more_body"] for b in bodies] == [True] * 11 + [False]
    assert b"".join(b["body"] for b in bodies) == data  # type: ignore[misc]


async def test_the_file_store_keeps_content_types_by_extension_only(tmp_path: Path):
    """It has nowhere else to keep one, so a type the extension does not name is refused."""
    files = FileObjects(tmp_path, base_url="http://d.test", signing_key=SIGNING_KEY)
    with pytest.raises(InvalidKey, match="extension"):
        await files.put(render_key(uuid.uuid4(), 0, "png"), JPEG, content_type="image/jpeg")
    with pytest.raises(InvalidKey, match="extension"):
        await files.put(input_key("ada", "face"), PNG, content_type="image/png")
    assert list(tmp_path.iterdir()) == []


async def test_file_writes_are_atomic_private_where_private_and_stay_under_the_root(
    tmp_path: Path,
):
    """No temporary file survives a write; inputs are 0600; a planted symlink is not followed."""
    root = tmp_path / "root"
    files = FileObjects(root, base_url="http://d.test", signing_key=SIGNING_KEY)
    render = await files.put(render_key(uuid.uuid4(), 0, "png"), PNG, content_type="image/png")
    secret = await files.put(input_key("ada", "face.png"), PNG, content_type="image/png")
    assert Path(render.location).stat().st_mode & 0o777 == 0o644
    assert Path(secret.location).stat().st_mode & 0o777 == 0o600
    assert [p.name for p in Path(render.location).parent.iterdir()] == ["0.png"]
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "private" / "eve").mkdir(parents=True)
    (root / "private" / "eve" / "inputs").symlink_to(outside)
    with pytest.raises(StorageRefused, match="outside"):
        await files.put(input_key("eve", "x.png"), PNG, content_type="image/png")
    assert list(outside.iterdir()) == []
    with pytest.raises(ForeignLocation):
        await files.delete([str(root / ".." / "outside" / "x.png")])


def test_the_file_store_wants_a_real_signing_key_and_http_base(tmp_path: Path):
    """A short key or a base URL that is not http(s) fails at construction, by name."""
    with pytest.raises(ValueError, match="signing_key"):
        FileObjects(tmp_path, base_url="http://d.test", signing_key=b"short")
    with pytest.raises(ValueError, match="base_url"):
        FileObjects(tmp_path, base_url="d.test", signing_key=SIGNING_KEY)


async def test_a_public_base_url_publishes_file_keys_under_it(tmp_path: Path):
    """With a CDN or web server in front of the root, the public URL is that base plus key."""
    files = FileObjects(
        tmp_path,
        base_url="http://d.test",
        signing_key=SIGNING_KEY,
        public_base_url="https://cdn.example.test/outputs/",
    )
    key = render_key(uuid.UUID(int=1), 2, "gif")
    assert files.public_url(key) == f"https://cdn.example.test/outputs/{key}"


# S3, against moto; and what moto does not check, checked here.


async def test_s3_presigned_urls_are_sigv4_signed_and_expire(moto):
    """Recomputed from the secret, the signature matches, and it lapses after expires_s."""
    store, _ = s3_store(moto)
    key = input_key("ada", "face.png")
    url = await store.presign_get(key, 120)
    now = dt.datetime.now(dt.UTC)
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    assert query["X-Amz-Expires"] == "120"
    assert f"/{s3server.REGION}/s3/" in query["X-Amz-Credential"]
    secret = s3server.SECRET_ACCESS_KEY
    assert s3server.verify_presigned(url, secret=secret, now=now) is None
    later = now + dt.timedelta(seconds=125)
    assert s3server.verify_presigned(url, secret=secret, now=later) == "expired"
    assert s3server.verify_presigned(url, secret="wrong", now=now) == "signature does not match"


async def test_moto_serves_even_a_tampered_presigned_url(moto, http: httpx.AsyncClient):
    """Why the test above recomputes signatures: moto checks none (see tests/s3server.py)."""
    store, _ = s3_store(moto)
    key = input_key("ada", "face.png")
    await store.put(key, PNG, content_type="image/png")
    url = await store.presign_get(key, 60)
    tampered = url[:-8] + "00000000"
    now = dt.datetime.now(dt.UTC)
    reason = s3server.verify_presigned(tampered, secret=s3server.SECRET_ACCESS_KEY, now=now)
    assert reason == "signature does not match"
    assert (await http.get(tampered)).content == PNG


async def test_private_objects_are_not_public_on_the_bucket(moto, http: httpx.AsyncClient):
    """The bucket policy opens public/ only: an input's plain URL is refused."""
    store, bucket = s3_store(moto)
    key = input_key("ada", "face.png")
    await store.put(key, PNG, content_type="image/png")
    plain = f"{moto.endpoint}/{bucket}/{PREFIX}{urllib.parse.quote(key)}"
    assert (await http.get(plain)).status_code == 403


async def test_the_sha256_travels_with_the_object_as_metadata(moto):
    """Other tools see x-amz-meta-sha256 too, and a repeat put costs one HEAD."""
    store, bucket = s3_store(moto)
    key = a_render()
    stored = await store.put(key, PNG, content_type="image/png")
    assert stored.location == f"s3://{bucket}/{PREFIX}{key}"
    head = s3server.client(moto.endpoint).head_object(Bucket=bucket, Key=PREFIX + key)
    assert head["Metadata"] == {"sha256": stored.sha256}
    assert head["ContentType"] == "image/png"
    again = await store.put(key, PNG, content_type="image/gif")
    assert again.content_type == "image/gif"  # same bytes, other type: rewritten
    assert s3server.versions(moto.endpoint, bucket, PREFIX + key) == 2


async def test_ambient_aws_variables_do_not_leak_into_requests(moto, monkeypatch):
    """The package is given its credentials; a stray session token or region is ignored."""
    monkeypatch.setenv("AWS_SESSION_TOKEN", "stray-token")
    monkeypatch.setenv("AWS_REGION", "ap-south-2")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-2")
    monkeypatch.setenv("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "true")
    monkeypatch.setenv("AWS_SKIP_SIGNATURE", "true")
    monkeypatch.setenv("AWS_ENDPOINT", "http://127.0.0.1:9")
    store, bucket = s3_store(moto)
    key = input_key("ada", "face.png")
    await store.put(key, PNG, content_type="image/png")
    assert await store.read_prefix(key, 4) == PNG[:4]
    url = await store.presign_get(key, 60)
    assert url.startswith(f"{moto.endpoint}/{bucket}/")
    assert "X-Amz-Security-Token" not in url
    assert f"/{s3server.REGION}/s3/" in urllib.parse.unquote(url)


async def test_requests_are_signed_with_exactly_the_credentials_given(signing_moto):
    """A server that checks SigV4 accepts our requests, and refuses a wrong secret at once."""
    server, key_id, secret = signing_moto

    def store(secret_access_key: str) -> S3Objects:
        access = S3Access(
            endpoint=server.endpoint,
            region=s3server.REGION,
            access_key_id=key_id,
            secret_access_key=secret_access_key,
        )
        return S3Objects(S3Location("signed-bucket", PREFIX), access=access, retries=FAST)

    good = store(secret)
    key = a_render()
    stored = await good.put(key, PNG, content_type="image/png")
    assert await good.put(key, PNG, content_type="image/png") == stored
    info = await good.head(key)
    assert info is not None
    assert info.sha256 == stored.sha256
    assert await good.read_prefix(key, 8) == PNG[:8]
    with pytest.raises(StorageRefused, match="privileges"):
        await store("not-the-secret").head(key)
    assert await good.delete([stored.location]) == 1


def test_s3_public_urls_use_the_public_base_else_the_path_style_endpoint():
    """A CDN base when configured; else AWS's regional endpoint, path-style."""
    access = S3Access(region="eu-west-3", access_key_id="AKIA", secret_access_key="hush-hush")
    key = render_key(uuid.UUID(int=5), 1, "jpg")
    aws = S3Objects(S3Location("renders-bucket", "prod/"), access=access)
    assert aws.public_url(key) == f"https://s3.eu-west-3.amazonaws.com/renders-bucket/prod/{key}"
    cdn = S3Objects(
        S3Location("renders-bucket"), access=access, public_base_url="https://cdn.example.test"
    )
    assert cdn.public_url(key) == f"https://cdn.example.test/{key}"
    assert "hush-hush" not in repr(access)


class FaultyS3:
    """An S3 endpoint that answers each method from a script, then 200; counts requests."""

    def __init__(self, script: dict[str, list[int]]) -> None:
        self.script = script
        self.requests: list[str] = []

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        await read_body(receive, 1 << 24)
        method = scope["method"]
        self.requests.append(method)
        planned = self.script.get(method, [])
        status = planned.pop(0) if planned else 200
        headers = [(b"etag", b'"abc"'), (b"content-length", b"0")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b""})


def faulty_store(base: str) -> S3Objects:
    return S3Objects(
        S3Location("faulty-bucket"),
        access=S3Access(
            endpoint=base, region="us-east-1", access_key_id="a", secret_access_key="b"
        ),
        retries=FAST,
        timeout_s=2.0,
    )


async def test_transient_s3_failures_are_retried_until_they_pass():
    """503s and 429s are ridden out with backoff; the put lands on the third try."""
    server = FaultyS3({"HEAD": [404], "PUT": [503, 429]})
    async with serve(server) as base:
        stored = await faulty_store(base).put(a_render(), PNG, content_type="image/png")
    assert stored.size_bytes == len(PNG)
    assert server.requests == ["HEAD", "PUT", "PUT", "PUT"]


async def test_s3_refusals_are_not_retried():
    """A 403 is StorageRefused at once; a 400 too; only the first request is made."""
    for status in (403, 400):
        server = FaultyS3({"HEAD": [status]})
        async with serve(server) as base:
            with pytest.raises(StorageRefused):
                await faulty_store(base).head(a_render())
        assert server.requests == ["HEAD"]


async def test_an_unreachable_endpoint_is_unavailable_after_every_attempt():
    """Connection refused is transient: retried `attempts` times, then StorageUnavailable."""
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = faulty_store(f"http://127.0.0.1:{port}")
    with pytest.raises(StorageUnavailable) as caught:
        await store.head(a_render())
    assert isinstance(caught.value.__cause__, obstore.exceptions.GenericError)


async def test_a_hung_endpoint_times_out_as_unavailable_while_trio_runs_on():
    """The client waits in a thread without the GIL: the loop keeps ticking meanwhile."""
    with trio.socket.socket() as listener:
        await listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # connections queue in the kernel; no one ever answers
        port = listener.getsockname()[1]
        store = S3Objects(
            S3Location("hung-bucket"),
            access=S3Access(
                endpoint=f"http://127.0.0.1:{port}",
                region="us-east-1",
                access_key_id="a",
                secret_access_key="b",
            ),
            retries=attrs.evolve(FAST, attempts=2),
            timeout_s=0.5,
        )
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await trio.sleep(0.01)
                ticks += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(tick)
            started = trio.current_time()
            with pytest.raises(StorageUnavailable):
                await store.head(a_render())
            elapsed = trio.current_time() - started
            nursery.cancel_scope.cancel()
    assert 1.0 <= elapsed < 3.0  # two attempts of half a second each
    assert ticks >= 0.5 * elapsed / 0.01


async def test_exceptions_that_are_not_the_clients_travel_up_untouched(moto, monkeypatch):
    """A bug below us is not dressed up as a storage fault."""
    store, _ = s3_store(moto)

    def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("a bug, not an outage")

    monkeypatch.setattr(obstore, "get", broken)
    with pytest.raises(RuntimeError, match="a bug") as caught:
        await store.head(a_render())
    assert not isinstance(caught.value, StorageError)


async def test_a_put_to_a_missing_bucket_is_refused(moto):
    """No bucket is a configuration error, not an outage to retry."""
    store = S3Objects(
        S3Location("no-such-bucket-here"),
        access=S3Access(
            endpoint=moto.endpoint,
            region=s3server.REGION,
            access_key_id=s3server.ACCESS_KEY_ID,
            secret_access_key=s3server.SECRET_ACCESS_KEY,
        ),
        retries=FAST,
    )
    with pytest.raises(StorageRefused, match="no-such-bucket-here"):
        await store.put(a_render(), PNG, content_type="image/png")


# The twin's own extra: what the contract tests read through it.


async def test_the_twin_expires_its_presigned_urls_by_its_clock():
    """MemoryObjects.fetch refuses a presigned URL after expires_s, as the real ones do."""
    clock = Clock()
    twin = MemoryObjects(clock=clock)
    key = input_key("ada", "face.png")
    await twin.put(key, PNG, content_type="image/png")
    url = await twin.presign_get(key, 30)
    assert twin.fetch(url) == PNG
    assert twin.fetch(url.replace("sig=", "sig=0")) is None
    clock.now += 31
    assert twin.fetch(url) is None


# Storage URLs and keys.


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("file:///srv/orchestrator", FileLocation(Path("/srv/orchestrator"))),
        ("file://localhost/srv/a%20b", FileLocation(Path("/srv/a b"))),
        ("s3://renders", S3Location("renders", "")),
        ("s3://my.renders-1/prod", S3Location("my.renders-1", "prod/")),
        ("s3://renders/prod/eu/", S3Location("renders", "prod/eu/")),
    ],
)
def test_storage_urls_name_a_file_root_or_a_bucket_and_prefix(url: str, expected: object):
    """The two schemes the daemon knows, normalized once."""
    assert parse_storage_url(url) == expected


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://bucket/key", "scheme 'http'"),
        ("/srv/orchestrator", "no scheme"),
        ("file://srv/orchestrator", "reads as a host"),
        ("file:relative/path", "absolute"),
        ("s3://", "3 to 63"),
        ("s3://ab", "3 to 63"),
        ("s3://My_Bucket", "3 to 63"),
        ("s3://-bucket", "3 to 63"),
        ("s3://bucket..name", "adjacent dots"),
        ("s3://192.168.1.1", "IP address"),
        ("s3://xn--bucket", "reserves"),
        ("s3://bucket-s3alias", "reserves"),
        ("s3://bucket/a/../b", "segment"),
        ("s3://bucket:9000/x", "credentials and ports"),
        ("s3://bucket/x?versioning=1", "query"),
    ],
)
def test_bad_storage_urls_fail_naming_the_setting(url: str, reason: str):
    """A mistake fails at start-up, naming ORCHESTRATOR_STORAGE_URL and what is wrong."""
    with pytest.raises(StorageUrlError, match=reason) as caught:
        parse_storage_url(url)
    assert "ORCHESTRATOR_STORAGE_URL" in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_a_password_in_a_storage_url_is_not_repeated_in_the_error():
    """Someone will paste credentials into the URL; the log line must not keep them."""
    with pytest.raises(StorageUrlError) as caught:
        parse_storage_url("s3://AKIA:hush-hush@bucket/prefix")
    assert "hush-hush" not in str(caught.value)


def test_keys_follow_the_layout_and_parse_back():
    """Renders and inputs have one spelling each; a lookalike parses as nothing."""
    job = uuid.uuid4()
    key = render_key(job, 12, "webp")
    assert key == f"public/renders/{job}/12.webp"
    assert parse_render_key(key) == RenderKey(job, 12, "webp")
    assert parse_render_key(f"public/renders/{job}/012.webp") is None
    assert parse_render_key(f"public/renders/{job}/1.exe") is None
    assert input_key("ada@x.io", "a b.png") == "private/ada@x.io/inputs/a b.png"
    assert parse_input_key("private/ada/inputs/a.png") == InputKey("ada", "a.png")
    assert parse_input_key("private/ada/inputs/a/b.png") is None
    for user, name in [("..", "a.png"), ("a/b", "a.png"), ("ada", ".."), ("ada", "")]:
        with pytest.raises(InvalidKey):
            input_key(user, name)
    with pytest.raises(InvalidKey):
        render_key(job, 0, "exe")
