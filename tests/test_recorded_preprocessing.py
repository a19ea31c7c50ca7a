"""Later stages follow the preprocessing recorded upstream (issue 16, item 6): `filter --input`
(and `export --filter-to`), `lm --corpus` and `moses --dev/--test` preprocess plain text as the
ingested corpus behind their table or outputs records (found through the manifests), and refuse
an ingested corpus that records another preprocessing, in one line naming both settings."""

from __future__ import annotations

import argparse
import gzip

import kenlm
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_filter import SOURCES, write_table

from rnnenc.pipeline.artifacts import write_manifest
from rnnenc.pipeline.corpus import CorpusInput
from rnnenc.pipeline.errors import UserError
from rnnenc.pipeline.executor import SERIAL
from rnnenc.pipeline.ingest import ingest
from rnnenc.pipeline.ingested import recorded_corpus
from rnnenc.pipeline.lm import build_target_lm
from rnnenc.pipeline.moses import export_stage
from rnnenc.pipeline.phrase_filter import filter_table
from rnnenc.pipeline.phrase_table import list_parts
from rnnenc.pipeline.preprocess import PreprocessConfig
from rnnenc.workflows import cli
from rnnenc.workflows.moses import tuning_and_test_text

EN = ["The cat sat on the mat.", "A dog.", "Tom's cat & dog."]
FR = ["Le Chat dort sur le tapis.", "Un chien.", "Le chat de Tom & le chien."]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """A lowercased pool and a cased corpus (both ingested), a select output of the pool, a phrases
    output built from its selected/ and an export of that table: the manifests' chain that
    `recorded_corpus` follows back to the pool."""
    root = tmp_path_factory.mktemp("chain")
    (root / "c.en").write_text("".join(f"{line}\n" for line in EN))
    (root / "c.fr").write_text("".join(f"{line}\n" for line in FR))
    text = CorpusInput("text", (str(root / "c.en"), str(root / "c.fr")), "c")
    for name, lowercase in (("pool", True), ("cased", False)):
        ingest(SERIAL, [text], root / name, PreprocessConfig("en", "fr", lowercase=lowercase, clean=False))
    select = root / "select"
    (select / "selected").mkdir(parents=True)
    for part in (root / "pool").glob("part-*.parquet"):
        pq.write_table(pq.read_table(part), select / "selected" / part.name)
    (select / "selected.fr").write_text("".join(f"{t}\n" for t in pq.read_table(select / "selected")["target"]
                                                 .to_pylist()))
    langs = {"source_lang": "en", "target_lang": "fr"}
    write_manifest(select, stage="select", inputs=[root / "pool"], config={"pool": str(root / "pool")}, counts={})
    (root / "phrases").mkdir()
    write_table(root / "phrases" / "table")
    write_manifest(root / "phrases", stage="phrases", inputs=[select / "selected"], config=langs, counts={})
    (root / "export").mkdir()
    (root / "export" / "moses.ini").write_text("[feature]\n")
    write_manifest(root / "export", stage="export", inputs=[root / "phrases" / "table"], config={}, counts={})
    (root / "raw.en").write_text("The cat sat on the mat.\n")
    (root / "raw.fr").write_text("Le Chat dort.\n")
    return root


# the sources of SOURCES that "the cat sat on the mat ." (lowercased and tokenised) holds
USABLE = sorted(set(SOURCES) - {"a dog", "dog"})


def test_recorded_corpus_follows_the_manifests_back_to_the_pool(chain, tmp_path):
    for path in ("pool", "select", "select/selected", "phrases", "phrases/table", "export", "export/moses.ini"):
        assert recorded_corpus(chain / path).path == str(chain / "pool"), path
    table = write_table(tmp_path / "imported")  # no manifest (an imported Moses table): nothing recorded
    assert recorded_corpus(table) is None and recorded_corpus(chain / "raw.en") is None


