"""``s3://bucket/prefix?endpoint=URL&region=R``: objects in an S3-compatible store.

Object keys are ``prefix + "/" + name`` (just ``name`` when the prefix is empty).
``put`` is a single ``PutObject``, which S3 makes atomic: readers see the old
object or the whole new one. Credentials come from boto3's standard chain
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, shared config files, instance
roles, ...); this module never reads them itself.

Query parameters of the URL:

* ``endpoint`` -- the S3 endpoint (``http://127.0.0.1:8333``); absent means AWS.
  A custom endpoint uses path-style addressing, which S3-compatible servers need;
* ``region`` -- the signing region (boto3's default chain when absent);
* ``create=1`` -- create the bucket when it does not exist (tests, first start).

Errors: a missing object is :class:`~storage.errors.NotFound`; network failures,
timeouts, throttling, 5xx and a missing bucket are
:class:`~storage.errors.BackendUnavailable` (the caller retries or answers 503);
anything else is :class:`~storage.errors.StorageError` naming the S3 error code.
botocore's own retries are kept low (2 attempts) because
:class:`~storage.backends.retry.RetryingBackend` does the retrying.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, cast
from urllib.parse import parse_qs, unquote, urlsplit

import botocore.loaders
import botocore.session
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
)

from storage.backends.base import ObjectInfo, check_name, slice_bytes
from storage.errors import BackendUnavailable, NotFound, StorageError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

T = TypeVar("T")

CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 60.0
BOTO_ATTEMPTS = 2
MAX_POOL_CONNECTIONS = 32

_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_TRANSIENT_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "SlowDown",
        "EC2ThrottledException",
        "RequestTimeout",
        "RequestTimeoutException",
        "PriorRequestNotComplete",
        "InternalError",
        "ServiceUnavailable",
        "OperationAborted",
    }
)
_URL_PARAMS = frozenset({"endpoint", "region", "create"})
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


class S3Backend:
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        create_bucket: bool = False,
        client: S3Client | None = None,
    ) -> None:
        if not bucket or "/" in bucket:
            raise ValueError(f"invalid S3 bucket name {bucket!r}")
        prefix = prefix.strip("/")
        if prefix:
            check_name(prefix)  # refuses "a//b", "..", non-ASCII
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint_url = endpoint_url
        self.region = region
        self._root = f"{prefix}/" if prefix else ""
        if client is None:
            config = Config(
                connect_timeout=CONNECT_TIMEOUT,
                read_timeout=READ_TIMEOUT,
                retries={"total_max_attempts": BOTO_ATTEMPTS, "mode": "standard"},
                max_pool_connections=MAX_POOL_CONNECTIONS,
                # Path-style addressing for S3-compatible servers on an IP or a
                # plain host name; AWS itself keeps boto3's default.
                s3={"addressing_style": "path"} if endpoint_url else None,
                # Checksums only where S3 requires them: the newer default
                # (aws-chunked CRC trailers) is refused by several S3-compatible
                # servers, and blocks carry their own authentication anyway.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            )
            client = _new_client(endpoint_url, region, config)
        self._client: S3Client = client
        if create_bucket:
            try:
                self._ensure_bucket()
            except BaseException:
                client.close()
                raise

    @classmethod
    def from_url(cls, url: str) -> S3Backend:
        parts = urlsplit(url)
        if parts.scheme != "s3":
            raise ValueError(f"not an s3:// URL: {url!r}")
        if not parts.netloc:
            raise ValueError(f"S3 URL without a bucket: {url!r}")
        query = parse_qs(parts.query, keep_blank_values=True)
        unknown = set(query) - _URL_PARAMS
        if unknown:
            raise ValueError(f"unknown S3 URL parameter(s) {sorted(unknown)} in {url!r}")

        def param(key: str) -> str | None:
            values = query.get(key)
            if not values:
                return None
            if len(values) > 1:
                raise ValueError(f"S3 URL parameter {key!r} given twice in {url!r}")
            return values[0]

        create = (param("create") or "").lower()
        if create not in _TRUE | _FALSE:
            raise ValueError(f"S3 URL parameter create must be 0 or 1, not {create!r}")
        return cls(
            unquote(parts.netloc),
            unquote(parts.path),
            endpoint_url=param("endpoint") or None,
            region=param("region") or None,
            create_bucket=create in _TRUE,
        )

    def __repr__(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"S3Backend(s3://{self.bucket}/{self.prefix}{where})"

    # -- the protocol ---------------------------------------------------------

    def _key(self, name: str) -> str:
        check_name(name)
        return self._root + name

    def put(self, name: str, data: bytes, *, sync: bool = True) -> None:
        """Stored durably when PutObject succeeds, whatever ``sync`` says."""
        key = self._key(name)
        self._call(
            "PutObject",
            key,
            lambda: self._client.put_object(Bucket=self.bucket, Key=key, Body=data),
        )

    def sync(self, names: Iterable[str]) -> None:
        pass

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("offset and length must not be negative")
        key = self._key(name)
        if length == 0:
            return b""
        byte_range = ""
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            byte_range = f"bytes={offset}-{end}"

        def fetch() -> bytes:
            if byte_range:
                response = self._client.get_object(Bucket=self.bucket, Key=key, Range=byte_range)
            else:
                response = self._client.get_object(Bucket=self.bucket, Key=key)
            body = response["Body"]
            try:
                data = body.read()
            finally:
                body.close()
            if byte_range and "ContentRange" not in response:
                data = slice_bytes(data, offset, length)  # a store that ignored Range
            return data

        try:
            return self._call("GetObject", key, fetch)
        except _RangeNotSatisfiable:
            return b""  # the offset is at or past the end of the object

    def stat(self, name: str) -> ObjectInfo:
        key = self._key(name)
        head = self._call("HeadObject", key, lambda: self._client.head_object(Bucket=self.bucket, Key=key))
        return ObjectInfo(name, head["ContentLength"], head["LastModified"].timestamp())

    def delete(self, name: str) -> None:
        key = self._key(name)
        # S3 answers 204 for a missing key; some compatible stores say 404.
        with contextlib.suppress(NotFound):
            self._call("DeleteObject", key, lambda: self._client.delete_object(Bucket=self.bucket, Key=key))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        key_prefix = self._root + prefix

        def fetch_all() -> list[ObjectInfo]:
            items = []
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=key_prefix):
                for obj in page.get("Contents", []):
                    key = obj.get("Key", "")
                    if not key.startswith(key_prefix) or key.endswith("/"):
                        continue  # folder markers some stores list
                    items.append(
                        ObjectInfo(
                            key[len(self._root) :],
                            obj.get("Size", 0),
                            obj["LastModified"].timestamp() if "LastModified" in obj else 0.0,
                        )
                    )
            # S3 lists keys in byte order, but not every compatible store does
            # (directory-backed ones list "a/x" before "a-b"): sort ourselves.
            items.sort(key=lambda i: i.name)
            return items

        yield from self._call("ListObjectsV2", key_prefix, fetch_all)

    def close(self) -> None:
        self._client.close()

    # -- helpers --------------------------------------------------------------

    def _ensure_bucket(self) -> None:
        try:
            self._call("HeadBucket", "", lambda: self._client.head_bucket(Bucket=self.bucket))
            return
        except NotFound:
            pass  # HEAD on a missing bucket is a bare 404

        def create() -> None:
            try:
                if self.region and self.region != "us-east-1":
                    location: Any = {"LocationConstraint": self.region}
                    self._client.create_bucket(Bucket=self.bucket, CreateBucketConfiguration=location)
                else:
                    self._client.create_bucket(Bucket=self.bucket)
            except ClientError as exc:
                if _error_code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

        self._call("CreateBucket", "", create)

    def _call(self, operation: str, key: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except ClientError as exc:
            self._raise_client_error(operation, key, exc)
        except NoCredentialsError as exc:
            raise StorageError(
                f"S3 {operation}: no credentials found (set AWS_ACCESS_KEY_ID and "
                f"AWS_SECRET_ACCESS_KEY or configure a profile)"
            ) from exc
        except (ConnectionError, HTTPClientError, IncompleteReadError) as exc:
            # EndpointConnectionError, ConnectTimeoutError, ConnectionClosedError,
            # ReadTimeoutError, ResponseStreamingError, ...
            raise BackendUnavailable(f"S3 {operation} on {self!r}: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"S3 {operation} {key!r}: {exc}") from exc

    def _raise_client_error(self, operation: str, key: str, exc: ClientError) -> NoReturn:
        code = _error_code(exc)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        message = exc.response.get("Error", {}).get("Message", "") or str(exc)
        if code == "NoSuchBucket":
            raise BackendUnavailable(
                f"S3 bucket {self.bucket!r} does not exist on "
                f"{self.endpoint_url or 'AWS'} (create it, or add create=1 to the URL)"
            ) from exc
        if code == "InvalidRange" or status == 416:
            raise _RangeNotSatisfiable() from exc
        if code in _NOT_FOUND_CODES or status == 404:
            raise NotFound(key[len(self._root) :] if key.startswith(self._root) else key) from exc
        if code in _TRANSIENT_CODES or status >= 500 or status == 429:
            raise BackendUnavailable(f"S3 {operation} {key!r}: {code or status} ({message})") from exc
        raise StorageError(f"S3 {operation} {key!r} failed: {code or status} ({message})") from exc


_loader_lock = threading.Lock()
_shared_loader: botocore.loaders.Loader | None = None


def _new_client(endpoint_url: str | None, region: str | None, config: Config) -> S3Client:
    """A client on a session of its own (boto3's default session is shared and
    not thread-safe, and caches credentials across backends), sharing only the
    loader of botocore's service models: parsing them is most of the ~0.1 s a
    new session takes."""
    global _shared_loader
    with _loader_lock:
        session = botocore.session.get_session()
        if _shared_loader is None:
            _shared_loader = botocore.loaders.create_loader(session.get_config_variable("data_path"))
        session.register_component("data_loader", _shared_loader)
        client = session.create_client("s3", endpoint_url=endpoint_url, region_name=region, config=config)
    return cast("S3Client", client)


class _RangeNotSatisfiable(StorageError):
    """416 from a ranged GET: the offset is at or past the end of the object."""


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
