from egath.logs import setup_logging

log = setup_logging(snakemake.log[0])

from pathlib import Path

from egath.datasets.download import fetch_dataset, source_key
from egath.io import atomic_output

raw_dir = Path(snakemake.output.done).parent
how = fetch_dataset(source_key(snakemake.params.source, snakemake.params.protocol), raw_dir)
with atomic_output(snakemake.output.done) as tmp:
    tmp.write_text("".join(f"{name}\t{state}\n" for name, state in how.items()))
log.info("raw files of %s in %s: %s", snakemake.params.source, raw_dir,
         "; ".join(f"{name}: {state}" for name, state in how.items()))
