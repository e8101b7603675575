"""Sequential recommender backbones; each shares the verbs loss / score_all / user_vector."""
from srs.models.sasrec import SASRec

__all__ = ["SASRec"]
