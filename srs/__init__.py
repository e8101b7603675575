"""Sequential recommenders (SASRec, GRU4Rec, BERT4Rec) over pluggable item embeddings, trained through Ray Train."""
from srs.data import SeqTensors, build_tensors
from srs.fusion import SOURCES, ItemEmbedding, SourceInputs, build_item_embedding
from srs.metrics import ALL_METRICS, METRICS, popularity_baseline, summarize, target_ranks
from srs.models import MODELS, BERT4Rec, GRU4Rec, SASRec
from srs.train import SRSResult, evaluate, fit, popularity_metrics, train_srs

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
    "train_srs",
]
