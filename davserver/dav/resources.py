"""WsgiDAV resources over one account's Volume.

Each resource wraps an :class:`storage.model.Entry` fetched once per request;
folder listings and PROPFIND descendants come from one query each. PUT goes
through a :class:`storage.volume.PendingWrite`: nothing is visible before
``end_write(with_errors=False)``, and an incomplete body is aborted.
"""

from __future__ import annotations

import contextlib
import functools
import mimetypes
import re
from collections.abc import Iterable, Iterator
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

from wsgidav import util, xml_tools
from wsgidav.dav_error import (
    HTTP_BAD_REQUEST,
    HTTP_CONFLICT,
    HTTP_LOCKED,
    HTTP_METHOD_NOT_ALLOWED,
    HTTP_NOT_FOUND,
    DAVError,
    DAVErrorCondition,
    PRECONDITION_CODE_LockConflict,
)
from wsgidav.dav_provider import DAVCollection, DAVNonCollection
from wsgidav.lock_man.lock_manager import normalize_lock_root

from davserver.dav.errors import dav_errors, translated
from davserver.dav.sync_token import SUPPORTED_REPORT_SET, SYNC_TOKEN, SyncToken, supported_report_set
from davserver.wsgi import valid_time
from storage import paths
from storage.errors import AlreadyExists, NotFound
from storage.model import Entry, Quota
from storage.reader import VersionReader
from storage.volume import PendingWrite, Volume
from webcommon.numbers import digits, epoch_in_range, epoch_seconds

XML_DECL = re.compile(r"^\s*<\?xml[^>]*\?>\s*")
#: environ key of the request's path -> Entry look-ups (dropped on every change).
STAT_CACHE = "davserver.stat_cache"
#: environ flag set by a native MOVE/COPY whose destination did not exist.
DEST_CREATED = "davserver.dest_created"
#: environ key of the account's change-feed position, read once per request for DAV:sync-token.
SYNC_POSITION = "davserver.sync_position"
#: environ key of the account's quota (storage.model.Quota), read once per request.
QUOTA = "davserver.quota"
#: environ key of the empty file a LOCK on an unmapped URL created: (storage path, revision).
LOCK_CREATED = "davserver.lock_created"


def storage_path(dav_path: str) -> str:
    with dav_errors():
        return paths.normalize_path(dav_path)


def lock_root(account_id: int | str) -> str:
    """The account's part of lock storage: every lock key of the account starts with it."""
    return f"/~{account_id}"


def lock_key(account_id: int | str, share_path: str, dav_path: str) -> str:
    """Where lock storage files the locks of ``dav_path`` (a path below the share).

    The account id keeps accounts apart; the path is the storage's (Unicode NFC, no empty
    or ``.`` segments), so every spelling a client may send of one name (macOS sends NFD)
    finds the same locks. A lock taken through one spelling once did not stop a write
    through another. Raises DAVError 400 for a path the storage refuses.
    """
    return lock_root(account_id) + quote(f"{share_path}/{storage_path(dav_path)}")


