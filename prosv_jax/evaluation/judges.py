"""Judges for the AxBench steering score: an OpenAI-compatible HTTP client and a local-model judge.

Both implement :class:`Judge` -- ``rate(requests) -> ratings`` -- render the rubric prompts of
:mod:`prosv_jax.evaluation.rubric`, parse the replies with :func:`~prosv_jax.evaluation.rubric.parse_rating` and keep an
on-disk :class:`JudgeCache` keyed by a hash of (template text, inputs, model, sampling settings), so that a rerun
issues no requests.  The reply parse (``parse``: the paper code's by default, or AxBench's) is applied to the cached
replies, so it is not part of the key.

Secrets: the API key of :class:`OpenAIJudge` is only ever put in the ``Authorization`` header.  It is not part of
``repr()``, :meth:`OpenAIJudge.config`, log records, cache files or exception messages (error bodies returned by a
server are scrubbed of it too).

Only the standard library is used (``urllib`` + ``concurrent.futures``).
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import email.utils
import hashlib
import http.client
import json
import logging
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol, Sequence, runtime_checkable

from prosv_jax.files import write_json

from .rubric import DEFAULT_TEMPLATES, FACTORS, RubricTemplates, check_parse, parse_rating

logger = logging.getLogger(__name__)

ENV_BASE_URL = "PROSV_JUDGE_BASE_URL"
ENV_MODEL = "PROSV_JUDGE_MODEL"
ENV_API_KEY = "PROSV_JUDGE_API_KEY"
ENV_OPENAI_API_KEY = "OPENAI_API_KEY"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o-mini"  # the judge AxBench uses
DEFAULT_TEMPERATURE = 0.01  # the paper's code (AxBench's own code uses 0.7)
DEFAULT_MAX_TOKENS = 500  # the paper's code

CACHE_VERSION = 2  # 2: the key holds the sampling settings (temperature, max tokens)


# --------------------------------------------------------------------------------------------------------------------
# data types

@dataclass(frozen=True)
class RatingRequest:
    """One question to the judge: rate ``answer`` (given for ``instruction``, steered toward ``concept``) on
    ``factor`` (``"concept"``, ``"instruction"`` or ``"fluency"``)."""

    factor: str
    concept: str
    instruction: str
    answer: str

    def __post_init__(self):
        if self.factor not in FACTORS:
            raise ValueError(f"unknown rubric factor {self.factor!r}; expected one of {FACTORS}")


@dataclass(frozen=True)
class Rating:
    """The judge's answer to one :class:`RatingRequest`.

    ``value``: the parsed rating in [0, 2] (0, 1 or 2 with the paper's parse; any float in [0, 2] with AxBench's; the
    default 0 when the reply was malformed); ``ok``: False for a malformed reply;
    ``reply``: the judge's raw text; ``cached``: True when it came from the on-disk cache.
    """

    factor: str
    value: float
    ok: bool
    reply: str
    cached: bool = False


@dataclass
class JudgeStats:
    """Counters of one judge object (cumulative over its ``rate`` calls).

    ``requests_sent``: HTTP requests / prompts sent to the model (every attempt, retries included);
    ``retries``: re-attempts after a retryable failure; ``cache_hits``: ratings served from the cache;
    ``rated``: ratings returned (cached or not); ``malformed``: ratings whose reply had no parseable rating (counted as
    the default 0); ``failures``: requests that failed for good; ``prompt_tokens`` / ``completion_tokens``: from the
    responses' ``usage`` field (0 when a server does not report it).
    """

    requests_sent: int = 0
    retries: int = 0
    cache_hits: int = 0
    rated: int = 0
    malformed: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


class JudgeError(RuntimeError):
    """A judge could not rate every request.  Everything that was rated is already in the cache.

    Attributes: ``endpoint`` (URL or local model name; never a key), ``n_total``, ``n_succeeded`` (ratings obtained,
    from the cache or the model), ``n_failed`` (requests that failed for good), ``n_skipped`` (not attempted, or
    abandoned mid-retry, after the first failure), ``ratings`` (a list aligned with the requests: a :class:`Rating`
    or ``None``).
    """

    def __init__(self, message: str, *, endpoint: str, n_total: int, n_succeeded: int, n_failed: int,
                 n_skipped: int, ratings: list):
        super().__init__(message)
        self.endpoint = endpoint
        self.n_total = n_total
        self.n_succeeded = n_succeeded
        self.n_failed = n_failed
        self.n_skipped = n_skipped
        self.ratings = ratings


@runtime_checkable
class Judge(Protocol):
    """Anything that rates a batch of requests, in order."""

    def rate(self, requests: Sequence[RatingRequest]) -> list[Rating]: ...


def answer_requests(concept: str, instruction: str, answer: str,
                    factors: Iterable[str] = FACTORS) -> list[RatingRequest]:
    """The three requests (concept, instruction, fluency) for one answer."""
    return [RatingRequest(f, concept, instruction, answer) for f in factors]


def rate_answers(judge: Judge, items: Sequence[tuple[str, str, str]]) -> list[dict[str, Rating]]:
    """Rate ``[(concept, instruction, answer), ...]`` on all three factors in one batch:
    ``[{"concept": Rating, "instruction": Rating, "fluency": Rating}, ...]`` (feed to :mod:`.scores`)."""
    reqs = [r for c, i, a in items for r in answer_requests(c, i, a)]
    ratings = judge.rate(reqs)
    n = len(FACTORS)
    return [dict(zip(FACTORS, ratings[k * n:(k + 1) * n])) for k in range(len(items))]


# --------------------------------------------------------------------------------------------------------------------
# cache

def cache_key(template: str, request: RatingRequest, model: str, system_prompt: str | None = None,
              sampling: dict | None = None) -> str:
    """sha256 over (template text, inputs, model, sampling settings such as temperature and max tokens: a changed
    setting asks again) -- the system prompt is included only when one is used."""
    payload = {"v": CACHE_VERSION, "template": template, "factor": request.factor, "concept": request.concept,
               "instruction": request.instruction, "answer": request.answer, "model": model,
               "sampling": dict(sampling or {})}
    if system_prompt is not None:
        payload["system"] = system_prompt
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


class JudgeCache:
    """A directory of JSON files, one per rating: ``<dir>/<key[:2]>/<key>.json`` holding the judge's raw reply.

    Writes are atomic (temporary file in the same directory, then ``os.replace``), so a crash never leaves a partial
    entry, and concurrent writers of the same key are harmless.  An unreadable entry counts as a miss.  Only the
    reply, the factor, the model and token usage are stored -- never credentials.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        os.makedirs(self.path, exist_ok=True)

    def _file(self, key: str) -> str:
        return os.path.join(self.path, key[:2], key + ".json")

    def get(self, key: str) -> dict | None:
        try:
            with open(self._file(key), encoding="utf-8") as f:
                rec = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            logger.warning("ignoring unreadable judge cache entry %s: %s", self._file(key), e)
            return None
        if not isinstance(rec, dict) or not isinstance(rec.get("reply"), str):
            return None
        return rec

    def put(self, key: str, record: dict) -> None:
        write_json(self._file(key), record, indent=None)

    def __len__(self) -> int:
        n = 0
        for _root, _dirs, files in os.walk(self.path):
            n += sum(1 for f in files if f.endswith(".json") and not f.startswith(".tmp-"))
        return n

    def __repr__(self) -> str:
        return f"JudgeCache({self.path!r})"


