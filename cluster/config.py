"""The one config (ray_config.yaml), validated before any work starts.

Every knob has a default that works on the embedded default (2 CPU cores, local files).
A bad file or value fails with the key path and the problem, never halfway through a job.
"""
from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Annotated, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """Raised for an unreadable or invalid config; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RayConfig(_Section):
    address: str = Field("local", description="'local' starts an embedded Ray; 'auto' or ray://host:port joins a cluster.")
    num_cpus: int | None = Field(None, ge=1, description="CPUs for an embedded Ray (None: all).")
    object_store_memory_mb: int = Field(512, ge=64, description="Object store size for an embedded Ray.")
    verbose: bool = Field(False, description="Show Ray's own output too: worker logs, Ray Train's per-epoch lines and "
                          "Ray Data's progress (--verbose). Off, a job prints its own lines and progress bars only.")
    log_to_driver: bool | None = Field(None, description="Forward worker stdout/stderr to the driver (None: with verbose).")


class S3Config(_Section):
    endpoint: str | None = Field(None, description="S3-compatible endpoint, e.g. http://127.0.0.1:8333 (None: AWS).")
    region: str = "us-east-1"
    access_key: SecretStr | None = Field(None, description="Falls back to AWS_ACCESS_KEY_ID (the only way on a "
                                         "cluster: see SECRET_ENV).")
    secret_key: SecretStr | None = Field(None, description="Falls back to AWS_SECRET_ACCESS_KEY (the only way on a "
                                         "cluster: see SECRET_ENV).")


STORAGE_URI_FORMS = "a local path (./store, /data/store, file:///data/store) or s3://bucket[/prefix]"


def check_storage_uri(uri: str) -> str:
    """`uri` if it is one of STORAGE_URI_FORMS. Anything else that looks like a scheme (s3:/bucket, gs://,
    store:v2) is refused rather than taken for a local folder named after it."""
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):", uri)
    if (not uri.strip() or scheme and not uri.startswith(("s3://", "file://"))
            or uri.startswith("s3://") and not uri[len("s3://"):].strip("/")):
        raise ValueError(f"unsupported storage URI {uri!r}: use {STORAGE_URI_FORMS}")
    return uri


class StorageConfig(_Section):
    uri: str = Field("./store", description="Root of all outputs: a local path or s3://bucket/prefix.")
    shared: bool = Field(False, description="The local uri is a filesystem every Ray node mounts at that path "
                         "(NFS, EFS, ...); without it a cluster of several nodes needs s3://.")
    s3: S3Config = S3Config()

    _uri = field_validator("uri")(check_storage_uri)


class DatasetConfig(_Section):
    name: str = Field("synthetic", description="synthetic | ml-100k | amazon-beauty | amazon-scientific-mini | a directory of items + interactions files.")
    data_root: str | None = Field(None, description="Folder holding the real data sets (default: $DATA_ROOT, then ../shared/data).")
    min_interactions: int = Field(5, ge=1, description="k of the k-core filter on users and items.")
    synthetic_items: int = Field(600, ge=20)
    synthetic_users: int = Field(1500, ge=10)
    seed: int = 42

    def resolved_data_root(self) -> Path:
        root = self.data_root or os.environ.get("DATA_ROOT")
        if root:
            return Path(root)
        return Path(__file__).resolve().parents[2] / "shared" / "data"


class ModelConfig(_Section):
    path: str = Field("smollm2", description="'smollm2' (the packaged default) or a Hugging Face checkpoint directory.")
    engine: Literal["auto", "hf", "vllm"] = Field("auto", description="auto: vllm with a GPU, hf on CPU.")
    max_prompt_tokens: int = Field(128, ge=8, description="Longer prompts are truncated (and counted).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    cache_dir: str | None = Field(None, description="Where the converted default model is cached (default ~/.cache/guidedrec).")
    tensor_parallel_size: int = Field(1, ge=1, description="vLLM tensor parallelism for models larger than one GPU; "
                                      "set embed.gpus_per_actor to match.")
    memory_fraction: float | None = Field(
        None, gt=0, le=1, description="vLLM gpu_memory_utilization; on CPU it is a fraction of host memory "
        "(None: 0.9 with a GPU, 0.2 on CPU, where other processes share the RAM).")


class EmbedConfig(_Section):
    batch_size: int = Field(32, ge=1, description="Prompts per forward pass.")
    block_size: int = Field(512, ge=1, description="Items per input block: the unit of work, of part files and of resume.")
    actors: int = Field(1, ge=1, description="Engine actors (one model each).")
    cpus_per_actor: float = Field(1.0, gt=0, description="Keep below the node's CPUs so read/write tasks can run.")
    gpus_per_actor: float = Field(0.0, ge=0)
    threads_per_actor: int = Field(2, ge=1, description="torch threads per actor.")
    attributes: list[str] | None = Field(None, description="GER attributes to score (None: the domain's default list); "
                                         "scoring runs with --attributes.")
    run: str | None = Field(None, description="Name of the embeddings run (default: derived from model + dataset).")


class IndexConfig(_Section):
    factory: str = Field("Flat", description="faiss.index_factory string, e.g. Flat, HNSW32, IVF256,Flat, IVF256,PQ32.")
    metric: Literal["ip", "cosine", "l2"] = "cosine"
    nprobe: int | None = Field(None, ge=1, description="IVF lists probed per query (None: 1/16 of the lists, at least 8).")
    ef_search: int | None = Field(None, ge=1, description="HNSW efSearch (None: 128).")
    recall_sample: int = Field(500, ge=0, description="Indexed vectors used as queries to measure recall@10 "
                               "against exact search at build time (costs sample x items x dims; 0: skip).")


@functools.cache
def backbone_defaults(model: str) -> dict:
    """srs/defaults/<model>.yaml, the backbone's measured training defaults. Read by path: cluster
    sits below srs and does not import it (the files ship as srs package data)."""
    return yaml.safe_load((Path(__file__).resolve().parents[1] / "srs" / "defaults" / f"{model}.yaml").read_text())


class SRSConfig(_Section):
    """Keys without a default here (loss, dropout, epochs, patience) take the backbone's
    (backbone_defaults) unless set; a set value always wins."""

    model: Literal["sasrec", "gru4rec", "bert4rec"] = "sasrec"
    sources: list[Literal["id", "llm-frozen", "llmemb", "ger", "tslrec", "llmesr"]] = Field(
        default_factory=lambda: ["id", "llmesr"],
        description="One model per source; the service serves the best by validation NDCG@10. llmesr is the LLM "
        "source that beat ID-only in benchmarks/RESULTS.md (llmemb, an LLM-only table, is about 3x worse).")
    loss: Literal["bce", "ce"] | None = Field(
        description="sasrec/gru4rec: bce (one sampled negative) or ce (full softmax); bert4rec: ce (cloze) only. "
        "None (configs from before the backbone defaults): bce, and ce for bert4rec.")
    mask_prob: float = Field(0.2, gt=0, lt=1, description="BERT4Rec cloze masking probability.")
    ranking: Literal["full", "sampled"] = Field("full", description="full: all items; sampled: 1 positive + 100 sampled negatives.")
    align_alpha: float = Field(0.01, ge=0, description="LLMEmb alignment loss weight (0: the 'no alignment' ablation).")
    align_gamma: float = Field(1.0, gt=0, description="LLMEmb alignment InfoNCE temperature.")
    llmemb_adapter: bool = Field(True, description="False: LLMEmb 'no adapter' ablation (PCA straight to hidden_size).")
    llmemb_freeze: bool = Field(True, description="False: LLMEmb 'unfrozen LLM emb' ablation (PCA'd embeddings trained).")
    cold_items: float = Field(0.0, ge=0, lt=1, description="Cold-item protocol: this share of the items (seeded by "
                              "seed) is left out of training and validation, as items added after training are; the "
                              "test reports cold/ and warm/ metrics by the target's kind. 0: off.")
    id_init: Literal["random", "llm-pca"] = Field(
        "random", description="The id source's table: N(0, 0.02), or initialised from the PCA of the LLM embeddings "
        "(LLM-ESR's ID view; then it reads the embeddings run).")
    text_dropout: float = Field(0.2, ge=0, lt=1, description="ID tables initialised from text (llmesr, id with "
                                "llm-pca): the share of items that, each step, use the row their text predicts "
                                "instead of their own, so items added after training rank by their text "
                                "(DropoutNet). 0: no text dropout; the text map is a ridge fit after training.")
    text_map_steps: int = Field(300, ge=0, description="With text_dropout: N > 0 trains the text map alone for N "
                                "optimizer steps over the trained, frozen model, which then ranks warm items exactly "
                                "as without text dropout; 0 trains it with the model.")
    cold_knn: int = Field(0, ge=0, description="ID tables initialised from text: k > 0 gives an item training never "
                          "saw (cold, or added after training) the mean trained row of the k known items nearest to it "
                          "by text (cosine of the whitened PCA'd embeddings) instead of the row the text map predicts; "
                          "no text dropout or map training then. 0: the text map.")
    semantic_boost: Annotated[float, Field(ge=0)] | Literal["auto"] = Field(
        0.0, description="llmesr: once trained, the semantic-view score of a tail item (outside the 20% most popular "
        "in training) or of an item added after training is weighted by 1 + b: they lean on their text. Training is "
        "unchanged. 0: off. auto: the largest b of 0.1, 0.25, 0.5, 1 whose validation NDCG@10 stays within "
        "boost_tolerance of b = 0's (the best b differs by backbone).")
    boost_tolerance: float = Field(0.01, ge=0, lt=1, description="semantic_boost auto: the share of validation "
                                   "NDCG@10 the boost may cost.")
    view_attention: bool = Field(False, description="llmesr: before the backbone, each view's item sequence attends "
                                 "to the other view's (LLM-ESR's cross-attention; causal for SASRec and GRU4Rec). Sources with one view ignore it.")
    distill_weight: float = Field(0.0, ge=0, description="LLM-ESR's retrieval-augmented self-distillation (sources "
                                  "that read LLM embeddings): the weight of the squared distance between a training "
                                  "row's user vector and the mean of its distill_users most similar rows' (no "
                                  "gradient), similarity = cosine of the rows' mean LLM item embeddings. 0: off.")
    distill_users: int = Field(10, ge=1, description="With distill_weight: similar rows per row (each costs a forward "
                               "pass per step).")
    tslrec_clusters: int = Field(16, ge=2, description="TSLRec latent categories (k-means of the ID model's items).")
    hidden_size: int = Field(64, ge=8)
    max_len: int = Field(50, ge=2)
    position_from: Literal["last", "first"] = Field(
        "last", description="SASRec/BERT4Rec position embeddings counted from the most recent item (the SASRec paper's "
        "choice) or from the sequence's first item (RecBole's; then a prefix's state does not depend on later items).")
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(1, ge=1)
    dropout: float = Field(ge=0, lt=1)
    pca_dim: int = Field(128, ge=2, description="LLMEmb intermediate size d_m.")
    pca_whiten: bool = Field(False, description="Scale every principal component of the LLM embeddings to unit "
                             "variance before use (BERT-whitening), in every source that reduces them by PCA.")
    epochs: int = Field(ge=1)
    patience: int = Field(ge=1, description="Epochs without a better validation NDCG@10 before stopping. Think in "
                          "optimizer steps: an ml-100k epoch is 8, and runs there need 40 to outlast validation plateaus.")
    batch_size: int = Field(256, ge=1, description="Sequences per optimizer step, split evenly across the "
                            "num_workers workers, so more workers give the same training (not a larger batch).")
    lr: float = Field(1e-3, gt=0)
    num_workers: int = Field(1, ge=1, description="Ray Train workers.")
    threads_per_worker: int = Field(1, ge=1)
    seed: int = 42

    @model_validator(mode="before")
    @classmethod
    def _backbone_defaults(cls, data):
        """An unknown model takes sasrec's, so that it fails on its own key alone."""
        if not isinstance(data, dict):
            return data
        backbone = cls.model_fields["model"]
        model = data.get("model", backbone.default)
        return {**backbone_defaults(model if model in get_args(backbone.annotation) else backbone.default), **data}

    @field_validator("sources")
    @classmethod
    def _non_empty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("list at least one embedding source")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "SRSConfig":
        if self.model == "bert4rec" and self.loss == "bce":
            raise ValueError("bert4rec trains with its cloze cross-entropy: use loss: ce or leave it unset")
        return self

    @property
    def resolved_loss(self) -> str:
        return self.loss or ("ce" if self.model == "bert4rec" else "bce")