class _Shared:
    """What files and folders have in common; mixed into WsgiDAV's base classes."""

    volume: Volume
    entry: Entry | None
    path: str
    environ: dict[str, Any]
    provider: Any
    is_collection: bool
    _dead: dict[str, str] | None

    # -- identity ------------------------------------------------------------------

    def get_ref_url(self) -> str:
        return lock_key(self.volume.account.id, self.provider.share_path, self.path)

    def get_display_name(self) -> str:
        return self.entry.name if self.entry else paths.name_of(storage_path(self.path))

    def get_creation_date(self) -> float | None:
        return self.entry.created_at if self.entry else None

    def get_last_modified(self) -> float | None:
        return valid_time(self.entry.mtime) if self.entry else None

    @translated
    def set_last_modified(self, dest_path: str, time_stamp: Any, *, dry_run: bool) -> bool:
        mtime = parse_time(time_stamp)
        if not dry_run:
            self.entry = self.volume.set_mtime(storage_path(self.path), mtime)
            self._changed()
        return True

    def _changed(self) -> None:
        """The tree changed: forget the request's cached look-ups."""
        self.environ.pop(STAT_CACHE, None)

    # -- dead properties -------------------------------------------------------------

    def _dead_properties(self) -> dict[str, str]:
        if self._dead is None:
            with dav_errors():
                self._dead = self.volume.get_properties(storage_path(self.path))
        return self._dead

    def get_property_names(self, *, is_allprop: bool) -> list[str]:
        names: list[str] = super().get_property_names(is_allprop=is_allprop)  # type: ignore[misc]
        if is_allprop:
            # RFC 4331: quota properties are not part of allprop.
            names = [n for n in names if not n.startswith("{DAV:}quota-")]
        return names + list(self._dead_properties())

    def get_property_value(self, name: str) -> Any:
        if name.startswith("{DAV:}quota-"):
            # RFC 4331: a quota property without a value (a file's; the available bytes of an
            # account without a limit) is absent, a 404 in its propstat. WsgiDAV would send it
            # empty, which davfs2 reads as 0 bytes free: a full disk.
            value = super().get_property_value(name)  # type: ignore[misc]
            if value is None:
                raise DAVError(HTTP_NOT_FOUND)
            return value
        if name == "{DAV:}lockdiscovery" and self.environ.get("REQUEST_METHOD") == "LOCK":
            self._check_still_there()
        if name.startswith("{DAV:}"):
            return super().get_property_value(name)  # type: ignore[misc]
        value = self._dead_properties().get(name)
        if value is None:
            raise DAVError(HTTP_NOT_FOUND)
        if value.startswith("<"):
            with contextlib.suppress(SyntaxError, ValueError):  # parse errors of etree and defusedxml
                return xml_tools.string_to_xml(value)
        # Set by another face as plain text: serve it as the element's text.
        el = xml_tools.etree.Element(name)
        el.text = value
        return el

    def set_property_value(self, name: str, value: Any, *, dry_run: bool = False) -> Any:
        if name.startswith("{DAV:}") or name.startswith("{urn:schemas-microsoft-com:}"):
            return super().set_property_value(name, value, dry_run=dry_run)  # type: ignore[misc]
        if dry_run:
            return None
        with dav_errors():
            if value is None:
                self.volume.set_properties(storage_path(self.path), {}, remove=[name])
            else:
                # Stored as a self-contained element (no XML declaration): the fast
                # PROPFIND copies it into responses as it is.
                text = XML_DECL.sub("", util.to_str(xml_tools.xml_to_bytes(value, pretty=False)), count=1)
                self.volume.set_properties(storage_path(self.path), {name: text})
        self._dead = None
        return None

    def remove_all_properties(self, *, recursive: bool) -> None:
        """Properties live on the node and go to the trash with it."""

    def _check_still_there(self) -> None:
        """A LOCK has just been granted: the resource it looked up must still exist.

        On one node LOCK and DELETE run one at a time (the provider's mutex); another node
        may delete the file between this LOCK's look-up and its grant. The lock would stand
        on nothing (WsgiDAV's lockdiscovery then fails, and the path answers 423 until the
        lock times out): drop the locks filed at this path and answer 409.
        """
        try:
            with dav_errors():
                self.volume.stat(storage_path(self.path))
            return
        except DAVError as exc:
            if not isinstance(exc.__cause__, NotFound):
                raise
        lock_man = self.provider.lock_manager
        url = normalize_lock_root(self.get_ref_url())
        for lock in lock_man.get_url_lock_list(url):
            if lock["root"] == url:
                lock_man.release(lock["token"])
        raise DAVError(HTTP_CONFLICT, "the resource was deleted while it was being locked")

    # -- native delete, move, copy ---------------------------------------------------

    def _check_own_locks(self) -> None:
        """WsgiDAV checks only the parent's locks before a native DELETE.

        The target and its members are ours to check, or a client without the
        lock token deletes a locked file. Members are checked token-aware (as
        WsgiDAV's own per-member path does), not with depth infinity, which
        refuses any locked member even when its token is submitted.
        """
        lock_man = self.provider.lock_manager
        if lock_man is None:
            return
        util.parse_if_header_dict(self.environ)
        tokens = self.environ["wsgidav.ifLockTokenList"]
        principal = self.environ["wsgidav.user_name"]
        url = self.get_ref_url()
        hrefs: list[str] = []
        try:
            lock_man.check_write_permission(url=url, depth="0", token_list=tokens, principal=principal)
        except DAVError as exc:
            if exc.value != HTTP_LOCKED or exc.err_condition is None:
                raise
            hrefs += exc.err_condition.hrefs
        if self.is_collection:
            below = lock_man.storage.get_lock_list(
                url, include_root=False, include_children=True, token_only=False
            )
            hrefs += [lk["root"] for lk in below if lk["principal"] != principal or lk["token"] not in tokens]
        if hrefs:
            # Raised inside WsgiDAV's DELETE handler, out of reach of the provider's
            # href rewriting: give clients URL paths, not lock storage keys.
            cond = DAVErrorCondition(PRECONDITION_CODE_LockConflict)
            cond.hrefs = [self.provider.client_href(h) for h in hrefs]
            raise DAVError(HTTP_LOCKED, err_condition=cond)

    @translated
    def handle_delete(self) -> bool:
        self._check_own_locks()
        self.volume.delete(storage_path(self.path))
        self._changed()
        self.remove_all_locks(recursive=True)  # type: ignore[attr-defined]
        return True

    @translated
    def handle_move(self, dest_path: str) -> bool:
        self._note_destination(dest_path)
        self.volume.move(storage_path(self.path), storage_path(dest_path), overwrite=True)
        self._changed()
        self.remove_all_locks(recursive=True)  # type: ignore[attr-defined]
        return True

    @translated
    def handle_copy(self, dest_path: str, *, depth_infinity: bool) -> bool:
        self._note_destination(dest_path)
        self.volume.copy(
            storage_path(self.path), storage_path(dest_path), overwrite=True, recursive=depth_infinity
        )
        self._changed()
        return True

    def _note_destination(self, dest_path: str) -> None:
        """WsgiDAV answers 204 after a native MOVE/COPY; RFC 4918 wants 201 for a new target.

        WsgiDAV looked the destination up already: the request's cache answers.
        """
        if self.provider.get_resource_inst(dest_path, self.environ) is None:
            self.environ[DEST_CREATED] = True


