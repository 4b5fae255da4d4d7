"""ARPA back-off n-gram models over token ids: read into a BackoffModel (and a style pack), write one.

The words of the ARPA file must be the serving model's token ids in decimal (e.g. KenLM's
``lmplz -o 5 < corpus.ids > model.arpa`` over a corpus written as one document per line of
space-separated ids), plus the specials <s>, </s> and <unk>:
- values are log10 in the file, natural logs in the model (x ln 10); the backoff recursion is the
  standard one (backoff.py), so the compiled pack reproduces ln P_backoff up to a per-row constant;
- <unk>: its unigram probability is the floor, the probability of every token id without a
  unigram line. Without <unk>, the floor is the smallest listed unigram probability (ARPA would
  give such tokens zero probability, which no finite logit offset can express). N-grams of order
  >= 2 containing <unk> are dropped: <unk> stands for no single token id;
- <s>: steering sees text mid-stream, never a sentence start, so n-grams whose context holds <s>
  never match and are dropped, and <s> is never predicted (lmplz writes -99 for it);
- </s>: it is no token id the model can emit, so it is dropped as a predicted word; softmax
  renormalises what is left over the token ids;
- a context (n-1)-gram listed without a backoff has weight 1 (log 0), as is standard.
Orders 1..6. Text before ``\\data\\`` is ignored, as the format allows. Files may be gzip-compressed
(``.gz``). Malformed input raises StylePackError naming the file, the line and the problem.
"""
from __future__ import annotations

import gzip
import math
import os

import numpy as np

from .backoff import BackoffModel, BackoffOrder, find_rows, lexsort_rows, row_keys
from .counting import MAX_ORDER, OrderTable, bits_per_token
from .errors import StylePackError
from .pack import DEFAULT_SMOOTHING_K, StylePack, default_weights

LN10 = math.log(10.0)
BOS, EOS, UNK = "<s>", "</s>", "<unk>"
_SPECIAL_IDS = {BOS: -2, EOS: -3, UNK: -4}  # below 0, so they never collide with a token id


class _Lines:
    """Numbered, stripped lines of a text file; errors name the file and line."""

    def __init__(self, path: str):
        self.path = path
        opener = gzip.open if path.endswith(".gz") else open
        try:
            self._f = opener(path, "rt", encoding="utf-8")
            self._it = iter(self._f)
        except OSError as exc:
            raise StylePackError(f"cannot read ARPA file {path!r}: {exc}") from exc
        self.number = 0

    def next(self) -> str | None:
        try:
            line = next(self._it)
        except StopIteration:
            return None
        except (UnicodeDecodeError, OSError, EOFError) as exc:
            raise self.error(f"unreadable ({exc})") from exc
        self.number += 1
        return line.strip()

    def next_nonblank(self) -> str | None:
        while True:
            line = self.next()
            if line is None or line:
                return line

    def error(self, why: str) -> StylePackError:
        return StylePackError(f"ARPA file {self.path!r}, line {self.number}: {why}")

    def close(self) -> None:
        self._f.close()


def _word_id(word: str, vocab_size: int, lines: _Lines) -> int:
    special = _SPECIAL_IDS.get(word)
    if special is not None:
        return special
    if not word.isdigit():  # isdigit also admits other scripts' digits; int() below rejects them
        raise lines.error(f"unknown token {word!r}: words must be token ids (decimal) or <s>, </s>, <unk>")
    try:
        tid = int(word)
    except ValueError:
        raise lines.error(f"unknown token {word!r}: words must be token ids (decimal) or <s>, </s>, <unk>") from None
    if tid >= vocab_size:
        raise lines.error(f"token id {tid} is outside the tokenizer's vocabulary of {vocab_size}")
    return tid


def _number(text: str, what: str, lines: _Lines) -> float:
    try:
        x = float(text)
    except ValueError:
        raise lines.error(f"{what} {text!r} is not a number") from None
    if not math.isfinite(x):
        raise lines.error(f"{what} {text!r} is not finite")
    return x