# --------------------------------------------------------------------------------------------------------------------
# shared machinery

class _Secret:
    """Holds a credential; its repr/str never show it."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "'***'"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("a judge API key cannot be pickled")


class _Call:
    """State of one ``rate`` call: replies obtained, failure messages, and the stop flag set on a failure."""

    def __init__(self):
        self.results: dict[str, dict] = {}
        self.failures: list[str] = []
        self.stop = threading.Event()


class _CachingJudge:
    """Cache lookup, de-duplication, stats and partial-failure handling shared by the judges.

    Subclasses implement ``_rate_missing(items, call) -> None`` which, for each item ``(key, request, messages)``,
    calls ``self._store(call, key, request, reply, usage)`` as soon as a reply arrives (this writes the cache) and
    ``self._fail(call, msg)`` for a request that failed for good (this sets ``call.stop``).
    """

    model: str
    templates: RubricTemplates
    system_prompt: str | None

    def __init__(self, model: str, templates: RubricTemplates | None, cache_dir: str | os.PathLike | None,
                 system_prompt: str | None, parse: str = "paper"):
        self.model = model
        self.templates = templates or DEFAULT_TEMPLATES
        self.system_prompt = system_prompt
        self.parse = check_parse(parse)
        self.cache = JudgeCache(cache_dir) if cache_dir is not None else None
        self._lock = threading.Lock()
        self._stats = JudgeStats()

    # --- public
    @property
    def stats(self) -> JudgeStats:
        """A snapshot of the counters."""
        with self._lock:
            return dataclasses.replace(self._stats)

    def sampling(self) -> dict:
        """The settings that change the judge's replies besides the prompt and model (in the cache key)."""
        raise NotImplementedError

    def _rubric_config(self) -> dict:
        """What every judge records about its rubric: the templates' source and hash, the parse."""
        texts = json.dumps([self.templates.template(f) for f in FACTORS], ensure_ascii=False).encode("utf-8")
        return {"templates": self.templates.source, "templates_sha256": hashlib.sha256(texts).hexdigest(),
                "parse": self.parse, "system_prompt": self.system_prompt}

    def key(self, request: RatingRequest) -> str:
        return cache_key(self.templates.template(request.factor), request, self.model, self.system_prompt,
                         self.sampling())

    def messages(self, request: RatingRequest) -> list[dict[str, str]]:
        """The chat messages sent for ``request``."""
        prompt = self.templates.render(request.factor, concept=request.concept, instruction=request.instruction,
                                       answer=request.answer)
        msgs = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return msgs + [{"role": "user", "content": prompt}]

    def rate(self, requests: Sequence[RatingRequest]) -> list[Rating]:
        requests = list(requests)
        for r in requests:
            if not isinstance(r, RatingRequest):
                raise TypeError(f"rate() takes RatingRequest objects, got {type(r).__name__}")
        keys = [self.key(r) for r in requests]
        records: dict[str, tuple[dict, bool]] = {}
        missing: dict[str, RatingRequest] = {}
        for k, r in zip(keys, requests):
            if k in records or k in missing:
                continue
            rec = self._lookup(k)
            if rec is not None:
                records[k] = (rec, True)
            else:
                missing[k] = r
        n_hits = sum(1 for k in keys if k in records)
        with self._lock:
            self._stats.cache_hits += n_hits
        call = _Call()
        if missing:
            self._rate_missing([(k, r, self.messages(r)) for k, r in missing.items()], call)
            for k in missing:
                if k in call.results:
                    records[k] = (call.results[k], False)
        out: list[Rating | None] = []
        for k, r in zip(keys, requests):
            if k in records:
                rec, cached = records[k]
                value, ok = parse_rating(rec["reply"], self.parse)
                out.append(Rating(r.factor, value, ok, rec["reply"], cached))
            else:
                out.append(None)
        got = [x for x in out if x is not None]
        with self._lock:
            self._stats.rated += len(got)
            self._stats.malformed += sum(1 for x in got if not x.ok)
        n_bad = sum(1 for x in out if x is None)
        if n_bad:
            n_unique_missing = sum(1 for k in missing if k not in call.results)
            n_failed = len(call.failures)
            n_skipped = max(n_unique_missing - n_failed, 0)
            where = f"; finished ratings are saved in the cache {self.cache.path}" if self.cache is not None else \
                "; no cache_dir was given, so nothing was saved to disk"
            first = call.failures[0] if call.failures else "no reply"
            msg = (f"judge {self._endpoint()} could not rate all requests: {len(got)} of {len(requests)} rated "
                   f"({n_hits} from the cache), {n_failed} failed, {n_skipped} abandoned after the first failure"
                   f"{where}; rerun to resume. First error: {first}")
            raise JudgeError(self._scrub(msg), endpoint=self._endpoint(), n_total=len(requests),
                             n_succeeded=len(got), n_failed=n_failed, n_skipped=n_skipped, ratings=out)
        return out  # type: ignore[return-value]

    # --- for subclasses
    def _endpoint(self) -> str:
        raise NotImplementedError

    def _scrub(self, text: str) -> str:
        return text

    def _rate_missing(self, items: list[tuple[str, RatingRequest, list[dict]]], call: "_Call") -> None:
        raise NotImplementedError

    def _lookup(self, key: str) -> dict | None:
        return self.cache.get(key) if self.cache is not None else None

    def _store(self, call: "_Call", key: str, request: RatingRequest, reply: str, usage: dict | None) -> None:
        rec = {"reply": reply, "factor": request.factor, "model": self.model, "usage": usage or {}}
        if self.cache is not None:
            self.cache.put(key, rec)
        with self._lock:
            call.results[key] = rec
            if usage:
                self._stats.prompt_tokens += int(usage.get("prompt_tokens") or 0)
                self._stats.completion_tokens += int(usage.get("completion_tokens") or 0)

    def _fail(self, call: "_Call", message: str) -> None:
        with self._lock:
            self._stats.failures += 1
            call.failures.append(self._scrub(message))
            call.stop.set()


