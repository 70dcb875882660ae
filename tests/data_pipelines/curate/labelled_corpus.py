"""A labelled curation corpus built from the real shared data sets, with planted faults.

Clean documents are long-form prose (at least 100 words): gsm8k worksheets (four word
problems), GPTeacher roleplay question-and-answer pages and tinyshakespeare speeches. Planted: exact duplicates, near duplicates (a few words changed),
foreign-language text (written here), spam and boilerplate, and PII inside clean documents.
Every record carries `label` (and `group` / `pii`) so a pipeline's output can be scored.
Used by tests/data_pipelines and tools/bench/curate.py; the shared data is never copied.
"""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

FAULTS = ("exact_dup", "near_dup", "foreign", "spam", "pii")


def shared_data_dir() -> Path | None:
    """Returns the shared data directory (MAXLM_SHARED_DATA or <repo>/../shared/data), or None."""
    env = os.environ.get("MAXLM_SHARED_DATA")
    cands = [Path(env)] if env else []
    cands.append(Path(__file__).resolve().parents[3].parent / "shared" / "data")
    for c in cands:
        if (c / "sft" / "gsm8k_train.jsonl").is_file() and (c / "pretrain" / "tinyshakespeare.txt").is_file():
            return c
    return None


# ---------------------------------------------------------------- clean sources


def _gsm8k(data: Path) -> list[str]:
    # a worksheet of four word problems: the worked answers are mostly arithmetic, which
    # Gopher's "80% of words contain a letter" rule rightly removes from a web-prose set
    qs = [json.loads(line)["question"].strip() for line in (data / "sft" / "gsm8k_train.jsonl").read_text().splitlines()]
    return ["\n\n".join(qs[i:i + 4]) for i in range(0, len(qs) - 3, 4)]


def _gpteacher(data: Path) -> list[str]:
    # a question-and-answer page: the task, its input when there is one, then the answer
    out = []
    for r in json.loads((data / "sft" / "gpteacher_roleplay.json").read_text()):
        parts = [r.get("instruction", ""), r.get("input", ""), r.get("output", "")]
        if all(isinstance(x, str) for x in parts):
            out.append("\n\n".join(x.strip() for x in parts if x.strip()))
    return out


def _shakespeare(data: Path) -> list[str]:
    blocks = (data / "pretrain" / "tinyshakespeare.txt").read_text().split("\n\n")
    return [b.strip() for b in blocks]


def clean_pool(data: Path, min_words: int = 100) -> list[tuple[str, str]]:
    """Returns (source, text) of every clean candidate with at least `min_words` words, shuffled."""
    pool = [("gsm8k", t) for t in _gsm8k(data)] + [("gpteacher", t) for t in _gpteacher(data)]
    pool += [("shakespeare", t) for t in _shakespeare(data)]
    pool = [(s, t) for s, t in pool if len(t.split()) >= min_words]
    seen, uniq = set(), []
    for s, t in pool:  # the sources repeat a few texts; a clean single must be unique
        key = " ".join(t.lower().split())
        if key not in seen:
            seen.add(key)
            uniq.append((s, t))
    random.Random(0).shuffle(uniq)
    return uniq


# ---------------------------------------------------------------- foreign text (written for this test)

