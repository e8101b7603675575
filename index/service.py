"""The query service: one FastAPI app over the CURRENT index version and its run's SRS model (and
its attribute scores, which explain items: index.explain; and its RecInterpreter, which describes a
history in words: index.describe).

The same app runs under uvicorn or as a Ray Serve deployment (jobs/serve.py). Everything a
request reads sits in one immutable `Snapshot`; a background thread polls storage and, when
CURRENT (or the published model) changes, loads the new one beside the old and swaps a single
reference. A request takes the reference once, so it never mixes two versions and requests in
flight during a swap finish on the version they started with.
"""
import contextlib
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cluster.config import TOKEN_ENV, ModelConfig, ServeConfig
from cluster.layout import NoIndexError, current_version, interpreter_dir
from cluster.storage import StorageError, Store
from index.describe import Description, Interpreter, InterpreterMismatch, NoInterpreterError, TitleMatcher
from index.explain import Explainer, Explanation, NoAttributesError, Profile, UnscoredError
from index.faiss_index import ItemIndex
from index.recommender import Recommender
from index.versions import item_titles, load_index, version_manifest
from srs.published import NoModelError, find_model

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 1 << 20   # a /search body with a 4,096-dim vector is about 100 kB of JSON
_TOO_LARGE = f"the request body is larger than {MAX_BODY_BYTES} bytes"
PUBLIC_PATHS = frozenset({"/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})


# -- what is served ------------------------------------------------------------------------
@dataclass(frozen=True)
class Snapshot:
    """One index version with its titles and its run's SRS model, replaced only as a whole."""

    version: str
    manifest: dict
    index: ItemIndex
    titles: dict[str, str]
    model: Recommender | None
    model_key: tuple[str, str] | None   # (dir, manifest) of the published model: a new one means reload
    model_problem: str | None   # why /recommend cannot answer (None when `model` is set)
    explainer: Explainer | None = None
    explainer_problem: str | None = None   # why /explain cannot answer (None when `explainer` is set)


def _model_key(store: Store, run: str, source: str | None) -> tuple[tuple[str, str] | None, str | None]:
    """(key, None) for the model to serve, or (None, what is missing)."""
    try:
        rel = find_model(store, run, source)
    except NoModelError as e:
        return None, str(e)
    return (rel, json.dumps(store.manifest(rel), sort_keys=True)), None


def _load_model(store: Store, run: str, key: tuple[str, str] | None, problem: str | None) -> dict:
    """The Snapshot fields for the model named by `key` (from _model_key), following the items of
    the served embeddings run `run`."""
    if key is None:
        return {"model": None, "model_key": None, "model_problem": problem}
    rel = key[0]
    try:
        return {"model": Recommender.load(store, rel, run), "model_key": key, "model_problem": None}
    except Exception as e:   # a broken model must not take the index down; keyed, so not retried every poll
        log.exception("cannot load the SRS model %s", store.full_uri(rel))
        return {"model": None, "model_key": key, "model_problem": f"the SRS model {store.full_uri(rel)} cannot be loaded: {e}"}


def _load_explainer(store: Store, run: str, ids: list[str]) -> dict:
    """The Snapshot fields for the attribute scores of the served run `run` (over its index's items)."""
    try:
        return {"explainer": Explainer.load(store, run, ids), "explainer_problem": None}
    except NoAttributesError as e:
        return {"explainer": None, "explainer_problem": str(e)}
    except Exception as e:   # broken scores must not take the index down
        log.exception("cannot load the attribute scores of %s", run)
        return {"explainer": None, "explainer_problem": f"the attribute scores of {run} cannot be loaded: {e}"}


def load_snapshot(store: Store, version: str, source: str | None = None) -> Snapshot:
    """Index `version`, its catalog's titles and the newest model of the run it was built from."""
    manifest = version_manifest(store, version)
    index = load_index(store, version)
    try:
        titles = item_titles(store, manifest, index.ids)
    except StorageError as e:
        log.warning("serving index %s without titles: %s", version, e)
        titles = {}
    model = _load_model(store, manifest["run"], *_model_key(store, manifest["run"], source))
    return Snapshot(version, manifest, index, titles, **model, **_load_explainer(store, manifest["run"], index.ids))


class LiveIndex:
    """The Snapshot being served; `refresh` (the poller's step) swaps in what storage now names."""

    def __init__(self, store: Store, cfg: ServeConfig):
        self.store = store
        self.cfg = cfg
        self.snapshot: Snapshot | None = None
        self.waiting_for: str | None = None   # why there is no snapshot yet
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.refresh()

    def refresh(self) -> bool:
        """Load a new CURRENT version, or a newly published model for the served run, or its attribute
        scores if they were missing; True if swapped."""
        try:
            version = current_version(self.store)
        except NoIndexError as e:
            self.waiting_for = str(e)
            return False
        snap = self.snapshot
        if snap is None or snap.version != version:
            self.snapshot = load_snapshot(self.store, version, self.cfg.model_source)
            log.info("serving index %s (%d items)", version, len(self.snapshot.index))
            return True
        swapped = False
        if snap.explainer is None:   # scored since this version was loaded?
            scores = _load_explainer(self.store, snap.manifest["run"], snap.index.ids)
            if scores["explainer"] is not None:
                self.snapshot = snap = replace(snap, **scores)
                log.info("explaining with %s", snap.explainer.items.run)
                swapped = True
        key, problem = _model_key(self.store, snap.manifest["run"], self.cfg.model_source)
        if key == snap.model_key:
            return swapped
        self.snapshot = replace(snap, **_load_model(self.store, snap.manifest["run"], key, problem))
        log.info("serving SRS model %s", self.snapshot.model.where if self.snapshot.model else None)
        return True

    def _poll(self) -> None:
        while not self._stop.wait(self.cfg.poll_seconds):
            try:
                self.refresh()
            except Exception:   # a storage hiccup must not kill the poller: keep serving, retry next time
                log.exception("index refresh failed; still serving %s", self.snapshot and self.snapshot.version)

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, name="index-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


class Interpreters:
    """The RecInterpreter of the served run (adapters/<lineage>-interpret), loaded on the first /describe (it
    holds an LLM: no cost for deployments that never describe) and again when its adapter is republished,
    which it checks at most every `recheck_seconds` (serve.poll_seconds, as the index poller does), not per
    request; the title matcher follows the served index version."""

    def __init__(self, store: Store, recheck_seconds: float):
        self.store = store
        self.recheck_seconds = recheck_seconds
        self._lock = threading.Lock()
        self._checked: tuple[str, float] | None = None   # (adapter dir, when its manifest was last read)
        self._key: tuple[str, str] | None = None
        # The interpreter, or why it cannot load: keyed like the SRS model, so a bad one is not retried per request.
        self._loaded: Interpreter | NoInterpreterError | InterpreterMismatch | None = None
        self._matcher: tuple[str, TitleMatcher] | None = None

    def get(self, snap: Snapshot) -> tuple[Interpreter, TitleMatcher]:
        rel = interpreter_dir(snap.manifest["run"])
        with self._lock:   # one load at a time; requests meanwhile wait for it rather than load it again
            fresh = self._checked is not None and self._checked[0] == rel and self._key is not None \
                and time.monotonic() - self._checked[1] < self.recheck_seconds
            if not fresh:
                try:
                    key = (rel, json.dumps(self.store.manifest(rel), sort_keys=True))
                except StorageError:
                    raise NoInterpreterError(f"no interpreter adapter at {self.store.full_uri(rel)}: run "
                                             "`guidedrec interpret`") from None
                self._checked = (rel, time.monotonic())
            if not fresh and key != self._key:
                self._key = key
                try:
                    self._loaded = Interpreter.load(self.store.sub(rel), self.store, snap.manifest["run"],
                                                    ModelConfig())
                except (NoInterpreterError, InterpreterMismatch) as e:
                    self._loaded = e
            if not isinstance(self._loaded, Interpreter):
                raise self._loaded
            if self._matcher is None or self._matcher[0] != snap.version:
                self._matcher = (snap.version, TitleMatcher(snap.titles))
            return self._loaded, self._matcher[1]


# -- requests and responses ----------------------------------------------------------------
class ScoredItem(BaseModel):
    item_id: str
    score: float = Field(description="Cosine or inner product (higher is closer), squared L2 distance "
                                     "for l2 indexes, the SRS model's <user, item> for /recommend.")
    title: str | None = None
    explanation: Explanation | None = Field(None, description="/recommend with explain: why, by the attribute "
                                                              "scores (None where the item has none).")


class ItemsResponse(BaseModel):
    version: str = Field(description="The index version that answered.")
    model: str | None = Field(None, description="The SRS model that answered (/recommend only).")
    source: str | None = Field(None, description="Its embedding source, e.g. id or llmemb (/recommend only).")
    items: list[ScoredItem]


def _whole_float(value):
    """42.0 is the integer 42 in JSON (and in the schema's `integer`); true, "3" and 4.5 stay refused."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


# A request's `k`: strict, but an integer as JSON counts them.
Count = Annotated[int, BeforeValidator(_whole_float)]


class _Request(BaseModel):
    """Strict: `k: true` or `"3"` is refused, not coerced (create_app adds `k`, bounded by serve.max_k)."""

    model_config = ConfigDict(strict=True)


FLOAT32_MAX = float(np.finfo(np.float32).max)


class SearchRequest(_Request):
    vector: list[Annotated[float, Field(allow_inf_nan=False, ge=-FLOAT32_MAX, le=FLOAT32_MAX)]] = Field(
        min_length=1, description="As many values as the served index has dims (GET /healthz), each a float32; "
        "not all zeros on a cosine index.")
    exclude: list[str] = Field(default_factory=list, description="Item ids to leave out.")


class RecommendRequest(_Request):
    items: list[str] = Field(min_length=1, description="The user's items, oldest first.")
    exclude_seen: bool = Field(True, description="Leave out the items of the sequence.")
    exclude: list[str] = Field(default_factory=list, description="More item ids to leave out.")
    explain: bool = Field(False, description="Explain each item by its attribute scores, as /explain does.")


class ExplainRequest(_Request):
    items: list[str] = Field(min_length=1, description="The user's items, oldest first: their profile is the "
                                                       "mean of these items' attribute scores.")
    item: str = Field(description="The item to explain.")


class DescribeRequest(_Request):
    items: list[str] = Field(min_length=1, description="The user's items, oldest first: the SRS state(s) of this "
                                                       "history are what the interpreter reads.")


class DescribeResponse(BaseModel):
    version: str = Field(description="The index version that answered (its titles name the items).")
    interpreter: str = Field(description="The interpreter adapter that read the state.")
    description: Description


class ExplainResponse(BaseModel):
    version: str = Field(description="The index version that answered.")
    run: str = Field(description="The embeddings run the attribute scores come from.")
    explanation: Explanation


class Health(BaseModel):
    status: str
    version: str | None = None
    count: int | None = None
    run: str | None = None
    metric: str | None = None
    dims: int | None = None
    model: str | None = None
    source: str | None = Field(None, description="Embedding source of the served SRS model.")
    detail: str | None = None


def _scored(snap: Snapshot, ids: list[str], scores: Iterable[float], exclude: set[str], k: int) -> list[ScoredItem]:
    kept = [(i, float(s)) for i, s in zip(ids, scores) if i not in exclude][:k]
    return [ScoredItem(item_id=i, score=s, title=snap.titles.get(i)) for i, s in kept]


class FieldProblem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class Problem(BaseModel):
    detail: str | list[FieldProblem] = Field(description="What is wrong: one line, or one entry per bad field (422).")


def _problems(**described: str) -> dict:
    """OpenAPI `responses` for error statuses, all answered as a Problem."""
    return {code: {"model": Problem, "description": text} for code, text in described.items()}


API_ERRORS = _problems(**{
    "400": "The body could not be read (e.g. not UTF-8).",
    "401": "A bearer token is configured and the request does not carry it.",
    "413": f"The body is larger than {MAX_BODY_BYTES} bytes.",
    "422": "A field is missing, of the wrong type or out of range (k above serve.max_k included).",
    "503": "No index has been built yet."})


def _resolve_token(cfg: ServeConfig) -> str | None:
    """serve.token, else $GUIDEDREC_TOKEN; set but empty is an error, never an open server."""
    token = cfg.token.get_secret_value() if cfg.token else os.environ.get(TOKEN_ENV)
    if token is not None and not token.strip():
        raise ValueError(f"${TOKEN_ENV} is set but empty: set a non-empty token or remove it (no auth)")
    return token


def _authorized(headers: Headers, token: str | None) -> bool:
    scheme, _, given = headers.get("authorization", "").partition(" ")
    return token is None or (scheme.lower() == "bearer"
                             and secrets.compare_digest(given.strip().encode(), token.encode()))


class _Gate:
    """ASGI middleware, run before a body is read: a request outside PUBLIC_PATHS without the bearer
    token is answered 401 at once, and a body over MAX_BODY_BYTES (declared or as it streams) 413."""

    def __init__(self, app: ASGIApp, token: str | None):
        self.app, self.token = app, token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        if scope["path"] not in PUBLIC_PATHS and not _authorized(headers, self.token):
            response = JSONResponse({"detail": "a valid bearer token is required: Authorization: Bearer <token>"},
                                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
            return await response(scope, receive, send)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            return await JSONResponse({"detail": _TOO_LARGE}, status_code=413)(scope, receive, send)
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > MAX_BODY_BYTES:
                raise HTTPException(413, _TOO_LARGE)   # FastAPI lets a receive's HTTPException through
            return message

        await self.app(scope, limited, send)


# -- the app -------------------------------------------------------------------------------
def create_app(store: Store, cfg: ServeConfig) -> FastAPI:
    """The service over `store`; loads the CURRENT version now, polls for new ones while running."""
    token = _resolve_token(cfg)   # before any work: an empty one is a startup error
    live = LiveIndex(store, cfg)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        live.start()
        yield
        live.stop()

    app = FastAPI(title="guidedrec", version="0.1.0", lifespan=lifespan,
                  description="Nearest items and next-item recommendations over the CURRENT index version.")
    app.state.live = live
    app.add_middleware(_Gate, token=token)
    # _Gate checks the token; the dependency puts the bearer scheme in the OpenAPI schema.
    api = APIRouter(dependencies=[Depends(HTTPBearer())] if token else [],
                    responses={code: r for code, r in API_ERRORS.items() if token or code != "401"})
    k_field = Field(min(10, cfg.max_k), ge=1, le=cfg.max_k, description="How many items (at most serve.max_k).")
    Search = create_model("SearchRequest", __base__=SearchRequest, k=(Count, k_field))
    Recommend = create_model("RecommendRequest", __base__=RecommendRequest, k=(Count, k_field))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        """422 naming each bad field, without echoing the input (a NaN would not even encode: 500)."""
        detail = [{"loc": e["loc"], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return JSONResponse({"detail": detail}, status_code=422)

    def served() -> Snapshot:
        snap = live.snapshot   # read once: the whole request uses this version
        if snap is None:
            raise HTTPException(503, live.waiting_for)
        return snap

    @app.get("/healthz", response_model=Health, responses={503: {"model": Health}})
    def healthz(request: Request):
        """Liveness and what is served. No token needed, but without it no storage path is shown
        (the model's location and the details, which name the store)."""
        snap = live.snapshot
        if snap is None:
            health, status = Health(status="no index", detail=live.waiting_for), 503
        else:
            health, status = Health(status="ok", version=snap.version, count=len(snap.index), run=snap.manifest["run"],
                                    metric=snap.index.metric, dims=snap.index.dims,
                                    model=snap.model.where if snap.model else None,
                                    source=snap.model.source if snap.model else None, detail=snap.model_problem), 200
        if not _authorized(request.headers, token):
            health = health.model_copy(update={"model": None, "detail": None})
        return JSONResponse(health.model_dump(), status_code=status)

    @api.get("/items/{item_id}/similar", responses=_problems(**{"404": "The item is not in the index."}))
    def similar(item_id: str, k: int = Query(min(10, cfg.max_k), ge=1, le=cfg.max_k,
                                             description="How many items (at most serve.max_k)."),
                exclude: str = Query("", description="Comma-separated item ids to leave out.")) -> ItemsResponse:
        """The k nearest items of an indexed item (never the item itself)."""
        snap = served()
        excluded = {e for e in exclude.split(",") if e}
        try:
            found, scores = snap.index.search_items([item_id], k + len(excluded))
        except KeyError as e:
            raise HTTPException(404, f"{e.args[0]} (version {snap.version})") from None
        return ItemsResponse(version=snap.version, items=_scored(snap, found[0], scores[0], excluded, k))

    @api.post("/search", responses=_problems(**{
        "409": "The vector does not fit the served index: another length than its dims, or all zeros on a cosine "
               "index."}))
    def search(req: Search) -> ItemsResponse:
        """The k nearest items of a raw vector in the index's embedding space."""
        snap = served()
        # A vector of the schema that does not fit the index served now (which a swap can change): 409.
        if len(req.vector) != snap.index.dims:
            raise HTTPException(409, f"vector has {len(req.vector)} dims, index {snap.version} expects {snap.index.dims}")
        vector = np.asarray(req.vector, dtype=np.float32)
        if snap.index.metric == "cosine" and not vector.any():
            raise HTTPException(409, f"a zero vector has no cosine direction (index {snap.version} is cosine)")
        excluded = set(req.exclude)
        found, scores = snap.index.search(vector, req.k + len(excluded))
        return ItemsResponse(version=snap.version, items=_scored(snap, found[0], scores[0], excluded, req.k))

    def explainer_of(snap: Snapshot) -> Explainer:
        if snap.explainer is None:
            raise HTTPException(409, snap.explainer_problem)
        return snap.explainer

    def profile_of(explainer: Explainer, items: list[str]) -> Profile:
        try:
            return explainer.history_profile(items)
        except KeyError as e:
            raise HTTPException(404, e.args[0]) from None
        except UnscoredError as e:
            raise HTTPException(422, str(e)) from None

    @api.post("/recommend", responses=_problems(**{
        "404": "An item of the sequence is not in the SRS model's catalog.",
        "409": "No trained SRS model for the served run (with explain: or no attribute scores)."}))
    def recommend(req: Recommend) -> ItemsResponse:
        """The k items the SRS model ranks next after the user's sequence (with explain, each explained)."""
        snap = served()
        if snap.model is None:
            raise HTTPException(409, snap.model_problem)
        explainer = explainer_of(snap) if req.explain else None
        excluded = set(req.exclude) | (set(req.items) if req.exclude_seen else set())
        try:
            ids, scores = snap.model.recommend(req.items, req.k, excluded)
        except KeyError as e:
            raise HTTPException(404, e.args[0]) from None
        items = _scored(snap, ids, scores, set(), req.k)
        if explainer is not None:
            profile = profile_of(explainer, req.items)
            for scored in items:
                with contextlib.suppress(UnscoredError):   # an item added since the scores were: None
                    scored.explanation = explainer.explain(profile, scored.item_id)
        return ItemsResponse(version=snap.version, model=snap.model.where, source=snap.model.source, items=items)

    @api.post("/explain", responses=_problems(**{
        "404": "An item (of the sequence, or to explain) is not in the served catalog.",
        "409": "No attribute scores for the served run.",
        "422": "The item, or every item of the sequence, has no attribute scores (or a field is bad)."}))
    def explain_item(req: ExplainRequest) -> ExplainResponse:
        """Why `item` suits the user of `items`, by GER's attributes: per attribute both z-scores and their
        normalized difference, and the attributes that most support and most oppose it, in words."""
        snap = served()
        explainer = explainer_of(snap)
        profile = profile_of(explainer, req.items)
        try:
            explanation = explainer.explain(profile, req.item)
        except KeyError as e:
            raise HTTPException(404, e.args[0]) from None
        except UnscoredError as e:
            raise HTTPException(422, str(e)) from None
        return ExplainResponse(version=snap.version, run=explainer.items.run, explanation=explanation)

    interpreters = Interpreters(store, cfg.poll_seconds)

    @api.post("/describe", responses=_problems(**{
        "404": "An item of the history is not in the interpreter's SRS model.",
        "409": "No interpreter adapter for the served run, or it was trained for another SRS model or LLM.",
        "422": "A residual interpreter was given a single item (it reads the states before and after the last)."}))
    def describe(req: DescribeRequest) -> DescribeResponse:
        """The frozen LLM's words for the SRS state of the history (RecInterpreter), and the catalog items they
        name: by exact title, else the nearest title."""
        snap = served()
        try:
            interpreter, matcher = interpreters.get(snap)
        except (NoInterpreterError, InterpreterMismatch) as e:
            raise HTTPException(409, str(e)) from None
        try:
            description = interpreter.describe(req.items, matcher)
        except KeyError as e:
            raise HTTPException(404, e.args[0]) from None
        except ValueError as e:
            raise HTTPException(422, str(e)) from None
        return DescribeResponse(version=snap.version, interpreter=interpreter.where, description=description)

    app.include_router(api)
    return app
