"""Streamed generation from a running server — seqserve's or Triton — for `seqserve generate --url`,
and StepStateClient: a step model with client-held state (NAME_step_state), step by step.

Speaks only the public protocol, so it works against any server with a generation model that
takes `text_input` (+ sampling inputs) and streams `text_output` / `finish_reason`:
- http(s)://HOST:PORT  → POST /v2/models/{m}/generate_stream, server-sent events;
- grpc://HOST:PORT     → tritonclient.grpc bidirectional stream (ModelStreamInfer).
Each stream carries a fresh routing key (`x-sequence-id`, seqserve/serve/routing.py) as an HTTP
header or gRPC metadata, so a consistent-hash proxy keeps it on one replica.
Several prompts run as concurrent streams (the server batches them). Events come back as the
local loop's TokenEvent (token ids are not sent over the wire: token = -1). A conditioned model
also takes per-prompt tensors (`inputs`: {"features": float32 [F]}), sent as FP32 inputs.
"""

from __future__ import annotations

import json
import queue
import threading
from typing import Iterator

import numpy as np
from urllib.parse import urlparse

from seqserve.dtypes import NUMPY
from seqserve.errors import SeqserveError
from seqserve.generation.loop import TokenEvent
from seqserve.generation.request import BY_NAME as GENERATE_FIELDS
from seqserve.generation.request import TEXT_INPUT
from seqserve.generation.sampling import SamplingParams
from seqserve.serve.routing import new_routing_key, routing_headers


def request_fields(prompt: str, p: SamplingParams) -> dict:
    """The generate-extension JSON for one prompt (keys are the generation model's input names)."""
    d = {"text_input": prompt, "max_tokens": p.max_tokens,
         "temperature": 0.0 if p.is_greedy else p.temperature, "top_k": p.top_k, "top_p": p.top_p}
    if p.seed is not None:
        d["seed"] = p.seed
    if p.stop:
        d["stop"] = list(p.stop)
    return d


