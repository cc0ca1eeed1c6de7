"""Does a QA fine-tune of the bundled model help it answer? One experiment, end to end.

The bundled 135M model misses "who wrote this" and "what is this about" on some development
documents and never says that a document lacks the answer (docs/qa.md). This script tests the fix a
user would try first: supervised fine-tuning (``python -m longlora.finetune --mode sft``, LoRA and
norms) on questions of those kinds whose answers are known, asked through the engine's own retrieval
prompts, then the development split through ``benchmarks/qa_accuracy.py`` with the bundled
profile's readings.

Training documents never come from the QA set: they are the manual pages installed on the machine
(``man -l``; the QA set's programs and their neighbours are excluded) and the README of every
installed Python package, so the data depend on what the machine has installed (the result file
records the counts). Questions and answers come from the documents' structure:

- ``about``: the manual page's NAME line ("grep - print lines that match patterns"), the package's
  name and summary;
- ``author``: the manual page's AUTHOR(S) section, the package's author when the README names them;
- ``option``: an option of the manual page and the first sentence of its description;
- ``absent``: a question from a fixed list (a mascot, an award, a phone number, ...) asked only when
  none of its terms occurs in the document; the answer says the document does not say.

Each record's prompt is the one the engine builds for its question (a random reading of the
profile); a record whose answer is not in that prompt is dropped, so the model is never taught to
answer from what it cannot see. The held-out split is never run here.

Usage (CPU, about 45 minutes: data 3, training 20, dev split 15)::

    python benchmarks/qa_sft.py --out results/qa-sft-dev.json
    python benchmarks/qa_sft.py --absent 0 --steps 60 --out results/qa-sft-noabsent-dev.json
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The QA set's documents and their neighbours: never trained on.
EXCLUDE = re.compile(
    r"^(bash|sh|rbash|groff.*|gropdf|mom|cd-hit.*|raxml.*|lua.*tex.*|luatex|glpk|glpsol|r|rscript|debian.*faq|lintian.*)$",
    re.I,
)
BASELINE = ROOT / "results" / "qa-readings-dev.jsonl"
RUN = "pipeline=retrieve:256:128:1.0:4:64@brief+64/0+128/0"

ABOUT_MAN = [
    "What program does this manual page describe?",
    "What is this manual page about?",
    "Which command does this document describe?",
    "What does this manual describe?",
    "What is this document about?",
    "What tool is documented here?",
]
AUTHOR_Q = [
    "Who wrote this program?",
    "Who wrote it?",
    "Who is the author?",
    "Who wrote this software?",
    "Who are the authors of this program?",
    "Who wrote this?",
]
ABOUT_PY = [
    "What software does this document describe?",
    "What is this document about?",
    "What package is this README about?",
    "What does this document describe?",
    "Which library is described here?",
]
ABSENT = [  # (question, terms whose presence makes the question answerable or doubtful)
    ("Which graphics card does {p} require?", ["gpu", "graphics", "cuda", "opencl", "card"]),
    ("How much did the development of {p} cost?", ["cost", "price", "$", "dollar", "euro", "budget"]),
    ("Which university hosts the {p} project?", ["universit", "institut", "college"]),
    ("What is the phone number of the {p} support desk?", ["phone", "tel", "support"]),
    ("Which award did {p} win?", ["award", "prize", "won"]),
    ("Which Java class implements {p}?", ["java", "class"]),
    ("In which city was {p} first presented?", ["city", "presented", "conference"]),
    ("How many people downloaded {p} last year?", ["download"]),
    ("Which operating system did the authors of {p} use in their experiments?", ["experiment"]),
    ("What is the name of the {p} mascot?", ["mascot", "logo"]),
    ("Which smartphone app accompanies {p}?", ["smartphone", "android", "ios", "app "]),
    ("Which database does {p} store its users' passwords in?", ["password", "database", "sql"]),
]
ABSENT_A = [
    "The document does not say.",
    "The document does not mention it.",
    "This is not stated in the document.",
]


def lower1(s):
    return s[:1].lower() + s[1:] if s[1:2].islower() else s


def norm(s):
    return re.sub(r"\s+", " ", s).strip().lower()


def man_text(page):
    out = subprocess.run(
        f"MANWIDTH=90 man --nh --nj -P cat -l {shlex.quote(page)} 2>/dev/null | col -bx",
        shell=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    return out


def sections(text):
    secs, cur = {}, None
    for line in text.splitlines():
        if re.match(r"^[A-Z][A-Z ]+$", line):
            cur = line.strip()
            secs[cur] = []
        elif cur:
            secs[cur].append(line)
    return {k: "\n".join(v) for k, v in secs.items()}


def first_sentence(s):
    s = re.sub(r"\s+", " ", s).strip()
    m = re.match(r"(.+?[.!?])(\s|$)", s)
    return (m.group(1) if m else s)[:300]


def options(sec):
    """[(flag, first sentence of its description)]"""
    out, lines = [], sec.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^ {7}(-{1,2}[A-Za-z0-9][\w-]*)", line)
        if not m:
            continue
        desc = []
        for nxt in lines[i + 1 : i + 6]:
            if re.match(r"^ {11,}\S", nxt):
                desc.append(nxt)
            else:
                break
        if desc:
            out.append((m.group(1), first_sentence(" ".join(desc))))
    return out


MAN_SECTIONS = ("man1", "man5", "man7", "man8")


def man_docs(rng, work):
    """(text file, material type, [(kind, question, answer, evidence)]) per usable manual page, in a
    seeded random order (the Google Cloud SDK's thousands of generated pages left out)."""
    if shutil.which("man") is None or shutil.which("col") is None:
        raise SystemExit("qa_sft.py reads the installed manual pages: install man-db (man and col) first")
    folders = [Path("/usr/share/man") / sec for sec in MAN_SECTIONS]
    pages = sorted(
        str(folder / p)
        for folder in folders
        if folder.is_dir()
        for p in os.listdir(folder)
        if not p.startswith(("gcloud", "bq", "gsutil"))
    )
    rng.shuffle(pages)
    for full in pages:
        page = os.path.basename(full).split(".")[0]
        if EXCLUDE.match(page):
            continue
        text = man_text(full)
        if not (3000 < len(text) < 120000):
            continue
        secs = sections(text)
        name = next(iter(secs.get("NAME", "").strip().splitlines()), "")
        m = re.match(r"(.+?)\s+\\?[-\u2010\u2013\u2014]+\s+(.+)", re.sub(r"\s+", " ", name))
        if not m:
            continue
        progs, desc = m.group(1).strip(), m.group(2).strip().rstrip(".")
        prog = progs.split(",")[0]
        path = work / f"man-{page}.txt"
        path.write_text(text)
        qa = []
        q = rng.choice(ABOUT_MAN)
        qa.append(("about", q, f"This manual page describes {progs}: {lower1(desc)}.", [prog]))
        auth = secs.get("AUTHOR") or secs.get("AUTHORS")
        if auth:
            sent = first_sentence(auth)
            ev = sent[:30]
            sent = re.sub(r"\s*[<(\[][^>)\]]*@[^>)\]]*[>)\]]+", "", sent).strip().rstrip(".,")
            if re.search(r"[A-Z][a-z]+ [A-Z]", sent) and len(sent) < 200 and "@" not in sent:
                a = (
                    sent + "."
                    if re.match(r"(Written|Originally|This|The|It)\b", sent)
                    else f"It was written by {sent}."
                )
                qa.append(("author", rng.choice(AUTHOR_Q), a, [ev]))
        opts = options(secs.get("OPTIONS", "") or secs.get("DESCRIPTION", ""))
        if opts:
            flag, d = rng.choice(opts)
            qa.append(("option", f"What does the {flag} option of {prog} do?", d, [d[:40]]))
        if rng.random() < 0.45:
            qt, terms = rng.choice(ABSENT)
            if not any(t in text.lower() for t in terms):
                qa.append(("absent", qt.format(p=prog), rng.choice(ABSENT_A), []))
        yield path, None, qa


def py_docs(rng, work):
    """The same for the README (long description) of every installed Python package with a summary."""
    dists = sorted(md.distributions(), key=lambda d: d.metadata["Name"] or "")
    rng.shuffle(dists)
    seen = set()
    for d in dists:
        meta = d.metadata
        name = meta["Name"]
        if not name or name.lower() in seen:
            continue
        seen.add(name.lower())
        body = meta.get_payload() or meta.get("Description") or ""
        if not (2000 < len(body) < 100000):
            continue
        summary = (meta["Summary"] or "").strip().rstrip(".")
        if not summary or len(summary) > 160:
            continue
        path = work / f"py-{name}.txt"
        path.write_text(body)
        qa = [("about", rng.choice(ABOUT_PY), f"It describes {name}: {lower1(summary)}.", [name])]
        author = (meta["Author"] or "").strip()
        if not author:
            m = re.match(r"\s*\"?([^<\",]+?)\"?\s*<", meta["Author-email"] or "")
            author = m.group(1).strip() if m else ""
        if author and " " in author and len(author) < 60 and author.lower() in body.lower():
            qa.append(("author", rng.choice(AUTHOR_Q), f"{name} was written by {author}.", [author]))
        if rng.random() < 0.45:
            qt, terms = rng.choice(ABSENT)
            if not any(t in body.lower() for t in terms):
                qa.append(("absent", qt.format(p=name), rng.choice(ABSENT_A), []))
        yield path, None, qa


def build_records(out: Path, work: Path, seed: int, n_man: int, n_py: int) -> dict:
    """Write every record the documents give (all kinds) to ``out``; returns counts per kind."""
    from data_tools.prompts import prompt_prefix, prompt_suffix
    from longlora.qa import QAEngine

    rng = random.Random(seed)
    engine = QAEngine("default", dtype="bf16")
    readings = engine.profile.readings()
    style = engine.profile.prompt_style
    stats: dict[str, int] = {}
    with out.open("w") as f:
        sources = (
            ("man-documents", man_docs(rng, work), n_man),
            ("readme-documents", py_docs(rng, work), n_py),
        )
        for label, source, n in sources:
            docs = 0
            for path, material, qa in source:
                if docs >= n:
                    break
                session = engine.open_document(str(path), material_type=material)
                if session.num_tokens < 400:
                    continue
                docs += 1
                for kind, question, answer, evidence in qa:
                    reading = rng.choice(readings)
                    head, tail, _ = engine.prompt_frame(session, question)
                    ids, _ = engine.build_prompt(session, question, reading=reading)
                    content = engine.tokenizer.decode(ids[len(head) : len(ids) - len(tail)])
                    if evidence and not all(norm(e) in norm(content) for e in evidence):
                        stats[kind + "-not-in-prompt"] = stats.get(kind + "-not-in-prompt", 0) + 1
                        continue
                    user = (
                        prompt_prefix(session.material_type, style) + content + prompt_suffix(question, style)
                    )
                    row = {
                        "instruction": user,
                        "output": answer,
                        "kind": kind,
                        "doc": path.name,
                        "question": question,
                        "reading": list(reading),
                    }
                    f.write(json.dumps(row) + "\n")
                    stats[kind] = stats.get(kind, 0) + 1
            stats[label] = docs
    return stats


def mix(records: Path, out: Path, seed: int, about: int, author_repeat: int, absent: int) -> dict:
    """The training mix: ``about`` about-records, every option record, author records repeated,
    ``absent`` absent records."""
    rng = random.Random(seed)
    by: dict[str, list] = {}
    for line in records.open():
        row = json.loads(line)
        by.setdefault(row["kind"], []).append(row)
    rows = (
        rng.sample(by.get("about", []), min(about, len(by.get("about", []))))
        + by.get("option", [])
        + by.get("author", []) * author_repeat
        + rng.sample(by.get("absent", []), min(absent, len(by.get("absent", []))))
    )
    rng.shuffle(rows)
    with out.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["kind"]] = counts.get(row["kind"], 0) + 1
    return counts


