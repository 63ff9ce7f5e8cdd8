"""The `documents` dynamic partitions (keys from `document_ids`) and how runs group them."""

from functools import partial

from dagster import BackfillPolicy, DynamicPartitionsDefinition, asset

documents = DynamicPartitionsDefinition(name="documents")

# One document per run, on every launch path: Dagster records a materialization for every
# partition of a step and cannot fail just one of them (dagster-io/dagster#17836), so a document
# is only honestly failed or done in a run of its own. Concurrency comes from the run queue and the
# `vllm` pool (see dagster.yaml), not from batching documents into one run.
document_backfill_policy = BackfillPolicy.multi_run(max_partitions_per_run=1)

# Every per-document asset: partitioned by document, one document per run. Its feature names the group.
document_asset = partial(asset, partitions_def=documents, backfill_policy=document_backfill_policy)
