"""Sequential recommenders (SASRec) with pluggable item embeddings, trained through Ray Train."""
from srs.data import SeqTensors, build_tensors
from srs.fusion import SOURCES, ItemEmbedding, build_item_embedding
from srs.metrics import METRICS, popularity_baseline, summarize, target_ranks
from srs.models.sasrec import SASRec
from srs.train import SRSResult, evaluate, popularity_metrics, train_srs

__all__ = [
    "METRICS",
    "SOURCES",
    "ItemEmbedding",
    "SASRec",
    "SRSResult",
    "SeqTensors",
    "build_item_embedding",
    "build_tensors",
    "evaluate",
    "popularity_baseline",
    "popularity_metrics",
    "summarize",
    "target_ranks",
    "train_srs",
]
