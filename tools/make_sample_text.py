"""Regenerate `pgolf_core/data/sample_text.jsonl.zst`, the frozen text behind `pgolf data sample`.

Why this text: a newcomer with no network and no FineWeb download should still be able to train
and score a model end to end. CPython ships a license-clean English corpus with every install:
the reference-manual topics behind `help('TOPIC')` (`pydoc_data.topics`) and the docstrings of the
standard library, both under the PSF License. We extract them once, shuffle the documents with a
fixed seed (FineWeb's export is shuffled upstream too, so "first 10% of documents = validation"
gives a validation split drawn from the same mix as training), and commit the compressed result.
The output is frozen: it depends on the Python version that ran this script (recorded in
SAMPLE_TEXT_LICENSE.txt), so do not regenerate it casually; the sample cache key changes with it.

    python tools/make_sample_text.py
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import io
import json
import pkgutil
import platform
import random
import re
import sys
import warnings
from pathlib import Path

import zstandard

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "pgolf_core" / "data" / "sample_text.jsonl.zst"
LICENSE_OUT = ROOT / "pgolf_core" / "data" / "SAMPLE_TEXT_LICENSE.txt"
SEED = 20240520
TARGET_BYTES = 2_600_000  # stop adding module documents past this much UTF-8 text
# Modules with import side effects (browsers, GUIs, prints), test suites, or platform-only code.
SKIP = {
    "antigravity",
    "this",
    "idlelib",
    "turtledemo",
    "turtle",
    "tkinter",
    "test",
    "lib2to3",
    "ensurepip",
    "pydoc_data",
    "xxsubtype",
    "xxlimited",
    "xxlimited_35",
    "msilib",
    "winreg",
    "winsound",
    "msvcrt",
    "_winapi",
    "nt",
    "__hello__",
    "__phello__",
    "__future__",
    "__main__",
    "site",
    "sitecustomize",
}
ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def clean(doc: str | None) -> str:
    """Dedented docstring with machine addresses removed, so reruns give identical text."""
    return ADDRESS.sub("", inspect.cleandoc(doc)).strip() if doc else ""


def topic_documents() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[name].strip() for name in sorted(topics)]


def module_document(name: str, seen: set[str]) -> str:
    """One document per module: its docstring, then each public class/function/method docstring
    defined in that module (sorted by name), skipping any docstring already used elsewhere."""
    mod = importlib.import_module(name)
    parts: list[str] = []

    def add(title: str, doc: str | None) -> None:
        text = clean(doc)
        if len(text) >= 40 and text not in seen:
            seen.add(text)
            parts.append(f"{title}\n\n{text}" if title else text)

    add("", mod.__doc__)
    for attr in sorted(vars(mod)):
        obj = vars(mod)[attr]
        if attr.startswith("_") or getattr(obj, "__module__", None) != name:
            continue
        if inspect.isclass(obj):
            add(f"class {name}.{attr}", obj.__doc__)
            for meth in sorted(vars(obj)):
                member = vars(obj)[meth]
                if not meth.startswith("_") and callable(member):
                    add(f"{name}.{attr}.{meth}", getattr(member, "__doc__", None))
        elif inspect.isfunction(obj) or inspect.isbuiltin(obj):
            add(f"{name}.{attr}", obj.__doc__)
    return "\n\n".join(parts)


def module_names() -> list[str]:
    """Public standard-library modules and their public submodules (asyncio.tasks, email.message...)."""
    names: list[str] = []
    for top in sorted(n for n in sys.stdlib_module_names if not n.startswith("_") and n not in SKIP):
        names.append(top)
        spec = importlib.util.find_spec(top)
        if spec is not None and spec.submodule_search_locations:
            subs = pkgutil.walk_packages(spec.submodule_search_locations, prefix=f"{top}.", onerror=lambda _: None)
            names += sorted(m.name for m in subs if not any(p.startswith("_") for p in m.name.split(".")))
    return names


def build_documents() -> list[str]:
    docs = topic_documents()
    seen: set[str] = set(docs)
    total = sum(len(d.encode()) for d in docs)
    for name in module_names():
        if total >= TARGET_BYTES:
            break
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                doc = module_document(name, seen)
        except Exception:  # a module that fails to import on this platform is skipped
            continue
        if len(doc) >= 200:
            docs.append(doc)
            total += len(doc.encode())
    random.Random(SEED).shuffle(docs)
    return docs


def main() -> None:
    docs = build_documents()
    raw = "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs).encode()
    OUT.write_bytes(zstandard.ZstdCompressor(level=19).compress(raw))
    license_text = Path(sys.base_prefix) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "LICENSE.txt"
    note = io.StringIO()
    note.write(
        "Provenance of sample_text.jsonl.zst\n"
        "===================================\n\n"
        f"Extracted by tools/make_sample_text.py from CPython {platform.python_version()}:\n"
        "  * the reference-manual topics shipped as pydoc_data.topics.topics (the text behind help('TOPIC'));\n"
        "  * docstrings of standard-library modules, classes, functions and methods.\n"
        f"{len(docs)} documents, {len(raw)} bytes of JSON lines, shuffled with seed {SEED}.\n\n"
        "Copyright (c) Python Software Foundation; All Rights Reserved (the PSF's full copyright\n"
        "notice is in section 2 of the PSF License Agreement below). This text is part of Python and\n"
        "is used under the PSF License Agreement (version 2), reproduced below from CPython's LICENSE\n"
        "file. pgolf's own code is MIT-licensed; this file covers only sample_text.jsonl.zst.\n\n"
    )
    if license_text.is_file():
        note.write(license_text.read_text(encoding="utf-8"))
    LICENSE_OUT.write_text(note.getvalue(), encoding="utf-8")
    print(f"{OUT}: {len(docs)} documents, {len(raw):,} bytes raw, {OUT.stat().st_size:,} bytes compressed")


if __name__ == "__main__":
    main()
