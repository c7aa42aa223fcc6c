"""A teacher (and the evaluation judge) behind an OpenAI-compatible server (``--teacher
http://HOST:PORT/v1``, ``eval.judge``): llama.cpp's ``llama-server``, vLLM, Ollama, LM Studio.
Standard library only (``http.client``: no proxy settings are read, no redirect is followed).

Privacy first: a URL whose host is not a loopback address is refused before any connection (and
without a DNS query: only ``localhost`` and literal loopback addresses count) unless the user allowed
remote servers: ``allow_remote``, which the caller passes in (the CLI's ``--allow-remote``, the app's).

Structured output: the GBNF grammar goes in llama-server's ``grammar`` field (vLLM: its grammar
fields); other servers get a JSON schema with the same constraints where one can be written (the
questions list, a choice among given texts), else plain text. Callers validate every output as they
do for the in-process teacher. A server that rejects the grammar drops to the schema, then to plain.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass

from valign_edge.errors import UserError

TIMEOUT_S = 600.0
# An error that says the server does not take a grammar (or schema) field, not that the request is bad.
CONSTRAINT_REFUSED = re.compile(r"grammar|schema|response_format|unrecognized|unknown|unsupported|not supported|"
                                r"extra (fields|inputs)", re.I)


def is_server(spec: str) -> bool:
    return spec.strip().lower().startswith(("http://", "https://"))


def is_loopback(host: str) -> bool:
    """Loopback by its text alone (no resolver): localhost, 127.0.0.0/8, ::1 (and IPv4-mapped 127.x)."""
    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


@dataclass(frozen=True)
class Endpoint:
    scheme: str
    host: str
    port: int
    path: str  # the API's base path, usually /v1

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.path}"

    @property
    def root(self) -> str:
        """The server's own paths (llama-server's /tokenize, /props) live beside /v1."""
        return self.path[:-3] if self.path.endswith("/v1") else self.path


def parse(spec: str, role: str = "teacher") -> Endpoint:
    try:
        u = urllib.parse.urlsplit(spec.strip())
        port = u.port
    except ValueError as exc:
        raise UserError(f"{role} {spec!r} is not a valid server URL ({exc})") from None
    if u.scheme.lower() not in ("http", "https") or not u.hostname:
        raise UserError(f"{role} {spec!r} is not a server URL (expected http://HOST:PORT/v1)")
    if u.username or u.password:
        raise UserError(f"{role} URL holds credentials; put the API key in VALIGN_API_KEY instead")
    scheme = u.scheme.lower()
    return Endpoint(scheme, u.hostname, port or (443 if scheme == "https" else 80), u.path.rstrip("/") or "/v1")


def check_privacy(ep: Endpoint, role: str = "teacher", allow_remote: bool = False) -> None:
    """Refuse a server off this machine unless the user allowed remote servers; no connection is made."""
    if not is_loopback(ep.host) and not allow_remote:
        raise UserError(f"the {role} server {ep.host} is not on this machine: the document would leave the machine; "
                        "add --allow-remote to send it there")


def remote_notice(spec: str, role: str = "teacher") -> str | None:
    """The line the CLI prints when the text goes off this machine (None for loopback servers)."""
    if not is_server(spec):
        return None
    ep = parse(spec, role)
    if is_loopback(ep.host):
        return None
    how = "over HTTPS" if ep.scheme == "https" else "UNENCRYPTED (http)"
    what = ("the document's text and the prompts built from it" if role == "teacher" else
            f"the {role}'s prompts (passages of the document, questions and answers)")
    return f"--allow-remote: {what} go to {ep.host} ({ep.url}) {how}"


def server_url(spec: str, role: str = "teacher", allow_remote: bool = False) -> str:
    """The checked endpoint URL of a server model (privacy checked; nothing is contacted); ``models.resolve``
    makes it a ModelRef of kind "server"."""
    if role not in ("teacher", "judge"):
        raise UserError(f"the {role} must be a model on this machine; only the teacher and the judge can be servers")
    ep = parse(spec, role)
    check_privacy(ep, role, allow_remote)
    return ep.url


# --- structured output without a grammar field: a JSON schema with the same constraints -------------
def schema_for(grammar: str) -> tuple[dict, str] | None:
    """(JSON schema, key whose value is the output) for the grammars ``llama_cpp.py`` writes, or None."""
    root = grammar.split("\n", 1)[0]
    if root.startswith('root ::= "{" ws "\\"questions\\""'):
        n = len(re.findall(r"\bq\b", root))
        starters = re.findall(r'"(\w+)"', next((line for line in grammar.splitlines() if line.startswith("q ::=")), ""))
        item = {"type": "string", "minLength": 12, "maxLength": 180,
                "pattern": "^(" + "|".join(starters) + ") [^\"\\n]+\\?$"}
        return ({"type": "object", "properties": {"questions": {"type": "array", "items": item, "minItems": n,
                                                               "maxItems": n}},
                 "required": ["questions"], "additionalProperties": False}, "")
    body = root[len("root ::= "):] if root.startswith("root ::= ") else ""
    literal = r'"((?:[^"\\]|\\.)*)"'
    if body and re.fullmatch(rf"{literal}(\s*\|\s*{literal})*\s*", body):
        options = [re.sub(r"\\(.)", r"\1", m) for m in re.findall(literal, body)]
        return ({"type": "object", "properties": {"answer": {"type": "string", "enum": options}},
                 "required": ["answer"], "additionalProperties": False}, "answer")
    return None


class OpenAITeacher:
    """The ``Teacher`` protocol over ``/v1/chat/completions``; thread-safe (``parallel``): several
    chunks may be in flight at once (``generate.concurrency``)."""

    parallel = True

    def __init__(self, url: str, *, model: str = "", role: str = "teacher", timeout: float = TIMEOUT_S,
                 allow_remote: bool = False):
        self.ep, self.role, self.timeout = parse(url, role), role, timeout
        check_privacy(self.ep, role, allow_remote)  # again here: nothing below runs for a refused host
        self.api_key = os.environ.get("VALIGN_API_KEY") or os.environ.get("OPENAI_API_KEY") or ""
        self._local = threading.local()
        self._lock = threading.Lock()
        self._tokens: dict[str, int] = {}
        self.calls = self.prompt_tokens = self.completion_tokens = 0
        self.seconds = 0.0
        listed = self._json("GET", self.ep.path + "/models").get("data") or []
        names = [m.get("id") for m in listed if isinstance(m, dict) and m.get("id")]
        setting = "teacher.model" if role == "teacher" else f"eval.{role}_model"
        if model:
            self.model = model
        elif len(names) == 1:
            self.model = names[0]
        elif not names:
            raise UserError(f"the {role} server at {self.ep.url} lists no model; name one: --set {setting}=NAME")
        else:
            raise UserError(f"the {role} server at {self.ep.url} serves several models ({', '.join(names[:8])}); "
                            f"pick one: --set {setting}=NAME")
        owner = next((m.get("owned_by", "") for m in listed if isinstance(m, dict) and m.get("id") == self.model), "")
        self.engine = {"llamacpp": "llama.cpp", "vllm": "vllm"}.get(owner, "other")
        self.structured = "grammar" if self.engine in ("llama.cpp", "vllm") else "schema"
        self.tokenizer = self.engine in ("llama.cpp", "vllm")

    # --- HTTP ------------------------------------------------------------------------------------------
    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self.ep.scheme == "https" else http.client.HTTPConnection
            conn = self._local.conn = cls(self.ep.host, self.ep.port, timeout=self.timeout)
        return conn

    def _request(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None if body is None else json.dumps(body).encode("utf-8")
        for attempt in (0, 1):  # a kept-alive connection the server has closed: reconnect once
            conn = self._conn()
            try:
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                return resp.status, resp.read()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                self._local.conn = None
                if attempt:
                    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
                    raise UserError(f"the {self.role} server at {self.ep.url} does not answer ({reason}); "
                                    "is it running?") from None
        raise AssertionError("unreachable")

    def _json(self, method: str, path: str, body: dict | None = None, ok_only: bool = True) -> dict:
        status, raw = self._request(method, path, body)
        try:
            payload = json.loads(raw.decode("utf-8")) if raw else {}
        except (UnicodeDecodeError, json.JSONDecodeError):
            payload = {"error": {"message": raw[:200].decode("utf-8", "replace")}}
        if not isinstance(payload, dict):
            payload = {"data": payload}
        if ok_only and status != 200:
            raise UserError(f"the {self.role} server at {self.ep.url} answered {method} {path} with HTTP {status}: "
                            f"{_message(payload)}")
        payload["_status"] = status
        return payload

    # --- the Teacher protocol --------------------------------------------------------------------------
    def generate(self, messages: list[dict], *, grammar: str | None = None, temperature: float = 0.0,
                 max_tokens: int = 256, seed: int | None = None) -> str:
        body: dict = {"model": self.model, "messages": messages, "temperature": temperature,
                      "max_tokens": max_tokens, "top_p": 0.95 if temperature > 0 else 1.0, "stream": False}
        if seed is not None:
            body["seed"] = seed
        if self.engine == "llama.cpp":  # the in-process teacher's sampling
            # Without its prompt cache llama-server answers a request the same way each time (with it,
            # seeded sampling differed between two identical sequential requests): a resumed run makes
            # the records an uninterrupted one made. Requests batched together in parallel slots can
            # still differ in the last bits of their logits (measured: tests, bench/RESULTS.md).
            body.update(top_k=40 if temperature > 0 else 1, repeat_penalty=1.1, cache_prompt=False)
        elif self.engine == "vllm":
            body.update(top_k=40 if temperature > 0 else 1, repetition_penalty=1.1)
        start = time.perf_counter()
        while True:
            mode = self.structured if grammar else "plain"
            request, key = dict(body), None
            if mode == "grammar":
                if self.engine == "vllm":
                    request.update(guided_grammar=grammar, structured_outputs={"grammar": grammar})
                else:
                    request["grammar"] = grammar
            elif mode == "schema":
                found = schema_for(grammar or "")
                if found is None:
                    mode = "plain"
                else:
                    schema, key = found
                    request["response_format"] = {"type": "json_schema",
                                                  "json_schema": {"name": "output", "schema": schema, "strict": True}}
            out = self._json("POST", self.ep.path + "/chat/completions", request, ok_only=False)
            if out["_status"] == 200:
                break
            if out["_status"] in (400, 422) and mode != "plain" and CONSTRAINT_REFUSED.search(_message(out)):
                with self._lock:  # this server does not take that kind of constraint: use the next one
                    if self.structured == mode:
                        self.structured = "schema" if mode == "grammar" else "plain"
                continue
            raise UserError(f"the {self.role} server at {self.ep.url} failed a chat completion with HTTP "
                            f"{out['_status']}: {_message(out)}")
        self._account(out, start)
        try:
            text = out["choices"][0]["message"].get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError):
            raise UserError(f"the {self.role} server at {self.ep.url} sent a reply without a message") from None
        if mode == "schema" and key:  # {"answer": "..."}: the chosen text itself, as the grammar gives it
            try:
                text = str(json.loads(text)[key])
            except (json.JSONDecodeError, KeyError, TypeError):
                pass  # the caller's validation rejects it
        return text

    def reply_logprobs(self, messages: list[dict], replies: list[str]) -> dict | None:
        """Log-probability of each reply as the assistant's turn (the judge's A / B / tie); None when the
        prompt does not fit the server's context. llama-server: a grammar forces each reply, spelled in
        the tokenizer's own tokens, and the model's (pre-grammar) log-probabilities of those tokens and of
        the end of turn are summed, as the in-process judge sums them. Other servers: the reply's first
        token among the top 20 of one free token (a reply not among them gets the 20th's value, a bound)."""
        body = {"model": self.model, "messages": messages, "temperature": 0.0, "logprobs": True, "stream": False}
        if self.engine == "llama.cpp":
            out = {}
            for reply in replies:
                tokens = self._json("POST", self.ep.root + "/tokenize", {"content": reply, "add_special": False,
                                                                          "parse_special": False}, ok_only=False)
                ids = tokens.get("tokens") if tokens["_status"] == 200 else None
                spelled = '"' + reply.replace("\\", "\\\\").replace('"', '\\"') + '"'
                grammar = " ".join(f"<[{int(i)}]>" for i in ids) if ids and all(isinstance(i, int) for i in ids) \
                    else spelled  # an older llama-server without token literals: the grammar spells the text
                got = self._logprobs(dict(body, max_tokens=len(reply) + 4, top_logprobs=1, cache_prompt=False,
                                          grammar=f"root ::= {grammar}"))
                if got is None:
                    return None
                out[reply] = round(sum(float(t["logprob"]) for t in got), 5)
            return out
        got = self._logprobs(dict(body, max_tokens=1, top_logprobs=20))
        if got is None:
            return None
        top = {str(t.get("token", "")).strip(): float(t["logprob"]) for t in got[0].get("top_logprobs") or []}
        floor = min(top.values(), default=-100.0)
        return {reply: round(max((lp for tok, lp in top.items() if tok and reply.startswith(tok)), default=floor), 5)
                for reply in replies}

    def _logprobs(self, body: dict) -> list[dict] | None:
        start = time.perf_counter()
        out = self._json("POST", self.ep.path + "/chat/completions", body, ok_only=False)
        if out["_status"] == 400 and re.search(r"context|too long|maximum", _message(out), re.I):
            return None
        if out["_status"] != 200:
            raise UserError(f"the {self.role} server at {self.ep.url} failed a chat completion with HTTP "
                            f"{out['_status']}: {_message(out)}")
        self._account(out, start)
        try:
            content = out["choices"][0]["logprobs"]["content"]
            if content and all("logprob" in t for t in content):  # not an assert: python -O drops those
                return content
        except (KeyError, IndexError, TypeError):
            pass
        raise UserError(f"the {self.role} server at {self.ep.url} sent no log-probabilities "
                        "(the judge needs a server that returns them: llama-server, vLLM)")

    def _account(self, out: dict, start: float) -> None:
        usage = out.get("usage") or {}
        with self._lock:
            self.seconds += time.perf_counter() - start
            self.calls += 1
            self.prompt_tokens += int(usage.get("prompt_tokens") or 0)
            self.completion_tokens += int(usage.get("completion_tokens") or 0)

    def count_tokens(self, text: str) -> int:
        if not text:
            return 0
        hit = self._tokens.get(text)
        if hit is not None:
            return hit
        n = self._tokenize(text) if self.tokenizer else None
        if n is None:
            self.tokenizer = False
            n = max(1, round(len(text.encode("utf-8")) / 4))  # a rough estimate: ~4 bytes per token
        if len(self._tokens) > 100_000:
            self._tokens.clear()
        self._tokens[text] = n
        return n

    def _tokenize(self, text: str) -> int | None:
        if self.engine == "vllm":
            body = {"model": self.model, "prompt": text, "add_special_tokens": False}
        else:
            body = {"content": text, "add_special": False, "parse_special": False}
        out = self._json("POST", self.ep.root + "/tokenize", body, ok_only=False)
        if out["_status"] != 200:
            return None
        if isinstance(out.get("count"), int):
            return out["count"]
        tokens = out.get("tokens")
        return len(tokens) if isinstance(tokens, list) else None

    def reset(self) -> None:
        """Nothing to forget on this side: each request carries its whole prompt."""

    def stats(self) -> dict:
        return {"calls": self.calls, "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "seconds": round(self.seconds, 2), "server": self.ep.url, "model": self.model,
                "engine": self.engine, "structured": self.structured}

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()


def _message(payload: dict) -> str:
    err = payload.get("error")
    text = err.get("message") if isinstance(err, dict) else err if isinstance(err, str) else payload.get("detail")
    return (str(text) if text else "no detail").splitlines()[0][:200]
