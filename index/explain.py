"""Why an item suits a user, in GER's terms: the user's and the item's attribute scores side by side.

Both sides are z-scores per attribute (llm.attributes.standardize), each over its own population:
items over their attributes run, stored user profiles over the users run (a profile prompt reads
differently from an item prompt, so raw user and item scores differ by an offset that says nothing
about the user). "High" thus means high among peers. Per attribute:
- difference = item - user: GER's normalized difference (its Figure 5), how far apart the two are
  in standard deviations of the attribute;
- support = user * item = (user^2 + item^2 - difference^2) / 2: positive where item and user lean
  the same way, the more the further both lean (both near average says little however close they
  are), negative where they lean opposite ways. It is also what the attribute adds to the dot
  product of the two profiles.
The (up to) three attributes of largest positive support support the item; the three most
negative oppose it.

A user's profile is their stored one (`guidedrec embed --attributes --users`, read from their
recent training items) where it has scores, else the mean of their history items' z-scores, which
is the z-score of their mean raw score under the items' statistics (so it reads on the items' axis).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from catalog import user_sequences
from cluster.config import Config
from cluster.layout import (attributes_run, catalog_file, catalog_name, live_catalog_file, live_run, run_dir,
                            users_run)
from cluster.storage import StorageError, Store
from llm.attributes import standardize
from llm.runs import read_attributes, read_profiles

TOP = 3


class NoAttributesError(StorageError):
    """The run has no attribute scores; the message says what to run."""


class UnscoredError(ValueError):
    """An item (or every item of a history) has no attribute scores; the message says why."""


class AttributeScore(BaseModel):
    name: str
    user: float = Field(description="The user's z-score on the attribute.")
    item: float = Field(description="The item's z-score on the attribute.")
    user_score: float | None = Field(None, description="The user's 1-9 score (mean over the history for a "
                                                       "history profile).")
    item_score: float | None = Field(None, description="The item's 1-9 score.")
    difference: float = Field(description="GER's normalized difference: item - user, in standard deviations.")
    support: float = Field(description="user * item: > 0 where both lean the same way, < 0 where they do not.")


class Reason(BaseModel):
    name: str
    support: float
    sentence: str


class Explanation(BaseModel):
    item_id: str
    profile: str = Field(description="Where the user's scores come from: 'stored' (the users run) or "
                                     "'history of N items'.")
    attributes: list[AttributeScore]
    supporting: list[Reason] = Field(description="Up to three attributes that most support the item, best first.")
    opposing: list[Reason] = Field(description="Up to three attributes that most oppose it, worst first.")


def _level(z: float) -> str:
    for bound, word in ((1.0, "very high"), (0.25, "high"), (-0.25, "about average"), (-1.0, "low")):
        if z >= bound:
            return word
    return "very low"


def _sentence(name: str, user: float, item: float) -> str:
    """One line in words, e.g. 'Very high on humor (+1.30 sd), and the user leans high on it too (+0.40 sd).'"""
    said = f"{_level(item).capitalize()} on {name} ({item:+.2f} sd)"
    lean = "high" if user > 0 else "low"
    if user * item > 0:
        return f"{said}, and the user leans {lean} on it too ({user:+.2f} sd)."
    return f"{said}, but the user leans {lean} on it ({user:+.2f} sd)."


def explain(item_id: str, names: list[str], user: np.ndarray, item: np.ndarray, profile: str,
            user_score: np.ndarray | None = None, item_score: np.ndarray | None = None) -> Explanation:
    """The explanation of `item_id` for a user from both sides' z-scores [A] (and 1-9 scores, if known)."""
    support = user * item
    rows = [AttributeScore(name=n, user=u, item=i, difference=i - u, support=s,
                           user_score=None if user_score is None else float(user_score[k]),
                           item_score=None if item_score is None else float(item_score[k]))
            for k, (n, u, i, s) in enumerate(zip(names, user.tolist(), item.tolist(), support.tolist()))]
    order = np.argsort(-support, kind="stable")

    def reasons(picked: list[int]) -> list[Reason]:
        return [Reason(name=names[k], support=float(support[k]),
                       sentence=_sentence(names[k], float(user[k]), float(item[k]))) for k in picked]

    return Explanation(item_id=item_id, profile=profile, attributes=rows,
                       supporting=reasons([k for k in order if support[k] > 0][:TOP]),
                       opposing=reasons([k for k in order[::-1] if support[k] < 0][:TOP]))


def scores_run(store: Store, run: str) -> str:
    """The committed run holding the attribute scores of embeddings run `run`: the one `guidedrec embed
    --attributes` commits beside it, or `run` itself when it was embedded with them (embed.run set)."""
    for candidate in (attributes_run(run), run):
        if store.is_committed(run_dir(candidate)) and store.manifest(run_dir(candidate)).get("attributes"):
            return candidate
    raise NoAttributesError(f"no attribute scores for embeddings run {run} (nor {attributes_run(run)}): "
                            "run `guidedrec embed --attributes`")


@dataclass(frozen=True)
class Profile:
    """A user's z-scores and 1-9 scores [A], and where they come from."""

    z: np.ndarray
    raw: np.ndarray
    label: str


