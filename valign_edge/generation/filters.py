"""Quality filters for teacher output: duplicates, grounding, value cues, identical pairs."""

from __future__ import annotations

import re

STOPWORDS = frozenset("""
a an the and or but if then else of to in on at by for with from as into about over under is are was were be been
being am do does did doing have has had having it its this that these those there here what which who whom whose
when where why how i you he she we they me him her us them my your his our their not no nor so than too very can
could should would may might will shall must just also such any all each every some one other own same only both
more most s t don
""".split())

# Words that mark a passage as stating values: rights, duties, prohibitions, norms.
VALUE_CUES = frozenset("""
must shall should never always right rights duty duties obligation obligations prohibited forbidden respect dignity
equal equality freedom free fair fairly honest honesty integrity protect protected protection entitled responsible
responsibility required require not allowed harassment discrimination safety safe privacy confidential
confidentiality ethical ethics trust values value principle principles justice liberty everyone no-one nobody
""".split())


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text.lower())


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def content_words(text: str) -> set[str]:
    return {_stem(w) for w in words(text) if w not in STOPWORDS and len(w) > 1}


def jaccard(a: set[str], b: set[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def normalized(text: str) -> str:
    return " ".join(words(text))


def grounding(answer: str, chunk: str) -> float:
    """Share of the answer's content words that appear in the chunk."""
    ans = content_words(answer)
    if not ans:
        return 0.0
    return len(ans & content_words(chunk)) / len(ans)


def value_cues(text: str) -> list[str]:
    found = set(words(text)) & VALUE_CUES
    lowered = text.lower()
    if "no one" in lowered:
        found.add("no one")
    return sorted(found)


class QuestionIndex:
    """Questions seen so far; a new one is a duplicate when its word set is too close to one seen."""

    def __init__(self, threshold: float = 0.7):
        self.threshold = threshold
        self.exact: set[str] = set()
        self.sets: list[set[str]] = []

    def is_duplicate(self, question: str) -> bool:
        norm = normalized(question)
        if norm in self.exact:
            return True
        cw = content_words(question)
        return any(jaccard(cw, seen) >= self.threshold for seen in self.sets)

    def add(self, question: str) -> None:
        self.exact.add(normalized(question))
        self.sets.append(content_words(question))


def question_ok(question: str) -> bool:
    n = len(words(question))
    return 3 <= n <= 40 and question.strip().endswith("?")


def answer_ok(answer: str, question: str) -> bool:
    n = len(words(answer))
    return n >= 3 and normalized(answer) != normalized(question)


def distinct_pair(chosen: str, rejected: str, max_overlap: float = 0.8) -> bool:
    """A preference pair teaches nothing when both answers say the same: identical text, or
    the same words with the same polarity (a flipped "not" is a real difference)."""
    if normalized(chosen) == normalized(rejected):
        return False
    if polarity(chosen) != polarity(rejected):
        return True
    return jaccard(set(words(chosen)), set(words(rejected))) < max_overlap


NEGATIONS = frozenset("not no never nobody none cannot nothing neither nor forbidden prohibited".split())


def polarity(text: str) -> int:
    ws = words(text)
    return (sum(w in NEGATIONS or w.endswith("n't") for w in ws) + text.lower().count("no one")) % 2


def contradicts(chosen: str, rejected: str) -> bool:
    """Cheap evidence that ``rejected`` says the opposite of ``chosen``: same topic, flipped polarity."""
    return normalized(chosen) != normalized(rejected) and polarity(chosen) != polarity(rejected) and \
        jaccard(content_words(chosen), content_words(rejected)) >= 0.3


# A list item's marker: "- ", "* ", "• ", "1. ", "2) ", "(a) ".
BULLET = re.compile(r"^(?:[-*•+]|\d{1,3}[.)]|\([a-z0-9]{1,3}\))\s+")


def blocks(chunk: str) -> list[tuple[str, bool]]:
    """The chunk's logical lines: hard-wrapped lines joined again, list items (marker removed) and
    paragraphs apart, markdown headings and blank lines left out; each with whether it is a list item.

    A line continues the one before when that one is long (wrapped near a margin), has no closing
    punctuation, and does not end a comma-separated run of lines that each start with a capital
    (the UDHR preamble's "Whereas ..., / Whereas ...")."""
    out: list[list] = []
    prev: str | None = None  # the previous physical line while a block is open
    for raw in chunk.split("\n"):
        line = raw.strip()
        if not line or line.startswith("#"):
            prev = None
            continue
        marker = BULLET.match(line)
        if marker:
            out.append([line[marker.end():], True])
        elif prev is not None and len(prev) >= 40 and not re.search(r"[.!?:;]$", prev) and \
                (line[0].islower() or not prev.endswith(",")):
            out[-1][0] += " " + line
        else:
            out.append([line, False])
        prev = line
    return [(text, item) for text, item in out]


def split_sentences(text: str) -> list[str]:
    """The sentences of one logical line with at least four words."""
    return [s.strip() for s in re.split(r"(?<=[.!?;])\s+", text.strip()) if len(words(s)) >= 4]


def _line_sentences(chunk: str) -> list[list[str]]:
    """Sentences of at least four words, grouped by logical line, headings left out."""
    lines = []
    for text, item in blocks(chunk):
        if not item and len(text) < 80 and not re.search(r"[.!?;:]$", text):
            continue  # a heading without a markdown marker ("Article 1", "Our Standards")
        sents = split_sentences(text)
        if sents:
            lines.append(sents)
    return lines


def sentences(chunk: str) -> list[str]:
    """The chunk's sentences with at least four words (list items included), headings left out."""
    return [s for line in _line_sentences(chunk) for s in line]


def answer_candidates(question: str, chunk: str, top: int = 4, prefer_values: bool = False) -> list[str]:
    """Spans of the chunk (a sentence, or two in a row) most related to ``question``."""
    sents = sentences(chunk)
    # Two sentences in a row only within a logical line (wrapped lines joined by a space).
    spans = sents + [f"{a} {b}" for line in _line_sentences(chunk) for a, b in zip(line, line[1:])
                     if len(words(a + b)) <= 60]
    q = content_words(question)

    def score(span: str) -> float:
        cw = content_words(span)
        s = len(q & cw) / (len(cw) ** 0.5 or 1)
        return s + (0.5 if prefer_values and value_cues(span) else 0.0)

    ranked = sorted(spans, key=lambda s: (-score(s), spans.index(s)))
    return ranked[:top]