class FileResource(_Shared, DAVNonCollection):
    def __init__(self, path: str, environ: dict[str, Any], volume: Volume, entry: Entry | None) -> None:
        super().__init__(path, environ)
        self.volume = volume
        self.entry = entry
        self._dead = None if entry is not None else {}
        self._pending: PendingWrite | None = None

    def get_content_length(self) -> int:
        return self.entry.size if self.entry else 0

    def get_content_type(self) -> str:
        return content_type_for(self.get_display_name())

    def get_etag(self) -> str | None:
        etag = self.entry.etag if self.entry else None
        return etag.strip('"') if etag else None

    def support_etag(self) -> bool:
        return True

    def get_property_value(self, name: str) -> Any:
        if name == "{DAV:}getetag" and (etag := self.get_etag()) is not None:
            # RFC 4918 15.6: an entity-tag, quotes included, as in the ETag header
            # (WsgiDAV's own rendering leaves them out).
            return f'"{etag}"'
        return super().get_property_value(name)

    def support_ranges(self) -> bool:
        return True

    @translated
    def get_content(self) -> Any:
        # The version whose length and ETag WsgiDAV has already sent, even if a
        # PUT committed a newer one in between.
        version_id = self.entry.version_id if self.entry else None
        return _GetStream(self.volume.open(storage_path(self.path), version_id=version_id))

    # -- PUT -------------------------------------------------------------------------

    @translated
    def begin_write(self, *, content_type: str | None = None) -> _BodySink:
        self._pending = self.volume.begin_write(storage_path(self.path), **write_options(self.environ))
        return _BodySink(self._pending)

    def end_write(self, *, with_errors: bool) -> None:
        pending, self._pending = self._pending, None
        if pending is None:
            return
        if with_errors:
            pending.abort()
            return
        expected = content_length(self.environ)
        if expected is not None and pending.size != expected:
            pending.abort()
            raise DAVError(HTTP_BAD_REQUEST, f"body ended after {pending.size} of {expected} bytes")
        with dav_errors():
            self.entry = pending.commit()
        self._changed()


