from egath.logs import setup_logging

setup_logging(snakemake.log[0])

from egath.graph import build_graph

build_graph(
    snakemake.input.pairs,
    snakemake.input.features,
    snakemake.output.graph,
    threshold=snakemake.params.threshold,
)
