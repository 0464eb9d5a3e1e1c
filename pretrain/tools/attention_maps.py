"""`pretrain attention`: look at which earlier tokens each token attends to.

Each head of each layer turns a sentence into a (query, key) matrix of weights
softmax(Q K^T / sqrt(d)): row i is how token i spreads its attention over
tokens 0..i (the row sums to 1; later tokens are masked, so the upper
triangle is empty). Looking at these matrices is a direct way to learn what
attention does: some heads look at the previous token, some at the first,
some at a related word. This module writes them as heatmaps (one figure per
layer, all heads side by side, plus one large figure of a chosen head), as
raw arrays for your own analysis, and as a table for the terminal.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from model import GPT
from pretrain.errors import PretrainError
from pretrain.export.exporter import load_trained_model

WEIGHTS_FILE = "attention.npz"
MASKED = "·"  # the terminal's mark for a key a query may not see (a later token)


def encode_text(tokenizer: Tokenizer, text: str, max_seq_len: int) -> list[int]:
    """The token ids of `text`, without special tokens: the maps show exactly what you typed."""
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    if not ids:
        raise PretrainError("--text has no tokens; pass a sentence, e.g. --text 'I love artificial intelligence.'")
    if len(ids) > max_seq_len:
        raise PretrainError(
            f"--text is {len(ids)} tokens, more than the model's max_seq_len of {max_seq_len}; pass a shorter text"
        )
    return ids


def token_labels(tokenizer: Tokenizer, ids: list[int]) -> list[str]:
    """Each token as readable text: its own decoding, with spaces as ␣ and newlines as ↵.

    A byte-level BPE token usually carries the space before a word ("Ġlove" in
    the vocabulary, " love" decoded); ␣ keeps that space visible. A token that
    is a piece of a multi-byte character does not decode alone, so it is shown
    by its vocabulary name instead.
    """
    labels = []
    for token_id in ids:
        text = tokenizer.decode([token_id], skip_special_tokens=False)
        if not text or "\ufffd" in text:
            text = tokenizer.id_to_token(token_id) or f"#{token_id}"
        labels.append(text.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥"))
    return labels


def compute_weights(model: GPT, ids: list[int]) -> np.ndarray:
    """All attention weights for one sentence: (layers, heads, queries, keys), float32.

    The model's explicit attention path forms the matrices the fused training
    kernel never writes out; the numbers are the same softmax it computes.
    """
    weights = model.attention_weights(torch.tensor([ids], dtype=torch.long))
    return torch.stack([layer[0] for layer in weights]).float().numpy()


def check_choice(name: str, value: int, count: int) -> None:
    if not 0 <= value < count:
        raise PretrainError(f"--{name} {value} is out of range; this model has {count} {name}s: 0 to {count - 1}")


def _abbreviate(label: str, width: int) -> str:
    return label if len(label) <= width else label[: width - 1] + "…"


def format_table(matrix: np.ndarray, labels: list[str], cell: int = 6) -> str:
    """One head's matrix for the terminal: a row per query token, a column per key token.

    Entries above the diagonal are keys the query cannot see (later tokens),
    shown as · rather than 0.00 so the causal mask stands out.
    """
    names = [f"{i:>3} {_abbreviate(label, 10)}" for i, label in enumerate(labels)]
    first = max(len(name) for name in names)
    header = " " * first + "".join(f"{_abbreviate(label, cell - 1):>{cell}}" for label in labels)
    rows = [header]
    for query, name in enumerate(names):
        values = (f"{matrix[query, key]:.2f}" if key <= query else MASKED for key in range(len(labels)))
        rows.append(f"{name:<{first}}" + "".join(f"{value:>{cell}}" for value in values))
    return "\n".join(rows)


def _draw(ax, matrix: np.ndarray, labels: list[str], fontsize: float):
    """One heatmap on `ax`: masked cells blank, 0..1 color scale shared by every head."""
    import matplotlib

    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="white")
    masked = np.ma.masked_where(np.triu(np.ones_like(matrix, dtype=bool), k=1), matrix)
    image = ax.imshow(masked, cmap=cmap, vmin=0.0, vmax=1.0)
    ticks = range(len(labels))
    # parse_math off: a token such as "$" must print as itself, not start a formula.
    ax.set_xticks(ticks, labels, rotation=90, fontsize=fontsize, parse_math=False)
    ax.set_yticks(ticks, labels, fontsize=fontsize, parse_math=False)
    ax.set_xlabel("key: attended to", fontsize=fontsize + 1)
    ax.set_ylabel("query: attending", fontsize=fontsize + 1)
    return image


def _save(fig, path: Path) -> None:
    # The Agg canvas renders to a file without a display, and leaves pyplot's global state alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=100, bbox_inches="tight")


def plot_layer(weights: np.ndarray, labels: list[str], layer: int, path: Path) -> None:
    """All heads of one layer in a grid, to compare what each head looks at."""
    from matplotlib.figure import Figure

    heads, seq = weights.shape[0], len(labels)
    cols = min(heads, 4)
    rows = -(-heads // cols)
    side = min(max(3.0, 0.28 * seq + 1.5), 12.0)  # inches per head: room for each token's label
    fig = Figure(figsize=(side * cols + 1.5, side * rows + 0.8), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for head, ax in enumerate(axes.flat):
        if head >= heads:
            ax.set_visible(False)
            continue
        image = _draw(ax, weights[head], labels, fontsize=8 if seq <= 24 else 6)
        ax.set_title(f"head {head}")
    fig.suptitle(f"layer {layer}: attention weights of each head (row = query, sums to 1)")
    fig.colorbar(image, ax=axes, shrink=0.6, label="attention weight")
    _save(fig, path)


def plot_head(matrix: np.ndarray, labels: list[str], layer: int, head: int, path: Path) -> None:
    """One head, large, with the value written in each cell when the text is short enough to read them."""
    from matplotlib.figure import Figure

    seq = len(labels)
    side = min(max(6.0, 0.5 * seq + 2.0), 24.0)
    fig = Figure(figsize=(side + 1.5, side), layout="constrained")
    ax = fig.subplots()
    image = _draw(ax, matrix, labels, fontsize=10 if seq <= 24 else 7)
    if seq <= 24:
        for query in range(seq):
            for key in range(query + 1):
                value = matrix[query, key]
                color = "black" if value > 0.6 else "white"  # readable on viridis' yellow and its blue
                ax.text(key, query, f"{value:.2f}", ha="center", va="center", fontsize=7, color=color)
    ax.set_title(f"layer {layer}, head {head}")
    fig.colorbar(image, ax=ax, shrink=0.8, label="attention weight")
    _save(fig, path)


def show_attention(path: Path, text: str, out_dir: Path, layer: int, head: int, tag: str | None = None) -> str:
    """Write every layer's heatmap, the chosen head's, and the raw weights; return the report to print."""
    model, tokenizer = load_trained_model(path, tag)
    config = model.config
    check_choice("layer", layer, config.n_layer)
    check_choice("head", head, config.n_head)
    ids = encode_text(tokenizer, text, config.max_seq_len)
    labels = token_labels(tokenizer, ids)
    weights = compute_weights(model, ids)

    out_dir.mkdir(parents=True, exist_ok=True)
    arrays = {f"layer_{index:02d}": layer_weights for index, layer_weights in enumerate(weights)}
    np.savez(out_dir / WEIGHTS_FILE, token_ids=np.array(ids), tokens=np.array(labels), **arrays)
    for index, layer_weights in enumerate(weights):
        plot_layer(layer_weights, labels, index, out_dir / f"layer_{index:02d}.png")
    head_png = out_dir / f"layer_{layer:02d}_head_{head:02d}.png"
    plot_head(weights[layer, head], labels, layer, head, head_png)

    where = out_dir.resolve()
    return "\n".join(
        [
            f"layer {layer}, head {head} ({len(ids)} tokens): row = query token, column = key token it attends to",
            f"each row sums to 1; {MASKED} = masked, a later token the query cannot see",
            format_table(weights[layer, head], labels),
            "",
            f"heatmaps:  {where}/layer_00.png .. layer_{config.n_layer - 1:02d}.png (all heads of each layer)",
            f"           {head_png.resolve()} (layer {layer}, head {head})",
            f"weights:   {where / WEIGHTS_FILE} (layer_LL: heads x queries x keys; tokens, token_ids)",
        ]
    )
