from egath.logs import setup_logging

log = setup_logging(snakemake.log[0])

from pathlib import Path

from egath.datasets.download import DatasetError, download, extract

vectors = Path(snakemake.output.vectors)
archive = download(snakemake.params.url, vectors.parent / Path(snakemake.params.url).name)
extract(archive, vectors.parent)
if not vectors.is_file():
    raise DatasetError(f"{archive} holds no {vectors.name}; set label_embeddings.glove_file")
log.info("%s is in place (%d bytes)", vectors, vectors.stat().st_size)