class ServeConfig(_Section):
    host: str = Field("127.0.0.1", description="Interface the HTTP service binds (0.0.0.0 to serve other machines).")
    port: int = Field(8000, ge=1, le=65535)
    token: SecretStr | None = Field(None, description="Bearer token the query endpoints require (None: no auth; "
                                    "falls back to $GUIDEDREC_TOKEN, to keep it out of this file).")
    poll_seconds: float = Field(5.0, gt=0, le=86400, allow_inf_nan=False,
                                description="How often storage is checked for a new CURRENT index or SRS model "
                                "(at most a day).")
    max_k: int = Field(100, ge=1, description="Largest k a request may ask for.")
    model_source: str | None = Field(
        None, description="Embedding source of the SRS model /recommend uses, e.g. id (None: the published "
        "source with the best validation NDCG@10).")

    @field_validator("token")
    @classmethod
    def _token_not_blank(cls, v: SecretStr | None) -> SecretStr | None:
        """An empty token would turn authentication off without a word."""
        if v is not None and not v.get_secret_value().strip():
            raise ValueError("the token is empty: set a non-empty token or remove the key (no auth)")
        return v


class FinetuneConfig(_Section):
    """LoRA fine-tuning jobs (jobs.finetune): one section for the three objectives, small enough for 2 CPU cores."""

    lora_r: int = Field(8, ge=1, le=16, description="LoRA rank; at most 16, the max_lora_rank the embedding job's vLLM engine starts with.")
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    lora_targets: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Module names LoRA wraps: attention and MLP projections (Llama-style names).")
    lr: float = Field(2e-4, gt=0, description="AdamW learning rate of the LoRA weights and the objective's heads.")
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, gt=0, description="Global gradient-norm clip.")
    batch_size: int = Field(8, ge=2, description="Examples per optimizer step (items for SCFT, users for GER/TSLRec), "
                            "split evenly across the num_workers workers, as srs.batch_size is; at least 2 per worker, "
                            "the in-batch negatives need company.")
    max_steps: int = Field(200, ge=1, description="Optimizer steps (--max-steps overrides).")
    checkpoint_every: int = Field(50, ge=1, description="Steps between checkpoints in storage (and the last step always).")
    log_every: int = Field(10, ge=1, description="Steps between progress reports (the driver's bar; worker lines with --verbose).")
    num_workers: int = Field(1, ge=1, description="Ray Train workers (gradients are averaged across them).")
    threads_per_worker: int = Field(2, ge=1, description="torch threads per worker.")
    gradient_checkpointing: bool = Field(
        True, description="Keep only each layer's input for the backward pass and recompute the rest there: about a "
        "third more compute, and activation memory no longer grows with layers x tokens (a GER step of 8 users "
        "held some 11 GB without it).")
    max_examples: int | None = Field(None, ge=2, description="Train on the first N examples only (smoke tests; None: all).")
    seed: int = 42
    drop_ratio: float = Field(0.3, ge=0, lt=1, description="SCFT: share of attribute clauses dropped per view "
                              "(of words, for an item with a single clause).")
    temperature: float = Field(0.05, gt=0, description="SCFT: initial InfoNCE temperature (trainable).")
    ger_rec_weight: float = Field(1.0, ge=0, description="GER: weight of the recommendation loss beside the format loss.")
    ger_history: int = Field(10, ge=1, description="GER: recent items in a user's profile prompt.")
    tslrec_history: int = Field(20, ge=1, description="TSLRec: most recent items per user in the SFT prompt. "
                                "Its K categories are srs.tslrec_clusters (the SRS source uses the same K).")
    tslrec_srs_epochs: int = Field(10, ge=1, description="TSLRec: epochs of the ID SASRec whose items are clustered.")

    @field_validator("lora_targets")
    @classmethod
    def _some_targets(cls, v: list[str]) -> list[str]:
        if not v or not all(isinstance(t, str) and t for t in v):
            raise ValueError("list at least one module name for LoRA, e.g. q_proj")
        return v

    @model_validator(mode="after")
    def _batch_fits_workers(self) -> "FinetuneConfig":
        if self.batch_size < 2 * self.num_workers:
            raise ValueError(f"batch_size {self.batch_size} is split across {self.num_workers} workers: each needs at "
                             f"least 2 examples for its in-batch negatives, so use batch_size >= {2 * self.num_workers}")
        return self