# --------------------------------------------------------------------------------------------------------------------
# OpenAI-compatible HTTP judge

class _RetryableError(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class _FatalError(Exception):
    pass


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(when.timestamp() - time.time(), 0.0)


_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class OpenAIJudge(_CachingJudge):
    """A judge behind an OpenAI-compatible ``POST {base_url}/chat/completions`` endpoint.

    Arguments default to the environment: ``base_url`` <- ``PROSV_JUDGE_BASE_URL`` (else ``https://api.openai.com/v1``),
    ``model`` <- ``PROSV_JUDGE_MODEL`` (else ``gpt-4o-mini``, AxBench's judge), ``api_key`` <- ``PROSV_JUDGE_API_KEY``
    or ``OPENAI_API_KEY`` (no ``Authorization`` header when none is set, e.g. for a local server).

    Requests run ``max_concurrency`` at a time.  A 429, a 5xx, a timeout or a connection error is retried up to
    ``max_retries`` times, waiting ``Retry-After`` when the server sends one (capped at ``max_retry_after``) and
    otherwise ``min(backoff_max, backoff_base * 2**attempt)`` with jitter (uniform in [50%, 100%] of it).  Any other 4xx
    is not retried.  After a request fails for good no new requests are started; those in flight finish; every reply
    obtained is already in the cache; then :class:`JudgeError` is raised.
    """

    def __init__(self, model: str | None = None, base_url: str | None = None, api_key: str | None = None, *,
                 cache_dir: str | os.PathLike | None = None, templates: RubricTemplates | None = None,
                 system_prompt: str | None = None, max_concurrency: int = 8, max_retries: int = 6,
                 backoff_base: float = 1.0, backoff_max: float = 60.0, max_retry_after: float = 300.0,
                 timeout: float = 60.0, max_tokens: int = DEFAULT_MAX_TOKENS,
                 temperature: float = DEFAULT_TEMPERATURE, parse: str = "paper", jitter_seed: int | None = None):
        model = model or os.environ.get(ENV_MODEL) or DEFAULT_MODEL
        super().__init__(model, templates, cache_dir, system_prompt, parse)
        base_url = (base_url or os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL).rstrip("/")
        parsed = urllib.parse.urlsplit(base_url)
        if "@" in parsed.netloc:
            raise ValueError("judge base_url must not contain credentials; pass api_key or set "
                             f"{ENV_API_KEY} instead")
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"judge base_url must be an http(s) URL, got {base_url!r}")
        self.base_url = base_url
        self.url = base_url + "/chat/completions"
        key = api_key or os.environ.get(ENV_API_KEY) or os.environ.get(ENV_OPENAI_API_KEY) or None
        self._api_key = _Secret(key) if key else None
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.max_concurrency = int(max_concurrency)
        self.max_retries = int(max_retries)
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.max_retry_after = float(max_retry_after)
        self.timeout = float(timeout)
        if not (isinstance(max_tokens, int) and max_tokens >= 1):
            raise ValueError(f"judge max_tokens must be a positive integer, got {max_tokens!r}")
        if not (0.0 <= float(temperature) <= 2.0):
            raise ValueError(f"judge temperature must be in [0, 2], got {temperature!r}")
        self.max_tokens = int(max_tokens)
        self.temperature = float(temperature)
        self._rng = random.Random(jitter_seed)
        # wait(stop_event, seconds) -> True when stopped early; replaceable in tests to record the backoff delays
        self._wait: Callable[[threading.Event, float], bool] = lambda stop, seconds: stop.wait(seconds)
        handlers = [urllib.request.ProxyHandler({})] if parsed.hostname in _LOOPBACK else []
        self._opener = urllib.request.build_opener(*handlers)

    def __repr__(self) -> str:
        return (f"OpenAIJudge(model={self.model!r}, base_url={self.base_url!r}, "
                f"api_key={'<set>' if self._api_key else '<none>'}, max_concurrency={self.max_concurrency}, "
                f"cache_dir={self.cache.path if self.cache is not None else None!r})")

    __str__ = __repr__

    def config(self) -> dict:
        """Settings safe to save next to results (no key; ``api_key_set`` tells whether one was used)."""
        return {"kind": "openai", "model": self.model, "base_url": self.base_url, "api_key_set": bool(self._api_key),
                **self.sampling(), "timeout": self.timeout,
                "max_concurrency": self.max_concurrency, "max_retries": self.max_retries,
                "backoff_base": self.backoff_base, "backoff_max": self.backoff_max, **self._rubric_config(),
                "cache_dir": self.cache.path if self.cache is not None else None}

    def sampling(self) -> dict:
        return {"temperature": self.temperature, "max_tokens": self.max_tokens}

    def _endpoint(self) -> str:
        return self.url

    def _scrub(self, text: str) -> str:
        if self._api_key and self._api_key.reveal():
            text = text.replace(self._api_key.reveal(), "***")
        return text

    # --- HTTP
    def _post_once(self, messages: list[dict]) -> tuple[str, dict]:
        body = json.dumps({"model": self.model, "messages": messages, "temperature": self.temperature,
                           "max_tokens": self.max_tokens}).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = "Bearer " + self._api_key.reveal()
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            try:
                detail = e.read(500).decode("utf-8", "replace").strip()
            except Exception:  # noqa: BLE001 - best effort
                detail = ""
            retry_after = _parse_retry_after(e.headers.get("Retry-After") if e.headers else None)
            msg = self._scrub(f"HTTP {e.code} {e.reason}" + (f": {detail[:300]}" if detail else ""))
            e.close()
            if e.code == 429 or e.code >= 500:
                raise _RetryableError(msg, retry_after) from None
            raise _FatalError(msg) from None
        except (TimeoutError, socket.timeout):
            raise _RetryableError(f"timed out after {self.timeout:g} s") from None
        except urllib.error.URLError as e:
            raise _RetryableError(self._scrub(f"connection error: {e.reason}")) from None
        except (ConnectionError, http.client.HTTPException, OSError) as e:
            raise _RetryableError(self._scrub(f"connection error: {type(e).__name__}: {e}")) from None
        try:
            data = json.loads(raw)
            reply = data["choices"][0]["message"].get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise _RetryableError(f"unreadable response body ({len(raw)} bytes)") from None
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        return str(reply), usage

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_retry_after)
        d = min(self.backoff_max, self.backoff_base * (2 ** attempt))
        with self._lock:
            return d * (0.5 + 0.5 * self._rng.random())

    def _rate_one(self, call: "_Call", key: str, request: RatingRequest, messages: list[dict]) -> None:
        stop = call.stop
        attempt = 0
        while True:
            if stop.is_set():
                return  # skipped: another request failed for good
            with self._lock:
                self._stats.requests_sent += 1
            try:
                reply, usage = self._post_once(messages)
            except _FatalError as e:
                self._fail(call, f"{e} (not retried)")
                logger.warning("judge request failed (not retried): %s", e)
                return
            except _RetryableError as e:
                if attempt >= self.max_retries:
                    self._fail(call, f"{e} (gave up after {attempt + 1} attempts)")
                    logger.warning("judge request failed after %d attempts: %s", attempt + 1, e)
                    return
                delay = self._backoff(attempt, e.retry_after)
                logger.info("judge request failed (%s); retry %d/%d in %.2f s", e, attempt + 1, self.max_retries,
                            delay)
                with self._lock:
                    self._stats.retries += 1
                attempt += 1
                if self._wait(stop, delay):
                    return
                continue
            self._store(call, key, request, reply, usage)
            return

    def _rate_missing(self, items, call):
        if self.max_concurrency == 1 or len(items) == 1:
            for key, req, msgs in items:
                self._rate_one(call, key, req, msgs)
            return
        with cf.ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(items)),
                                   thread_name_prefix="prosv-judge") as pool:
            futures = [pool.submit(self._rate_one, call, key, req, msgs) for key, req, msgs in items]
            try:
                for fut in cf.as_completed(futures):
                    fut.result()
            except BaseException:
                call.stop.set()
                for fut in futures:
                    fut.cancel()
                raise