FOREIGN = {
    "de": [
        "Am Morgen ging die Familie gemeinsam auf den Wochenmarkt, um frisches Gemüse und Brot zu kaufen. "
        "Die Händler riefen laut ihre Angebote aus, und überall roch es nach Kaffee und warmen Brezeln. "
        "Die Kinder durften sich einen Apfel aussuchen, während die Eltern mit dem Bäcker über das Wetter sprachen.",
        "Die Stadtverwaltung hat beschlossen, im nächsten Jahr mehr Radwege zu bauen und den Busverkehr auszuweiten. "
        "Viele Bürgerinnen und Bürger begrüßen diese Entscheidung, weil sie weniger Lärm und sauberere Luft erwarten. "
        "Einige Geschäftsleute befürchten jedoch, dass ihre Kunden künftig keinen Parkplatz mehr finden werden.",
        "Wer eine neue Sprache lernen möchte, sollte jeden Tag ein wenig üben, statt einmal in der Woche stundenlang zu lernen. "
        "Es hilft, Filme in der Originalsprache zu sehen und kurze Texte laut vorzulesen. "
        "Fehler gehören dazu, denn nur wer spricht, kann sich mit der Zeit verbessern.",
        "Der Winter war in diesem Jahr besonders lang und kalt, sodass die Seen bis in den März hinein zugefroren waren. "
        "Die Landwirte mussten mit der Aussaat warten, bis der Boden endlich aufgetaut war. "
        "Im Frühling blühten dann aber die Obstbäume umso schöner, und die Ernte fiel reichlich aus.",
        "Das kleine Museum am Rande der Altstadt zeigt eine Sammlung historischer Uhren aus drei Jahrhunderten. "
        "Besonders beliebt ist eine große Standuhr, die jede Stunde ein kurzes Lied spielt. "
        "Die Führungen finden am Wochenende statt und sind für Schülerinnen und Schüler kostenlos.",
    ],
    "fr": [
        "Chaque samedi matin, les habitants du quartier se retrouvent au marché pour acheter des fruits, du fromage et du pain frais. "
        "Les commerçants connaissent bien leurs clients et prennent le temps de discuter avec eux. "
        "Après les courses, beaucoup s'arrêtent au café de la place pour boire un express au soleil.",
        "La bibliothèque municipale propose désormais des ateliers d'écriture pour les adultes et les adolescents. "
        "Les participants apprennent à construire un récit, à décrire des personnages et à corriger leurs propres textes. "
        "À la fin de l'année, les meilleurs textes seront publiés dans un petit recueil distribué gratuitement.",
        "Le train de nuit relie à nouveau la capitale aux villes du sud, après plusieurs années d'interruption. "
        "Les voyageurs apprécient de pouvoir dormir pendant le trajet et d'arriver reposés le lendemain matin. "
        "La compagnie espère que cette ligne attirera aussi les touristes étrangers pendant l'été.",
        "Pour réussir une bonne soupe de légumes, il faut couper les carottes, les poireaux et les pommes de terre en petits morceaux. "
        "On les fait revenir dans un peu de beurre avant d'ajouter de l'eau et une pincée de sel. "
        "Après une demi-heure de cuisson, on mixe le tout et on sert la soupe bien chaude avec du pain grillé.",
        "Les chercheurs de l'université ont observé que les oiseaux migrateurs arrivent plus tôt qu'il y a trente ans. "
        "Selon eux, ce changement est lié à la hausse des températures au printemps. "
        "Ils souhaitent poursuivre leurs observations afin de mieux comprendre les effets du climat sur la faune.",
    ],
    "es": [
        "Todos los domingos, la familia se reúne en casa de los abuelos para comer juntos y hablar de la semana. "
        "La abuela prepara una paella enorme, mientras los niños juegan en el patio con el perro. "
        "Después del postre, el abuelo cuenta historias de cuando era joven y trabajaba en el puerto.",
        "El ayuntamiento ha anunciado que el parque central estará cerrado durante dos meses por obras de mejora. "
        "Se plantarán nuevos árboles, se renovarán los bancos y se instalará una fuente para los paseantes. "
        "Los vecinos esperan que el parque sea más cómodo y seguro cuando vuelva a abrir en primavera.",
        "Aprender a tocar la guitarra requiere paciencia, porque al principio los dedos duelen y los acordes suenan mal. "
        "Sin embargo, con unos minutos de práctica cada día, el progreso llega antes de lo que uno imagina. "
        "Muchos profesores recomiendan empezar con canciones sencillas que el alumno ya conoce.",
        "El museo de ciencias ha inaugurado una exposición dedicada a los volcanes y a los terremotos. "
        "Los visitantes pueden sentir cómo se mueve el suelo en una sala especial y ver rocas traídas de varias islas. "
        "La exposición está pensada para toda la familia y estará abierta hasta finales de año.",
        "En verano, muchos estudiantes buscan un trabajo temporal para ahorrar dinero antes de volver a la universidad. "
        "Algunos trabajan en hoteles y restaurantes de la costa, mientras que otros ayudan en el campo durante la cosecha. "
        "Aunque el trabajo es duro, la experiencia les enseña a organizarse y a trabajar en equipo.",
    ],
}


