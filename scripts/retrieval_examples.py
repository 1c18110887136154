from egath.logs import setup_logging

setup_logging(snakemake.log[0])

from egath.examples import retrieval_examples

retrieval_examples(
    snakemake.input.codes,
    snakemake.input.pairs,
    snakemake.output.png,
    snakemake.output.pdf,
    n_text=snakemake.params.text_queries,
    n_image=snakemake.params.image_queries,
    seed=snakemake.params.seed,
)
