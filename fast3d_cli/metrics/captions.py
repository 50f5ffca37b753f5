"""Caption metrics through pycocoevalcap 1.2: PTB tokenizer, BLEU-1..4, METEOR, ROUGE-L and CIDEr-D.

Nothing is ever written to stdout: the scorers run with stdout redirected to stderr, BLEU with
``verbose=0``, and the Java subprocesses talk through pipes.

Without ``java`` on the PATH the scorer still works: it tokenizes with `fallback_tokenize` (a pure-Python
approximation of PTBTokenizer) and reports METEOR as None, after a warning. BLEU, ROUGE-L and CIDEr are
pure Python in pycocoevalcap and give the same numbers whenever the two tokenizers agree (they do on
ordinary sentences; see `fallback_tokenize` for the known differences).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
import weakref
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

CAPTION_METRICS: tuple[str, ...] = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")

# Tokens that pycocoevalcap's PTBTokenizer drops after tokenizing (note: "-LRB-" etc. are listed in upper
# case but the tokenizer runs with -lowerCase, so "-lrb-" survives; we keep that behaviour).
PTB_PUNCTUATIONS: frozenset[str] = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)
_PTB_JAR = "stanford-corenlp-3.4.1.jar"
_LINE_BREAKS = re.compile(r"\r\n|[\r\n\u2028\u2029\x85\x0b\x0c]")
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_CLITIC = re.compile(r"(?<=[a-z])(n't|'s|'re|'ve|'ll|'d|'m)\b")
_TOKEN = re.compile(
    r"n't|'(?:s|re|ve|ll|d|m)\b"  # clitics split off by _CLITIC
    r"|[a-z0-9]+(?:[-/'][a-z0-9]+|(?<=[0-9])[.,][0-9]+)*"  # words, hyphenated words, 1,000, 3.5, o'clock
    r"|\.{2,}|-{2,}|\S"  # "...", "--", any other single character
)


class CaptionScoringError(RuntimeError):
    """The Java tokenizer or scorer failed in an unexpected way."""


def fallback_tokenize(text: str) -> str:
    """Java-free approximation of pycocoevalcap's PTB tokenization of one caption.

    Lowercases; splits off punctuation, brackets (as "-lrb-"-style tokens, which PTB keeps) and the
    clitics n't/'s/'re/'ve/'ll/'d/'m; keeps hyphenated words, numbers like 3.5 and 1,000, "o'clock";
    then drops the tokens PTB drops (``.`` ``,`` ``?`` ``!`` ``:`` ``;`` ``-`` ``--`` ``...`` and quotes).
    Known differences from PTB: abbreviations with dots ("e.g.", "u.s.") lose their final dot, and
    rarer PTB rules (e.g. splitting "cannot") are not reproduced.
    """
    text = _LINE_BREAKS.sub(" ", text.lower())
    text = _CLITIC.sub(r" \1", text)
    tokens = []
    for token in _TOKEN.findall(text):
        token = _BRACKETS.get(token, token)
        if token == '"' or token in PTB_PUNCTUATIONS:
            continue
        tokens.append(token)
    return " ".join(tokens)


def _ptb_jar_dir() -> Path:
    from pycocoevalcap.tokenizer import ptbtokenizer

    return Path(ptbtokenizer.__file__).resolve().parent


def _java_ptb_tokenize(java: str, sentences: list[str]) -> list[str]:
    """Run the bundled Stanford PTBTokenizer exactly as pycocoevalcap does (one caption per line)."""
    jar_dir = _ptb_jar_dir()
    # The temp file lives outside the (possibly read-only) site-packages directory, unlike the library.
    fd, path = tempfile.mkstemp(prefix="fast3d_ptb_", suffix=".txt")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write("\n".join(sentences).encode())
        cmd = [java, "-cp", str(jar_dir / _PTB_JAR), "edu.stanford.nlp.process.PTBTokenizer",
               "-preserveLines", "-lowerCase", path]  # fmt: skip
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, check=False)
    finally:
        os.remove(path)
    if proc.returncode != 0:
        raise CaptionScoringError(f"PTBTokenizer failed ({proc.returncode}): {proc.stderr.decode()[-500:]}")
    lines = proc.stdout.decode().split("\n")
    if len(lines) < len(sentences) or any(line.strip() for line in lines[len(sentences) :]):
        raise CaptionScoringError(f"PTBTokenizer returned {len(lines)} lines for {len(sentences)} captions")
    return [" ".join(w for w in line.rstrip().split(" ") if w not in PTB_PUNCTUATIONS) for line in lines]


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    with contextlib.redirect_stdout(sys.stderr):
        yield


def _close_meteor(meteor: Any) -> None:
    if meteor.lock.locked():  # a failed compute_score leaves it held; the library's __del__ would hang
        meteor.lock.release()
    proc = meteor.meteor_p
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.close()
    proc.kill()
    proc.wait()


class CaptionScorer:
    """pycocoevalcap tokenizer + scorers, shared across tasks. Use as a context manager or call `close`.

    ``use_java``: None (default) uses Java iff ``java`` is on the PATH; False forces the Java-free path
    (fallback tokenizer, METEOR None); True asks for Java but still falls back, with a warning, if absent.
    The METEOR JVM (about 6 s to start) is started on the first scoring call and reused until `close`.
    """

    def __init__(self, use_java: bool | None = None) -> None:
        self._java = shutil.which("java") if use_java is not False else None
        if self._java is None and use_java is not False:
            message = "java not found on PATH: pure-Python PTB approximation used, METEOR reported as None"
            warnings.warn(message, RuntimeWarning, stacklevel=2)
        self._meteor: Any = None
        self._meteor_finalizer: weakref.finalize | None = None
        self._meteor_failed = False

    @property
    def meteor_failed(self) -> bool:
        """Whether METEOR failed in this scorer (it then reports None until a new scorer is made)."""
        return self._meteor_failed

    @property
    def uses_java(self) -> bool:
        """Whether the Java PTB tokenizer and METEOR are used."""
        return self._java is not None

    def tokenize(self, captions: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
        """PTB-tokenize {item: [captions]} (lowercased, punctuation tokens removed), keeping the order.

        If the Java tokenizer fails, this call warns and uses `fallback_tokenize`."""
        keys = [key for key, caps in captions.items() for _ in caps]
        # Line breaks inside a caption are spaces (the library only maps "\n"; others would shift lines).
        sentences = [_LINE_BREAKS.sub(" ", cap) for caps in captions.values() for cap in caps]
        tokenized: list[str] | None = None
        if self._java is not None and sentences:
            try:
                tokenized = _java_ptb_tokenize(self._java, sentences)
            except (CaptionScoringError, OSError) as exc:
                warnings.warn(f"{exc}; using the pure-Python PTB approximation", RuntimeWarning, stacklevel=2)
        if tokenized is None:
            tokenized = [fallback_tokenize(s) for s in sentences]
        out: dict[str, list[str]] = {key: [] for key in captions}
        for key, line in zip(keys, tokenized, strict=True):
            out[key].append(line)
        return out

    def score(
        self, references: Mapping[str, Sequence[str]], candidates: Mapping[str, str]
    ) -> dict[str, float | None]:
        """Tokenize both sides and score; keys of references and candidates must be the same."""
        refs = self.tokenize(references)
        cands = self.tokenize({key: [cand] for key, cand in candidates.items()})
        return self.score_tokenized(refs, cands)

    def score_tokenized(
        self, references: Mapping[str, Sequence[str]], candidates: Mapping[str, Sequence[str]]
    ) -> dict[str, float | None]:
        """Score already tokenized {item: [refs]} against {item: [one candidate]} -> CAPTION_METRICS."""
        if set(references) != set(candidates):
            raise ValueError("references and candidates must have the same item keys")
        if not references:
            raise ValueError("no items to score")
        for key in references:
            if len(candidates[key]) != 1:
                raise ValueError(f"item {key!r} must have exactly one candidate")
            if len(references[key]) == 0:
                raise ValueError(f"item {key!r} has no reference caption")
        gts = {key: list(references[key]) for key in references}
        res = {key: list(candidates[key]) for key in references}
        with _stdout_to_stderr():
            bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
            rouge, _ = Rouge().compute_score(gts, res)
            cider, _ = Cider().compute_score(gts, res)
            meteor = self._meteor_score(gts, res)
        scores: dict[str, float | None] = {f"Bleu_{n + 1}": float(bleu[n]) for n in range(4)}
        scores.update(METEOR=meteor, ROUGE_L=float(rouge), CIDEr=float(cider))
        return scores

    def _meteor_score(self, gts: dict[str, list[str]], res: dict[str, list[str]]) -> float | None:
        if self._java is None or self._meteor_failed:
            return None
        try:
            if self._meteor is None:
                from pycocoevalcap.meteor.meteor import Meteor

                self._meteor = Meteor()
                self._meteor_finalizer = weakref.finalize(self, _close_meteor, self._meteor)
            score, _ = self._meteor.compute_score(gts, res)
            return float(score)
        except (OSError, ValueError) as exc:  # JVM died or answered garbage: keep the other metrics
            self._meteor_failed = True
            self.close()
            message = f"METEOR failed ({exc!r}); it is reported as None"
            warnings.warn(message, RuntimeWarning, stacklevel=3)
            return None

    def close(self) -> None:
        """Stop the METEOR JVM if it was started (idempotent)."""
        if self._meteor_finalizer is not None:
            self._meteor_finalizer()
        self._meteor = None
        self._meteor_finalizer = None

    def __enter__(self) -> CaptionScorer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
