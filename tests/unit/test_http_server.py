"""The HTTP scoring server on a live loopback port (uvicorn in a thread, a random checkpoint):
MLflow's request formats score as the core does; oversized bodies and requests are 413 while
they are read; malformed ones a one-line 400; an unexpected failure a 500; and no response
ever carries a stack trace, a server path or the request's own data."""

from __future__ import annotations

import base64
import json
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

from cxr.infer.http import create_app
from cxr.infer.serving import predict_files, predict_request
from tests.helpers import free_port, random_checkpoint

LIMIT = 200_000


def start(app) -> tuple[str, object, threading.Thread]:
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if requests.get(url + "/ping", timeout=1).ok:
                return url, server, thread
        except requests.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError("the test server did not start")


@pytest.fixture(scope="module")
def checkpoint():
    return random_checkpoint(0, 48)


@pytest.fixture(scope="module")
def server(checkpoint):
    def predict(frame: pd.DataFrame, params: dict) -> pd.DataFrame:
        if params.get("operating_point") == "explode":
            raise RuntimeError("/srv/secret/path exploded")
        return predict_request(checkpoint, frame, params)

    url, running, thread = start(create_app(predict, {"name": "test"}, max_body_bytes=LIMIT, max_images=3))
    yield url
    running.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def images(real_data_dir: Path) -> list[Path]:
    return sorted((real_data_dir / "kermany-pneumonia-224" / "train" / "PNEUMONIA").iterdir())[:3]


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def post(url: str, body, **kwargs) -> requests.Response:
    data = body if isinstance(body, (bytes, str)) or hasattr(body, "__next__") else json.dumps(body)
    return requests.post(url + "/invocations", data=data, headers={"Content-Type": "application/json"}, timeout=60,
                         **kwargs)


def assert_clean(response: requests.Response, *secrets: str) -> None:
    text = response.text
    assert "Traceback" not in text and "/srv" not in text and "/work" not in text and len(text.splitlines()) == 1
    for secret in secrets:
        assert secret not in text


@pytest.mark.parametrize("layout", ["dataframe_split", "dataframe_records", "inputs"])
def test_each_mlflow_layout_scores_as_the_core(server, checkpoint, images, layout: str):
    ids = [p.stem for p in images]
    encoded = [b64(p) for p in images]
    body = {"dataframe_split": {"columns": ["id", "image"], "data": [list(r) for r in zip(ids, encoded)]},
            "dataframe_records": [{"id": i, "image": e} for i, e in zip(ids, encoded)],
            "inputs": {"id": ids, "image": encoded}}[layout]
    response = post(server, {layout: body, "params": {"views": ["original", "hflip"]}})
    assert response.status_code == 200, response.text
    got = pd.DataFrame(response.json()["predictions"])
    expected = predict_files(checkpoint, [str(p) for p in images], ids, views=("original", "hflip"))
    assert got["id"].tolist() == ids
    np.testing.assert_allclose(got[["a", "b"]].to_numpy(), expected[["a", "b"]].to_numpy(), atol=1e-6)


def test_a_bad_image_is_an_answered_row_with_null_scores(server, images):
    response = post(server, {"inputs": {"image": [b64(images[0]), base64.b64encode(b"junk").decode()]}})
    assert response.status_code == 200
    rows = response.json()["predictions"]
    assert rows[0]["error"] == "" and rows[0]["a"] is not None
    assert rows[1]["a"] is None and rows[1]["b"] is None and rows[1]["flag"] is True
    assert rows[1]["error"] == "corrupt or unreadable image file: row 1"


def test_a_body_over_the_limit_is_413_by_its_header_or_while_streamed(server):
    big = json.dumps({"inputs": {"image": ["A" * (LIMIT + 10)]}})
    declared = post(server, big)
    assert declared.status_code == 413 and f"at most {LIMIT}" in declared.text
    streamed = post(server, (chunk.encode() for chunk in [big[i:i + 65536] for i in range(0, len(big), 65536)]))
    assert streamed.status_code == 413 and "over" in streamed.text
    assert_clean(declared, "AAAA")


def test_too_many_images_is_413(server, images):
    response = post(server, {"inputs": {"path": ["x"] * 4}})
    assert response.status_code == 413 and "4 images" in response.text and "at most 3" in response.text


@pytest.mark.parametrize("body, message", [
    ("{not json", "not valid JSON"),
    ([1, 2], "must be a JSON object"),
    ({"instances": [1]}, "exactly one of"),
    ({"dataframe_split": {"columns": ["image"], "data": "x"}}, "'columns' and 'data'"),
    ({"inputs": {"image": ["!!c2VjcmV0!!"]}}, "row 0: image is not valid base64"),
    ({"inputs": {"file": ["/srv/data/patient.png"]}}, "needs an 'image'"),
    ({"inputs": {"path": ["x.png"]}, "params": {"viewz": 1}}, "unknown param(s) ['viewz']"),
    ({"inputs": {"path": []}}, "no rows"),
    ({"inputs": {"path": ["x.png"]}, "params": {"operating_point": "youden"}}, "unknown operating point"),
])
def test_malformed_requests_are_one_line_400s_without_their_data(server, body, message: str):
    response = post(server, body)
    assert response.status_code == 400 and message in response.text
    assert_clean(response, "c2VjcmV0", "patient.png", "youden")


def test_an_unexpected_failure_is_a_500_that_names_nothing(server, images):
    response = post(server, {"inputs": {"image": [b64(images[0])]}, "params": {"operating_point": "explode"}})
    assert response.status_code == 500 and "log has the details" in response.text
    assert_clean(response, "exploded")


def test_other_content_types_are_415_and_ping_answers(server):
    response = requests.post(server + "/invocations", data="image,x", headers={"Content-Type": "text/csv"}, timeout=10)
    assert response.status_code == 415
    assert requests.get(server + "/health", timeout=10).text == "ok\n"
    assert requests.get(server + "/version", timeout=10).json() == {"name": "test"}


def test_beyond_max_pending_requests_in_flight_new_ones_get_503(images):
    release, entered = threading.Event(), threading.Event()

    def slow(frame: pd.DataFrame, params: dict) -> pd.DataFrame:
        entered.set()
        release.wait(30)
        return pd.DataFrame({"id": ["0"]})

    url, running, thread = start(create_app(slow, {}, max_pending=1))
    first = threading.Thread(target=post, args=(url, {"inputs": {"image": ["AAAA"]}}))
    first.start()
    try:
        assert entered.wait(30)
        busy = post(url, {"inputs": {"image": ["AAAA"]}})
        assert busy.status_code == 503 and "1 requests in flight" in busy.text
    finally:
        release.set()
        first.join(30)
        running.should_exit = True
        thread.join(10)
    assert not first.is_alive()
