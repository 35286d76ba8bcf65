"""The Flask application Docker talks to: ``create_app(controller)``.

Shaped like docker/go-plugins-helpers: the table of paths is ``handlers.ROUTES``; one view
decodes the body (JSON whatever the headers say), calls the handler and encodes its answer;
one error path turns pycnm's errors into HTTP 500 ``{"Err": message}``, which Docker shows
to its user. Unknown calls get 404 (Docker reads that as "not implemented"), bodies over
1 MiB get 413. Every call is logged with its duration and the ids it names, and its
duration is also sent back in the ``X-Pycnm-Duration-Ms`` header (for the benchmark).
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from cnm.errors import CNMError
from cnm.inputs import shown
from plugin_server import handlers
from plugin_server.protocol import CONTENT_TYPE, MAX_BODY, Body, decode

if TYPE_CHECKING:
    from cnm.controller import Controller

log = logging.getLogger("plugin_server")

# Fields worth a place in the log line of a call (shortened ids, pools and addresses).
_LOGGED = ("NetworkID", "EndpointID", "PoolID", "Pool", "Address")
DURATION_HEADER = "X-Pycnm-Duration-Ms"


def _reply(payload: dict[str, Any], status: int = 200) -> Response:
    return Response(json.dumps(payload), status=status, content_type=CONTENT_TYPE)


def _ids(body: dict[str, Any]) -> str:
    parts = []
    for field in _LOGGED:
        value = body.get(field)
        if isinstance(value, str) and value:
            short = value[:12] if field in ("NetworkID", "EndpointID") else value[:64]
            # A value is logged as it came only if it cannot forge a log line.
            parts.append(f"{field}={short if short.isprintable() else shown(short)}")
    return " ".join(parts)


def create_app(controller: Controller) -> Flask:
    """A Flask app serving Docker's NetworkDriver and IpamDriver calls on ``controller``."""
    app = Flask("pycnm-plugin")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    ctx = handlers.PluginContext(controller)
    app.extensions["pycnm"] = ctx

    @app.post("/<string:call>")
    def dispatch(call: str) -> Response:
        started = time.perf_counter()
        handler = handlers.ROUTES.get(call)
        if handler is None:
            log.warning("%s: unknown call (404)", shown(call))
            return _reply({"Err": f"pycnm does not implement {shown(call)}"}, 404)
        status, fields = 200, ""
        try:
            if (request.content_length or 0) > MAX_BODY:
                raise RequestEntityTooLarge()
            body = decode(request.get_data(cache=False), call)
            fields = _ids(body)
            answer, status = handler(ctx, Body(call, body)), 200
        except RequestEntityTooLarge:
            answer, status = {"Err": f"{call}: the request body is larger than "
                                     f"{MAX_BODY // 1024} KiB"}, 413
        except CNMError as exc:
            answer, status = {"Err": str(exc)}, 500
        except Exception:  # a bug: the user gets a sentence, the log the traceback
            log.exception("%s %s: internal error", call, fields)
            answer, status = {"Err": f"pycnm plugin: internal error in {call}; the plugin's "
                                     "log has the details"}, 500
        elapsed = (time.perf_counter() - started) * 1000
        if status == 200:
            log.info("%s %s -> 200 in %.1f ms", call, fields, elapsed)
        else:
            log.warning("%s %s -> %d in %.1f ms: %s", call, fields, status, elapsed,
                        answer.get("Err"))
        response = _reply(answer, status)
        response.headers[DURATION_HEADER] = f"{elapsed:.3f}"
        return response

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        # Routing errors (a GET, a path with slashes, an oversize body caught by Flask):
        # Docker's protocol is JSON everywhere, errors included.
        code = exc.code or 500
        if code == 413:
            message = f"the request body is larger than {MAX_BODY // 1024} KiB"
        elif code == 404:
            message = f"pycnm does not implement {shown(request.path)}"
        else:
            message = f"{exc.name}: Docker's plugin protocol uses POST /<Interface.Call>"
        log.warning("%s %s -> %d", request.method, request.path, code)
        return _reply({"Err": message}, code)

    return app
