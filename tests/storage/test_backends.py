"""The backend contract (storage/backends/base.py), one suite for every backend.

Each conformance test runs against ``memory://``, ``file://<tmp>`` and a real S3
(SeaweedFS started by the session, or ``DAVSERVER_TEST_S3_URL``), every backend
opened through :func:`storage.backends.url.open_backend` as the server does.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from storage.backends.base import Backend, ObjectInfo
from storage.backends.local import SYNCFS_MIN_OBJECTS, LocalBackend, platform_syncfs
from storage.backends.memory import MemoryBackend
from storage.backends.retry import RetryingBackend
from storage.backends.s3 import S3Backend
from storage.backends.url import open_backend
from storage.errors import BackendUnavailable, NotFound, StorageError
from tests.services import S3_ACCESS_KEY, S3_SECRET_KEY, free_ports

MiB = 1024 * 1024


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def with_unique_prefix(s3_url: str) -> str:
    """The session's S3 URL with a prefix of its own, so tests never see each
    other's objects."""
    parts = urlsplit(s3_url)
    path = f"{parts.path.rstrip('/')}/t-{uuid.uuid4().hex[:12]}"
    return urlunsplit(parts._replace(path=path))


@pytest.fixture(
    params=["memory", "file", pytest.param("s3", marks=pytest.mark.services)],
)
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    kind = request.param
    if kind == "memory":
        return "memory://"
    if kind == "file":
        return f"file://{tmp_path / 'blocks'}"
    return with_unique_prefix(request.getfixturevalue("s3_url"))


@pytest.fixture
def backend(backend_url: str) -> Iterator[Backend]:
    b = open_backend(backend_url)
    try:
        yield b
        for info in list(b.list()):  # leave nothing behind on a shared S3
            b.delete(info.name)
    finally:
        b.close()


# -- put and get ------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 65_537, 5 * MiB], ids=["0B", "1B", "64KiB+1", "5MiB"])
def test_put_then_get_returns_the_same_bytes(backend: Backend, size: int) -> None:
    data = payload(size, seed=size)
    backend.put("ab/abcdef0123", data)
    assert backend.get("ab/abcdef0123") == data
    assert backend.stat("ab/abcdef0123").size == size


def test_names_with_and_without_folders_round_trip(backend: Backend) -> None:
    names = ["top", "a/b", "a/b2", "x/y/z/deep", "k/0123456789abcdef"]
    for i, name in enumerate(names):
        backend.put(name, name.encode() * (i + 1))
    for i, name in enumerate(names):
        assert backend.get(name) == name.encode() * (i + 1)


def test_put_again_replaces_the_whole_object(backend: Backend) -> None:
    backend.put("obj", payload(100_000, seed=1))
    backend.put("obj", b"short")
    assert backend.get("obj") == b"short"
    assert backend.stat("obj").size == 5
    assert [i.name for i in backend.list()] == ["obj"]


def test_readers_see_the_old_or_the_new_object_never_a_mix(backend: Backend) -> None:
    old, new = b"A" * 200_000, b"B" * 300_000
    backend.put("obj", old)
    errors: list[BaseException] = []
    seen: set[bytes] = set()
    done = threading.Event()

    def reader() -> None:
        try:
            while not done.is_set():
                data = backend.get("obj")
                assert data in (old, new), f"torn read: {len(data)} bytes"
                seen.add(data[:1])
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(30):
            backend.put("obj", new if i % 2 == 0 else old)
    finally:
        done.set()
        thread.join(30)
    assert not errors, errors
    assert seen  # the reader did read


# -- ranged get -------------------------------------------------------------------

DATA_1000 = payload(1000, seed=7)


@pytest.mark.parametrize(
    ("offset", "length", "expected"),
    [
        (0, None, DATA_1000),
        (10, None, DATA_1000[10:]),
        (10, 20, DATA_1000[10:30]),
        (0, 1000, DATA_1000),
        (999, 1, DATA_1000[999:]),
        (990, 20, DATA_1000[990:]),  # runs past the end: shorter
        (1000, None, b""),  # offset at the end
        (1000, 5, b""),
        (5000, 10, b""),  # offset past the end
        (5000, None, b""),
        (0, 0, b""),  # zero length
        (500, 0, b""),
    ],
    ids=lambda v: "None" if v is None else (str(v) if isinstance(v, int) else "-"),
)
def test_ranged_get_returns_exactly_the_slice(
    backend: Backend, offset: int, length: int | None, expected: bytes
) -> None:
    backend.put("r", DATA_1000)
    assert backend.get("r", offset, length) == expected


