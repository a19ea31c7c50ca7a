"""Synthetic bilingual demo data: a seeded, byte-for-byte reproducible English→French stand-in.

``generate_demo(out_dir, DemoConfig(...))`` writes, for the languages ``en`` (source) and
``fr`` (target):

============================  ==============================================================
``pool.en`` / ``pool.fr``     the mixed general pool, one untokenised sentence a line (words,
                              ``,`` ``.`` ``?``, apostrophe forms such as ``kan't`` and
                              ``l'été`` for the Moses tokenizer to split), plus a few lines a
                              cleaner must drop: an empty side, a very long line (> 100 tokens),
                              a length-ratio outlier (ratio > 9); their line numbers are in
                              ``truth.json``
``pool.in_domain``            ``1``/``0`` per pool line: drawn from the in-domain distribution?
``in_domain.en/.fr``          a separate in-domain training corpus (clean)
``dev.en/.fr``                an in-domain dev set (clean)
``phrase-table.gz``           a Moses phrase table ``src ||| tgt ||| p(f|e) lex(f|e) p(e|f)
                              lex(e|f) ||| alignment ||| c(e) c(f) c(f,e)``, tokens Moses-escaped
                              as ``tokenizer.perl -escape`` writes them, lines in
                              ``LC_ALL=C sort`` order, scores written ``%.6g`` (as Moses's
                              scorer does); true pairs of the lexicon and compositions of them
                              mixed with noisy ones (wrong targets, partial phrases); gzip
                              header without name or time, so the bytes are reproducible
``phrase-table.truth.tsv``    ``source \\t target \\t 1|0`` (is the pair a true translation?),
                              in the phrase table's order
``lexicon.tsv``               the bilingual lexicon ``source \\t target \\t domain`` (tokenised),
                              domain one of ``core general shared in in-src in-tgt``
``truth.json``                the config and the counts (lines, tokens, noise, lexicon, table)
============================  ==============================================================

How the data is made. Each language has its own pseudo-words built from syllables. Concepts
(lexicon entries) are function words shared by both domains (``core``), content words of the
general domain, of the in-domain, or of both (``shared``, with a different Zipf rank in each
domain), and polysemous in-domain senses whose domain shows on one side only: ``in-src`` (an
in-domain source word whose target word is also a general word) and ``in-tgt`` (a general
source word with a distinct in-domain target word). Sentences come from a small template
grammar per domain (clauses of noun phrases, verbs, prepositional phrases, adverbs, questions,
negation; the domains differ in template and word frequencies) and are translated concept by
concept through the lexicon, with 1→2, 2→1 and 2→2 translations, post-nominal adjectives
swapped with their noun (local reordering), French elision (``lo`` + vowel → ``l'``) and English
contraction (``kan't``). So an in-domain language model separates in-domain from general
sentences on either side, and better with both sides together.

Everything is drawn from ``numpy.random.default_rng(config.seed)`` in a fixed order: the same
config gives byte-identical files.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SOURCE_LANG, TARGET_LANG = "en", "fr"

# Token categories. Content categories first (they have general / in-domain / shared words).
NOUN, ADJ, VERB, ADV, DET, PREP, CONJ, QW, NEG, COMMA, STOP, QMARK = range(12)
CONTENT = (NOUN, ADJ, VERB, ADV)
_CONTENT_SHARE = {NOUN: 0.5, ADJ: 0.2, VERB: 0.22, ADV: 0.08}
_PUNCT = {COMMA: ",", STOP: ".", QMARK: "?"}

# Kinds of concept (the lexicon's domain column).
CORE, GENERAL, SHARED, IN, IN_SRC, IN_TGT = "core", "general", "shared", "in", "in-src", "in-tgt"

# Words Moses's tokenizer treats as non-breaking prefixes (en/fr lists): never generated, so a
# sentence-final "word." always splits into "word .".
_AVOID = frozenset("""art ann apr auj lib boul chap contr dir env etc fasc fém fig hab ibid inf masc sec
sect sing sqq suiv sup suppl tél vol rev cf vs""".split())
_VOWELS_FR = tuple("aeiouéè")


@dataclass(frozen=True)
class DemoConfig:
    seed: int = 1234
    pool_size: int = 200_000          # pairs in the mixed general pool
    pool_in_domain_fraction: float = 0.1   # share of pool pairs drawn from the in-domain distribution
    in_domain_size: int = 5_000       # separate in-domain training corpus (pairs)
    dev_size: int = 1_000             # in-domain dev set (pairs)
    phrase_table_pairs: int = 20_000  # approx. number of lines of the Moses phrase table (true + noisy)
    phrase_table_true_fraction: float = 0.5   # share of true pairs among the phrase table's lines
    # Lexicon: content concepts of each kind (split over nouns, adjectives, verbs, adverbs).
    general_concepts: int = 6_000
    in_domain_concepts: int = 1_500
    shared_concepts: int = 1_500
    one_side_concepts: int = 400      # in-src and in-tgt concepts, each
    zipf_exponent: float = 1.05
    # Mixture of concept kinds filling a content slot of an in-domain sentence; the rest of the
    # mass goes to general words (leak). General sentences use in-domain words with
    # `general_leak` and otherwise general/shared words.
    in_domain_mix: tuple[float, float, float, float] = (0.40, 0.20, 0.20, 0.19)  # in, in-src, in-tgt, shared
    general_leak: float = 0.003
    # Lines a cleaner drops, as shares of the pool (at least one each when pool_size >= 100).
    noise_empty_fraction: float = 0.0005
    noise_long_fraction: float = 0.0002
    noise_ratio_fraction: float = 0.0003


@dataclass(frozen=True)
class DemoFiles:
    root: Path
    pool_src: Path
    pool_tgt: Path
    pool_in_domain: Path
    in_domain_src: Path
    in_domain_tgt: Path
    dev_src: Path
    dev_tgt: Path
    phrase_table: Path
    phrase_table_truth: Path
    lexicon: Path
    truth: Path


@dataclass
class _Concept:
    cat: int
    src: tuple[str, ...]
    tgt: tuple[str, ...]
    kind: str
    postnominal: bool = False      # adjectives: placed after the noun in the target


def _detok_en(tokens: Sequence[str]) -> str:
    out = ""
    for token in tokens:
        if token.startswith("&apos;"):
            out += "'" + token[6:]
        else:
            out += (" " if out else "") + token
    return out


# ---------------------------------------------------------------------------------------------
# Words and lexicon

def _words(rng: np.random.Generator, n: int, onsets: Sequence[str], vowels: Sequence[str],
           codas: Sequence[str], syllables: tuple[int, int], taken: set[str]) -> list[str]:
    """``n`` distinct pseudo-words (not in ``taken``, which is updated), in draw order."""
    out: list[str] = []
    while len(out) < n:
        m = 2 * (n - len(out)) + 16
        k = rng.integers(syllables[0], syllables[1] + 1, size=m)
        parts = [rng.integers(0, len(x), size=(m, syllables[1])) for x in (onsets, vowels, codas)]
        for i in range(m):
            word = "".join(onsets[parts[0][i, j]] + vowels[parts[1][i, j]] +
                           (codas[parts[2][i, j]] if j == k[i] - 1 else "") for j in range(k[i]))
            if len(word) < 3 or word in taken or word in _AVOID:
                continue
            taken.add(word)
            out.append(word)
            if len(out) == n:
                break
    return out


_EN = (("b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "br", "st", "tr", "pl",
        "sh", "ch", "th", "gr"), ("a", "e", "i", "o", "u", "ea", "ou", "ai", "oo"),
       ("", "", "n", "r", "s", "t", "nd", "ck", "ll", "ng"))
_FR = (("", "b", "d", "f", "g", "j", "l", "m", "n", "p", "r", "s", "t", "v", "ch", "gr", "pr", "tr", "bl"),
       ("a", "e", "i", "o", "u", "é", "è", "ou", "eu", "au", "ai"),
       ("", "", "n", "r", "s", "t", "x", "ille", "que", "on"))


class _Lexicon:
    """Concepts, per category and kind, with the Zipfian sampling tables of each domain."""

    ELIDABLE = "lo"
    ELIDED = "l&apos;"

    def __init__(self, cfg: DemoConfig, rng: np.random.Generator):
        self.concepts: list[_Concept] = []
        en_taken: set[str] = set()
        fr_taken: set[str] = set()

        def en(n, syl=(2, 3)):
            return _words(rng, n, *_EN, syllables=syl, taken=en_taken)

        def fr(n, syl=(2, 3)):
            return _words(rng, n, *_FR, syllables=syl, taken=fr_taken)

        # Function words (core): reserve the French determiner that elides before a vowel.
        fr_taken.update({self.ELIDABLE, "l"})
        dets_en, dets_fr = en(4, (1, 1)), [self.ELIDABLE] + fr(3, (1, 1))
        for s, t in zip(dets_en, dets_fr, strict=True):
            self._add(DET, (s,), (t,), CORE)
        self.elided = _Concept(DET, (dets_en[0],), (self.ELIDED,), CORE)
        for cat, n in ((PREP, 10), (CONJ, 4), (QW, 6)):
            for s, t in zip(en(n, (1, 2)), fr(n, (1, 2)), strict=True):
                self._add(cat, (s,), (t,), CORE)
        # Negated auxiliaries: "kan't" -> tokens "kan &apos;t" (2->2).
        for s, (t1, t2) in zip(en(3, (1, 1)), zip(fr(3, (1, 1)), fr(3, (1, 1)), strict=True), strict=True):
            self._add(NEG, (s, "&apos;t"), (t1, t2), CORE)

        # Content concepts.
        sizes = {GENERAL: cfg.general_concepts, IN: cfg.in_domain_concepts, SHARED: cfg.shared_concepts}
        general_by_cat: dict[int, list[int]] = {}
        for kind, total in sizes.items():
            for cat in CONTENT:
                n = max(2, int(round(total * _CONTENT_SHARE[cat])))
                ids = self._content(cat, n, kind, rng, en, fr)
                if kind == GENERAL:
                    general_by_cat[cat] = ids
        # One-side in-domain senses: borrow the target (in-src) or the source (in-tgt) of a
        # frequent general concept (in-src the even general ranks, in-tgt the odd ones), so the
        # borrowed side is as common in general text as in in-domain text.
        for parity, kind in enumerate((IN_SRC, IN_TGT)):
            for cat in CONTENT:
                n = max(1, int(round(cfg.one_side_concepts * _CONTENT_SHARE[cat])))
                pool = general_by_cat[cat]
                borrow = np.arange(parity, len(pool), 2)[:n]
                fresh = self._phrases(cat, len(borrow), rng, en if kind == IN_SRC else fr, side_src=kind == IN_SRC)
                for b, phrase in zip(borrow, fresh, strict=True):
                    base = self.concepts[pool[b]]
                    src, tgt = (phrase, base.tgt) if kind == IN_SRC else (base.src, phrase)
                    self._add(cat, src, tgt, kind, base.postnominal)

        self._build_tables(cfg)

    def _add(self, cat, src, tgt, kind, postnominal=False) -> int:
        self.concepts.append(_Concept(cat, tuple(src), tuple(tgt), kind, postnominal))
        return len(self.concepts) - 1

    @staticmethod
    def _arity(cat: int, n: int, rng: np.random.Generator) -> np.ndarray:
        """Source and target lengths (1 or 2) of n concepts: 1->1 mostly, some 1->2, 2->1, 2->2."""
        shapes = np.array([(1, 1), (1, 2), (2, 1), (2, 2)])
        p = {NOUN: (0.70, 0.12, 0.10, 0.08), VERB: (0.78, 0.08, 0.04, 0.10),
             ADJ: (0.88, 0.08, 0.02, 0.02), ADV: (0.85, 0.05, 0.05, 0.05)}[cat]
        return shapes[rng.choice(4, size=n, p=p)]

    def _phrases(self, cat, n, rng, make, side_src: bool) -> list[tuple[str, ...]]:
        lengths = self._arity(cat, n, rng)[:, 0 if side_src else 1]
        words = make(int(lengths.sum()))
        out, i = [], 0
        for k in lengths:
            out.append(tuple(words[i:i + k]))
            i += k
        return out

    def _content(self, cat, n, kind, rng, en, fr) -> list[int]:
        shape = self._arity(cat, n, rng)
        src_words, tgt_words = en(int(shape[:, 0].sum())), fr(int(shape[:, 1].sum()))
        post = rng.random(n) < 0.75
        ids, i, j = [], 0, 0
        for (a, b), p in zip(shape, post, strict=True):
            ids.append(self._add(cat, src_words[i:i + a], tgt_words[j:j + b], kind, bool(p and cat == ADJ)))
            i, j = i + a, j + b
        return ids

    def _build_tables(self, cfg: DemoConfig) -> None:
        """Per domain and category: candidate concept ids and their sampling probabilities."""
        by = {}
        for i, c in enumerate(self.concepts):
            by.setdefault((c.cat, c.kind), []).append(i)
        self.by_cat_kind = by
        s = cfg.zipf_exponent

        def zipf(ids: list[int], salt: int, ordered: bool = False) -> np.ndarray:
            # Zipf over a domain-specific permutation of the ids (shared words rank differently);
            # ``ordered``: ranked in creation order (general words in general text, and the
            # one-side senses in in-domain text, which follow the ranks of the words they borrow).
            ranks = (np.arange(len(ids)) if ordered else
                     np.random.default_rng([cfg.seed, 11, salt]).permutation(len(ids))) + 1
            w = ranks.astype(np.float64) ** -s
            return w / w.sum()

        self.tables: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
        w_in, w_src, w_tgt, w_shared = cfg.in_domain_mix
        w_gen_leak = max(0.0, 1.0 - sum(cfg.in_domain_mix))
        for cat in range(QMARK + 1):
            if cat in _PUNCT:
                continue
            if cat not in CONTENT:
                ids = by[(cat, CORE)]
                for d, salt in (("in", 1), ("general", 2)):
                    self.tables[(d, cat)] = (np.array(ids), zipf(ids, 100 * cat + salt))
                continue
            parts_in = [(IN, w_in), (IN_SRC, w_src), (IN_TGT, w_tgt), (SHARED, w_shared), (GENERAL, w_gen_leak)]
            gen_rest = 1.0 - cfg.general_leak
            parts_gen = [(GENERAL, gen_rest * 0.8), (SHARED, gen_rest * 0.2),
                         (IN, cfg.general_leak * 0.5), (IN_SRC, cfg.general_leak * 0.25),
                         (IN_TGT, cfg.general_leak * 0.25)]
            for d, parts, salt in (("in", parts_in, 1), ("general", parts_gen, 2)):
                all_ids, all_p = [], []
                for kind, weight in parts:
                    ids = by.get((cat, kind), [])
                    if not ids or weight <= 0:
                        continue
                    all_ids.extend(ids)
                    ordered = (d, kind) in (("general", GENERAL), ("in", IN_SRC), ("in", IN_TGT))
                    all_p.append(weight * zipf(ids, 1000 * cat + 10 * salt + len(all_p), ordered))
                p = np.concatenate(all_p)
                self.tables[(d, cat)] = (np.array(all_ids), p / p.sum())


# ---------------------------------------------------------------------------------------------
# Sentences

# Per domain: P(question clause), P(negated clause), P(adjective in an NP), P(PP after a clause),
# P(adverb at a clause end), mean number of extra clauses.
_GRAMMAR = {"general": (0.08, 0.06, 0.35, 0.45, 0.15, 0.45),
            "in": (0.30, 0.12, 0.55, 0.25, 0.30, 0.30)}


def _structures(domain: str, n: int, rng: np.random.Generator, min_clauses: int = 1,
                extra_clauses: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Category codes of n sentences (flat) and the sentence offsets into them."""
    p_q, p_neg, p_adj, p_pp, p_adv, mean_extra = _GRAMMAR[domain]
    extra = rng.poisson(mean_extra, size=n) if extra_clauses is None else extra_clauses
    clauses = np.minimum(extra, 6) + min_clauses if extra_clauses is None else extra + min_clauses
    total = int(clauses.sum())
    u = rng.random((total, 7)).tolist()
    clauses = clauses.tolist()
    codes: list[int] = []
    offsets = np.zeros(n + 1, dtype=np.int64)
    k = 0
    for i in range(n):
        question = False
        for c in range(clauses[i]):
            r = u[k]
            k += 1
            if c:
                codes += (COMMA, CONJ)
            question = r[0] < p_q
            np1 = (DET, ADJ, NOUN) if r[2] < p_adj else (DET, NOUN)
            np2 = (DET, ADJ, NOUN) if r[3] < p_adj else (DET, NOUN)
            if question:
                codes += (QW, VERB, *np1)
            else:
                codes += np1
                if r[1] < p_neg:
                    codes.append(NEG)
                codes += (VERB, *np2)
            if r[4] < p_pp:
                codes += (PREP, DET, NOUN) if r[6] < 0.6 else (PREP, DET, ADJ, NOUN)
            if r[5] < p_adv:
                codes.append(ADV)
        codes.append(QMARK if question else STOP)
        offsets[i + 1] = len(codes)
    return np.array(codes, dtype=np.int8), offsets