def test_filter_preprocesses_text_as_the_tables_corpus_and_refuses_another_corpus(chain, tmp_path):
    def kept(inputs: list, out: str) -> list[str]:
        filter_table(chain / "phrases", tmp_path / out, inputs)
        return sorted(pa.concat_tables(pq.read_table(p) for p in list_parts(tmp_path / out))["source"].to_pylist())

    # raw text, lowercased and tokenised as the pool was: "the mat ." is now an n-gram of it
    assert kept([chain / "raw.en"], "text") == USABLE
    assert kept([chain / "pool"], "corpus") == sorted(SOURCES)  # the pool holds "a dog ." too
    # the same text given to a table whose chain records nothing is taken as it is
    table = write_table(tmp_path / "imported")
    filter_table(table, tmp_path / "as-is", [chain / "raw.en"])
    assert "the mat ." not in pa.concat_tables(pq.read_table(p) for p in list_parts(tmp_path / "as-is"))[
        "source"].to_pylist()
    with pytest.raises(UserError) as error:
        filter_table(chain / "phrases", tmp_path / "refused", [chain / "cased"])
    assert str(error.value) == (f"{chain / 'cased'}: preprocessed as lowercase=False but the phrase table's corpus "
                                f"{chain / 'pool'} as lowercase=True; ingest it with the options of {chain / 'pool'}")
    assert not (tmp_path / "refused").exists()
    # export --filter-to reads its inputs the same way
    export_stage(chain / "phrases" / "table", tmp_path / "export", filter_to=[chain / "raw.en"])
    lines = gzip.decompress((tmp_path / "export" / "phrase-table.gz").read_bytes()).decode().splitlines()
    assert sorted(line.split(" ||| ")[0] for line in lines) == USABLE


def test_lm_preprocesses_text_as_its_corpora_and_refuses_mixed_ones(chain, tmp_path):
    build_target_lm([chain / "select", chain / "pool", chain / "raw.fr"], "fr", tmp_path / "lm", order=2)
    model = kenlm.Model(str(tmp_path / "lm" / "lm.binary"))
    assert "chat" in model and "Chat" not in model and "tapis" in model and "&amp;" in model
    with pytest.raises(UserError, match=r"cased: preprocessed as lowercase=False but .*pool \(an earlier "
                                        r"--corpus's text\) as lowercase=True"):
        build_target_lm([chain / "pool", chain / "cased"], "fr", tmp_path / "mixed", order=2)
    assert not (tmp_path / "mixed").exists()


def test_moses_preprocesses_text_sets_as_the_tables_corpus_and_refuses_another_corpus(chain, tmp_path, capsys):
    (tmp_path / "tuning").mkdir()
    (tmp_path / "out").mkdir()
    args = argparse.Namespace(dev=None, dev_src=str(chain / "raw.en"), dev_ref=str(chain / "raw.fr"), test=None,
                              test_src=str(chain / "raw.en"), test_ref=str(chain / "raw.fr"), src_lang="en",
                              tgt_lang="fr")
    reference = recorded_corpus(chain / "export" / "moses.ini")
    dev_src, dev_ref, test_src, test_ref = tuning_and_test_text(args, reference, tmp_path / "tuning",
                                                                tmp_path / "out")
    assert dev_src.read_text() == test_src.read_text() == "the cat sat on the mat .\n"
    assert dev_ref.read_text() == test_ref.read_text() == "le chat dort .\n"
    assert dev_src.parent == tmp_path / "tuning" and test_ref.parent == tmp_path / "out"
    # without a record (an ini rnnenc did not write), the text sets are given to Moses as they are
    assert tuning_and_test_text(args, None, tmp_path / "tuning", tmp_path / "out")[0] == chain / "raw.en"
    # an ingested tuning set preprocessed otherwise: one line, before Moses is even looked for
    assert cli.main(["moses", "--moses-ini", str(chain / "export"), "--dev", str(chain / "cased"),
                     "--out", str(tmp_path / "m"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cased: preprocessed as lowercase=False but the phrase table's corpus" in err[0]
