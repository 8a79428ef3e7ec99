"""docs/results says only what its data say: README.md is exactly what the generator writes from
the committed files, the hand-written notes state no number, each reproduction.md carries its
folder's table.csv, and the generated sentences follow the data where the old hand-written
prose contradicted it (a best step before the last, a metric that got worse)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from discograd.analysis import results_index
from discograd.analysis.tables import to_markdown

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"


def test_readme_is_what_the_generator_writes_from_the_committed_files():
    text = results_index.render(RESULTS)
    assert (RESULTS / "README.md").read_text() == text, \
        "docs/results/README.md is out of date: run python -m analysis.results_index docs/results"
    assert len(results_index.folders(RESULTS)) >= 4


def test_notes_state_no_number():
    notes = (RESULTS / "notes.md").read_text()
    prose = re.sub(r"`[^`]*`", "", notes)                  # code spans (file names) may
    assert not re.search(r"\d", prose), re.findall(r".{20}\d.{20}", prose)


def test_each_reproduction_shows_its_table_csv():
    for folder in results_index.folders(RESULTS):
        table = pd.read_csv(folder / "table.csv")
        text = (folder / "reproduction.md").read_text()
        assert to_markdown(table) in text, folder.name
        facts = json.loads((folder / "reproduction.json").read_text())
        assert f"{facts['steps']} of {facts['paper_steps']}" in text


def test_every_number_of_a_section_is_in_its_files():
    """Each number in a generated section's prose appears, as written, in the section's table
    or is computed from it (checked by recomputing the section from the files)."""
    for folder in results_index.folders(RESULTS):
        s = results_index.Section(folder)
        table = "\n".join(s.table_lines())
        for sentence in s.sentences():
            for num in re.findall(r"(?<![\w.])-?\d+\.\d+", sentence):
                assert num in table or num.lstrip("-") in _derived(s), (folder.name, num, sentence)


def _derived(s) -> str:
    """Numbers a sentence may state that are not table cells: gaps, changes per 1000 steps."""
    m = f"{s.col} mean"
    out = []
    if "published" in s.t:
        out += [s.v(abs(x)) for x in (s.t[m] - s.t["published"]).dropna()]
    if not s.conv.empty:
        dp = 2 if s.nats else 4
        out += [f"{abs(x):.{dp}f}" for x in s.conv["change per 1000 steps"]]
    return " ".join(out)


def write_folder(path: Path, best_steps, changes, published=True):
    path.mkdir(parents=True)
    (path / "reproduction.json").write_text(json.dumps(
        {"preset": "demo", "source": "Demo et al.", "metric": "test/bound_1000", "budget": 0.1,
         "steps": 10000, "paper_steps": 100000, "seeds": 3, "runs": 6, "at": "best",
         "status": {"completed": 6}, "seconds": 600, "grid": {}, "argv": []}))
    rows = []
    for (e, v, b), pub in zip(best_steps, (101.5, 107.8)):
        rows.append({"model": "vae", "estimator": e, "n": 3, "test -bound_1000 mean": v,
                     "test -bound_1000 ci95": 0.2, "best step": b, "vs best": None,
                     **({"published": pub} if published else {})})
    rows[0]["vs best"], rows[1]["vs best"] = "best", "worse"
    pd.DataFrame(rows).to_csv(path / "table.csv", index=False)
    pd.DataFrame([{"estimator": e, "metric": "valid/-bound_10", "nats": True, "step": 9000,
                   "value": 120.0, "last step": 10000, "last value": 120.0 + c,
                   "change per 1000 steps": c} for (e, _, _), c in zip(best_steps, changes)]
                 ).to_csv(path / "convergence.csv", index=False)


def test_sentences_follow_the_data(tmp_path):
    """The old prose said "in all these runs the best step is the last" and "still improving"
    while its own table had annealed_st's best step at 6668 and a bound that got worse."""
    write_folder(tmp_path / "a", [("gumbel", 108.0, 10000), ("annealed_st", 116.8, 6668)], [-0.5, +0.3])
    text = results_index.render(tmp_path)
    assert "for annealed_st (median step 6668) it is earlier: the validation metric got worse" in text
    assert "still improving for 1 of 2 estimators, by 0.50 to 0.50 nats" in text
    assert "it got worse for annealed_st" in text
    assert "above its published counterpart, by 6.50 to 9.00 nats" in text   # 108.0 - 101.5, 116.8 - 107.8
    assert "gumbel has the best mean (108.00 nats); annealed_st is significantly behind it" in text
    assert "falls inside our 95 % interval for no estimator; outside it for gumbel and annealed_st (ours worse)" in text
    write_folder(tmp_path / "c" / "x", [("gumbel", 101.6, 10000), ("st", 107.0, 10000)], [-0.5, -0.4])
    text = results_index.render(tmp_path / "c")   # 101.5 within 101.6 ± 0.2; 107.8 above 107.0 ± 0.2
    assert "falls inside our 95 % interval for gumbel; outside it for st (ours better)." in text
    write_folder(tmp_path / "b" / "x", [("gumbel", 108.0, 10000), ("st", 110.0, 10000)], [-0.5, -0.4])
    text = results_index.render(tmp_path / "b")
    assert "For every estimator the best validation step is the last one (step 10000)" in text


def test_a_section_links_its_committed_run_folders(tmp_path):
    """A table whose command's --out holds completed run folders in the repository links them;
    one whose runs were not committed does not claim any."""
    results = tmp_path / "repo" / "docs" / "results"
    for name in ("kept", "gone"):
        write_folder(results / name, [("gumbel", 108.0, 10000), ("st", 110.0, 10000)], [-0.5, -0.4])
        facts = json.loads((results / name / "reproduction.json").read_text())
        facts["argv"] = ["demo", "--seeds", "3", "--out", f"reproductions/{name}-b1-s3"]
        (results / name / "reproduction.json").write_text(json.dumps(facts))
    run = tmp_path / "repo" / "reproductions" / "kept-b1-s3" / "st" / "0"
    run.mkdir(parents=True)
    (run / "summary.json").write_text("{}")
    text = results_index.render(results)
    assert ("Its run folders (configs, logs, metrics; no checkpoints): "
            "[reproductions/kept-b1-s3](../../reproductions/kept-b1-s3).") in text
    assert text.count("Its run folders") == 1
