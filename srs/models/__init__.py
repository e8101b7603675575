"""Sequential recommender backbones; each shares the verbs loss / score_all / user_vector."""
from collections.abc import Callable

from cluster.config import SRSConfig
from srs.fusion import ItemEmbedding
from srs.models.base import SeqRecommender
from srs.models.bert4rec import BERT4Rec
from srs.models.gru4rec import GRU4Rec
from srs.models.sasrec import SASRec

MODELS: dict[str, Callable[[ItemEmbedding, SRSConfig], SeqRecommender]] = {
    "sasrec": SASRec, "gru4rec": GRU4Rec, "bert4rec": BERT4Rec,
}

__all__ = ["MODELS", "BERT4Rec", "GRU4Rec", "SASRec", "SeqRecommender"]
