"""Ray clusters: cluster files and their pre-flight capacity check (`spec`), a local cluster from real
`ray start` processes (`local`), the Jobs API client behind `hpo submit/status/logs/stop/fetch`
(`jobs`), live nodes and lost workers (`nodes`), and Ray's token auth (`auth`)."""
