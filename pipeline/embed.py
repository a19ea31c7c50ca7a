"""2-D maps of what the encoder learnt: source word embeddings and phrase representations c.

Cho et al. (2014) §4.3 (Figs 4-5) project the learnt word embeddings and the summary vectors
c of phrases to two dimensions with Barnes-Hut-SNE and find phrases grouped by syntax and
meaning. Here: ``embed_words`` (rows of ``model.src_embed`` for the most frequent source words),
``embed_phrases`` (c = ``model.encode`` of phrases with ``</s>`` appended, as in training),
both through ``pipeline.tsne.tsne_2d`` (scikit-learn's Barnes-Hut t-SNE, seeded); ``sample_phrases`` draws
distinct phrases from a Parquet phrase table; ``plot_map`` draws a labelled scatter plot whose
labels never overlap (a label that would cover another is left out and counted).

Coordinates come back as a pandas DataFrame with the columns ``kind`` (``word`` or ``phrase``),
``text``, ``x``, ``y``, ``length`` (tokens), ``rank`` (words: frequency rank, 1 = most frequent;
phrases: the sample's order), ``labelled`` (set by ``plot_map``'s caller) and any columns
carried along (``extra``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from rnnenc.pipeline.errors import UserError
from rnnenc.pipeline.model import EncoderDecoder, make_batch
from rnnenc.pipeline.tsne import DEFAULT_PERPLEXITY, tsne_2d
from rnnenc.pipeline.vocab import SPECIALS, Vocabulary


def frequent_words(vocab: Vocabulary, n: int) -> list[str]:
    """The ``n`` most frequent words of a vocabulary (its order after the special symbols)."""
    return vocab.itos[len(SPECIALS):len(SPECIALS) + max(n, 0)]


@torch.no_grad()
def embed_words(model: EncoderDecoder, src_vocab: Vocabulary, n: int = 500, seed: int = 0,
                perplexity: float = DEFAULT_PERPLEXITY, words: Sequence[str] = ()) -> pd.DataFrame:
    """2-D map of the source word embeddings of the ``n`` most frequent words (plus ``words``).

    Parameters:
        model: the encoder-decoder; its ``src_embed`` rows are mapped.
        src_vocab: its source vocabulary (ids in frequency order after the specials).
        n: how many of the most frequent words.
        seed, perplexity: ``tsne_2d``'s.
        words: more words to include (e.g. the ones to label); those outside the vocabulary
            are skipped.

    Returns the coordinates (module docstring), one row per word, ``rank`` its frequency rank.
    """
    chosen = list(dict.fromkeys(frequent_words(src_vocab, n) + [w for w in words if w in src_vocab
                                                                  and w not in SPECIALS]))
    ids = torch.tensor([src_vocab.stoi[w] for w in chosen], dtype=torch.long)
    weight = model.src_embed.weight.detach()
    vectors = weight[ids.to(weight.device)].float().cpu().numpy()
    xy = tsne_2d(vectors, seed=seed, perplexity=perplexity)
    return pd.DataFrame({"kind": "word", "text": chosen, "x": xy[:, 0], "y": xy[:, 1], "length": 1,
                         "rank": (ids - len(SPECIALS) + 1).numpy(), "labelled": False})


@torch.no_grad()
def phrase_vectors(model: EncoderDecoder, src_vocab: Vocabulary, phrases: Sequence[str | Sequence[str]],
                   batch_size: int = 256) -> np.ndarray:
    """The representations c (n, H) of source phrases (``</s>`` appended, as in training).

    Parameters:
        model: the encoder-decoder (run on its own device, in eval mode).
        src_vocab: its source vocabulary; unknown words become ``<unk>``.
        phrases: token lists or strings of space-separated tokens.
        batch_size: phrases encoded together.
    """
    model.eval()
    device = next(model.parameters()).device
    tokens = [p.split() if isinstance(p, str) else list(p) for p in phrases]
    out = np.zeros((len(tokens), model.config.hidden), dtype=np.float32)
    order = sorted(range(len(tokens)), key=lambda i: len(tokens[i]))  # similar lengths: less padding
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        # make_batch appends </s> as training did; its targets ([] -> </s>) are not used
        batch = make_batch([tokens[i] for i in chunk], [[] for _ in chunk], src_vocab, src_vocab)
        c = model.encode(batch.src.to(device), batch.src_lengths.to(device))
        out[chunk] = c.float().cpu().numpy()
    return out


def embed_phrases(model: EncoderDecoder, src_vocab: Vocabulary, phrases: Sequence[str], seed: int = 0,
                  perplexity: float = DEFAULT_PERPLEXITY, extra: Mapping[str, Sequence[Any]] | None = None
                  ) -> pd.DataFrame:
    """2-D map of the phrase representations c of ``phrases``.

    Parameters:
        model, src_vocab: the encoder-decoder and its source vocabulary.
        phrases: source phrases (space-separated tokens), each mapped once (duplicates are an error).
        seed, perplexity: ``tsne_2d``'s.
        extra: columns to carry into the result, each one value per phrase (e.g. the column to
            colour by).

    Returns the coordinates (module docstring), one row per phrase in input order.
    """
    phrases = [" ".join(p.split()) for p in phrases]
    if len(set(phrases)) != len(phrases):
        raise UserError("embed_phrases: a phrase is listed twice")
    xy = tsne_2d(phrase_vectors(model, src_vocab, phrases), seed=seed, perplexity=perplexity)
    frame = pd.DataFrame({"kind": "phrase", "text": phrases, "x": xy[:, 0], "y": xy[:, 1],
                          "length": [len(p.split()) for p in phrases], "rank": np.arange(1, len(phrases) + 1),
                          "labelled": False})
    for name, values in (extra or {}).items():
        if name in frame.columns:
            raise UserError(f"embed_phrases: column '{name}' is one of the map's own")
        if len(values) != len(phrases):
            raise UserError(f"embed_phrases: column '{name}' has {len(values)} values for {len(phrases)} phrases")
        frame[name] = list(values)
    return frame


def sample_phrases(table: str | Path, n: int, seed: int = 0, column: str = "source",
                   keep: Sequence[str] = ()) -> pd.DataFrame:
    """``n`` distinct phrases of a Parquet table's ``column``, uniformly at random and seeded.

    Parameters:
        table: a Parquet phrase table directory (``part-*.parquet``) or one Parquet file.
        n: how many distinct phrases (all of them when the table has fewer).
        seed: the same seed and table give the same sample, however the table is cut into parts.
        column: the column of phrases.
        keep: other columns to return, from the first row (in table order) of each phrase.

    The table is streamed: the phrases with the ``n`` smallest seeded hashes are kept (a
    bottom-k sample: uniform over the distinct phrases, whatever their number of rows), so
    memory holds about ``n`` rows. Returns a DataFrame with ``column`` and ``keep``, in the
    sample's (random) order.
    """
    import pyarrow.parquet as pq

    from rnnenc.pipeline.phrase_table import list_parts

    if n < 1:
        raise UserError(f"--sample must be at least 1 (got {n})")
    columns = list(dict.fromkeys([column, *keep]))
    key = f"{seed % 16**16:016x}"  # pandas hashes with a 16-character key: the seed, as hex
    best: pd.DataFrame | None = None
    for part in list_parts(table):
        handle = pq.ParquetFile(part)
        missing = [c for c in columns if c not in handle.schema_arrow.names]
        if missing:
            raise UserError(f"{part}: no column {', '.join(repr(c) for c in missing)} "
                            f"(columns: {', '.join(handle.schema_arrow.names)})")
        for batch in handle.iter_batches(columns=columns, batch_size=1 << 16):
            frame = batch.to_pandas()
            frame = frame[frame[column].notna()]
            frame[column] = [" ".join(v.split()) for v in frame[column]]
            frame = frame[frame[column] != ""].drop_duplicates(column)
            frame["_hash"] = pd.util.hash_array(frame[column].to_numpy(dtype=object), hash_key=key)
            frame = frame.nsmallest(n, "_hash")
            # the rows kept so far come first, so a phrase keeps the values of its first row
            best = frame if best is None else pd.concat([best, frame]).drop_duplicates(column).nsmallest(n, "_hash")
    if best is None or best.empty:
        raise UserError(f"{table}: no phrase in column '{column}'")
    return best.sort_values("_hash", kind="stable").drop(columns="_hash").reset_index(drop=True)


def label_priority(frame: pd.DataFrame, vocab: Vocabulary | None = None) -> np.ndarray:
    """Row order in which to try labels: words by frequency; phrases by the mean frequency rank
    of their words (phrases of common words are the ones a reader knows), taken in turn from each
    phrase length, so that long phrases are labelled too (shorter ones would fill the budget)."""
    if (frame["kind"] == "word").all() or vocab is None:
        return np.argsort(frame["rank"].to_numpy(), kind="stable")
    unknown = len(vocab) + 1

    def mean_rank(text: str) -> float:
        return float(np.mean([vocab.stoi.get(w, unknown) for w in text.split()]))

    ranks = np.array([mean_rank(t) for t in frame["text"]])
    lengths = frame["length"].to_numpy()
    queues = [list(np.flatnonzero(lengths == n)[np.argsort(ranks[lengths == n], kind="stable")])
              for n in sorted(set(lengths.tolist()))]
    order: list[int] = []
    for turn in range(max((len(q) for q in queues), default=0)):
        order += [q[turn] for q in queues if turn < len(q)]
    return np.array(order, dtype=np.int64)


_MOSES_ESCAPES = {"&apos;": "'", "&quot;": '"', "&lt;": "<", "&gt;": ">", "&#124;": "|", "&#91;": "[",
                  "&#93;": "]", "&amp;": "&"}


def display_text(text: str) -> str:
    """``text`` with the Moses tokenizer's escapes undone (``&apos;`` -> ``'``), for labels."""
    for escaped, plain in _MOSES_ESCAPES.items():
        text = text.replace(escaped, plain)
    return text


def plot_map(frame: pd.DataFrame, path: str | Path, title: str, *, labels: int = 60,
             label_texts: Sequence[str] = (), priority: np.ndarray | None = None,
             color_by: str | None = None, dpi: int = 120, size: float = 13.0) -> dict[str, int]:
    """Write a scatter plot of ``frame``'s points with readable labels as a PNG.

    Parameters:
        frame: coordinates (``x``, ``y``, ``text`` and ``color_by``); its ``labelled`` column is
            updated in place to say which points carry a label.
        path: the PNG to write.
        title: the figure's title.
        labels: how many labels to place at most, tried in ``priority`` order; a label that
            would overlap one already placed (or leave the axes) is skipped.
        label_texts: texts labelled first (if in ``frame``), not counted in ``labels``, and
            placed even where they overlap: the user asked for them.
        priority: row order for the labels (default: ``frame``'s order).
        color_by: a column of ``frame`` to colour by: integers with few values (such as
            ``length``) and strings get a legend of categories, other numbers a colour bar;
            None: one colour.
        dpi, size: resolution and side of the square figure in inches.

    Returns ``{"labels": placed, "labels_skipped": skipped for overlap}``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(size, size), dpi=dpi)
    x, y = frame["x"].to_numpy(), frame["y"].to_numpy()
    _scatter(ax, frame, color_by)
    ax.set_title(title, fontsize=14)
    ax.set_xticks([])
    ax.set_yticks([])
    pad_x = (x.max() - x.min()) * 0.04 if len(x) else 1.0
    pad_y = (y.max() - y.min()) * 0.04 if len(y) else 1.0
    ax.set_xlim(x.min() - pad_x, x.max() + pad_x) if len(x) else None
    ax.set_ylim(y.min() - pad_y, y.max() + pad_y) if len(y) else None
    fig.tight_layout()
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axes_box = ax.get_window_extent(renderer)
    placed: list[Any] = []
    labelled = np.zeros(len(frame), dtype=bool)
    texts = frame["text"].tolist()
    wanted = set(label_texts)
    order = list(priority if priority is not None else range(len(frame)))
    first = [i for i in range(len(frame)) if texts[i] in wanted]
    skipped = 0
    style = dict(fontsize=8, ha="left", va="bottom", zorder=3,
                 bbox=dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor="none", alpha=0.75))
    budget = labels
    for i in first + [i for i in order if texts[i] not in wanted]:
        forced = texts[i] in wanted
        if not forced and budget <= 0:
            break
        if labelled[i]:
            continue
        label = ax.annotate(display_text(texts[i]), (x[i], y[i]), xytext=(3, 3), textcoords="offset points", **style)
        box = label.get_window_extent(renderer).expanded(1.05, 1.1)
        inside = (box.x0 >= axes_box.x0 and box.x1 <= axes_box.x1 and box.y0 >= axes_box.y0
                  and box.y1 <= axes_box.y1)
        if not forced and (not inside or any(box.overlaps(other) for other in placed)):
            label.remove()
            skipped += 1
            continue
        placed.append(box)
        labelled[i] = True
        if not forced:
            budget -= 1
    frame["labelled"] = labelled
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
    tmp.replace(path)
    return {"labels": int(labelled.sum()), "labels_skipped": skipped}


