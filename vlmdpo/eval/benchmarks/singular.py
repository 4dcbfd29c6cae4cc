"""Singular of an English word, rule for rule as ``pattern.en.singularize`` (CLiPS Pattern, BSD), which the CHAIR
script runs on every caption token. Pattern does not install on current Pythons, and CHAIR's matching depends on
its exact output, quirks included: "bus" becomes "bu" and "glass" becomes "glas" (the last rule strips any final
"s"), "ties" becomes "ty", so those words never match a COCO object, in the published numbers and here alike.

The order of checks is Pattern's: words that never inflect, irregular plurals, then suffix rules, first match
wins. ``tests/test_benchmark_chair.py`` checks words worked through Pattern's rules by hand.
"""

from __future__ import annotations

import re


def _words(text: str) -> list[str]:
    return text.split()


# A word that is the tail of one of these is returned unchanged ("sheep" is not, so "sheeps" -> "sheep").
_UNINFLECTED = frozenset(_words("""
bison debris headquarters pincers trout bream diabetes herpes pliers tuna breeches djinn high-jinks proceedings
whiting britches eland homework rabies wildebeest carp elk innings salmon chassis flounder jackanapes scissors
christmas gallows mackerel series clippers georgia measles shears cod graffiti mews species contretemps mumps
swine corps news swiss advice equipment happiness luggage software bread fruit information mathematics progress
understanding butter furniture ketchup mayonnaise research water cheese garbage knowledge meat rice electricity
gravel love mustard sand"""))

# Plurals in -ies whose singular ends in -ie ("cookies" -> "cookie", not "cooky").
_IE_SINGULARS = tuple(_words("""
alergie cutie hoagie newbie softie veggie auntie doggie hottie nightie sortie weenie beanie eyrie indie oldie
stoolie yuppie birdie freebie junkie sweetie zombie bogie goonie laddie pixie techie bombie groupie laramie
quickie collie hankie lingerie reverie toughie cookie hippie meanie rookie valkyrie"""))

# Irregular plural endings: any word ending in the key swaps that ending ("policemen" -> "policeman").
_IRREGULAR = {
    "atlantes": "atlas", "atlases": "atlas", "axes": "axe", "beeves": "beef", "brethren": "brother",
    "children": "child", "corpora": "corpus", "corpuses": "corpus", "ephemerides": "ephemeris", "feet": "foot",
    "ganglia": "ganglion", "geese": "goose", "genera": "genus", "genii": "genie", "graffiti": "graffito",
    "helves": "helve", "kine": "cow", "leaves": "leaf", "loaves": "loaf", "men": "man", "mongooses": "mongoose",
    "monies": "money", "moves": "move", "mythoi": "mythos", "numena": "numen", "occipita": "occiput",
    "octopodes": "octopus", "opera": "opus", "opuses": "opus", "our": "my", "oxen": "ox", "penes": "penis",
    "penises": "penis", "people": "person", "sexes": "sex", "soliloquies": "soliloquy", "teeth": "tooth",
    "testes": "testis", "trilbys": "trilby", "turves": "turf", "zoa": "zoon",
}

# (pattern, replacement) in order; the first pattern that matches decides.
_SUFFIX_RULES = [(re.compile(pattern, re.IGNORECASE), replacement) for pattern, replacement in (
    (r"(.)ae$", r"\1a"), (r"(.)itis$", r"\1itis"), (r"(.)eaux$", r"\1eau"), (r"(quiz)zes$", r"\1"),
    (r"(matr)ices$", r"\1ix"), (r"(ap|vert|ind)ices$", r"\1ex"), (r"^(ox)en", r"\1"),
    (r"(alias|status)es$", r"\1"),
    # Pattern writes this one as a character class, so any final "<one of octp|vir>i" becomes "...us".
    (r"([octp|vir])i$", r"\1us"),
    (r"(cris|ax|test)es$", r"\1is"), (r"(shoe)s$", r"\1"), (r"(o)es$", r"\1"), (r"(bus)es$", r"\1"),
    (r"([m|l])ice$", r"\1ouse"), (r"(x|ch|ss|sh)es$", r"\1"), (r"(m)ovies$", r"\1ovie"),
    (r"(.)ombies$", r"\1ombie"), (r"(s)eries$", r"\1eries"), (r"([^aeiouy]|qu)ies$", r"\1y"),
    (r"([aeo]l)ves$", r"\1f"), (r"([^d]ea)ves$", r"\1f"), (r"arves$", "arf"), (r"erves$", "erve"),
    (r"([nlw]i)ves$", r"\1fe"), (r"([lr])ves$", r"\1f"), (r"([aeo])ves$", r"\1ve"), (r"(sive)s$", r"\1"),
    (r"(tive)s$", r"\1"), (r"(hive)s$", r"\1"), (r"([^f])ves$", r"\1fe"), (r"(^analy)ses$", r"\1sis"),
    (r"((a)naly|(b)a|(d)iagno|(p)arenthe|(p)rogno|(s)ynop|(t)he)ses$", r"\1sis"), (r"(.)opses$", r"\1opsis"),
    (r"(.)yses$", r"\1ysis"), (r"(h|d|r|o|n|b|cl|p)oses$", r"\1ose"),
    (r"(fruct|gluc|galact|lact|ket|malt|rib|sacchar|cellul)ose$", r"\1ose"), (r"(.)oses$", r"\1osis"),
    (r"([ti])a$", r"\1um"), (r"(n)ews$", r"\1ews"), (r"s$", ""),
)]

_PREPOSITIONS = frozenset(_words("""about before during of till above behind except off to across below for on under after
beneath from onto until among beside in out unto around besides into over upon at between near since with athwart
betwixt beyond but by"""))


def singularize(word: str) -> str:
    """Pattern's singular of ``word`` (see the module docstring for the quirks kept on purpose)."""
    if "-" in word:
        head, *rest = word.split("-")
        if rest and rest[0] in _PREPOSITIONS:  # "mothers-in-law" -> "mother-in-law"
            return singularize(head) + "-" + "-".join(rest)
    if word.endswith("'"):
        return singularize(word[:-1]) + "'s"
    lower = word.lower()
    if any(never.endswith(lower) for never in _UNINFLECTED):
        return word
    if any(lower.endswith(ie + "s") for ie in _IE_SINGULARS):
        return lower
    for plural, singular in _IRREGULAR.items():
        if lower.endswith(plural):
            return re.sub(plural + "$", singular, word, flags=re.IGNORECASE)
    for pattern, replacement in _SUFFIX_RULES:
        if pattern.search(word):
            return pattern.sub(replacement, word)
    return word
