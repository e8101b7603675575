"""A synthetic catalog whose item text predicts behaviour, so an LLM embedding of the text carries signal.

Each item belongs to one theme and is written in that theme's vocabulary; each user favours one or two
themes, mostly stays within them (and within the current theme for a while), and prefers popular items.
The next item is therefore predictable from the text of the previous ones, which is what the
LLM-embedding pipeline must be able to exploit. Deterministic for a seed.
"""
from __future__ import annotations

import random
from itertools import accumulate, product

from catalog.build import Interactions, ItemCollector, assemble
from catalog.schemas import Catalog
from cluster.config import DatasetConfig

# theme: (category root, subcategories, brands, adjectives, nouns, uses)
_THEMES: dict[str, tuple[str, list[str], list[str], list[str], list[str], list[str]]] = {
    "camping": ("Outdoors", ["Tents", "Sleeping Gear", "Camp Kitchen"], ["Trailhead", "Pinecrest", "Ridgeline"],
                ["waterproof", "ultralight", "rugged", "insulated", "packable", "weatherproof", "backcountry", "trail-ready"],
                ["tent", "sleeping bag", "lantern", "camp stove", "trekking pole", "bivy sack", "hammock", "water filter",
                 "tarp", "mess kit"], ["overnight hikes", "backcountry camping", "wilderness trips"]),
    "baking": ("Kitchen", ["Bakeware", "Baking Tools", "Pastry Supplies"], ["Oven Joy", "Crumb & Co", "Hearthstone"],
               ["nonstick", "fluted", "springform", "buttery", "golden", "heavy-gauge", "silicone", "artisan"],
               ["loaf pan", "whisk", "rolling pin", "pastry brush", "cake tin", "proofing basket", "muffin tray",
                "dough scraper", "cooling rack", "piping bag"], ["sourdough bread", "layer cakes", "holiday cookies"]),
    "yoga": ("Fitness", ["Yoga Mats", "Meditation", "Yoga Props"], ["Lotus Flow", "Zenith", "Prana Path"],
             ["grippy", "eco-friendly", "cushioned", "breathable", "mindful", "balanced", "flexible", "calming"],
             ["yoga mat", "yoga block", "strap", "bolster", "meditation cushion", "mat towel", "yoga wheel",
              "singing bowl", "eye pillow", "yoga blanket"], ["vinyasa practice", "restorative yoga", "daily meditation"]),
    "astronomy": ("Science", ["Telescopes", "Star Charts", "Optics"], ["Stellar", "Nebula Works", "Orion Optics"],
                  ["refracting", "reflecting", "high-magnification", "equatorial", "celestial", "lunar", "deep-sky",
                   "achromatic"], ["telescope", "eyepiece", "star map", "barlow lens", "planisphere", "tripod mount",
                  "finder scope", "moon filter", "red flashlight", "binocular"],
                  ["stargazing", "planet watching", "astrophotography"]),
    "gardening": ("Garden", ["Planters", "Garden Tools", "Seeds"], ["Green Thumb", "Rootwise", "Bloomfield"],
                  ["organic", "heirloom", "perennial", "drought-tolerant", "terracotta", "ergonomic", "compostable",
                   "raised"], ["trowel", "pruning shears", "watering can", "seed tray", "planter box", "garden hoe",
                  "compost bin", "kneeling pad", "trellis", "hose nozzle"],
                  ["vegetable gardens", "flower beds", "backyard composting"]),
    "coffee": ("Kitchen", ["Coffee Makers", "Grinders", "Coffee Beans"], ["Bean Theory", "Roastery", "Crema Lab"],
               ["single-origin", "dark-roast", "burr", "pour-over", "espresso-grade", "aromatic", "fair-trade",
                "gooseneck"], ["coffee grinder", "french press", "espresso tamper", "milk frother", "pour-over dripper",
               "coffee scale", "moka pot", "cold brew jar", "kettle", "bean canister"],
               ["morning espresso", "slow pour-over", "cold brew batches"]),
    "painting": ("Arts & Crafts", ["Paints", "Brushes", "Canvas"], ["Easel & Ink", "Palette House", "Brushwork"],
                 ["acrylic", "watercolor", "oil-based", "pigmented", "archival", "fine-tip", "primed", "blendable"],
                 ["paint set", "brush set", "canvas panel", "palette knife", "easel", "sketchbook", "gouache tube",
                  "mixing palette", "masking fluid", "varnish"], ["landscape painting", "portrait studies", "plein air sketching"]),
    "cycling": ("Sports", ["Bike Parts", "Cycling Apparel", "Bike Tools"], ["Spoke & Chain", "Velocity", "Crankset"],
                ["aerodynamic", "carbon", "clipless", "tubeless", "reflective", "padded", "lightweight-alloy", "geared"],
                ["bike helmet", "saddle", "pedal set", "bike pump", "chain lube", "handlebar tape", "bike light",
                 "jersey", "multi-tool", "tire lever"], ["road cycling", "mountain biking", "daily bike commutes"]),
    "aquarium": ("Pets", ["Fish Tanks", "Filters", "Aquatic Plants"], ["Reef Realm", "AquaLife", "Tidepool"],
                 ["freshwater", "saltwater", "submersible", "planted", "reef-safe", "bubbling", "tropical", "low-flow"],
                 ["fish tank", "aquarium filter", "air pump", "aquarium heater", "gravel vacuum", "water conditioner",
                  "fish food", "driftwood", "aquarium light", "coral frag"], ["tropical fish", "reef tanks", "planted aquascapes"]),
    "knitting": ("Arts & Crafts", ["Yarn", "Needles", "Patterns"], ["Purl & Loop", "Woolly", "Skein Society"],
                 ["merino", "chunky", "hand-dyed", "alpaca", "circular", "cabled", "cozy", "worsted"],
                 ["yarn skein", "knitting needles", "crochet hook", "stitch marker", "yarn swift", "row counter",
                  "knitting bag", "blocking mat", "cable needle", "pattern book"], ["winter scarves", "baby blankets", "cable sweaters"]),
    "gaming": ("Electronics", ["Controllers", "Headsets", "Gaming Accessories"], ["Pixel Forge", "Respawn Gear", "Hexcore"],
               ["wireless", "rgb", "mechanical", "low-latency", "ergonomic-grip", "surround-sound", "programmable",
                "esports"], ["game controller", "gaming headset", "mechanical keyboard", "gaming mouse", "mouse pad",
               "capture card", "controller charger", "gaming chair", "stream deck", "headset stand"],
               ["competitive shooters", "late-night raids", "live streaming"]),
    "skincare": ("Beauty", ["Cleansers", "Moisturizers", "Serums"], ["Dewy Days", "Botanica", "Glow Ritual"],
                 ["hydrating", "fragrance-free", "exfoliating", "vitamin-c", "gentle", "brightening", "nourishing",
                  "hyaluronic"], ["face serum", "moisturizer", "cleanser", "toner", "eye cream", "sheet mask",
                 "sunscreen", "face oil", "clay mask", "lip balm"], ["dry skin", "sensitive skin", "evening routines"]),
}

