"""Hostile requests to a real daemon's HTTP API: each is a 4xx with a JSON error, never a 500.

Every request below was tried against the daemon by hand first; several answered 500 or a
plain-text body, were silently coerced, or were accepted (202) and failed later. Requests
are checked before a job is recorded: none of them leaves a job behind, and the daemon's
log holds no traceback and no error.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from live import Daemon, Drain, start_daemon, wait_until

from stemcast.simulate import simulate_mib

TOKEN = "a-long-random-token-for-hostile-tests"
#: The run every conversion request names: 6 x 4 frames of 32 x 32 (data (4, 6, 32, 32)).
SCAN = (6, 4)


@dataclass
class Answer:
    status: int
    content_type: str
    body: bytes

    def error(self) -> str:
        assert self.content_type.startswith("application/json"), (self.content_type, self.body)
        decoded = json.loads(self.body)
        assert set(decoded) == {"error"}, decoded
        message = decoded["error"]
        assert isinstance(message, str)
        assert message.strip()
        return message


@dataclass
class Site:
    daemon: Daemon
    base: Path
    run_id: str

    @property
    def address(self) -> tuple[str, int]:
        assert self.daemon.http is not None
        parts = urlsplit(self.daemon.http)
        assert parts.hostname is not None
        assert parts.port is not None
        return parts.hostname, parts.port

    def send(
        self, method: str, target: str, body: bytes | None = None, *, token: bool = True
    ) -> Answer:
        connection = http.client.HTTPConnection(*self.address, timeout=30)
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {TOKEN}"
        try:
            connection.request(method, target.replace("{run}", self.run_id), body, headers)
            response = connection.getresponse()
            return Answer(response.status, response.getheader("Content-Type", ""), response.read())
        finally:
            connection.close()

    def send_raw(self, message: bytes) -> Answer:
        """Send bytes that are not a well-formed HTTP request; parse the answer."""
        with socket.create_connection(self.address, timeout=30) as connection:
            connection.sendall(message)
            received = b""
            while chunk := connection.recv(65536):
                received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = dict(line.split(": ", 1) for line in lines[1:])
        return Answer(status, fields.get("Content-Type", ""), body)

    def jobs(self) -> list[dict[str, Any]]:
        answer = self.send("GET", "/jobs")
        assert answer.status == 200
        jobs: list[dict[str, Any]] = json.loads(answer.body)["jobs"]
        return jobs


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    base = tmp_path_factory.mktemp("hostile")
    for name in ("camera", "archive"):
        (base / name).mkdir()
    (base / "token").write_text(TOKEN + "\n")
    (base / "stemcast.toml").write_text(f'input_roots = ["{base / "archive"}"]\n')
    (base / "archive" / "garbage.mib").write_bytes(b"MQ1,not a merlin header" * 40)
    (base / "archive" / "folder.mib").mkdir()
    (base / "archive" / "loop.mib").symlink_to(base / "archive" / "loop.mib")
    simulate_mib(base / "archive", name="archived", scan_shape=SCAN, frame_size=32)
    daemon = start_daemon(
        base / "camera", base / "daemon.log",
        "--config", str(base / "stemcast.toml"), "--output", str(base / "out"),
        "--token-file", str(base / "token"), "--idle-timeout", "60",
    )  # fmt: skip
    drain = Drain(daemon.data)
    try:
        simulate_mib(
            base / "camera", name="target", scan_shape=SCAN, frame_size=32, counter_depth=6,
            hdr_scan_size=True,
        )  # fmt: skip
        run_id = drain.end_of("target.mib")["series"]
        yield Site(daemon, base, run_id)
    finally:
        code = daemon.stop()
        drain.close()
    assert code == 0
    log = daemon.log_text()
    assert "Traceback" not in log
    assert " ERROR " not in log
    assert "internal error" not in log


def body(value: Any) -> bytes:
    return json.dumps(value).encode()


def convert(fields: dict[str, Any]) -> bytes:
    return body({"targets": "emd", **fields})


def emd(**options: Any) -> bytes:
    return convert({"options": {"emd": options}})


def blockfile(**options: Any) -> bytes:
    return body({"targets": "blockfile", "options": {"blockfile": options}})


RUN = "/runs/{run}/convert"
#: (method, target, body, status, words the error must hold), each a class of fault.
HOSTILE: list[tuple[str, str, bytes | None, int, str]] = [
    # Numbers JSON can write but no scan has.
    ("POST", RUN, b'{"targets": "emd", "navigation_shape": [1e400, 1]}', 400, "navigation_shape.0"),
    ("POST", RUN, convert({"navigation_shape": [10**23, 1]}), 400, "less than or equal"),
    ("POST", RUN, convert({"navigation_shape": [2**31, 1]}), 400, "navigation_shape.0"),
    ("POST", RUN, b'{"targets": "emd", "navigation_shape": [NaN, 1]}', 400, "navigation_shape"),
    ("POST", RUN, b'{"targets": "emd", "navigation_shape": [1e999999, 1]}', 400, "got inf"),
    ("POST", RUN, b'{"navigation_shape": [' + b"9" * 5000 + b", 1]}", 400, "not JSON"),
    ("POST", RUN, convert({"navigation_shape": [0, 4]}), 400, "greater than or equal to 1"),
    ("POST", RUN, convert({"navigation_shape": [-1, 4]}), 400, "greater than or equal to 1"),
    # No silent coercion.
    ("POST", RUN, convert({"navigation_shape": [1.5, 2]}), 400, "got 1.5"),
    ("POST", RUN, convert({"navigation_shape": [2.0, 12]}), 400, "got 2.0"),
    ("POST", RUN, convert({"navigation_shape": [True, True]}), 400, "got true"),
    ("POST", RUN, convert({"navigation_shape": ["6", "4"]}), 400, "navigation_shape.0"),
    ("POST", RUN, convert({"navigation_shape": "6x4"}), 400, "navigation_shape"),
    ("POST", RUN, convert({"navigation_shape": [6]}), 400, "navigation_shape"),
    ("POST", RUN, convert({"navigation_shape": [6, 4, 1]}), 400, "navigation_shape"),
    ("POST", RUN, convert({"navigation_shape": {"x": 6, "y": 4}}), 400, "navigation_shape"),
    ("POST", RUN, body({"targets": 123}), 400, "targets: expected"),
    ("POST", RUN, body({"targets": {"emd": 1}}), 400, 'got {"emd": 1}'),
    ("POST", RUN, body({"targets": [1]}), 400, "targets: expected"),
    ("POST", RUN, body({"targets": ["tiff"]}), 400, "'tiff' is not a target"),
    ("POST", RUN, body({"targets": ""}), 400, "no target given"),
    ("POST", RUN, body({"targets": []}), 400, "no target given"),
    ("POST", RUN, emd(shuffle=1), 400, "options.emd.shuffle"),
    ("POST", RUN, emd(compression_opts="9", compression="gzip"), 400, "compression_opts"),
    # Options a conversion cannot use.
    ("POST", RUN, body({"targets": "emd", "options": 5}), 400, "options"),
    ("POST", RUN, body({"targets": "emd", "options": {"emd": 1}}), 400, "options.emd"),
    ("POST", RUN, body({"targets": "emd", "options": {"emd": None}}), 400, "options.emd"),
    ("POST", RUN, body({"targets": "emd", "options": {"tiff": {}}}), 400, "options.tiff"),
    ("POST", RUN, emd(compression="zip"), 400, "options.emd.compression"),
    ("POST", RUN, emd(compression="gzip", compression_opts=10), 400, "compression_opts"),
    ("POST", RUN, emd(compression_opts=4), 400, "compression_opts sets the gzip level"),
    ("POST", RUN, emd(shuffle=True), 400, "shuffle only applies with a compression"),
    ("POST", RUN, emd(chunkz=[1]), 400, "options.emd.chunkz: unknown field"),
    ("POST", RUN, blockfile(intensity_scaling=[2, 1]), 400, "low < high"),
    ("POST", RUN, blockfile(intensity_scaling="max"), 400, "intensity_scaling: expected"),
    ("POST", RUN, blockfile(intensity_scaling=[0, 1, 2]), 400, "intensity_scaling: expected"),
    (
        "POST",
        RUN,
        b'{"targets": "blockfile", "options": {"blockfile": {"intensity_scaling": [1e400, 2]}}}',
        400,
        "intensity_scaling",
    ),
    ("POST", RUN, blockfile(endianess="big"), 400, "endianess"),
    ("POST", RUN, blockfile(endianess="<", endianness=">"), 400, "disagree"),
    ("POST", RUN, body({"targets": "emd", "options": {"blockfile": {}}}), 400, "not a requested"),
    # Accepted by the types, impossible for this run: refused before a job is recorded.
    ("POST", RUN, emd(chunks=[1, 1]), 400, "has 2 axes; the data has 4"),
    ("POST", RUN, emd(chunks=[1, 1, 1, 1, 1]), 400, "options.emd.chunks"),
    ("POST", RUN, emd(chunks=[10**12, 1, 1, 1]), 400, "options.emd.chunks.0"),
    (
        "POST",
        RUN,
        b'{"targets": "emd", "options": {"emd": {"chunks": [1e12, 1, 1, 1]}}}',
        400,
        "options.emd.chunks.0",
    ),
    ("POST", RUN, emd(chunks=[2**31 - 1, 1, 1, 1]), 400, "larger than the data"),
    ("POST", RUN, emd(chunks=[1, 1, 32, 33]), 400, "larger than the data"),
    ("POST", RUN, emd(chunks=[]), 400, "options.emd.chunks"),
    ("POST", RUN, emd(chunks=[0, 1, 1, 1]), 400, "options.emd.chunks.0"),
    ("POST", RUN, emd(chunks="auto"), 400, "options.emd.chunks"),
    ("POST", RUN, convert({"navigation_shape": [25, 1]}), 400, "do not fill one line"),
    ("POST", RUN, convert({"navigation_shape": [2**31 - 1, 2**31 - 1]}), 400, "do not fill"),
    # Bodies that are not what the API reads.
    ("POST", RUN, b"{not json", 400, "not JSON"),
    ("POST", RUN, b"\xff\xfe{}", 400, "not JSON"),
    ("POST", RUN, b"[" * 30000 + b"]" * 30000, 400, "recursion limit"),
    ("POST", RUN, b'{"a":' * 10000 + b"1" + b"}" * 10000, 400, "recursion limit"),
    ("POST", RUN, b"[" * 100000 + b"]" * 100000, 413, "larger than 65536 bytes"),
    ("POST", RUN, b'{"a":' * 100000 + b"1" + b"}" * 100000, 413, "larger than 65536 bytes"),
    ("POST", RUN, b'{"targets": "' + b"e" * 2_000_000 + b'"}', 413, "larger than"),
    ("POST", RUN, body(["emd"]), 400, "JSON object"),
    ("POST", RUN, b"null", 400, "JSON object"),
    ("POST", RUN, b'"emd"', 400, "JSON object"),
    ("POST", RUN, body({"target": "emd"}), 400, "target: unknown field"),
    ("POST", RUN, b'{"targets": "emd", "targets": "blockfile"}', 400, "given more than once"),
    # Paths.
    ("POST", "/convert", body({"targets": "emd"}), 400, "path: required"),
    ("POST", "/convert", body({"path": 123, "targets": "emd"}), 400, "path"),
    ("POST", "/convert", body({"path": "", "targets": "emd"}), 400, "path"),
    ("POST", "/convert", body({"path": "a" * 5000, "targets": "emd"}), 400, "at most 4096"),
    ("POST", "/convert", body({"path": "x\x00.mib", "targets": "emd"}), 400, "NUL"),
    ("POST", "/convert", body({"path": "a" * 300 + ".mib", "targets": "emd"}), 404, "no such"),
    ("POST", "/convert", body({"path": "../camera/target.mib", "targets": "emd"}), 403, "'..'"),
    ("POST", "/convert", body({"path": "/etc/passwd", "targets": "emd"}), 403, "outside"),
    ("POST", "/convert", body({"path": "garbage.mib", "targets": "emd"}), 400, "garbage.mib"),
    ("POST", "/convert", body({"path": "folder.mib", "targets": "emd"}), 400, "not a file"),
    ("POST", "/convert", body({"path": "loop.mib", "targets": "emd"}), 404, "no such file"),
    (
        "POST",
        "/convert",
        body({"path": "archived.mib", "navigation_shape": [25, 1], "targets": "emd"}),
        400,
        "do not fill one line",
    ),
    # Queries.
    ("GET", "/runs?limit=99999999999999999999999", None, 400, "limit"),
    ("GET", "/runs?limit=1000001", None, 400, "limit"),
    ("GET", "/runs?limit=-1", None, 400, "limit"),
    ("GET", "/runs?limit=1.5", None, 400, "limit"),
    ("GET", "/runs?limit=1_000", None, 400, "limit"),
    ("GET", "/runs?limit=%20%201", None, 400, "limit"),
    ("GET", "/runs?limit=%C2%B2", None, 400, "limit"),
    ("GET", "/runs?limit=%ff", None, 400, "limit"),
    ("GET", "/runs?limit=" + "9" * 5000, None, 400, "limit"),
    ("GET", "/runs?limit=1&limit=2", None, 400, "limit: given more than once"),
    ("GET", "/runs?status=sleeping", None, 400, "status"),
    ("GET", "/runs?limt=1", None, 400, "limt: unknown field"),
    ("GET", "/jobs?status=done&status=failed", None, 400, "more than once"),
    ("GET", "/jobs?run_id=" + "r" * 300, None, 400, "run_id"),
    ("GET", "/jobs?limit=", None, 400, "limit"),
    # Routes and methods.
    ("GET", "/nowhere", None, 404, "Not Found"),
    ("GET", "/runs/%00", None, 404, "no run"),
    ("GET", "/jobs/" + "j" * 4000, None, 404, "no job"),
    ("PUT", "/runs", b"{}", 405, "Method Not Allowed"),
    ("PATCH", "/jobs/x", b"{}", 405, "Method Not Allowed"),
    ("GET", RUN, None, 405, "Method Not Allowed"),
    ("DELETE", "/runs/{run}", None, 405, "Method Not Allowed"),
    ("POST", "/runs/no-such-run/convert", body({"targets": "emd"}), 404, "no run"),
    ("DELETE", "/jobs/no-such-job", None, 404, "no job"),
]


@pytest.mark.parametrize(
    ("method", "target", "payload", "status", "words"),
    HOSTILE,
    ids=[f"{index}-{method}-{target[:20]}" for index, (method, target, *_) in enumerate(HOSTILE)],
)
def test_a_hostile_request_is_a_4xx_saying_what_is_wrong(
    site: Site, method: str, target: str, payload: bytes | None, status: int, words: str
) -> None:
    answer = site.send(method, target, payload)
    assert answer.status == status, answer.body[:300]
    assert words in answer.error()


def test_hostile_requests_leave_no_job(site: Site) -> None:
    for method, target, payload, _, _ in HOSTILE:
        site.send(method, target, payload)
    assert site.jobs() == []


#: Messages that are not HTTP the server can parse: the answer is JSON all the same.
MALFORMED = [
    b"GARBAGE\r\n\r\n",
    b"GET /runs HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 10000 + b"\r\n\r\n",
    b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /runs?limit=\xc2\xb2 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /runs HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"POST /convert HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET /runs HTTP/9.9\r\nHost: x\r\n\r\n",
]


@pytest.mark.parametrize("message", MALFORMED, ids=range(len(MALFORMED)))
def test_a_message_that_is_not_http_gets_a_json_400(site: Site, message: bytes) -> None:
    answer = site.send_raw(message)
    assert answer.status == 400
    error = answer.error()
    assert error.startswith("not an HTTP request the API can read")
    # What the client sent is not repeated back (nor written to the log).
    assert "aaaa" not in error


def test_a_hostile_request_without_the_token_is_refused_first(site: Site) -> None:
    answer = site.send("POST", RUN, b"[" * 30000 + b"]" * 30000, token=False)
    assert answer.status == 401
    assert "bearer token" in answer.error()


def test_the_api_still_converts_after_the_hostile_requests(site: Site) -> None:
    answer = site.send("POST", RUN, convert({"options": {"emd": {"chunks": [1, 6, 32, 32]}}}))
    assert answer.status == 202, answer.body
    job_id = json.loads(answer.body)["id"]
    done = wait_until(
        lambda: json.loads(site.send("GET", f"/jobs/{job_id}").body),
        lambda job: job["status"] != "queued" and job["status"] != "running",
    )
    assert done["status"] == "done"


# ------------------------------------------------------------------------------------------
# Bodies made up by hypothesis: near the valid ones, so that both sides of every check run.
# ------------------------------------------------------------------------------------------

_ANY = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)
_SIZES = st.lists(st.integers(-1, 40) | st.just(2**31), min_size=0, max_size=5)


def mostly(valid: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Draw from ``valid`` three times in four, else from ``odd``."""
    return st.one_of(valid, valid, valid, odd)