# --------------------------------------------------------------------------------------------------------------------
# local judge

def plain_chat_format(messages: list[dict[str, str]]) -> str:
    """Default prompt for :class:`LocalJudge`: the message contents joined by blank lines (system first).  Pass a
    tokenizer's chat template instead for an instruct model, e.g.
    ``lambda m: tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True)``."""
    return "\n\n".join(m["content"] for m in messages)


class LocalJudge(_CachingJudge):
    """A judge backed by any ``generate(prompts: list[str]) -> list[str]`` callable (e.g. prosv-jax generation with an
    instruct model, greedy).  The rubric prompt becomes chat messages, turned into a prompt string by ``chat_format``.

    ``model_name`` identifies the model in the cache key (use the checkpoint path or hub id), and ``sampling`` the
    settings of ``generate`` that change its replies (e.g. ``{"max_new_tokens": 128, "temperature": 0.0}``; in the key
    and the recorded config).  Prompts are sent in
    batches of ``batch_size`` (all at once when None); every batch's replies are cached before the next one starts, so
    an exception in ``generate`` loses no finished batch (it is reported as :class:`JudgeError`).
    """

    def __init__(self, generate: Callable[[list[str]], Sequence[str]], model_name: str, *,
                 cache_dir: str | os.PathLike | None = None, templates: RubricTemplates | None = None,
                 system_prompt: str | None = None,
                 chat_format: Callable[[list[dict[str, str]]], str] = plain_chat_format,
                 batch_size: int | None = None, sampling: dict | None = None, parse: str = "paper"):
        if not callable(generate):
            raise TypeError("generate must be callable: generate(prompts: list[str]) -> list[str]")
        if not model_name:
            raise ValueError("model_name is required (it keys the cache)")
        super().__init__(str(model_name), templates, cache_dir, system_prompt, parse)
        self._sampling = dict(sampling or {})
        self.generate = generate
        self.chat_format = chat_format
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size

    def __repr__(self) -> str:
        return (f"LocalJudge(model_name={self.model!r}, batch_size={self.batch_size}, "
                f"cache_dir={self.cache.path if self.cache is not None else None!r})")

    def config(self) -> dict:
        return {"kind": "local", "model": self.model, **self.sampling(), **self._rubric_config(),
                "batch_size": self.batch_size, "cache_dir": self.cache.path if self.cache is not None else None}

    def sampling(self) -> dict:
        return dict(self._sampling)

    def _endpoint(self) -> str:
        return f"local:{self.model}"

    def _rate_missing(self, items, call):
        bs = self.batch_size or len(items)
        for start in range(0, len(items), bs):
            batch = items[start:start + bs]
            prompts = [self.chat_format(msgs) for _k, _r, msgs in batch]
            with self._lock:
                self._stats.requests_sent += len(prompts)
            try:
                replies = list(self.generate(prompts))
                if len(replies) != len(prompts):
                    raise ValueError(f"generate returned {len(replies)} replies for {len(prompts)} prompts")
            except Exception as e:  # noqa: BLE001 - reported as JudgeError with the partial result
                for _ in batch:
                    self._fail(call, f"{type(e).__name__}: {e}")
                logger.warning("local judge generation failed: %s: %s", type(e).__name__, e)
                return
            for (key, req, _msgs), reply in zip(batch, replies):
                self._store(call, key, req, str(reply), None)