class _GetStream:
    """What WsgiDAV's GET loop reads: short reads that end at block boundaries.

    WsgiDAV asks for ``block_size`` bytes at a time and copes with less; handing
    it the current block's remainder avoids joining pieces of two blocks.
    """

    def __init__(self, reader: VersionReader) -> None:
        self._reader = reader

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._reader.seek(offset, whence)

    def read(self, size: int = -1) -> bytes:
        with dav_errors():
            return self._reader.read1(size)

    def close(self) -> None:
        self._reader.close()


class _BodySink:
    """What WsgiDAV writes a PUT body into: ``writelines`` hands us the whole stream."""

    def __init__(self, pending: PendingWrite) -> None:
        self._pending = pending

    def writelines(self, chunks: Iterable[bytes]) -> None:
        with dav_errors():
            self._pending.feed(IterReader(chunks))

    def write(self, data: bytes) -> None:  # pragma: no cover - WsgiDAV prefers writelines
        self.writelines([data])

    def close(self) -> None:
        pass


class IterReader:
    """A file-like reader over an iterator of byte chunks (WsgiDAV's PUT body stream).

    ``readinto`` copies each received byte once, straight into the caller's
    buffer (the chunker's); ``read`` is there for callers that want bytes.
    """

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._it: Iterator[bytes] = iter(chunks)
        self._view = memoryview(b"")

    def readinto(self, buffer: memoryview | bytearray) -> int:
        out = memoryview(buffer)
        filled = 0
        while filled < len(out):
            if not self._view:
                chunk = next(self._it, None)
                if chunk is None:
                    break
                self._view = memoryview(chunk)
                continue
            n = min(len(out) - filled, len(self._view))
            out[filled : filled + n] = self._view[:n]
            self._view = self._view[n:]
            filled += n
        return filled

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            rest = bytes(self._view) + b"".join(self._it)
            self._view = memoryview(b"")
            return rest
        buf = bytearray(n)
        got = self.readinto(buf)
        return bytes(buf[:got])