class RemoteGenerator:
    def __init__(self, url: str, model: str, timeout: float = 30.0, api_key: str | None = None):
        u = urlparse(url if "://" in url else f"http://{url}")
        if u.scheme not in ("http", "https", "grpc") or not u.hostname:
            raise SeqserveError(f"--url {url!r} is not a server address; expected http://HOST:PORT or grpc://HOST:PORT")
        self.scheme, self.host = u.scheme, u.hostname
        self.port = u.port or {"http": 8000, "https": 443, "grpc": 8001}[u.scheme]
        self.timeout, self.api_key = timeout, api_key
        self.model = self._resolve(model)

    # -- model lookup: a clear error before any prompt is sent ------------------------------------

    def _resolve(self, model: str) -> str:
        """`lstm` serves the full graph; its generation model is `lstm_generate`: accept either."""
        if self.scheme == "grpc":
            return self._resolve_grpc(model)
        for name in (model, f"{model}_generate"):
            status, body = self._http("GET", f"/v2/models/{name}")
            if status == 200 and any(i.get("name") == "text_input" for i in json.loads(body).get("inputs", [])):
                return name
        if status in (401, 403):
            raise SeqserveError(f"the server at {self._where()} refused the request ({status}); pass --api-key")
        raise SeqserveError(f"the server at {self._where()} has no generation model '{model}' or '{model}_generate' "
                            "(one with a text_input input); `curl .../v2/repository/index -X POST` lists its models")

    def _resolve_grpc(self, model: str) -> str:
        import tritonclient.grpc as g
        from tritonclient.utils import InferenceServerException

        c = g.InferenceServerClient(f"{self.host}:{self.port}")
        try:
            for name in (model, f"{model}_generate"):
                try:
                    meta = c.get_model_metadata(name, headers=self._headers(), as_json=True)
                except InferenceServerException as e:
                    if "UNAVAILABLE" in str(e.status()) or "failed to connect" in str(e).lower():
                        raise SeqserveError(f"cannot reach a gRPC server at {self._where()}: {e.message()}") from None
                    continue
                if any(i.get("name") == "text_input" for i in meta.get("inputs", [])):
                    return name
        finally:
            c.close()
        raise SeqserveError(f"the server at {self._where()} has no generation model '{model}' or '{model}_generate'")

    def _where(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def _headers(self) -> dict:
        return {"authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _connection(self):
        import http.client

        cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        return cls(self.host, self.port, timeout=self.timeout)

    def _http(self, method: str, path: str, body: bytes | None = None):
        c = self._connection()
        try:
            c.request(method, path, body=body, headers={"Content-Type": "application/json", **self._headers()})
            r = c.getresponse()
            return r.status, r.read()
        except OSError as e:
            raise SeqserveError(f"cannot reach a server at {self._where()}: {e}") from None
        finally:
            c.close()

    # -- streaming -------------------------------------------------------------------------------

    def stream(self, prompt: str, params: SamplingParams, inputs: dict | None = None) -> Iterator[tuple[str, str | None]]:
        """(text piece, finish_reason or None) as the server sends them; `inputs`: more request
        tensors by name (conditioned: features float32 [F])."""
        if self.scheme == "grpc":
            yield from self._stream_grpc(prompt, params, inputs or {})
        else:
            yield from self._stream_sse(prompt, params, inputs or {})

    def _stream_sse(self, prompt, params, extra):
        c = self._connection()
        try:
            fields = {**request_fields(prompt, params), **{k: v.reshape(-1).tolist() for k, v in extra.items()}}
            c.request("POST", f"/v2/models/{self.model}/generate_stream",
                      body=json.dumps(fields).encode(),
                      headers={"Content-Type": "application/json", "Accept": "text/event-stream", **self._headers(),
                               **routing_headers(new_routing_key())})
            r = c.getresponse()
            if r.status != 200:
                raise SeqserveError(f"{self._where()} answered {r.status}: {_error_text(r.read())}")
            for line in r:
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue
                ev = json.loads(line[5:])
                if "error" in ev:
                    raise SeqserveError(f"{self._where()}: {ev['error']}")
                finish = ev.get("finish_reason") or None
                yield ev.get("text_output", ""), finish
                if finish:
                    return
        except OSError as e:
            raise SeqserveError(f"connection to {self._where()} failed: {e}") from None
        finally:
            c.close()

    def _stream_grpc(self, prompt, params, extra):
        import numpy as np
        import tritonclient.grpc as g

        fields = request_fields(prompt, params)
        inputs = []
        for k, v in fields.items():     # each field as the generate config declares it (generation/request.py)
            dt = "BYTES" if k == TEXT_INPUT else GENERATE_FIELDS[k].datatype
            np_t = NUMPY[dt]
            arr = np.array([x.encode() for x in v] if k == "stop" else
                           [v.encode() if isinstance(v, str) else v], dtype=np_t)
            t = g.InferInput(k, list(arr.shape), dt)
            t.set_data_from_numpy(arr)
            inputs.append(t)
        for k, v in extra.items():       # features FP32; beams INT32
            whole = np.asarray(v).dtype.kind in "iu"
            arr = np.ascontiguousarray(v.reshape(-1), dtype=np.int32 if whole else np.float32)
            t = g.InferInput(k, list(arr.shape), "INT32" if whole else "FP32")
            t.set_data_from_numpy(arr)
            inputs.append(t)
        q: queue.Queue = queue.Queue()
        client = g.InferenceServerClient(f"{self.host}:{self.port}")
        client.start_stream(callback=lambda result, error: q.put((result, error)),
                            headers={**self._headers(), **routing_headers(new_routing_key())})
        try:
            client.async_stream_infer(self.model, inputs, enable_empty_final_response=True)
            while True:
                try:
                    result, error = q.get(timeout=self.timeout)
                except queue.Empty:
                    raise SeqserveError(f"{self._where()} sent nothing for {self.timeout:g} s") from None
                if error is not None:
                    raise SeqserveError(f"{self._where()}: {error.message() if hasattr(error, 'message') else error}")
                resp = result.get_response()
                final = resp.parameters.get("triton_final_response")
                text = result.as_numpy("text_output")
                finish = result.as_numpy("finish_reason")
                piece = text.reshape(-1)[0].decode() if text is not None and text.size else ""
                reason = (finish.reshape(-1)[0].decode() if finish is not None and finish.size else "") or None
                if piece or reason:
                    yield piece, reason
                if reason or (final is not None and final.bool_param):
                    return
        finally:
            client.stop_stream(cancel_requests=True)
            client.close()

    def generate(self, prompts: list[str], params: SamplingParams,
                 inputs: list[dict] | None = None) -> Iterator[TokenEvent]:
        """All prompts as concurrent streams; TokenEvents in arrival order. `inputs`: per prompt,
        more request tensors (conditioned: {"features": [F]})."""
        extra = inputs or [{}] * len(prompts)
        if len(prompts) == 1:
            for text, finish in self.stream(prompts[0], params, extra[0]):
                yield TokenEvent(0, -1, text, finish)
            return
        q: queue.Queue = queue.Queue()

        def run(i, prompt):
            try:
                for text, finish in self.stream(prompt, params, extra[i]):
                    q.put(TokenEvent(i, -1, text, finish))
            except BaseException as e:  # noqa: BLE001 — handed to the consumer thread
                q.put(e)
            q.put(None)

        threads = [threading.Thread(target=run, args=(i, p), daemon=True) for i, p in enumerate(prompts)]
        for t in threads:
            t.start()
        running = len(threads)
        while running:
            ev = q.get()
            if ev is None:
                running -= 1
            elif isinstance(ev, BaseException):
                raise ev
            else:
                yield ev


def _error_text(body: bytes) -> str:
    try:
        return json.loads(body).get("error", body.decode(errors="replace"))
    except (ValueError, AttributeError):
        return body.decode(errors="replace")[:200]


# ---- client-held state: NAME_step_state ------------------------------------------------------------

class StepStateClient:
    """Drives a step model with client-held state (`seqserve package --stateless-step`:
    NAME_step_state) over HTTP or gRPC, seqserve's server or Triton:

        client = StepStateClient("grpc://HOST:8001", "lstm")        # or "lstm_step_state"
        seq = client.sequence()                                      # state: zeros (a new sequence)
        for chunk in chunks:
            logits = seq.step(chunk)         # sends input_ids + past_*, keeps present_* for the next step
        # or at once: client.step_sequence(chunks) -> [logits of each chunk]

    Nothing is kept by the server, so no request carries a sequence id or a routing key: any
    replica serves any step. The state pairs come from the config's `seqserve.state_pairs`
    (past_hidden:present_hidden, ...); a model without it pairs past_X with present_X by name."""

    def __init__(self, url: str, model: str, timeout: float = 30.0, api_key: str | None = None):
        u = urlparse(url if "://" in url else f"http://{url}")
        if u.scheme not in ("http", "https", "grpc") or not u.hostname:
            raise SeqserveError(f"url {url!r} is not a server address; expected http://HOST:PORT or grpc://HOST:PORT")
        self.scheme = u.scheme
        port = u.port or {"http": 8000, "https": 443, "grpc": 8001}[u.scheme]
        self.where = f"{u.scheme}://{u.hostname}:{port}"
        self.headers = {"authorization": f"Bearer {api_key}"} if api_key else None
        if self.scheme == "grpc":
            import tritonclient.grpc as tc
        else:
            import tritonclient.http as tc
        self._tc = tc
        kw = {} if self.scheme == "grpc" else {"connection_timeout": timeout, "network_timeout": timeout,
                                                "ssl": self.scheme == "https"}
        self.client = tc.InferenceServerClient(f"{u.hostname}:{port}", **kw)
        self.timeout = timeout
        self.model, meta, config = self._resolve(model)
        self.pairs = _state_pairs(config, meta)
        if not self.pairs:
            raise SeqserveError(f"model '{self.model}' at {self.where} takes no state inputs (no seqserve.state_pairs "
                                "and no past_*/present_* tensors); package with --stateless-step for NAME_step_state")
        shapes = {i["name"]: (i["datatype"], [int(d) for d in i["shape"]]) for i in meta["inputs"]}
        self.state_specs = {p: shapes[p] for p, _ in self.pairs}          # datatype, [-1, dims...]
        self.inputs = [n for n in shapes if n not in self.state_specs]    # token ids (and anything else)
        self.outputs = [o["name"] for o in meta["outputs"]]

    def _resolve(self, model: str):
        from tritonclient.utils import InferenceServerException

        last = ""
        for name in dict.fromkeys((model, f"{model}_step_state")):
            try:
                if self.scheme == "grpc":
                    meta = self.client.get_model_metadata(name, headers=self.headers, as_json=True)
                    config = self.client.get_model_config(name, headers=self.headers, as_json=True).get("config", {})
                else:
                    meta = self.client.get_model_metadata(name, headers=self.headers)
                    config = self.client.get_model_config(name, headers=self.headers)
            except InferenceServerException as e:
                last = (e.message() or str(e)).splitlines()[0]
                continue
            if _state_pairs(config, meta):
                return name, meta, config
        raise SeqserveError(f"the server at {self.where} has no step model with client-held state '{model}' or "
                            f"'{model}_step_state'" + (f" ({last})" if last else ""))

    def zeros(self, rows: int = 1) -> dict:
        """The state of `rows` new sequences: zeros, past input name -> array [rows, dims...]."""
        return {n: np.zeros([rows, *s[1:]], dtype=NUMPY[dt]) for n, (dt, s) in self.state_specs.items()}

    def infer(self, ids, state: dict, extra: dict | None = None) -> tuple[dict, dict]:
        """One step: ids [B, S] with `state` (past name -> [B, ...]) -> (every output by name, the
        next state: present_* as the past names)."""
        from seqserve.dtypes import kserve_datatype

        tc, binary = self._tc, {} if self.scheme == "grpc" else {"binary_data": True}
        arrays = {self.inputs[0]: np.ascontiguousarray(ids, dtype=np.int64), **(extra or {}), **state}
        xs = []
        for name, a in arrays.items():
            x = tc.InferInput(name, list(a.shape), kserve_datatype(a))
            x.set_data_from_numpy(np.ascontiguousarray(a), **binary)
            xs.append(x)
        outs = [tc.InferRequestedOutput(n, **binary) for n in self.outputs]
        try:
            kw = {"client_timeout": self.timeout} if self.scheme == "grpc" else {}
            r = self.client.infer(self.model, xs, outputs=outs, headers=self.headers, **kw)
        except Exception as e:    # noqa: BLE001 - tritonclient raises InferenceServerException or transport errors
            msg = e.message() if hasattr(e, "message") and callable(e.message) else str(e)
            raise SeqserveError(f"{self.where} model '{self.model}': {msg}") from None
        got = {n: r.as_numpy(n) for n in self.outputs}
        return got, {p: got[o] for p, o in self.pairs}

    def sequence(self, rows: int = 1) -> "StatelessSequence":
        return StatelessSequence(self, rows)

    def step_sequence(self, chunks) -> list:
        """Each chunk of token ids (a list, or [1, S] / [B, S] array) as one step of one sequence
        (or B sequences); the logits of every step."""
        first = np.asarray(chunks[0])
        seq = self.sequence(first.shape[0] if first.ndim == 2 else 1)
        return [seq.step(c) for c in chunks]

    def close(self) -> None:
        self.client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class StatelessSequence:
    """One sequence (or `rows` of them, one request per step) whose state this object holds:
    each step sends it and keeps what came back. `state_bytes` is the state sent per request
    (the same comes back)."""

    def __init__(self, client: StepStateClient, rows: int = 1):
        self.client, self.rows = client, rows
        self.state = client.zeros(rows)
        self.outputs: dict = {}

    @property
    def state_bytes(self) -> int:
        return sum(a.nbytes for a in self.state.values())

    def step(self, ids):
        ids = np.asarray(ids, dtype=np.int64)
        if ids.ndim == 1:
            ids = ids[None]
        self.outputs, self.state = self.client.infer(ids, self.state)
        logits = self.client.outputs[0] if "logits" not in self.outputs else "logits"
        return self.outputs[logits]


def _state_pairs(config: dict, meta: dict) -> list[tuple[str, str]]:
    """[(past input, present output)]: the config's seqserve.state_pairs, else past_X/present_X by name."""
    text = (((config or {}).get("parameters") or {}).get("seqserve.state_pairs") or {}).get("string_value") or ""
    if text:
        return [tuple(x.split(":", 1)) for x in text.split(",") if ":" in x]
    if (config or {}).get("sequence_batching"):
        return []            # the server keeps this model's state (NAME_step)
    ins = {i["name"] for i in meta.get("inputs", [])}
    outs = {o["name"] for o in meta.get("outputs", [])}
    return [(i, "present_" + i[5:]) for i in sorted(ins) if i.startswith("past_") and "present_" + i[5:] in outs]