def _scatter(ax, frame: pd.DataFrame, color_by: str | None) -> None:
    """Points coloured by ``color_by`` with a legend or a colour bar (``plot_map``)."""
    import matplotlib.pyplot as plt

    x, y = frame["x"].to_numpy(), frame["y"].to_numpy()
    point = dict(s=14, alpha=0.65, linewidths=0)
    if color_by is None:
        ax.scatter(x, y, color="tab:blue", **point)
        return
    values = frame[color_by]
    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    integer = numeric and np.all(np.isfinite(values.to_numpy(dtype=float))) and \
        np.allclose(values.to_numpy(dtype=float), np.round(values.to_numpy(dtype=float)))
    if numeric and not (integer and values.nunique() <= 12):
        finite = np.isfinite(values.to_numpy(dtype=float))
        if (~finite).any():
            ax.scatter(x[~finite], y[~finite], color="lightgrey", label="no value", **point)
        shown = ax.scatter(x[finite], y[finite], c=values.to_numpy(dtype=float)[finite], cmap="viridis", **point)
        plt.colorbar(shown, ax=ax, fraction=0.035, pad=0.01).set_label(color_by)
        return
    # categories: the 10 most common get colours of their own, the rest one grey
    keys = values.astype("string").fillna("(none)")
    if integer:
        cats = sorted(values.dropna().unique().tolist())
        names = {c: str(int(c)) for c in cats}
        keys = values.map(lambda v: None if pd.isna(v) else names[v]).astype("string").fillna("(none)")
        top = [names[c] for c in cats][:10]
    else:
        top = keys.value_counts().index.tolist()[:10]
    palette = plt.get_cmap("tab10")
    for k, cat in enumerate(top):
        rows = (keys == cat).to_numpy()
        ax.scatter(x[rows], y[rows], color=palette(k), label=f"{cat} ({int(rows.sum())})", **point)
    rest = ~keys.isin(top).to_numpy()
    if rest.any():
        ax.scatter(x[rest], y[rest], color="lightgrey", label=f"other ({int(rest.sum())})", **point)
    ax.legend(title=color_by, loc="upper right", fontsize=9, title_fontsize=10, markerscale=2, framealpha=0.85)


def read_label_texts(path: str | Path) -> list[str]:
    """Words or phrases to label, one a line (blank lines and ``#`` comments skipped)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: label file not found")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    return [" ".join(line.split()) for line in lines if line.strip() and not line.lstrip().startswith("#")]


__all__ = ["DEFAULT_PERPLEXITY", "display_text", "embed_phrases", "embed_words", "frequent_words", "label_priority",
           "phrase_vectors", "plot_map", "read_label_texts", "sample_phrases", "tsne_2d"]
