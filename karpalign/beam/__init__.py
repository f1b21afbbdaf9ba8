"""Apache Beam feature extraction: records -> image bytes -> regions -> CNN features -> TFRecord shards.

Modules (workers import them by module path, so every DoFn and element class lives here, never in a script):

- ``elements``    the values that flow through the pipeline (:class:`ImageItem`, :class:`DeadLetter`) and the
                  failure stage names
- ``transforms``  the DoFns and the small labelled composites (``ReadImageBytes``, ``DecodeImages``,
                  ``ProposeRegions``, ``ExtractFeatures``, ``EncodeExamples``, ``WriteSplits``, ...)
- ``job``         :func:`extract_config`, :func:`build_pipeline` and :func:`run_extract` (vocabulary, counts,
                  manifest, the input = written + failed check; runner choices: local, worker pool, portable,
                  Dask)
- ``crc32c``      the TFRecord framing the shard writer uses (CRC-32C, native or numpy)
- ``local_clusters``  a Beam worker pool and a dask.distributed cluster as local processes, to try the
                  distributed route on one machine (tests and benchmarks use them)
"""