def parse_arpa(path: str, vocab_size: int):
    """The raw sections: for each order n, (grams [M, n] int64 with specials < 0, log10 p [M],
    log10 backoff [M], has_backoff [M] bool)."""
    lines = _Lines(path)
    try:
        line = lines.next()
        while line is not None and line != "\\data\\":
            line = lines.next()
        if line is None:
            raise StylePackError(f"ARPA file {path!r}: no \\data\\ header (is this an ARPA file?)")
        declared: list[int] = []
        line = lines.next_nonblank()
        while line is not None and line.startswith("ngram "):
            key, _, value = line[len("ngram "):].partition("=")
            try:
                n, count = int(key), int(value)
            except ValueError:
                raise lines.error(f"malformed count line {line!r} (want 'ngram N=COUNT')") from None
            if n != len(declared) + 1:
                raise lines.error(f"count lines must list orders 1, 2, ... in turn; got order {n}")
            if n > MAX_ORDER:
                raise lines.error(f"order {n} is above the supported maximum of {MAX_ORDER}")
            if count < 0:
                raise lines.error(f"negative n-gram count {count}")
            declared.append(count)
            line = lines.next_nonblank()
        if not declared:
            raise lines.error("no 'ngram N=COUNT' lines after \\data\\")
        sections = []
        for n, count in enumerate(declared, 1):
            if line != f"\\{n}-grams:":
                raise lines.error(f"expected the \\{n}-grams: section, found {line!r}")
            grams = np.empty((count, n), dtype=np.int64)
            logp = np.empty(count, dtype=np.float64)
            backoff = np.zeros(count, dtype=np.float64)
            has_bo = np.zeros(count, dtype=bool)
            for i in range(count):
                line = lines.next()
                if not line or line.startswith("\\"):
                    raise lines.error(f"the {n}-grams section ends after {i} lines; the header declares {count}")
                fields = line.split()
                if len(fields) not in (n + 1, n + 2):
                    raise lines.error(f"a {n}-gram line needs {n + 1} or {n + 2} fields, found {len(fields)}")
                logp[i] = _number(fields[0], "log10 probability", lines)
                grams[i] = [_word_id(w, vocab_size, lines) for w in fields[1:n + 1]]
                if len(fields) == n + 2:
                    backoff[i] = _number(fields[n + 1], "log10 backoff", lines)
                    has_bo[i] = True
            line = lines.next_nonblank()
            if line is not None and not line.startswith("\\"):
                raise lines.error(f"the {n}-grams section has more lines than the {count} declared")
            sections.append((grams, logp, backoff, has_bo))
        if line != "\\end\\":
            raise lines.error(f"expected \\end\\, found {'end of file' if line is None else repr(line)} "
                              "(truncated file?)")
    finally:
        lines.close()
    for n, (grams, *_rest) in enumerate(sections, 1):
        if grams.shape[0] > 1:
            keys = row_keys(grams + 4, bits_per_token(vocab_size + 4))  # specials are -4..-2
            if np.unique(keys).shape[0] != keys.shape[0]:
                raise StylePackError(f"ARPA file {path!r}: duplicate {n}-grams")
    return sections


def read_arpa(path: str, vocab_size: int) -> BackoffModel:
    """An ARPA file over token ids as a BackoffModel (natural logs; specials per the module docstring)."""
    sections = parse_arpa(path, vocab_size)
    big_n = len(sections)
    bits = bits_per_token(vocab_size)
    dropped = {"bos_context": 0, "eos_target": 0, "unk_high_order": 0}

    grams1, logp1, _, _ = sections[0]
    words = grams1[:, 0]
    unk = np.flatnonzero(words == _SPECIAL_IDS[UNK])
    real = words >= 0
    if not real.any():
        raise StylePackError(f"ARPA file {path!r}: no unigram is a token id")
    uni_tok, uni_lp = words[real], logp1[real] * LN10
    perm = np.argsort(uni_tok)
    floor = logp1[unk[0]] * LN10 if unk.size else float(uni_lp.min())
    orders = [BackoffOrder(1, np.zeros((1, 0), np.int32), np.array([floor]), np.array([0, uni_tok.size], np.int64),
                           uni_tok[perm].astype(np.int32), uni_lp[perm])]
    for n in range(2, big_n + 1):
        grams, logp, _, _ = sections[n - 1]
        ok = (grams >= 0).all(1)
        dropped["bos_context"] += int(((grams[:, :-1] == _SPECIAL_IDS[BOS]).any(1)).sum())
        dropped["eos_target"] += int(((grams[:, -1] == _SPECIAL_IDS[EOS]) & (grams[:, :-1] >= 0).all(1)).sum())
        dropped["unk_high_order"] += int(((grams == _SPECIAL_IDS[UNK]).any(1)).sum())
        grams, logp = grams[ok], logp[ok] * LN10
        # Contexts: every listed (n-1)-gram of token ids (its backoff, 0 if none), plus any context
        # of an n-gram whose (n-1)-gram line is missing (weight 1).
        lower, _, lower_bo, _ = sections[n - 2]
        lok = (lower >= 0).all(1)
        ctx = np.concatenate([lower[lok], grams[:, :-1]])
        ctx_bo = np.concatenate([lower_bo[lok] * LN10, np.zeros(grams.shape[0])])
        keys = row_keys(ctx, bits)
        _, first = np.unique(keys, return_index=True)  # first occurrence: the listed line wins
        ctx, ctx_bo = ctx[first], ctx_bo[first]
        order = lexsort_rows(ctx)
        ctx, ctx_bo = ctx[order], ctx_bo[order]
        ci = find_rows(row_keys(ctx, bits), row_keys(grams[:, :-1], bits))  # all found by construction
        perm = np.lexsort((grams[:, -1], ci))
        offsets = np.zeros(ctx.shape[0] + 1, dtype=np.int64)
        offsets[1:] = np.cumsum(np.bincount(ci, minlength=ctx.shape[0]))
        orders.append(BackoffOrder(n, ctx.astype(np.int32), ctx_bo, offsets,
                                   grams[perm, -1].astype(np.int32), logp[perm]))
    info = {"source": os.path.basename(path), "declared_counts": [int(s[0].shape[0]) for s in sections],
            "unk_floor": bool(unk.size), "dropped": dropped}
    return BackoffModel(orders, vocab_size, "arpa", info)


