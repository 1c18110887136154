"""From raw data to `pairs.h5`: a manifest per dataset, then one shared builder."""
from egath.datasets.coco import prepare_coco
from egath.datasets.manifest import build_pairs, read_manifest
from egath.datasets.mirflickr import prepare_mirflickr25k
from egath.datasets.nuswide import prepare_nuswide
from egath.datasets.synthetic import make_synthetic_dataset

PREPARERS = {  # config `source` -> function(raw_dir, out_dir, protocol) writing a manifest
    "mirflickr25k": prepare_mirflickr25k,
    "nuswide": prepare_nuswide,
    "coco": prepare_coco,
}

__all__ = ["PREPARERS", "build_pairs", "read_manifest", "make_synthetic_dataset"]