_EMD = st.fixed_dictionaries(
    {},
    optional={
        "chunks": mostly(
            st.none() | st.lists(st.integers(1, 40), min_size=3, max_size=4), _SIZES | _ANY
        ),
        "compression": mostly(st.sampled_from([None, "gzip", "lzf"]), st.just("zip") | _ANY),
        "compression_opts": mostly(st.integers(0, 9), st.integers(-1, 10) | _ANY),
        "shuffle": mostly(st.booleans(), _ANY),
    },
)
_BLOCKFILE = st.fixed_dictionaries(
    {},
    optional={
        "intensity_scaling": mostly(
            st.sampled_from([None, "auto", "dtype", "minmax", "crop"])
            | st.lists(st.integers(-5, 300) | st.floats(), min_size=2, max_size=2),
            _ANY,
        ),
        "endianess": mostly(st.sampled_from(["<", ">"]), _ANY),
        "endianness": st.sampled_from(["<", ">"]),
    },
)
_BODIES = mostly(
    st.fixed_dictionaries(
        {},
        optional={
            "targets": mostly(
                st.sampled_from(["emd", "blockfile", "emd,blockfile", ["emd"], ["blockfile"]]),
                st.just("tiff") | _ANY,
            ),
            "options": mostly(
                st.fixed_dictionaries({}, optional={"emd": _EMD, "blockfile": _BLOCKFILE}), _ANY
            ),
            "navigation_shape": mostly(
                st.none() | st.lists(st.integers(1, 30), min_size=2, max_size=2), _SIZES | _ANY
            ),
        },
    ),
    st.dictionaries(st.text(max_size=12), _ANY, max_size=3),
)


