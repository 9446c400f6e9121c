"""`study classify`: every run on one common test set, strategy and seed recorded, mean ± std, table, plots."""

from __future__ import annotations

import csv
import json

import pytest
import torch

torch.set_num_threads(1)


def test_mean_std_and_table():
    from leukodx.evaluation.study import aggregate, markdown_table, mean_std

    m, s, n = mean_std([0.9, 1.0, None, float("nan"), 0.8])
    assert n == 3 and m == pytest.approx(0.9) and s == pytest.approx(0.1)
    assert mean_std([0.5]) == (0.5, 0.0, 1)
    runs = [{"arch": "a", "strategy": "sgdc", "seed": k, "accuracy": v} for k, v in enumerate([0.9, 1.0, 0.8])]
    runs.append({"arch": "b", "strategy": "sgdc", "seed": 0, "accuracy": 0.5})
    rows = aggregate(runs, ("arch", "strategy"), ("accuracy",))
    assert [r["arch"] for r in rows] == ["a", "b"] and rows[0]["seeds"] == [0, 1, 2]
    assert rows[0]["accuracy"]["values"] == [0.9, 1.0, 0.8] and rows[1]["accuracy"]["n"] == 1
    table = markdown_table(rows, ("arch", "strategy"), ("accuracy",), percent=("accuracy",))
    assert "| a | sgdc | 3 | 90.00 ± 10.00 |" in table and "| b | sgdc | 1 | 50.00 ± 0.00 |" in table
    assert "| a | sgdc | 3 | 0.9000 ± 0.1000 |" in markdown_table(rows, ("arch", "strategy"), ("accuracy",),
                                                                 digits={"accuracy": 4})
    (everything,) = aggregate(runs, (), ("accuracy",))  # no keys: one row over all runs
    assert everything["n_runs"] == 4 and everything["accuracy"]["mean"] == pytest.approx(0.8)


def test_paired_comparison_pairs_on_the_other_keys():
    from leukodx.evaluation.study import paired_comparison, paired_table

    runs = [{"arch": "a", "strategy": st, "seed": k, "acc": v}
            for st, vals in (("sgdc", [0.90, 0.92, 0.91]), ("per-class", [0.80, 0.83, 0.80])) for k, v in enumerate(vals)]
    runs.append({"arch": "a", "strategy": "sgdc", "seed": 9, "acc": 0.1})  # no partner: left out
    c = paired_comparison(runs, "strategy", ("acc",))
    assert c["difference"] == "sgdc - per-class" and c["n_pairs"] == 3 and c["paired_on"] == ["arch", "seed"]
    m = c["metrics"]["acc"]
    assert m["differences"] == pytest.approx([0.10, 0.09, 0.11]) and m["mean"] == pytest.approx(0.10)
    assert m["beyond_seed_noise"] is True and m["p_value"] < 0.01
    noisy = [{"arch": "a", "strategy": st, "seed": k, "acc": v}
             for st, vals in (("sgdc", [0.90, 0.80, 0.85]), ("per-class", [0.85, 0.86, 0.83])) for k, v in enumerate(vals)]
    n = paired_comparison(noisy, "strategy", ("acc",))["metrics"]["acc"]
    assert n["beyond_seed_noise"] is False
    assert "| acc |" in paired_table(c, ("acc",), percent=("acc",)) and "+10.00" in paired_table(c, ("acc",), ("acc",))
    assert paired_comparison([r for r in runs if r["strategy"] == "sgdc"], "strategy", ("acc",)) is None


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from leukodx.data.synthetic import make_synthetic_dataset
    from leukodx.training.study import run_classification_study

    data = make_synthetic_dataset(tmp_path_factory.mktemp("study-smears"), per_class=10, size=64, seed=4)
    out = tmp_path_factory.mktemp("study")
    overrides = {"image_size": 32, "epochs": 1, "batch_size": 8, "max_train_images": 16, "augment": "none"}
    results = run_classification_study(data, ["smearnet"], ["sgdc", "per-class"], 2, out, overrides=overrides,
                                       command="test", log=lambda m: None)
    return data, out, results, overrides


