from egath.logs import setup_logging

log = setup_logging(snakemake.log[0])

from egath.features import load_clip
from egath.io import atomic_output

model, _, _ = load_clip(snakemake.params.model, snakemake.params.pretrained)
n_parameters = sum(p.numel() for p in model.parameters())
with atomic_output(snakemake.output.done) as tmp:
    tmp.write_text(
        f"model\t{snakemake.params.model}\npretrained\t{snakemake.params.pretrained}\n"
        f"parameters\t{n_parameters}\n"
    )
log.info("weights of %s (%s) are in the cache: %d parameters", snakemake.params.model,
         snakemake.params.pretrained, n_parameters)
