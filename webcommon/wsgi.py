"""What the server offers the applications in ``environ`` beyond WSGI 1.0."""

#: environ key of a callable that takes the connection from the server: it returns the
#: connected socket, and the server then writes nothing more on it and does not close it.
DETACH_KEY = "davserver.detach"