class InterpretConfig(_Section):
    """RecInterpreter (jobs.interpret, `guidedrec describe`): a linear adapter from a frozen published SRS's
    states to a few input-token embeddings of the frozen LLM (model.path). Steps, batch size and learning rate
    are finetune's: the interpreter runs in the same fine-tuning loop, training its adapter only."""

    task: Literal["residual", "recovery"] = Field(
        "residual", description="residual: the states before and after one interaction -> the added item's title; "
        "recovery: one state -> the titles of its most recent items (--task overrides).")
    source: str = Field("id", description="Embedding source of the published SRS model (srs.model's backbone, "
                        "trained by `guidedrec train`) whose states are read.")
    tokens: int = Field(4, ge=1, le=64, description="LLM input positions one SRS state becomes.")
    history: int = Field(10, ge=1, description="recovery: most recent items of a history its target lists.")
    max_new_tokens: int = Field(96, ge=4, le=512, description="Targets are cut to this many tokens; it is "
                                "recorded with the adapter, and `describe` (CLI and service) generates at most that many.")


class Config(_Section):
    ray: RayConfig = RayConfig()
    storage: StorageConfig = StorageConfig()
    dataset: DatasetConfig = DatasetConfig()
    model: ModelConfig = ModelConfig()
    embed: EmbedConfig = EmbedConfig()
    index: IndexConfig = IndexConfig()
    srs: SRSConfig = SRSConfig()
    serve: ServeConfig = ServeConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    interpret: InterpretConfig = InterpretConfig()


