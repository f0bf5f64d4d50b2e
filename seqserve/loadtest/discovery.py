"""What the server says about the model, and whether it fits the workload: all before any load.

Metadata and config come over the protocol under test (HTTP: GET /v2/models/M and .../config;
gRPC: ModelMetadata / ModelConfig), so a gRPC-only endpoint works. Every failure here is one
SeqserveError line: the server cannot be reached, it has no such model (with the models it has),
or the model does not fit the workload (with the model that would).
"""

from __future__ import annotations

import http.client
import json
import ssl
from dataclasses import dataclass

from seqserve.errors import SeqserveError
from seqserve.loadtest.config import LoadTestConfig, Target


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str                  # KServe datatype: INT64, FP32, BYTES, ...
    shape: tuple[int, ...]         # as the metadata gives it: -1 = any size (batch axis included)
    optional: bool = False


@dataclass(frozen=True)
class ModelInfo:
    name: str
    server: str                    # the server's own name and version (GET /v2)
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    max_batch_size: int            # 0: the shapes have no batch axis
    sequence: bool                 # config has sequence_batching (stateful: sequence ids, start/end)
    decoupled: bool                # model_transaction_policy.decoupled (streams many responses)
    vocab: int | None              # token ids are valid in [0, vocab): the last dim of the logits output
    source_chars: str = ""         # encoder-decoder generate: the characters a source may hold ("" = any)
    max_source: int | None = None  # encoder-decoder generate: the longest source it takes
    state_pairs: tuple = ()        # client-held state (NAME_step_state): ((past input, present output), ...)

    def input(self, name: str) -> Tensor | None:
        return next((t for t in self.inputs if t.name == name), None)


def vocab_size(outputs) -> int | None:
    """The vocabulary: the fixed last dim of `logits` (seqserve's models: [B, S, V]); else of the
    only float output with a fixed last dim."""
    named = [o for o in outputs if o.name == "logits"]
    floats = [o for o in outputs if o.datatype.startswith(("FP", "BF"))]
    for cands in (named, floats if len(floats) == 1 else []):
        for o in cands:
            if o.shape and o.shape[-1] > 0:
                return int(o.shape[-1])
    return None


class _Http:
    def __init__(self, target: Target, api_key: str | None, timeout: float = 10.0):
        self.target, self.timeout = target, timeout
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        t = self.target
        if t.https:
            c = http.client.HTTPSConnection(t.host, t.port, timeout=self.timeout, context=ssl.create_default_context())
        else:
            c = http.client.HTTPConnection(t.host, t.port, timeout=self.timeout)
        try:
            c.request(method, path, body=body, headers={"Content-Type": "application/json", **self.headers})
            r = c.getresponse()
            return r.status, r.read()
        except OSError as e:
            raise SeqserveError(f"cannot reach a server at {t.url}: {e.strerror or e}") from None
        except http.client.HTTPException as e:
            raise SeqserveError(f"the server at {t.url} does not speak HTTP/1.1 ({type(e).__name__}); "
                                "is it a gRPC port? give grpc://HOST:PORT") from None
        finally:
            c.close()

    def json(self, method: str, path: str, body: bytes | None = None) -> tuple[int, object]:
        status, data = self.request(method, path, body)
        try:
            return status, json.loads(data) if data else None
        except ValueError:
            return status, {"error": data[:200].decode(errors="replace")}


def _error_of(body) -> str:
    return body.get("error", "") if isinstance(body, dict) else str(body)[:200]


def _fetch_http(cfg: LoadTestConfig) -> tuple[str, dict, dict, list[str]]:
    h, t = _Http(cfg.target, cfg.api_key), cfg.target
    status, server = h.json("GET", "/v2")
    if status in (401, 403):
        raise SeqserveError(f"the server at {t.url} refused the request ({status}): pass --api-key")
    if status != 200 or not isinstance(server, dict) or "name" not in server:
        raise SeqserveError(f"{t.url} is not a KServe v2 / Triton server (GET /v2 answered {status})")
    status, meta = h.json("GET", f"/v2/models/{cfg.model}")
    if status != 200:
        raise SeqserveError(_unknown_model(cfg, _error_of(meta), _index_http(h)))
    status, config = h.json("GET", f"/v2/models/{cfg.model}/config")
    if status != 200:
        raise SeqserveError(f"the server at {t.url} gave no config for model '{cfg.model}' ({status}: "
                            f"{_error_of(config)})")
    status, _ = h.request("GET", f"/v2/models/{cfg.model}/ready")
    if status != 200:
        raise SeqserveError(f"model '{cfg.model}' on {t.url} is not ready ({status})")
    return f"{server.get('name')} {server.get('version', '')}".strip(), meta, config, _index_http(h)


def _index_http(h: _Http) -> list[str]:
    try:
        status, index = h.json("POST", "/v2/repository/index", b"{}")
    except SeqserveError:
        return []
    return sorted({m.get("name", "") for m in index}) if status == 200 and isinstance(index, list) else []


