"""Where every stored output lives: the one module that names, versions, commits and opens them.

Under a store's root (local path or s3://bucket/prefix):

    catalog/<name>/                       items, interactions, quarantine (item rows) and dropped
                                          (interaction rows) Parquet files
    embeddings/<run>/                     part-*.parquet files of one embeddings run (<run>-users: user profiles)
    index/<version>/, index/CURRENT       FAISS index versions; CURRENT names the live one
    models/<lineage>/<source>/<version>/  trained SRS models; the source folder's manifest names the live one
    reports/<lineage>/metrics.json        the last training's metrics table
    ray-train/<lineage>/                  Ray Train run state (what a restarted training resumes from)
    adapters/<dataset>-<objective>/       fine-tuned LoRA adapters (the fine-tuning job's default --out)
    adapters/<lineage>-interpret/         the RecInterpreter adapter over that lineage's SRS models

Every directory is committed by its `_manifest.json`, written last; readers trust only committed
ones. An embeddings run's manifest lists its part files with their SHA-256, and readers read
exactly those parts.

A run's *lineage* is the run `guidedrec embed` committed: `guidedrec update` derives new runs
from it, named `<lineage>-u<version>`. Models and reports are kept per lineage, so training,
serving and updates agree on where a model is whichever run of the lineage is live.
"""
from __future__ import annotations

import hashlib
import io
import re
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from cluster.config import Config
from cluster.storage import StorageError, Store

CATALOG, EMBEDDINGS, INDEX, MODELS, REPORTS, TRAIN_RUNS, ADAPTERS = (
    "catalog", "embeddings", "index", "models", "reports", "ray-train", "adapters")
CURRENT = f"{INDEX}/CURRENT"
# Data sets stored under their own name (catalog.loaders reads them); any other dataset.name is a folder.
NAMED_DATASETS = ("synthetic", "ml-100k", "amazon-beauty", "amazon-scientific-mini")

_VERSION = r"\d{8}T\d{12}Z-[0-9a-f]{6}"
_UPDATE_SUFFIX = re.compile(rf"-u{_VERSION}$")


class NoIndexError(StorageError):
    """No index version has been made current in this store."""


# -- versions ----------------------------------------------------------------------------------
def new_version() -> str:
    """UTC time to the microsecond plus a short uuid: sorts by creation, never collides."""
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S%fZ}-{uuid.uuid4().hex[:6]}"


def is_version(name: str) -> bool:
    return re.fullmatch(_VERSION, name) is not None


# -- names -------------------------------------------------------------------------------------
def catalog_name(cfg: Config) -> str:
    """A named data set's name; for a catalog folder, its name plus a hash of its absolute path, so
    /a/shop and /b/shop never share a catalog or a run, while one folder keeps its name (and its
    runs, models and updates) as its files change."""
    name = cfg.dataset.name
    if name in NAMED_DATASETS:
        return name
    folder = Path(name).expanduser().resolve()
    return f"{folder.name}-{hashlib.sha256(str(folder).encode()).hexdigest()[:8]}"


def catalog_dir(name: str) -> str:
    return f"{CATALOG}/{name}"


def catalog_file(name: str, kind: str = "items") -> str:
    """catalog/<name>/<kind>.parquet, kind one of items, interactions, quarantine, dropped (or embedded,
    for updates; profiles, the user profile prompts `embed --attributes --users` scores)."""
    return f"{catalog_dir(name)}/{kind}.parquet"


def run_name(cfg: Config, adapters: dict[str, str] | None = None, attributes: bool = False) -> str:
    """embed.run, or <dataset>-<model>-<adapters or base>; -attrs beside it for attribute scores."""
    variant = "+".join(sorted(adapters)) if adapters else "base"
    name = cfg.embed.run or f"{catalog_name(cfg)}-{Path(cfg.model.path).name}-{variant}"
    return attributes_run(name) if attributes else name


def attributes_run(run: str) -> str:
    """The run of GER attribute scores that `guidedrec embed --attributes` commits beside `run`'s lineage."""
    return f"{lineage(run)}-attrs"


def users_run(scores_run: str) -> str:
    """The user profiles (attribute scores of each user's profile prompt) scored beside attributes run `scores_run`."""
    return f"{scores_run}-users"


def knowledge_run_name(cfg: Config) -> str:
    """The run of TSLRec's knowledge embeddings, written by its fine-tuning job."""
    return f"{catalog_name(cfg)}-{Path(cfg.model.path).name}-tslrec"


def run_dir(run: str) -> str:
    return f"{EMBEDDINGS}/{run}"


def update_run_name(parent: str) -> str:
    """The run an update of `parent` commits: <lineage>-u<version> (updates of updates do not grow the name)."""
    return f"{lineage(parent)}-u{new_version()}"


def lineage(run: str) -> str:
    """The embedded run an updated run derives from (a run that was never updated is its own)."""
    return _UPDATE_SUFFIX.sub("", run)


def index_dir(version: str) -> str:
    return f"{INDEX}/{version}"


def models_dir(run: str) -> str:
    return f"{MODELS}/{lineage(run)}"


def model_dir(run: str, source: str) -> str:
    return f"{models_dir(run)}/{source}"


