"""Judges against a real chat-completions server on 127.0.0.1 (tests/judge_server.py), rubric parsing and templates."""

import json
import logging
import os
import pickle
import traceback

import pytest

from judge_server import JudgeServer, expected_rating, judge_reply
from prosv_jax.evaluation import (DEFAULT_TEMPLATES, FACTORS, Judge, JudgeError, LocalJudge, OpenAIJudge,
                                  RatingRequest, RubricTemplates, answer_requests, cache_key, load_rubric_templates,
                                  parse_rating, rate_answers, render_template, score_concepts)

SECRET = "sk-test-SECRET-7f3a9c1e5b"

# (concept, instruction, answer) -> hand-computed (concept, instruction, fluency) ratings (rules in judge_server.py)
ITEMS = [
    ("golf", "Describe a sunny day.", "A sunny day is perfect for golf with friends.", (2, 2, 2)),
    ("golf", "Give me a cake recipe.", "Mix flour and sugar, then drift into talk of golf.", (2, 1, 2)),
    ("golf", "Name three rivers.", "The Nile, the Amazon, the Danube.", (0, 2, 2)),
    ("Paris", "What is 2+2?", "offtopic: I adore paris in spring", (2, 0, 2)),
    ("Paris", "Write a haiku.", "clunky words of Paris light", (2, 2, 1)),
    ("Paris", "Explain tides.", "garbled garbled Paris paris", (2, 2, 0)),
]


def all_requests(items=ITEMS):
    return [r for c, i, a, _ in items for r in answer_requests(c, i, a)]


def expected_values(items=ITEMS):
    return [v for *_, exp in items for v in exp]