def _fmt(x: float, precision: int | None) -> str:
    return repr(float(x)) if precision is None else f"{x:.{precision}g}"


def write_arpa(model: BackoffModel, path: str, precision: int | None = None) -> None:
    """Write a BackoffModel as ARPA (log10). precision None writes every float exactly (repr), so a
    re-import reproduces the model; e.g. 7 matches KenLM's files.

    Unigrams: every order-1 entry, <unk> carrying the floor, and <s>, </s> at -99 (never predicted
    by this model; written so that ARPA tools find them). A context of order n+1 that is not an
    order-n entry is written as an n-gram with its backed-off probability (so its backoff weight
    has a line to live on), which leaves every probability of the model unchanged.
    """
    bits = bits_per_token(model.vocab_size)
    sections = []  # per order: (grams [M, n], ln p [M], ln backoff [M] or None)
    for n in range(1, model.max_order + 1):
        o = model.orders[n - 1]
        grams = np.concatenate([o.context_tokens[o.entry_context()].astype(np.int64),
                                o.entry_tokens[:, None].astype(np.int64)], axis=1)
        lp = o.entry_logprob.astype(np.float64)
        bo = None
        if n < model.max_order:
            up = model.orders[n]
            ctx = up.context_tokens.astype(np.int64).reshape(up.num_contexts, n)
            missing = find_rows(row_keys(grams, bits), row_keys(ctx, bits)) < 0
            if missing.any():
                extra = ctx[missing]
                extra_lp = model.logprob(extra[:, :-1], extra[:, -1])
                grams, lp = np.concatenate([grams, extra]), np.concatenate([lp, extra_lp])
            order = lexsort_rows(grams)
            grams, lp = grams[order], lp[order]
            bo = np.full(grams.shape[0], np.nan)
            ci = find_rows(row_keys(ctx, bits), row_keys(grams, bits))
            bo[ci >= 0] = up.context_log_backoff[ci[ci >= 0]]
        sections.append((grams, lp, bo))
    tmp = path + ".tmp"
    opener = gzip.open if path.endswith(".gz") else open
    with opener(tmp, "wt", encoding="utf-8") as f:
        f.write("\\data\\\n")
        for n, (grams, _, _) in enumerate(sections, 1):
            f.write(f"ngram {n}={grams.shape[0] + (3 if n == 1 else 0)}\n")
        for n, (grams, lp, bo) in enumerate(sections, 1):
            f.write(f"\n\\{n}-grams:\n")
            if n == 1:
                tail = "\t0" if bo is not None else ""
                f.write(f"{_fmt(model.floor / LN10, precision)}\t{UNK}{tail}\n-99\t{BOS}{tail}\n-99\t{EOS}\n")
            for i in range(grams.shape[0]):
                line = f"{_fmt(lp[i] / LN10, precision)}\t{' '.join(str(int(w)) for w in grams[i])}"
                if bo is not None and not np.isnan(bo[i]):
                    line += f"\t{_fmt(bo[i] / LN10, precision)}"
                f.write(line + "\n")
        f.write("\n\\end\\\n")
    os.replace(tmp, path)


def _empty_tables(orders: int) -> list[OrderTable]:
    """Count tables with no entries: an imported model carries no counts (modes exact/paper add nothing)."""
    out = [OrderTable(1, np.zeros((1, 0), np.int32), np.zeros(1, np.int64), np.zeros(2, np.int64),
                      np.zeros(0, np.int32), np.zeros(0, np.int64), 0)]
    for n in range(2, orders + 1):
        out.append(OrderTable(n, np.zeros((0, n - 1), np.int32), np.zeros(0, np.int64), np.zeros(1, np.int64),
                              np.zeros(0, np.int32), np.zeros(0, np.int64), 0))
    return out


def arpa_to_pack(path: str, vocab_size: int, tokenizer_fingerprint: str, name: str = "",
                 top_k: int | None = None) -> StylePack:
    """A style pack holding the ARPA model as its backoff model (use it with mode "kn").

    top_k: keep each context's top_k entries of orders >= 2 (BackoffModel.truncate); None keeps all.
    The pack's count tables are empty and its unigram counts zero: there are no counts to store.
    """
    if top_k is not None and top_k < 1:
        raise StylePackError(f"top-k must be at least 1, got {top_k}")
    model = read_arpa(path, vocab_size).truncate(top_k)
    most = max(int(np.diff(o.context_offsets).max(initial=0)) for o in model.orders[1:]) if model.max_order > 1 else 0
    return StylePack(_empty_tables(model.max_order), np.zeros(vocab_size, np.int64), vocab_size,
                     tokenizer_fingerprint, DEFAULT_SMOOTHING_K, int(top_k or max(most, 1)),
                     default_weights(model.max_order), {"source": "arpa", "files": [os.path.basename(path)]},
                     name or os.path.splitext(os.path.basename(path))[0], model)
