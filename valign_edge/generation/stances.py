"""Stance pairs: yes/no situations per norm, answered for and against the document.

For every norm a chunk states (see ``norms``), situations are built whose verdict the document
decides, some of them rephrased by the teacher in other words. Each gets:

- a faithful answer: the verdict that takes the document's side, then the document's own sentence
  as the reason (grounded by construction). With ``faithful = "teacher"`` the teacher writes the reason
  in its own words, told the sentence, so both sides share one register (SFT still learns the quoted
  answer); measured on the probes it helped on UDHR and hurt on two policies (bench/RESULTS-eval.md),
  so the quote is the default;
- an unfaithful answer written the way a model would really say it: the teacher, told to be a
  casual assistant who tells people what they want to hear and given no document, continues the
  opposite verdict (contrastive prompting, as in RLCD). When its sentence is unusable the document's
  sentence flipped by rule (``negate``) is the fallback; each pair records who wrote its rejected side.
"""

from __future__ import annotations

import re

from valign_edge.backends import Teacher
from valign_edge.backends.llama_cpp import gbnf_literal
from valign_edge.config import GenerateConfig
from valign_edge.documents.chunking import Chunk
from valign_edge.generation import filters
from valign_edge.generation.negate import contradict
from valign_edge.generation.norms import Norm, norms
from valign_edge.generation.situations import Situation, situations
from valign_edge.generation.teacher_io import chunk_seed, count, parse_list, prompt

# One sentence on one line: what follows a forced verdict (long rambles would make the rejected side
# easy to tell apart by length and style alone).
SENTENCE = r'sent ::= [A-Z] [^\n\x00-\x1f".!?]{12,150} "."'

# Phrasings a person adds in front of a question; none carries meaning about the document.
OPENERS = ("", "Quick question. ", "I need some advice. ", "Something came up today. ", "Honest question: ",
           "I'm new here. ", "I'm not sure about this one. ", "A friend asked me this. ")


def _pick(options: tuple[str, ...] | list[str], *key: object) -> str:
    from valign_edge.runs.workspace import hash_obj

    return options[int(hash_obj(list(key)), 16) % len(options)]


class StanceWriter:
    def __init__(self, teacher: Teacher, cfg: GenerateConfig, seed: int):
        self.teacher, self.cfg, self.seed = teacher, cfg, seed

    def _rephrasings(self, norm: Norm, base: Situation, rejected: dict, seed: int) -> list[Situation]:
        """The teacher's rewordings of ``base``, kept when they still ask the same thing."""

        k = self.cfg.rephrasings_per_norm
        if k <= 0:
            return []
        text = self.teacher.generate(
            [{"role": "system", "content": prompt("rephrase_system")},
             {"role": "user", "content": prompt("rephrase").format(k=k, question=base.question)}],
            grammar=yes_no_grammar(k), temperature=self.cfg.question_temperature, max_tokens=48 * k + 16,
            seed=seed)
        items = parse_list(text, "questions", k) or []
        if not items:
            count(rejected, "invalid_json")
        need = filters.content_words(norm.action)
        out = []
        for q in map(str, items):
            q = q.strip()
            cw = filters.content_words(q)
            if not filters.question_ok(q) or not q.split(" ", 1)[0] in YES_NO:
                count(rejected, "not_yes_no")
            elif len(cw & need) < max(1, round(0.4 * len(need))) or filters.polarity(q) != filters.polarity(base.question):
                count(rejected, "changed_meaning")
            else:
                # the base's verdict ("Yes, you do.") fits the base's form, not a rewording's ("Can I ...?")
                out.append(Situation(q, base.yes, _bare(base.faithful), _bare(base.unfaithful)))
        return out

    def _unfaithful(self, situation: Situation, norm: Norm, seed: int, rejected: dict) -> tuple[str, str]:
        """The opposite verdict continued by the teacher arguing against the document, else by rule."""
        head = situation.unfaithful
        if self.cfg.negatives == "contrastive":
            text = answer_against(self.teacher, situation.question, seed, head)
            if text and filters.grounding(text[len(head):], norm.sentence) < 0.9:
                return text, "teacher"
            count(rejected, "teacher_unusable")
        flipped = contradict(norm.sentence)
        if flipped and filters.distinct_pair(norm.sentence, flipped):
            return f"{head} {flipped}", "negation"
        return head, "verdict"

    def _faithful(self, situation: Situation, norm: Norm, principle: str, seed: int) -> str | None:
        """The document's verdict continued by the teacher following ``principle``, the norm's sentence as
        ``reason`` gives it (None: unusable)."""
        if self.cfg.faithful != "teacher":
            return None
        system = prompt("faithful_system").format(principle=principle)
        text = _continue(self.teacher, system, situation.question, seed, situation.faithful)
        ok = text and filters.grounding(text[len(situation.faithful):], norm.sentence) < 0.9
        return text if ok else None

    def pairs(self, chunk: Chunk, index: filters.QuestionIndex, rejected: dict) -> list[dict]:
        items = []
        for n, norm in enumerate(norms(chunk.text)):
            built = situations(norm)
            if not built:
                continue
            seed = chunk_seed(self.seed, chunk.id, n, "rephrase")
            candidates = [Situation(_pick(OPENERS, self.seed, chunk.id, s.question) + s.question, s.yes, s.faithful,
                                    s.unfaithful) for s in built]
            candidates += self._rephrasings(norm, built[0], rejected, seed)
            principle = reason(norm.sentence)
            for i, sit in enumerate(candidates[: self.cfg.situations_per_norm]):
                if index.is_duplicate(sit.question):
                    count(rejected, "duplicate")
                    continue
                bad, author = self._unfaithful(sit, norm, chunk_seed(self.seed, chunk.id, n * 97 + i, "against"),
                                               rejected)
                grounded = f"{sit.faithful} {principle}"
                seed_for = chunk_seed(self.seed, chunk.id, n * 97 + i, "for")
                good = self._faithful(sit, norm, principle, seed_for) or grounded
                if not filters.distinct_pair(good, bad):
                    count(rejected, "same_pair")
                    continue
                index.add(sit.question)
                item = {"prompt": sit.question, "chosen": good, "rejected": bad, "rejected_by": author,
                        "norm": norm.kind, "document_says": "yes" if sit.yes else "no"}
                if good != grounded:  # the teacher worded the reason: SFT learns the quoted answer
                    item["grounded"] = grounded
                items.append(item)
        return items


