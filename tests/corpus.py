"""The parity corpus: texts every backend must embed like sentence-transformers does."""

LONG_WORDS = " ".join(f"word{i} lorem ipsum dolor sit amet" for i in range(120))

PARITY_TEXTS: list[str] = [
    "hello",
    "The quick brown fox jumps over the lazy dog.",
    "",
    " ",
    "A man is eating food.",
    "Embedding servers should be warm before they say they are ready.",
    "naïve café résumé — déjà vu, Zürich, São Paulo, Kraków",
    "Привет, как дела? Это тест на кириллице.",
    "これは日本語の文章です。東京は大きな都市です。",
    "机器学习模型需要预热才能快速响应。",
    "한국어 문장도 잘 처리되어야 합니다.",
    "emoji 🚀🔥✨ are tokens too 👍🏽",
    "مرحبا بالعالم، هذا نص باللغة العربية",
    "zero\u200bwidth and\u200f rtl marks",
    "tabs\tand\nnewlines\r\nmixed",
    LONG_WORDS,  # far over 256 word-pieces: must be truncated at the model's max length
    "short " * 200,
    "x" * 3000,
]
