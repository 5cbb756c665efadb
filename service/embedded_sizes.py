"""Sizes of the embedded corpora with the byte tokenizer, written by scripts/embedded_sizes.py.

Counted on Python 3.11.7 and jieba 0.42.1 (the `code` and `en` corpora come from the
standard library, `zh` from jieba's dictionary); a test holds them equal to a real count.
"""

BASIS = "byte tokenizer, Python 3.11.7, jieba 0.42.1"
# name: (documents, tokens), every document's UTF-8 bytes and its EOD.
BYTE_TOKENIZER_SIZES: dict[str, tuple[int, int]] = {
    "code": (390, 7857622),
    "en": (79, 466196),
    "zh": (3622, 3754075),
}
