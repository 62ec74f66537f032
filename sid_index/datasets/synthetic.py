"""Synthetic catalogue + interactions with planted structure, the embedded default dataset.

The generative story (all of it seeded and vectorized with numpy):

* Categories are (domain, theme) pairs: category `c` lies in domain `c % D` and has theme
  `(c // D) % len(THEMES)`. Every theme has its own nouns and adjectives and every category its
  own brands, so item texts cluster by theme first and domain second — text embeddings, and so
  Semantic IDs, carry the category structure.
* Personas: `num_personas` prototypes, each a sparse mixture over the categories of 1–2 themes
  in 1–3 domains, with a readable name ("Home Chef & Coffee Connoisseur (video, ecommerce)").
* Complementary transitions: category `c` has a primary complement (same theme, next domain:
  watching a cooking video makes buying cookware likely) and a secondary one (same domain,
  paired theme: cooking -> coffee), plus a little uniform mass. A user's persona tilts these
  rows towards its own categories: T_p[c, :] ∝ T[c, :] · (0.1 + mixture_p).
* A user draws a persona, then 2–4 active interests from its mixture, then a sequence whose
  next category is a (persona-tilted) complement of the previous one (prob.
  `transition_strength`), else one of the user's interests (prob. `interest_strength`), else
  a category of the persona's *expansion* theme (a theme outside its mixture, different for
  personas that share themes) — the interest expansion that only the persona predicts.
  Items within a category follow a Zipf popularity.

So the next category depends on the persona beyond the last category: an oracle that knows
the persona predicts it clearly better than one that only knows the last category.

Scale: `generate_catalog_codes` builds a 10^7-item catalogue as integer word codes (N, 7) in
a few seconds and ~0.4 GB; text is rendered only on demand (`SyntheticCatalog.titles/texts`
for a batch of rows, as an embedder consumes it). `SyntheticCatalog.to_catalog()` renders every
item into a `Catalog`: fine up to ~10^6 items, about a minute and ~6 GB of Python strings at
10^7 (measured on a 2-core CPU box). `generate` always renders; at 10^7 items use
`build_world` + `generate_catalog_codes` + `generate_interactions` instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from sid_index.errors import ConfigError
from sid_index.records import Catalog, Dataset, Interactions

# (theme, persona archetype, nouns, adjectives). Adjacent themes (0-1, 2-3, ...) are
# complementary: a category's secondary transition goes to its paired theme.
THEMES: tuple[tuple[str, str, str, str], ...] = (
    ("cooking", "Home Chef", "skillet recipe wok knife spice pasta bread oven",
     "crispy savory homemade spicy rustic quick"),
    ("coffee", "Coffee Connoisseur", "espresso grinder latte bean mug brewer barista roast",
     "bold aromatic smooth dark artisan roasted"),
    ("gaming", "Gamer", "controller console headset quest arena loot keyboard speedrun",
     "competitive retro multiplayer pixel ranked legendary"),
    ("anime", "Anime Fan", "manga cosplay figure mecha studio sketch plush episode",
     "kawaii shonen chibi magical heroic animated"),
    ("fitness", "Gym Regular", "dumbbell workout treadmill protein kettlebell squat rower bench",
     "intense lean cardio strong athletic explosive"),
    ("wellness", "Mindful Soul", "meditation sleep tea journal aromatherapy massage yoga retreat",
     "calm restful herbal balanced soothing mindful"),
    ("travel", "Globetrotter", "backpack passport hotel flight luggage itinerary beach hostel",
     "budget scenic weekend remote tropical nomadic"),
    ("photography", "Photographer", "camera lens tripod portrait shutter flash filter landscape",
     "cinematic sharp wide analog mirrorless panoramic"),
    ("music", "Music Lover", "guitar vinyl concert playlist drum synth album chord",
     "acoustic indie electric melodic soulful jazzy"),
    ("movies", "Film Buff", "film trailer director sequel thriller documentary premiere cinema",
     "blockbuster award dramatic noir suspenseful epic"),
    ("beauty", "Beauty Enthusiast", "lipstick serum mascara skincare blush cream perfume toner",
     "glowing matte hydrating vegan radiant gentle"),
    ("fashion", "Trendsetter", "sneaker jacket denim dress handbag scarf boots outfit",
     "stylish oversized vintage casual chic seasonal"),
    ("tech", "Tech Geek", "laptop smartphone charger drone smartwatch router monitor earbuds",
     "wireless fast portable smart compact powerful"),
    ("science", "Curious Mind", "telescope microscope robot chemistry planet experiment rocket lab",
     "cosmic quantum robotic stellar clever scientific"),
    ("pets", "Pet Parent", "dog puppy kitten leash litter treat aquarium collar",
     "furry loyal cozy healthy tiny cuddly"),
    ("parenting", "Busy Parent", "stroller diaper toddler crib toy lunchbox bedtime nursery",
     "safe soft educational colorful sturdy washable"),
    ("gardening", "Green Thumb", "seed planter compost tomato shovel succulent hose greenhouse",
     "organic blooming leafy perennial lush heirloom"),
    ("home decor", "Home Decorator", "lamp rug cushion vase curtain shelf candle mirror",
     "minimalist modern boho elegant warm rustic-chic"),
    ("outdoors", "Outdoor Adventurer", "tent hiking kayak trail campfire compass lantern climbing",
     "rugged waterproof wild alpine lightweight durable"),
    ("sports", "Sports Fan", "football basketball jersey stadium tennis racket soccer match",
     "championship pro varsity winning team-spirited fast-paced"),
    ("finance", "Savvy Investor", "stock budget savings crypto dividend credit portfolio mortgage",
     "passive secure longterm frugal profitable diversified"),
    ("cars", "Car Enthusiast", "engine tire dashcam sedan wrench motor turbo garage",
     "turbocharged electric sporty hybrid polished off-road"),
    ("books", "Bookworm", "novel paperback mystery bookmark audiobook poetry chapter library",
     "bestselling gripping classic illustrated thrilling literary"),
    ("crafts", "Crafter", "yarn knitting paint canvas sewing bead glue stencil",
     "handmade creative diy woven pastel upcycled"),
)  # fmt: skip

# Per-domain wording: (category label suffix, item format words, sentence about the theme).
# An unknown domain name falls back to using the name itself.
_DOMAIN_WORDS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "video": ("videos", ("tutorial", "vlog", "review", "short", "episode"), "a video about"),
    "ecommerce": ("products", ("", " set", " kit", " pack", " bundle"), "a product for"),
    "ads": ("ads", ("deal", "offer", "coupon", "sale", "promo"), "a sponsored offer for"),
    "live": ("live", ("live stream", "live show", "live Q&A", "live marathon"), "a live stream on"),
}
_SYLLABLES = ("ka", "lo", "mi", "zen", "tra", "vo", "rix", "sa", "ne", "pol", "dar", "qui")
_CHUNK_USERS = 16384
_PAIRED_THEME_PROB = 0.4  # a persona's second theme is the paired one, else a random theme
_MAX_TILTED_ENTRIES = 1 << 26  # 0.5 GB of float64 transition rows
_PERSONA_TILT = 0.1  # complement rows are reweighted by (_PERSONA_TILT + persona mixture)


@dataclass(frozen=True, slots=True)
class SyntheticConfig:
    """Size and strength of the planted structure of a synthetic dataset."""

    num_users: int = 1000
    """Number of users (each gets one sequence)."""
    num_items: int = 500
    """Number of catalogue items (every category gets at least one)."""
    num_personas: int = 20
    """Number of persona prototypes users are drawn from."""
    num_categories: int = 48
    """Number of categories; category `c` lies in domain `c % len(domains)`."""
    domains: tuple[str, ...] = ("video", "ecommerce", "ads", "live")
    """Business domains the categories are spread over."""
    min_seq_len: int = 5
    """Shortest user sequence."""
    max_seq_len: int = 30
    """Longest user sequence; lengths are skewed towards the short end."""
    min_interests: int = 2
    """Fewest active interests (categories) a user draws from its persona."""
    max_interests: int = 4
    """Most active interests a user draws from its persona."""
    transition_strength: float = 0.35
    """Probability that the next category is a (persona-tilted) complement of the previous one."""
    interest_strength: float = 0.7
    """Otherwise, probability that it is one of the user's interests (else an expansion
    category of the persona)."""
    zipf_exponent: float = 1.1
    """Item popularity within a category ~ rank^-zipf_exponent."""
    brands_per_category: int = 5
    """Distinct brand names per category."""
    seed: int = 0
    """Seed of every random draw; equal configs give identical datasets."""

    def __post_init__(self) -> None:
        for name in ("num_users", "num_personas", "num_categories", "min_seq_len"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1")
        if not self.domains or len(set(self.domains)) != len(self.domains):
            raise ConfigError(f"{self.domains=} must be non-empty and distinct")
        if any(not d.strip() for d in self.domains):
            raise ConfigError(f"{self.domains=} contains an empty name")
        if self.num_categories < len(self.domains):
            raise ConfigError(f"{self.num_categories=} must be >= {len(self.domains)=}")
        if self.num_personas * self.num_categories**2 > _MAX_TILTED_ENTRIES:
            # One persona-tilted transition row per (persona, category): P * C * C floats.
            raise ConfigError(
                f"{self.num_personas=} * {self.num_categories=}^2 must be <= {_MAX_TILTED_ENTRIES}"
            )
        if self.num_items < self.num_categories:
            raise ConfigError(f"{self.num_items=} must be >= {self.num_categories=}")
        if self.max_seq_len < self.min_seq_len:
            raise ConfigError(f"{self.max_seq_len=} must be >= {self.min_seq_len=}")
        if not 1 <= self.min_interests <= self.max_interests:
            raise ConfigError(
                f"need 1 <= {self.min_interests=} <= {self.max_interests=}",
            )
        for name in ("transition_strength", "interest_strength"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name}={getattr(self, name)} must be in [0, 1]")
        if self.zipf_exponent < 0:
            raise ConfigError(f"{self.zipf_exponent=} must be >= 0")
        if self.brands_per_category < 1:
            raise ConfigError(f"{self.brands_per_category=} must be >= 1")
        if self.seed < 0:
            raise ConfigError(f"{self.seed=} must be >= 0")


@dataclass(frozen=True, slots=True)
class SyntheticWorld:
    """The planted structure: categories, personas, transitions (small; no items)."""

    category_names: list[str]
    """(C,) readable category labels, e.g. "Cooking videos"."""
    category_domain: np.ndarray
    """(C,) int64 domain index of each category."""
    category_theme: np.ndarray
    """(C,) int64 theme index (into THEMES) of each category."""
    persona_names: list[str]
    """(P,) unique readable persona names."""
    persona_descriptions: list[str]
    """(P,) one line per persona naming its main categories."""
    persona_mixtures: np.ndarray
    """(P, C) float64 rows summing to 1: each persona's sparse interest mixture."""
    transitions: np.ndarray
    """(C, C) float64 rows summing to 1: complementary next-category distribution."""
    persona_expansions: np.ndarray
    """(P, C) float64 rows summing to 1: where each persona's interests *expand* to — the
    categories of a theme outside its own mixture. Personas that look alike in a short history
    expand differently, so only knowing the persona predicts these moves."""