class FolderResource(_Shared, DAVCollection):
    def __init__(self, path: str, environ: dict[str, Any], volume: Volume, entry: Entry) -> None:
        super().__init__(path, environ)
        self.volume = volume
        self.entry = entry
        self._dead = None

    def get_display_name(self) -> str:
        return self.entry.name if self.entry and self.entry.name else "/"

    def get_etag(self) -> None:
        return None

    # -- RFC 6578: DAV:sync-token and the sync-collection REPORT (davserver.dav.sync_collection)

    def get_property_names(self, *, is_allprop: bool) -> list[str]:
        names = super().get_property_names(is_allprop=is_allprop)
        # RFC 6578 section 4: DAV:sync-token is not part of allprop; nor is the
        # computed DAV:supported-report-set (RFC 4918 14.2: allprop is RFC 4918's own).
        return names if is_allprop else [*names, SYNC_TOKEN, SUPPORTED_REPORT_SET]

    def get_property_value(self, name: str) -> Any:
        if name == SYNC_TOKEN:
            position = self.environ.get(SYNC_POSITION)
            if position is None:
                with dav_errors():
                    position = self.environ[SYNC_POSITION] = self.volume.change_seq()
            return SyncToken(self.volume.account.id, position).encode()
        if name == SUPPORTED_REPORT_SET:
            return supported_report_set()
        return super().get_property_value(name)

    def get_used_bytes(self) -> int:
        return self._quota().used_bytes

    def get_available_bytes(self) -> int | None:
        return self._quota().available_bytes

    def _quota(self) -> Quota:
        # The account's, the same for every folder: read once per request (WsgiDAV asks
        # each folder of a listing twice just to name its properties).
        quota: Quota | None = self.environ.get(QUOTA)
        if quota is None:
            with dav_errors():
                quota = self.environ[QUOTA] = self.volume.quota()
        return quota

    def _child(self, entry: Entry) -> FileResource | FolderResource:
        child_path = util.join_uri(self.path, entry.name)
        if entry.is_dir:
            return FolderResource(child_path, self.environ, self.volume, entry)
        return FileResource(child_path, self.environ, self.volume, entry)

    @translated
    def get_member_list(self) -> list[FileResource | FolderResource]:
        path = storage_path(self.path)
        members = [self._child(e) for e in self.volume.listdir(path)]
        if self.environ.get("REQUEST_METHOD") == "PROPFIND" and members:
            # PROPFIND asks every member for its dead properties: one query for all.
            props = self.volume.child_properties(path)
            for m in members:
                m._dead = props.get(m.entry.node_id, {}) if m.entry else {}
        return members

    def get_member_names(self) -> list[str]:
        return [m.get_display_name() for m in self.get_member_list()]

    @translated
    def get_member(self, name: str) -> FileResource | FolderResource | None:
        try:
            entry = self.volume.stat(paths.join(storage_path(self.path), paths.normalize_name(name)))
        except NotFound:
            return None
        return self._child(entry)

    @translated
    def get_descendants(
        self,
        *,
        collections: bool = True,
        resources: bool = True,
        depth_first: bool = False,
        depth: str = "infinity",
        add_self: bool = False,
    ) -> list[Any]:
        found: list[Any] = []
        if depth == "1":
            found = self.get_member_list()
        elif depth == "infinity":
            base = storage_path(self.path)
            for entry in self.volume.walk(base):
                rel = entry.path[len(base) :].lstrip("/")
                child_path = util.join_uri(self.path, rel)
                cls = FolderResource if entry.is_dir else FileResource
                found.append(cls(child_path, self.environ, self.volume, entry))
        found = [r for r in found if (r.is_collection and collections) or (not r.is_collection and resources)]
        if add_self:
            found.insert(0, self)
        return list(reversed(found)) if depth_first else found

    @translated
    def create_empty_resource(self, name: str) -> FileResource:
        path = util.join_uri(self.path, name)
        if self.environ.get("REQUEST_METHOD") == "LOCK":
            # RFC 4918 7.3: LOCK on an unmapped URL creates an empty resource. WsgiDAV does so
            # before it checks the lock it is asked for, so first the check a PUT of a new
            # member makes (no one else's lock covers this folder); if the lock is refused
            # even so, the provider removes the file again (LOCK_CREATED).
            self.provider.lock_manager.check_write_permission(
                url=self.get_ref_url(),
                depth="0",
                token_list=self.environ.get("wsgidav.ifLockTokenList", []),
                principal=self.environ["wsgidav.user_name"],
            )
            target = storage_path(path)
            entry = self.volume.write(target, IterReader([]))
            self.environ[LOCK_CREATED] = (target, entry.version_id)
            self._changed()
            return FileResource(path, self.environ, self.volume, entry)
        # PUT: a placeholder; the file appears only when the body commits.
        return FileResource(path, self.environ, self.volume, None)

    @translated
    def create_collection(self, name: str) -> FolderResource:
        path = util.join_uri(self.path, name)
        try:
            entry = self.volume.mkdir(storage_path(path))
        except AlreadyExists:
            # Another request made it since WsgiDAV looked: MKCOL's answer for an existing name.
            raise DAVError(HTTP_METHOD_NOT_ALLOWED, "it exists") from None
        self._changed()
        return FolderResource(path, self.environ, self.volume, entry)