def _foreign_docs(n: int, rng: random.Random) -> list[str]:
    """Returns n foreign documents: the paragraphs above, then shuffles of their sentences."""
    out = [p for paras in FOREIGN.values() for p in paras]
    langs = sorted(FOREIGN)
    while len(out) < n:
        sents = [s for p in FOREIGN[langs[len(out) % 3]] for s in re.split(r"(?<=[.!?]) ", p)]
        out.append(" ".join(rng.sample(sents, k=min(len(sents), rng.randint(5, 9)))))
    return out[:n]


# ---------------------------------------------------------------- spam and boilerplate

SPAM_WORDS = ["cheap", "viagra", "casino", "bonus", "free", "win", "pills", "discount", "loans", "crypto",
              "replica", "watches", "online", "best", "price", "bet", "jackpot", "deal", "sale", "click"]
CITIES = ["Paris", "London", "Berlin", "Madrid", "Rome", "Vienna", "Prague", "Lisbon", "Dublin", "Oslo"]
NAV = ["Home", "About Us", "Contact", "Login", "Register", "Blog", "Shop", "FAQ", "Careers", "Sitemap", "Help", "Cart"]


def _spam_docs(n: int, rng: random.Random) -> list[str]:
    """Returns n spam pages: keyword lists, SEO repetition, navigation/boilerplate, link farms."""
    out = []
    for i in range(n):
        kind = i % 4
        if kind == 0:  # keyword stuffing
            words = rng.sample(SPAM_WORDS, 8)
            out.append(" ".join(rng.choice(words) for _ in range(rng.randint(120, 250))))
        elif kind == 1:  # SEO template text
            city, thing = rng.choice(CITIES), rng.choice(["hotels", "flights", "car rental", "apartments", "tours"])
            lines = [f"Best {thing} in {city}. Cheap {thing} in {city} with the best price.",
                     f"Book {thing} in {city} now and save. Top {thing} in {city} deals today.",
                     f"Find {thing} in {city} online. Compare {thing} in {city} and book {thing} in {city}."]
            out.append("\n".join(rng.choice(lines) for _ in range(rng.randint(12, 25))))
        elif kind == 2:  # navigation menu and footer boilerplate
            rows = [" | ".join(rng.sample(NAV, 5)) for _ in range(rng.randint(8, 15))]
            rows += ["Copyright 2024 All rights reserved.", "Privacy Policy | Terms of Use | Cookie Policy",
                     "This site uses cookies to improve your experience.", "Follow us on Facebook Twitter Instagram"]
            rng.shuffle(rows)
            out.append("\n".join(rows))
        else:  # link farm
            rows = [f"Click here: http://{rng.choice(SPAM_WORDS)}-{rng.choice(SPAM_WORDS)}{rng.randint(1, 999)}.example.com/{rng.choice(SPAM_WORDS)}"
                    for _ in range(rng.randint(15, 30))]
            out.append("\n".join(rows))
    return out


# ---------------------------------------------------------------- PII


def luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    """Returns a Luhn-valid card number of `length` digits starting with `prefix`."""
    body = prefix + "".join(str(rng.randint(0, 9)) for _ in range(length - len(prefix) - 1))
    for d in "0123456789":
        cand = body + d
        total = 0
        for i, ch in enumerate(reversed(cand)):
            v = int(ch)
            if i % 2:
                v = v * 2 - 9 if v > 4 else v * 2
            total += v
        if total % 10 == 0:
            return cand
    raise AssertionError("unreachable")


def make_iban(country: str, bban: str) -> str:
    """Returns the IBAN of `bban` in `country` with mod-97 check digits (ISO 13616)."""
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    return f"{country}{98 - int(numeric) % 97:02d}{bban}"


