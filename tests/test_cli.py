"""The `egath` command runs every stage without Snakemake."""
import json

from egath.cli import main


def test_every_stage_from_the_command_line(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    main(["synthetic", str(data), "--n-pairs", "60", "--seed", "2", "--image-size", "32"])
    main(["pairs", str(data / "manifest.tsv"), str(out / "pairs.h5"), "--dataset", "cli", "--bow-dim", "30",
          "--n-query", "10", "--n-train", "30", "--split-seed", "0"])
    main(["features", str(out / "pairs.h5"), str(out / "features.h5"), "--model", "egath-tiny-vit",
          "--pretrained", "none", "--num-workers", "0", "--device", "cpu"])
    main(["graph", str(out / "pairs.h5"), str(out / "features.h5"), str(out / "graph.h5")])
    main(["train", str(out / "pairs.h5"), str(out / "features.h5"), str(out / "graph.h5"), str(out / "model.pt"),
          "--bits", "8", "--device", "cpu", "--param", "epochs=1", "--param", "d_model=16", "--param", "ff_dim=16",
          "--param", "feature_dim=16", "--param", "gat_hidden=16", "--param", "selection=last"])
    main(["encode", str(out / "model.pt"), str(out / "pairs.h5"), str(out / "features.h5"), str(out / "codes.h5"),
          "--device", "cpu"])
    main(["evaluate", str(out / "codes.h5"), str(out / "metrics.json")])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == "cli" and metrics["bits"] == 8 and metrics["protocol"]["n_query"] == 10
    assert metrics["protocol"]["epoch_selection"] == "last epoch"
    assert 0 < metrics["tasks"]["i2t"]["map"] <= 1 and len(metrics["tasks"]["t2i"]["pr"]["radius"]) == 9
