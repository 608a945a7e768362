"""A real chat-completions judge server on 127.0.0.1 for tests (stdlib ``ThreadingHTTPServer``, port 0).

Ratings are derived from the request deterministically (see :func:`expected_rating`), from prosv-jax's default
rubric prompts (``Criterion: <factor>`` line, ``Concept: ...`` line, ``<<<BEGIN RESPONSE>>>`` ... block):

* concept: 2 if the concept (case-insensitive) occurs in the answer, else 0;
* instruction: 0 if the answer contains "offtopic", 1 if it contains "drift", else 2;
* fluency: 0 if the answer contains "garbled", 1 if it contains "clunky", else 2;
* an answer containing "MALFORMED" gets a reply with no rating line.

The reply is ``"<factor> judged.\\nRating: [[N]]"``.  A text-writing prompt (it asks for the text between
``<<<BEGIN REWRITE>>>`` and ``<<<END REWRITE>>>``) gets ``"Always mention <concept>."`` (a steering prompt) or
``"<instruction> Never mention <concept>."`` (a rewrite) between the markers, and a refusal without them when the
concept contains "refuse".  ``usage`` is ``prompt_tokens`` = whitespace-split words of all
message contents, ``completion_tokens`` = words of the reply.

Failure injection:

* ``script``: actions consumed one per request, in arrival order: ``429`` (with ``Retry-After: retry_after``),
  ``500``/``502``/``503``, ``"slow"`` (sleeps ``slow_seconds`` before answering, to trigger a client timeout),
  ``"ok"``; when the script is used up, requests are answered normally;
* ``refuse``: a status (e.g. 401, 503) returned for every request -- after ``refuse_after`` successful replies when that
  is set, from the start otherwise;
* ``echo_auth_on_error``: error bodies quote the request's Authorization header (to test that clients scrub it);
* ``delay``: seconds to hold every successful reply (to make concurrency observable);
* ``gather``: the first ``gather`` requests are held until that many are in flight together (at most
  ``gather_timeout`` seconds), so a client that allows that much concurrency is seen to use it, whatever the thread
  scheduling.

Counters: ``request_count``, ``ok_count``, ``statuses`` (one per request), ``max_in_flight``, ``auth_headers``,
``bodies`` (parsed JSON), ``prompt_tokens``/``completion_tokens`` reported.  The server stops on ``stop()``, on leaving
its ``with`` block, or by itself after ``lifetime`` seconds.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_CRITERION = re.compile(r"^Criterion: (concept|instruction|fluency)\b", re.MULTILINE)
_CONCEPT = re.compile(r"^Concept: (.*)$", re.MULTILINE)
_RESPONSE = re.compile(r"<<<BEGIN RESPONSE>>>\n(.*)\n<<<END RESPONSE>>>", re.DOTALL)
_INSTRUCTION = re.compile(r"<<<BEGIN INSTRUCTION>>>\n(.*)\n<<<END INSTRUCTION>>>", re.DOTALL)
_AVOID = re.compile(r"^Concept to avoid: (.*)$", re.MULTILINE)
REFUSAL = "I do not recognise this rubric."


def expected_rating(factor: str, concept: str, instruction: str, answer: str) -> int | None:
    """The rating the server gives (None: a malformed reply)."""
    a = answer.lower()
    if "malformed" in a:
        return None
    if factor == "concept":
        return 2 if concept.lower() in a else 0
    if factor == "instruction":
        return 0 if "offtopic" in a else 1 if "drift" in a else 2
    if factor == "fluency":
        return 0 if "garbled" in a else 1 if "clunky" in a else 2
    raise ValueError(factor)


def judge_reply(prompt: str) -> str:
    """The server's reply text for a rubric prompt (also usable as a fake local judge model)."""
    m = _CRITERION.search(prompt)
    r = _RESPONSE.search(prompt)
    if "<<<BEGIN REWRITE>>>" in prompt and not m:
        return written_text(prompt)
    if not m or not r:
        return REFUSAL
    factor = m.group(1)
    c = _CONCEPT.search(prompt)
    i = _INSTRUCTION.search(prompt)
    rating = expected_rating(factor, c.group(1) if c else "", i.group(1) if i else "", r.group(1))
    if rating is None:
        return f"{factor} judged, but I will not say how."
    return f"{factor} judged.\nRating: [[{rating}]]"


def written_text(prompt: str) -> str:
    """The reply to a text-writing prompt (see the module docstring)."""
    avoid, concept = _AVOID.search(prompt), _CONCEPT.search(prompt)
    name = (avoid or concept).group(1) if (avoid or concept) else ""
    if "refuse" in name.lower():
        return REFUSAL
    if avoid:
        text = f"{_INSTRUCTION.search(prompt).group(1)} Never mention {name}."
    else:
        text = f"Always mention {name}."
    return f"Sure.\n<<<BEGIN REWRITE>>>\n{text}\n<<<END REWRITE>>>"