def _pii_items(rng: random.Random) -> list[tuple[str, str]]:
    """Returns (kind, value) PII strings in the formats people write them."""
    first = rng.choice(["anna", "john", "maria", "li", "omar", "sofia", "peter", "yuki"])
    last = rng.choice(["smith", "garcia", "muller", "chen", "okafor", "rossi", "novak", "tanaka"])
    dom = rng.choice(["example.com", "mail.example.org", "company.co.uk", "uni-example.edu", "post.example.net"])
    email = rng.choice([f"{first}.{last}@{dom}", f"{first}{rng.randint(1, 99)}@{dom}", f"{first}+news@{dom}", f"{last}_{first}@{dom}"])
    d = lambda k: "".join(str(rng.randint(0, 9)) for _ in range(k))  # noqa: E731
    phone = rng.choice([
        f"+1 {rng.randint(201, 989)} {d(3)} {d(4)}", f"({rng.randint(201, 989)}) {d(3)}-{d(4)}",
        f"{rng.randint(201, 989)}-{d(3)}-{d(4)}", f"+44 20 {d(4)} {d(4)}", f"+49 30 {d(8)}",
        f"06 {d(2)} {d(2)} {d(2)} {d(2)}", f"+33 6 {d(2)} {d(2)} {d(2)} {d(2)}", f"+1-{rng.randint(201, 989)}-{d(3)}-{d(4)}",
    ])
    ip4 = ".".join(str(rng.randint(1, 254)) for _ in range(4))
    ip6 = rng.choice([
        "2001:db8:85a3::8a2e:370:" + f"{rng.randint(0, 65535):x}",
        ":".join(f"{rng.randint(0, 65535):04x}" for _ in range(8)),
        f"fe80::{rng.randint(1, 65535):x}:{rng.randint(1, 65535):x}",
    ])
    card = luhn_complete(rng.choice(["4", "51", "55", "37", "6011"]), rng.choice([16, 16, 15]), rng)
    card = rng.choice([card, " ".join(card[i:i + 4] for i in range(0, len(card), 4)), "-".join(card[i:i + 4] for i in range(0, len(card), 4))])
    iban = rng.choice([make_iban("DE", d(18)), make_iban("GB", "NWBK" + d(14)), make_iban("FR", d(23)), make_iban("NL", "ABNA" + d(10))])
    iban = rng.choice([iban, " ".join(iban[i:i + 4] for i in range(0, len(iban), 4))])
    return [("email", email), ("phone", phone), ("ip", ip4), ("ip", ip6), ("credit_card", card), ("iban", iban)]


PII_SENTENCES = {
    "email": "For questions, write to {} and we will answer within a day.",
    "phone": "You can also call the office at {} during working hours.",
    "ip": "The request came from the address {} according to the server log.",
    "credit_card": "The payment was made with the card {} last Tuesday.",
    "iban": "Please transfer the deposit to the account {} before the end of the month.",
}


def _plant_pii(text: str, rng: random.Random) -> tuple[str, list[str]]:
    items = rng.sample(_pii_items(rng), k=3)
    paras = text.split("\n\n")
    for kind, value in items:
        pos = rng.randint(0, len(paras))
        paras.insert(pos, PII_SENTENCES[kind].format(value))
    return "\n\n".join(paras), [v for _, v in items]


# ---------------------------------------------------------------- near duplicates

SUBSTITUTES = ["quickly", "yesterday", "green", "seven", "river", "quietly", "window", "garden", "never", "perhaps",
               "bright", "small", "market", "paper", "silver", "almost", "tomorrow", "careful", "winter", "music"]


NEAR_DUP_MIN_WORDS = 160