def report_file(run: str) -> str:
    return f"{REPORTS}/{lineage(run)}/metrics.json"


def train_runs_dir(run: str) -> str:
    return f"{TRAIN_RUNS}/{lineage(run)}"


def adapter_dir(cfg: Config, objective: str) -> str:
    """An objective's default adapter directory; the interpreter's is keyed by the SRS lineage it reads."""
    if objective == "interpret":
        return interpreter_dir(run_name(cfg))
    return f"{ADAPTERS}/{catalog_name(cfg)}-{objective}"


def interpreter_dir(run: str) -> str:
    """The RecInterpreter adapter over the SRS models of `run`'s lineage: where `guidedrec interpret` writes it
    by default and where `guidedrec describe` and the service (which know only the served run) look for it."""
    return f"{ADAPTERS}/{lineage(run)}-interpret"


# -- what is live --------------------------------------------------------------------------------
def current_version(store: Store) -> str:
    if not store.exists(CURRENT):
        raise NoIndexError(f"no index built yet: run `guidedrec index` (no {store.full_uri(CURRENT)})")
    return store.read_json(CURRENT)["version"]


def set_current(store: Store, version: str) -> None:
    """Point CURRENT at a committed version (one atomic object write)."""
    store.manifest(index_dir(version))   # StorageError unless committed
    store.write_json(CURRENT, {"version": version, "updated": datetime.now(timezone.utc).isoformat()})


def live_run(cfg: Config, store: Store) -> str:
    """The configured run, or the update of it that CURRENT serves: indexing or training after
    `guidedrec update` starts from the updated items, not the run they replaced."""
    configured = run_name(cfg)
    try:
        served = store.manifest(index_dir(current_version(store)))["run"]
    except NoIndexError:
        return configured
    return served if lineage(served) == configured else configured


def live_catalog_file(cfg: Config, store: Store) -> str:
    """The items file of the live run (an update publishes its own), else the ingested catalog's."""
    run = live_run(cfg, store)
    if store.is_committed(run_dir(run)):
        return store.manifest(run_dir(run))["catalog"]
    return catalog_file(catalog_name(cfg))


# -- embeddings runs: commit and read exactly the committed parts ----------------------------------
def read_parts(store: Store, run: str, names: list[str] | None = None,
               columns: list[str] | None = None) -> tuple[pa.Table, dict[str, str]]:
    """Part files of embeddings/<run> (`names`, or every part now there) as one table, with each
    part's SHA-256 taken from the very bytes the table was parsed from: each part is read once."""
    rel = run_dir(run)
    names = names if names is not None else [n for n in store.list(rel) if n.endswith(".parquet")]
    if not names:
        raise StorageError(f"no Parquet part files under {store.full_uri(rel)}")
    tables, hashes = [], {}
    for name in names:
        data = store.read_bytes(f"{rel}/{name}")
        hashes[name] = hashlib.sha256(data).hexdigest()
        tables.append(pq.read_table(io.BytesIO(data), columns=columns))
    return pa.concat_tables(tables), hashes


def repair_hint(run: str, manifest: dict) -> str:
    """How to mend a run whose parts were lost or changed: an update run is rebuilt from its own stored
    catalogs and its parent, a run that embed wrote by embed with the same options."""
    if manifest.get("parent"):
        return f"`guidedrec update --repair {run}` re-embeds only those blocks and re-copies the parent's rows"
    return "`guidedrec embed --resume` with the run's options re-embeds only those blocks"


def damaged_parts(store: Store, run: str) -> list[str]:
    """The parts a committed run's manifest lists that are now missing or whose bytes changed."""
    rel = run_dir(run)
    parts, present = store.manifest(rel).get("parts") or {}, set(store.list(rel))
    return [name for name, digest in sorted(parts.items())
            if name not in present or hashlib.sha256(store.read_bytes(f"{rel}/{name}")).hexdigest() != digest]


def read_committed_run(store: Store, run: str, columns: list[str] | None = None) -> tuple[pa.Table, dict]:
    """(rows, manifest) of a committed run: exactly the parts its manifest lists, each checked
    against its recorded hash, and the row count against the manifest's."""
    rel = run_dir(run)
    manifest = store.manifest(rel)   # StorageError unless committed
    parts = manifest.get("parts")
    if not parts:
        raise StorageError(f"{store.full_uri(rel)}: its manifest lists no part files")
    if missing := sorted(parts.keys() - set(store.list(rel))):
        raise StorageError(f"{store.full_uri(rel)}: part {missing[0]} is missing ({len(missing)} of {len(parts)} "
                           f"committed parts): {repair_hint(run, manifest)}")
    table, hashes = read_parts(store, run, sorted(parts), columns)
    changed = [name for name in sorted(parts) if hashes[name] != parts[name]]
    if changed:
        raise StorageError(f"{store.full_uri(rel)}: part {changed[0]} differs from the one committed "
                           f"({len(changed)} changed): {repair_hint(run, manifest)}")
    if table.num_rows != manifest.get("rows", table.num_rows):
        raise StorageError(f"{store.full_uri(rel)}: {table.num_rows} rows, the manifest says {manifest['rows']}")
    return table, manifest