def member_resource(
    path: str, environ: dict[str, Any], volume: Volume, entry: Entry, *, dead: dict[str, str] | None = None
) -> FileResource | FolderResource:
    """The resource of a listed entry; ``dead``: its dead properties, if already fetched."""
    res: FileResource | FolderResource
    if entry.is_dir:
        res = FolderResource(path, environ, volume, entry)
    else:
        res = FileResource(path, environ, volume, entry)
    res._dead = dead
    return res


def write_options(environ: dict[str, Any]) -> dict[str, Any]:
    """What a PUT's headers say about the write (Volume.begin_write's keywords); DAVError 400 if bad."""
    return {
        "size_hint": declared_length(environ),
        "if_match": single_etag(environ.get("HTTP_IF_MATCH")),
        "if_none_match": "*" if environ.get("HTTP_IF_NONE_MATCH", "").strip() == "*" else None,
        "mtime": oc_mtime(environ),
        "device": environ.get("HTTP_USER_AGENT", "")[:200] or None,
    }


def content_type_for(name: str) -> str:
    dot = name.rfind(".")
    return _content_type_of_suffix(name[dot:].lower() if dot > 0 else "")


@functools.lru_cache(maxsize=1024)
def _content_type_of_suffix(suffix: str) -> str:
    guessed, _ = mimetypes.guess_type("x" + suffix) if suffix else (None, None)
    return guessed or "application/octet-stream"


def content_length(environ: dict[str, Any]) -> int | None:
    value = environ.get("CONTENT_LENGTH", "").strip()
    if not value:
        return None
    try:
        n = int(value)
    except ValueError:
        raise DAVError(HTTP_BAD_REQUEST, "Content-Length is not a number") from None
    if n < 0:
        raise DAVError(HTTP_BAD_REQUEST, "negative Content-Length")
    return n


def declared_length(environ: dict[str, Any]) -> int | None:
    """Content-Length, or macOS Finder's X-Expected-Entity-Length on chunked PUTs."""
    n = content_length(environ)
    if n is not None:
        return n
    return digits(environ.get("HTTP_X_EXPECTED_ENTITY_LENGTH", ""))


def oc_mtime(environ: dict[str, Any]) -> float | None:
    value = environ.get("HTTP_X_OC_MTIME")
    if value is None:
        return None
    try:
        return epoch_seconds(value)
    except ValueError as exc:
        raise DAVError(HTTP_BAD_REQUEST, f"X-OC-Mtime: {exc}") from None


def parse_time(value: Any) -> float:
    """An HTTP date (getlastmodified, Win32LastModifiedTime) or epoch seconds, in the range
    X-OC-Mtime and the API take (a stored 1e400 broke every later answer about the file)."""
    text = str(value).strip()
    try:
        return epoch_seconds(text)
    except ValueError:
        pass
    try:
        return epoch_in_range(parsedate_to_datetime(text).timestamp())
    except (TypeError, ValueError, IndexError, OverflowError):
        raise DAVError(HTTP_BAD_REQUEST, f"not a date this server keeps: {text[:60]!r}") from None


def single_etag(header: str | None) -> str | None:
    if not header:
        return None
    header = header.strip()
    if header == "*":
        return "*"
    if "," in header:
        return None  # lists are evaluated by WsgiDAV before the write starts
    return header if header.startswith('"') else f'"{header}"'