def dev_rows(path: Path) -> dict:
    rows = {}
    for line in path.open():
        row = json.loads(line)
        if row.get("mode") == "pipeline" and row.get("split") == "dev":
            rows[row["id"]] = row
    return rows


def per_kind(rows: dict) -> dict:
    out: dict[str, list[int]] = {}
    for row in rows.values():
        right, total = out.setdefault(row["kind"], [0, 0])
        out[row["kind"]] = [right + bool(row["correct"]), total + 1]
    return {k: f"{a}/{b}" for k, (a, b) in sorted(out.items())}


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="result JSON")
    p.add_argument(
        "--work", type=Path, default=None, help="folder for documents, data, adapter (default: a temp dir)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--man-pages", type=int, default=450)
    p.add_argument("--readmes", type=int, default=250)
    p.add_argument("--about", type=int, default=250, help="about records in the mix")
    p.add_argument("--author-repeat", type=int, default=2, help="times each author record is repeated")
    p.add_argument("--absent", type=int, default=90, help="absent records in the mix")
    p.add_argument("--steps", type=int, default=120, help="optimizer steps (8 records each)")
    p.add_argument("--learning-rate", default="2e-4")
    p.add_argument("--lora-r", default="16")
    args = p.parse_args(argv)

    from longlora.provenance import run_record
    from longlora.qa.readings import says_not_found

    record = {"kind": "qa-sft", "provenance": run_record()}
    work = args.work or Path(tempfile.mkdtemp(prefix="qa-sft-"))
    (work / "docs").mkdir(parents=True, exist_ok=True)
    all_records, train = work / "records.jsonl", work / "train.jsonl"
    record["records"] = build_records(all_records, work / "docs", args.seed, args.man_pages, args.readmes)
    record["mix"] = mix(all_records, train, args.seed, args.about, args.author_repeat, args.absent)
    py = sys.executable
    adapter, merged, rows = work / "adapter", work / "merged", work / "dev.jsonl"
    train_cmd = [
        py,
        "-m",
        "longlora.finetune",
        "--mode",
        "sft",
        "--data",
        str(train),
        "--output-dir",
        str(adapter),
        "--method",
        "lora+norm",
        "--lora-r",
        args.lora_r,
        "--lora-alpha",
        str(2 * int(args.lora_r)),
        "--learning-rate",
        args.learning_rate,
        "--attention",
        "full",
        "--per-device-batch-size",
        "1",
        "--gradient-accumulation-steps",
        "8",
        "--max-steps",
        str(args.steps),
        "--warmup-steps",
        "10",
        "--lr-schedule",
        "cosine",
        "--dtype",
        "bf16",
        "--save-steps",
        str(args.steps),
        "--no-gradient-checkpointing",
        "--seed",
        str(args.seed),
    ]
    run(train_cmd)
    run([py, "-m", "longlora.merge", "--adapter", str(adapter), "--output", str(merged), "--dtype", "bf16"])
    run(
        [
            py,
            "benchmarks/qa_accuracy.py",
            "--model",
            str(merged),
            "--split",
            "dev",
            "--runs",
            RUN,
            "--out",
            str(rows),
        ]
    )
    losses = [json.loads(line).get("loss") for line in (adapter / "train_log.jsonl").open()]
    losses = [x for x in losses if x is not None]
    tuned, base = dev_rows(rows), dev_rows(BASELINE)
    record["training"] = {
        "command": train_cmd[1:],
        "records": sum(record["mix"].values()),
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
    }
    record["run"] = RUN
    record["dev"] = {
        "fine_tuned": f"{sum(bool(r['correct']) for r in tuned.values())}/{len(tuned)}",
        "bundled": f"{sum(bool(r['correct']) for r in base.values())}/{len(base)} ({BASELINE.relative_to(ROOT)})",
        "fine_tuned_by_kind": per_kind(tuned),
        "bundled_by_kind": per_kind(base),
        "gained": sorted(k for k in tuned if k in base and tuned[k]["correct"] and not base[k]["correct"]),
        "lost": sorted(k for k in tuned if k in base and base[k]["correct"] and not tuned[k]["correct"]),
        "says_absent": sum(says_not_found(r["answer"]) for r in tuned.values()),
    }
    record["answers"] = {k: r["answer"] for k, r in sorted(tuned.items())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    tmp.replace(args.out)
    print(json.dumps(record["dev"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