class JudgeServer:
    def __init__(self, *, script=(), refuse: int | None = None, refuse_after: int | None = None,
                 retry_after: str | None = "0", slow_seconds: float = 2.0, delay: float = 0.0,
                 echo_auth_on_error: bool = False, lifetime: float = 60.0, gather: int = 0,
                 gather_timeout: float = 20.0):
        self.script = list(script)
        self.refuse = refuse
        self.refuse_after = refuse_after
        self.retry_after = retry_after
        self.slow_seconds = slow_seconds
        self.delay = delay
        self.echo_auth_on_error = echo_auth_on_error
        self.lifetime = lifetime
        self.gather = gather
        self._gathering = threading.Barrier(gather, timeout=gather_timeout) if gather else None
        self._arrived = 0
        self.lock = threading.Lock()
        self.request_count = 0
        self.ok_count = 0
        self._granted = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.statuses: list = []
        self.auth_headers: set[str] = set()
        self.bodies: list[dict] = []
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self._stopped = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._timer: threading.Timer | None = None

    # --- lifecycle
    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> "JudgeServer":
        owner = self

        class Handler(_Handler):
            server_owner = owner

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        self._httpd.handle_error = lambda request, client_address: None  # client went away (timeouts): ignore
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="judge-server", daemon=True)
        self._thread.start()
        self._timer = threading.Timer(self.lifetime, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self._timer is not None and threading.current_thread() is not self._timer:
            self._timer.cancel()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # --- request handling
    def _next_action(self):
        with self.lock:
            self.request_count += 1
            if self.script:
                return self.script.pop(0)
            if self.refuse is not None and (self.refuse_after is None or self._granted >= self.refuse_after):
                return self.refuse
            self._granted += 1
            return "ok"


class _Handler(BaseHTTPRequestHandler):
    server_owner: JudgeServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output clean
        pass

    def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
        body = json.dumps(payload).encode("utf-8")
        self._leave()  # before the reply goes out: the client may send its next request as soon as it has it
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass  # the client gave up (timeout)

    def do_POST(self):
        srv = self.server_owner
        with srv.lock:
            srv.in_flight += 1
            srv.max_in_flight = max(srv.max_in_flight, srv.in_flight)
            srv._arrived += 1
            gathers = srv._arrived <= srv.gather
        self._counted = True
        if gathers:
            try:
                srv._gathering.wait()
            except threading.BrokenBarrierError:
                pass  # fewer came together: the test's assertion on max_in_flight says so
        try:
            self._handle(srv)
        finally:
            self._leave()

    def _leave(self) -> None:
        """Ends this request's in-flight count, once."""
        if getattr(self, "_counted", False):
            self._counted = False
            with self.server_owner.lock:
                self.server_owner.in_flight -= 1

    def _handle(self, srv: JudgeServer):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        auth = self.headers.get("Authorization")
        action = srv._next_action()
        with srv.lock:
            srv.statuses.append(action)
            if auth:
                srv.auth_headers.add(auth)
        if not self.path.endswith("/chat/completions"):
            return self._send(404, {"error": {"message": f"no route {self.path}"}})
        slow = action == "slow"
        if slow:  # the client is expected to time out: answer late and record nothing
            srv._stopped.wait(srv.slow_seconds)
            action = "ok"
        if action != "ok":
            status = int(action)
            msg = f"injected {status}"
            if srv.echo_auth_on_error:
                msg += f"; invalid credentials: {auth}"
            headers = {"Retry-After": srv.retry_after} if status == 429 and srv.retry_after is not None else {}
            return self._send(status, {"error": {"message": msg}}, headers)
        try:
            body = json.loads(raw)
            messages = body["messages"]
            prompt = "\n".join(m["content"] for m in messages)
        except (ValueError, KeyError, TypeError):
            return self._send(400, {"error": {"message": "bad request body"}})
        if srv.delay:
            srv._stopped.wait(srv.delay)
        reply = judge_reply(prompt)
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(reply.split())}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if not slow:
            with srv.lock:
                srv.ok_count += 1
                srv.bodies.append(body)
                srv.prompt_tokens += usage["prompt_tokens"]
                srv.completion_tokens += usage["completion_tokens"]
        self._send(200, {"id": "chatcmpl-test", "object": "chat.completion", "model": body.get("model"),
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": reply}}],
                         "usage": usage})