@pytest.mark.parametrize(("offset", "length"), [(0, None), (0, 1), (1, None), (0, 0)])
def test_ranged_get_of_an_empty_object_is_empty(backend: Backend, offset: int, length: int | None) -> None:
    backend.put("empty", b"")
    assert backend.get("empty", offset, length) == b""


@pytest.mark.parametrize(("offset", "length"), [(-1, None), (0, -1)])
def test_negative_offset_or_length_is_refused(backend: Backend, offset: int, length: int | None) -> None:
    backend.put("r", b"data")
    with pytest.raises(ValueError):
        backend.get("r", offset, length)


# -- missing objects and delete -----------------------------------------------------


def test_missing_object_raises_not_found_on_get_and_stat(backend: Backend) -> None:
    with pytest.raises(NotFound):
        backend.get("no/such")
    with pytest.raises(NotFound):
        backend.get("no/such", 5, 10)
    with pytest.raises(NotFound):
        backend.stat("no/such")


def test_delete_removes_the_object_and_is_idempotent(backend: Backend) -> None:
    backend.put("gone", b"x")
    backend.delete("gone")
    with pytest.raises(NotFound):
        backend.get("gone")
    with pytest.raises(NotFound):
        backend.stat("gone")
    backend.delete("gone")  # again: no error
    backend.delete("never/existed")
    assert list(backend.list()) == []


# -- list -------------------------------------------------------------------------


def test_list_yields_matching_names_sorted_with_sizes(backend: Backend) -> None:
    sizes = {"aa/01": 1, "aa/02": 22, "ab/01": 3, "b0/01": 0, "aa/00": 5, "b1/ff": 7}
    names = list(sizes)
    random.Random(3).shuffle(names)
    for name in names:
        backend.put(name, b"x" * sizes[name])

    def listed(prefix: str) -> list[tuple[str, int]]:
        infos = list(backend.list(prefix))
        assert all(isinstance(i, ObjectInfo) for i in infos)
        return [(i.name, i.size) for i in infos]

    assert listed("aa/") == [("aa/00", 5), ("aa/01", 1), ("aa/02", 22)]
    assert listed("a") == [("aa/00", 5), ("aa/01", 1), ("aa/02", 22), ("ab/01", 3)]
    assert listed("") == sorted(sizes.items())
    assert listed("b0/") == [("b0/01", 0)]
    assert listed("c") == []
    assert listed("aa/01") == [("aa/01", 1)]


def test_list_is_in_name_order_across_folder_boundaries(backend: Backend) -> None:
    names = ["p/a-b", "p/a/x", "p/a0", "p/a/y/z"]
    for name in names:
        backend.put(name, b"1")
    assert [i.name for i in backend.list("p/")] == sorted(names)


# -- stat -------------------------------------------------------------------------


def test_stat_reports_size_and_a_plausible_mtime(backend: Backend) -> None:
    before = time.time()
    backend.put("s/obj", b"12345")
    after = time.time()
    info = backend.stat("s/obj")
    assert info.name == "s/obj"
    assert info.size == 5
    # S3 has whole seconds, file systems their own granularity: allow 2 s.
    assert before - 2 <= info.mtime <= after + 2
    (listed,) = backend.list("s/")
    assert listed.size == 5
    assert before - 2 <= listed.mtime <= after + 2


# -- names ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../x", "/abs", "a//b", "a/../b", "./a", "a/", "", "a\\b", "caf\u00e9"])
def test_invalid_names_are_refused(backend: Backend, name: str) -> None:
    with pytest.raises(ValueError):
        backend.put(name, b"x")
    assert list(backend.list()) == []


# -- the file backend ---------------------------------------------------------------


@pytest.fixture
def file_backend(tmp_path: Path) -> Iterator[tuple[Backend, Path]]:
    root = tmp_path / "blocks"
    b = open_backend(f"file://{root}")
    yield b, root
    b.close()


