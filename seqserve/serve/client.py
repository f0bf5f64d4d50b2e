"""Streamed generation from a running server — seqserve's or Triton — for `seqserve generate --url`.

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
