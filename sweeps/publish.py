#!/usr/bin/env python
"""Make a published page's MLflow store travel with the repository.

    python sweeps/publish.py docs/results/<page> [--data-dir ../shared/data]
    python sweeps/publish.py --check docs/results/*        # exit 1 naming any absolute machine path
    python sweeps/publish.py --regenerate docs/results/<page>   # the page's report and findings, from its store
    python sweeps/publish.py --snapshot-from /path/to/live-store docs/results/<page>   # a running sweep's store

A page (`docs/results/<page>/`) holds its own store: `mlflow.db` and `mlartifacts/`. A sweep writes this
machine's absolute paths into a store: the experiments' artifact locations and each run's artifact URI,
and, in runs logged before the data was identified by its digest, the `data_dir` param, a `trial_key`
computed with it, the training subset's dataset source and the config in each `result.json`. Cloned into
another folder, such a store points at files that are not there, and a sweep resumed into it from
another data folder would not know its own networks. This rewrites the store in place:

- artifact locations relative to the page's folder (`mlartifacts/<sweep>/...`): `Tracker.artifact_uri`
  writes new runs' artifacts there, and `mlflow ui` started in the page's folder finds them;
- `data_dir` params replaced by `data_digest` (`imbalance_core.datasets.digest` of the data read from
  `--data-dir`, or from the folder the param names), `trial_key` tags recomputed without `data_dir`
  (each old key is first checked against the run's params: a run whose params do not reproduce its key
  is refused), dataset sources and `result.json` configs without the folder;
- the database back in rollback-journal mode (one self-contained file to commit).

`--snapshot-from DIR` copies a store that a sweep is still writing (DIR/mlflow.db, DIR/mlartifacts) into the
page, consistently (SQLite's online backup; the artifacts of the runs in the copy), then makes it portable:
a long run commits its store as it grows.

`--regenerate` rewrites a page's report (results.md/csv, networks.csv, ranked.md, figures) and findings.md
from its own store, wherever the repository was cloned: the sweep's name and the findings' preamble come from
the page's `page.json` ({"sweep": ..., "preamble": ...}).

It reads and writes MLflow's tables with sqlite3 (the schema of MLflow 3.17; `tests/test_publish.py`
checks a store written by this MLflow). Idempotent.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import re
import sqlite3
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imbalance_core import datasets as D
from imbalance_core.trial import TrialConfig

from sweeps.tracking import trial_key

STORE, ARTIFACTS = "mlflow.db", "mlartifacts"
# An absolute path of a machine, as it appears in text: a file URI, or a POSIX path at a usual root.
ABSOLUTE = re.compile(r"file://|(?<![\w.~-])/(?:work|home|tmp|root|Users|mnt|opt|srv|var|data|shared)/")
TEXT_SUFFIXES = (".md", ".csv", ".json", ".txt", ".yaml", ".yml")


def relative_location(location: str) -> str:
    """An artifact location or URI relative to the page's folder: its tail from `mlartifacts/` (a sweep's
    store) or `mlruns/` (MLflow's Default experiment). A relative one is returned as it is."""
    path = location.removeprefix("file://")
    if not path.startswith("/"):
        return location
    for marker in (f"/{ARTIFACTS}/", "/mlruns/"):
        if marker in path:
            return path[path.rindex(marker) + 1:]
    raise ValueError(f"artifact location {location!r} is neither under {ARTIFACTS}/ nor mlruns/: cannot make it "
                     f"relative to the page")


def config_from_params(params: dict[str, str]) -> TrialConfig:
    """The TrialConfig a run's params were logged from (str(value) of each field; 'None' for None)."""
    kw = {}
    for f in dataclasses.fields(TrialConfig):
        if f.name not in params:
            continue
        v = params[f.name]
        types = str(f.type)
        if v == "None" and "None" in types:
            kw[f.name] = None
        elif types.startswith("float"):
            kw[f.name] = float(v)
        elif types.startswith("int"):
            kw[f.name] = int(v)
        else:
            kw[f.name] = v
    return TrialConfig(**kw)


def _old_key(config: TrialConfig, sweep: str) -> str:
    """The trial key as it was computed before data_dir left it (the whole config)."""
    canon = json.dumps({**dataclasses.asdict(config), "sweep": sweep}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(canon.encode()).hexdigest()


def _config_of_key(params: dict[str, str], data_dir: str | None, sweep: str, key: str) -> TrialConfig | None:
    """The config whose old trial key is `key`: the params as logged, or with batch_size None (the
    tracker logs the effective batch size under the config's name, so a config that left it to the
    dataset's schedule logged a number); None if neither reproduces the key."""
    config = dataclasses.replace(config_from_params(params), data_dir=data_dir)
    for candidate in (config, dataclasses.replace(config, batch_size=None)):
        if _old_key(candidate, sweep) == key:
            return candidate
    return None


class _Digests:
    def __init__(self, data_dir: str | None):
        self.data_dir, self.cache = data_dir, {}

    def __call__(self, dataset: str, logged_dir: str | None) -> str:
        where = self.data_dir or logged_dir
        if (dataset, where) not in self.cache:
            self.cache[(dataset, where)] = D.digest(D.load_dataset(dataset, where))
        return self.cache[(dataset, where)]


def make_portable(page: str | Path, data_dir: str | None = None) -> dict[str, int]:
    """Rewrite the page's store in place (see the module docstring). Returns counts of what changed."""
    page = Path(page)
    db = page / STORE
    if not db.is_file():
        raise FileNotFoundError(f"{db}: no MLflow store in this page")
    digests = _Digests(data_dir)
    counts = {"locations": 0, "runs_rekeyed": 0, "sources": 0, "result_json": 0}
    con = sqlite3.connect(db, timeout=30)
    try:
        with con:
            for table, id_col, col in (("experiments", "experiment_id", "artifact_location"),
                                       ("runs", "run_uuid", "artifact_uri")):
                for ident, loc in con.execute(f"SELECT {id_col}, {col} FROM {table}").fetchall():
                    rel = relative_location(loc)
                    if rel != loc:
                        con.execute(f"UPDATE {table} SET {col} = ? WHERE {id_col} = ?", (rel, ident))
                        counts["locations"] += 1
            digest_of_run: dict[str, str] = {}
            for run_id, in con.execute("SELECT run_uuid FROM runs").fetchall():
                params = dict(con.execute("SELECT key, value FROM params WHERE run_uuid = ?", (run_id,)).fetchall())
                tags = dict(con.execute("SELECT key, value FROM tags WHERE run_uuid = ?", (run_id,)).fetchall())
                if "data_digest" in params:
                    digest_of_run[run_id] = params["data_digest"]
                if "data_dir" not in params or "trial_key" not in tags:
                    continue
                logged_dir = None if params["data_dir"] == "None" else params["data_dir"]
                sweep = tags.get("sweep", "")
                config = _config_of_key(params, logged_dir, sweep, tags["trial_key"])
                if config is None:
                    raise ValueError(f"run {run_id}: its params do not reproduce its trial_key; left as it is")
                digest = params.get("data_digest") or digests(config.dataset, logged_dir)
                digest_of_run[run_id] = digest
                con.execute("UPDATE tags SET value = ? WHERE run_uuid = ? AND key = 'trial_key'",
                            (trial_key(config, sweep), run_id))
                con.execute("DELETE FROM params WHERE run_uuid = ? AND key = 'data_dir'", (run_id,))
                if "data_digest" not in params:
                    con.execute("INSERT INTO params (key, value, run_uuid) VALUES ('data_digest', ?, ?)",
                                (digest, run_id))
                counts["runs_rekeyed"] += 1
            for uuid, source in con.execute("SELECT dataset_uuid, dataset_source FROM datasets").fetchall():
                try:
                    doc = json.loads(source)
                except json.JSONDecodeError:
                    continue
                if not isinstance(doc, dict) or "uri" not in doc:
                    continue
                uri = doc.pop("uri")
                if "data_digest" not in doc and "dataset" in doc:
                    logged_dir = uri.removeprefix("file://") if uri.startswith("file://") else None
                    doc = {"dataset": doc["dataset"], "data_digest": digests(doc["dataset"], logged_dir),
                           **{k: v for k, v in doc.items() if k != "dataset"}}
                con.execute("UPDATE datasets SET dataset_source = ? WHERE dataset_uuid = ?", (json.dumps(doc), uuid))
                counts["sources"] += 1
            runs = con.execute("SELECT run_uuid, artifact_uri FROM runs").fetchall()
        for run_id, uri in runs:
            path = page / relative_location(uri) / "result.json"
            if not path.is_file():
                continue
            doc = json.loads(path.read_text())
            config = doc.get("config", {})
            if "data_dir" in config or ("data_digest" not in doc and run_id in digest_of_run):
                config.pop("data_dir", None)
                doc.setdefault("data_digest", digest_of_run.get(run_id, ""))
                path.write_text(json.dumps(doc))
                counts["result_json"] += 1
        try:
            con.execute("PRAGMA journal_mode=DELETE")
        except sqlite3.OperationalError:          # another connection has it open: fold the log in at least
            con.execute("PRAGMA wal_checkpoint(FULL)")
    finally:
        con.close()
    return counts


def absolute_paths(page: str | Path) -> list[str]:
    """Every absolute machine path in a page: its text files (md, csv, json, ...) and every text column of
    its MLflow store. One line per place: 'file: text' or 'mlflow.db table.column: text'."""
    page = Path(page)
    found = []
    for path in sorted(page.rglob("*")):
        if path.is_file() and path.suffix in TEXT_SUFFIXES:
            text = path.read_text(errors="replace")
            for m in ABSOLUTE.finditer(text):
                found.append(f"{path.relative_to(page)}: {text[m.start():m.start() + 80].splitlines()[0]}")
                break
    db = page / STORE
    if db.is_file():
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            tables = [t for t, in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            for t in tables:
                for col in [r[1] for r in con.execute(f"PRAGMA table_info('{t}')")]:
                    for value, in con.execute(f"SELECT DISTINCT CAST(\"{col}\" AS TEXT) FROM \"{t}\""):
                        if value and ABSOLUTE.search(value):
                            found.append(f"{STORE} {t}.{col}: {value[:80]}")
                            break
        finally:
            con.close()
    return found


PAGE_FILE = "page.json"


def snapshot(live: str | Path, page: str | Path, data_dir: str | None = None) -> dict[str, int]:
    """Copy the store of a running sweep (`live`: its mlflow.db and mlartifacts/) into `page` and make the copy
    portable. The database through SQLite's online backup (a consistent state while the sweep writes); the
    artifacts of every run in that state (a run logged after the backup is in neither)."""
    import shutil
    live, page = Path(live), Path(page)
    page.mkdir(parents=True, exist_ok=True)
    # into the page's database itself (a connection open on it sees the new state: no file swapped under it)
    src, dst = sqlite3.connect(f"file:{live / STORE}?mode=ro", uri=True, timeout=60), sqlite3.connect(page / STORE)
    try:
        src.backup(dst)
        locations = [loc for loc, in dst.execute("SELECT artifact_uri FROM runs")]
    finally:
        src.close()
        dst.close()
    copied = 0
    for loc in locations:
        rel = relative_location(loc)
        source = live / rel if not loc.startswith(("/", "file://")) else Path(loc.removeprefix("file://"))
        if source.is_dir() and not (page / rel).is_dir():
            shutil.copytree(source, page / rel)
            copied += 1
    return {"artifact_folders_copied": copied, **make_portable(page, data_dir)}


def regenerate(page: str | Path) -> dict:
    """Rewrite the page's report and findings from its own store (the page's `page.json` names the sweep and
    the findings' preamble), and the generated blocks of its README.md (`readme_blocks`). Returns the report's
    summary (sweeps.report.build_report)."""
    from sweeps import findings, report
    page = Path(page)
    meta = json.loads((page / PAGE_FILE).read_text())
    uri = f"sqlite:///{(page / STORE).resolve()}"
    res = report.build_report(uri, meta["sweep"], page)
    rc = findings.main(["--tracking-uri", uri, "--name", meta["sweep"], "--out", str(page / "findings.md"),
                        "--preamble", meta.get("preamble", "")])
    if rc != 0:
        raise RuntimeError(f"{page}: findings exited {rc}")
    readme = page / "README.md"
    if readme.is_file():
        runs = report.load_runs(uri, meta["sweep"])[1]
        report.fill_test_examples(uri, runs)              # the test set's size, from each run's result.json
        readme.write_text(render_readme(readme.read_text(), readme_blocks(meta, runs)))
    return res


BLOCK = re.compile(r"(<!-- BEGIN generated (\w+)[^>]*-->\n).*?(<!-- END generated \2 -->)", re.S)


def readme_blocks(meta: dict, runs: list[dict]) -> dict[str, str]:
    """The generated blocks of a page's README, from its store's runs (no number copied by hand):
    `status` (networks in the store, and of the preset's plan when page.json names a `preset`), `findings`
    (findings.md's table: each check's verdict and its rule with the counts), `headline` (ranked.md's sections
    of the cells page.json names as `headline`, one title or a list, e.g. "mnist: step, rho 1000, mu 0.5")."""
    from sweeps import findings, grids, report
    from sweeps.grids import cell_of
    blocks = {}
    seeds = sorted({r["seed"] for r in runs if r.get("seed") is not None})
    status = [f"The store holds {len(runs)} finished networks (seeds {', '.join(f'{s:g}' for s in seeds)})."]
    if meta.get("preset"):
        plan = grids.expand(grids.PRESETS[meta["preset"]], grids.Overrides(data_dir="."))
        logged = {(r["imbalance"], r["rho"], r["mu"], r["method"], r["level"], r["seed"]) for r in runs}
        planned = {(c.imbalance, c.rho, c.mu, c.method, c.level, c.seed) for c in plan}
        done = planned & logged
        status[0] = (f"The store holds {len(runs)} finished networks: {len(done)} of the {len(planned)} that the "
                     f"`{meta['preset']}` preset plans ({len(planned) - len(done)} to go).")
        by_block: dict[str, list[int]] = {}
        for c in plan:
            k = cell_of(c)
            n = by_block.setdefault(k, [0, 0])
            n[1] += 1
            n[0] += (c.imbalance, c.rho, c.mu, c.method, c.level, c.seed) in logged
        status += ["", "| cell | networks in the store / planned |", "|---|---|"]
        status += [f"| {k} | {d} / {t} |" for k, (d, t) in by_block.items()]
    blocks["status"] = "\n".join(status)
    blocks["findings"] = findings.summary_table(findings.findings(runs))
    if meta.get("headline"):
        wanted = [meta["headline"]] if isinstance(meta["headline"], str) else list(meta["headline"])
        sections = {s.split("\n", 1)[0].strip(): s.strip()
                    for s in report.ranked_markdown(meta["sweep"], runs).split("\n## ")[1:]}
        blocks["headline"] = "\n\n".join(f"### {sections[t]}" if t in sections else f"(no ranked cell {t!r} yet)"
                                          for t in wanted)
    return blocks


def render_readme(text: str, blocks: dict[str, str]) -> str:
    """`text` with each generated block (`<!-- BEGIN generated NAME ... -->` .. `<!-- END generated NAME -->`)
    replaced by blocks[NAME]; blocks the text does not hold are not added, and a block name the text holds
    but `blocks` lacks is left as it is."""
    return BLOCK.sub(lambda m: f"{m.group(1)}{blocks[m.group(2)]}\n{m.group(3)}" if m.group(2) in blocks
                     else m.group(0), text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pages", nargs="+", help="page folders (docs/results/<page>)")
    ap.add_argument("--data-dir", default=None, help="where the runs' data is now (for its digest); default: "
                                                     "the folder each run logged, if it is still there")
    ap.add_argument("--check", action="store_true", help="only list absolute paths (exit 1 if any)")
    ap.add_argument("--snapshot-from", default=None, metavar="DIR",
                    help="first copy the store a sweep is writing in DIR (mlflow.db, mlartifacts/) into the page")
    ap.add_argument("--regenerate", action="store_true", help=f"rewrite the page's report and findings from its "
                                                               f"store ({PAGE_FILE} names the sweep)")
    a = ap.parse_args(argv)
    bad = 0
    for page in a.pages:
        if a.snapshot_from:
            print(f"{page}: snapshot of {a.snapshot_from}: {snapshot(a.snapshot_from, page, a.data_dir)}")
        if a.regenerate:
            print(f"{page}: {regenerate(page)['n_runs']} runs -> report and findings")
        elif not a.check and not a.snapshot_from:
            try:
                print(f"{page}: {make_portable(page, a.data_dir)}")
            except (OSError, ValueError, D.DatasetError) as e:
                print(f"publish: error: {page}: {e}", file=sys.stderr)
                return 2
        found = absolute_paths(page)
        bad += len(found)
        for line in found:
            print(f"{page}: absolute path in {line}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
