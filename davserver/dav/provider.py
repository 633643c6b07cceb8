"""The WsgiDAV provider: the authenticated account's home as a DAV tree."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote

from wsgidav import util
from wsgidav.dav_error import HTTP_FORBIDDEN, HTTP_UNAUTHORIZED, DAVError
from wsgidav.dav_provider import DAVProvider

from davserver.dav.errors import dav_errors
from davserver.dav.resources import DEST_CREATED, FileResource, FolderResource, storage_path
from storage.engine import Engine
from storage.errors import NotFound
from storage.volume import Volume

#: environ key where the authentication middleware puts the account id.
ACCOUNT_KEY = "davserver.account_id"

StartResponse = Callable[..., Any]


class VolumeProvider(DAVProvider):
    def __init__(self, engine: Engine, *, propfind_infinity: bool = False) -> None:
        super().__init__()
        self.engine = engine
        self.propfind_infinity = propfind_infinity

    def is_readonly(self) -> bool:
        return False

    def volume(self, environ: dict[str, Any]) -> Volume:
        vol: Volume | None = environ.get("davserver.volume")
        if vol is None:
            account_id = environ.get(ACCOUNT_KEY)
            if account_id is None:
                raise DAVError(HTTP_UNAUTHORIZED)
            with dav_errors():
                vol = self.engine.volume(int(account_id))
            environ["davserver.volume"] = vol
        return vol

    def get_resource_inst(self, path: str, environ: dict[str, Any]) -> FileResource | FolderResource | None:
        vol = self.volume(environ)
        try:
            with dav_errors():
                entry = vol.stat(storage_path(path))
        except DAVError as exc:
            if isinstance(exc.__cause__, NotFound):
                return None
            raise
        if entry.is_dir:
            return FolderResource(path, environ, vol, entry)
        return FileResource(path, environ, vol, entry)

    def exists(self, path: str, environ: dict[str, Any]) -> bool:
        return self.get_resource_inst(path, environ) is not None

    def ref_url_to_path(self, ref_url: str) -> str:
        """Invert ``get_ref_url``: drop the ``/~<account>`` prefix and the share."""
        if ref_url.startswith("/~"):
            ref_url = "/" + ref_url.split("/", 2)[2] if ref_url.count("/") >= 2 else "/"
        return "/" + unquote(util.removeprefix(ref_url, self.share_path)).lstrip("/")

    def custom_request_handler(
        self,
        environ: dict[str, Any],
        start_response: StartResponse,
        default_handler: Callable[..., Iterable[bytes]],
    ) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        if method == "PROPFIND" and not self.propfind_infinity:
            depth = environ.get("HTTP_DEPTH", "infinity").lower()
            if depth == "infinity":
                raise DAVError(
                    HTTP_FORBIDDEN,
                    "PROPFIND with Depth: infinity is disabled",
                    err_condition="{DAV:}propfind-finite-depth",
                )
        if method in ("MOVE", "COPY"):
            return default_handler(environ, _CreatedStatus(environ, start_response))
        return default_handler(environ, start_response)


class _CreatedStatus:
    def __init__(self, environ: dict[str, Any], start_response: StartResponse) -> None:
        self._environ = environ
        self._start_response = start_response

    def __call__(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        if status.startswith("204") and self._environ.get(DEST_CREATED):
            status = "201 Created"
        return self._start_response(status, headers, exc_info)
