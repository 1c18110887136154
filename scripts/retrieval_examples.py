from egath.logs import setup_logging

log = setup_logging(snakemake.log[0])

from egath.examples import retrieval_examples

examples = retrieval_examples(
    snakemake.input.codes,
    snakemake.input.pairs,
    snakemake.output.png,
    snakemake.output.pdf,
    n_text=snakemake.params.text_queries,
    n_image=snakemake.params.image_queries,
    seed=snakemake.params.seed,
)
log.info("wrote %s and %s: %d text and %d image queries (seed %d) against %s",
         snakemake.output.png, snakemake.output.pdf, len(examples["text_queries"]),
         len(examples["image_queries"]), snakemake.params.seed, snakemake.input.codes)
