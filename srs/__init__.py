"""Sequential recommenders (SASRec, GRU4Rec, BERT4Rec) over pluggable item embeddings, trained by
`train(..., runner="ray")` through Ray Train or `runner="local"` in this process."""
from srs.data import SeqTensors, build_tensors
from srs.fusion import SOURCES, ItemEmbedding, SourceInputs, build_item_embedding
from srs.loop import Fitted, Worker, build_model, evaluate, fit
from srs.metrics import ALL_METRICS, METRICS, popularity_baseline, popularity_metrics, summarize, target_ranks
from srs.models import MODELS, BERT4Rec, GRU4Rec, SASRec
from srs.runners import RUNNERS, SRSResult, train
from srs.state import TrainState

__all__ = [
    "ALL_METRICS",
    "METRICS",
    "MODELS",
    "RUNNERS",
    "SOURCES",
    "BERT4Rec",
    "Fitted",
    "GRU4Rec",
    "ItemEmbedding",
    "SASRec",
    "SRSResult",
    "SeqTensors",
    "SourceInputs",
    "TrainState",
    "Worker",
    "build_item_embedding",
    "build_model",
    "build_tensors",
    "evaluate",
    "fit",
    "popularity_baseline",
    "popularity_metrics",
    "summarize",
    "target_ranks",
    "train",
]