_IN_FAVOURITES = 0.85  # chance a step draws from the user's favourite themes
_STAY_IN_THEME = 0.5  # chance a step stays in the previous (favourite) theme, like a shopping session
_POPULARITY_SKEW = 0.8  # Zipf exponent of item popularity inside a theme


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _theme_titles(theme: str, count: int, rng: random.Random) -> list[tuple[str, str, str, str]]:
    """`count` distinct (title, brand, adjective, noun) of a theme; numbered editions once combinations run out."""
    _, _, brands, adjectives, nouns, _ = _THEMES[theme]
    combos = list(product(brands, adjectives, nouns))
    rng.shuffle(combos)
    titles = []
    for i in range(count):
        brand, adjective, noun = combos[i % len(combos)]
        edition = f" Mark {i // len(combos) + 1}" if i >= len(combos) else ""
        titles.append((f"{brand} {adjective.capitalize()} {noun.title()}{edition}", brand, adjective, noun))
    return titles


def _items(n_items: int, rng: random.Random) -> tuple[ItemCollector, list[list[str]]]:
    """The catalog, and per theme its item ids from most to least popular."""
    themes = list(_THEMES)
    width = len(str(n_items))
    members: list[list[str]] = [[] for _ in themes]
    collector = ItemCollector()
    per_theme = [n_items // len(themes) + (t < n_items % len(themes)) for t in range(len(themes))]
    order = [(t, i) for t, n in enumerate(per_theme) for i in range(n)]
    rng.shuffle(order)  # ids do not reveal the theme
    titles = {t: _theme_titles(themes[t], n, rng) for t, n in enumerate(per_theme)}
    for number, (t, i) in enumerate(order, start=1):
        root, subcategories, _, adjectives, nouns, uses = _THEMES[themes[t]]
        title, brand, adjective, noun = titles[t][i]
        item_id = f"p{number:0{width}d}"
        partner = f"{rng.choice(adjectives)} {rng.choice(nouns)}"
        description = (f"{_article(adjective).capitalize()} {adjective} {noun} made for {rng.choice(uses)}. "
                       f"Pairs well with {_article(partner)} {partner}.")
        fields = {"title": title, "categories": f"{root} > {rng.choice(subcategories)}", "brand": brand,
                  "description": description}
        collector.add(item_id, fields, title)
        members[t].append(item_id)
    for ids in members:
        rng.shuffle(ids)  # popularity rank is random, not tied to the id
    return collector, members


def synthetic_catalog(cfg: DatasetConfig) -> Catalog:
    """cfg.synthetic_items items in 12 themes; cfg.synthetic_users users with 5-30 interactions each."""
    rng = random.Random(cfg.seed)
    collector, members = _items(cfg.synthetic_items, rng)
    n_users = cfg.synthetic_users
    cum_weights = [list(accumulate(1.0 / (rank + 1) ** _POPULARITY_SKEW for rank in range(len(ids)))) for ids in members]
    n_themes = len(members)
    width = len(str(n_users))
    interactions = Interactions()
    for u in range(n_users):
        favourites = rng.sample(range(n_themes), rng.choice((1, 2)))
        theme = rng.choice(favourites)
        seen: set[str] = set()
        for position in range(rng.randint(5, 30)):
            if position and not (theme in favourites and rng.random() < _STAY_IN_THEME):
                theme = rng.choice(favourites) if rng.random() < _IN_FAVOURITES else rng.randrange(n_themes)
            for _ in range(10):  # prefer unseen items; tiny themes may have to repeat
                item = rng.choices(members[theme], cum_weights=cum_weights[theme])[0]
                if item not in seen:
                    break
            seen.add(item)
            interactions.add(f"u{u + 1:0{width}d}", item, position)
    return assemble("synthetic", "product", collector, interactions, cfg.min_interactions)
