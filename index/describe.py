"""What a user state holds, in words: the RecInterpreter adapter (llm.soft_prompt, trained by finetune.interpret) reads the SRS
state of a history into the frozen LLM, which generates text greedily; the catalog items the text
names are found by their titles.

What is described depends on the task the adapter learned:
- residual: the states before and after the history's last item -> that item's title;
- recovery: the state after the history -> the titles of its recent items, "; "-separated.

Naming: the text is split at ";" and each part is compared with the catalog titles, both
normalized (lower case, runs of anything but letters and digits as one space). An exact normalized
match wins; otherwise the title with the highest difflib ratio, if it is at least MIN_SIMILARITY;
otherwise the part names no item. Items sharing a title are found as the first of them.
"""
from __future__ import annotations

import difflib
import re

import torch
from pydantic import BaseModel, Field

from catalog import item_name, user_sequences
from cluster.config import Config, ModelConfig
from cluster.layout import catalog_file, catalog_name, interpreter_dir, live_catalog_file, run_name
from cluster.storage import StorageError, Store
from index.recommender import Recommender
from llm.causal import frozen_lm
from llm.soft_prompt import HEADS, StateAdapter, generate, prompt_embeddings, prompt_pieces
from srs.published import NoModelError, find_model, load_model, srs_states

MIN_SIMILARITY = 0.6   # difflib's get_close_matches default: below it a part names nothing


class NoInterpreterError(StorageError):
    """No interpreter adapter (or no SRS model for it) is published; the message says what to run."""


class InterpreterMismatch(ValueError):
    """The adapter was trained for another SRS model or LLM than the one it would read now."""


class NamedItem(BaseModel):
    item_id: str
    title: str
    named: str = Field(description="The part of the text that names it.")
    similarity: float = Field(description="1 for an exact (normalized) title match, else difflib's ratio to the "
                                          f"nearest title (at least {MIN_SIMILARITY}).")


class Description(BaseModel):
    task: str = Field(description="residual: the text names the history's last item; recovery: its recent items.")
    text: str = Field(description="What the LLM generated from the SRS state(s).")
    items: list[NamedItem] = Field(description="The catalog items the text names, in the order named.")


def normalize(title: str) -> str:
    return re.sub(r"[^0-9a-z]+", " ", title.lower()).strip()


class TitleMatcher:
    """The catalog items a generated text names (see the module docstring)."""

    def __init__(self, titles: dict[str, str]):
        self.titles = titles
        self.exact: dict[str, str] = {}
        for item, title in titles.items():
            self.exact.setdefault(normalize(title), item)
        self.keys = list(self.exact)

    def nearest(self, part: str) -> tuple[str, float] | None:
        """(item, similarity) of the title `part` names, or None."""
        key = normalize(part)
        if key in self.exact:
            return self.exact[key], 1.0
        close = difflib.get_close_matches(key, self.keys, n=1, cutoff=MIN_SIMILARITY) if key else []
        return (self.exact[close[0]], difflib.SequenceMatcher(None, key, close[0]).ratio()) if close else None

    def match(self, text: str) -> list[NamedItem]:
        found: dict[str, NamedItem] = {}
        for part in text.split(";"):
            if hit := self.nearest(part):
                found.setdefault(hit[0], NamedItem(item_id=hit[0], title=self.titles[hit[0]], named=part.strip(),
                                                   similarity=round(hit[1], 4)))
        return list(found.values())


