"""The HTTP scoring server: MLflow's request format (``dataframe_split``, ``dataframe_records``
or ``inputs``, plus ``params``) and response (``{"predictions": [...]}``) on ``/invocations``,
with bounds MLflow's own scoring server lacks.

Why not ``mlflow models serve`` itself: it reads any body whole into memory, answers an error
with the Python stack trace and, when schema enforcement fails, repeats the request's dataframe
(image bytes included) in its response. Here a body over ``max_body_bytes`` is refused with 413
while it is read, a request over ``max_images`` rows with 413, a malformed one with a one-line
400, and an unexpected failure with a 500 that names nothing of the request; the traceback goes
to the server's log only. One request is scored at a time (the model uses every core already).
"""


import json
import logging
import threading
from typing import Callable

import pandas as pd

from cxr.errors import DataError, RequestError

logger = logging.getLogger(__name__)
Predictor = Callable[[pd.DataFrame, dict], pd.DataFrame]
MEGABYTE = 1 << 20


class TooLarge(Exception):
    """A request over the server's body or image bound (HTTP 413)."""


def request_frame(body: bytes, max_images: int) -> tuple[pd.DataFrame, dict]:
    """The request's rows and params from an MLflow-style JSON body; RequestError if malformed,
    TooLarge beyond ``max_images`` rows."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise RequestError("the body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise RequestError("the body must be a JSON object with 'dataframe_split', 'dataframe_records' or 'inputs'")
    params = payload.get("params") or {}
    if not isinstance(params, dict):
        raise RequestError("'params' must be a JSON object")
    keys = [k for k in ("dataframe_split", "dataframe_records", "inputs") if k in payload]
    if len(keys) != 1:
        raise RequestError("the body needs exactly one of 'dataframe_split', 'dataframe_records' or 'inputs'")
    frame = _frame(keys[0], payload[keys[0]])
    if len(frame) > max_images:
        raise TooLarge(f"the request has {len(frame)} images; this server takes at most {max_images} per request")
    if frame.empty:
        raise RequestError("the request has no rows")
    return frame, params


def _frame(key: str, data) -> pd.DataFrame:
    """The DataFrame that one of MLflow's input keys holds."""
    if key == "dataframe_split" and (not isinstance(data, dict) or not isinstance(data.get("data"), list)):
        raise RequestError("'dataframe_split' must be an object with 'columns' and 'data'")
    try:
        if key == "dataframe_split":
            return pd.DataFrame(data["data"], columns=data.get("columns"))
        if isinstance(data, dict):
            return pd.DataFrame({k: v if isinstance(v, list) else [v] for k, v in data.items()})
        if isinstance(data, list) and all(isinstance(row, dict) for row in data):
            return pd.DataFrame.from_records(data)
    except (ValueError, TypeError, AssertionError):
        raise RequestError(f"'{key}' does not describe a table (rows of equal length, named columns)") from None
    raise RequestError(f"'{key}' must be a list of row objects or an object of columns")


def predictions_json(frame: pd.DataFrame) -> bytes:
    """``{"predictions": [row, ...]}``, missing values as null."""
    return b'{"predictions": ' + frame.to_json(orient="records").encode() + b"}"


def create_app(predict: Predictor, info: dict, max_body_bytes: int = 64 * MEGABYTE, max_images: int = 64,
               max_pending: int = 32):
    """The FastAPI app: ``POST /invocations``, ``GET /ping`` (and ``/health``), ``GET /version``
    (``info``). Beyond ``max_pending`` requests in flight, new ones get 503 instead of queueing
    their bodies in memory."""
    from fastapi import FastAPI, Request
    from fastapi.responses import PlainTextResponse, Response
    from starlette.concurrency import run_in_threadpool

    app = FastAPI(title="cxr scoring server", docs_url=None, redoc_url=None, openapi_url=None)
    lock = threading.Lock()
    pending = [0]

    def scored(frame: pd.DataFrame, params: dict) -> pd.DataFrame:
        with lock:
            return predict(frame, params)

    def error(status: int, message: str) -> Response:
        return PlainTextResponse(message + "\n", status_code=status)

    @app.get("/ping")
    @app.get("/health")
    async def ping() -> Response:
        return PlainTextResponse("ok\n")

    @app.get("/version")
    async def version() -> Response:
        return Response(json.dumps(info), media_type="application/json")

    @app.post("/invocations")
    async def invocations(request: Request) -> Response:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return error(415, "send the request as Content-Type: application/json")
        if pending[0] >= max_pending:
            return error(503, f"the server has {pending[0]} requests in flight; retry later")
        pending[0] += 1
        try:
            body = await bounded_body(request, max_body_bytes)
            frame, params = request_frame(body, max_images)
            predictions = await run_in_threadpool(scored, frame, params)
        except TooLarge as too_large:
            return error(413, str(too_large))
        except (RequestError, DataError) as bad:
            return error(400, str(bad).splitlines()[0])
        except Exception:
            logger.exception("scoring failed")
            return error(500, "the server could not score this request; its log has the details")
        finally:
            pending[0] -= 1
        return Response(predictions_json(predictions), media_type="application/json")

    return app


async def bounded_body(request, limit: int) -> bytes:
    """The request body, refused (TooLarge) as soon as its declared or received size passes ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"the body is {int(declared)} bytes; this server takes at most {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"the body is over {limit} bytes; this server takes at most {limit}")
        chunks.append(chunk)
    return b"".join(chunks)