def _brand_names(rng: np.random.Generator, count: int) -> list[str]:
    """`count` distinct made-up brand names of two or more syllables."""
    S = len(_SYLLABLES)
    k = 2  # longest name length: grow until the name space is roomy
    while sum(S**j for j in range(2, k + 1)) < 4 * count:
        k += 1
    codes = rng.choice(sum(S**j for j in range(2, k + 1)), size=count, replace=False)
    names = []
    for code in codes.tolist():
        j = 2
        while code >= S**j:  # names of length j occupy codes [offset, offset + S^j)
            code -= S**j
            j += 1
        parts = [_SYLLABLES[(code // S**i) % S] for i in range(j)]
        names.append("".join(parts).capitalize())
    return names


def build_world(config: SyntheticConfig) -> SyntheticWorld:
    """Draw categories, personas and the complementary transition matrix from `config`."""
    rng = np.random.default_rng([config.seed, 1])
    C, D = config.num_categories, len(config.domains)
    cat = np.arange(C)
    domain, theme = cat % D, (cat // D) % len(THEMES)
    variant = cat // (D * len(THEMES))  # > 0 only when categories outnumber domains × themes
    names = []
    for d, t, v in zip(domain.tolist(), theme.tolist(), variant.tolist(), strict=True):
        suffix = _DOMAIN_WORDS.get(config.domains[d], (config.domains[d],))[0]
        names.append(f"{THEMES[t][0].capitalize()} {suffix}" + (f" {v + 1}" if v else ""))

    # Complements: primary = same theme in the next domain, secondary = paired theme in the
    # same domain; a missing target (few categories) falls back to a random other category.
    keys = zip(domain.tolist(), theme.tolist(), variant.tolist(), strict=True)
    by_key: dict[tuple[int, int, int], int] = {k: c for c, k in enumerate(keys)}
    transitions = np.full((C, C), 0.15 / max(C - 1, 1))
    for c in range(C):
        d, t, v = int(domain[c]), int(theme[c]), int(variant[c])
        primary = by_key.get(((d + 1) % D, t, v), c)
        secondary = by_key.get((d, t ^ 1, v), c)
        others = np.setdiff1d(cat, [c])
        if primary == c and len(others):
            primary = int(rng.choice(others))
        if secondary in (c, primary) and len(others) > 1:
            secondary = int(rng.choice(np.setdiff1d(others, [primary])))
        transitions[c, primary] += 0.55
        transitions[c, secondary] += 0.30
        transitions[c, c] = 0.0
    if C == 1:  # nothing else to go to
        transitions[0, 0] = 1.0
    transitions /= transitions.sum(axis=1, keepdims=True)

    # Personas: 1–2 themes (often a complementary pair) in 1–3 domains, Dirichlet weights.
    present_themes = np.unique(theme)
    mixtures = np.zeros((config.num_personas, C))
    expansions = np.zeros((config.num_personas, C))
    persona_names, descriptions = [], []
    for p in range(config.num_personas):
        # Two themes: the paired (complementary) one, or a random one for an unusual mix
        # ("Gamer & Home Chef") that the last category alone cannot reveal.
        t0, t1 = (
            int(t) for t in rng.choice(present_themes, size=2, replace=len(present_themes) < 2)
        )
        if rng.random() < _PAIRED_THEME_PROB and (t0 ^ 1) in present_themes:
            t1 = t0 ^ 1
        themes = [t0, t1] if t1 != t0 else [t0]
        doms = rng.choice(D, size=min(D, int(rng.integers(1, 4))), replace=False)
        in_doms = np.isin(domain, doms)
        members = np.flatnonzero(np.isin(theme, themes) & in_doms)
        if len(members) < config.max_interests:
            # Top up with lighter interests: the paired themes first, then any category.
            paired = np.flatnonzero(np.isin(theme, [t ^ 1 for t in themes]) & in_doms)
            pool = np.concatenate(
                [rng.permutation(paired), rng.permutation(np.flatnonzero(in_doms))]
            )
            pool = pool[~np.isin(pool, members)]
            _, first = np.unique(pool, return_index=True)
            extra = pool[np.sort(first)][: config.max_interests - len(members)]
            weight = np.concatenate(
                [rng.dirichlet(np.full(len(members), 2.0)), np.full(len(extra), 0.1)]
            )
            members = np.concatenate([members, extra])
        else:
            weight = rng.dirichlet(np.full(len(members), 2.0))
        mixtures[p, members] = weight / weight.sum()
        # Expansion: one theme the persona does not hold, in its domains (any domain if none).
        others = np.setdiff1d(present_themes, themes)
        t_exp = int(rng.choice(others)) if len(others) else int(themes[0])
        grow = np.flatnonzero((theme == t_exp) & in_doms)
        if not len(grow):
            grow = np.flatnonzero(theme == t_exp)
        expansions[p, grow] = 1.0 / len(grow)
        mass = {t: mixtures[p, theme == t].sum() for t in themes}
        themes = sorted(dict.fromkeys(themes), key=lambda t: -mass[t])
        archetypes = " & ".join(dict.fromkeys(THEMES[t][1] for t in themes))
        dom_names = ", ".join(config.domains[d] for d in sorted(doms.tolist()))
        name = f"{archetypes} ({dom_names})"
        persona_names.append(name if name not in persona_names else f"{name} #{p}")
        top = np.argsort(-mixtures[p])[: min(4, len(members))]
        parts = ", ".join(f"{names[c]} {mixtures[p, c]:.0%}" for c in top.tolist())
        descriptions.append(f"{persona_names[-1]}: mostly {parts}")
    return SyntheticWorld(
        names, domain, theme, persona_names, descriptions, mixtures, transitions, expansions
    )


@dataclass(frozen=True, slots=True)
class SyntheticCatalog:
    """A synthetic catalogue as integer codes; text is rendered on demand from the vocabulary.

    Item `i` has id `str(i)`, category `category[i]` and words `words[i]` (indices into
    `vocab`: brand, adjective, noun, format, adjective 2, noun 2, noun 3)."""

    category: np.ndarray
    """(N,) int64 category of each item."""
    words: np.ndarray
    """(N, 7) int32 vocabulary indices of each item's text slots."""
    vocab: list[str]
    """Every word a text slot can hold."""
    category_names: list[str]
    """(C,) category labels."""
    category_domains: list[str]
    """(C,) domain name of each category."""
    category_sentences: list[str]
    """(C,) fixed sentence about the category's theme in its domain."""

    def __len__(self) -> int:
        return len(self.category)

    def titles(self, rows: np.ndarray | None = None) -> list[str]:
        """Titles of `rows` (default: all items)."""
        w = self.words if rows is None else self.words[rows]
        v = self.vocab
        return [f"{v[b]} {v[a]} {v[n]}{v[f]}" for b, a, n, f in w[:, :4].tolist()]

    def texts(self, rows: np.ndarray | None = None) -> list[str]:
        """Embedding texts of `rows`: title, the category sentence, more theme words."""
        rows = np.arange(len(self)) if rows is None else np.asarray(rows)
        v, s = self.vocab, self.category_sentences
        return [
            f"{v[b]} {v[a]} {v[n]}{v[f]}. {s[c]}: {v[a2]} {v[n2]} and {v[n3]}."
            for (b, a, n, f, a2, n2, n3), c in zip(
                self.words[rows].tolist(), self.category[rows].tolist(), strict=True
            )
        ]

    def to_catalog(self) -> Catalog:
        """Render every item into a `Catalog` (ids "0".."N-1")."""
        cats = self.category.tolist()
        paths = [(d, n) for d, n in zip(self.category_domains, self.category_names, strict=True)]
        return Catalog(
            item_ids=np.arange(len(self)).astype(str).tolist(),
            titles=self.titles(),
            texts=self.texts(),
            categories=[paths[c] for c in cats],
            domains=[self.category_domains[c] for c in cats],
        )


def generate_catalog_codes(config: SyntheticConfig, world: SyntheticWorld) -> SyntheticCatalog:
    """Assign items to categories and draw their text slots (vectorized, no strings per item)."""
    rng = np.random.default_rng([config.seed, 2])
    C, N, B = config.num_categories, config.num_items, config.brands_per_category
    # Uneven (Dirichlet) category sizes; then C random items are forced to cover every category.
    cdf = np.cumsum(rng.dirichlet(np.full(C, 2.0)))
    category = np.minimum(np.searchsorted(cdf / cdf[-1], rng.random(N)), C - 1)
    category[rng.choice(N, size=C, replace=False)] = np.arange(C)
    vocab: list[str] = []
    slot_words = []  # per theme: (adjective ids, noun ids)
    for _, _, nouns, adjs in THEMES:
        a0 = len(vocab)
        vocab += adjs.split()
        n0 = len(vocab)
        vocab += nouns.split()
        slot_words.append((np.arange(a0, n0), np.arange(n0, len(vocab))))
    fmt_ids: list[np.ndarray] = []
    for d in config.domains:
        formats = _DOMAIN_WORDS.get(d, ("", (d,), ""))[1]
        f0 = len(vocab)
        vocab += [f if f.startswith(" ") or not f else f" {f}" for f in formats]
        fmt_ids.append(np.arange(f0, len(vocab)))
    b0 = len(vocab)
    vocab += _brand_names(rng, C * B)

    theme = world.category_theme[category]  # (N,)
    n_adj, n_noun = len(slot_words[0][0]), len(slot_words[0][1])
    adj_base = np.array([a[0] for a, _ in slot_words])[theme]
    noun_base = np.array([n[0] for _, n in slot_words])[theme]
    dom = world.category_domain[category]
    n_fmt = np.array([len(f) for f in fmt_ids])[dom]
    fmt_base = np.array([f[0] for f in fmt_ids])[dom]
    # One block of 16-bit random digits per item; digit * size >> 16 is a uniform slot value
    # (bias < size / 2^16), far cheaper at 10^7 items than one bounded draw per slot.
    digits = rng.integers(0, 1 << 16, size=(7, N), dtype=np.uint16)

    def slot(j: int, size: np.ndarray | int) -> np.ndarray:
        return (digits[j].astype(np.int64) * size) >> 16

    words = np.empty((N, 7), dtype=np.int32)
    words[:, 0] = b0 + category * B + slot(0, B)
    words[:, 1] = adj_base + slot(1, n_adj)
    words[:, 2] = noun_base + slot(2, n_noun)
    words[:, 3] = fmt_base + slot(3, n_fmt)
    words[:, 4] = adj_base + slot(4, n_adj)
    words[:, 5] = noun_base + slot(5, n_noun)
    # A third noun different from the second: shift by 1..n_noun-1 within the theme's nouns.
    words[:, 6] = noun_base + (words[:, 5] - noun_base + 1 + slot(6, n_noun - 1)) % n_noun

    domains = [config.domains[d] for d in world.category_domain.tolist()]
    sentences = [
        f"{name}, {_DOMAIN_WORDS.get(d, ('', (), f'a {d} item about'))[2]} {THEMES[t][0]}"
        for name, d, t in zip(world.category_names, domains, world.category_theme, strict=True)
    ]
    return SyntheticCatalog(category, words, vocab, world.category_names, domains, sentences)


def _flat_cdf(weights: np.ndarray) -> np.ndarray:
    """Rows of non-negative weights (R, K) -> one sorted array for batched inverse-CDF draws.

    Row `r`'s normalized CDF is shifted by `2 r`, so rows never overlap even with rounding."""
    cdf = np.cumsum(weights, axis=1)
    return (cdf / cdf[:, -1:] + 2.0 * np.arange(len(cdf))[:, None]).ravel()


def _sample_rows(flat: np.ndarray, k: int, rows: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Draw one column per entry from the rows of a `_flat_cdf`: rows/u (B,) -> (B,) in [0, k)."""
    idx = np.searchsorted(flat, 2.0 * rows + u, side="right") - rows * k
    return np.minimum(idx, k - 1)


def generate_interactions(
    config: SyntheticConfig,
    world: SyntheticWorld,
    catalog: SyntheticCatalog,
    *,
    progress: bool = False,
) -> tuple[Interactions, np.ndarray]:
    """Draw every user's persona and sequence; returns (interactions, (U,) persona ids)."""
    rng = np.random.default_rng([config.seed, 3])
    C, U = config.num_categories, config.num_users
    # Items of each category in popularity order (a stable sort: radix on int16 when it fits).
    # Zipf CDFs of every category are prefixes of one cumulative array H, so the rank of a draw
    # in category c is one searchsorted of u * H[n_c - 1] in H, for the whole batch.
    small = catalog.category.astype(np.int16) if C < 2**15 else catalog.category
    order = np.argsort(small, kind="stable")
    counts = np.bincount(catalog.category, minlength=C)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    zipf_cum = np.cumsum((np.arange(counts.max()) + 1.0) ** -config.zipf_exponent)
    cat_total = zipf_cum[counts - 1]  # (C,)
    # Persona-tilted complements: T_p[c, :] ∝ T[c, :] * (tilt + mixture_p), one row per
    # (persona, previous category) so a step samples all users with one searchsorted.
    tilted = world.transitions[None] * (_PERSONA_TILT + world.persona_mixtures[:, None, :])
    trans_flat = _flat_cdf(tilted.reshape(-1, C))  # (P * C * C,)

    expand_flat = _flat_cdf(world.persona_expansions)  # (P * C,)

    personas = rng.integers(0, config.num_personas, U)
    span = config.max_seq_len - config.min_seq_len + 1
    lengths = config.min_seq_len + (span * rng.random(U) ** 2).astype(np.int64)
    indptr = np.zeros(U + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    items = np.empty(int(indptr[-1]), dtype=np.int64)
    stamps = np.empty(int(indptr[-1]), dtype=np.int64)
    K = config.max_interests
    chunks = range(0, U, _CHUNK_USERS)
    for lo in tqdm(chunks, desc="users", unit="chunk", disable=not progress):
        hi = min(lo + _CHUNK_USERS, U)
        n, pers = hi - lo, personas[lo:hi]
        # Interests: Gumbel top-k over the persona's mixture = k draws without replacement.
        keys = np.log(world.persona_mixtures[pers] + 1e-300) + rng.gumbel(size=(n, C))
        top = np.argsort(-keys, axis=1)[:, :K]  # (n, K)
        k = rng.integers(config.min_interests, K + 1, n)
        support = (world.persona_mixtures[pers] > 0).sum(axis=1)
        active = np.arange(K)[None, :] < np.minimum(k, support)[:, None]  # (n, K)
        w = np.where(active, np.take_along_axis(world.persona_mixtures[pers], top, 1), 0.0)
        w_flat = _flat_cdf(w)  # (n * K,)

        T = config.max_seq_len
        cats = np.empty((n, T), dtype=np.int64)
        rows = np.arange(n)
        for t in range(T):
            pick = top[rows, _sample_rows(w_flat, K, rows, rng.random(n))]
            if t:
                mode = rng.random(n)
                trans = _sample_rows(trans_flat, C, pers * C + cats[:, t - 1], rng.random(n))
                # Interest expansion: a category of the persona's expansion theme, one the
                # history has rarely shown — what only knowing the persona predicts.
                explore = _sample_rows(expand_flat, C, pers, rng.random(n))
                stay = mode < config.transition_strength
                wander = mode >= 1 - (1 - config.transition_strength) * (
                    1 - config.interest_strength
                )
                pick = np.where(stay, trans, np.where(wander, explore, pick))
            cats[:, t] = pick
        mask = np.arange(T)[None, :] < lengths[lo:hi, None]  # (n, T)
        flat_cats = cats[mask]
        rank = np.searchsorted(zipf_cum, rng.random(len(flat_cats)) * cat_total[flat_cats])
        rank = np.minimum(rank, counts[flat_cats] - 1)
        items[indptr[lo] : indptr[hi]] = order[starts[flat_cats] + rank]
        gaps = np.where(mask, 60 + rng.exponential(2 * 86400, (n, T)), 0).astype(np.int64)
        start = 1_600_000_000 + rng.integers(0, 365 * 86400, n)
        stamps[indptr[lo] : indptr[hi]] = (start[:, None] + np.cumsum(gaps, axis=1))[mask]
    user_ids = np.arange(U).astype(str).tolist()
    return Interactions(user_ids, indptr, items, stamps), personas


def generate(config: SyntheticConfig, *, progress: bool = False) -> Dataset:
    """A complete synthetic `Dataset` (catalogue with text, interactions, planted personas)."""
    world = build_world(config)
    codes = generate_catalog_codes(config, world)
    interactions, personas = generate_interactions(config, world, codes, progress=progress)
    name = f"synthetic-u{config.num_users}-i{config.num_items}-s{config.seed}"
    return Dataset(name, codes.to_catalog(), interactions, personas, world.persona_names)
