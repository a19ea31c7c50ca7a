"""benchmarks/table1.py: its workflow file is valid rnnenc and wires the experiment as described."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_table1():
    spec = importlib.util.spec_from_file_location("table1", ROOT / "benchmarks" / "table1.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_experiment_is_one_valid_workflow(tmp_path):
    from rnnenc.workflows.config import load_workflow

    table1 = load_table1()
    work = tmp_path / "table1"
    (work / "data").mkdir(parents=True)
    for split in ("train", "val", "test"):
        for lang in ("en", "de"):
            (work / "data" / f"{split}.{lang}").write_text("a b\n")
    args = argparse.Namespace(work=work, src="en", tgt="de", runs=3, mert_iterations=4, threads=2, decoder_flags="-search-algorithm 1", hidden=64,
                              embedding=32, maxout=32, updates=100, tables=list(table1.TABLES),
                              systems=list(table1.SYSTEMS), seeds=None)
    path = work / "table1.yaml"
    path.write_text(table1.workflow(args))
    flow = load_workflow(path)
    stages = {stage.name: stage for stage in flow.stages}
    tunings = [name for name in stages if name.startswith("moses_") and name not in ("moses_baseline", "moses_table")]
    assert len(tunings) == 2 * 3 * 3  # two baseline tables x three systems x three MERT seeds
    assert flow.root == work
    # the tuning set and the test set are never cleaned; BLEU against the raw test reference
    assert "--no-clean" in stages["dev"].argv and "--no-clean" in stages["test"].argv
    tuning = stages["moses_moses_rnn_wp_2"].argv
    assert tuning[tuning.index("--seed") + 1] == "2" and str(work / "data" / "test.de") in tuning
    assert tuning[tuning.index("--decoder-flags") + 1] == "-search-algorithm 1"
    assert set(stages["moses_moses_rnn_wp_2"].depends_on) >= {"export_moses_rnn_wp", "dev", "test"}
    export = stages["export_rnnenc_rnn"].argv
    assert export[export.index("--scores") + 1].endswith(",rnn_logp") and "--moses-ini" not in export
    assert "--moses-ini" in stages["export_moses_rnn"].argv  # Moses's own moses.ini, reordering model and all
    assert "filter_rnnenc" in stages["rescore_rnnenc"].depends_on
    # a subset (--tables moses --systems rnn_wp --seeds 3,1): only those tunings, the RNN still trained on rnnenc's table
    subset = argparse.Namespace(**vars(args) | {"tables": ["moses"], "systems": ["rnn_wp"], "seeds": [3, 1]})
    path.write_text(table1.workflow(subset))
    names = [stage.name for stage in load_workflow(path).stages]
    assert [n for n in names if n.startswith("moses_moses")] == ["moses_moses_rnn_wp_3", "moses_moses_rnn_wp_1"]
    assert "train" in names and "filter_rnnenc" not in names and "export_moses_baseline" not in names


def test_the_report_averages_the_mert_runs(tmp_path):
    import json

    from rnnenc.pipeline.artifacts import LEGACY_REPORT_NAME, REPORT_NAME

    table1 = load_table1()
    for system, bleus in (("baseline", (30.0, 31.0, 32.0)), ("rnn", (31.0, 32.0, 33.0))):
        for seed, value in enumerate(bleus, start=1):
            out = tmp_path / f"moses_rnnenc_{system}_{seed}"
            out.mkdir()
            # the baseline's runs as an experiment started before the sidecars' rename left them
            name = LEGACY_REPORT_NAME if system == "baseline" else REPORT_NAME
            (out / name).write_text(json.dumps({"test": {"bleu": value, "chrf": 50.0, "signature": "sig"},
                                                         "mert": {"dev_bleu": value + 1}}))
    text = table1.report(tmp_path, 3)
    assert "| Baseline | 32.00 ± 1.00 | 31.00 ± 1.00 | 50.00 ± 0.00 | — | 3 |" in text
    assert "| RNN | 33.00 ± 1.00 | 32.00 ± 1.00 | 50.00 ± 0.00 | +1.00 | 3 |" in text
    assert "sacrebleu: sig" in text