@dataclass(frozen=True)
class Population:
    """Items' or users' scores on the attributes (raw 1-9 and z-scored; NaN rows: none, for `reasons`)."""

    run: str
    raw: np.ndarray
    z: np.ndarray
    row: dict[str, int]
    reasons: list[str | None]

    @classmethod
    def of(cls, run: str, ids: list[str], raw: np.ndarray, stats: dict, reasons: list | None = None) -> Population:
        return cls(run, raw, standardize(raw, stats["mean"], stats["std"]), {i: k for k, i in enumerate(ids)},
                   reasons or [None] * len(ids))


class Explainer:
    """Explanations over one attributes run (and its user profiles, when scored), for the items `known` to
    the caller (the catalog or the served index): an item known but not in the run has no scores."""

    def __init__(self, names: list[str], items: Population, users: Population | None, known: set[str]):
        self.names, self.items, self.users, self.known = names, items, users, known

    @classmethod
    def load(cls, store: Store, run: str, known: list[str]) -> Explainer:
        """Over the attribute scores of embeddings run `run` (scores_run), and its user profiles if scored."""
        scored = scores_run(store, run)
        ids, raw, names = read_attributes(store, scored)
        items = Population.of(scored, ids, raw, store.manifest(run_dir(scored))["attributes"])
        users = None
        if store.is_committed(run_dir(users_run(scored))):
            user_ids, user_raw, reasons, stats = read_profiles(store, users_run(scored))
            users = Population.of(users_run(scored), user_ids, user_raw, stats, reasons)
        return cls(names, items, users, set(known))

    def history_profile(self, history: list[str]) -> Profile:
        """The profile of the user whose items are `history`: the mean over its items with scores."""
        rows = [self.items.row.get(i) for i in history]
        if unknown := [i for i, r in zip(history, rows) if r is None and i not in self.known]:
            raise KeyError(f"item {unknown[0]!r} of the history is not in the catalog")
        rows = [r for r in rows if r is not None]
        if not rows:
            raise UnscoredError(f"none of the {len(history)} history items has attribute scores in run "
                                f"{self.items.run}: rerun `guidedrec embed --attributes --overwrite`")
        return Profile(self.items.z[rows].mean(0), self.items.raw[rows].mean(0), f"history of {len(rows)} items")

    def user_profile(self, user_id: str, history: list[str]) -> Profile:
        """A catalog user's stored profile where it has scores, else their `history`'s (saying why)."""
        row = self.users.row.get(user_id) if self.users else None
        if row is not None and not np.isnan(self.users.raw[row]).any():
            return Profile(self.users.z[row], self.users.raw[row], "stored")
        why = ("no user profiles scored: `guidedrec embed --attributes --users`" if self.users is None else
               self.users.reasons[row] if row is not None else f"not in {self.users.run}")
        profile = self.history_profile(history)
        return replace(profile, label=f"{profile.label} (no stored profile: {why})")

    def explain(self, profile: Profile, item_id: str) -> Explanation:
        """Explain `item_id` for the user of `profile`; an item the run does not hold has no scores."""
        row = self.items.row.get(item_id)
        if row is None and item_id not in self.known:
            raise KeyError(f"item {item_id!r} is not in the catalog")
        if row is None:
            raise UnscoredError(f"item {item_id!r} has no attribute scores: run {self.items.run} does not hold it "
                                "(added since it was scored): rerun `guidedrec embed --attributes --overwrite`")
        return explain(item_id, self.names, profile.z, self.items.z[row], profile.label, profile.raw,
                       self.items.raw[row])


def explain_catalog_user(cfg: Config, store: Store, user_id: str, item_id: str) -> Explanation:
    """`guidedrec explain`: `item_id` for a user of the published catalog, over the live run's attribute
    scores (a history profile reads all the user's interactions)."""
    known = store.read_parquet(live_catalog_file(cfg, store), columns=["item_id"])["item_id"].to_pylist()
    explainer = Explainer.load(store, live_run(cfg, store), known)
    history = user_sequences(store.read_parquet(catalog_file(catalog_name(cfg), "interactions"))).get(user_id)
    if history is None:
        raise KeyError(f"user {user_id!r} is not in the interactions of catalog {catalog_name(cfg)}")
    return explainer.explain(explainer.user_profile(user_id, history), item_id)


def plot(explanation: Explanation, path: Path) -> None:
    """A horizontal bar chart of the user's and the item's z-scores and their difference, per attribute."""
    import matplotlib

    matplotlib.use("Agg")   # files only, no display
    import matplotlib.pyplot as plt

    rows = explanation.attributes
    y = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.5))
    for shift, label, values in ((-0.27, "user", [r.user for r in rows]), (0.0, "item", [r.item for r in rows]),
                                 (0.27, "difference (item - user)", [r.difference for r in rows])):
        ax.barh(y + shift, values, height=0.27, label=label)
    ax.set_yticks(y, [r.name for r in rows])
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("z-score (standard deviations)")
    ax.set_title(f"{explanation.item_id}: attribute scores ({explanation.profile} profile)")
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
