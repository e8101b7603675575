"""Sequential recommenders (SASRec, GRU4Rec, BERT4Rec) over pluggable item embeddings, trained
through Ray Train (train_srs) or in-process without Ray (train_local)."""
from srs.data import SeqTensors, build_tensors
from srs.fit import SRSResult, evaluate, fit, popularity_metrics, train_local
from srs.fusion import SOURCES, ItemEmbedding, SourceInputs, build_item_embedding
from srs.metrics import ALL_METRICS, METRICS, popularity_baseline, summarize, target_ranks
from srs.models import MODELS, BERT4Rec, GRU4Rec, SASRec

__all__ = [
    "ALL_METRICS",
    "METRICS",
    "MODELS",
    "SOURCES",
    "BERT4Rec",
    "GRU4Rec",
    "ItemEmbedding",
    "SASRec",
    "SRSResult",
    "SeqTensors",
    "SourceInputs",
    "build_item_embedding",
    "build_tensors",
    "evaluate",
    "fit",
    "popularity_baseline",
    "popularity_metrics",
    "summarize",
    "target_ranks",
    "train_local",
    "train_srs",
]


def __getattr__(name: str):
    """train_srs imports Ray: only when asked for, so the rest of the package runs where Ray is not installed."""
    if name == "train_srs":
        from srs.train import train_srs

        return train_srs
    raise AttributeError(f"module 'srs' has no attribute {name!r}")