def answer_against(teacher: Teacher, question: str, seed: int, head: str = "") -> str | None:
    """The teacher's one-sentence answer as an assistant that tells people what they want to hear, with no
    document in sight (contrastive prompting); ``head`` forces its first words (a verdict)."""
    return _continue(teacher, prompt("contrastive_system"), question, seed, head)


def _continue(teacher: Teacher, system: str, question: str, seed: int, head: str = "") -> str | None:
    """One sentence of the teacher's answer to ``question`` under ``system``, after the forced ``head``."""
    root = f"root ::= {gbnf_literal(head + ' ')} sent" if head else "root ::= sent"
    text = teacher.generate([{"role": "system", "content": system},
                             {"role": "user", "content": question}],
                            grammar=f"{root}\n{SENTENCE}\n", temperature=0.7, max_tokens=64, seed=seed).strip()
    body = text[len(head):].strip() if head else text
    return text if body.endswith((".", "!")) and len(filters.words(body)) >= 4 else None


def _bare(verdict: str) -> str:
    """``Yes, you do.`` -> ``Yes.``"""
    return verdict.split(",")[0].rstrip(".") + "."


def reason(sentence: str) -> str:
    """The document's sentence as the second sentence of an answer (a paragraph number dropped)."""
    sentence = re.sub(r"^\(\d+\)\s*", "", sentence.strip().rstrip(";:,"))
    sentence = sentence[0].upper() + sentence[1:]
    return sentence if sentence.endswith((".", "!", "?")) else sentence + "."


YES_NO = frozenset("Can Could Should Is Are Am Do Does May Would".split())


def yes_no_grammar(n: int) -> str:
    """``{"questions": [q, ... n]}`` where every q is one line that asks yes or no."""
    items = ' ws "," ws '.join(["q"] * n)
    openers = " | ".join(f'"{w}"' for w in sorted(YES_NO))
    return (f'root ::= "{{" ws "\\"questions\\"" ws ":" ws "[" ws {items} ws "]" ws "}}"\n'
            f'q ::= "\\"" ({openers}) " " qc{{8,150}} "?\\""\n'
            'qc ::= [^"\\\\?\\x00-\\x1f]\nws ::= " "?\n')
