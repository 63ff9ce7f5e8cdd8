"""What tests and benchmarks share: the one place outside the package that both may import.

* `pdf_factory`: PDFs made in code (text, scans, broken and hostile files);
* `vllm_double`: a vLLM stand-in over real HTTP, with fault injection;
* `quality_fixtures`: documents with known ground truth and the chain run against them;
* `chain`: registering local files as `documents` partitions, a `VLLMResource` that retries fast;
* `live_dagster`: a real `dagster-webserver` + `dagster-daemon` (and PostgreSQL) with a GraphQL client.

Import direction: the package (`medkg_pdf`) imports neither this nor `bench`; tests import the
package and this; `bench` imports the package and this, and no other test module.
(`medkg_pdf_tests/test_import_direction.py` holds every side to it.) Nothing is re-exported here,
so importing one helper does not import the others.
"""