def all_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_file_puts_leave_no_temporary_files(file_backend: tuple[Backend, Path]) -> None:
    backend, root = file_backend
    for i in range(5):
        backend.put(f"d{i % 2}/obj{i}", payload(1000 + i))
        backend.put(f"d{i % 2}/obj{i}", payload(10 + i))  # overwrite
    assert all_files(root) == sorted(f"d{i % 2}/obj{i}" for i in range(5))


@pytest.mark.parametrize("failing", ["fdatasync", "replace"])
def test_file_put_failing_midway_leaves_no_object(
    file_backend: tuple[Backend, Path], monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    backend, root = file_backend
    backend.put("keep/old", b"old contents")

    def fail(*args: object) -> None:
        raise OSError(5, "Input/output error (injected)")

    with monkeypatch.context() as m:
        m.setattr(os, failing, fail)
        with pytest.raises(BackendUnavailable):
            backend.put("new/obj", payload(50_000))
        with pytest.raises(BackendUnavailable):
            backend.put("keep/old", b"new contents")
    with pytest.raises(NotFound):
        backend.get("new/obj")
    assert backend.get("keep/old") == b"old contents"
    assert all_files(root) == ["keep/old"]  # no temporary file left either


def test_an_unsynced_put_is_readable_at_once_and_sync_accepts_it(backend: Backend) -> None:
    data = payload(70_000, seed=3)
    backend.put("ab/unsynced", data, sync=False)
    assert backend.get("ab/unsynced") == data
    backend.sync(["ab/unsynced"])
    backend.sync([])
    assert backend.get("ab/unsynced") == data


def _synced_paths(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the path of every file or folder fdatasync'd or fsync'd from now on."""
    synced: list[str] = []
    for fn in ("fdatasync", "fsync"):
        real = getattr(os, fn)

        def spy(fd: int, real: Callable[[int], None] = real) -> None:
            synced.append(os.readlink(f"/proc/self/fd/{fd}"))
            real(fd)

        monkeypatch.setattr(os, fn, spy)
    return synced


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name synced files")
def test_file_put_without_sync_waits_for_nothing_until_sync_is_called(
    file_backend: tuple[Backend, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    backend, root = file_backend
    backend.put("d1/warm", b"x")  # creates (and syncs) the folder first
    synced = _synced_paths(monkeypatch)
    backend.put("d1/a", payload(100_000, 1), sync=False)
    backend.put("d1/b", payload(100_000, 2), sync=False)
    backend.put("d2/c", payload(100_000, 3), sync=False)
    assert synced == [str(root)]  # only the new folder d2's entry in its parent
    synced.clear()
    backend.sync(["d1/a", "d1/b", "d2/c"])
    files = [str(root / n) for n in ("d1/a", "d1/b", "d2/c")]
    assert synced[:3] == files
    assert sorted(synced[3:]) == [str(root / "d1"), str(root / "d2")]  # each folder once
    synced.clear()
    backend.put("d1/e", payload(1000, 4))  # the default: synced before put returns
    assert len(synced) == 2
    assert synced[0].startswith(str(root / "d1" / ".tmp-"))  # the file, before its rename
    assert synced[1] == str(root / "d1")


def test_file_sync_of_a_vanished_object_fails_loudly(file_backend: tuple[Backend, Path]) -> None:
    backend, root = file_backend
    backend.put("d/gone", b"data", sync=False)
    (root / "d" / "gone").unlink()
    with pytest.raises(BackendUnavailable, match="vanished"):
        backend.sync(["d/gone"])


class SyncFsSpy:
    """Records each syncfs (the folder it ran on) and runs the real one unless told otherwise."""

    def __init__(self, error: OSError | None = None, gate: threading.Event | None = None) -> None:
        real = platform_syncfs()
        assert real is not None, "this suite runs on Linux >= 5.8"
        self.real = real
        self.error = error
        self.gate = gate
        self.folders: list[str] = []

    def __call__(self, fd: int) -> None:
        self.folders.append(os.readlink(f"/proc/self/fd/{fd}"))
        if self.gate is not None:
            self.gate.wait(10)
        if self.error is not None:
            raise self.error
        self.real(fd)


def _unsynced(backend: LocalBackend, names: list[str]) -> None:
    for i, name in enumerate(names):
        backend.put(name, payload(50_000, seed=i), sync=False)


@pytest.mark.skipif(platform_syncfs() is None, reason="syncfs reports errors on Linux >= 5.8 only")
def test_file_sync_of_a_batch_is_one_syncfs_of_the_block_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "blocks"
    spy = SyncFsSpy()
    backend = LocalBackend(root, syncfs=spy)
    names = [f"d{i}/obj{i}" for i in range(SYNCFS_MIN_OBJECTS)]
    _unsynced(backend, names)
    synced = _synced_paths(monkeypatch)
    backend.sync(names)
    assert spy.folders == [str(root)]
    assert synced == []  # no fdatasync or fsync of any file or folder
    small = [f"d0/small{i}" for i in range(SYNCFS_MIN_OBJECTS - 1)]
    _unsynced(backend, small)
    backend.sync(small)
    assert spy.folders == [str(root)]  # a smaller batch goes file by file
    assert synced[: len(small)] == [str(root / n) for n in small]
    backend.close()


def test_file_sync_of_a_batch_with_a_vanished_object_fails_loudly(tmp_path: Path) -> None:
    root = tmp_path / "blocks"
    backend = LocalBackend(root, syncfs=SyncFsSpy() if platform_syncfs() else None)
    names = [f"d{i}/obj{i}" for i in range(SYNCFS_MIN_OBJECTS + 2)]
    _unsynced(backend, names)
    (root / names[3]).unlink()
    with pytest.raises(BackendUnavailable, match="vanished"):
        backend.sync(names)
    backend.close()


@pytest.mark.skipif(platform_syncfs() is None, reason="syncfs reports errors on Linux >= 5.8 only")
def test_a_syncfs_error_fails_that_sync_and_every_later_one(tmp_path: Path) -> None:
    spy = SyncFsSpy(error=OSError(5, "Input/output error (injected)"))
    backend = LocalBackend(tmp_path / "blocks", syncfs=spy)
    names = [f"a/obj{i}" for i in range(SYNCFS_MIN_OBJECTS)]
    _unsynced(backend, names)
    with pytest.raises(BackendUnavailable, match="Input/output error"):
        backend.sync(names)
    spy.error = None  # the disk "recovered": what it lost is still lost
    later = [f"b/obj{i}" for i in range(SYNCFS_MIN_OBJECTS)]
    _unsynced(backend, later)
    with pytest.raises(BackendUnavailable, match="write error"):
        backend.sync(later)
    assert len(spy.folders) == 1  # refused without asking the file system again
    backend.close()


@pytest.mark.skipif(platform_syncfs() is None, reason="syncfs reports errors on Linux >= 5.8 only")
def test_callers_waiting_behind_a_syncfs_share_the_next_one(tmp_path: Path) -> None:
    gate = threading.Event()
    spy = SyncFsSpy(gate=gate)
    backend = LocalBackend(tmp_path / "blocks", syncfs=spy)
    names = [f"c/obj{i}" for i in range(SYNCFS_MIN_OBJECTS)]
    _unsynced(backend, names)
    first = threading.Thread(target=backend.sync, args=(names,))
    first.start()
    while not spy.folders:  # the first syncfs is under way (held at the gate)
        time.sleep(0.01)
    # Both call while the first syncfs runs (it may have missed their writes): one more serves both.
    waiting = [threading.Thread(target=backend.sync, args=(names,)) for _ in range(2)]
    for t in waiting:
        t.start()
    time.sleep(0.3)  # both are past their start and queued behind the first
    gate.set()
    for t in (first, *waiting):
        t.join(10)
    assert len(spy.folders) == 2
    backend.close()


# -- the retry wrapper --------------------------------------------------------------


class FlakyBackend(MemoryBackend):
    """A memory backend whose ``get`` fails ``failures`` times, then behaves."""

    def __init__(self, failures: int, error: Callable[[], Exception]) -> None:
        super().__init__()
        self.failures = failures
        self.error = error
        self.calls = 0

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error()
        return super().get(name, offset, length)


def test_retry_gets_through_after_two_transient_failures() -> None:
    inner = FlakyBackend(2, lambda: BackendUnavailable("flaky"))
    inner.put("x", b"payload")
    sleeps: list[float] = []
    backend = RetryingBackend(inner, attempts=4, base_delay=0.05, sleep=sleeps.append)
    assert backend.get("x", 1, 3) == b"ayl"
    assert inner.calls == 3
    assert len(sleeps) == 2
    # capped exponential backoff with jitter in [delay / 2, delay]
    assert 0.025 <= sleeps[0] <= 0.05
    assert 0.05 <= sleeps[1] <= 0.1


def test_retry_gives_up_after_the_last_attempt() -> None:
    inner = FlakyBackend(10, lambda: BackendUnavailable("down"))
    inner.put("x", b"payload")
    sleeps: list[float] = []
    backend = RetryingBackend(inner, attempts=3, sleep=sleeps.append)
    with pytest.raises(BackendUnavailable):
        backend.get("x")
    assert inner.calls == 3
    assert len(sleeps) == 2


@pytest.mark.parametrize(
    "error", [lambda: NotFound("x"), lambda: ValueError("bad"), lambda: StorageError("other")]
)
def test_retry_does_not_retry_permanent_errors(error: Callable[[], Exception]) -> None:
    inner = FlakyBackend(1, error)
    sleeps: list[float] = []
    backend = RetryingBackend(inner, sleep=sleeps.append)
    with pytest.raises(type(error())):
        backend.get("x")
    assert inner.calls == 1
    assert sleeps == []


# -- S3 specifics -------------------------------------------------------------------


def test_s3_url_is_parsed_into_bucket_prefix_endpoint_and_region() -> None:
    b = S3Backend.from_url("s3://bkt/some/prefix/?endpoint=http://127.0.0.1:1&region=eu-west-1")
    try:
        assert (b.bucket, b.prefix) == ("bkt", "some/prefix")
        assert (b.endpoint_url, b.region) == ("http://127.0.0.1:1", "eu-west-1")
    finally:
        b.close()
    b = S3Backend.from_url("s3://bkt")
    try:
        assert (b.bucket, b.prefix, b.endpoint_url) == ("bkt", "", None)
    finally:
        b.close()


@pytest.mark.parametrize(
    "url",
    [
        "s3:///prefix",  # no bucket
        "s3://bkt/a//b",  # double slash in the prefix
        "s3://bkt/../x",
        "s3://bkt/p?endpont=http://x",  # a typo is not ignored
        "s3://bkt/p?create=maybe",
    ],
)
def test_s3_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        S3Backend.from_url(url)


def test_s3_unreachable_endpoint_raises_backend_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY)
    (closed_port,) = free_ports(1)  # free right now: nothing listens there
    url = f"s3://bkt/p?endpoint=http://127.0.0.1:{closed_port}&region=us-east-1"
    direct = S3Backend.from_url(url)
    try:
        operations: list[Callable[[], object]] = [
            lambda: direct.put("x", b"1"),
            lambda: direct.get("x"),
            lambda: direct.get("x", 1, 2),
            lambda: direct.stat("x"),
            lambda: direct.delete("x"),
            lambda: list(direct.list()),
        ]
        for operation in operations:
            with pytest.raises(BackendUnavailable):
                operation()
    finally:
        direct.close()
    wrapped = open_backend(url)  # as the server opens it: retried, then given up
    try:
        with pytest.raises(BackendUnavailable):
            wrapped.get("x")
    finally:
        wrapped.close()


@pytest.mark.services
def test_s3_missing_bucket_raises_backend_unavailable_naming_it(s3_url: str) -> None:
    parts = urlsplit(s3_url)
    query = "&".join(q for q in parts.query.split("&") if not q.startswith("create="))
    missing = f"missing-{uuid.uuid4().hex[:12]}"
    url = urlunsplit(parts._replace(netloc=missing, query=query))
    backend = S3Backend.from_url(url)
    try:
        for operation in (
            lambda: backend.get("x"),
            lambda: backend.put("x", b"1"),
            lambda: list(backend.list()),
        ):
            with pytest.raises(BackendUnavailable, match=missing):
                operation()
    finally:
        backend.close()


@pytest.mark.services
def test_s3_objects_are_stored_under_the_prefix(s3_url: str) -> None:
    url = with_unique_prefix(s3_url)
    prefix = urlsplit(url).path.strip("/")
    scoped = S3Backend.from_url(url)
    whole_bucket = S3Backend.from_url(url.replace(urlsplit(url).path, "", 1))
    try:
        scoped.put("ab/cd", b"1")
        assert [i.name for i in whole_bucket.list(prefix + "/")] == [f"{prefix}/ab/cd"]
        assert whole_bucket.get(f"{prefix}/ab/cd") == b"1"
        scoped.delete("ab/cd")
    finally:
        scoped.close()
        whole_bucket.close()