def _near_copy(text: str, rng: random.Random) -> str:
    """Returns `text` with one word in 80 replaced (Jaccard of 5-gram shingles ~0.88)."""
    words = text.split(" ")
    n_changes = max(2, len(text.split()) // 80)
    for i in rng.sample(range(len(words)), k=min(n_changes, len(words))):
        words[i] = rng.choice(SUBSTITUTES)
    return " ".join(words)


def _exact_copy(text: str, rng: random.Random) -> str:
    """Returns `text` unchanged or with only case/whitespace changes (still an exact duplicate)."""
    return rng.choice([text, text + "\n", "  " + text.replace(". ", ".  "), text.replace("\n", " \n")])


# ---------------------------------------------------------------- the corpus


def build_corpus(data: Path, n_clean: int = 300, n_groups: int = 40, n_foreign: int = 60, n_spam: int = 60,
                 n_pii: int = 60, seed: int = 0) -> list[dict]:
    """Returns the labelled records in a shuffled order: {"id", "text", "label", "source", ...}."""
    rng = random.Random(seed)
    pool = clean_pool(data)
    need = n_clean + 2 * n_groups + n_pii
    if len(pool) < need:
        raise ValueError(f"only {len(pool)} clean candidates, need {need}")
    recs: list[dict] = []
    # near-duplicate sources are long enough that "a few words" is at least two (Jaccard ~0.88)
    long_idx = [i for i, (_, t) in enumerate(pool) if len(t.split()) >= NEAR_DUP_MIN_WORDS][:n_groups]
    near_sources = [pool[i] for i in long_idx]
    take = iter([p for i, p in enumerate(pool) if i not in set(long_idx)])
    for _ in range(n_clean):
        src, t = next(take)
        recs.append({"text": t, "label": "clean", "source": src})
    for kind, copier in (("exact_dup", _exact_copy), ("near_dup", _near_copy)):
        sources = iter(near_sources) if kind == "near_dup" else take
        for g in range(n_groups):
            src, t = next(sources)
            group = f"{kind}-{g}"
            recs.append({"text": t, "label": "dup_original", "source": src, "group": group})
            for _ in range(rng.choice([1, 1, 2])):
                recs.append({"text": copier(t, rng), "label": kind, "source": src, "group": group})
    for _ in range(n_pii):
        src, t = next(take)
        text, planted = _plant_pii(t, rng)
        recs.append({"text": text, "label": "pii", "source": src, "pii": planted})
    recs += [{"text": t, "label": "foreign", "source": "written"} for t in _foreign_docs(n_foreign, rng)]
    recs += [{"text": t, "label": "spam", "source": "generated"} for t in _spam_docs(n_spam, rng)]
    rng.shuffle(recs)
    for i, r in enumerate(recs):
        r["id"] = f"doc-{i:06d}"
    return recs


def write_shards(recs: list[dict], directory: Path, n_shards: int = 4) -> list[Path]:
    """Writes the records round-robin into `n_shards` jsonl files; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"part-{i:03d}.jsonl" for i in range(n_shards)]
    handles = [p.open("w") for p in paths]
    for i, r in enumerate(recs):
        handles[i % n_shards].write(json.dumps(r, ensure_ascii=False) + "\n")
    for h in handles:
        h.close()
    return paths


def score(inputs: list[dict], kept: list[dict]) -> dict:
    """Returns the quality figures of a run from its input records and the records it kept."""
    kept_by_id = {r["id"]: r for r in kept}
    by_label: dict[str, list[dict]] = {}
    for r in inputs:
        by_label.setdefault(r["label"], []).append(r)
    out: dict = {}
    clean = by_label.get("clean", [])
    out["clean_kept"] = sum(r["id"] in kept_by_id for r in clean) / max(1, len(clean))
    for src in sorted({r["source"] for r in clean}):
        rs = [r for r in clean if r["source"] == src]
        out[f"clean_kept_{src}"] = sum(r["id"] in kept_by_id for r in rs) / len(rs)
    for f in ("foreign", "spam"):
        rs = by_label.get(f, [])
        out[f"{f}_removed"] = sum(r["id"] not in kept_by_id for r in rs) / max(1, len(rs))
    # duplicates: which member of a group survives is the pipeline's choice (the first seen), so
    # a group of k documents has k - 1 planted copies, removed when at most one member is kept
    groups: dict[str, list[dict]] = {}
    for r in inputs:
        if "group" in r:
            groups.setdefault(r["group"], []).append(r)
    for kind in ("exact_dup", "near_dup"):
        gs = [g for name, g in groups.items() if name.startswith(kind)]
        copies = sum(len(g) - 1 for g in gs)
        removed = sum(min(len(g) - 1, sum(r["id"] not in kept_by_id for r in g)) for g in gs)
        out[f"{kind}_removed"] = removed / max(1, copies)
    counts = [sum(r["id"] in kept_by_id for r in g) for g in groups.values()]
    out["dup_groups"] = len(counts)
    out["dup_groups_exactly_one_kept"] = sum(c == 1 for c in counts) / max(1, len(counts))
    out["dup_groups_more_than_one_kept"] = sum(c > 1 for c in counts)
    out["dup_groups_none_kept"] = sum(c == 0 for c in counts)
    pii = by_label.get("pii", [])
    out["pii_docs_kept"] = sum(r["id"] in kept_by_id for r in pii) / max(1, len(pii))
    planted = redacted = 0
    for r in pii:
        if r["id"] in kept_by_id:
            for v in r["pii"]:
                planted += 1
                redacted += v not in kept_by_id[r["id"]]["text"]
    out["pii_planted_in_kept_docs"] = planted
    out["pii_redacted"] = redacted / max(1, planted)
    return out