def _fetch_grpc(cfg: LoadTestConfig) -> tuple[str, dict, dict, list[str]]:
    import tritonclient.grpc as g
    from tritonclient.utils import InferenceServerException

    t = cfg.target
    headers = {"authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else None
    c = g.InferenceServerClient(t.address)

    def call(fn, *a, **kw):
        try:
            return fn(*a, headers=headers, client_timeout=10.0, **kw)
        except InferenceServerException as e:
            code = str(e.status() or "")
            if "UNAVAILABLE" in code or "DEADLINE" in code:
                raise SeqserveError(f"cannot reach a gRPC server at {t.url}: {(e.message() or '').splitlines()[0]}") from None
            if "UNAUTHENTICATED" in code or "PERMISSION" in code:
                raise SeqserveError(f"the server at {t.url} refused the request ({code}): pass --api-key") from None
            raise

    try:
        server = call(c.get_server_metadata, as_json=True)
        try:
            index = sorted({m["name"] for m in call(c.get_model_repository_index, as_json=True).get("models", [])})
        except InferenceServerException:
            index = []
        try:
            meta = call(c.get_model_metadata, cfg.model, as_json=True)
            config = call(c.get_model_config, cfg.model, as_json=True).get("config", {})
        except InferenceServerException as e:
            raise SeqserveError(_unknown_model(cfg, e.message() or str(e), index)) from None
        if not call(c.is_model_ready, cfg.model):
            raise SeqserveError(f"model '{cfg.model}' on {t.url} is not ready")
    finally:
        c.close()
    return f"{server.get('name')} {server.get('version', '')}".strip(), meta, config, index


def _unknown_model(cfg: LoadTestConfig, message: str, index: list[str]) -> str:
    has = f"; it serves: {', '.join(index)}" if index else ""
    why = f" ({message.splitlines()[0][:160]})" if message and not index else ""
    return f"the server at {cfg.target.url} has no model '{cfg.model}'{why}{has}"


def _tensors(entries, config_entries) -> tuple[Tensor, ...]:
    optional = {c.get("name"): bool(c.get("optional")) for c in config_entries or []}
    return tuple(Tensor(e["name"], e["datatype"], tuple(int(d) for d in e.get("shape", [])),
                        optional.get(e["name"], False)) for e in entries or [])


def _config_vocab(config: dict) -> int | None:
    """The `seqserve.vocab_size` parameter seqserve's classify/tag configs carry (their outputs are
    class or tag scores, whose width is not the vocabulary)."""
    value = ((config.get("parameters") or {}).get("seqserve.vocab_size") or {}).get("string_value")
    return int(value) if value and str(value).isdigit() else None


def _config_source(config: dict) -> dict:
    """`seqserve.source_chars` / `seqserve.max_source_len` of an encoder-decoder's generate config."""
    params = config.get("parameters") or {}
    chars = (params.get("seqserve.source_chars") or {}).get("string_value") or ""
    longest = str((params.get("seqserve.max_source_len") or {}).get("string_value") or "")
    return {"source_chars": chars, "max_source": int(longest) if longest.isdigit() else None}


def _config_state_pairs(config: dict) -> tuple:
    """`seqserve.state_pairs` of a NAME_step_state config: which output feeds which input next step."""
    text = ((config.get("parameters") or {}).get("seqserve.state_pairs") or {}).get("string_value") or ""
    return tuple(tuple(x.split(":", 1)) for x in text.split(",") if ":" in x)


def describe_model(cfg: LoadTestConfig) -> ModelInfo:
    """The model's tensors and scheduling, from the server; SeqserveError when that fails."""
    server, meta, config, index = (_fetch_grpc if cfg.target.protocol == "grpc" else _fetch_http)(cfg)
    outputs = _tensors(meta.get("outputs"), None)
    info = ModelInfo(
        name=cfg.model, server=server, inputs=_tensors(meta.get("inputs"), config.get("input")), outputs=outputs,
        max_batch_size=int(config.get("max_batch_size") or 0),
        sequence=bool(config.get("sequence_batching")),
        decoupled=bool((config.get("model_transaction_policy") or {}).get("decoupled")),
        vocab=_config_vocab(config) or vocab_size(outputs), **_config_source(config),
        state_pairs=_config_state_pairs(config))
    check_fit(info, cfg.workload, index, cfg.target.url)
    return info


def check_fit(info: ModelInfo, workload: str, index: list[str] = (), url: str = "the server") -> None:
    """SeqserveError unless the model can run the workload; names a sibling model that can."""
    def hint(suffix: str, text: str = "; '{}' on this server is one") -> str:
        base = info.name.removesuffix("_step_state") if info.name.endswith("_step_state") else \
            info.name.rsplit("_", 1)[0] if info.name.endswith(("_step", "_generate")) else info.name
        other = f"{base}{suffix}"
        return text.format(other) if other in index and other != info.name else ""

    if workload == "generate":
        text = info.input("text_input")
        if text is None or text.datatype != "BYTES" or not any(o.name == "text_output" for o in info.outputs):
            raise SeqserveError(f"model '{info.name}' is not a generation model: --workload generate needs a BYTES "
                                f"input text_input and an output text_output{hint('_generate')}")
        if not info.decoupled:
            raise SeqserveError(f"model '{info.name}' does not stream (its config has no model_transaction_policy "
                                f"decoupled: true): --workload generate measures streamed responses{hint('_generate')}")
        return
    if info.decoupled:
        raise SeqserveError(f"model '{info.name}' is decoupled (it streams responses): use --workload generate, "
                            f"or a model answering one response per request for --workload {workload}")
    if workload == "sequence" and not info.sequence and not info.state_pairs:
        raise SeqserveError(f"model '{info.name}' is not a sequence model (its config has no sequence_batching "
                            f"and no seqserve.state_pairs): --workload sequence needs one{hint('_step')}")
    if workload == "infer" and info.sequence:
        raise SeqserveError(f"model '{info.name}' is a sequence model (sequence_batching): use --workload sequence "
                            f"for it{hint('', ', or its stateless sibling {!r}')}")
    if not info.inputs:
        raise SeqserveError(f"model '{info.name}' has no inputs in its metadata")
