"""Item catalogs and interaction sequences: loading, validation, prompts and splits."""
from catalog.filtering import LeaveOneOut, k_core, leave_one_out, ranked_items, user_sequences
from catalog.loaders import KNOWN_DATASETS, load_catalog
from catalog.prompts import content_hash, history_text, item_name, item_prompt, profile_prompts, prompt_columns
from catalog.schemas import Catalog

__all__ = [
    "KNOWN_DATASETS",
    "Catalog",
    "LeaveOneOut",
    "content_hash",
    "history_text",
    "item_name",
    "item_prompt",
    "k_core",
    "leave_one_out",
    "load_catalog",
    "profile_prompts",
    "prompt_columns",
    "ranked_items",
    "user_sequences",
]