def test_runs_are_scored_through_the_pipeline_and_under_lab_shift(study):
    data, out, results, overrides = study
    for r in results["runs"]:
        scores = json.loads((out / "runs" / r["run"] / "scores.json").read_text())
        assert scores["engine"] == "torch" and scores["lab_shift"]["same_as"].startswith("leukodx evaluate --shift lab")
        assert r["n_test"] == scores["in_distribution"]["n_images"] == scores["lab_shifted"]["n_images"] > 0
        for k in ("accuracy", "balanced_accuracy", "ece", "flag_rate"):
            assert 0.0 <= r[k] <= 1.0 and 0.0 <= r[f"lab_{k}"] <= 1.0
        assert r["lab_confusion_matrix"] and r["trainer_test_accuracy"] is not None
    # the shifted fields differ from the originals, so the probabilities move: checked at full precision on the
    # first run's model, because a tiny model that calibration flattens to near-uniform probabilities (its
    # temperature at the cap) can leave every rounded metric, ece included, the same on some CPUs
    import numpy as np

    from leukodx.data.layout import load_dataset
    from leukodx.evaluation.evaluate import _shift_fn, evaluate_classifier, load_models

    models, _ = load_models([out / "runs" / results["runs"][0]["run"]], engine="torch")
    res = evaluate_classifier(models[0], load_dataset(data).samples[:8], 8, _shift_fn("lab", 0, 1.0))
    assert res["probs"].shape == res["probs_shift"].shape and not np.array_equal(res["probs"], res["probs_shift"])
    paired = {c["factor"]: c for c in results["paired"]}
    assert set(paired) == {"strategy"} and paired["strategy"]["n_pairs"] == 2
    assert paired["strategy"]["metrics"]["balanced_accuracy"]["n"] == 2
    table = (out / "table.md").read_text()
    assert "Under lab shift" in table and "sgdc - per-class" in table


def test_reference_models_are_scored_beside_the_runs(study, tmp_path):
    from leukodx.training.study import run_classification_study

    data, out, results, overrides = study
    ref = out / "runs" / results["runs"][0]["run"]
    again = run_classification_study(data, ["smearnet"], ["sgdc", "per-class"], 2, out, overrides=overrides,
                                     log=lambda m: None, reference_models=[ref])
    (row,) = again["references"]
    own = json.loads((ref / "scores.json").read_text())["in_distribution"]
    assert row["balanced_accuracy"] == own["balanced_accuracy"] and row["engine"] == "torch"
    assert row["test_fields_in_its_train_or_val"] == 0  # its own split held the common test set out
    assert "For reference" in (out / "table.md").read_text()


def test_study_writes_results_table_and_plots(study):
    _, out, results, _ = study
    saved = json.loads((out / "results.json").read_text())
    assert saved["archs"] == ["smearnet"] and saved["seeds"] == [0, 1] and saved["wall_seconds"] > 0
    assert len(saved["runs"]) == 4
    assert {(r["split_strategy"], r["split_seed"]) for r in saved["runs"]} == {
        ("sgdc", 0), ("sgdc", 1), ("per-class", 0), ("per-class", 1)}
    assert all(r["test_seed"] == 0 for r in saved["runs"])
    assert saved["settings"]["image_size"] == 32 and saved["settings"]["max_train_images"] == 16
    assert all(r["n_train"] <= 16 for r in saved["runs"])
    for row in saved["summary"]:
        accs = [r["accuracy"] for r in saved["runs"] if r["strategy"] == row["strategy"]]
        assert row["accuracy"]["mean"] == pytest.approx(sum(accs) / len(accs))
        assert row["accuracy"]["n"] == 2
    table = (out / "table.md").read_text()
    assert "smearnet | sgdc" in table and "smearnet | per-class" in table and "±" in table
    for name in saved["plots"].values():
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_run_is_scored_on_one_common_test_set(study):
    _, out, results, _ = study
    sets = []
    for r in results["runs"]:
        with open(out / "runs" / r["run"] / "test_predictions.csv") as f:
            sets.append(sorted(row["path"] for row in csv.DictReader(f)))
        split = list(csv.DictReader(open(out / "runs" / r["run"] / "split.csv")))
        train = {s["path"] for s in split if s["split"] == "train"}
        assert not train & set(sets[-1])  # no test field trained on
    assert all(s == sets[0] for s in sets) and sets[0]


def test_rerun_reuses_finished_runs(study):
    from leukodx.training.study import run_classification_study

    data, out, results, overrides = study
    msgs = []
    again = run_classification_study(data, ["smearnet"], ["sgdc", "per-class"], 2, out, overrides=overrides,
                                     log=msgs.append)
    assert sum("already done" in m for m in msgs) == 4
    assert [r["accuracy"] for r in again["runs"]] == [r["accuracy"] for r in results["runs"]]


def test_study_errors(study, tmp_path):
    from leukodx.errors import LeukodxError, ModelError
    from leukodx.training.study import run_classification_study

    data = study[0]
    with pytest.raises(LeukodxError, match="per-class"):
        run_classification_study(data, ["smearnet"], ["random"], 1, tmp_path)
    with pytest.raises(ModelError, match="Valid names"):
        run_classification_study(data, ["smeernet"], ["sgdc"], 1, tmp_path)
    # a wrong --reference-model is refused before any training, with what to give instead
    with pytest.raises(ModelError, match="not a leukodx model directory"):
        run_classification_study(data, ["smearnet"], ["sgdc"], 1, tmp_path / "s", reference_models=[tmp_path])
    assert not (tmp_path / "s").exists()
    from leukodx.assets import default_model_dir

    with pytest.raises(LeukodxError, match="not a classifier"):
        run_classification_study(data, ["smearnet"], ["sgdc"], 1, tmp_path / "s",
                                 reference_models=[default_model_dir("segment")])