#: Bodies of the right types whose values may still not fit the run.
_TYPED = st.fixed_dictionaries(
    {"targets": st.sampled_from(["emd", "blockfile", "emd,blockfile", ["emd"]])},
    optional={
        "options": st.fixed_dictionaries(
            {},
            optional={
                "emd": st.fixed_dictionaries(
                    {},
                    optional={
                        "chunks": st.lists(st.integers(1, 40), min_size=2, max_size=4),
                        "compression": st.sampled_from([None, "gzip", "lzf"]),
                        "shuffle": st.booleans(),
                    },
                ),
                "blockfile": st.fixed_dictionaries(
                    {},
                    optional={
                        "intensity_scaling": st.sampled_from(["dtype", "minmax", "crop"])
                        | st.lists(st.integers(-5, 300), min_size=2, max_size=2)
                    },
                ),
            },
        ),
        "navigation_shape": st.lists(st.integers(1, 30), min_size=2, max_size=2),
    },
)


def post(site: Site, fields: dict[str, Any], accepted: list[str]) -> int:
    """Send a body: a 2xx is kept in ``accepted``, a 4xx must say why in JSON."""
    # NaN and infinities are written as JSON does not allow: the API must say so too.
    answer = site.send("POST", RUN, json.dumps(fields).encode())
    assert answer.status in (200, 202, 400), (fields, answer.body[:300])
    event(f"answered {answer.status}")
    if answer.status >= 400:
        answer.error()
    else:
        accepted.append(json.loads(answer.body)["id"])
    return answer.status


_QUICK = settings(
    deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


@settings(_QUICK, max_examples=150)
@given(fields=_BODIES)
def test_made_up_bodies_are_accepted_whole_or_refused_with_a_reason(
    site: Site, fields: dict[str, Any], accepted: list[str]
) -> None:
    post(site, fields, accepted)


@settings(_QUICK, max_examples=80)
@given(fields=_TYPED)
def test_well_typed_bodies_are_refused_now_or_converted(
    site: Site, fields: dict[str, Any], accepted: list[str]
) -> None:
    post(site, fields, accepted)


@pytest.fixture(scope="module")
def accepted(site: Site) -> Iterator[list[str]]:
    """Jobs the made-up bodies started: each must end done, none accepted then failed."""
    started: list[str] = []
    yield started
    for job_id in dict.fromkeys(started):
        job = wait_until(
            lambda job_id=job_id: json.loads(site.send("GET", f"/jobs/{job_id}").body),
            lambda job: job["status"] in ("done", "failed", "cancelled"),
            timeout_s=60,
        )
        assert job["status"] == "done", job
