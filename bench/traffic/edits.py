"""Small text edits: the benign "fix my prompt and resend" kind, and the word-level
perturbations of a JBDA-style chain (Papernot et al. 2017, adapted to text)."""

from __future__ import annotations

import random
import re

# What people add or change when they resend a prompt.
_FOLLOW_UP_TWEAKS = [
    " Make it shorter.",
    " Please be more detailed.",
    " Use bullet points.",
    " Keep it under 100 words.",
    " In simple terms.",
    " Give an example.",
    " Thanks!",
    " please",
    " Answer in English.",
    " Be concise.",
    " with code",
    " Also explain why.",
    " (again)",
    " in a table",
]
_FILLERS = ["please", "actually", "exactly", "briefly", "really", "now", "just", "also", "again"]


def _words(text: str) -> list[str]:
    return text.split(" ")


def typo(rng: random.Random, text: str) -> str:
    """Swap two adjacent letters inside one word."""
    spots = [m.start() for m in re.finditer(r"[A-Za-z]{2}", text)]
    if not spots:
        return text + "?"
    i = rng.choice(spots)
    return text[:i] + text[i + 1] + text[i] + text[i + 2 :]


def human_edit(rng: random.Random, text: str) -> str:
    """One small, plausible change a user makes before resending their own prompt."""
    words = _words(text)
    choice = rng.random()
    if choice < 0.35 or len(words) < 3:
        edited = text.rstrip() + rng.choice(_FOLLOW_UP_TWEAKS)
    elif choice < 0.55:
        edited = typo(rng, text)
    elif choice < 0.75:
        i = rng.randrange(len(words))
        edited = " ".join([*words[:i], rng.choice(_FILLERS), *words[i:]])
    elif choice < 0.9:
        i = rng.randrange(len(words))
        edited = " ".join(words[:i] + words[i + 1 :])
    else:
        numbers = list(re.finditer(r"\d+", text))
        if numbers:
            m = rng.choice(numbers)
            edited = text[: m.start()] + str(int(m.group()) + rng.randint(1, 9)) + text[m.end() :]
        else:
            edited = text.rstrip(" .?!") + rng.choice(["?", ".", "!", " ..."])
    return edited if edited != text else text + " "


def perturb(rng: random.Random, text: str, vocabulary: tuple[str, ...]) -> str:
    """One JBDA-style step: swap, insert, delete or replace a word with a wordfreq word of
    similar frequency rank and the same first letter (a cheap stand-in for a synonym)."""
    words = _words(text)
    op = rng.random()
    if len(words) < 2 or op < 0.25:
        i = rng.randrange(len(words) + 1)
        words.insert(i, vocabulary[rng.randrange(min(len(vocabulary), 5000))])
    elif op < 0.45:
        i = rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
    elif op < 0.6:
        del words[rng.randrange(len(words))]
    else:
        i = rng.randrange(len(words))
        words[i] = _neighbour_word(rng, words[i], vocabulary)
    edited = " ".join(w for w in words if w)
    return edited if edited and edited != text else text + " " + rng.choice(vocabulary[:2000])


_RANKS: dict[int, dict[str, int]] = {}


def _neighbour_word(rng: random.Random, word: str, vocabulary: tuple[str, ...]) -> str:
    ranks = _RANKS.setdefault(id(vocabulary), {w: i for i, w in enumerate(vocabulary)})
    bare = word.lower().strip(".,?!;:\"'()")
    rank = ranks.get(bare, rng.randrange(len(vocabulary)))
    lo, hi = max(0, rank - 400), min(len(vocabulary), rank + 400)
    same_letter = [w for w in vocabulary[lo:hi] if bare and w[0] == bare[0] and w != bare]
    return rng.choice(same_letter or vocabulary[lo:hi])