@pytest.fixture
def make_server():
    servers = []

    def make(**kw):
        kw.setdefault("lifetime", 60)
        s = JudgeServer(**kw).start()
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.stop()


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    for k in ("PROSV_JUDGE_BASE_URL", "PROSV_JUDGE_MODEL", "PROSV_JUDGE_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(k, raising=False)


def fast_judge(server, tmp_path=None, **kw):
    kw.setdefault("backoff_base", 0.01)
    kw.setdefault("timeout", 5.0)
    kw.setdefault("max_concurrency", 4)
    return OpenAIJudge(model="judge-test", base_url=server.base_url,
                       cache_dir=None if tmp_path is None else tmp_path / "cache", **kw)


def cache_files(root):
    return [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]


# --------------------------------------------------------------------------------------------------------------------
# rating parsing and rubric templates

# (reply, paper parse, AxBench parse): each worked out by hand from method.md section 4.
PARSES = [
    ("Looks good.\nRating: [[2]]", (2, True), (2, True)),
    ("first Rating: [[0]] then on reflection\nRating: [[1]]", (1, True), (1, True)),  # the last one
    ("Rating: [[ 1 ]]", (1, True), (1, True)),
    ("Rating: 2", (0, False), (2, True)),  # AxBench reads a bare number
    ("Rating: [[1.5]]", (0, False), (1.5, True)),  # AxBench accepts any float in [0, 2]
    ('Rating: "1."', (0, False), (1, True)),  # quotes and a trailing period stripped
    ("Rating: **2**", (0, False), (2, True)),
    ("Rating: [[3]]", (0, False), (0, False)),  # out of range
    ("Rating: [[2]] because it is clear", (2, True), (0, False)),  # AxBench reads the whole first line
    ("rating: [[1]]", (0, False), (0, False)),  # both are case-sensitive
    ("the answer deserves [[2]]", (0, False), (0, False)),  # no "Rating:"
    ("Rating: [[2]]\nRating: none", (2, True), (0, False)),  # AxBench only looks after the last "Rating:"
    ("I cannot decide.", (0, False), (0, False)),
    ("", (0, False), (0, False)),
    (None, (0, False), (0, False)),
]


@pytest.mark.parametrize("text,paper,axbench", PARSES)
def test_parse_rating(text, paper, axbench):
    assert parse_rating(text) == paper  # the paper's parse is the default
    assert parse_rating(text, "paper") == paper
    assert parse_rating(text, "axbench") == axbench


def test_parse_rating_modes_are_named():
    with pytest.raises(ValueError, match="unknown rating parse 'lenient'.*paper.*axbench"):
        parse_rating("Rating: [[1]]", "lenient")


def test_default_rubric_prompts():
    for factor in FACTORS:
        text = DEFAULT_TEMPLATES.template(factor)
        assert "Rating: [[N]]" in text and "0, 1 or 2" in text
    p = DEFAULT_TEMPLATES.render("concept", concept="golf", instruction="XYZINSTR", answer="I like {concept} {x}")
    assert "Concept: golf" in p and "I like {concept} {x}" in p  # single-pass, other braces kept
    assert "XYZINSTR" not in p
    p = DEFAULT_TEMPLATES.render("instruction", concept="golf", instruction="Say hi", answer="hi")
    assert "Say hi" in p and "golf" not in p
    with pytest.raises(ValueError, match="unknown rubric factor"):
        RatingRequest("style", "c", "i", "a")


def test_load_official_template_file(tmp_path):
    path = tmp_path / "axbench_templates.json"
    tpl = {"concept": "Is {concept} in: {answer}? JSON like {\"a\": 1}. Rating: [[score]]",
           "instruction": "Does {answer} follow {instruction}? Rating: [[score]]",
           "fluency": "Is {answer} fluent? Rating: [[score]]", "extra": "ignored"}
    path.write_text(json.dumps(tpl))
    t = load_rubric_templates(path)
    assert t.source == str(path)
    assert t.render("concept", concept="golf", instruction="", answer="x") == \
        'Is golf in: x? JSON like {"a": 1}. Rating: [[score]]'
    req = RatingRequest("concept", "golf", "i", "x")
    assert cache_key(t.concept, req, "m") != cache_key(DEFAULT_TEMPLATES.concept, req, "m")

    # a local judge uses them verbatim
    seen = []
    judge = LocalJudge(lambda ps: seen.extend(ps) or ["Rating: [[1]]"] * len(ps), "fake", templates=t)
    assert [r.value for r in judge.rate([req])] == [1]
    assert seen == ['Is golf in: x? JSON like {"a": 1}. Rating: [[score]]']

    with pytest.raises(FileNotFoundError, match="not found"):
        load_rubric_templates(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_rubric_templates(bad)
    bad.write_text(json.dumps({"concept": tpl["concept"], "instruction": tpl["instruction"]}))
    with pytest.raises(ValueError, match=r"lacks key\(s\) \['fluency'\]"):
        load_rubric_templates(bad)
    bad.write_text(json.dumps({**tpl, "instruction": "Does {answer} follow?"}))
    with pytest.raises(ValueError, match=r"'instruction' lacks placeholder\(s\) \{instruction\}"):
        load_rubric_templates(bad)
    bad.write_text(json.dumps(["a", "b"]))
    with pytest.raises(ValueError, match="JSON object"):
        load_rubric_templates(bad)
    assert render_template("{answer}{concept}", concept="{answer}", instruction="", answer="A") == "A{answer}"


# --------------------------------------------------------------------------------------------------------------------
# OpenAI-compatible judge against the local server

def test_ratings_usage_and_request_format(make_server, tmp_path):
    server = make_server()
    judge = fast_judge(server, tmp_path, max_tokens=77)
    assert isinstance(judge, Judge)
    ratings = judge.rate(all_requests())
    assert [r.value for r in ratings] == expected_values()
    assert [r.factor for r in ratings] == list(FACTORS) * len(ITEMS)
    assert all(r.ok and not r.cached for r in ratings)
    assert [expected_rating(r.factor, r.concept, r.instruction, r.answer) for r in all_requests()] == \
        expected_values()
    st = judge.stats
    n = 3 * len(ITEMS)
    assert (st.requests_sent, st.retries, st.cache_hits, st.rated, st.malformed, st.failures) == (n, 0, 0, n, 0, 0)
    assert server.request_count == n
    assert st.prompt_tokens == server.prompt_tokens > 0
    assert st.completion_tokens == server.completion_tokens == 4 * n  # "<factor> judged.\nRating: [[N]]"
    body = server.bodies[0]
    assert body["model"] == "judge-test" and body["temperature"] == 0.01 and body["max_tokens"] == 77
    assert [m["role"] for m in body["messages"]] == ["user"]
    assert server.auth_headers == set()  # no key configured -> no Authorization header

    # grouped per answer, then scored
    per_answer = rate_answers(judge, [(c, i, a) for c, i, a, _ in ITEMS])
    assert [tuple(d[f].value for f in FACTORS) for d in per_answer] == [exp for *_, exp in ITEMS]
    scores = score_concepts({"golf": per_answer[:3], "Paris": per_answer[3:]})
    assert scores.per_answer["golf"] == [2.0, 1.5, 0.0]
    assert scores.per_answer["Paris"] == [0.0, pytest.approx(1.5), 0.0]
    assert scores.overall == pytest.approx((3.5 / 3 + 1.5 / 3) / 2)


def test_retries_on_429_5xx_and_timeouts(make_server, tmp_path):
    # a "slow" request is never answered while the server runs: the client's timeout must end it
    server = make_server(script=[429, 500, "slow", 503, 429, 502, "slow"], slow_seconds=60.0)
    judge = fast_judge(server, tmp_path, timeout=2.0, max_concurrency=3)
    ratings = judge.rate(all_requests())
    assert [r.value for r in ratings] == expected_values()
    n = 3 * len(ITEMS)
    st = judge.stats
    assert st.retries == 7 and st.failures == 0
    assert st.requests_sent == server.request_count == n + 7
    assert server.statuses.count("ok") == n
    assert st.prompt_tokens == server.prompt_tokens  # failed attempts report no usage


def test_backoff_is_exponential_and_respects_retry_after(make_server):
    server = make_server(script=[500, 500, 500])
    judge = fast_judge(server, max_concurrency=1, backoff_base=0.01)
    waits = []
    judge._wait = lambda stop, d: waits.append(d) or False
    assert judge.rate(all_requests()[:1])[0].value == 2
    assert len(waits) == 3
    for k, d in enumerate(waits):  # base * 2**k, jittered into [50%, 100%]
        assert 0.005 * 2 ** k <= d <= 0.01 * 2 ** k

    server = make_server(script=[429, 429], retry_after="7")
    judge = fast_judge(server, max_concurrency=1, backoff_base=0.01)
    waits = []
    judge._wait = lambda stop, d: waits.append(d) or False
    assert judge.rate(all_requests()[:1])[0].value == 2
    assert waits == [7.0, 7.0]


def test_other_4xx_not_retried(make_server, tmp_path):
    server = make_server(refuse=400)
    judge = fast_judge(server, tmp_path, max_concurrency=1)
    with pytest.raises(JudgeError, match="HTTP 400.*not retried") as ei:
        judge.rate(all_requests()[:3])
    assert server.request_count == 1 and judge.stats.retries == 0
    assert ei.value.n_succeeded == 0 and ei.value.n_failed == 1 and ei.value.n_skipped == 2


def test_cache_makes_rerun_free(make_server, tmp_path):
    server = make_server()
    reqs = all_requests()
    first = fast_judge(server, tmp_path).rate(reqs)
    sent = server.request_count
    assert sent == len(reqs)
    assert len(cache_files(tmp_path / "cache")) == len(reqs)

    judge = fast_judge(server, tmp_path)  # a fresh judge, as in a rerun of the stage
    again = judge.rate(reqs)
    assert server.request_count == sent  # zero requests
    assert [r.value for r in again] == [r.value for r in first]
    assert all(r.cached for r in again)
    assert judge.stats.cache_hits == len(reqs) and judge.stats.requests_sent == 0
    assert judge.stats.prompt_tokens == 0

    # the key covers the model and the template text
    other_model = OpenAIJudge(model="another-judge", base_url=server.base_url, cache_dir=tmp_path / "cache")
    other_model.rate(reqs[:1])
    assert server.request_count == sent + 1
    tpl = RubricTemplates(concept=DEFAULT_TEMPLATES.concept + "\nBe strict.")
    fast_judge(server, tmp_path, templates=tpl).rate(reqs[:1])  # reqs[0] is a concept request
    assert server.request_count == sent + 2

    # ... and the sampling settings (m11): another temperature or max_tokens asks again
    fast_judge(server, tmp_path, temperature=0.7).rate(reqs[:1])
    assert server.request_count == sent + 3
    fast_judge(server, tmp_path, max_tokens=100).rate(reqs[:1])
    assert server.request_count == sent + 4
    # ... but not the parse, which is applied to the cached reply
    assert fast_judge(server, tmp_path, parse="axbench").rate(reqs[:1])[0].cached
    assert server.request_count == sent + 4

    # duplicates within one call are sent once
    server2 = make_server()
    fast_judge(server2).rate(reqs[:2] * 3)
    assert server2.request_count == 2


def test_concurrency_is_bounded(make_server):
    # the server holds the first 3 requests until 3 are in flight together (so 3 is reached whatever the
    # scheduling), and every reply for 0.05 s (so a 4th concurrent request would be seen)
    server = make_server(delay=0.05, gather=3)
    reqs = [RatingRequest("fluency", "c", "i", f"answer number {k}") for k in range(18)]
    judge = fast_judge(server, max_concurrency=3)
    assert all(r.value == 2 for r in judge.rate(reqs))
    assert server.request_count == 18
    assert server.max_in_flight == 3


def test_api_key_never_leaks(make_server, tmp_path, monkeypatch, caplog, capsys):
    monkeypatch.setenv("PROSV_JUDGE_API_KEY", SECRET)
    server = make_server(script=[429, 500], refuse=401, refuse_after=4, echo_auth_on_error=True)
    caplog.set_level(logging.DEBUG)
    judge = OpenAIJudge(model="judge-test", base_url=server.base_url, cache_dir=tmp_path / "cache",
                        max_concurrency=1, backoff_base=0.001)
    with pytest.raises(JudgeError) as ei:
        judge.rate(all_requests())
    assert server.auth_headers == {"Bearer " + SECRET}  # the key was used ...
    assert "invalid credentials" in str(ei.value) and "***" in str(ei.value)  # ... the server echoed it, scrubbed
    texts = [repr(judge), str(judge), json.dumps(judge.config()), str(ei.value), repr(ei.value),
             "".join(traceback.format_exception(ei.value)), caplog.text, *capsys.readouterr(),
             repr(vars(judge)), repr(judge.stats)]
    texts += [open(f, encoding="utf-8").read() for f in cache_files(tmp_path / "cache")]
    assert len(cache_files(tmp_path / "cache")) == 4
    for t in texts:
        assert SECRET not in t
    assert judge.config()["api_key_set"] is True and "api_key=<set>" in repr(judge)
    with pytest.raises(TypeError):
        pickle.dumps(judge)

    # OPENAI_API_KEY is the fallback
    monkeypatch.delenv("PROSV_JUDGE_API_KEY")
    monkeypatch.setenv("OPENAI_API_KEY", SECRET + "2")
    server2 = make_server()
    OpenAIJudge(model="m", base_url=server2.base_url).rate(all_requests()[:1])
    assert server2.auth_headers == {"Bearer " + SECRET + "2"}


def test_settings_from_environment(make_server, monkeypatch):
    server = make_server()
    monkeypatch.setenv("PROSV_JUDGE_BASE_URL", server.base_url + "/")
    monkeypatch.setenv("PROSV_JUDGE_MODEL", "env-model")
    judge = OpenAIJudge()
    assert judge.url == server.base_url + "/chat/completions" and judge.model == "env-model"
    assert "api_key=<none>" in repr(judge)
    judge.rate(all_requests()[:1])
    assert server.bodies[0]["model"] == "env-model"
    # the paper code's judge settings by default (M2), recorded with the rubric and the parse
    assert (server.bodies[0]["temperature"], server.bodies[0]["max_tokens"]) == (0.01, 500)
    config = judge.config()
    assert (config["temperature"], config["max_tokens"], config["parse"]) == (0.01, 500, "paper")
    assert config["templates"] == "prosv-jax default" and len(config["templates_sha256"]) == 64
    other = OpenAIJudge(templates=RubricTemplates(fluency=DEFAULT_TEMPLATES.fluency + " Be strict."))
    assert other.config()["templates_sha256"] != config["templates_sha256"]
    for bad in (dict(temperature=-1.0), dict(max_tokens=0), dict(parse="loose")):
        with pytest.raises(ValueError, match=next(iter(bad))):
            OpenAIJudge(**bad)
    with pytest.raises(ValueError, match="http"):
        OpenAIJudge(base_url="ftp://example")
    with pytest.raises(ValueError, match="credentials") as ei:
        OpenAIJudge(base_url=f"http://user:{SECRET}@127.0.0.1:1/v1")
    assert SECRET not in str(ei.value)


def test_refusing_endpoint_keeps_finished_work(make_server, tmp_path):
    reqs = all_requests()
    n = len(reqs)
    # 5 replies, then 503 for ever (retryable: retried, then given up)
    server = make_server(refuse=503, refuse_after=5)
    judge = fast_judge(server, tmp_path, max_concurrency=2, max_retries=2)
    with pytest.raises(JudgeError) as ei:
        judge.rate(reqs)
    err = ei.value
    msg = str(err)
    assert server.base_url + "/chat/completions" in msg
    assert f"5 of {n} rated" in msg and "HTTP 503" in msg and "gave up after 3 attempts" in msg
    assert str(tmp_path / "cache") in msg
    assert err.n_succeeded == 5 and err.n_failed >= 1 and err.n_succeeded + err.n_failed + err.n_skipped == n
    assert sum(r is not None for r in err.ratings) == 5
    assert len(cache_files(tmp_path / "cache")) == 5
    for r, q in zip(err.ratings, reqs):
        if r is not None:
            assert r.value == expected_rating(q.factor, q.concept, q.instruction, q.answer)

    # a refusing-everything endpoint (401): nothing rated, clear error
    dead = make_server(refuse=401)
    with pytest.raises(JudgeError, match=rf"0 of {n} rated.*HTTP 401"):
        fast_judge(dead, tmp_path / "other").rate(reqs)

    # resume against a healthy endpoint: only the missing ones are sent
    healthy = make_server()
    judge = fast_judge(healthy, tmp_path)
    assert [r.value for r in judge.rate(reqs)] == expected_values()
    assert healthy.request_count == n - 5 and judge.stats.cache_hits == 5


def test_connection_refused_is_retried_then_reported(tmp_path):
    server = JudgeServer().start()
    url = server.base_url
    server.stop()  # nothing listens on that port any more
    judge = OpenAIJudge(model="m", base_url=url, cache_dir=tmp_path, max_retries=2, backoff_base=0.001,
                        max_concurrency=1)
    with pytest.raises(JudgeError, match="connection error") as ei:
        judge.rate(all_requests()[:2])
    assert judge.stats.retries == 2 and judge.stats.requests_sent == 3
    assert ei.value.n_skipped == 1


def test_malformed_replies_count_as_default(make_server, tmp_path):
    items = ITEMS[:2] + [("golf", "Tell a joke.", "MALFORMED golf joke", (0, 0, 0))]
    server = make_server()
    judge = fast_judge(server, tmp_path)
    ratings = judge.rate(all_requests(items))
    assert [r.value for r in ratings] == expected_values(items)
    assert [r.ok for r in ratings] == [True] * 6 + [False] * 3
    assert judge.stats.malformed == 3
    assert "will not say" in ratings[-1].reply
    # counted again when served from the cache
    judge2 = fast_judge(server, tmp_path)
    judge2.rate(all_requests(items))
    assert judge2.stats.malformed == 3 and judge2.stats.cache_hits == 9


# --------------------------------------------------------------------------------------------------------------------
# local judge

def test_local_judge_caches_and_keeps_partial_work(tmp_path):
    calls = []

    def generate(prompts):
        calls.append(len(prompts))
        return [judge_reply(p) for p in prompts]

    reqs = all_requests()
    judge = LocalJudge(generate, "tiny-instruct", cache_dir=tmp_path / "c", batch_size=4)
    assert [r.value for r in judge.rate(reqs)] == expected_values()
    assert calls == [4, 4, 4, 4, 2] and judge.stats.requests_sent == len(reqs)
    calls.clear()
    judge2 = LocalJudge(generate, "tiny-instruct", cache_dir=tmp_path / "c")
    assert [r.value for r in judge2.rate(reqs)] == expected_values()
    assert calls == [] and judge2.stats.cache_hits == len(reqs)

    # a chat template turns the rubric prompt into a chat prompt
    seen = []
    fmt = lambda msgs: "".join(f"<{m['role']}>\n{m['content']}\n</{m['role']}>" for m in msgs)  # noqa: E731
    j = LocalJudge(lambda ps: seen.extend(ps) or [judge_reply(p) for p in ps], "chat", chat_format=fmt,
                   system_prompt="You are a strict grader.")
    assert j.rate(reqs[:1])[0].value == 2
    assert seen[0].startswith("<system>\nYou are a strict grader.\n</system><user>\nCriterion: concept")

    # generation fails on the second batch: the first batch is cached, the error says so
    state = {"n": 0}

    def flaky(prompts):
        state["n"] += 1
        if state["n"] == 2:
            raise RuntimeError("out of memory")
        return [judge_reply(p) for p in prompts]

    judge3 = LocalJudge(flaky, "flaky", cache_dir=tmp_path / "f", batch_size=5)
    with pytest.raises(JudgeError, match=r"local:flaky.*5 of 18 rated.*RuntimeError: out of memory") as ei:
        judge3.rate(reqs)
    assert ei.value.n_failed == 5 and ei.value.n_skipped == 8
    assert len(cache_files(tmp_path / "f")) == 5
    assert [r.value for r in LocalJudge(flaky, "flaky", cache_dir=tmp_path / "f").rate(reqs)] == expected_values()

    with pytest.raises(JudgeError, match="returned 1 replies for 2 prompts"):
        LocalJudge(lambda ps: ["Rating: [[1]]"], "short").rate(reqs[:2])


def test_local_judge_with_a_prosv_jax_model(tmp_path, monkeypatch):
    """A prosv-jax model answers the rubric prompts; replies are parsed (or counted malformed) and cached."""
    from prosv_jax.evaluation.judges import LocalJudge, rate_answers
    from prosv_jax.evaluation.rating import local_generate_fn

    monkeypatch.setenv("PROSV_JAX_CACHE", str(tmp_path / "models"))
    generate, path = local_generate_fn("builtin", max_new_tokens=6)
    calls = []

    def counting(prompts):
        calls.append(len(prompts))
        return generate(prompts)

    items = [("cats", "Tell me about pets.", "Cats are great."), ("rain", "Describe the weather.", "It is sunny.")]
    judge = LocalJudge(counting, path, cache_dir=str(tmp_path / "cache"))
    first = rate_answers(judge, items)
    assert sum(calls) == 6 and len(first) == 2
    # m15: each rating is the parse of the model's own greedy reply to the rendered rubric prompt
    requests = [q for c, i, a in items for q in answer_requests(c, i, a)]
    replies = generate([judge.chat_format(judge.messages(q)) for q in requests])
    got = [r for answer in first for r in answer.values()]
    assert [r.reply for r in got] == replies
    assert [(r.value, r.ok) for r in got] == [parse_rating(reply) for reply in replies]
    assert judge.stats.malformed == sum(not r.ok for answer in first for r in answer.values())
    again = rate_answers(LocalJudge(counting, path, cache_dir=str(tmp_path / "cache")), items)
    assert sum(calls) == 6  # the rerun is served from the cache
    assert [[r.value for r in a.values()] for a in again] == [[r.value for r in a.values()] for a in first]


# --------------------------------------------------------------------------------------------------------------------
# the judge stage: one judge per ratings folder

def _generations(folder, n_concepts=2):
    """A minimal `axbench generate` folder: 2 answers per concept."""
    folder.mkdir(parents=True)
    (folder / "generate.json").write_text(json.dumps({"method": "m", "setting": "s"}))
    for cid in range(n_concepts):
        rows = [{"method": "m", "setting": "s", "concept_id": cid, "concept": "golf", "instruction_pos": k,
                 "instruction": "Say hi.", "answer": "golf" if k else "garbled"} for k in range(2)]
        (folder / f"c{cid}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_a_ratings_folder_holds_one_judge(tmp_path):
    """M12: a rerun with another judge, other judge settings, or other generations is refused before anything is
    written; the same judge resumes; operational settings (batch size, cache) may change."""
    from prosv_jax.evaluation.rating import run_judge

    gen = _generations(tmp_path / "gen")
    reply = lambda ps: [judge_reply(p) for p in ps]  # noqa: E731
    judge = lambda name="j", **kw: LocalJudge(reply, name, cache_dir=tmp_path / "cache", **kw)  # noqa: E731
    out = tmp_path / "ratings"
    assert run_judge(str(gen), judge(), str(out), log=lambda *_: None)["written"] == [0, 1]
    first = (out / "c0.jsonl").read_text()
    assert json.loads((out / "judge.json").read_text())["judge"]["parse"] == "paper"
    for other, changed in ((judge("another-model"), "model"), (judge(parse="axbench"), "parse"),
                           (judge(sampling={"max_new_tokens": 9}), "max_new_tokens"),
                           (judge(templates=RubricTemplates(fluency=DEFAULT_TEMPLATES.fluency + " Strict.")),
                            "templates_sha256")):
        with pytest.raises(ValueError, match=f"rated by another judge.*{changed}.*new --out"):
            run_judge(str(gen), other, str(out), log=lambda *_: None)
    assert (out / "c0.jsonl").read_text() == first
    assert json.loads((out / "judge.json").read_text())["judge"]["model"] == "j"
    with pytest.raises(ValueError, match="holds ratings of .*gen.*new --out"):
        run_judge(str(_generations(tmp_path / "gen2")), judge(), str(out), log=lambda *_: None)
    # the same judge (another batch size and cache) resumes
    resumed = LocalJudge(reply, "j", cache_dir=tmp_path / "cache2", batch_size=2)
    assert run_judge(str(gen), resumed, str(out), log=lambda *_: None)["status"] == "complete"


# --------------------------------------------------------------------------------------------------------------------
# text written by the judge LLM (prompting baseline, suppression rewrites)

def test_llm_texts_take_the_marked_text_only(make_server, tmp_path):
    """M4: the text between the markers is used; a reply without them is an error quoting it, not a prompt."""
    from prosv_jax.evaluation.concept_prompts import (STEERING_PROMPT_PROMPT, SUPPRESSION_REWRITE_PROMPT, llm_texts,
                                                      prompting_prompt)

    server = make_server()
    kw = dict(model="writer", base_url=server.base_url, cache_dir=tmp_path / "c", backoff_base=0.01)
    texts, _ = llm_texts(STEERING_PROMPT_PROMPT, [("golf", ""), ("Paris", "")], **kw)
    assert texts == ["Always mention golf.", "Always mention Paris."]
    texts, _ = llm_texts(SUPPRESSION_REWRITE_PROMPT, [("golf", "Write a poem.")], **kw)
    assert texts == ["Write a poem. Never mention golf."]
    with pytest.raises(ValueError, match=r"did not write the text between .* for 1 of 2 .*'refuse me'.*"
                                         r"I do not recognise this rubric"):
        llm_texts(STEERING_PROMPT_PROMPT, [("golf", ""), ("refuse me", "")], **kw)
    # the reference's prompting format (M3)
    assert prompting_prompt("Talk about golf.", "Write a poem.") == "Talk about golf.\n\nQuestion: Write a poem."
