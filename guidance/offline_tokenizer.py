"""A CLIP byte-level BPE tokenizer built locally, so that small teachers load with no download.

Every byte is a token (so any prompt tokenizes); ``words`` get merges that join their letters.
Known flaw: merges are chained left to right per word, but BPE applies them by rank across words, so
a word whose letters an earlier word's merge joins first stays split ("torus": "or" from "orange"
leaves t, or, u, s). Its token sequence is still unique to it. Fixing it changes the token ids of
the shipped ShapeWorld teacher, so it waits for that teacher's next training run.
"""
from __future__ import annotations

from transformers import CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode


def build_clip_tokenizer(words: list[str], max_length: int) -> CLIPTokenizer:
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for symbol in bytes_to_unicode().values():
        vocab[symbol] = len(vocab)
        vocab[symbol + "</w>"] = len(vocab)
    merges: list[tuple[str, str]] = []
    for word in words:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            if (pieces[0], pieces[1]) not in merges:
                merges.append((pieces[0], pieces[1]))
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
            vocab.setdefault(pieces[0], len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)