class Interpreter:
    """A published interpreter adapter with the SRS model and the LLM it was trained with."""

    def __init__(self, manifest: dict, adapter: StateAdapter, srs: Recommender, lm, tokenizer, where: str):
        self.task, self.max_new_tokens, self.history = manifest["task"], manifest["max_new_tokens"], manifest["history"]
        self.adapter, self.srs, self.lm, self.tokenizer, self.where = adapter, srs, lm, tokenizer, where
        width = srs_states(srs.model, srs.max_len, [[1]]).shape[1]
        if adapter.project.in_features != width:
            raise InterpreterMismatch(f"the interpreter {where} reads {adapter.project.in_features}-dim SRS states, "
                                      f"the SRS model {srs.where} gives {width}: run `guidedrec interpret` again")
        hidden = lm.get_input_embeddings().embedding_dim
        if adapter.project.out_features != adapter.tokens * hidden:
            raise InterpreterMismatch(f"the interpreter {where} writes {adapter.project.out_features // adapter.tokens}"
                                      f"-wide token embeddings, the LLM {manifest['model']} takes {hidden}: "
                                      "run `guidedrec interpret` again with this model")
        self.pieces = prompt_pieces(tokenizer, self.task)

    @classmethod
    def load(cls, adapter: Store, models: Store, run: str, model_cfg: ModelConfig) -> Interpreter:
        """The interpreter committed at `adapter` over the SRS models of `run`'s lineage in `models`; the LLM is
        the one it was trained with (model_cfg gives the rest: cache dir, dtype)."""
        from safetensors.torch import load as load_safetensors

        if not adapter.is_committed(""):
            raise NoInterpreterError(f"no interpreter adapter at {adapter.uri}: run `guidedrec interpret`")
        manifest = adapter.manifest("")
        if manifest.get("objective") != "interpret":
            raise NoInterpreterError(f"{adapter.uri} holds a {manifest.get('objective')} adapter, not an interpreter: "
                                     "run `guidedrec interpret`")
        trained = manifest["srs"]
        try:
            rel = find_model(models, run, trained["source"])
        except NoModelError as e:
            raise NoInterpreterError(str(e)) from None
        if rel != trained["dir"]:
            raise InterpreterMismatch(f"the interpreter {adapter.uri} was trained on the SRS {trained['dir']}, "
                                      f"not {rel}: run `guidedrec interpret` for this data set")
        if not models.exists(f"{rel}/{trained['version']}/srs.json"):
            raise InterpreterMismatch(f"the interpreter {adapter.uri} was trained on version {trained['version']} of "
                                      f"{models.full_uri(rel)}, which is no longer published (now "
                                      f"{models.manifest(rel)['version']}): run `guidedrec interpret` again")
        model, srs_cfg, item_ids, source, where = load_model(models, rel, trained["version"])
        lm, tokenizer = frozen_lm(model_cfg.model_copy(update={"path": manifest["model"]}), "cpu")
        weights = load_safetensors(adapter.read_bytes(HEADS))
        return cls(manifest, StateAdapter.from_weights(weights, manifest["tokens"]),
                   Recommender(model, srs_cfg.max_len, item_ids, source, where), lm, tokenizer, adapter.uri)

    def groups(self, history: list[str]) -> list[list[int]]:
        """The model-index histories whose states the task reads (KeyError: an item unknown to the SRS)."""
        encoded = self.srs.encode(history)
        if self.task == "recovery":
            return [encoded]
        if len(encoded) < 2:
            raise ValueError("a residual interpreter reads the states before and after the history's last item: "
                             "give at least 2 items")
        return [encoded[:-1], encoded]

    @torch.inference_mode()
    def read(self, states: torch.Tensor) -> list[str]:
        """Generated texts of states [B, G, d] (G: the task's states per example)."""
        prompt = prompt_embeddings(self.lm, self.pieces, self.adapter(states))
        return generate(self.lm, self.tokenizer, prompt, self.max_new_tokens)

    def describe(self, history: list[str], matcher: TitleMatcher) -> Description:
        """The text for the state(s) of `history` (item ids, oldest first) and the items it names."""
        if not history:
            raise ValueError("the history is empty")
        states = torch.from_numpy(srs_states(self.srs.model, self.srs.max_len, self.groups(history)))
        text = self.read(states.unsqueeze(0))[0]
        return Description(task=self.task, text=text, items=matcher.match(text))


def catalog_titles(cfg: Config, store: Store) -> dict[str, str]:
    """Item id -> name (catalog.item_name) over the live catalog in storage."""
    return {r["item_id"]: item_name(r) for r in store.read_parquet(live_catalog_file(cfg, store)).to_pylist()}


def describe_catalog_user(cfg: Config, store: Store, user_id: str, adapter: Store | None = None) -> Description:
    """`guidedrec describe`: a catalog user's whole history read by the interpreter (default: the one over
    this data set's SRS models, interpreter_dir in `store`)."""
    history = user_sequences(store.read_parquet(catalog_file(catalog_name(cfg), "interactions"))).get(user_id)
    if history is None:
        raise KeyError(f"user {user_id!r} is not in the interactions of catalog {catalog_name(cfg)}")
    run = run_name(cfg)
    interpreter = Interpreter.load(adapter or store.sub(interpreter_dir(run)), store, run, cfg.model)
    return interpreter.describe(history, TitleMatcher(catalog_titles(cfg, store)))
