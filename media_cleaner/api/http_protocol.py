"""uvicorn's HTTP protocol with one change: a request that is not valid HTTP is answered with the API's JSON
error shape (``{"detail": "…"}``), not uvicorn's plain text, so that every error a client sees parses alike.

httptools is the parser requirements.txt installs; without it uvicorn's h11 protocol is used as it is.
"""
from __future__ import annotations

import json

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:   # httptools missing: uvicorn's default protocol, plain-text 400s
    HttpToolsProtocol = None


def _body(message: str) -> bytes:
    return json.dumps({"detail": f"The request is not valid HTTP ({message}). Send a well-formed HTTP/1.1 "
                                 f"request."}).encode("utf-8")


if HttpToolsProtocol is not None:
    class JsonErrorsHttpProtocol(HttpToolsProtocol):
        def send_400_response(self, msg: str) -> None:
            body = _body(msg)
            head = [b"HTTP/1.1 400 Bad Request\r\n"]
            for name, value in self.server_state.default_headers:
                head += [name, b": ", value, b"\r\n"]
            head += [b"content-type: application/json\r\n", b"content-length: %d\r\n" % len(body),
                     b"connection: close\r\n", b"\r\n"]
            self.transport.write(b"".join(head) + body)
            self.transport.close()

    HTTP_PROTOCOL = JsonErrorsHttpProtocol
else:
    HTTP_PROTOCOL = "auto"