# Every credential a config may hold, and the environment variable read where the config does not give it. Only
# the process that loads the config holds them: a config never goes to Ray with them (Ray Train records a run's
# config, a Serve app is pickled into Ray's store), so Ray's workers and Serve's replicas read the variables.
SECRET_ENV = {"storage.s3.access_key": "AWS_ACCESS_KEY_ID", "storage.s3.secret_key": "AWS_SECRET_ACCESS_KEY",
              "serve.token": "GUIDEDREC_TOKEN"}
TOKEN_ENV = SECRET_ENV["serve.token"]


def _split_secrets(cfg: Config) -> tuple[Config, dict[str, str]]:
    """(`cfg` without credentials, {environment variable: value} of those it held)."""
    data, found = cfg.model_dump(), {}
    for dotted, env in SECRET_ENV.items():
        *parents, leaf = dotted.split(".")
        node = data
        for name in parents:
            node = node[name]
        if node[leaf] is not None:
            found[env] = node[leaf].get_secret_value()
        node[leaf] = None
    return Config.model_validate(data), found


def without_secrets(cfg: Config) -> Config:
    """`cfg` with no credentials: the only form of it that may go to Ray."""
    return _split_secrets(cfg)[0]


def export_secrets(cfg: Config) -> Config:
    """Move the config's credentials into this process's environment, which the Ray this process starts (its
    workers, Serve's replicas) inherits, as pyarrow, boto3 and the service read it; returns `cfg` without them.
    (A Ray runtime_env would do the same, but Ray writes runtime envs into its logs and job table.)"""
    public, found = _split_secrets(cfg)
    os.environ.update(found)
    return public


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load that refuses a key given twice in one mapping (YAML loaders keep the last one silently,
    so an edit lower in the file would quietly win)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str):   # config keys; anything else is refused by validation anyway
                if key in seen:
                    raise yaml.constructor.ConstructorError("while constructing a mapping", node.start_mark,
                                                            f"found duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


def _format(err: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        lines.append(f"  {key}: {e['msg']}")
    return "\n".join(lines)


def load_config(path: str | os.PathLike | None = None, overrides: dict | None = None) -> Config:
    """Load and validate a config file (None: all defaults), then apply dotted-key overrides."""
    data: dict = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        try:
            data = yaml.load(Path(path).read_text(), Loader=_UniqueKeyLoader) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format(e, source)) from None