def _fill(lex: _Lexicon, domain: str, codes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Concept id per code (-1 for punctuation), sampled per category in bulk."""
    ids = np.full(len(codes), -1, dtype=np.int64)
    for cat in range(QMARK + 1):
        if cat in _PUNCT:
            continue
        mask = codes == cat
        m = int(mask.sum())
        if m:
            cand, p = lex.tables[(domain, cat)]
            ids[mask] = cand[rng.choice(len(cand), size=m, p=p)]
    return ids


class _Renderer:
    """Turns concept-id sequences into lines (untokenised or tokenised) and token counts, vectorised.

    Units: the concepts, then the elided determiner, then the punctuation marks ``, . ?``.
    """

    def __init__(self, lex: _Lexicon):
        self.lex = lex
        cs = lex.concepts + [lex.elided]
        self.elided_unit = len(lex.concepts)
        self.punct_base = len(cs)          # unit of COMMA; STOP, QMARK follow
        puncts = [_PUNCT[c] for c in (COMMA, STOP, QMARK)]
        self.src_tok = np.array([" ".join(c.src) for c in cs] + puncts, dtype=object)
        self.tgt_tok = np.array([" ".join(c.tgt) for c in cs] + puncts, dtype=object)
        self.src_surf = np.array([_detok_en(c.src) for c in cs] + puncts, dtype=object)
        self.tgt_surf = np.array([" ".join(c.tgt) for c in cs[:-1]] + ["l'"] + puncts, dtype=object)
        self.src_len = np.array([len(c.src) for c in cs] + [1, 1, 1], dtype=np.int64)
        self.tgt_len = np.array([len(c.tgt) for c in cs] + [1, 1, 1], dtype=np.int64)
        self.post = np.array([c.postnominal for c in cs] + [False] * 3)
        self.elidable = np.array([c.cat == DET and c.tgt == (lex.ELIDABLE,) for c in cs] + [False] * 3)
        self.vowel_first = np.array([c.tgt[0].startswith(_VOWELS_FR) for c in cs] + [False] * 3)
        self.is_punct = np.arange(len(cs) + 3) >= len(cs)
        self.glue_right_tgt = np.zeros(len(cs) + 3, dtype=bool)
        self.glue_right_tgt[self.elided_unit] = True

    def units(self, codes: np.ndarray, ids: np.ndarray) -> np.ndarray:
        units = ids.copy()
        punct = ids < 0
        units[punct] = self.punct_base + codes[punct].astype(np.int64) - COMMA
        return units

    def target_perm(self, codes: np.ndarray, units: np.ndarray) -> np.ndarray:
        """Target order of the positions: post-nominal adjectives swap with the following noun."""
        perm = np.arange(len(units))
        if len(units) > 1:
            swap = np.flatnonzero((codes[:-1] == ADJ) & (codes[1:] == NOUN) & self.post[units[:-1]])
            perm[swap], perm[swap + 1] = swap + 1, swap
        return perm

    def render(self, codes: np.ndarray, ids: np.ndarray, offsets: np.ndarray, tokenised: bool = False):
        """(source lines, target lines, source token counts, target token counts)."""
        n = len(offsets) - 1
        if n == 0:
            return [], [], np.zeros(0, np.int64), np.zeros(0, np.int64)
        units = self.units(codes, ids)
        starts = np.zeros(len(units), dtype=bool)
        starts[offsets[:-1]] = True
        tgt_units = units[self.target_perm(codes, units)]
        elide = np.zeros(len(units), dtype=bool)
        elide[:-1] = self.elidable[tgt_units[:-1]] & self.vowel_first[tgt_units[1:]] & ~starts[1:]
        tgt_units[elide] = self.elided_unit
        n_src = np.add.reduceat(self.src_len[units], offsets[:-1])
        n_tgt = np.add.reduceat(self.tgt_len[tgt_units], offsets[:-1])
        lines = []
        for side_units, table, glue_right in ((units, self.src_tok if tokenised else self.src_surf, None),
                                              (tgt_units, self.tgt_tok if tokenised else self.tgt_surf,
                                               self.glue_right_tgt)):
            sep = np.full(len(units), " ", dtype=object)
            if not tokenised:
                glue = self.is_punct[side_units].copy()
                if glue_right is not None:
                    glue[1:] |= glue_right[side_units[:-1]]
                sep[glue] = ""
            sep[starts] = "\n"
            sep[0] = ""
            text = "".join((sep + table[side_units]).tolist())
            lines.append(text.split("\n"))
        return lines[0], lines[1], n_src, n_tgt


def _sentences(lex: _Lexicon, domain: str, n: int, rng: np.random.Generator):
    codes, offsets = _structures(domain, n, rng)
    ids = _fill(lex, domain, codes, rng)
    return codes, ids, offsets


def _render_all(renderer: _Renderer, codes, ids, offsets, tokenised: bool = False):
    """[(source line, target line, source tokens, target tokens)] per sentence."""
    src, tgt, n_src, n_tgt = renderer.render(codes, ids, offsets, tokenised)
    return list(zip(src, tgt, n_src.tolist(), n_tgt.tolist(), strict=True))


# ---------------------------------------------------------------------------------------------
# Phrase table

def _phrase_pairs(lex: _Lexicon, cfg: DemoConfig, rng: np.random.Generator):
    """True (src, tgt, alignment) phrase pairs, then noisy ones: list of (src, tgt, align, is_true)."""
    renderer = _Renderer(lex)
    true: dict[tuple[str, str], str] = {}

    def alignment(src_lens, tgt_lens, order) -> str:
        # Unit k covers source tokens src_off[k].. and target tokens at its target position.
        src_off = np.concatenate([[0], np.cumsum(src_lens)])
        tgt_pos = {unit: j for j, unit in enumerate(order)}
        tgt_lens_ordered = [tgt_lens[u] for u in order]
        tgt_off = np.concatenate([[0], np.cumsum(tgt_lens_ordered)])
        links = []
        for k in range(len(src_lens)):
            j = tgt_pos[k]
            if src_lens[k] == tgt_lens[k]:
                links += [(src_off[k] + t, tgt_off[j] + t) for t in range(src_lens[k])]
            else:
                links += [(src_off[k] + a, tgt_off[j] + b) for a in range(src_lens[k]) for b in range(tgt_lens[k])]
        return " ".join(f"{a}-{b}" for a, b in sorted(links))

    n_true = max(1, int(round(cfg.phrase_table_pairs * cfg.phrase_table_true_fraction)))
    # About 60 % lexicon entries (all function words, then a random subset), 40 % compositions.
    concepts = lex.concepts + [lex.elided]
    core = [i for i, c in enumerate(concepts) if c.kind == CORE]
    rest = np.array([i for i, c in enumerate(concepts) if c.kind != CORE])
    n_lex = min(len(concepts), max(len(core), int(np.ceil(0.6 * n_true))))
    picked = core + sorted(rng.choice(rest, size=min(len(rest), n_lex - len(core)), replace=False).tolist())
    for i in picked:
        if len(true) >= n_true:
            break
        c = concepts[i]
        key = (" ".join(c.src), " ".join(c.tgt))
        true.setdefault(key, alignment([len(c.src)], [len(c.tgt)], [0]))
    # Compositions: short chunks of in-domain and general sentences, translated by the grammar.
    attempts = 0
    while len(true) < n_true and attempts < 50:
        attempts += 1
        domain = "in" if attempts % 2 else "general"
        codes, ids, offsets = _sentences(lex, domain, 2000, rng)
        starts = rng.integers(0, len(codes), size=4000)
        lengths = rng.integers(2, 5, size=4000)
        codes_l, ids_l = codes.tolist(), ids.tolist()
        for s, k in zip(starts.tolist(), lengths.tolist(), strict=True):
            if len(true) >= n_true:
                break
            chunk_ids = ids_l[s:s + k]
            chunk_codes = codes_l[s:s + k]
            if len(chunk_ids) < 2 or min(chunk_ids) < 0:
                continue
            # Skip chunks that cut an adjective from the noun it swaps with.
            if (chunk_codes[-1] == ADJ and renderer.post[chunk_ids[-1]]) or \
                    (chunk_codes[0] == NOUN and s > 0 and codes_l[s - 1] == ADJ and renderer.post[ids_l[s - 1]]):
                continue
            c_codes, c_ids = codes[s:s + k], ids[s:s + k]
            (src,), (tgt,), n_src, n_tgt = renderer.render(c_codes, c_ids, np.array([0, k]), tokenised=True)
            if n_src[0] > 7 or n_tgt[0] > 7:
                continue
            order = renderer.target_perm(c_codes, c_ids).tolist()
            tgt_lens = renderer.tgt_len[c_ids].tolist()
            true.setdefault((src, tgt), alignment(renderer.src_len[c_ids].tolist(), tgt_lens, order))

    true_list = list(true.items())
    n_noisy = max(0, cfg.phrase_table_pairs - len(true_list))
    noisy: dict[tuple[str, str], str] = {}
    tries = 0
    while len(noisy) < n_noisy and tries < 20:
        tries += 1
        m = 2 * (n_noisy - len(noisy)) + 10
        a = rng.integers(0, len(true_list), size=m)
        b = rng.integers(0, len(true_list), size=m)
        how = rng.random(m)
        for i in range(m):
            if len(noisy) >= n_noisy:
                break
            (src, tgt), _align = true_list[a[i]]
            tgt_toks = tgt.split()
            src_toks = src.split()
            if how[i] < 0.5:                       # a wrong target
                tgt_toks = true_list[b[i]][0][1].split()
            elif how[i] < 0.75 and len(tgt_toks) > 1:   # a partial target
                tgt_toks = tgt_toks[1:] if how[i] < 0.625 else tgt_toks[:-1]
            elif how[i] < 0.9 and len(src_toks) > 1:    # a partial source
                src_toks = src_toks[1:] if how[i] < 0.825 else src_toks[:-1]
            else:                                   # an extra target word
                extra = true_list[b[i]][0][1].split()[0]
                tgt_toks = tgt_toks + [extra]
            key = (" ".join(src_toks), " ".join(tgt_toks))
            if key in true or key in noisy or len(tgt_toks) > 7:
                continue
            links = [f"{k}-{min(k, len(tgt_toks) - 1)}" for k in range(len(src_toks))]
            noisy[key] = " ".join(links)
    pairs = [(s, t, al, 1) for (s, t), al in true_list] + [(s, t, al, 0) for (s, t), al in noisy.items()]
    return pairs


def _g(x: float) -> str:
    return f"{x:.6g}"


def _phrase_table_lines(pairs, rng: np.random.Generator) -> list[tuple[str, str]]:
    """Moses lines (sorted in C byte order) with the truth lines in the same order."""
    n = len(pairs)
    is_true = np.array([p[3] for p in pairs], dtype=bool)
    # Counts: true pairs are seen together often; noisy ones rarely. Overlap by design.
    c_joint = np.where(is_true, rng.geometric(0.08, size=n), rng.geometric(0.6, size=n))
    c_src = c_joint + np.where(is_true, rng.geometric(0.3, size=n) - 1, rng.geometric(0.04, size=n))
    c_tgt = c_joint + np.where(is_true, rng.geometric(0.3, size=n) - 1, rng.geometric(0.04, size=n))
    p_fe = c_joint / c_tgt
    p_ef = c_joint / c_src
    lex_fe = np.where(is_true, rng.beta(5, 2, size=n), rng.beta(1.2, 5, size=n)) * 0.999 + 0.0005
    lex_ef = np.where(is_true, rng.beta(5, 2, size=n), rng.beta(1.2, 5, size=n)) * 0.999 + 0.0005
    rows = []
    for i, (src, tgt, align, truth) in enumerate(pairs):
        scores = " ".join(_g(v) for v in (p_fe[i], lex_fe[i], p_ef[i], lex_ef[i]))
        counts = f"{c_tgt[i]} {c_src[i]} {c_joint[i]}"
        rows.append((f"{src} ||| {tgt} ||| {scores} ||| {align} ||| {counts}", f"{src}\t{tgt}\t{truth}"))
    # Python orders str by code point, which is UTF-8 byte order: LC_ALL=C sort's order.
    rows.sort(key=lambda r: r[0])
    return rows


# ---------------------------------------------------------------------------------------------
# Files

def _write_lines(path: Path, lines: Sequence[str]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write("".join(f"{line}\n" for line in lines))


def _noise(lex, renderer, cfg, rng, pool_domain, rendered):
    """Replace a few pool lines by ones a cleaner must drop; return their line numbers by kind."""
    n = cfg.pool_size

    def count(frac):
        k = int(round(frac * n))
        return max(k, 1) if n >= 100 else k

    k_empty, k_long, k_ratio = (count(cfg.noise_empty_fraction), count(cfg.noise_long_fraction),
                                count(cfg.noise_ratio_fraction))
    total = k_empty + k_long + k_ratio
    if total == 0:
        return {"empty_source": [], "empty_target": [], "long": [], "ratio": []}
    where = rng.choice(n, size=min(total, n), replace=False)
    lines = {"empty_source": [], "empty_target": [], "long": [], "ratio": []}
    for j, idx in enumerate(where.tolist()):
        domain = "in" if pool_domain[idx] else "general"
        src, tgt, ns, nt = rendered[idx]
        if j < k_empty:
            if j % 2 == 0:
                rendered[idx] = ("", tgt, 0, nt)
                lines["empty_source"].append(idx + 1)
            else:
                rendered[idx] = (src, "", ns, 0)
                lines["empty_target"].append(idx + 1)
        elif j < k_empty + k_long:
            # One sentence of many clauses: more than 100 tokens a side.
            codes, offsets = _structures(domain, 1, rng, min_clauses=16, extra_clauses=np.zeros(1, dtype=np.int64))
            ids = _fill(lex, domain, codes, rng)
            rendered[idx] = _render_all(renderer, codes, ids, offsets)[0]
            lines["long"].append(idx + 1)
        else:
            # A two-token source ("word.") against a target of 30-80 tokens: ratio > 9.
            codes, offsets = _structures(domain, 1, rng, min_clauses=4, extra_clauses=np.zeros(1, dtype=np.int64))
            ids = _fill(lex, domain, codes, rng)
            _s, long_tgt, _ns, nt = _render_all(renderer, codes, ids, offsets)[0]
            nouns = lex.tables[(domain, NOUN)][0]
            one = [c for c in nouns.tolist() if renderer.src_len[c] == 1]
            word = renderer.src_surf[one[int(rng.integers(len(one)))]]
            rendered[idx] = (word + ".", long_tgt, 2, nt)
            lines["ratio"].append(idx + 1)
    return {kind: sorted(numbers) for kind, numbers in lines.items()}


def generate_demo(out_dir: str | Path, config: DemoConfig = DemoConfig()) -> DemoFiles:
    """Write the demo corpora, phrase table and ground truth into ``out_dir``; return the paths."""
    cfg = config
    if not 0.0 <= cfg.pool_in_domain_fraction <= 1.0:
        raise ValueError("pool_in_domain_fraction must be within [0, 1]")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    files = DemoFiles(
        root=root, pool_src=root / f"pool.{SOURCE_LANG}", pool_tgt=root / f"pool.{TARGET_LANG}",
        pool_in_domain=root / "pool.in_domain",
        in_domain_src=root / f"in_domain.{SOURCE_LANG}", in_domain_tgt=root / f"in_domain.{TARGET_LANG}",
        dev_src=root / f"dev.{SOURCE_LANG}", dev_tgt=root / f"dev.{TARGET_LANG}",
        phrase_table=root / "phrase-table.gz", phrase_table_truth=root / "phrase-table.truth.tsv",
        lexicon=root / "lexicon.tsv", truth=root / "truth.json")

    rng = np.random.default_rng(cfg.seed)
    lex = _Lexicon(cfg, rng)
    renderer = _Renderer(lex)

    # Pool: an exact number of in-domain lines at random positions.
    n_in = int(round(cfg.pool_size * cfg.pool_in_domain_fraction))
    pool_domain = np.zeros(cfg.pool_size, dtype=np.int8)
    pool_domain[rng.choice(cfg.pool_size, size=n_in, replace=False)] = 1
    rendered: list[Any] = [None] * cfg.pool_size
    for flag, domain in ((1, "in"), (0, "general")):
        where = np.flatnonzero(pool_domain == flag)
        codes, ids, offsets = _sentences(lex, domain, len(where), rng)
        for idx, row in zip(where.tolist(), _render_all(renderer, codes, ids, offsets), strict=True):
            rendered[idx] = row
    noise = _noise(lex, renderer, cfg, rng, pool_domain, rendered)

    corpora = {"pool": rendered}
    for name, n in (("in_domain", cfg.in_domain_size), ("dev", cfg.dev_size)):
        codes, ids, offsets = _sentences(lex, "in", n, rng)
        corpora[name] = _render_all(renderer, codes, ids, offsets)

    tokens = {}
    for name, rows in corpora.items():
        _write_lines(root / f"{name}.{SOURCE_LANG}", [r[0] for r in rows])
        _write_lines(root / f"{name}.{TARGET_LANG}", [r[1] for r in rows])
        tokens[f"{name}.{SOURCE_LANG}"] = int(sum(r[2] for r in rows))
        tokens[f"{name}.{TARGET_LANG}"] = int(sum(r[3] for r in rows))
    _write_lines(files.pool_in_domain, [str(int(x)) for x in pool_domain])

    lexicon_rows = [c for c in lex.concepts] + [lex.elided]
    _write_lines(files.lexicon, [f"{' '.join(c.src)}\t{' '.join(c.tgt)}\t{c.kind}" for c in lexicon_rows])

    pairs = _phrase_pairs(lex, cfg, rng)
    rows = _phrase_table_lines(pairs, rng)
    with open(files.phrase_table, "wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz:
        gz.write("".join(f"{r[0]}\n" for r in rows).encode("utf-8"))
    _write_lines(files.phrase_table_truth, [r[1] for r in rows])

    kinds: dict[str, int] = {}
    for c in lexicon_rows:
        kinds[c.kind] = kinds.get(c.kind, 0) + 1
    truth = {
        "config": dataclasses.asdict(cfg),
        "languages": {"source": SOURCE_LANG, "target": TARGET_LANG},
        "counts": {
            "pool": cfg.pool_size, "pool_in_domain": n_in, "in_domain": cfg.in_domain_size,
            "dev": cfg.dev_size,
            "noise": {k: len(v) for k, v in noise.items()},
            "lexicon": len(lexicon_rows), "lexicon_by_domain": dict(sorted(kinds.items())),
            "phrase_table": len(rows), "phrase_table_true": int(sum(p[3] for p in pairs)),
            "phrase_table_noisy": int(sum(1 - p[3] for p in pairs)),
            "tokens": tokens,
        },
        "noise_lines": noise,
    }
    files.truth.write_text(json.dumps(truth, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return files


def tokenised_sample(config: DemoConfig, domain: str, n: int) -> list[tuple[str, str, str, str]]:
    """n sentence pairs of ``domain`` ("in" or "general") as (src, tgt, src tokens, tgt tokens).

    The tokens are what the Moses tokenizer (``-escape``) should make of the untokenised lines;
    the tests check that it does.
    """
    rng = np.random.default_rng(config.seed)
    lex = _Lexicon(config, rng)
    renderer = _Renderer(lex)
    codes, ids, offsets = _sentences(lex, domain, n, rng)
    plain = _render_all(renderer, codes, ids, offsets)
    tok = _render_all(renderer, codes, ids, offsets, tokenised=True)
    return [(p[0], p[1], t[0], t[1]) for p, t in zip(plain, tok, strict=True)]
