"""The run folder, the interface everything downstream reads: what it holds (`contract`: file names,
version, statuses, the batching wire format), how it is written (`writer`: the Recorder; `parquet`;
`rundir`: run ids, atomic writes, claims, liveness), how it is read back (`reader`), where a cluster
job's copy lives (`storage`), Ray's result keys and the metric check (`reports`), and the Pareto
front of a multi-objective run (`pareto`). Nothing here imports Ray."""
